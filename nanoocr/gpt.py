"""
nanochat's GPT (as of its d20 release), split so a VLM can merge vision vectors between the
token embedding and the transformer: `embed(ids)` -> (merge) -> `trunk(x)`; `forward` is exactly
`trunk(embed(ids))`.

Notable features (all nanochat's, same parameter names so nanochat checkpoints load 1:1):
- rotary position embeddings (head dim split in halves, base 10000), no positional table
- QK norm, applied AFTER rotary
- untied weights for token embedding (`transformer.wte`) and `lm_head`
- relu^2 MLP, no bias anywhere, parameter-free RMSNorm (also right after the embedding)
- logit softcap 15 (computed in fp32), cross-entropy with ignore_index=-1
- no GQA: n_kv_head == n_head (nanochat d20 checkpoints have full-size k/v)
Additions for nanoocr:
- per-row rotary positions and a key-padding mask (left-padded batched generation)
- optional fused Triton attention (`attn_impl="triton"`, kernels/attention.py) for the full causal case
- optional per-block activation checkpointing (`activation_checkpointing` attribute)
- rotary cos/sin stay fp32 (nanochat keeps them bf16 on GPU; fp32 keeps the fp32 test path exact and
  costs nothing measurable: they are (T, head_dim/2) tables, cast to q's dtype at use)
"""

import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

SOFTCAP = 15.0  # nanochat: logits = 15 * tanh(logits / 15)


@dataclass
class GPTConfig:
    sequence_len: int = 2048  # sizes the rotary table (10x this many positions are precomputed)
    vocab_size: int = 65537  # nanochat's 65536 + <|image|>
    n_layer: int = 20
    n_head: int = 10  # number of query heads
    n_kv_head: int = 10  # must equal n_head (no GQA)
    n_embd: int = 1280
    attn_impl: str = "torch"  # "torch" (SDPA) | "triton" (kernels/attention.py)
    embed_impl: str = "torch"  # "torch" | "triton" (kernels/scatter.py; used by the VLM's embed+merge)

    def __post_init__(self):
        assert self.n_kv_head == self.n_head, \
            f"n_kv_head ({self.n_kv_head}) must equal n_head ({self.n_head}): nanoocr has no GQA"
        assert self.n_embd % self.n_head == 0, f"n_embd {self.n_embd} not divisible by n_head {self.n_head}"
        assert (self.n_embd // self.n_head) % 2 == 0, f"head_dim {self.n_embd // self.n_head} must be even (rotary)"
        for field in ("attn_impl", "embed_impl"):
            value = getattr(self, field)
            assert value in ("torch", "triton"), f"{field} must be 'torch' or 'triton', got {value!r}"


_logged = set()


def log_once(msg):
    """Log a message once per process (which kernel path runs is useful, but not every step)."""
    if msg not in _logged:
        _logged.add(msg)
        log.info(msg)


def use_triton(impl, t):
    """The Triton path runs on CUDA, or on CPU under the Triton interpreter (tests)."""
    return impl == "triton" and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def norm(x):
    # purely functional rmsnorm with no learnable params
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x, cos, sin):
    # x: (B, T, H, D); cos/sin: (1 or B, T, 1, D/2)
    assert x.ndim == 4, f"expected (B, T, H, D), got {tuple(x.shape)}"
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]  # nanochat's convention: halves, not interleaved pairs
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    y1 = x1 * cos + x2 * sin
    y2 = x1 * (-sin) + x2 * cos
    return torch.cat([y1, y2], 3)


class KVCache:
    """Preallocated keys/values for every layer; `pos` is the number of positions already filled
    (the same for every row: left padding keeps rows aligned)."""

    def __init__(self, n_layer, batch_size, n_head, head_dim, max_len, dtype=torch.float32, device=None):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.n_layer, self.max_len, self.pos = n_layer, max_len, 0

    def insert(self, layer_idx, k, v):
        # k, v: (B, H, T, D) for the new positions; returns all keys/values so far (B, H, pos+T, D)
        t0, t1 = self.pos, self.pos + k.size(2)
        assert t1 <= self.max_len, f"KV cache full: {t1} positions > max_len {self.max_len}"
        self.k[layer_idx, :, :, t0:t1] = k
        self.v[layer_idx, :, :, t0:t1] = v
        if layer_idx == self.n_layer - 1:  # the last layer advances the position for everyone
            self.pos = t1
        return self.k[layer_idx, :, :, :t1], self.v[layer_idx, :, :, :t1]


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.n_embd = config.n_embd
        self.head_dim = config.n_embd // config.n_head
        self.attn_impl = config.attn_impl
        self.c_q = nn.Linear(self.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)

    def forward(self, x, cos_sin, kv_cache=None, mask=None):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK norm, after rotary (nanochat's order)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if kv_cache is not None:
            k, v = kv_cache.insert(self.layer_idx, k, v)  # (B, H, Tk, D)
        Tq, Tk = q.size(2), k.size(2)
        if kv_cache is None and mask is None and use_triton(self.attn_impl, q):
            from kernels.attention import attention  # lazy: the model must import without the kernels
            log_once("attention: Triton kernel (kernels.attention)")
            y = attention(q, k, v, 1.0 / math.sqrt(self.head_dim))
        else:
            log_once("attention: torch SDPA")
            if mask is not None:  # (B or 1, 1, Tq, Tk) bool, True = attend
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            elif Tq == Tk:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                # single-stream decoding with a cache: the Tq queries are the last Tq positions
                assert Tq == 1, f"a cached multi-token step needs a mask (Tq={Tq}, Tk={Tk})"
                y = F.scaled_dot_product_attention(q, k, v)  # one query sees every cached key
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, kv_cache=None, mask=None):
        x = x + self.attn(norm(x), cos_sin, kv_cache, mask)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Over-allocate the rotary table 10x (as nanochat) so long generations never run out.
        self.rotary_seq_len = config.sequence_len * 10
        self.activation_checkpointing = False  # recompute each block in backward (set by the VLM)
        self.init_rotary()

    def init_rotary(self, device=None):
        """(Re)compute the rotary tables: non-persistent buffers, so also after `to_empty`."""
        head_dim = self.config.n_embd // self.config.n_head
        cos, sin = precompute_rotary(self.rotary_seq_len, head_dim, device=device)
        self.register_buffer("cos", cos, persistent=False)  # (1, rotary_seq_len, 1, head_dim/2) fp32
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        """nanochat's initialization.

        | parameter                          | init                                             |
        |------------------------------------|--------------------------------------------------|
        | transformer.wte                    | normal, std 1                                    |
        | every Linear (c_q, c_k, c_v, c_fc) | normal, std 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)) |
        | attn.c_proj, mlp.c_proj            | zeros (each block starts as the identity)       |
        | lm_head                            | zeros (uniform prediction at step 0)             |
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fan_out, fan_in = module.weight.shape
                std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.lm_head.weight)
        for block in self.transformer.h:
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        self.init_rotary(device=self.lm_head.weight.device)

    def embed(self, ids):
        # ids: (B, T) long -> (B, T, C)
        return self.transformer.wte(ids)

    def trunk(self, x, targets=None, kv_cache=None, positions=None, attn_mask=None,
              loss_reduction="mean", last_only=False):
        """Everything after the token embedding.

        x: (B, T, C) embeddings (text and merged vision vectors).
        targets: (B, T) long, -1 = ignore -> returns the loss; None -> returns logits (B, T, V) fp32.
        kv_cache: KVCache; x holds the positions after the `kv_cache.pos` already cached ones.
        positions: (B, T) long rotary positions per row (left padding: each row's first real token
            is at 0); default: kv_cache.pos + arange(T).
        attn_mask: (B, kv_cache.pos + T) bool, True on real tokens, False on padding keys.
        last_only: compute logits of the last position only (generation), (B, 1, V).
        """
        B, T, C = x.size()
        assert C == self.config.n_embd, f"embedding width {C} != n_embd {self.config.n_embd}"
        t0 = 0 if kv_cache is None else kv_cache.pos
        if positions is None:
            assert t0 + T <= self.rotary_seq_len, f"{t0 + T} positions > rotary table {self.rotary_seq_len}"
            cos_sin = self.cos[:, t0:t0 + T], self.sin[:, t0:t0 + T]  # (1, T, 1, D/2)
        else:
            assert positions.shape == (B, T), f"positions {tuple(positions.shape)} != (B, T) = {(B, T)}"
            assert int(positions.max()) < self.rotary_seq_len, \
                f"position {int(positions.max())} >= rotary table {self.rotary_seq_len}"
            cos_sin = self.cos[0, positions], self.sin[0, positions]  # (B, T, 1, D/2)
        mask = None
        if attn_mask is not None:
            assert attn_mask.shape == (B, t0 + T), \
                f"attn_mask {tuple(attn_mask.shape)} != (B, cached + T) = {(B, t0 + T)}"
            q_idx = torch.arange(t0, t0 + T, device=x.device)[:, None]  # (T, 1)
            k_idx = torch.arange(t0 + T, device=x.device)[None, :]  # (1, Tk)
            mask = (k_idx <= q_idx)[None] & attn_mask[:, None, :].bool()  # (B, T, Tk): causal, no pads
            # A padding query would see no key at all (softmax of all -inf = NaN, which then leaks into
            # the cache through 0 * NaN); let every query see itself. Pad outputs are never used.
            mask = (mask | (k_idx == q_idx)[None])[:, None]  # (B, 1, T, Tk)
        elif kv_cache is not None and t0 > 0 and T > 1:
            q_idx = torch.arange(t0, t0 + T, device=x.device)[:, None]
            mask = (torch.arange(t0 + T, device=x.device)[None, :] <= q_idx)[None, None]  # (1, 1, T, Tk)

        x = norm(x)  # nanochat normalizes right after the embedding
        for block in self.transformer.h:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos_sin, kv_cache, mask, use_reentrant=False)
            else:
                x = block(x, cos_sin, kv_cache, mask)
        x = norm(x)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(x).float()  # softcap and loss in fp32
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)  # (B, T, V)
        if targets is None:
            return logits
        assert targets.shape == (B, T), f"targets {tuple(targets.shape)} != ids {(B, T)}"
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)

    def forward(self, ids, targets=None, kv_cache=None, positions=None, attn_mask=None, loss_reduction="mean"):
        return self.trunk(self.embed(ids), targets, kv_cache, positions, attn_mask, loss_reduction)

    def estimate_flops(self, seq_len=None):
        """Training FLOPs per token, nanochat's estimate: 6 * (params - embedding) + 12 * L * H * D * T
        (attention scores and values at T = seq_len, default the config's sequence_len)."""
        nparams = sum(p.numel() for p in self.parameters())
        nparams_embedding = self.transformer.wte.weight.numel()  # a lookup, not a matmul
        l, h, q = self.config.n_layer, self.config.n_head, self.config.n_embd // self.config.n_head
        t = self.config.sequence_len if seq_len is None else seq_len
        return 6 * (nparams - nparams_embedding) + 12 * l * h * q * t


def precompute_rotary(seq_len, head_dim, base=10000, device=None):
    channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
    inv_freq = 1.0 / (base ** (channel_range / head_dim))  # (D/2,)
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)  # (T, D/2)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # (1, T, 1, D/2) each
