"""LoRA (nanoocr/model/lora.py) against the math written out here: a wrapped linear computes
x W^T + b + alpha/r * dropout(x) A^T B^T, A starts kaiming-uniform (bound 1/sqrt(in)), B zeros, merging gives
W0 + alpha/r * B @ A and the state_dict keys of before (docs/FACTS.md "LoRA"); the adapted nanoocr GPT and
DeepSeek decoder train with only the adapters moving."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoocr.model.deepseek_decoder import DeepseekDecoder, DeepseekDecoderConfig
from nanoocr.model.gpt import GPT
from nanoocr.model.lora import (DEEPSEEK_TARGETS, GPT_TARGETS, LoRALinear, apply_lora, lora_state_dict,
                                merge_lora)
from nanoocr.model.presets import build_config
from nanoocr.model.vlm import NanoOCR, param_part


def perturbed(model, seed=0):
    """Random weights everywhere (nanochat's init zeroes lm_head and c_proj: no gradient would reach an adapter)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def nano_gpt():
    return perturbed(GPT(build_config("nano").gpt))


def tiny_deepseek():
    cfg = DeepseekDecoderConfig(vocab_size=256, n_embd=64, n_layer=3, n_head=4, n_kv_head=4, sequence_len=128,
                                intermediate_size=96, moe_intermediate_size=32, n_routed_experts=8,
                                n_shared_experts=1, num_experts_per_tok=2)
    decoder = DeepseekDecoder(cfg)
    decoder.init_weights()
    return perturbed(decoder)


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3, bias=True)
        self.other = nn.Linear(3, 3, bias=False)

    def forward(self, x):
        return self.other(self.lin(x))


# ---- one wrapped linear: the formula ----------------------------------------------------------------

def test_wrapped_linear_is_base_plus_scaled_BA():
    torch.manual_seed(0)
    m = Two().double()  # fp64: the comparison is of formulas, not of fp32 summation orders
    W, b = m.lin.weight.detach().clone(), m.lin.bias.detach().clone()
    report = apply_lora(m, r=2, alpha=6, targets=("lin",))
    assert report.wrapped == ["lin"] and type(m.other) is nn.Linear
    lin = m.lin
    assert isinstance(lin, LoRALinear) and lin.weight.shape == (3, 5)
    assert lin.lora_A.dtype == torch.float64  # adapters take the base weight's dtype
    A, B = torch.randn(2, 5, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    with torch.no_grad():
        lin.lora_A.copy_(A)
        lin.lora_B.copy_(B)
    x = torch.randn(4, 5, dtype=torch.float64)
    expected = x @ W.T + b + (6 / 2) * (x @ A.T) @ B.T
    torch.testing.assert_close(lin(x), expected, rtol=0, atol=1e-12)


def test_init_is_pefts_and_changes_nothing():
    torch.manual_seed(0)
    m = Two()
    x = torch.randn(7, 5)
    before = m(x)
    apply_lora(m, r=4, alpha=8, targets=("lin", "other"))
    assert torch.equal(m(x), before)  # B = 0: exactly the base
    # kaiming_uniform(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)
    for lin, fan_in in ((m.lin, 5), (m.other, 3)):
        assert torch.equal(lin.lora_B, torch.zeros(lin.out_features, 4))
        bound = 1 / math.sqrt(fan_in)
        assert lin.lora_A.abs().max() <= bound and lin.lora_A.abs().max() > 0.5 * bound
        assert lin.scale == 2.0


def test_dropout_acts_on_the_adapter_input_only():
    torch.manual_seed(0)
    m = Two()
    apply_lora(m, r=5, alpha=5, dropout=0.5, targets=("lin",))
    lin = m.lin
    with torch.no_grad():  # A = I (5 x 5), B = first 3 rows of I: the adapter path is dropout(x)[:, :3]
        lin.lora_A.copy_(torch.eye(5))
        lin.lora_B.copy_(torch.eye(5)[:3])
    x = torch.rand(64, 5) + 1.0  # no zeros
    base = F.linear(x, lin.weight, lin.bias)
    lin.train()
    delta = lin(x) - base
    kept = torch.isclose(delta, 2 * x[:, :3], atol=1e-5)  # inverted dropout: kept inputs scaled by 1/(1-p)
    dropped = torch.isclose(delta, torch.zeros_like(delta), atol=1e-5)
    assert bool((kept | dropped).all()) and 0 < kept.float().mean() < 1
    lin.eval()
    torch.testing.assert_close(lin(x) - base, x[:, :3], rtol=0, atol=1e-5)


# ---- merge ------------------------------------------------------------------------------------------

def test_merge_folds_W0_plus_scaled_BA_and_restores_plain_linears():
    torch.manual_seed(0)
    m = Two()
    keys = list(m.state_dict())
    W0 = m.lin.weight.detach().clone()
    apply_lora(m, r=2, alpha=3, targets=("lin",))
    A, B = torch.randn(2, 5), torch.randn(3, 2)
    with torch.no_grad():
        m.lin.lora_A.copy_(A)
        m.lin.lora_B.copy_(B)
    assert merge_lora(m) == 1
    assert type(m.lin) is nn.Linear and list(m.state_dict()) == keys
    torch.testing.assert_close(m.lin.weight.detach(), W0 + 1.5 * B @ A, rtol=0, atol=1e-6)


# Wrapped layers, counted by hand: the nano GPT has 4 blocks x (c_q, c_k, c_v, c_proj, c_fc, c_proj) = 24
# (attn.c_proj and mlp.c_proj are both "c_proj"); the tiny DeepSeek decoder has layer 0 dense (q, k, v, o +
# gate, up, down = 7) and layers 1-2 MoE (4 attention + 8 experts x 3 + 1 shared expert x 3 = 31 each): 69.
@pytest.mark.parametrize("build, targets, wrapped", [(nano_gpt, GPT_TARGETS, 24), (tiny_deepseek, DEEPSEEK_TARGETS, 69)],
                         ids=["nanoocr-gpt", "deepseek-decoder"])
def test_train_then_merge(build, targets, wrapped):
    """A few AdamW steps on the adapters only lower the loss; the base never moves; the merged model gives the
    adapted model's logits and has the original state_dict keys."""
    model = build()
    keys = list(model.state_dict())
    base = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_lora(model, r=4, alpha=8, targets=None)  # None: the decoder's own names
    assert len(report.wrapped) == wrapped and all(n.rpartition(".")[2] in targets for n in report.wrapped)
    assert not [n for n, m in model.named_modules() if type(m) is nn.Linear and n.rpartition(".")[2] in targets]
    adapters = {n for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))}
    assert len(adapters) == 2 * wrapped
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapters
    assert report.trainable == report.adapter == sum(p.numel() for n, p in model.named_parameters() if n in adapters)

    V = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (4, 33), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for step in range(8):
        loss = model(x, targets=y)
        if getattr(model, "aux_loss", None) is not None:
            loss = loss + model.aux_loss
        opt.zero_grad()
        loss.backward()
        if step == 0:  # only the adapters get gradients, and all of them
            got = {n for n, p in model.named_parameters() if p.grad is not None}
            assert got == adapters, sorted(got ^ adapters)[:5]
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    sd = model.state_dict()
    for k, v in base.items():
        assert torch.equal(sd[k], v), f"{k}: a frozen base weight moved"

    model.eval()
    with torch.no_grad():
        adapted = model(x)
        merge_lora(model)
        merged = model(x)
    assert list(model.state_dict()) == keys
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert (merged - adapted).abs().max() <= 1e-5, (merged - adapted).abs().max()
    assert (adapted - base_logits(build, base, x)).abs().max() > 1e-3, "training changed nothing"


def base_logits(build, base_state, x):
    model = build()
    model.load_state_dict(base_state)
    with torch.no_grad():
        return model.eval()(x)


# ---- inside the VLM: parts, also_train, wrapped blocks ----------------------------------------------

def test_vlm_adapters_resolve_to_their_part_and_also_train():
    model = NanoOCR(build_config("nano"))
    model.set_activation_checkpointing(True)  # blocks inside checkpoint wrappers: names stay clean
    keys = list(model.state_dict())
    report = apply_lora(model, r=2, alpha=2, targets=GPT_TARGETS + ("projector",), modules=("gpt", "projector"),
                        also_train=("image_newline", "view_separator"))
    assert "projector" in report.wrapped and "gpt.transformer.h.0.attn.c_q" in report.wrapped
    assert not any("_checkpoint_wrapped_module" in n for n in report.wrapped)
    trainable = {n: param_part(n) for n, p in model.named_parameters() if p.requires_grad}
    assert trainable["projector.lora_A"] == "projector"
    assert trainable["gpt.transformer.h.0.attn.c_q.lora_B"] == "gpt"
    assert trainable["image_newline"] == "newline" and "projector.weight" not in trainable
    assert all(n.endswith((".lora_A", ".lora_B")) for n in trainable if n not in ("image_newline", "view_separator"))
    assert set(lora_state_dict(model)) == {n for n in trainable if n.endswith((".lora_A", ".lora_B"))}
    merge_lora(model)
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("preset", ["nano", "deepseek_ocr_tiny"])
def test_adapters_start_right_on_a_meta_device_build(preset):
    """A model built on the meta device, adapted, then materialized (what FSDP's param_init_fn does per module):
    every adapter starts B = 0, A within kaiming's bound, in the GPT / decoder, the projector and CLIP alike."""
    with torch.device("meta"):
        model = NanoOCR(build_config(preset))
    apply_lora(model, r=2, alpha=2, targets=None, modules=("gpt",))
    model.materialize("cpu")
    with torch.device("meta"):
        vision = NanoOCR(build_config(preset))
    apply_lora(vision, r=2, alpha=2, targets=("projector", "fc1"), modules=("projector", "clip"))
    vision.materialize("cpu")
    lins = [m for m in (*model.modules(), *vision.modules()) if isinstance(m, LoRALinear)]
    assert len(lins) > 10 and vision.projector in lins and vision.clip.transformer.layers[0].mlp.fc1 in lins
    for lin in lins:
        assert not lin.weight.is_meta and torch.equal(lin.lora_B, torch.zeros_like(lin.lora_B))
        assert 0 < lin.lora_A.abs().max() <= 1 / math.sqrt(lin.in_features)


# ---- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(r=0), "r must be an integer in 1..4096, got 0"),
    (dict(r=-2), "r must be an integer in 1..4096, got -2"),
    (dict(r=2.5), "r must be an integer"),
    (dict(alpha=0), "alpha must be a positive number"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(targets=("c_q", "q_proj")), r"targets \['q_proj'\] match no nn.Linear in the model; its Linear names: "
                                      r"\['c_fc', 'c_k', 'c_proj', 'c_q', 'c_v', 'lm_head'\]"),
    (dict(targets=("lm_head",)), "target 'lm_head' is refused: the chunked loss reads lm_head.weight"),
    (dict(targets=()), "targets is empty"),
    (dict(modules=("transformer.wte",)), r"match no nn.Linear in modules \['transformer.wte'\]"),
    (dict(modules=("decoder",)), r"modules \['decoder'\] name no submodule of GPT"),
    (dict(also_train=("projector",)), r"also_train \['projector'\] names no parameter of GPT"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    args = dict(r=4, alpha=8, targets=GPT_TARGETS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        apply_lora(GPT(build_config("nano").gpt), **args)


def test_twice_and_unknown_decoder_are_errors():
    m = Two()
    with pytest.raises(ValueError, match="has neither nanochat's GPT linears"):
        apply_lora(m, r=2, alpha=2)
    apply_lora(m, r=2, alpha=2, targets=("lin",))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(m, r=2, alpha=2, targets=("other",))


# ---- DDP: adapters exist before the wrap, only they are reduced --------------------------------------

def test_ddp_step_trains_only_the_adapters(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    # An in-process Composer Trainer run earlier in the session may leave its single-rank group behind: use it.
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    assert dist.get_world_size() == 1
    try:
        model = nano_gpt()
        apply_lora(model, r=2, alpha=4)
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        ddp = DDP(model)
        opt = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=1e-2)
        ids = torch.randint(0, model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
        ddp(ids[:, :-1], targets=ids[:, 1:]).backward()
        opt.step()
        assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
        assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith(".lora_B"))
    finally:
        if owned:
            dist.destroy_process_group()
