"""
DeepSeek-OCR's language model: a DeepSeek-V2-style mixture-of-experts decoder with plain multi-head
attention (the released checkpoint has `use_mla: false`), split like nanoocr's GPT so the VLM merges
vision vectors between the token embedding and the transformer: `embed(ids)` -> (merge) ->
`trunk(x, ...)`; `forward` is exactly that.

    ids (B, T) -> model.embed_tokens -> x (B, T, C)      (no norm after the embedding, unlike nanochat)
    per layer:  x += self_attn(input_layernorm(x))        q/k/v/o, no bias, rotate-half rotary over the
                                                          full head (Llama style), causal SDPA
                x += mlp(post_attention_layernorm(x))     layers < first_k_dense_replace: dense SiLU MLP;
                                                          the others: MoE (softmax router, greedy top-k,
                                                          routed experts + shared experts)
    model.norm -> lm_head -> logits (B, T, vocab_size) fp32 (no softcap)

Released settings (deepseek-ai/DeepSeek-OCR, the defaults of DeepseekDecoderConfig): hidden 1280, 12 layers,
10 heads of 128, layer 0 dense (intermediate 6848), layers 1-11 MoE with 64 routed experts of width 896,
top-6, 2 shared experts (one MLP of width 2 x 896), norm_topk_prob false, routed_scaling_factor 1.0,
aux_loss_alpha 0.001 with seq_aux, RMSNorm eps 1e-6, rope theta 10000, vocab 129280, 8192 positions.

Parameter names are the released ones, so a DeepseekDecoder's state_dict keys ARE the checkpoint's decoder
keys (`model.embed_tokens.weight`, `model.layers.N.self_attn.{q,k,v,o}_proj.weight`,
`model.layers.N.mlp.{gate,up,down}_proj.weight` (dense), `model.layers.N.mlp.gate.weight` (router),
`model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight`, `model.layers.N.mlp.shared_experts.*`,
`model.layers.N.{input,post_attention}_layernorm.weight`, `model.norm.weight`, `lm_head.weight`):
`load_deepseek_decoder` reads them by name from the released safetensors (vision keys skipped, counted).

The GPT interface the VLM, the engine and the recipe use, with the same names:
`config.{n_embd, n_layer, n_head, n_kv_head, vocab_size, sequence_len, attn_impl, embed_impl}`, `embed`,
`trunk(x, targets, kv_cache, positions, attn_mask, loss_reduction, last_only, ids)`, `forward`, `lm_head`,
`rotary_seq_len`, `init_rotary`, `init_weights`, `estimate_flops`, nanoocr.model.gpt.KVCache (shared, as is),
and `transformer.wte` / `transformer.h` (read-only aliases of `model.embed_tokens` / `model.layers`).

Training vs inference:
- one MoE code path for both: token-expert assignments sorted by expert, each expert runs once on its
  contiguous slice (a loop over experts, never over tokens), outputs put back and weighted in fp32
- in training (module.training and aux_loss_alpha > 0) every MoE layer computes DeepSeek-V2's
  load-balancing loss (seq_aux: per sequence; else per batch); their sum is `decoder.aux_loss` after each
  forward (None otherwise), a tensor in the graph for the caller to add to its loss (trunk's return
  value stays what GPT.trunk returns). Unlike the official remote code (AddAuxiliaryLoss, which injects
  the gradient in backward), the value is visible and scales with the loss like any other term.
- with gradients enabled every expert runs, on an empty slice when it got no token, so every expert
  parameter gets a (zero) gradient and DDP never sees an unused parameter
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoocr.model.gpt import apply_rotary_emb, attend, precompute_rotary, rotary_at
from nanoocr.model.loss import chunked_softcap_cross_entropy


@dataclass
class DeepseekDecoderConfig:
    # The names nanoocr's GPT uses for the shared concepts (the VLM, engine and recipe read these)...
    vocab_size: int = 129280
    n_embd: int = 1280  # hidden_size
    n_layer: int = 12  # num_hidden_layers
    n_head: int = 10  # num_attention_heads; head_dim = n_embd / n_head (128 released)
    n_kv_head: int = 10  # num_key_value_heads: must equal n_head (plain MHA, the shared KVCache)
    sequence_len: int = 8192  # max_position_embeddings: sizes the rotary table (the model's positions)
    # ...and the released config's names for the rest (config_from_hf maps them 1:1).
    intermediate_size: int = 6848  # the dense MLP's width
    moe_intermediate_size: int = 896  # one routed expert's width
    n_routed_experts: int = 64  # 0: no MoE layer at all
    n_shared_experts: int = 2  # one shared MLP of width n_shared_experts * moe_intermediate_size; 0: none
    num_experts_per_tok: int = 6  # top-k
    first_k_dense_replace: int = 1  # layers [0, k) are dense
    moe_layer_freq: int = 1  # a layer i >= first_k_dense_replace is MoE when i % moe_layer_freq == 0
    norm_topk_prob: bool = False  # renormalize the top-k probabilities to sum 1 (then scale)
    routed_scaling_factor: float = 1.0
    aux_loss_alpha: float = 0.001  # load-balancing loss weight (training only); 0 disables it
    seq_aux: bool = True  # balance per sequence (DeepSeek-V2's seq_aux) rather than over the whole batch
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02  # std of every Linear and the embedding at init (the router: kaiming)
    attn_impl: str = "torch"  # "torch" (SDPA) | "triton" (kernels/attention.py, full causal case)
    embed_impl: str = "torch"  # "torch" | "triton" (the VLM's fused embed + merge, kernels/scatter.py)

    def __post_init__(self):
        assert self.n_kv_head == self.n_head, \
            f"n_kv_head ({self.n_kv_head}) must equal n_head ({self.n_head}): plain multi-head attention"
        assert self.n_embd % self.n_head == 0, f"n_embd {self.n_embd} not divisible by n_head {self.n_head}"
        assert (self.n_embd // self.n_head) % 2 == 0, f"head_dim {self.n_embd // self.n_head} must be even (rotary)"
        assert self.n_routed_experts >= 0 and self.n_shared_experts >= 0, "expert counts must be >= 0"
        assert self.n_routed_experts == 0 or 1 <= self.num_experts_per_tok <= self.n_routed_experts, \
            f"num_experts_per_tok {self.num_experts_per_tok} must be in 1..n_routed_experts ({self.n_routed_experts})"
        assert self.moe_layer_freq >= 1, f"moe_layer_freq must be >= 1, got {self.moe_layer_freq}"
        assert self.aux_loss_alpha >= 0, f"aux_loss_alpha must be >= 0, got {self.aux_loss_alpha}"
        assert self.sequence_len >= 1, f"sequence_len must be >= 1, got {self.sequence_len}"
        for name in ("attn_impl", "embed_impl"):
            value = getattr(self, name)
            assert value in ("torch", "triton"), f"{name} must be 'torch' or 'triton', got {value!r}"

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    def is_moe(self, layer_idx):
        """The official remote code's rule (transformers 4.57 ignores moe_layer_freq; equal at freq 1)."""
        return (self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace
                and layer_idx % self.moe_layer_freq == 0)


# ------------------------------------------------------------------------------------------------
# The released config.json <-> DeepseekDecoderConfig

# released key -> our field, where the names differ; every other field has the released key's name.
HF_RENAMES = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
              "num_key_value_heads": "n_kv_head", "max_position_embeddings": "sequence_len"}
# The released config omits these; the official remote code's DeepseekV2Config defaults fill them (they
# are also our defaults). transformers' own DeepseekV2Config has other defaults: never rely on them.
HF_DEFAULTS = {"moe_layer_freq": 1, "norm_topk_prob": False, "routed_scaling_factor": 1.0,
               "aux_loss_alpha": 0.001, "seq_aux": True, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
               "initializer_range": 0.02}
# Settings this decoder implements one way only: config_from_hf refuses other values (absent = this value).
HF_FIXED = {"use_mla": False, "topk_method": "greedy", "scoring_func": "softmax", "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False, "rope_scaling": None, "tie_word_embeddings": False}
# What the released decoder section also holds, with these values under use_mla = false (hf_config writes them).
HF_RELEASED_CONSTANTS = {"q_lora_rank": None, "kv_lora_rank": None, "qk_nope_head_dim": 0, "qk_rope_head_dim": 0,
                         "v_head_dim": 0, "n_group": 1, "topk_group": 1, "lm_head": True, "rm_head": False,
                         "bos_token_id": 0, "eos_token_id": 1}
_FIELDS = [f.name for f in fields(DeepseekDecoderConfig) if f.name not in ("attn_impl", "embed_impl")]
_HF_NAME = {ours: theirs for theirs, ours in HF_RENAMES.items()}


def decoder_section(hf: dict) -> dict:
    """The decoder fields of a released config.json: `language_config` (what vLLM reads), checked against
    the top level (what the HF remote code reads) wherever both hold a key; a plain DeepseekV2 config as is."""
    lang = hf.get("language_config")
    if not isinstance(lang, dict):
        return hf
    names = {_HF_NAME.get(f, f) for f in _FIELDS} | set(HF_FIXED)
    clash = {k: (hf[k], lang[k]) for k in sorted(names) if k in hf and k in lang and hf[k] != lang[k]}
    if clash:
        raise ValueError(f"config.json: top level and language_config disagree on {clash} (top, language_config)")
    return lang


def config_from_hf(hf: dict, **overrides) -> DeepseekDecoderConfig:
    """DeepseekDecoderConfig from a released config.json (as a dict); `overrides` set nanoocr-only fields
    (attn_impl, embed_impl) or change released ones (e.g. aux_loss_alpha for fine-tuning)."""
    lang = decoder_section(hf)
    for key, want in HF_FIXED.items():
        if lang.get(key, want) != want:
            raise ValueError(f"config.json: {key} = {lang[key]!r} is not supported (this decoder: {key} = {want!r})")
    kwargs = {}
    for name in _FIELDS:
        key = _HF_NAME.get(name, name)
        value = lang.get(key)
        if value is None and key in ("n_routed_experts", "n_shared_experts"):
            value = 0  # null = none (DeepSeek-V2's convention)
        if value is None:
            value = HF_DEFAULTS.get(key)
        if value is None:
            raise ValueError(f"config.json: the decoder config has no {key!r}")
        kwargs[name] = value
    kwargs.update(overrides)
    return DeepseekDecoderConfig(**kwargs)


def hf_config(config: DeepseekDecoderConfig) -> dict:
    """The decoder fields of a released-layout config.json (for both `language_config` and the top level),
    under their released names, with the plain-MHA constants the released file has. Not included (they
    differ between the two places): architectures, model_type, torch_dtype."""
    out = {_HF_NAME.get(name, name): getattr(config, name) for name in _FIELDS}
    out.update(HF_FIXED)
    out.update(HF_RELEASED_CONSTANTS)
    return out


# ------------------------------------------------------------------------------------------------
# The model

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # DeepSeek-V2 / Llama: normalize in fp32, cast back, then scale (the weight in its own dtype)
        return self.weight * F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).to(x.dtype)


def apply_rotary_half(x, cos, sin):
    """Llama / DeepSeek-OCR rotary, rotate-half over the full head: (x1, x2) -> (x1 cos - x2 sin,
    x2 cos + x1 sin). nanochat's apply_rotary_emb rotates the other way (its y1 = x1 cos + x2 sin), i.e. by
    -angle: the same halves convention, so it serves with sin negated. x (B, T, H, D); cos/sin (., T, 1, D/2)."""
    return apply_rotary_emb(x, cos, -sin)


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.attn_impl = config.attn_impl
        C = config.n_embd
        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = nn.Linear(C, C, bias=False)
        self.v_proj = nn.Linear(C, C, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)

    def forward(self, x, cos_sin, kv_cache=None, mask=None):
        B, T, C = x.size()
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_head, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_head, self.head_dim)
        cos, sin = cos_sin
        q, k = apply_rotary_half(q, cos, sin), apply_rotary_half(k, cos, sin)
        y = attend(q, k, v, self.layer_idx, kv_cache, mask, self.attn_impl)  # (B, T, H, D)
        return self.o_proj(y.reshape(B, T, C))


class MLP(nn.Module):
    """SiLU-gated MLP: the dense layers, each routed expert and the shared experts."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEGate(nn.Module):
    """The router: a bare (n_routed_experts, n_embd) weight (released `mlp.gate.weight`), not an nn.Linear,
    so code that targets Linears by name (LoRA's gate_proj/up_proj/...) never picks it up by accident."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.n_embd))

    def forward(self, x, batch_size):
        """x (N, C) with N = batch_size * T -> top-k expert ids (N, k), their weights (N, k) fp32, aux loss | None."""
        cfg = self.config
        # routing in fp32, as released; autocast (Composer's amp_bf16, CPU bf16) would run the matmul in bf16
        with torch.autocast(x.device.type, enabled=False):
            scores = F.linear(x.float(), self.weight.float()).softmax(dim=-1)
        weight, idx = torch.topk(scores, k=cfg.num_experts_per_tok, dim=-1, sorted=False)  # greedy
        if cfg.num_experts_per_tok > 1 and cfg.norm_topk_prob:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        weight = weight * cfg.routed_scaling_factor
        aux = None
        if self.training and cfg.aux_loss_alpha > 0:
            aux = load_balancing_loss(scores, idx, batch_size, cfg)
        return idx, weight, aux


def load_balancing_loss(scores, idx, batch_size, cfg):
    """DeepSeek-V2's expert-balance loss, alpha * sum_e f_e * P_e, with f_e the fraction of the top-k
    selections that went to expert e times n_routed_experts and P_e the mean router probability of e.
    seq_aux: f and P per sequence, the loss averaged over sequences; else over every token of the batch.
    Every position counts (padding and image positions too), as in the official code.
    scores (N, E) fp32 softmax; idx (N, k)."""
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    if cfg.seq_aux:
        T = scores.shape[0] // batch_size
        counts = torch.zeros(batch_size, E, device=scores.device, dtype=scores.dtype)
        counts.scatter_add_(1, idx.view(batch_size, T * k), torch.ones(batch_size, T * k, device=scores.device))
        f = counts / (T * k / E)
        return (f * scores.view(batch_size, T, E).mean(dim=1)).sum(dim=1).mean() * cfg.aux_loss_alpha
    f = F.one_hot(idx.flatten(), num_classes=E).float().mean(0) * E
    return (scores.mean(0) * f).sum() * cfg.aux_loss_alpha


class MoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.experts = nn.ModuleList([MLP(config.n_embd, config.moe_intermediate_size)
                                      for _ in range(config.n_routed_experts)])
        self.gate = MoEGate(config)
        self.shared_experts = None
        if config.n_shared_experts:
            self.shared_experts = MLP(config.n_embd, config.moe_intermediate_size * config.n_shared_experts)

    def forward(self, x):
        """x (B, T, C) -> (B, T, C), aux loss | None."""
        B, T, C = x.shape
        flat = x.reshape(-1, C)
        idx, weight, aux = self.gate(flat, B)
        y = self.routed(flat, idx, weight).view(B, T, C)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y, aux

    def routed(self, x, idx, weight):
        """sum_j weight[n, j] * expert_{idx[n, j]}(x[n]) for every row n of x (N, C), grouped by expert:
        the N*k assignments are sorted by expert id, each expert runs once on its contiguous slice."""
        N, k = idx.shape
        flat = idx.flatten()
        order = flat.argsort(stable=True)  # assignment positions, grouped by expert
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()  # one host sync per layer
        chunks = x[order // k].split(counts)
        grad = torch.is_grad_enabled()  # every expert in the graph (zero grads), see the module docstring
        outs = [expert(chunk) for expert, chunk, n in zip(self.experts, chunks, counts) if n or grad]
        ys = torch.cat(outs)
        y = torch.empty_like(ys)
        y[order] = ys  # back to (token, slot) order
        # weighted sum in fp32 (the router's dtype), then back: the official combine
        return (y.view(N, k, -1).float() * weight.unsqueeze(-1)).sum(dim=1).to(x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MoE(config) if config.is_moe(layer_idx) else MLP(config.n_embd, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)

    def forward(self, x, cos_sin, kv_cache=None, mask=None):
        """-> (x, aux loss | None). Every per-layer input is an argument, so a checkpoint_wrapper around
        the layer recomputes exactly this (as nanoocr's GPT Block)."""
        x = x + self.self_attn(self.input_layernorm(x), cos_sin, kv_cache, mask)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoE):
            h, aux = self.mlp(h)
        else:
            h, aux = self.mlp(h), None
        return x + h, aux


class DecoderModel(nn.Module):
    """The `model.` namespace of the released checkpoint (embed_tokens, layers, norm)."""

    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList([DecoderLayer(config, i) for i in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.rms_norm_eps)


class GPTNames:
    """`decoder.transformer.wte` / `.h`: the GPT's attribute names for the same modules (read-only)."""

    def __init__(self, model):
        self.wte, self.h = model.embed_tokens, model.layers


def causal_mask(B, T, t0, attn_mask, device):
    """(B or 1, 1, T, t0 + T) bool for T queries after t0 cached positions, True = attend; None where SDPA's
    is_causal (or one query seeing every cached key) is exact. Padding queries see themselves (no NaN rows)."""
    Tk = t0 + T
    if attn_mask is None and (t0 == 0 or T == 1):
        return None
    q_idx = torch.arange(t0, Tk, device=device)[:, None]
    k_idx = torch.arange(Tk, device=device)[None, :]
    mask = (k_idx <= q_idx)[None]  # (1, T, Tk)
    if attn_mask is not None:
        assert attn_mask.shape == (B, Tk), f"attn_mask {tuple(attn_mask.shape)} != (B, cached + T) = {(B, Tk)}"
        mask = (mask & attn_mask[:, None, :].bool()) | (k_idx == q_idx)[None]
    return mask[:, None]


class DeepseekDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.rotary_seq_len = config.sequence_len  # the released model's positions; no extrapolation
        self.aux_loss = None  # the last training forward's load-balancing loss (a tensor in the graph) | None
        self.init_rotary()

    @property
    def transformer(self):
        return GPTNames(self.model)

    def init_rotary(self, device=None):
        """(Re)compute the rotary tables: non-persistent fp32 buffers (1, rotary_seq_len, 1, head_dim/2)."""
        cos, sin = precompute_rotary(self.rotary_seq_len, self.config.head_dim, base=self.config.rope_theta,
                                     device=device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_module(self, module):
        """Initialize `module`'s OWN parameters / buffers (for FSDP's param_init_fn after `to_empty`, and
        init_weights). The official DeepSeek-V2 init: Linear and embedding normal(0, initializer_range),
        the router kaiming-uniform (a=sqrt(5), what its reset_parameters does), RMSNorm weights 1."""
        std = self.config.initializer_range
        if module is self:
            self.init_rotary(device=self.cos.device)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, MoEGate):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def init_weights(self):
        for module in self.modules():
            self.init_module(module)

    def embed(self, ids):
        # ids (B, T) long -> (B, T, C)
        return self.model.embed_tokens(ids)

    def trunk(self, x, targets=None, kv_cache=None, positions=None, attn_mask=None,
              loss_reduction="mean", last_only=False, ids=None):
        """Everything after the token embedding; the arguments and results of GPT.trunk.

        x: (B, T, C) embeddings (text and merged vision vectors).
        targets: (B, T) long, -1 = ignore -> returns the cross-entropy; None -> logits (B, T, V) fp32.
        kv_cache: nanoocr.model.gpt.KVCache (n_layer, B, n_head, head_dim, max_len); x holds the positions
            after the `kv_cache.pos` cached ones.
        positions: (B, T) long rotary positions per row (left padding); default kv_cache.pos + arange(T).
        attn_mask: (B, kv_cache.pos + T) bool, True on real tokens.
        last_only: logits of the last position only, (B, 1, V).
        ids: accepted for the GPT interface; unused (no value embeddings here).
        Side effect: `self.aux_loss` = the summed load-balancing loss of this forward (training) or None."""
        B, T, C = x.size()
        assert C == self.config.n_embd, f"embedding width {C} != n_embd {self.config.n_embd}"
        t0 = 0 if kv_cache is None else kv_cache.pos
        cos_sin = rotary_at(self.cos, self.sin, B, T, t0, positions)
        mask = causal_mask(B, T, t0, attn_mask, x.device)
        aux_total = None
        for layer in self.model.layers:
            x, aux = layer(x, cos_sin, kv_cache, mask)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        self.aux_loss = aux_total
        x = self.model.norm(x)
        if last_only:
            x = x[:, -1:]
        if targets is not None and loss_reduction in ("mean", "sum"):  # no (B, T, V) logits (nanoocr/model/loss.py)
            assert targets.shape == (B, T), f"targets {tuple(targets.shape)} != {(B, T)}"
            return chunked_softcap_cross_entropy(x, self.lm_head.weight, targets, None, loss_reduction)
        logits = self.lm_head(x).float()  # (B, T, V), fp32 from here
        if targets is None:
            return logits
        assert targets.shape == (B, T), f"targets {tuple(targets.shape)} != {(B, T)}"
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)

    def forward(self, ids, targets=None, kv_cache=None, positions=None, attn_mask=None, loss_reduction="mean"):
        return self.trunk(self.embed(ids), targets, kv_cache, positions, attn_mask, loss_reduction, ids=ids)

    def active_matmul_params(self):
        """Matmul weights one token goes through: attention, dense MLPs, router, top-k routed experts,
        shared experts, lm_head (embedding lookups excluded)."""
        cfg, n = self.config, 0
        for layer in self.model.layers:
            n += sum(p.numel() for p in layer.self_attn.parameters())
            if isinstance(layer.mlp, MoE):
                n += layer.mlp.gate.weight.numel()
                n += cfg.num_experts_per_tok * sum(p.numel() for p in layer.mlp.experts[0].parameters())
                if layer.mlp.shared_experts is not None:
                    n += sum(p.numel() for p in layer.mlp.shared_experts.parameters())
            else:
                n += sum(p.numel() for p in layer.mlp.parameters())
        return n + self.lm_head.weight.numel()

    def estimate_flops(self, seq_len=None):
        """Training FLOPs per token, GPT.estimate_flops' formula with the ACTIVE matmul weights:
        6 * active + 12 * H * D * T per layer (T = seq_len, default sequence_len)."""
        t = self.config.sequence_len if seq_len is None else seq_len
        cfg = self.config
        return 6 * self.active_matmul_params() + 12 * cfg.n_head * cfg.head_dim * t * cfg.n_layer


# ------------------------------------------------------------------------------------------------
# Loading the released checkpoint's decoder

DECODER_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")


def is_decoder_key(key: str) -> bool:
    return key.startswith(DECODER_PREFIXES)


def load_deepseek_decoder(decoder: DeepseekDecoder, path, strict: bool = True):
    """Load the decoder of a released-layout checkpoint (a .safetensors file, or a folder with
    model.safetensors[.index.json]) into `decoder` by name; only decoder keys are read (the vision keys
    are counted in the report's notes). Returns a nanoocr.model.pretrained.LoadReport; with strict=True a
    missing or unexpected decoder key raises ValueError (a shape mismatch always does)."""
    from nanoocr.model.pretrained import LoadReport, read_checkpoint

    tensors, skipped = read_checkpoint(path, want=is_decoder_key)
    report = LoadReport(source=str(path))
    if skipped:
        report.notes.append(f"{skipped} non-decoder keys (vision: model.sam_model/vision_model/projector/...) not read")
    own = decoder.state_dict(keep_vars=True)  # our names are the released keys: no renaming
    wrong = [k for k in tensors if k in own and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if wrong:  # before anything is copied
        k = wrong[0]
        raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(tensors[k].shape)} vs model "
                         f"{tuple(own[k].shape)}" + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})
    if dtypes:
        report.notes.append(f"checkpoint dtype {'/'.join(dtypes)} -> model dtype "
                            f"{str(decoder.lm_head.weight.dtype).replace('torch.', '')}")
    with torch.no_grad():
        for key, t in tensors.items():
            if key in own:
                own[key].copy_(t.to(own[key].dtype))
                report.loaded += 1
    report.unexpected += sorted(k for k in tensors if k not in own)  # e.g. MLA keys, extra layers or experts
    report.missing += [k for k in own if k not in tensors]  # in the model's order
    print("[load_deepseek_decoder] " + report.summary())
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"load_deepseek_decoder from {report.source}: missing {report.missing}, "
                         f"unexpected {report.unexpected}")
    return report
