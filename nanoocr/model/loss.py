"""The training loss without the (B, T, V) logits: linear (+ softcap) + cross-entropy, chunk by chunk.

    loss = CE(cap * tanh(h @ W.T / cap), targets), ignore_index -1, mean over the non-ignored targets
    (softcap None: CE(h @ W.T, targets), the DeepSeek decoder's head)

The plain path materializes the fp32 logits of every position, and autograd keeps them (and tanh's output)
for the backward: at T = 4096 and nanochat's 65537-token vocabulary that is 1 GiB per copy, per sequence.
Here the rows go through in chunks of at most CHUNK_ELEMENTS logits: each chunk's logits, loss and gradient
(softmax - onehot, through the softcap's 1 - tanh²) are computed in the forward and dropped, keeping only
dL/dh (the size of h) and dL/dW (the size of W). The backward scales them by the incoming gradient. Same
FLOPs as the plain path (one matmul forward, two backward), no recompute; the same loss and gradients to
fp32 rounding (tests/test_loss.py checks both against F.cross_entropy on the plain logits).

Under autocast (CPU bf16 or CUDA amp) the two matmuls run in the autocast dtype, like the plain path's
lm_head; the softcap, log-sum-exp and gradient math run in fp32.
"""
from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 22  # logits per chunk: 16 MiB of fp32 (64 rows at a 65537-token vocabulary)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    kind = h.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return h.dtype


class _ChunkedSoftcapCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, softcap, chunk_rows, reduction):
        # h (N, C), weight (V, C), targets (N,) long with -1 = ignore
        dtype = _compute_dtype(h)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid_all = targets != -1
        denom = valid_all.sum().clamp(min=1).float() if reduction == "mean" else h.new_ones((), dtype=torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for s in range(0, h.shape[0], chunk_rows):
                hc = h[s:s + chunk_rows].to(dtype)
                tc = targets[s:s + chunk_rows]
                valid = valid_all[s:s + chunk_rows]
                # Two (n, V) fp32 buffers per chunk: the logits, and exp / softmax / the gradient.
                logits = (hc @ w.t()).float()  # (n, V) z
                if softcap is not None:
                    logits.div_(softcap).tanh_().mul_(softcap)  # cap * tanh(z / cap), in place
                rows = torch.arange(tc.shape[0], device=tc.device)
                picked = logits[rows, tc.clamp(min=0)]
                top = logits.amax(dim=-1, keepdim=True)
                p = (logits - top).exp_()
                norm_ = p.sum(dim=-1, keepdim=True)
                lse = top + norm_.log()  # (n, 1) log-sum-exp
                total += ((lse[:, 0] - picked) * valid).sum()
                if not (need_h or need_w):
                    continue
                p.div_(norm_)  # softmax
                p[rows, tc.clamp(min=0)] -= valid.float()  # - onehot (ignored rows: nothing)
                p.mul_((valid.float() / denom)[:, None])  # dL/dlogits; ignored rows are zero
                if softcap is not None:  # d(cap * tanh(z / cap))/dz = 1 - tanh² = 1 - (logits / cap)²
                    p.mul_(logits.div_(softcap).square_().neg_().add_(1))
                dz = p.to(dtype)
                del logits, p
                if need_h:
                    grad_h[s:s + chunk_rows] = (dz @ w).to(h.dtype)
                if need_w and dz.dtype == torch.float32:
                    grad_w.addmm_(dz.t(), hc)  # no (V, C) temporary
                elif need_w:
                    grad_w += (dz.t() @ hc).float()
                del dz  # before the next chunk's logits: never three (n, V) buffers at once
        # Kept on ctx, not save_for_backward: they are this Function's own results, and backward hands them
        # over (no reference left here), so autograd can take dL/dW as the .grad without a copy.
        ctx.grads = [grad_h, grad_w]
        return total / denom

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:  # the first backward handed the gradients over
            raise RuntimeError("chunked cross-entropy: backward through the same loss twice (retain_graph) is not "
                               "supported; use gpt.loss_impl=plain")
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        grad_h = None if grad_h is None else grad_h.mul_(grad_out)  # scaled in place: no copies
        grad_w = None if grad_w is None else grad_w.mul_(grad_out)
        return grad_h, grad_w, None, None, None, None


def chunked_softcap_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                  softcap: float | None, reduction: str = "mean",
                                  chunk_rows: int | None = None) -> torch.Tensor:
    """CE(softcap * tanh(h @ weight.T / softcap), targets) with ignore_index -1 -> a scalar (softcap None:
    CE(h @ weight.T, targets)).

    h (..., C) final hidden states; weight (V, C) the unembedding rows of the real vocabulary; targets (...)
    long. reduction: "mean" (over non-ignored targets; 0 when there are none) or "sum"."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"chunked cross-entropy reduces by 'mean' or 'sum', not {reduction!r}")
    h2, t2 = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    assert h2.shape[0] == t2.shape[0], f"{h2.shape[0]} hidden rows vs {t2.shape[0]} targets"
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _ChunkedSoftcapCE.apply(h2, weight, t2, None if softcap is None else float(softcap), rows, reduction)
