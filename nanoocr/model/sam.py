"""SAM ViT-B image encoder + DeepSeek-OCR's 16x convolutional compressor (the first half of DeepEncoder).

    pixels (B, 3, H, W) in [-1, 1]
      -> patch_embed (conv 16x16, stride 16)            (B, H/16, W/16, 768)   channels-last from here
      -> + pos_embed (64x64 table, resized for other grids)
      -> 12 blocks: pre-LN attention + pre-LN MLP       window 14 everywhere except global blocks 2, 5, 8, 11
      -> neck: conv1x1 -> LayerNorm2d -> conv3x3 -> LayerNorm2d   (B, 256, H/16, W/16)  <- forward_neck
      -> net_2: conv3x3 s2 (256 -> 512), net_3: conv3x3 s2 (512 -> 1024)     (B, 1024, H/64, W/64)  <- forward

Notable features:
- Parameter names mirror the official DeepSeek-OCR SAM (`patch_embed.proj`, `blocks.N.attn.qkv`,
  `neck.0..3`, `net_2`, `net_3`) so official weights load by stripping a prefix, and HF `SamModel`
  weights by a small rename table (nanoocr/model/pretrained.py).
- Windowed attention zero-pads the token grid to a multiple of the window, exactly like SAM (padded
  tokens take part in attention as keys). A zero token's q|k|v is the qkv bias, so only the real
  tokens are projected and the bias is added while copying into window order (16% less qkv/proj
  work at 1024 px, where the 64x64 grid pads to 70x70).
- Decomposed relative-position bias (MViTv2 / SAM): bias[q, k] = q . Rh[qh - kh] + q . Rw[qw - kw], tables
  linearly interpolated when the grid needs a different length (e.g. global blocks at 640 or 1280 px).
- Attention runs through torch SDPA with the bias as a float attention mask. Without autograd the
  (heads, queries, keys) bias is built chunk by chunk into one reused buffer instead of one 800 MB mask
  per global block at 1024 px (fresh pages for a buffer that size cost more than filling it on CPU).
- Absolute position table resized bicubic + antialias in fp32 for grids other than 64 (512/640/1280 px),
  as the official DeepSeek-OCR code does.
- Exact (erf) GELU; LayerNorm eps 1e-6 everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class SAMConfig:
    img_size: int = 1024  # pretraining resolution: sets the pos-embed grid and the global rel-pos tables
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    neck_dim: int = 256
    net2_dim: int = 512
    out_chans: int = 1024
    pos_embed_grid: int = 64  # = img_size // patch_size for the official weights
    norm_eps: float = 1e-6

    def __post_init__(self):
        self.global_attn_indexes = tuple(self.global_attn_indexes)  # YAML gives lists
        assert self.embed_dim % self.num_heads == 0, \
            f"embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}"
        assert all(0 <= i < self.depth for i in self.global_attn_indexes), \
            f"global_attn_indexes {self.global_attn_indexes} out of range for depth {self.depth}"
        assert self.img_size % self.patch_size == 0, \
            f"img_size {self.img_size} not a multiple of patch_size {self.patch_size}"


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, S, S, C) absolute table -> (1, gh, gw, C); bicubic + antialias in fp32 like the official code."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    x = pos_embed.permute(0, 3, 1, 2).float()  # (1, C, S, S)
    x = F.interpolate(x, size=grid, mode="bicubic", antialias=True, align_corners=False)
    return x.to(pos_embed.dtype).permute(0, 2, 3, 1)  # (1, gh, gw, C)


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis: (q_size, k_size, D).

    The table has 2*L-1 rows for relative offsets -(L-1)..(L-1); when the grid needs a different length
    it is linearly interpolated (align_corners=False), as SAM does."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(rel_pos.T[None], size=max_rel_dist, mode="linear")  # (1, D, L')
        rel_pos = resized[0].T  # (L', D)
    # Scale coordinates of the shorter side when q and k grids differ (never the case in self-attention).
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]  # (q_size, k_size, D)


# The (heads, queries, keys) bias of one SDPA call is built in chunks of at most this many elements
# (256 MB in fp32) into one reused buffer: a global block at 1024 px needs 12 x 4096 x 4096 (800 MB) at
# once otherwise, and on CPU faulting in fresh pages that size costs a good part of the attention itself.
# Query chunks stay >= 768 long (1024 at 1024 px, 800 at 1280 px): below that torch's CPU flash kernel
# switches to 64-query blocks and re-reads K/V 4x as often (measured: 320-query chunks are ~25% slower).
BIAS_CHUNK_ELEMENTS = 64 * 1024 * 1024


def rel_pos_attention(q, k, v, rel_h, rel_w) -> torch.Tensor:
    """SDPA with the decomposed rel-pos bias; returns (B, N, nH, D) (token-major, ready to merge heads).

    q, k, v: (B, nH, N, D); rel_h: (B, nH, N, kh), rel_w: (B, nH, N, kw) with kh * kw = N keys.
    The bias of query n and key (i, j) is rel_h[n, i] + rel_w[n, j]. Windows (many small items) are
    chunked over the batch dim, a global grid over queries (in multiples of 64, SDPA's CPU query block)."""
    B, nH, N, _ = q.shape
    kh, kw = rel_h.shape[-1], rel_w.shape[-1]
    assert kh * kw == k.shape[2], f"rel-pos grid {kh}x{kw} does not match {k.shape[2]} keys"
    per_query = nH * kh * kw
    bs = max(1, BIAS_CHUNK_ELEMENTS // (per_query * N))  # batch items per chunk
    if per_query * N <= BIAS_CHUNK_ELEMENTS:
        qs = N
    else:  # equal query chunks, a multiple of 64 long
        n_chunks = math.ceil(N / max(1, BIAS_CHUNK_ELEMENTS // per_query))
        qs = math.ceil(N / n_chunks / 64) * 64
    # Without autograd one buffer is reused for every chunk (no fresh pages per chunk); with autograd
    # each chunk's bias must be its own tensor.
    reuse = not (torch.is_grad_enabled() and (rel_h.requires_grad or rel_w.requires_grad))
    buf = q.new_empty(min(bs, B), nH, qs, kh, kw) if reuse else None
    outs = []
    for b0 in range(0, B, bs):
        b1 = min(B, b0 + bs)
        for q0 in range(0, N, qs):
            q1 = min(N, q0 + qs)
            rh, rw = rel_h[b0:b1, :, q0:q1, :, None], rel_w[b0:b1, :, q0:q1, None, :]
            bias = torch.add(rh, rw, out=buf[: b1 - b0, :, : q1 - q0]) if reuse else rh + rw  # (b, nH, q, kh, kw)
            o = F.scaled_dot_product_attention(q[b0:b1, :, q0:q1], k[b0:b1], v[b0:b1], attn_mask=bias.flatten(-2))
            outs.append(o.transpose(1, 2))  # (b, q, nH, D)
    if len(outs) == 1:
        return outs[0]
    if qs >= N:
        return torch.cat(outs, dim=0)
    per_b = len(outs) // B
    return torch.cat([torch.cat(outs[i:i + per_b], dim=1) for i in range(0, len(outs), per_b)], dim=0)


# Training on CPU: SDPA has no fused kernel that returns the gradient of a float mask, so with a trainable
# bias it falls back to the math path, which materializes the (B, nH, N, N) bias, scores and probabilities
# and runs several extra full passes over them (-inf checks of its "safe" softmax). RelPosAttention below
# does the same math a block of queries at a time, each block's scores small enough to stay in cache
# (this many floats: 2 MB), and recomputes the probabilities in backward from the log-sum-exp. Under bf16 autocast
# the matmuls run in bf16 (AMX / AVX-512 BF16) while the scores, the softmax and the gradient sums stay fp32:
# 2-4x closer to the float64 result than all-bf16 (about as close as torch's SDPA in bf16), and faster, since CPU
# elementwise passes over bf16 run at about half the fp32 speed (BENCHMARKS.md "SAM rel-pos attention in training").
SCORE_BLOCK_ELEMENTS = 512 * 1024


def _blocks(G: int, N: int, n_keys: int):
    """(g0, g1, q0, q1) blocks of about SCORE_BLOCK_ELEMENTS scores: whole items when they fit, else
    query slices of one item."""
    per_item = N * n_keys
    if per_item <= SCORE_BLOCK_ELEMENTS:
        gs = max(1, SCORE_BLOCK_ELEMENTS // per_item)
        return [(g, min(G, g + gs), 0, N) for g in range(0, G, gs)]
    qs = max(1, SCORE_BLOCK_ELEMENTS // n_keys)
    return [(g, g + 1, q, min(N, q + qs)) for g in range(G) for q in range(0, N, qs)]


def _block_probs(qs, kT, rel_h, rel_w, g0, g1, q0, q1, kh, kw, lse=None):
    """exp(scores - max) of one block (unnormalized, with its row max) or, given lse, the probabilities; in fp32
    for bf16 qs and kT, else in their dtype (rel_h, rel_w, lse: already in that one)."""
    s = torch.bmm(qs[g0:g1, q0:q1], kT[g0:g1])  # (g, q, N) scaled q . k
    s = s.to(torch.promote_types(s.dtype, torch.float32))  # bf16 -> fp32; fp32 / float64 stay
    grid = s.view(g1 - g0, q1 - q0, kh, kw)
    grid.add_(rel_h[g0:g1, q0:q1, :, None]).add_(rel_w[g0:g1, q0:q1, None, :])
    if lse is not None:
        return s.sub_(lse[g0:g1, q0:q1, None]).exp_(), None
    m = s.amax(-1, keepdim=True)
    return s.sub_(m).exp_(), m


class RelPosAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(D) + rel_h[n, i] + rel_w[n, j]) v for key (i, j), blockwise (see above).

    q, k, v: (G, N, D) contiguous; rel_h: (G, N, kh), rel_w: (G, N, kw), kh * kw = N. Returns (G, N, D) in q's
    dtype: the matmuls run in it, the scores, softmax and gradient sums in fp32 (see above)."""

    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w):
        G, N, D = q.shape
        kh, kw = rel_h.shape[-1], rel_w.shape[-1]
        wide = torch.promote_types(q.dtype, torch.float32)  # the scores' dtype
        rel_h, rel_w = rel_h.to(wide), rel_w.to(wide)
        qs = q * D ** -0.5
        kT = k.transpose(1, 2).contiguous()
        out = torch.empty_like(q)
        lse = q.new_empty(G, N, dtype=wide)
        for g0, g1, q0, q1 in _blocks(G, N, N):
            p, m = _block_probs(qs, kT, rel_h, rel_w, g0, g1, q0, q1, kh, kw)
            total = p.sum(-1, keepdim=True)
            out[g0:g1, q0:q1] = torch.bmm(p.to(q.dtype), v[g0:g1]).div_(total)
            lse[g0:g1, q0:q1] = (m + total.log()).squeeze(-1)
        ctx.save_for_backward(qs, kT, v, rel_h, rel_w, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qs, kT, v, rel_h, rel_w, out, lse = ctx.saved_tensors
        G, N, D = qs.shape
        dtype, wide = qs.dtype, rel_h.dtype
        kh, kw = rel_h.shape[-1], rel_w.shape[-1]
        grad_out = grad_out.contiguous()
        delta = (grad_out.to(wide) * out.to(wide)).sum(-1)  # (G, N): sum_k P dP, the softmax backward's row term
        vT = v.transpose(1, 2).contiguous()
        k = kT.transpose(1, 2)
        dq, dk, dv = torch.empty_like(qs), torch.zeros_like(qs, dtype=wide), torch.zeros_like(v, dtype=wide)
        d_rel_h, d_rel_w = torch.empty_like(rel_h), torch.empty_like(rel_w)
        for g0, g1, q0, q1 in _blocks(G, N, N):
            p, _ = _block_probs(qs, kT, rel_h, rel_w, g0, g1, q0, q1, kh, kw, lse=lse)
            do = grad_out[g0:g1, q0:q1]
            ds = torch.bmm(do, vT[g0:g1]).to(wide).sub_(delta[g0:g1, q0:q1, None]).mul_(p)  # grad of the scores
            grid = ds.view(g1 - g0, q1 - q0, kh, kw)
            d_rel_h[g0:g1, q0:q1] = grid.sum(-1)
            d_rel_w[g0:g1, q0:q1] = grid.sum(-2)
            p, ds = p.to(dtype), ds.to(dtype)  # no-ops in fp32 / float64
            if dtype == wide:  # accumulate in place
                dv[g0:g1].baddbmm_(p.transpose(1, 2), do)
                dk[g0:g1].baddbmm_(ds.transpose(1, 2), qs[g0:g1, q0:q1])
            else:  # baddbmm_ cannot add a bf16 product into the fp32 sum
                dv[g0:g1] += torch.bmm(p.transpose(1, 2), do)
                dk[g0:g1] += torch.bmm(ds.transpose(1, 2), qs[g0:g1, q0:q1])
            dq[g0:g1, q0:q1] = torch.bmm(ds, k[g0:g1]).mul_(D ** -0.5)
        return dq, dk.to(dtype), dv.to(dtype), d_rel_h.to(dtype), d_rel_w.to(dtype)


def rel_pos_attention_blockwise(q, k, v, rel_h, rel_w) -> torch.Tensor:
    """rel_pos_attention through RelPosAttention: same arguments, same (B, N, nH, D) result."""
    B, nH, N, D = q.shape
    flat = [t.reshape(B * nH, N, t.shape[-1]).contiguous() for t in (q, k, v, rel_h, rel_w)]
    return RelPosAttention.apply(*flat).view(B, nH, N, D).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention over a (B, h, w, C) token grid with decomposed rel-pos bias."""

    def __init__(self, dim: int, num_heads: int, rel_size: int):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        # 2*L-1 offsets for an L-long axis: L = window (27 rows) or the global grid (127 rows).
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 3C) projected q|k|v -> (B, h, w, C) attention output, before `proj`."""
        B, h, w, C3 = qkv.shape
        nH, C = self.num_heads, C3 // 3
        q, k, v = qkv.reshape(B, h * w, 3, nH, C // nH).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nH, N, D) each
        Rh = get_rel_pos(h, h, self.rel_pos_h)  # (h, h, D)
        Rw = get_rel_pos(w, w, self.rel_pos_w)  # (w, w, D)
        # SAM's bias uses the *unscaled* query; SDPA applies 1/sqrt(D) to q.k only.
        q_grid = q.reshape(B, nH, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, Rh).reshape(B, nH, h * w, h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, Rw).reshape(B, nH, h * w, w)
        trainable = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, rel_h, rel_w))
        attend = rel_pos_attention_blockwise if trainable and q.device.type == "cpu" else rel_pos_attention
        return attend(q, k, v, rel_h, rel_w).reshape(B, h, w, C)  # merge heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, h, w, C) -> (B, h, w, C)
        return self.proj(self.attend(self.qkv(x)))

    def forward_windowed(self, x: torch.Tensor, ws: int) -> torch.Tensor:
        """Window attention on (B, H, W, C) with SAM's zero padding, without projecting the padding.

        SAM pads the normalized tokens with zeros, so a padded token's q|k|v is exactly the qkv bias:
        project the H*W real tokens, pad the *projection* with zeros, then add the bias. At 1024 px this
        skips 16% of the qkv and proj work of a window block (grid 64 padded to 70)."""
        H, W = x.shape[1:3]
        qkv = F.linear(x, self.qkv.weight)  # (B, H, W, 3C), no bias yet
        qkv, padded = window_partition(qkv, ws, bias=self.qkv.bias)  # (B * nW, ws, ws, 3C), bias where padded
        out = window_unpartition(self.attend(qkv), ws, padded, (H, W))  # (B, H, W, C)
        return self.proj(out)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.lin2(F.gelu(self.lin1(x)))  # exact (erf) GELU, as SAM


def window_partition(x: torch.Tensor, ws: int, bias: torch.Tensor | None = None):
    """(B, H, W, C) -> ((B * nW, ws, ws, C), (Hp, Wp)): zero-pad H and W up to multiples of ws, then
    add `bias` (if given) in the same pass as the copy into window order."""
    B, H, W, C = x.shape
    pad_h, pad_w = (ws - H % ws) % ws, (ws - W % ws) % ws
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // ws, ws, Wp // ws, ws, C).permute(0, 1, 3, 2, 4, 5)  # (B, nWh, nWw, ws, ws, C) view
    if bias is None:
        return x.reshape(-1, ws, ws, C), (Hp, Wp)
    if torch.is_grad_enabled():  # autograd cannot record out=; two passes then
        return (x + bias).reshape(-1, ws, ws, C), (Hp, Wp)
    out = torch.add(x, bias, out=x.new_empty(x.shape))  # one pass: copy into window order + bias
    return out.view(-1, ws, ws, C), (Hp, Wp)


def window_unpartition(windows: torch.Tensor, ws: int, padded: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """(B * nW, ws, ws, C) -> (B, H, W, C), dropping the padding."""
    (Hp, Wp), (H, W) = padded, hw
    B = windows.shape[0] // ((Hp // ws) * (Wp // ws))
    x = windows.view(B, Hp // ws, Wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W] if (Hp, Wp) != (H, W) else x


class Block(nn.Module):
    def __init__(self, cfg: SAMConfig, window_size: int):
        super().__init__()
        dim = cfg.embed_dim
        self.window_size = window_size  # 0 = global attention
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        rel_size = window_size if window_size > 0 else cfg.img_size // cfg.patch_size
        self.attn = Attention(dim, cfg.num_heads, rel_size)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = MLP(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, C)
        y = self.norm1(x)
        y = self.attn.forward_windowed(y, self.window_size) if self.window_size > 0 else self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of (B, C, H, W); `weight`/`bias` names as in SAM's neck."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: SAMConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x):  # (B, 3, H, W) -> (B, H/p, W/p, C)
        return self.proj(x).permute(0, 2, 3, 1)


class SAMEncoder(nn.Module):
    def __init__(self, cfg: SAMConfig):
        super().__init__()
        self.cfg = cfg
        g = cfg.pos_embed_grid
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.neck_dim, kernel_size=1, bias=False),
            LayerNorm2d(cfg.neck_dim, cfg.norm_eps),
            nn.Conv2d(cfg.neck_dim, cfg.neck_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.neck_dim, cfg.norm_eps),
        )
        self.net_2 = nn.Conv2d(cfg.neck_dim, cfg.net2_dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(cfg.net2_dim, cfg.out_chans, kernel_size=3, stride=2, padding=1, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """From-scratch init: torch defaults for convs/linears; small random pos table; zero rel-pos (as SAM)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for blk in self.blocks:
            blk.attn.rel_pos_h.zero_()
            blk.attn.rel_pos_w.zero_()

    def forward_neck(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, neck_dim, H/16, W/16): what HF SamVisionEncoder returns."""
        p = self.cfg.patch_size
        assert pixels.ndim == 4 and pixels.shape[1] == self.cfg.in_chans, \
            f"expected (B, {self.cfg.in_chans}, H, W) pixels, got {tuple(pixels.shape)}"
        assert pixels.shape[2] % p == 0 and pixels.shape[3] % p == 0, \
            f"image size {tuple(pixels.shape[2:])} must be a multiple of the patch size {p}"
        x = self.patch_embed(pixels)  # (B, h, w, C), a permuted view of the conv's (B, C, h, w) output
        # Make the tokens contiguous once: elementwise ops keep the input's strides, so otherwise every
        # residual add and LayerNorm of all blocks runs on channel-strided memory (and LN copies it).
        x = (x + resize_pos_embed(self.pos_embed, tuple(x.shape[1:3]))).contiguous()
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))  # (B, neck_dim, h, w)

    def forward(self, pixels: torch.Tensor, with_neck: bool = False):
        """(B, 3, H, W) -> (B, out_chans, H/64, W/64); with_neck: also the neck's (B, neck_dim, H/16, W/16), what
        a CTC head on the 16 px grid reads (through the module call, so FSDP/checkpoint wrappers still apply)."""
        x = self.forward_neck(pixels)
        out = self.net_3(self.net_2(x))
        return (out, x) if with_neck else out
