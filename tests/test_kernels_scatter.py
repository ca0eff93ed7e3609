"""kernels/scatter.py against an independent reference (F.embedding, then index assignment of the vision
rows), output and both gradients. On CPU the kernels run under the Triton interpreter (conftest).

Error measure: rel_err(a, b) = max|a - b| / max(max|b|, 1) (b = reference)."""
import pytest
import torch
import torch.nn.functional as F

import kernels.scatter as scatter_mod
from kernels.scatter import embed_scatter, embed_scatter_torch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy noise from the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMG = 7  # the image token id in these tests
# A gather is exact; only the fp32 scatter-add of repeated ids (order of additions) and its final
# rounding to the table's dtype may differ from the reference.
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() if b.numel() else 0.0


def reference(ids, wte, vision):
    out = F.embedding(ids, wte).clone()  # (B, T, C)
    if vision is not None:
        out[ids == IMG] = vision.to(out.dtype)  # boolean mask indexing is row-major over (b, t)
    return out


def make_inputs(B, T, V, C, dtype, n_img_per_row=(3,), seed=0):
    """ids drawn from a small range so ids repeat a lot; some image runs per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(V, 12), (B, T), generator=g)
    ids[ids == IMG] = IMG + 1  # image positions only where placed below
    for b in range(B):
        n = n_img_per_row[b % len(n_img_per_row)]
        start = int(torch.randint(0, max(1, T - n + 1), (1,), generator=g))
        ids[b, start:start + n] = IMG
    N = int((ids == IMG).sum())
    wte = torch.randn(V, C, generator=g).to(DEVICE, dtype).requires_grad_()
    vision = torch.randn(N, C, generator=g).to(DEVICE, dtype).requires_grad_()
    return ids.to(DEVICE), wte, vision


def check(ids, wte, vision, dtype):
    """Kernel vs the reference run in fp64 (the fp16 embedding backward of torch itself rounds every add)."""
    out = embed_scatter(ids, wte, vision, IMG)
    g = torch.randn_like(out)
    out.backward(g)
    w2 = wte.detach().double().requires_grad_()
    v2 = vision.detach().double().requires_grad_() if vision is not None else None
    ref = reference(ids, w2, v2)
    ref.backward(g.double())
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.equal(out, ref.to(dtype)), "forward is a pure copy and must be exact"
    assert wte.grad.dtype == wte.dtype
    err = rel_err(wte.grad, w2.grad)
    assert err < TOL[dtype], f"wte grad rel err {err:.2e} >= {TOL[dtype]:.0e}"
    if vision is not None:
        assert vision.grad.dtype == vision.dtype and torch.equal(vision.grad, v2.grad.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("B,T,V,C,n_img", [(1, 1, 16, 32, (1,)), (2, 17, 50, 48, (3, 0)), (3, 127, 300, 64, (40, 1, 9)),
                                           (2, 1000, 64, 32, (273, 0))])
def test_matches_reference(B, T, V, C, n_img, dtype):
    check(*make_inputs(B, T, V, C, dtype, n_img), dtype)


def test_small_tiles(monkeypatch):
    # Several row and column tiles per launch, ragged in both directions (C = 40 over 16-wide tiles).
    monkeypatch.setattr(scatter_mod, "_block_sizes", lambda C: (4, 16))
    check(*make_inputs(3, 23, 30, 40, torch.float32, (5, 2, 0)), torch.float32)


@pytest.mark.gpu
@requires_gpu
def test_bf16_gpu():
    check(*make_inputs(4, 500, 1000, 256, torch.bfloat16, (100, 0, 7)), torch.bfloat16)


def test_repeated_ids_accumulate_and_image_rows_give_wte_no_grad():
    # Every text position is token 3: its gradient is the sum over all text rows (computed here by hand);
    # the image token's own embedding row gets nothing.
    ids = torch.full((2, 9), 3, device=DEVICE)
    ids[0, 2:5] = IMG
    ids[1, 8] = IMG
    wte = torch.randn(10, 32, device=DEVICE, requires_grad=True)
    vision = torch.randn(4, 32, device=DEVICE, requires_grad=True)
    out = embed_scatter(ids, wte, vision, IMG)
    g = torch.randn_like(out)
    out.backward(g)
    text = ids != IMG
    assert rel_err(wte.grad[3], g[text].sum(0)) < 1e-6
    assert wte.grad[IMG].abs().max() == 0, "image positions leaked gradient into the image token's row"
    others = [i for i in range(10) if i != 3]
    assert wte.grad[others].abs().max() == 0
    assert torch.equal(vision.grad, g[~text])


def test_image_rows_land_in_row_major_order():
    ids = torch.tensor([[1, IMG, 2, IMG], [IMG, IMG, 3, 4], [5, 6, 7 + 1, IMG]], device=DEVICE)
    wte = torch.zeros(16, 8, device=DEVICE)
    vision = torch.arange(5, dtype=torch.float32, device=DEVICE)[:, None].expand(5, 8) + 100  # row k = 100 + k
    out = embed_scatter(ids, wte, vision, IMG)
    got = out[..., 0][ids == IMG].tolist()
    assert got == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert out[1, 0, 0] == 102.0 and out[2, 3, 0] == 104.0


def test_text_only_matches_embedding():
    ids = torch.randint(0, 20, (2, 13), device=DEVICE)
    ids[ids == IMG] = 0
    wte = torch.randn(20, 24, device=DEVICE, requires_grad=True)
    out = embed_scatter(ids, wte, None, IMG)
    out.sum().backward()
    assert torch.equal(out, F.embedding(ids, wte.detach()))
    assert torch.equal(wte.grad, torch.bincount(ids.flatten(), minlength=20).float()[:, None].expand(20, 24))


def test_vision_dtype_differs_from_table():
    # e.g. a half-precision projector output merged into an fp32 table: output in the table's dtype,
    # vision grad in vision's dtype.
    ids, wte, vision = make_inputs(2, 11, 20, 32, torch.float32, (4,))
    vision = vision.detach().half().requires_grad_()
    out = embed_scatter(ids, wte, vision, IMG)
    assert out.dtype == torch.float32
    out.backward(torch.ones_like(out))
    assert vision.grad.dtype == torch.float16 and torch.equal(vision.grad, torch.ones_like(vision))
    assert torch.equal(out[ids == IMG], vision.detach().float())


@pytest.mark.parametrize("fn", [embed_scatter, embed_scatter_torch], ids=["triton", "torch"])
def test_count_mismatch_raises(fn):
    ids, wte, vision = make_inputs(2, 10, 20, 16, torch.float32, (3,))  # 6 image positions
    with pytest.raises(ValueError, match="6 image positions but vision has 5 rows"):
        fn(ids, wte, vision[:5], IMG)
    with pytest.raises(ValueError, match="6 image positions but vision has 0 rows"):
        fn(ids, wte, None, IMG)


def test_bad_ids_raise():
    wte = torch.randn(10, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 10\)"):
        embed_scatter(torch.tensor([[1, 10]], device=DEVICE), wte, None, IMG)
    with pytest.raises(AssertionError, match="vision must be"):
        embed_scatter(torch.tensor([[1, IMG]], device=DEVICE), wte, torch.randn(1, 8, device=DEVICE), IMG)


def test_cpu_fallback_is_torch(monkeypatch):
    monkeypatch.setattr(scatter_mod, "_INTERPRET", False)
    monkeypatch.setattr(scatter_mod.EmbedScatterFunction, "apply", lambda *a: pytest.fail("kernel path taken"))
    ids, wte, vision = [x.detach().cpu() for x in make_inputs(2, 15, 20, 16, torch.float32, (2,))]
    assert torch.equal(embed_scatter(ids, wte, vision, IMG), reference(ids, wte, vision))
