"""Fused token embedding + image scatter in Triton, forward and backward.

out[b, t] = vision[k]          if ids[b, t] == image_id, the k-th image position in row-major (b, t) order
          = wte[ids[b, t]]     otherwise

Notable features:
- One pass over the output: each program gathers a (BLOCK_R rows, BLOCK_C channels) tile, reading
  each row from either the embedding table or the vision features (two masked loads), instead of an
  embedding lookup followed by a boolean-index copy over the same memory.
- k comes from an exclusive cumsum of (ids == image_id), computed in torch (one cheap O(B*T) op).
- Backward: the grad of an image row is gathered to grad_vision[k]; the grad of a text row is
  scatter-added to grad_wte[id] with fp32 atomics. Image positions give wte no gradient.
  Why atomics and not a sort-based reduction: repeated ids (spaces, punctuation, padding) are the common
  case and atomics need no sort, no segment bookkeeping and no host sync in backward. The cost is the order of the
  fp32 additions, which can differ from run to run by an ulp. The accumulator is fp32 even for
  fp16/bf16 tables (one rounding at the end; 16-bit float atomics are not available everywhere).
  The interpreter runs programs one after another, so it cannot show a race; atomics make races moot.
- vision may have a different dtype than wte (e.g. a bf16 projector under autocast, fp32 table): it is
  cast on load, and its gradient is stored back in vision's dtype.
- `embed_scatter` runs the kernels on CUDA tensors or under TRITON_INTERPRET=1, else `embed_scatter_torch`.
"""
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _block_sizes(C: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C). The interpreter pays per block operation, so it takes whole rows and many of
    them; on a GPU a few-KiB tile per program keeps many programs in flight even for small B*T."""
    if _INTERPRET:
        return 64, triton.next_power_of_2(C)
    return 4, min(1024, triton.next_power_of_2(C))


@triton.jit
def _embed_scatter_fwd_kernel(IDS, POS, WTE, VIS, OUT, R, C, image_id,
                              BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (cdiv(R, BLOCK_R), cdiv(C, BLOCK_C)); R = B*T flattened rows."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r_ok = offs_r < R
    c_ok = offs_c[None, :] < C
    ids = tl.load(IDS + offs_r, mask=r_ok, other=0)
    pos = tl.load(POS + offs_r, mask=r_ok, other=0)  # index into vision when the row is an image row
    is_img = (ids == image_id) & r_ok
    is_txt = (ids != image_id) & r_ok
    # int64 row offsets: V*C and N*C can pass 2^31
    txt = tl.load(WTE + ids.to(tl.int64)[:, None] * C + offs_c[None, :], mask=is_txt[:, None] & c_ok, other=0.0)
    img = tl.load(VIS + pos.to(tl.int64)[:, None] * C + offs_c[None, :], mask=is_img[:, None] & c_ok, other=0.0)
    out = tl.where(is_img[:, None], img.to(OUT.dtype.element_ty), txt.to(OUT.dtype.element_ty))
    tl.store(OUT + offs_r.to(tl.int64)[:, None] * C + offs_c[None, :], out, mask=r_ok[:, None] & c_ok)


@triton.jit
def _embed_scatter_bwd_kernel(IDS, POS, DOUT, DWTE, DVIS, R, C, image_id,
                              BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """dwte[id] += dout[r] for text rows (atomic: ids repeat); dvis[k] = dout[r] for image rows
    (plain store: each k belongs to exactly one row). DWTE is fp32. Same grid as the forward."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r_ok = offs_r < R
    c_ok = offs_c[None, :] < C
    ids = tl.load(IDS + offs_r, mask=r_ok, other=0)
    pos = tl.load(POS + offs_r, mask=r_ok, other=0)
    is_img = (ids == image_id) & r_ok
    is_txt = (ids != image_id) & r_ok
    g = tl.load(DOUT + offs_r.to(tl.int64)[:, None] * C + offs_c[None, :], mask=r_ok[:, None] & c_ok, other=0.0)
    # out = wte[id]  =>  dwte[id] = sum over the rows that read it of dout[row]
    tl.atomic_add(DWTE + ids.to(tl.int64)[:, None] * C + offs_c[None, :], g.to(tl.float32),
                  mask=is_txt[:, None] & c_ok)
    # out = vision[k]  =>  dvision[k] = dout[row of k]
    tl.store(DVIS + pos.to(tl.int64)[:, None] * C + offs_c[None, :], g.to(DVIS.dtype.element_ty),
             mask=is_img[:, None] & c_ok)


def _image_positions(ids: torch.Tensor, image_id: int):
    """(is_img (B*T,) bool, pos (B*T,) int32: exclusive cumsum of is_img = the vision row of each image row)."""
    is_img = ids.reshape(-1) == image_id
    csum = torch.cumsum(is_img, 0, dtype=torch.int32)
    return is_img, csum - is_img.to(torch.int32)


def _check(ids: torch.Tensor, wte: torch.Tensor, vision: torch.Tensor | None) -> None:
    assert ids.dim() == 2 and ids.dtype in (torch.int64, torch.int32), (
        f"ids must be (B, T) int64/int32, got {tuple(ids.shape)} {ids.dtype}")
    assert wte.dim() == 2, f"wte must be (V, C), got {tuple(wte.shape)}"
    assert ids.device == wte.device, f"ids on {ids.device} but wte on {wte.device}"
    if vision is not None:
        assert vision.dim() == 2 and vision.shape[1] == wte.shape[1], (
            f"vision must be (N, C={wte.shape[1]}), got {tuple(vision.shape)}")
        assert vision.device == wte.device, f"vision on {vision.device} but wte on {wte.device}"


def _check_count(n_img: int, vision: torch.Tensor | None) -> None:
    n_vis = 0 if vision is None else vision.shape[0]
    if n_img != n_vis:
        raise ValueError(f"embed_scatter: ids hold {n_img} image positions but vision has {n_vis} rows")


def embed_scatter_forward(ids: torch.Tensor, wte: torch.Tensor, vision: torch.Tensor | None, image_id: int):
    """Launch the forward kernel. Returns (out (B, T, C) in wte.dtype, pos (B*T,) int32)."""
    _check(ids, wte, vision)
    B, T = ids.shape
    V, C = wte.shape
    ids_flat = ids.reshape(-1).contiguous()  # (R,) with R = B*T
    R = ids_flat.numel()
    is_img, pos = _image_positions(ids_flat, image_id)
    # One host sync for every check: a bad index inside the kernel would read memory silently.
    # The image token is part of the vocabulary, so all ids (image positions too) must be in [0, V).
    stats = torch.stack([is_img.sum(), ids_flat.min().long(), ids_flat.max().long()]) if R else torch.zeros(3)
    n_img, lo, hi = (int(x) for x in stats.tolist())
    _check_count(n_img, vision)
    if lo < 0 or hi >= V:
        raise ValueError(f"embed_scatter: token ids must lie in [0, {V}), got min {lo}, max {hi}")
    out = torch.empty((B, T, C), device=wte.device, dtype=wte.dtype)
    if R == 0:
        return out, pos
    wte = wte.contiguous()
    vis = vision.contiguous() if n_img else wte  # any valid pointer: never read when there are no image rows
    br, bc = _block_sizes(C)
    grid = (triton.cdiv(R, br), triton.cdiv(C, bc))
    _embed_scatter_fwd_kernel[grid](ids_flat, pos, wte, vis, out, R, C, image_id, BLOCK_R=br, BLOCK_C=bc)
    return out, pos


def embed_scatter_backward(dout: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor, wte_shape, wte_dtype,
                           vision_shape, vision_dtype, image_id: int):
    """Launch the backward kernel. Returns (dwte (V, C) in wte_dtype, dvision (N, C) in vision_dtype | None)."""
    V, C = wte_shape
    ids_flat = ids.reshape(-1).contiguous()
    dout = dout.reshape(-1, C).contiguous()  # (R, C)
    dwte = torch.zeros((V, C), device=dout.device, dtype=torch.float32)  # atomics accumulate in fp32
    dvis = None if vision_shape is None else torch.empty(vision_shape, device=dout.device, dtype=vision_dtype)
    R = ids_flat.numel()
    if R:
        br, bc = _block_sizes(C)
        dvis_ptr = dvis if dvis is not None and dvis.numel() else dwte  # never written without image rows
        _embed_scatter_bwd_kernel[(triton.cdiv(R, br), triton.cdiv(C, bc))](
            ids_flat, pos, dout, dwte, dvis_ptr, R, C, image_id, BLOCK_R=br, BLOCK_C=bc)
    return dwte.to(wte_dtype), dvis


class EmbedScatterFunction(torch.autograd.Function):
    """Fused embedding + image scatter; saves ids and the image-position index (not wte, vision or out)."""

    @staticmethod
    def forward(ctx, ids, wte, vision, image_id):
        out, pos = embed_scatter_forward(ids, wte, vision, image_id)
        ctx.save_for_backward(ids, pos)
        ctx.wte_meta = (tuple(wte.shape), wte.dtype)
        ctx.vision_meta = (None, None) if vision is None else (tuple(vision.shape), vision.dtype)
        ctx.image_id = image_id
        return out

    @staticmethod
    def backward(ctx, dout):
        ids, pos = ctx.saved_tensors
        dwte, dvis = embed_scatter_backward(dout, ids, pos, *ctx.wte_meta, *ctx.vision_meta, ctx.image_id)
        return None, dwte, dvis, None


def embed_scatter_torch(ids: torch.Tensor, wte: torch.Tensor, vision: torch.Tensor | None,
                        image_id: int) -> torch.Tensor:
    """Torch fallback: F.embedding, then the vision rows copied over the image positions in row-major order.
    (B, T) -> (B, T, C)."""
    _check(ids, wte, vision)
    out = F.embedding(ids, wte)  # (B, T, C)
    is_img = ids == image_id
    _check_count(int(is_img.sum()), vision)
    if vision is not None and vision.shape[0]:
        # index_put overwrites, so autograd sends the image rows' grad to vision and none to wte
        out = out.index_put((is_img,), vision.to(out.dtype))
    return out


def embed_scatter(ids: torch.Tensor, wte: torch.Tensor, vision: torch.Tensor | None,
                  image_id: int) -> torch.Tensor:
    """(B, T) ids, (V, C) table, (N, C) vision rows | None -> (B, T, C). Triton on CUDA or under
    TRITON_INTERPRET=1, torch otherwise. Raises ValueError when N != number of image positions."""
    if ids.is_cuda or _INTERPRET:
        return EmbedScatterFunction.apply(ids, wte, vision, int(image_id))
    return embed_scatter_torch(ids, wte, vision, image_id)
