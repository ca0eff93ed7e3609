"""SAM's rel-pos attention in training on CPU: torch SDPA (its math path) vs nanoocr's blockwise function.

    python recipes/bench/attention.py [--batch 4] [--heads 4] [--head-dim 64] [--grid 64] [--runs 3] [--dtype fp32]

With a trainable rel-pos bias SDPA has no fused CPU kernel and runs its math path; nanoocr.model.sam uses
`rel_pos_attention_blockwise` (RelPosAttention) there instead. For a global block (64x64 grid, 4096
tokens: the 1024 px view) and for windows (14x14, 25 per image), both on the same random q, k, v and
bias terms: forward + backward wall time (median of --runs after one warm-up), the ratio, and the
largest difference of outputs and gradients (relative to the largest SDPA value). `--dtype bf16` (what bf16
autocast hands SAM's attention): both run on bf16 inputs, and each one's error is taken against the same
computation in float64 (SDPA). Prints a Markdown table.
"""
import argparse
import datetime
import os
import statistics
import sys
import time

import torch

from nanoocr.model.sam import rel_pos_attention, rel_pos_attention_blockwise
from common import cpu_model  # recipes/bench/common.py


def fwd_bwd(fn, inputs, grad_out):
    for t in inputs:
        t.grad = None
    t0 = time.perf_counter()
    out = fn(*inputs)
    out.backward(grad_out)
    return time.perf_counter() - t0, out.detach(), [t.grad for t in inputs]


def rel_diff(got, ref) -> float:
    """Largest difference over the tensors of `got` and `ref` (float64), relative to each one's largest value."""
    return max(float((a.double() - b).abs().max() / b.abs().max()) for a, b in zip(got, ref))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4, help="images")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--grid", type=int, default=64, help="side of the global block's token grid (64: 1024 px)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    rows = []
    g = args.grid
    for name, items, side in ((f"global {g}x{g}", args.batch, g), ("windows 14x14", 25 * args.batch, 14)):
        N, D = side * side, args.head_dim
        q, k, v = (torch.randn(items, args.heads, N, D).to(dtype).requires_grad_() for _ in range(3))
        rel_h, rel_w = (torch.randn(items, args.heads, N, side).to(dtype).requires_grad_() for _ in range(2))
        inputs, grad_out = (q, k, v, rel_h, rel_w), torch.randn(items, N, args.heads, D).to(dtype)
        if dtype != torch.float32:  # the reference: SDPA on the same values in float64
            wide = [t.detach().double().requires_grad_() for t in inputs]
            _, out, grads = fwd_bwd(rel_pos_attention, wide, grad_out.double())
            exact = [out, *grads]
        times = {"sdpa": [], "blockwise": []}
        results = {}
        for run in range(args.runs + 1):  # run 0 warms up; the order alternates
            order = ("sdpa", "blockwise") if run % 2 else ("blockwise", "sdpa")
            for which in order:
                fn = rel_pos_attention if which == "sdpa" else rel_pos_attention_blockwise
                t, out, grads = fwd_bwd(fn, inputs, grad_out)
                if run:
                    times[which].append(t)
                results[which] = [out, *grads]
        if dtype == torch.float32:
            diff = f"{rel_diff(results['blockwise'], [t.double() for t in results['sdpa']]):.1e}"
        else:
            diff = f"{rel_diff(results['blockwise'], exact):.1e} (SDPA: {rel_diff(results['sdpa'], exact):.1e})"
        ts, tb = statistics.median(times["sdpa"]), statistics.median(times["blockwise"])
        rows.append((name, items, N, ts, tb, ts / tb, diff))

    print(f"\n`python recipes/bench/attention.py {' '.join(sys.argv[1:])}` — "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, {cpu_model()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {args.dtype}, {args.heads} heads x {args.head_dim}, "
          f"forward + backward, median of {args.runs}\n")
    diff_head = "max rel. diff (out, grads)" if dtype == torch.float32 else "max rel. error vs float64 (out, grads)"
    print(f"| attention | items | tokens | SDPA s | blockwise s | speed-up | {diff_head} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, items, N, ts, tb, r, d in rows:
        print(f"| {name} | {items} | {N} | {ts:.2f} | {tb:.2f} | {r:.2f}x | {d} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
