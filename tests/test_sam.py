"""SAMEncoder vs transformers' SAM vision encoder (random weights, small configs, fp32).

The HF model is the reference: weights go HF -> save_pretrained -> load_hf_sam -> ours, so the loader's
rename table is tested at the same time. The small config has a 18x18 grid with window 4 (padding to 20)
and one global block, so windowing, padding and both rel-pos table sizes are exercised."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nanoocr.model.sam as sam_module
from nanoocr.model.pretrained import load_hf_sam
from nanoocr.model.sam import SAMConfig, SAMEncoder, get_rel_pos, resize_pos_embed

transformers = pytest.importorskip("transformers")
from transformers import SamVisionConfig  # noqa: E402
from transformers.models.sam.modeling_sam import SamVisionEncoder, SamVisionModel  # noqa: E402

GLOBAL = 1  # index of the global-attention block in the small config


def hf_config(image_size=288):
    return SamVisionConfig(hidden_size=64, output_channels=32, num_hidden_layers=3, num_attention_heads=2,
                           image_size=image_size, patch_size=16, window_size=4, global_attn_indexes=[GLOBAL],
                           attn_implementation="eager")  # eager = plain softmax(QK^T + bias) reference


def small_config():
    return SAMConfig(img_size=288, embed_dim=64, depth=3, num_heads=2, window_size=4, global_attn_indexes=(GLOBAL,),
                     neck_dim=32, net2_dim=16, out_chans=24, pos_embed_grid=18)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """HF inits rel-pos tables and pos_embed to zero and weights to ~1e-10: random values make the test bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif "rel_pos" in name or "pos_embed" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def hf_sam():
    return randomize(SamVisionModel(hf_config()))


@pytest.mark.parametrize("layout", ["SamVisionModel", "SamVisionEncoder"])
@pytest.mark.parametrize("chunk", [None, 3000])
def test_matches_hf_sam(hf_sam, tmp_path, monkeypatch, layout, chunk):
    if chunk:  # force the chunked-bias paths: windows over the batch dim, the global block over queries
        monkeypatch.setattr(sam_module, "BIAS_CHUNK_ELEMENTS", chunk)
        # and the blockwise training attention's two regimes: several windows per block, query slices of
        # the global block's 324 x 324 scores
        monkeypatch.setattr(sam_module, "SCORE_BLOCK_ELEMENTS", 2000)
    # SamVisionModel saves `vision_encoder.*` keys (as SamModel does); SamVisionEncoder saves bare keys.
    (hf_sam if layout == "SamVisionModel" else hf_sam.vision_encoder).save_pretrained(tmp_path)
    ours = SAMEncoder(small_config()).eval()
    report = load_hf_sam(ours, tmp_path)
    assert report.missing == ["net_2.weight", "net_3.weight"] and not report.unexpected, report.summary()

    x = torch.randn(2, 3, 288, 288, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf_sam(x).last_hidden_state
        out = ours.forward_neck(x)
    assert out.shape == ref.shape == (2, 32, 18, 18)
    assert (out - ref).abs().max().item() <= 1e-5

    if layout == "SamVisionModel":  # training path (RelPosAttention on CPU): gradients must match too
        w = torch.randn_like(ref)
        (hf_sam(x).last_hidden_state * w).sum().backward()
        (ours.forward_neck(x) * w).sum().backward()
        hf_attn, our_attn = hf_sam.vision_encoder.layers[GLOBAL].attn, ours.blocks[GLOBAL].attn
        win_hf, win_ours = hf_sam.vision_encoder.layers[0].attn, ours.blocks[0].attn
        pairs = [(our_attn.rel_pos_h.grad, hf_attn.rel_pos_h.grad), (our_attn.qkv.weight.grad, hf_attn.qkv.weight.grad),
                 (our_attn.rel_pos_w.grad, hf_attn.rel_pos_w.grad), (win_ours.rel_pos_w.grad, win_hf.rel_pos_w.grad),
                 (win_ours.qkv.bias.grad, win_hf.qkv.bias.grad),
                 (ours.pos_embed.grad, hf_sam.vision_encoder.pos_embed.grad)]
        for a, b in pairs:
            assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())
        hf_sam.zero_grad(set_to_none=True)


def test_other_input_size_resizes_tables(hf_sam, tmp_path):
    """224 px on a 288 px model: pos_embed resized bicubic+antialias, global rel-pos tables interpolated.

    HF only runs at its configured size, so the reference is an HF model configured for 224 whose
    pos_embed is the F.interpolate resize of the 288 table (computed here) and whose global rel-pos
    tables are the original 35-row ones (HF's own get_rel_pos interpolates them to 27 rows)."""
    hf_sam.save_pretrained(tmp_path)
    ours = SAMEncoder(small_config()).eval()
    load_hf_sam(ours, tmp_path)
    src = hf_sam.vision_encoder

    table = src.pos_embed.detach()  # (1, 18, 18, 64)
    expected = F.interpolate(table.permute(0, 3, 1, 2), size=(14, 14), mode="bicubic", antialias=True,
                             align_corners=False).permute(0, 2, 3, 1)
    assert torch.equal(resize_pos_embed(ours.pos_embed.detach(), (14, 14)), expected)

    hf224 = SamVisionEncoder(hf_config(224)).eval()
    state = {k: v for k, v in src.state_dict().items() if k != "pos_embed" and f"layers.{GLOBAL}.attn.rel_pos" not in k}
    hf224.load_state_dict(state, strict=False)
    hf224.pos_embed = nn.Parameter(expected.clone())
    hf224.layers[GLOBAL].attn.rel_pos_h = nn.Parameter(src.layers[GLOBAL].attn.rel_pos_h.detach().clone())
    hf224.layers[GLOBAL].attn.rel_pos_w = nn.Parameter(src.layers[GLOBAL].attn.rel_pos_w.detach().clone())

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf224(x).last_hidden_state
        out = ours.forward_neck(x)
        full = ours(x)
    assert out.shape == ref.shape == (1, 32, 14, 14)
    assert (out - ref).abs().max().item() <= 1e-5
    assert full.shape == (1, 24, 4, 4)  # two stride-2 convs: ceil(14 / 4)


def test_get_rel_pos_interpolates_linearly():
    table = torch.randn(7, 4)  # offsets for a 4-long axis
    same = get_rel_pos(4, 4, table)
    assert torch.equal(same[0, 0], table[3]) and torch.equal(same[3, 0], table[6]) and torch.equal(same[0, 3], table[0])
    grown = get_rel_pos(6, 6, table)  # needs 11 rows
    ref = F.interpolate(table.T[None], size=11, mode="linear", align_corners=False)[0].T
    assert torch.equal(grown[5, 0], ref[10]) and torch.equal(grown[2, 2], ref[5])


def test_bad_input_shape_is_a_clear_error():
    model = SAMEncoder(small_config())
    with pytest.raises(AssertionError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 100, 96))
    with pytest.raises(AssertionError, match="pixels"):
        model(torch.randn(1, 1, 96, 96))


def test_full_size_parameter_count():
    with torch.device("meta"):
        model = SAMEncoder(SAMConfig())
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 95.6e6) <= 0.5e6, n  # docs/FACTS.md "DeepEncoder": 95.6M measured, net_2/net_3 included
    assert tuple(model.pos_embed.shape) == (1, 64, 64, 768)
    assert tuple(model.blocks[2].attn.rel_pos_h.shape) == (127, 64)  # global: 2 * 64 - 1 offsets
    assert tuple(model.blocks[0].attn.rel_pos_h.shape) == (27, 64)  # window: 2 * 14 - 1


@pytest.mark.parametrize("block", [None, 7, 50])
def test_blockwise_rel_pos_attention_matches_sdpa(monkeypatch, block):
    """RelPosAttention (the CPU training path) vs torch SDPA with the bias as a float mask, float64,
    values and all five gradients; block sizes force one item per block, query slices and many items."""
    if block:
        monkeypatch.setattr(sam_module, "SCORE_BLOCK_ELEMENTS", block)
    g = torch.Generator().manual_seed(0)
    B, nH, kh, kw, D = 2, 3, 5, 4, 8
    N = kh * kw
    args = [torch.randn(B, nH, N, n, generator=g, dtype=torch.float64, requires_grad=True) for n in (D, D, D, kh, kw)]
    q, k, v, rel_h, rel_w = args
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)  # key (i, j) at i * kw + j
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2)
    out = sam_module.rel_pos_attention_blockwise(*args)
    assert out.shape == ref.shape == (B, N, nH, D)
    assert (out - ref).abs().max().item() < 1e-12
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((out * w).sum(), args), torch.autograd.grad((ref * w).sum(), args)):
        assert (a - b).abs().max().item() < 1e-12
    assert torch.autograd.gradcheck(sam_module.rel_pos_attention_blockwise, args)


def test_training_attention_on_cpu_uses_blockwise(monkeypatch):
    """Trainable inputs on CPU take RelPosAttention; inference and frozen inputs keep SDPA (its fused kernel)."""
    calls = []
    real = sam_module.RelPosAttention.apply
    monkeypatch.setattr(sam_module.RelPosAttention, "apply", lambda *a: calls.append(1) or real(*a))
    attn = sam_module.Attention(16, 2, rel_size=4)
    x = torch.randn(1, 4, 4, 48)
    attn.attend(x)
    assert calls == [1]
    with torch.no_grad():
        attn.attend(x)
    attn.requires_grad_(False)
    attn.attend(x)
    assert calls == [1]


def test_blockwise_rel_pos_attention_in_bf16_keeps_the_softmax_in_fp32():
    """bf16 inputs (what bf16 autocast hands SAM's attention): the blockwise function keeps the scores, softmax and
    gradient sums in fp32, so against the float64 result its output and gradients stay within 1.5x of torch's own
    SDPA math path in bf16 (the all-bf16 version was up to 6.6x off here)."""
    g = torch.Generator().manual_seed(0)
    B, nH, kh, kw, D = 2, 2, 14, 14, 32
    N = kh * kw
    wide = [torch.randn(B, nH, N, n, generator=g, dtype=torch.float64) for n in (D, D, D, kh, kw)]
    w = torch.randn(B, N, nH, D, generator=g, dtype=torch.float64)

    def run(fn, dtype):
        args = [t.to(dtype).requires_grad_() for t in wide]
        out = fn(*args)
        assert out.dtype == dtype
        return [out, *torch.autograd.grad((out * w.to(dtype)).sum(), args)]

    def sdpa(q, k, v, rel_h, rel_w):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=(rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)
                                              ).transpose(1, 2)

    exact = run(sdpa, torch.float64)
    for ours, torch_bf16, ref in zip(run(sam_module.rel_pos_attention_blockwise, torch.bfloat16),
                                     run(sdpa, torch.bfloat16), exact):
        err = lambda t: float((t.double() - ref).abs().max() / ref.abs().max())
        assert err(ours) <= 1.5 * err(torch_bf16), (err(ours), err(torch_bf16))
        assert err(ours) < 0.012
