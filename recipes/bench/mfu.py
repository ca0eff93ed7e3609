"""Training throughput and MFU on this machine, for the `nano`, `small` and `medium` presets.

    python recipes/bench/mfu.py [--presets nano small medium] [--batch 4] [--steps 5] [--mode base]

The process keeps freed memory for reuse (nanoocr.train.memory.keep_freed_memory), as the recipe does on CPU.

One run measures, side by side: the fp32 matmul peak of this device (best of repeated 2048³ matmuls,
nanoocr.train.callbacks.measure_matmul_peak, also what the recipe's SpeedMonitor uses on CPU), then for each
preset the time of full training steps (forward + backward + AdamW) on a batch of real rendered pages
(base mode by default), the model FLOPs per step from ComposerNanoOCR.flops_per_batch (the number
SpeedMonitor reports MFU from), samples/s and MFU = achieved FLOP/s ÷ measured peak.
"""
import argparse
import datetime
import os
import sys

import torch

from nanoocr.model import presets
from nanoocr.train.callbacks import measure_matmul_peak
from nanoocr.train.composer_model import ComposerNanoOCR
from nanoocr.data.stream import collate
from nanoocr.data.processing import process_sample
from nanoocr.train.memory import keep_freed_memory
from nanoocr.data.synthetic import GENERATORS
from nanoocr.data.tokenizer import Tokenizer
from nanoocr.model.vlm import NanoOCR
from common import cpu_model, training_step_seconds  # recipes/bench/common.py


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["nano", "small", "medium"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--mode", default="base")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    keep_freed_memory()  # what the recipe does on CPU

    records = list(GENERATORS["text_page"](args.batch, 0))
    tok = Tokenizer.train_from_iterator([m["content"] for r in records for m in r["messages"]], vocab_size=512)
    batch = collate([process_sample(r, tok, mode=args.mode, max_seq_len=1024) for r in records], tok.pad_id)

    peak = measure_matmul_peak()
    rows = []
    for name in args.presets:
        cfg = presets.build_config(name, gpt={"vocab_size": tok.vocab_size}, image_token_id=tok.image_id)
        model = ComposerNanoOCR(NanoOCR(cfg))
        flops = model.flops_per_batch(batch)
        t = training_step_seconds(model, batch, args.steps)
        n_params = sum(p.numel() for p in model.parameters())
        rows.append((name, n_params, t, args.batch / t, flops / t, flops / t / peak))
        del model

    print(f"\n`python recipes/bench/mfu.py {' '.join(sys.argv[1:])}` — {datetime.date.today()}, {cpu_model()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), fp32, "
          f"{args.mode} mode, batch {args.batch}, sequence {batch['ids'].shape[1]}, median of {args.steps} steps\n")
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s\n")
    print("| preset | params | s/step | samples/s | model GFLOP/s | MFU |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, t, sps, fps, mfu in rows:
        print(f"| {name} | {n / 1e6:.1f}M | {t:.2f} | {sps:.2f} | {fps / 1e9:.1f} | {100 * mfu:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
