"""kernels/attention.py against an independent reference: explicit causal softmax in fp64 (and torch SDPA),
outputs and every gradient. On CPU the kernels run under the Triton interpreter (conftest sets
TRITON_INTERPRET=1), on a GPU natively.

Error measure: rel_err(a, b) = max|a - b| / max(max|b|, 1) (b = reference), per tensor: relative to the
largest reference value, absolute where the reference is (near) zero everywhere (T = 1: dq = dk = 0)."""
import math

import pytest
import torch
import torch.nn.functional as F

import kernels.attention as attn_mod
from kernels.attention import attention, attention_forward, attention_torch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy noise from the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Max relative error per input dtype (fp32 accumulation inside; the error is the inputs' rounding).
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def reference(q, k, v, scale):
    """softmax(q k^T * scale + causal mask) v, computed in fp64 with the full T x T matrix."""
    T = q.shape[-2]
    s = (q.double() @ k.double().transpose(-1, -2)) * scale  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(s.masked_fill(future, float("-inf")), dim=-1) @ v.double()


def make_qkv(B, H, T, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(3)]


def check_against_reference(B, H, T, D, dtype, scale=None):
    q, k, v = make_qkv(B, H, T, D, dtype)
    o = attention(q, k, v, scale)
    do = torch.randn_like(o)
    o.backward(do)
    qr, kr, vr = [x.detach().double().requires_grad_() for x in (q, k, v)]
    o_ref = reference(qr, kr, vr, 1.0 / math.sqrt(D) if scale is None else scale)
    o_ref.backward(do.double())
    tol = TOL[dtype]
    assert o.dtype == dtype and o.shape == (B, H, T, D)
    for name, got, want in [("o", o, o_ref), ("dq", q.grad, qr.grad), ("dk", k.grad, kr.grad), ("dv", v.grad, vr.grad)]:
        assert got.dtype == dtype, f"{name} dtype {got.dtype} != {dtype}"
        err = rel_err(got, want)
        assert err < tol, f"{name}: rel err {err:.2e} >= {tol:.0e} (B{B} H{H} T{T} D{D} {dtype})"


SHAPES = [(2, 3, 1, 32), (2, 2, 17, 64), (1, 2, 127, 128), (3, 2, 40, 32)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("B,H,T,D", SHAPES)
def test_matches_fp64_reference(B, H, T, D, dtype):
    check_against_reference(B, H, T, D, dtype)


def test_long_sequence_t1000():
    # Several query/key blocks per head, a ragged tail (1000 = 7 * 128 + 104), fwd + bwd once.
    check_against_reference(1, 1, 1000, 32, torch.float32)


def test_interpreter_bf16_path():
    # bf16 runs with fp32 tl.dot operands under the interpreter (see DOT_FP32); native bf16 on a GPU.
    check_against_reference(1, 2, 33, 32, torch.bfloat16)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("B,H,T,D", SHAPES)
def test_bf16_gpu(B, H, T, D):
    check_against_reference(B, H, T, D, torch.bfloat16)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("B,H,T,D", [(2, 4, 1000, 64), (1, 2, 1023, 128), (2, 2, 4096, 64)])
def test_long_sequences_gpu(B, H, T, D, dtype):
    # Sizes the interpreter cannot afford; on a GPU these also exercise the autotuned block sizes.
    check_against_reference(B, H, T, D, dtype)


@pytest.mark.parametrize("bm,bn", [(16, 32), (32, 16), (16, 16)])
def test_block_shapes(monkeypatch, bm, bn):
    # Unequal and small tiles: many blocks per head, diagonal blocks that start mid-tile, ragged tails.
    monkeypatch.setattr(attn_mod, "_block_sizes", lambda T: (bm, bn))
    check_against_reference(2, 1, 45, 32, torch.float32)


def test_custom_scale():
    check_against_reference(1, 2, 29, 64, torch.float32, scale=0.3)


def test_matches_sdpa_and_logsumexp():
    # A second, independent reference: torch SDPA (causal) for o; the saved logsumexp against torch's.
    q, k, v = [x.detach() for x in make_qkv(2, 2, 50, 64, torch.float32, seed=1)]
    scale = 1.0 / 8.0
    o, lse = attention_forward(q, k, v, scale)
    assert rel_err(o, F.scaled_dot_product_attention(q, k, v, is_causal=True)) < 1e-4
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    s = s.masked_fill(torch.ones(50, 50, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    assert lse.shape == (2, 2, 50) and lse.dtype == torch.float32
    assert rel_err(lse, torch.logsumexp(s, dim=-1)) < 1e-5


def test_causal_future_keys_do_not_leak():
    # Odd T: perturb keys/values after position t0; outputs up to t0 must not move at all, and a loss on
    # those outputs must give the future keys/values exactly zero gradient.
    T, t0 = 37, 20
    q, k, v = [x.detach() for x in make_qkv(1, 2, T, 32, torch.float32, seed=2)]
    o1 = attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t0 + 1:] += 5 * torch.randn_like(k2[:, :, t0 + 1:])
    v2[:, :, t0 + 1:] += 5 * torch.randn_like(v2[:, :, t0 + 1:])
    o2 = attention(q, k2, v2)
    assert torch.equal(o1[:, :, :t0 + 1], o2[:, :, :t0 + 1]), "a past output changed when only future k/v did"
    assert not torch.equal(o1[:, :, t0 + 1:], o2[:, :, t0 + 1:]), "the perturbation did nothing: test is void"
    kg, vg = k.clone().requires_grad_(), v.clone().requires_grad_()
    attention(q, kg, vg)[:, :, :t0 + 1].sum().backward()
    assert kg.grad[:, :, t0 + 1:].abs().max() == 0 and vg.grad[:, :, t0 + 1:].abs().max() == 0
    assert vg.grad[:, :, :t0 + 1].abs().max() > 0


def test_non_contiguous_inputs():
    # The GPT hands over (B, T, H, D).transpose(1, 2) views; results and grads must match the reference.
    B, T, H, D = 2, 19, 2, 32
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(B, T, H, D, generator=g).to(DEVICE).requires_grad_() for _ in range(3)]
    q, k, v = [x.transpose(1, 2) for x in base]
    assert not q.is_contiguous()
    o = attention(q, k, v)
    o.sum().backward()
    ref_base = [x.detach().double().requires_grad_() for x in base]
    reference(*[x.transpose(1, 2) for x in ref_base], 1.0 / math.sqrt(D)).sum().backward()
    assert rel_err(o, reference(q, k, v, 1.0 / math.sqrt(D))) < 1e-4
    for got, want in zip(base, ref_base):
        assert got.grad.shape == want.shape and rel_err(got.grad, want.grad) < 1e-4


def test_autocast_mixed_input_dtypes():
    # Under autocast q/k can be fp32 (norms upcast) while v is bf16: cast like SDPA, grads in input dtypes.
    q, k, v = make_qkv(1, 2, 21, 32, torch.float32, seed=5)
    v16 = v.detach().bfloat16().requires_grad_()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        o = attention(q, k, v16)
    assert o.dtype == torch.bfloat16
    o.float().sum().backward()
    assert q.grad.dtype == torch.float32 and v16.grad.dtype == torch.bfloat16
    qr, kr, vr = [x.detach().bfloat16().double().requires_grad_() for x in (q, k, v16)]
    reference(qr, kr, vr, 1.0 / math.sqrt(32)).sum().backward()
    assert rel_err(o, reference(qr, kr, vr, 1.0 / math.sqrt(32))) < TOL[torch.bfloat16]
    for got, want in ((q.grad, qr.grad), (k.grad, kr.grad), (v16.grad, vr.grad)):
        assert rel_err(got, want) < TOL[torch.bfloat16]


def test_bad_inputs_raise():
    q = torch.randn(1, 2, 8, 48, device=DEVICE)
    with pytest.raises(AssertionError, match="head dim D=48"):
        attention(q, q, q)
    q = torch.randn(1, 2, 8, 32, device=DEVICE)
    with pytest.raises(AssertionError, match="same"):
        attention(q, q[:, :1], q[:, :1])
    with pytest.raises(AssertionError, match="dtypes differ"):
        attention(q, q.half(), q)


def test_cpu_fallback_is_sdpa(monkeypatch):
    # Without CUDA and without the interpreter, `attention` must take the torch path (no Triton launch).
    monkeypatch.setattr(attn_mod, "_INTERPRET", False)
    monkeypatch.setattr(attn_mod.AttentionFunction, "apply", lambda *a: pytest.fail("kernel path taken"))
    q, k, v = [x.detach().cpu() for x in make_qkv(1, 2, 9, 32, torch.float32, seed=4)]
    o = attention(q, k, v)
    assert rel_err(o, reference(q, k, v, 1.0 / math.sqrt(32))) < 1e-5
    assert torch.equal(o, attention_torch(q, k, v))
