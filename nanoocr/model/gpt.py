"""
nanochat's GPT, split so a VLM can merge vision vectors between the token embedding and the
transformer: `embed(ids)` -> (merge) -> `trunk(x, ids=ids)`; `forward` is exactly that.

Two nanochat generations, same parameter names as nanochat so its checkpoints load 1:1:
- layout="d20" (the default; nanochat's d20 release up to commit 2c4473d, 2026-01):
  rotary position embeddings (head dim split in halves, base 10000), QK norm AFTER rotary, untied
  `transformer.wte` / `lm_head`, relu^2 MLP, no bias anywhere, parameter-free RMSNorm (also right
  after the embedding), logit softcap 15 in fp32, cross-entropy with ignore_index=-1
- layout="2026" (nanochat commit 92d63d4, 2026-07), on top of the above:
  sliding-window attention per `window_pattern` ("SSSL": S = sequence_len/4 rounded up to 128 keys
  back, L = sequence_len keys back, the last layer always L); value embeddings (`value_embeds.<i>`,
  looked up by token id, mixed into v through a per-head `ve_gate` on alternating layers, the last
  always); per-layer `resid_lambdas` / `x0_lambdas` mixing the residual stream with the post-embedding
  x0 before each block; `smear_gate` / `smear_lambda` (the previous token's embedding mixed in);
  `backout_lambda` (the residual after layer n_layer//2 subtracted before the final norm); q and k
  scaled by `qk_scale` (1.2) after QK norm; rotary base 1e5; wte/lm_head/value embeddings padded to a
  multiple of `pad_vocab_size_to` (64) rows, logits cropped to vocab_size
  (nanochat's meta records only `window_pattern`; nanoocr/model/nanochat.py derives the other fields)
- no GQA: n_kv_head == n_head (nanochat's checkpoints have full-size k/v)
Additions for nanoocr:
- per-row rotary positions and a key-padding mask (left-padded batched generation)
- optional fused Triton attention (`attn_impl="triton"`, kernels/attention.py) for the full causal case
- the training loss never builds the (B, T, V) logits (`loss_impl="chunked"`, nanoocr/model/loss.py);
  "plain" is nanochat's lm_head -> softcap -> cross_entropy; loss_reduction="none" always takes it
- each `Block` takes all its per-layer inputs as arguments, so torch's checkpoint_wrapper can wrap it
  from outside (the VLM does; the GPT itself has no checkpointing branch)
- rotary cos/sin stay fp32 (nanochat keeps them in the compute dtype; fp32 keeps the fp32 test path
  exact and costs nothing measurable: they are (T, head_dim/2) tables, cast to q's dtype at use)
"""

import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoocr.model.loss import chunked_softcap_cross_entropy

log = logging.getLogger(__name__)

LAYOUTS = ("d20", "2026")
SMEAR_CHANNELS = 24  # nanochat: the smear gate reads the first 24 channels of the normalized embedding
VE_GATE_CHANNELS = 12  # nanochat: the value-embedding gate reads the first 12 channels of the block input


@dataclass
class GPTConfig:
    sequence_len: int = 2048  # sizes the rotary table (10x); in the 2026 layout also the attention windows
    vocab_size: int = 65537  # nanochat's 65536 + <|image|>
    n_layer: int = 20
    n_head: int = 10  # number of query heads
    n_kv_head: int = 10  # must equal n_head (no GQA)
    n_embd: int = 1280
    # Which nanochat generation; the fields below default to the d20 release's values.
    layout: str = "d20"  # "d20" | "2026" (resid/x0 lambdas, value embeddings, smear, backout)
    window_pattern: str = "L"  # 2026: tiled over layers, last layer always L; d20: must be "L" (no windows)
    rotary_base: float = 10000.0  # nanochat 2026: 100000
    qk_scale: float = 1.0  # q and k multiplied by this after QK norm (nanochat 2026: 1.2)
    softcap: float = 15.0  # logits = softcap * tanh(logits / softcap) (nanochat had 20 for a week in 2026-03)
    pad_vocab_size_to: int = 1  # wte/lm_head/value-embedding rows rounded up to a multiple (nanochat 2026: 64)
    attn_impl: str = "torch"  # "torch" (SDPA) | "triton" (kernels/attention.py)
    embed_impl: str = "torch"  # "torch" | "triton" (kernels/scatter.py; used by the VLM's embed+merge)
    loss_impl: str = "chunked"  # "chunked" (nanoocr/model/loss.py: no (B, T, V) logits) | "plain"

    def __post_init__(self):
        assert self.n_kv_head == self.n_head, \
            f"n_kv_head ({self.n_kv_head}) must equal n_head ({self.n_head}): nanoocr has no GQA"
        assert self.n_embd % self.n_head == 0, f"n_embd {self.n_embd} not divisible by n_head {self.n_head}"
        assert (self.n_embd // self.n_head) % 2 == 0, f"head_dim {self.n_embd // self.n_head} must be even (rotary)"
        for field in ("attn_impl", "embed_impl"):
            value = getattr(self, field)
            assert value in ("torch", "triton"), f"{field} must be 'torch' or 'triton', got {value!r}"
        assert self.loss_impl in ("chunked", "plain"), f"loss_impl must be 'chunked' or 'plain', got {self.loss_impl!r}"
        assert self.layout in LAYOUTS, f"layout must be one of {LAYOUTS}, got {self.layout!r}"
        assert self.window_pattern and set(self.window_pattern.upper()) <= set("SL"), \
            f"window_pattern must be a non-empty string of S and L, got {self.window_pattern!r}"
        assert self.layout == "2026" or self.window_pattern.upper() == "L", \
            f"window_pattern {self.window_pattern!r} needs layout='2026' (the d20 layout has full attention)"
        assert self.layout == "d20" or self.n_embd >= SMEAR_CHANNELS, \
            f"layout 2026 needs n_embd >= {SMEAR_CHANNELS} (the smear gate's input), got {self.n_embd}"
        assert self.softcap > 0, f"softcap must be positive, got {self.softcap}"
        assert self.pad_vocab_size_to >= 1, f"pad_vocab_size_to must be >= 1, got {self.pad_vocab_size_to}"

    @property
    def padded_vocab_size(self):
        """Rows of wte, lm_head and the value embeddings (logits are cropped to vocab_size)."""
        return -(-self.vocab_size // self.pad_vocab_size_to) * self.pad_vocab_size_to


def has_ve(layer_idx, n_layer):
    """nanochat: value embeddings on alternating layers, the last layer always has one."""
    return layer_idx % 2 == (n_layer - 1) % 2


def window_sizes(config):
    """Per layer: how many keys back a query may attend besides itself (None = unlimited).

    nanochat 2026: L = sequence_len, S = sequence_len / 4 rounded UP to a multiple of 128 (FA3's tile;
    2048 -> 512, 256 -> 128, but also 32 -> 128), the pattern tiled over layers, the last layer always L.
    Note L is a window too: beyond sequence_len tokens even the long layers forget. d20: unlimited."""
    if config.layout == "d20":
        return [None] * config.n_layer
    long_window = config.sequence_len
    short_window = -(-long_window // 4 // 128) * 128
    pattern = config.window_pattern.upper()
    sizes = [long_window if pattern[i % len(pattern)] == "L" else short_window for i in range(config.n_layer)]
    sizes[-1] = long_window
    return sizes


_logged = set()


def log_once(msg):
    """Log a message once per process (which kernel path runs is useful, but not every step)."""
    if msg not in _logged:
        _logged.add(msg)
        log.info(msg)


def use_triton(impl, t):
    """The Triton path runs on CUDA, or on CPU under the Triton interpreter (tests), where triton is
    installed: pyproject.toml installs it only on Linux x86_64, elsewhere the torch path runs."""
    if impl != "triton" or not (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    from kernels import triton_available  # lazy, like the kernels themselves
    if not triton_available():
        log_once("triton is not installed: the torch paths run instead of the Triton kernels")
        return False
    return True


def norm(x):
    # purely functional rmsnorm with no learnable params
    return F.rms_norm(x, (x.size(-1),))


def rotary_at(cos, sin, B: int, T: int, t0: int, positions=None):
    """The rotary (cos, sin) rows of T positions after t0 cached ones: (1, T, 1, D/2) each, or (B, T, 1, D/2)
    at explicit per-row `positions` (B, T) (left-padded generation). The tables hold cos.shape[1] positions."""
    n = cos.shape[1]
    if positions is None:
        assert t0 + T <= n, f"{t0 + T} positions > rotary table {n}"
        return cos[:, t0:t0 + T], sin[:, t0:t0 + T]
    assert positions.shape == (B, T), f"positions {tuple(positions.shape)} != (B, T) = {(B, T)}"
    assert int(positions.max()) < n, f"position {int(positions.max())} >= rotary table {n}"
    return cos[0, positions], sin[0, positions]


def attend(q, k, v, layer_idx: int, kv_cache=None, mask=None, attn_impl: str = "torch"):
    """Causal attention of (B, T, H, D) q, k, v after rotary: appends k, v to the cache, then the Triton
    kernel (no cache, no mask) or torch SDPA; returns (B, T, H, D). The one attention dispatch of the GPT
    and the DeepSeek decoder."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    if kv_cache is not None:
        k, v = kv_cache.insert(layer_idx, k, v)  # (B, H, Tk, D)
    Tq, Tk = q.size(2), k.size(2)
    if kv_cache is None and mask is None and use_triton(attn_impl, q):
        from kernels.attention import attention  # lazy: the model must import without the kernels
        log_once("attention: Triton kernel (kernels.attention)")
        y = attention(q, k, v, 1.0 / math.sqrt(q.size(-1)))
    else:
        log_once("attention: torch SDPA")
        if mask is not None:  # (B or 1, 1, Tq, Tk) bool, True = attend (padding, chunks, windows)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif Tq == Tk:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # single-stream decoding with a cache: the Tq queries are the last Tq positions
            assert Tq == 1, f"a cached multi-token step needs a mask (Tq={Tq}, Tk={Tk})"
            y = F.scaled_dot_product_attention(q, k, v)  # one query sees every cached key
    return y.transpose(1, 2)


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
    (the same for every row: left padding keeps rows aligned). Every key is kept, also beyond a
    sliding window: the attention mask, not the cache, enforces the window.
    `prev_embedding` (B, 1, C): the last position's normalized embedding, for the 2026 layout's smear."""

    def __init__(self, n_layer, batch_size, n_head, head_dim, max_len, dtype=torch.float32, device=None):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.n_layer, self.max_len, self.pos = n_layer, max_len, 0
        self.prev_embedding = None

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
        self.qk_scale = config.qk_scale
        self.c_q = nn.Linear(self.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)
        self.ve_gate = None
        if config.layout == "2026" and has_ve(layer_idx, config.n_layer):
            self.ve_gate = nn.Linear(VE_GATE_CHANNELS, self.n_kv_head, bias=False)

    def forward(self, x, cos_sin, kv_cache=None, mask=None, ve=None):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # value residual (ResFormer): per-head gate in (0, 3) read off the block input
            assert self.ve_gate is not None, f"layer {self.layer_idx} has no value embedding"
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, H)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK norm, after rotary (nanochat's order)
        if self.qk_scale != 1.0:  # sharper attention than unit-norm q.k allows (nanochat 2026)
            q, k = q * self.qk_scale, k * self.qk_scale
        y = attend(q, k, v, self.layer_idx, kv_cache, mask, self.attn_impl)
        return self.c_proj(y.reshape(B, T, -1))  # (B, T, C)


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

    def forward(self, x, cos_sin, kv_cache=None, mask=None, ve=None):
        # every per-layer input is an argument (mask: this layer's window; ve: its value embedding),
        # so a checkpoint_wrapper around the block recomputes exactly this
        x = x + self.attn(norm(x), cos_sin, kv_cache, mask, ve)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        V = config.padded_vocab_size
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(V, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        self.window_sizes = window_sizes(config)
        if config.layout == "2026":
            # per-layer scalars: x = resid_lambdas[i] * x + x0_lambdas[i] * x0 before block i
            self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
            self.smear_gate = nn.Linear(SMEAR_CHANNELS, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
            self.backout_lambda = nn.Parameter(0.2 * torch.ones(1))
            kv_dim = config.n_kv_head * (config.n_embd // config.n_head)
            self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv_dim)
                                               for i in range(config.n_layer) if has_ve(i, config.n_layer)})
        # Over-allocate the rotary table 10x (as nanochat) so long generations never run out.
        self.rotary_seq_len = config.sequence_len * 10
        self.init_rotary()

    def init_rotary(self, device=None):
        """(Re)compute the rotary tables: non-persistent buffers, so also after `to_empty`."""
        head_dim = self.config.n_embd // self.config.n_head
        cos, sin = precompute_rotary(self.rotary_seq_len, head_dim, base=self.config.rotary_base, device=device)
        self.register_buffer("cos", cos, persistent=False)  # (1, rotary_seq_len, 1, head_dim/2) fp32
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        """nanochat's initialization, of the generation the layout is.

        d20:
        | parameter                          | init                                             |
        |------------------------------------|--------------------------------------------------|
        | transformer.wte                    | normal, std 1                                    |
        | every Linear (c_q, c_k, c_v, c_fc) | normal, std 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)) |
        | attn.c_proj, mlp.c_proj            | zeros (each block starts as the identity)       |
        | lm_head                            | zeros (uniform prediction at step 0)             |

        2026 (s = sqrt(3/n_embd): a uniform with std 1/sqrt(n_embd)):
        | parameter                          | init                                             |
        |------------------------------------|--------------------------------------------------|
        | transformer.wte                    | normal, std 0.8                                  |
        | lm_head                            | normal, std 0.001                                |
        | c_q, c_k, c_v, value_embeds        | uniform(-s, s)                                   |
        | mlp.c_fc                           | uniform(-0.4 s, 0.4 s)                           |
        | attn.c_proj, mlp.c_proj            | zeros                                            |
        | resid_lambdas / x0_lambdas         | 1.15 -> 1.05 / 0.20 -> 0.05, linear over layers |
        | smear_lambda / backout_lambda      | 0 / 0.2                                          |
        | smear_gate, ve_gate                | uniform(0, 0.02)                                 |
        """
        if self.config.layout == "2026":
            self._init_weights_2026()
            self.init_rotary(device=self.lm_head.weight.device)
            return
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

    def _init_weights_2026(self):
        n_layer, s = self.config.n_layer, math.sqrt(3.0 / self.config.n_embd)
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=0.8)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.uniform_(block.mlp.c_fc.weight, -0.4 * s, 0.4 * s)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02)
        frac = torch.arange(n_layer, dtype=torch.float32) / max(n_layer - 1, 1)
        self.resid_lambdas.copy_(1.15 - 0.10 * frac)  # stronger residual early, weaker deep
        self.x0_lambdas.copy_(0.20 - 0.15 * frac)  # more of the input embedding early
        nn.init.zeros_(self.smear_lambda)
        nn.init.constant_(self.backout_lambda, 0.2)
        nn.init.uniform_(self.smear_gate.weight, 0.0, 0.02)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)

    def embed(self, ids):
        # ids: (B, T) long -> (B, T, C)
        return self.transformer.wte(ids)

    def _attention_masks(self, B, T, t0, attn_mask, kv_cache, device):
        """One mask per layer (B or 1, 1, T, t0 + T) bool, or None where plain causal attention is exact
        (SDPA's is_causal, the Triton kernel, or a single query seeing every cached key)."""
        Tk = t0 + T
        q_idx = torch.arange(t0, Tk, device=device)[:, None]  # (T, 1)
        k_idx = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
        if attn_mask is not None:
            assert attn_mask.shape == (B, Tk), f"attn_mask {tuple(attn_mask.shape)} != (B, cached + T) = {(B, Tk)}"
        chunked = kv_cache is not None and t0 > 0 and T > 1  # is_causal would align the wrong corner
        masks, out = {}, []
        for window in self.window_sizes:
            bites = window is not None and Tk - 1 > window  # some query is farther than `window` from key 0
            if attn_mask is None and not chunked and not bites:
                out.append(None)
                continue
            if window not in masks:
                mask = k_idx <= q_idx  # (T, Tk) causal
                if bites:
                    mask = mask & (q_idx - k_idx <= window)  # window keys back, plus the query itself
                mask = mask[None]  # (1, T, Tk)
                if attn_mask is not None:
                    mask = mask & attn_mask[:, None, :].bool()  # (B, T, Tk): no padding keys
                    # A padding query would see no key at all (softmax of all -inf = NaN, which then leaks
                    # into the cache through 0 * NaN); let every query see itself. Pad outputs are never used.
                    mask = mask | (k_idx == q_idx)[None]
                masks[window] = mask[:, None]  # (B or 1, 1, T, Tk)
            out.append(masks[window])
        return out

    def _smear(self, x, t0, positions, kv_cache):
        """2026 layout: x (B, T, C) normalized embeddings + gate * the previous position's; none at
        position 0 (a row's first real token, also under left padding). The cache carries the last one."""
        B, T, C = x.shape
        prev = x.new_zeros(B, 1, C) if kv_cache is None or kv_cache.prev_embedding is None or t0 == 0 \
            else kv_cache.prev_embedding
        if kv_cache is not None:
            kv_cache.prev_embedding = x[:, -1:]
        prev = torch.cat([prev, x[:, :-1]], 1)  # (B, T, C)
        pos = positions if positions is not None else torch.arange(t0, t0 + T, device=x.device)[None]
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.smear_gate(x[..., :SMEAR_CHANNELS]))  # (B, T, 1)
        return x + (gate * (pos > 0)[..., None].to(x.dtype)) * prev

    def trunk(self, x, targets=None, kv_cache=None, positions=None, attn_mask=None,
              loss_reduction="mean", last_only=False, ids=None):
        """Everything after the token embedding.

        x: (B, T, C) embeddings (text and merged vision vectors).
        targets: (B, T) long, -1 = ignore -> returns the loss; None -> returns logits (B, T, V) fp32.
        kv_cache: KVCache; x holds the positions after the `kv_cache.pos` already cached ones.
        positions: (B, T) long rotary positions per row (left padding: each row's first real token
            is at 0); default: kv_cache.pos + arange(T).
        attn_mask: (B, kv_cache.pos + T) bool, True on real tokens, False on padding keys.
        last_only: compute logits of the last position only (generation), (B, 1, V).
        ids: (B, T) long token ids of x's positions (image positions: the image token id); required by
            the 2026 layout, whose value embeddings are looked up by id.
        """
        B, T, C = x.size()
        assert C == self.config.n_embd, f"embedding width {C} != n_embd {self.config.n_embd}"
        t0 = 0 if kv_cache is None else kv_cache.pos
        cos_sin = rotary_at(self.cos, self.sin, B, T, t0, positions)
        masks = self._attention_masks(B, T, t0, attn_mask, kv_cache, x.device)

        x = norm(x)  # nanochat normalizes right after the embedding
        if self.config.layout == "d20":
            for block, mask in zip(self.transformer.h, masks):
                x = block(x, cos_sin, kv_cache, mask)
        else:
            assert ids is not None and ids.shape == (B, T), \
                f"layout 2026 needs the token ids (B, T) = {(B, T)} for its value embeddings, got " \
                f"{None if ids is None else tuple(ids.shape)}"
            x = self._smear(x, t0, positions, kv_cache)
            x0 = x  # mixed back in before every block
            backout_layer, x_backout = self.config.n_layer // 2, None
            for i, (block, mask) in enumerate(zip(self.transformer.h, masks)):
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
                ve = self.value_embeds[str(i)](ids).to(x.dtype) if str(i) in self.value_embeds else None
                x = block(x, cos_sin, kv_cache, mask, ve)
                if i == backout_layer:
                    x_backout = x
            if x_backout is not None:  # n_layer // 2 < n_layer always; kept as nanochat writes it
                x = x - self.backout_lambda.to(x.dtype) * x_backout  # remove low-level features
        x = norm(x)
        if last_only:
            x = x[:, -1:]
        if targets is not None and self.config.loss_impl == "chunked" and loss_reduction in ("mean", "sum"):
            assert targets.shape == (B, T), f"targets {tuple(targets.shape)} != ids {(B, T)}"
            weight = self.lm_head.weight  # the padding rows (if any) are cropped and get no gradient
            weight = weight if weight.shape[0] == self.config.vocab_size else weight[:self.config.vocab_size]
            return chunked_softcap_cross_entropy(x, weight, targets, self.config.softcap, loss_reduction)
        logits = self.lm_head(x)[..., :self.config.vocab_size].float()  # crop the padding rows; fp32 from here
        cap = self.config.softcap
        logits = cap * torch.tanh(logits / cap)  # (B, T, V)
        if targets is None:
            return logits
        assert targets.shape == (B, T), f"targets {tuple(targets.shape)} != ids {(B, T)}"
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)

    def forward(self, ids, targets=None, kv_cache=None, positions=None, attn_mask=None, loss_reduction="mean"):
        return self.trunk(self.embed(ids), targets, kv_cache, positions, attn_mask, loss_reduction, ids=ids)

    def estimate_flops(self, seq_len=None):
        """Training FLOPs per token, nanochat's estimate: 6 * (matmul weights) + 12 * H * D * sum over layers
        of the keys a query sees (T = seq_len, default the config's sequence_len; capped by the window).
        Matmul weights: every Linear (embeddings are lookups, the 2026 lambdas are scalars); in the d20
        layout that is params - wte, nanochat's d20 formula."""
        nparams_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        h, q = self.config.n_head, self.config.n_embd // self.config.n_head
        t = self.config.sequence_len if seq_len is None else seq_len
        attn = sum(12 * h * q * (t if w is None else min(w, t)) for w in self.window_sizes)
        return 6 * nparams_matmul + attn


def precompute_rotary(seq_len, head_dim, base=10000, device=None):
    channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
    inv_freq = 1.0 / (base ** (channel_range / head_dim))  # (D/2,)
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)  # (T, D/2)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # (1, T, 1, D/2) each
