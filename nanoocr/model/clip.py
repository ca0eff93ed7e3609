"""CLIP-L/14 vision transformer as DeepSeek-OCR uses it: on SAM features instead of image patches.

    sam_feats (B, 1024, h, w)                      output of SAMEncoder.forward (h = w = 16 at 1024 px)
      -> flatten(2).transpose(1, 2)                (B, h*w, 1024)   the "patch tokens" (CLIP's patch conv is bypassed)
      -> prepend CLS, + position table (257 rows = 16x16 + CLS, resized for other grids)
      -> pre_layrnorm -> 24 pre-LN blocks          (B, 1 + h*w, 1024)   last hidden state, no post-layernorm

Notable features:
- Parameter names mirror the official DeepSeek-OCR CLIP (`embeddings.class_embedding`,
  `embeddings.position_embedding`, `pre_layrnorm`, `transformer.layers.N.self_attn.qkv_proj`, ...);
  HF CLIPVisionModel weights load with q/k/v fused into `qkv_proj` (nanoocr/model/pretrained.py).
- No patch convolution: its 0.6M parameters are unused by DeepSeek-OCR, so they are not created
  (302.6M parameters at full size).
- Position table: the 16x16 part is resized bicubic + antialias in fp32 for other grids (8/10/20 at
  512/640/1280 px); the CLS position is kept as is.
- Fused qkv with bias, torch SDPA, quick_gelu `x * sigmoid(1.702 x)`, LayerNorm eps 1e-5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class CLIPConfig:
    dim: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    act: str = "quick_gelu"  # the only activation CLIP-L/14 uses; kept as a field so configs spell it out
    norm_eps: float = 1e-5
    num_positions: int = 257  # 16 x 16 grid + CLS

    def __post_init__(self):
        assert self.dim % self.heads == 0, f"dim {self.dim} not divisible by heads {self.heads}"
        assert self.act == "quick_gelu", f"unsupported activation {self.act!r} (only 'quick_gelu')"
        side = math.isqrt(self.num_positions - 1)
        assert side * side == self.num_positions - 1, \
            f"num_positions {self.num_positions} must be a square grid + 1 (CLS)"


def resize_positions(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1 + S*S, D) position table -> (1 + gh*gw, D); CLS row kept, grid part bicubic + antialias in fp32."""
    n, dim = table.shape
    side = math.isqrt(n - 1)
    if (side, side) == tuple(grid):
        return table
    cls_pos, grid_pos = table[:1], table[1:]
    x = grid_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()  # (1, D, S, S)
    x = F.interpolate(x, size=grid, mode="bicubic", antialias=True, align_corners=False)
    x = x.to(table.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], dim)
    return torch.cat([cls_pos, x], dim=0)


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(cfg.dim) * cfg.dim ** -0.5)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.dim)
        nn.init.normal_(self.position_embedding.weight, std=0.02)

    def forward(self, sam_feats: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) -> (B, 1 + h*w, D)
        B, D, h, w = sam_feats.shape
        patches = sam_feats.flatten(2).transpose(1, 2)  # (B, h*w, D)
        cls = self.class_embedding.to(patches.dtype).expand(B, 1, D)
        x = torch.cat([cls, patches], dim=1)
        return x + resize_positions(self.position_embedding.weight, (h, w))


class CLIPAttention(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv_proj = nn.Linear(cfg.dim, 3 * cfg.dim)  # rows: q | k | v (the official fused layout)
        self.out_proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x):  # (B, T, D) -> (B, T, D)
        B, T, D = x.shape
        q, k, v = self.qkv_proj(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, hd); bidirectional, no mask
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class CLIPLayer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = CLIPMLP(cfg)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPLayer(cfg) for _ in range(cfg.layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = CLIPEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)  # [sic] CLIP's spelling, kept for weights
        self.transformer = CLIPTransformer(cfg)

    def encode_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, D) embeddings -> (B, 1 + N, D) last hidden state (pre_layrnorm + blocks, no post-LN)."""
        assert x.ndim == 3 and x.shape[-1] == self.cfg.dim, f"expected (B, T, {self.cfg.dim}), got {tuple(x.shape)}"
        return self.transformer(self.pre_layrnorm(x))

    def forward(self, sam_feats: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) SAM features -> (B, 1 + h*w, D)."""
        assert sam_feats.ndim == 4 and sam_feats.shape[1] == self.cfg.dim, \
            f"expected SAM features (B, {self.cfg.dim}, h, w), got {tuple(sam_feats.shape)}"
        return self.encode_embeddings(self.embeddings(sam_feats))
