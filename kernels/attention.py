"""Fused causal attention (flash-attention style) in Triton, forward and backward.

Notable features:
- Online softmax: the forward streams key/value blocks through SRAM, keeps a running max and sum per
  query row and never materialises the T x T score matrix; it stores the row logsumexp for backward.
- FA2 backward without atomics: a preprocess kernel (delta = rowsum(dO * O)), a dK/dV kernel that owns
  one key block and loops over query blocks, and a dQ kernel that owns one query block and loops over
  key blocks. Every output element is written by exactly one program, so the result is deterministic
  (and the interpreter, which runs programs one after another, cannot hide a race).
- Causal only (Tq == Tk), same head count for q/k/v, D in {32, 64, 128}, any T (ragged tails masked),
  fp32 / fp16 / bf16 inputs with fp32 accumulation, `scale` defaults to 1/sqrt(D).
- Block sizes come from `_block_sizes`; on a GPU the kernels are @triton.autotune'd instead (the
  decorator fails at import time without a GPU, so it is guarded).
- `attention` runs the kernels on CUDA tensors or under TRITON_INTERPRET=1 (CPU tests) and falls back
  to `attention_torch` (torch SDPA, causal) elsewhere.

Layout: q, k, v, o are (B, H, T, D). The launchers make them contiguous once, so every kernel uses one
offset formula (row r of head bh starts at (bh * T + r) * D); the copy is O(T*D) next to O(T^2*D) work.
"""
import math
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

# Read once, like @triton.jit itself does at decoration time.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_AUTOTUNE = torch.cuda.is_available() and not _INTERPRET
_HEAD_DIMS = (32, 64, 128)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# exp(x) = exp2(x * log2(e)); exp2 is the native GPU instruction. A constexpr: kernels may only read
# constexpr globals (the interpreter does not check this, the GPU compiler does).
LOG2E = tl.constexpr(1.4426950408889634)


def _autotune(configs, key):
    """@triton.autotune on a GPU, identity otherwise (autotune needs a device to decorate)."""
    if not _AUTOTUNE:
        return lambda fn: fn
    return triton.autotune(configs=configs, key=key)


def _configs(pairs):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in pairs]


_FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 32, 4, 4)])
_BWD_CONFIGS = _configs([(64, 64, 4, 2), (64, 64, 8, 3), (32, 64, 4, 3), (64, 32, 4, 3), (128, 64, 8, 2)])


def _block_sizes(T: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) when not autotuning. The interpreter pays per block operation, not per
    element, so it wants the biggest tile that T fills; tl.dot needs tiles >= 16 on a GPU."""
    if _INTERPRET:
        b = min(128, max(16, triton.next_power_of_2(T)))
        return b, b
    return 64, 64


# ----------------------------------------------------------------------------------------------------
# Kernels


@_autotune(_FWD_CONFIGS, key=["HEAD_DIM", "T_BUCKET"])
@triton.jit
def _attn_fwd_kernel(Q, K, V, O, LSE, H, T, T_BUCKET, scale,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """One program = BLOCK_M query rows of one (batch, head). Grid (cdiv(T, BLOCK_M), B * H)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * T * HEAD_DIM  # int64: B*H*T*D can pass 2^31
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=offs_m[:, None] < T, other=0.0)
    if DOT_FP32:  # the interpreter's bf16 tl.dot is wrong (numpy has no bf16); fp32 operands are exact
        q = q.to(tl.float32)
    qk_scale = scale * LOG2E  # fold the softmax scale and the exp -> exp2 change of base into one multiply
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max of s (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running row sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)  # running sum of exp2(s - m_i) @ V
    # Causal: keys beyond the last query of this block are never needed.
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        kt = tl.load(K + base + offs_n[None, :] * HEAD_DIM + offs_d[:, None], mask=offs_n[None, :] < T, other=0.0)
        v = tl.load(V + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=offs_n[:, None] < T, other=0.0)
        if DOT_FP32:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        # s = (q k^T) * scale, kept in log2 units: s2 = s * log2(e)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        # mask future keys (j > i) and the ragged tail (j >= T); row i always sees key 0, so no row is all -inf
        keep = (offs_m[:, None] >= offs_n[None, :]) & (offs_n[None, :] < T)
        s = tl.where(keep, s, float("-inf"))
        # online softmax: m' = max(m, rowmax(s)); alpha = 2^(m - m') rescales what was summed so far
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])  # unnormalised probabilities of this block
        # l' = alpha * l + rowsum(p);  acc' = alpha * acc + p @ v
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    # o = acc / l;  lse = ln(sum_j exp(s_ij)) = (m + log2 l) * ln 2, in natural units for backward
    o = acc / l_i[:, None]
    lse = (m_i + tl.math.log2(l_i)) / LOG2E
    row_ok = offs_m < T
    tl.store(O + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], o.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, lse, mask=row_ok)


@triton.jit
def _attn_bwd_preprocess_kernel(O, DO, DELTA, T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d dO_id * O_id (= sum_j P_ij dP_ij, the softmax-backward row term).
    Grid (cdiv(T, BLOCK_M), B * H)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * T * HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = base + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    mask = offs_m[:, None] < T
    o = tl.load(O + ptrs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@_autotune(_BWD_CONFIGS, key=["HEAD_DIM", "T_BUCKET"])
@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, T, T_BUCKET, scale,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """One program = BLOCK_N key rows of one (batch, head); loops over the query blocks that see them
    (causal: queries i >= first key). Works on transposed tiles (keys x queries) so that dK and dV
    accumulate as plain (BLOCK_N, D) sums. Grid (cdiv(T, BLOCK_N), B * H)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * T * HEAD_DIM
    row_base = pid_bh.to(tl.int64) * T
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_ptrs = base + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K + kv_ptrs, mask=offs_n[:, None] < T, other=0.0)
    v = tl.load(V + kv_ptrs, mask=offs_n[:, None] < T, other=0.0)
    if DOT_FP32:  # see _attn_fwd_kernel
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    # First query block that contains a query i >= start_n (earlier ones are fully masked).
    lo = (start_n // BLOCK_M) * BLOCK_M
    for start_m in range(lo, T, BLOCK_M):
        offs_m = start_m + offs_m0
        m_ok = offs_m < T
        qt = tl.load(Q + base + offs_m[None, :] * HEAD_DIM + offs_d[:, None], mask=m_ok[None, :], other=0.0)
        do = tl.load(DO + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=m_ok[:, None], other=0.0)
        lse = tl.load(LSE + row_base + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=m_ok, other=0.0)
        if DOT_FP32:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        # P^T = exp(s^T - lse): recomputed from the saved logsumexp instead of stored (no T x T matrix)
        st = tl.dot(k, qt, input_precision=PRECISION)  # (BLOCK_N, BLOCK_M) = (q k^T)^T, unscaled
        pt = tl.math.exp2(st * (scale * LOG2E) - lse[None, :] * LOG2E)
        keep = (offs_m[None, :] >= offs_n[:, None]) & m_ok[None, :]
        pt = tl.where(keep, pt, 0.0)
        # o = P v  =>  dV = P^T dO
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        # dP = dO V^T  =>  dP^T = V dO^T
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        # softmax backward: dS = P o (dP - delta), delta_i = rowsum(P o dP) = rowsum(dO o O)
        dst = pt * (dpt - delta[None, :])
        # s = scale * q k^T  =>  dK = scale * dS^T q   (scale applied once after the loop)
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PRECISION)
    n_ok = offs_n[:, None] < T
    tl.store(DK + kv_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=n_ok)
    tl.store(DV + kv_ptrs, dv.to(DV.dtype.element_ty), mask=n_ok)


@_autotune(_BWD_CONFIGS, key=["HEAD_DIM", "T_BUCKET"])
@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, T, T_BUCKET, scale,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """One program = BLOCK_M query rows of one (batch, head); loops over the key blocks they see.
    Grid (cdiv(T, BLOCK_M), B * H)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * T * HEAD_DIM
    row_base = pid_bh.to(tl.int64) * T
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < T
    q_ptrs = base + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + q_ptrs, mask=m_ok[:, None], other=0.0)
    do = tl.load(DO + q_ptrs, mask=m_ok[:, None], other=0.0)
    lse = tl.load(LSE + row_base + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=m_ok, other=0.0)
    if DOT_FP32:  # see _attn_fwd_kernel
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_ok = offs_n < T
        kt = tl.load(K + base + offs_n[None, :] * HEAD_DIM + offs_d[:, None], mask=n_ok[None, :], other=0.0)
        vt = tl.load(V + base + offs_n[None, :] * HEAD_DIM + offs_d[:, None], mask=n_ok[None, :], other=0.0)
        if DOT_FP32:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        # P = exp(scale * q k^T - lse), recomputed
        p = tl.math.exp2(tl.dot(q, kt, input_precision=PRECISION) * (scale * LOG2E) - lse[:, None] * LOG2E)
        keep = (offs_m[:, None] >= offs_n[None, :]) & n_ok[None, :]
        p = tl.where(keep, p, 0.0)
        # dP = dO V^T
        dp = tl.dot(do, vt, input_precision=PRECISION)
        # dS = P o (dP - delta)
        ds = p * (dp - delta[:, None])
        # s = scale * q k^T  =>  dQ = scale * dS k   (scale applied once after the loop)
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    tl.store(DQ + q_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=m_ok[:, None])


# ----------------------------------------------------------------------------------------------------
# Launchers


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    assert q.dim() == 4, f"attention expects (B, H, T, D) tensors, got q of shape {tuple(q.shape)}"
    assert q.shape == k.shape == v.shape, (
        f"q, k, v must have the same (B, H, T, D) shape (causal self-attention, n_kv_head == n_head), "
        f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    assert q.dtype == k.dtype == v.dtype, f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}"
    assert q.dtype in _DTYPES, f"attention supports {_DTYPES}, got {q.dtype}"
    assert q.shape[-1] in _HEAD_DIMS, f"head dim D={q.shape[-1]} not supported; use one of {_HEAD_DIMS}"
    assert q.device == k.device == v.device, f"q, k, v on different devices: {q.device}, {k.device}, {v.device}"


def _launch_options(x: torch.Tensor, T: int) -> dict:
    """Compile-time options shared by the fwd / dkdv / dq kernels."""
    # fp32 inputs: honour torch's TF32 switch so fp32 here means what fp32 means for torch matmuls.
    # (For fp16/bf16 operands the setting has no effect; keep Triton's default there.)
    ieee = x.dtype == torch.float32 and not (x.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    precision = "ieee" if ieee else "tf32"
    # T_BUCKET is only an autotune key: tune once per power-of-two size class, not per distinct T
    # (batches are padded to their longest sample, so T changes nearly every step).
    # DOT_FP32: the interpreter's bf16 tl.dot is wrong, fp32 operands are exact; never set on a GPU.
    opts = dict(T_BUCKET=triton.next_power_of_2(T), DOT_FP32=_INTERPRET and x.dtype == torch.bfloat16,
                PRECISION=precision)
    if not _AUTOTUNE:
        bm, bn = _block_sizes(T)
        opts.update(BLOCK_M=bm, BLOCK_N=bn)
    return opts


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """Launch the forward kernel. Returns (o (B, H, T, D) in q.dtype, lse (B, H, T) fp32)."""
    _check(q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, H, T, D = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)  # noqa: E731
    _attn_fwd_kernel[grid](q, k, v, o, lse, H, T, scale=scale, HEAD_DIM=D, **_launch_options(q, T))
    return o, lse


def attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                       lse: torch.Tensor, scale: float):
    """Launch the three backward kernels. Returns (dq, dk, dv), each (B, H, T, D) in q.dtype."""
    assert do.shape == o.shape, f"grad shape {tuple(do.shape)} != output shape {tuple(o.shape)}"
    do = do.contiguous().to(q.dtype)  # (B, H, T, D)
    B, H, T, D = q.shape
    delta = torch.empty_like(lse)  # (B, H, T) fp32
    bm_pre = 128 if _INTERPRET else 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(T, bm_pre), B * H)](o, do, delta, T, HEAD_DIM=D, BLOCK_M=bm_pre)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    opts = _launch_options(q, T)
    grid_kv = lambda meta: (triton.cdiv(T, meta["BLOCK_N"]), B * H)  # noqa: E731
    _attn_bwd_dkdv_kernel[grid_kv](q, k, v, do, lse, delta, dk, dv, T, scale=scale, HEAD_DIM=D, **opts)
    grid_q = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)  # noqa: E731
    _attn_bwd_dq_kernel[grid_q](q, k, v, do, lse, delta, dq, T, scale=scale, HEAD_DIM=D, **opts)
    return dq, dk, dv


class AttentionFunction(torch.autograd.Function):
    """Causal attention with the Triton kernels in both directions; saves q, k, v, o and the logsumexp
    (O(T) per row) instead of the T x T probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the layout every kernel assumes
        o, lse = attention_forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(do, q, k, v, o, lse, ctx.scale)
        return dq, dk, dv, None


def attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Torch fallback: SDPA with a causal mask. (B, H, T, D) -> (B, H, T, D)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal self-attention, (B, H, T, D) x3 -> (B, H, T, D). Triton kernels on CUDA or under
    TRITON_INTERPRET=1; torch SDPA otherwise."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if q.is_cuda or _INTERPRET:
        device_type = q.device.type
        if torch.is_autocast_enabled(device_type):
            # SDPA is a lower-precision op under autocast, and norms upcast: q/k can arrive fp32 next to a
            # bf16 v. Cast like SDPA would (outside the Function, so autograd casts the grads back).
            dtype = torch.get_autocast_dtype(device_type)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        return AttentionFunction.apply(q, k, v, float(scale))
    return attention_torch(q, k, v, scale)
