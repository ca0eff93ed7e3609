"""nanoocr.train.flops (the model FLOPs SpeedMonitor reports MFU from) against independent references:
FlopCounterMode over a real training forward + backward on CPU, per-part forward counts, keys counted
query by query, and linear FLOPs written out from the config's shapes."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import nanoocr.model.sam as sam
from nanoocr.model.presets import build_config
from nanoocr.model.vlm import NanoOCR
from nanoocr.train.flops import attention_pairs, batch_flops

SIZE = 256  # a 16 x 16 patch grid: SAM's windows (14) pad it to 28, its global block sees all 256 tokens


def tiny(**gpt):
    torch.manual_seed(0)
    return NanoOCR(build_config("nano", gpt={"vocab_size": 300, "sequence_len": 256, **gpt}))


def freeze(model, prefixes):
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(tuple(prefixes)))


def vision_part(model, images):
    """batch_flops' vision share: the same batch with and without the images."""
    ids = torch.zeros(1, 4, dtype=torch.long)
    return batch_flops(model, {"ids": ids, "images": images}) - batch_flops(model, {"ids": ids})


# torch's counter has formulas for addmm and baddbmm but not their in-place forms, which the chunked loss
# (dL/dW accumulated with addmm_) and SAM's blockwise attention use: the same formulas, for those too.
IN_PLACE = {torch.ops.aten.addmm_: flop_counter.addmm_flop.__wrapped__,  # the formula on shapes
            torch.ops.aten.baddbmm_: flop_counter.baddbmm_flop.__wrapped__}


def counted(fn):
    """FlopCounterMode's total for fn(), with SDPA on its math path (matmuls it can see: the CPU flash kernel
    has no formula in torch's counter)."""
    counter = FlopCounterMode(display=False, custom_mapping=IN_PLACE)
    with counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("frozen", [(), ("sam.",), ("sam.", "clip."), ("sam.", "clip.", "projector.")])
def test_vision_matches_a_real_training_step(frozen, monkeypatch):
    # Model FLOPs leave out RelPosAttention's recompute of the probabilities in backward (the CPU training
    # path): the reference runs SAM's attention through SDPA, as on any other device.
    monkeypatch.setattr(sam, "rel_pos_attention_blockwise", sam.rel_pos_attention)
    model = tiny()
    freeze(model, frozen)
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1

    def step():
        out = model.encode_views(images)
        if out.requires_grad:
            out.sum().backward()

    real = counted(step)
    assert real > 0 and vision_part(model, images) == real, (frozen, vision_part(model, images), real)


def test_frozen_parts_count_forward_only():
    model = tiny()
    images = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():  # forward FLOPs of each part, on real tensors
        sam_out = model.sam(images)
        clip_out = model.clip(sam_out)
        fused = torch.cat([clip_out[:, 1:], sam_out.flatten(2).transpose(1, 2)], dim=-1)
        f_sam = counted(lambda: model.sam(images))
        f_patch = counted(lambda: model.sam.patch_embed(images))
        f_clip = counted(lambda: model.clip(sam_out))
        f_proj = counted(lambda: model.projector(fused))
    assert min(f_sam, f_clip, f_proj, f_patch) > 0

    # every layer trainable: backward = 2x forward, except the patch conv's input-gradient (pixels need none)
    assert vision_part(model, images) == 3 * (f_sam + f_clip + f_proj) - f_patch
    # SAM + CLIP frozen: forward only; the projector adds its weight-gradient, no input-gradient (nothing below trains)
    freeze(model, ("sam.", "clip."))
    assert vision_part(model, images) == f_sam + f_clip + 2 * f_proj
    freeze(model, ("sam.", "clip.", "projector."))
    assert vision_part(model, images) == f_sam + f_clip + f_proj
    freeze(model, ())  # unfrozen again: the count follows requires_grad at every call, not the first one
    assert vision_part(model, images) == 3 * (f_sam + f_clip + f_proj) - f_patch


@pytest.mark.parametrize("T", [1, 2, 7, 130, 300])
@pytest.mark.parametrize("window", [None, 0, 1, 5, 128, 299, 1000])
def test_attention_pairs_count_the_keys_each_query_sees(T, window):
    keys = 0
    for i in range(T):
        for j in range(T):
            keys += j <= i and (window is None or i - j <= window)  # causal, `window` keys back + itself
    assert attention_pairs(T, window) == keys


def linear_weights(cfg):
    """Weights of the GPT's matmuls per token, from the config: q, k, v, proj (4 C²) + MLP (8 C²) per layer,
    the 2026 layout's gates (smear 24 -> 1, value-embedding gate 12 -> H on alternating layers, the last always),
    the lm_head (padded rows)."""
    C, L, H = cfg.n_embd, cfg.n_layer, cfg.n_head
    n = L * 12 * C * C
    if cfg.layout == "2026":
        n += 24 + 12 * H * sum(1 for i in range(L) if i % 2 == (L - 1) % 2)
    return n, cfg.padded_vocab_size * C


def attention_flops_per_row(cfg, T, windows):
    """4 * H * Dh per (query, key) pair, keys counted query by query."""
    pairs = sum(sum(min(i, w if w is not None else T) + 1 for i in range(T)) for w in windows)
    return 4 * cfg.n_embd * pairs  # H * Dh = n_embd


@pytest.mark.parametrize("gpt", [{}, {"layout": "2026", "window_pattern": "SSL", "pad_vocab_size_to": 64}])
def test_gpt_linears_and_attention(gpt):
    model = tiny(**gpt)
    cfg = model.config.gpt
    B, T = 2, 300  # 300 > every window: 2026 S = 128 keys back, L = sequence_len = 256
    windows = [None] * cfg.n_layer if cfg.layout == "d20" else [128, 128, 256, 256]  # SSL tiled, last always L
    body, head = linear_weights(cfg)
    N = body + head
    attn = attention_flops_per_row(cfg, T, windows)
    ids = {"ids": torch.zeros(B, T, dtype=torch.long)}

    # everything trains: 2N forward + 2N weight-grad + 2N input-grad per token; attention x3
    assert batch_flops(model, ids) == B * (T * 6 * N + 3 * attn)
    # a frozen lm_head: no weight-gradient of its V x C, the rest unchanged
    model.gpt.lm_head.weight.requires_grad_(False)
    assert batch_flops(model, ids) == B * (T * (6 * N - 2 * head) + 3 * attn)
    # only the lm_head trains: no gradient below it, the trunk runs forward only
    freeze(model, [n for n, _ in model.named_parameters() if n != "gpt.lm_head.weight"])
    model.gpt.lm_head.weight.requires_grad_(True)
    assert batch_flops(model, ids) == B * (T * (2 * N + 2 * head) + attn)


@pytest.mark.parametrize("trainable", ["all", "no lm_head", "lm_head only"])
def test_gpt_linears_match_a_real_training_step(trainable):
    # FlopCounterMode over a real forward + backward of the text-only training loss (chunked). SDPA's math path
    # computes every (query, key) pair, masked or not: take its full squares out, put the causal pairs in.
    model = tiny().eval()  # eval: no zero-weighted vision view for a text-only batch (NanoOCR._vision_touch)
    cfg = model.config.gpt
    if trainable == "no lm_head":
        model.gpt.lm_head.weight.requires_grad_(False)
    elif trainable == "lm_head only":
        freeze(model, [n for n, _ in model.named_parameters() if n != "gpt.lm_head.weight"])
    B, T = 2, 40
    ids = torch.randint(0, cfg.vocab_size - 1, (B, T))
    real = counted(lambda: model(ids, ids).backward())
    passes = 1 if trainable == "lm_head only" else 3
    square = passes * B * cfg.n_layer * 4 * cfg.n_embd * T * T
    causal = passes * B * attention_flops_per_row(cfg, T, [None] * cfg.n_layer)
    assert batch_flops(model, {"ids": ids}) == real - square + causal


def test_flops_per_batch_drops_when_sam_and_clip_freeze():
    from nanoocr.train.composer_model import ComposerNanoOCR
    model = tiny()
    composer = ComposerNanoOCR(model)
    batch = {"ids": torch.zeros(2, 64, dtype=torch.long), "images": torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8)}
    everything = composer.flops_per_batch(batch)
    assert everything == batch_flops(model, batch)
    for p in [*model.sam.parameters(), *model.clip.parameters()]:  # what the `freeze` algorithm does
        p.requires_grad_(False)
    frozen = composer.flops_per_batch(batch)
    ids_only = batch_flops(model, {"ids": batch["ids"]})
    # the vision share falls to about a third (forward instead of forward + backward)
    assert 0.3 < (frozen - ids_only) / (everything - ids_only) < 0.4


def test_checkpointing_is_not_counted_and_wrapped_names_still_match():
    # recompute in backward is not model FLOPs; a wrapped model's frozen parameters are still found by name
    plain, wrapped = tiny(), NanoOCR(build_config("nano", gpt={"vocab_size": 300}, activation_checkpointing=True))
    assert wrapped.activation_checkpointing
    batch = {"ids": torch.zeros(1, 8, dtype=torch.long), "images": torch.zeros(1, 3, SIZE, SIZE)}
    for model in (plain, wrapped):
        freeze(model, ("sam.",))
    assert batch_flops(wrapped, batch) == batch_flops(plain, batch)


def test_batch_flops_refuses_a_batch_without_ids():
    with pytest.raises(ValueError, match="ids"):
        batch_flops(tiny(), {"images": torch.zeros(1, 3, SIZE, SIZE)})


def test_speed_monitor_peak_is_of_the_models_precision():
    from nanoocr.train import builders
    asked = []
    for dtype in (None, torch.bfloat16):
        builders._speed_monitor({"measure_peak": lambda dtype: asked.append(dtype) or 1e12, "autocast_dtype": dtype})
    assert asked == [torch.float32, torch.bfloat16]
