"""Model FLOPs of one training step of NanoOCR on a batch (forward + the backward that runs), for MFU.

    batch_flops(model, batch) = vision: per view size, FlopCounterMode over encode_views' forward AND backward
                                        on a meta-device twin whose requires_grad mirrors the live model
                              + GPT:    per token, linears 2N forward + 2N_trainable weight-grad + 2N input-grad;
                                        attention 4*H*Dh per (query, key) pair a query sees, x3 in training

Model FLOPs, not hardware FLOPs: what the model's math needs, not what the kernels happen to run. Not counted:
recompute (activation checkpointing: the twin is built without it; RelPosAttention's probabilities in backward:
the twin runs SDPA's math path, as on any non-CPU device), keys a kernel computes and then masks (SDPA with a
window or causal mask), elementwise work (norms, softmax, GELU: FlopCounterMode counts matmuls and convolutions),
and the zero-weighted 64 px view a text-only training batch runs (NanoOCR._vision_touch).

Vision: counted exactly as autograd runs it: weight-gradient matmuls only for parameters that require grad,
input-gradient matmuls only where the gradient must reach something trainable below (frozen SAM + CLIP with a
trainable projector: SAM and CLIP forward only, the projector forward + weight-grad). Freezing happens after the
model is built (the `freeze` algorithm at Trainer init), so requires_grad is read from the live model at every
call, by parameter name (`clean_name`: no FSDP / checkpoint-wrapper segments); shapes come from the twin (under
FSDP the live parameters are this rank's shards). Counts are cached per (view size, trainable-parameter set).

GPT: the input-gradient of every linear and the attention backward are counted when anything below the lm_head
trains (any parameter outside it: the vision path, wte, a block). Exact when the GPT's input needs a gradient
(wte, the projector or any vision parameter trains: every recipe) and when nothing below the lm_head trains (then
no input-gradient, attention forward only); in between (vision and wte frozen, blocks trained) it over-counts the
input-gradient of the linears below the lowest trainable parameter. Linear weights are every nn.Linear of the GPT
(embeddings are lookups, the 2026 lambdas scalars; the 2026 lm_head's <= 63 padding rows included). Attention: a
query at position i sees min(i, w) + 1 keys, w = its layer's window (nanoocr.model.gpt.window_sizes, None =
unlimited: causal i + 1), summed exactly over the batch's T positions of every row (padding included: it runs).

DeepSeek-OCR's MoE decoder: the same count, each routed expert's linears weighted by the share of tokens it
runs on, num_experts_per_tok / n_routed_experts (exact over a batch: every token runs exactly k experts, all of
one size), plus the router (a (E, C) matmul per token). LoRA adapters' own matmuls (2 r (in + out) per token and
wrapped linear, ~2.5% of a layer at r 16) are not counted: the twin is built without them.
"""
from __future__ import annotations

import dataclasses
import weakref

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from nanoocr.model.deepseek_decoder import MoE
from nanoocr.model.distributed import clean_name, unwrap
from nanoocr.model.gpt import window_sizes
from nanoocr.model.vlm import NanoOCR

# live model -> {"twin": meta NanoOCR, "vision": {(size, trainable names): FLOPs of one view}}
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def attention_pairs(T: int, window: int | None) -> int:
    """(query, key) pairs of causal attention over T positions, each query seeing `window` keys back plus itself
    (None = all earlier keys): sum over i < T of min(i, window) + 1, in closed form."""
    if window is None or window >= T - 1:
        return T * (T + 1) // 2
    return window * (window + 1) // 2 + (T - window) * (window + 1)  # ramp of the first w queries, then w + 1 each


def gpt_flops(gpt: nn.Module, B: int, T: int, through: bool) -> int:
    """Training FLOPs of the GPT `gpt` (shapes and requires_grad only: a meta twin is fine) on B rows of T tokens.

    through: a gradient flows below the lm_head (input-gradients of every linear, attention backward); else the
    trunk runs forward only."""
    cfg = gpt.config
    share = {}  # id(weight) -> the share of tokens a matmul runs on (1 unless a routed expert's)
    weights = [m.weight for m in gpt.modules() if isinstance(m, nn.Linear)]
    for moe in (m for m in gpt.modules() if isinstance(m, MoE)):
        weights.append(moe.gate.weight)  # the router: F.linear over every token
        for p in moe.experts.parameters():
            share[id(p)] = cfg.num_experts_per_tok / cfg.n_routed_experts
    linear = sum(w.numel() * share.get(id(w), 1.0) * (2 + 2 * w.requires_grad + 2 * through)  # fwd, w-grad, in-grad
                 for w in weights)
    windows = window_sizes(cfg) if hasattr(cfg, "layout") else [None] * cfg.n_layer  # the MoE decoder: causal
    pairs = sum(attention_pairs(T, w) for w in windows)  # over layers, per row
    attn = 4 * cfg.n_head * (cfg.n_embd // cfg.n_head) * pairs * (3 if through else 1)  # backward = 2x forward
    return int(B * (T * linear + attn))


def _trainable(model: nn.Module) -> dict[str, bool]:
    """Parameter name (without wrapper segments) -> requires_grad, of the live, maybe wrapped or sharded, model."""
    return {clean_name(n): p.requires_grad for n, p in model.named_parameters()}


def _mirrored(twin: NanoOCR, live: dict[str, bool]) -> None:
    for name, p in twin.named_parameters():
        if name not in live:
            raise ValueError(f"batch_flops: the model has no parameter {name!r} (every NanoOCR of this config has; "
                             "FSDP with use_orig_params=False would hide the names)")
        p.requires_grad_(live[name])


def vision_view_flops(twin: NanoOCR, size: int) -> int:
    """FLOPs of encode_views on ONE size x size view, forward + the backward autograd runs for the twin's
    requires_grad (none of it when nothing in the vision path trains), on the meta device."""
    counter = FlopCounterMode(display=False)
    with counter, torch.enable_grad():
        out = twin.encode_views(torch.empty(1, 3, size, size, device="meta"))
        if out.requires_grad:
            out.backward(torch.empty_like(out))
    for p in twin.parameters():
        p.grad = None
    return int(counter.get_total_flops())


def batch_flops(model: nn.Module, batch: dict) -> float:
    """Model FLOPs of one training step (forward + backward) of `model` (a NanoOCR, possibly wrapped) on `batch`
    (ids (B, T); images (N, 3, S, S) and crops (M, 3, s, s) optional), for the parameters trainable now."""
    if "ids" not in batch or batch["ids"].ndim != 2:
        raise ValueError(f"batch_flops needs batch['ids'] of shape (B, T), got keys {sorted(batch)}")
    net = unwrap(model)
    if net not in _CACHE:
        cfg = dataclasses.replace(net.config, activation_checkpointing=False)  # recompute is not model FLOPs
        with torch.device("meta"):
            _CACHE[net] = {"twin": NanoOCR(cfg), "vision": {}}
    twin, cache = _CACHE[net]["twin"], _CACHE[net]["vision"]
    live = _trainable(net)
    _mirrored(twin, live)
    B, T = batch["ids"].shape
    # from the live model: its LoRA adapters (not in the twin) also carry the gradient through the trunk
    through = any(trains for name, trains in live.items() if name != "gpt.lm_head.weight")
    total = gpt_flops(twin.gpt, B, T, through)

    signature = frozenset(n for n, p in twin.named_parameters() if p.requires_grad and not n.startswith("gpt."))
    for key in ("images", "crops"):
        views = batch.get(key)
        if views is None or views.shape[0] == 0:
            continue
        size = views.shape[-1]
        if (size, signature) not in cache:
            cache[(size, signature)] = vision_view_flops(twin, size)
        total += views.shape[0] * cache[(size, signature)]  # views are independent: FLOPs scale with their count
    return float(total)
