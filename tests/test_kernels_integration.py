"""The Triton paths inside the models: a GPT and a NanoOCR training step with attn_impl / embed_impl =
"triton" (under the interpreter on CPU) give the same loss and the same gradient for every parameter as
the torch paths (SDPA, F.embedding + masked_scatter) with identical weights.

Error measure: rel_err(a, b) = max|a - b| / max|b| (b = the torch path's value)."""
import sys

import pytest
import torch

import kernels.attention
import kernels.scatter
from nanoocr.model import presets
from nanoocr.model.gpt import GPT, GPTConfig
from nanoocr.model.vlm import NanoOCR

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy noise from the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOSS_TOL, GRAD_TOL = 1e-5, 1e-4  # fp32 end to end


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def count_calls(monkeypatch, module, name):
    """Wrap module.name so the test can prove the kernel path really ran (a silent fallback would pass)."""
    calls = []
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


@torch.no_grad()
def randomize_zero_inits(model):
    # nanochat zero-initialises lm_head and every c_proj: at step 0 no gradient would reach the attention
    # or the embedding, and the comparison below could not fail. Give them small random weights.
    for name, p in model.named_parameters():
        if name.endswith("lm_head.weight") or name.endswith("c_proj.weight"):
            p.normal_(0.0, 0.05)


def twin_models(build, config_torch, config_triton):
    """Two models with identical weights, differing only in the kernel choice."""
    torch.manual_seed(0)
    ref = build(config_torch).to(DEVICE)
    randomize_zero_inits(ref)
    tri = build(config_triton).to(DEVICE)
    tri.load_state_dict(ref.state_dict())
    return ref, tri


def compare_step(ref, tri, **batch):
    loss_ref = ref(**batch)
    loss_ref.backward()
    loss_tri = tri(**batch)
    loss_tri.backward()
    assert rel_err(loss_tri, loss_ref) < LOSS_TOL, f"loss {loss_tri.item()} vs {loss_ref.item()}"
    grads_ref = dict(ref.named_parameters())
    n_checked = 0
    for name, p in tri.named_parameters():
        g_ref = grads_ref[name].grad
        if g_ref is None:
            assert p.grad is None, f"{name}: grad only on the triton path"
            continue
        assert p.grad is not None, f"{name}: no grad on the triton path"
        assert g_ref.abs().max() > 0, f"{name}: zero reference gradient, the comparison would be void"
        err = rel_err(p.grad, g_ref)
        assert err < GRAD_TOL, f"{name}: grad rel err {err:.2e} >= {GRAD_TOL:.0e}"
        n_checked += 1
    return n_checked


def test_gpt_training_step_triton_attention(monkeypatch):
    calls = count_calls(monkeypatch, kernels.attention, "attention_forward")
    base = dict(sequence_len=64, vocab_size=96, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)  # head dim 32
    ref, tri = twin_models(GPT, GPTConfig(**base), GPTConfig(**base, attn_impl="triton"))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 96, (2, 41), generator=g).to(DEVICE)  # odd T
    targets = torch.randint(0, 96, (2, 41), generator=g).to(DEVICE)
    targets[:, :5] = -1  # ignored positions, as prompts are in training
    n = compare_step(ref, tri, ids=ids, targets=targets)
    assert n == len(list(tri.parameters()))
    assert len(calls) == 2, f"expected one Triton attention call per layer, got {len(calls)}"


def test_vlm_training_step_triton_attention_and_scatter(monkeypatch):
    attn_calls = count_calls(monkeypatch, kernels.attention, "attention_forward")
    scatter_calls = count_calls(monkeypatch, kernels.scatter, "embed_scatter_forward")
    gpt = dict(vocab_size=128, n_layer=1)  # the GPT test covers depth; the interpreter is slow
    cfg_ref = presets.build_config("nano", gpt=gpt)
    cfg_tri = presets.build_config("nano", gpt={**gpt, "attn_impl": "triton", "embed_impl": "triton"})
    ref, tri = twin_models(NanoOCR, cfg_ref, cfg_tri)
    image_id = cfg_ref.image_token_id
    # Two 512 px images (tiny mode: 8 x 8 grid + 8 newlines + 1 separator = 73 vision vectors each) in a
    # batch of three rows; the second row is text only.
    g = torch.Generator().manual_seed(2)
    images = (torch.rand(2, 3, 512, 512, generator=g) * 2 - 1).to(DEVICE)
    T = 90
    ids = torch.randint(0, image_id, (3, T), generator=g)
    ids[0, 2:75] = image_id
    ids[2, 10:83] = image_id
    targets = torch.randint(0, image_id, (3, T), generator=g)
    targets[ids == image_id] = -1
    ids, targets = ids.to(DEVICE), targets.to(DEVICE)
    n = compare_step(ref, tri, ids=ids, targets=targets, images=images)
    assert n > 0
    for name in ("image_newline", "view_separator", "projector.weight", "gpt.transformer.wte.weight"):
        assert dict(tri.named_parameters())[name].grad is not None, f"{name} got no gradient"
    assert len(scatter_calls) == 1 and len(attn_calls) == cfg_tri.gpt.n_layer


def test_vlm_triton_embed_raises_on_count_mismatch():
    cfg = presets.build_config("nano", gpt=dict(vocab_size=128, n_layer=1, embed_impl="triton"))
    model = NanoOCR(cfg).to(DEVICE)
    ids = torch.zeros(1, 8, dtype=torch.long, device=DEVICE)
    ids[0, :3] = cfg.image_token_id
    with pytest.raises(ValueError, match="3 image tokens"):
        model.embed(ids, torch.randn(2, cfg.gpt.n_embd, device=DEVICE))


def test_triton_available_is_false_where_triton_cannot_import(monkeypatch):
    """pyproject.toml installs triton only on Linux x86_64; elsewhere `import triton` fails and the
    callers' check must say so (a None entry in sys.modules makes the import raise ImportError)."""
    import kernels

    assert kernels.triton_available()  # this machine: the dev install has triton
    kernels.triton_available.cache_clear()
    monkeypatch.setitem(sys.modules, "triton", None)
    try:
        assert not kernels.triton_available()
    finally:
        kernels.triton_available.cache_clear()  # the next caller sees the real triton again


def test_models_take_the_torch_paths_where_triton_cannot_import(monkeypatch):
    """Where triton is not installed (pyproject.toml installs it only on Linux x86_64), attn_impl /
    embed_impl "triton" run the torch paths: no kernel launched, the same logits as "torch"."""
    import kernels

    calls = count_calls(monkeypatch, kernels.attention, "attention_forward")
    calls += count_calls(monkeypatch, kernels.scatter, "embed_scatter_forward")
    gpt = dict(vocab_size=128, n_layer=1)
    cfg_ref = presets.build_config("nano", gpt=gpt)
    cfg_tri = presets.build_config("nano", gpt={**gpt, "attn_impl": "triton", "embed_impl": "triton"})
    ref, tri = twin_models(NanoOCR, cfg_ref, cfg_tri)
    ids = torch.randint(0, cfg_ref.image_token_id, (2, 24), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    kernels.triton_available.cache_clear()
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    try:
        with torch.no_grad():
            assert torch.equal(tri(ids), ref(ids))
    finally:
        kernels.triton_available.cache_clear()
    assert calls == [], f"a Triton kernel ran without triton: {calls}"
