"""Training throughput and MFU on this machine, for the `nano`, `small` and `medium` presets, in fp32 and bf16.

    python recipes/bench/mfu.py [--presets nano small medium] [--precisions fp32 bf16] [--batch 4] [--steps 5]
                                [--mode base]

The process keeps freed memory for reuse (nanoocr.train.memory.keep_freed_memory), as the recipe does on CPU.

One run measures, side by side: the matmul peak of each precision on this device (best of repeated 2048³
matmuls in fp32 / bf16, nanoocr.train.callbacks.measure_matmul_peak, also what the recipe's SpeedMonitor uses
on CPU, in the precision the model runs in; read before each preset and at the end, the best kept), then for
each preset and precision the time of full training steps (forward + backward + AdamW, every layer trainable;
bf16 = the model's CPU autocast, `NanoOCR.autocast_dtype`, fp32 master weights) on a batch of real rendered
pages (base mode by default), the model FLOPs per step from ComposerNanoOCR.flops_per_batch (nanoocr.train.flops:
the number SpeedMonitor reports MFU from), samples/s, MFU = achieved FLOP/s ÷ that precision's peak, and the
bf16 ÷ fp32 throughput of each preset.
"""
import argparse
import datetime
import os
import sys

import torch

from nanoocr.model import presets
from nanoocr.model.precision import cpu_bf16_hardware
from nanoocr.train.callbacks import measure_matmul_peak
from nanoocr.train.composer_model import ComposerNanoOCR
from nanoocr.data.stream import collate
from nanoocr.data.processing import process_sample
from nanoocr.train.memory import keep_freed_memory
from nanoocr.data.synthetic import GENERATORS
from nanoocr.data.tokenizer import Tokenizer
from nanoocr.model.vlm import NanoOCR
from common import cpu_model, training_step_seconds  # recipes/bench/common.py


DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # NanoOCR.autocast_dtype of each precision (None = plain fp32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["nano", "small", "medium"])
    ap.add_argument("--precisions", nargs="+", choices=sorted(DTYPES), default=None,
                    help="default: fp32 and bf16 where the CPU has bf16 matmul instructions, fp32 alone where "
                         "bf16 is emulated (~1 GFLOP/s on an AVX2-only CPU: a nano step takes minutes, and "
                         "cpu_autocast: auto picks fp32 there)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--mode", default="base")
    args = ap.parse_args(argv)
    if args.precisions is None:
        args.precisions = ["fp32", "bf16"] if cpu_bf16_hardware()[0] else ["fp32"]
    torch.manual_seed(0)
    keep_freed_memory()  # what the recipe does on CPU

    records = list(GENERATORS["text_page"](args.batch, 0))
    tok = Tokenizer.train_from_iterator([m["content"] for r in records for m in r["messages"]], vocab_size=512)
    batch = collate([process_sample(r, tok, mode=args.mode, max_seq_len=1024) for r in records], tok.pad_id)

    # Each peak is measured before every preset and at the end, the best kept: on a shared machine a peak read
    # while something else runs would be low and the MFU above 100%; the best reading only errs the other way.
    peaks = {p: 0.0 for p in args.precisions}

    def measure_peaks():
        for p in peaks:
            peaks[p] = max(peaks[p], measure_matmul_peak(dtype=DTYPES[p] or torch.float32))

    timed, speed = [], {}
    for name in args.presets:
        measure_peaks()
        cfg = presets.build_config(name, gpt={"vocab_size": tok.vocab_size}, image_token_id=tok.image_id)
        model = ComposerNanoOCR(NanoOCR(cfg))
        flops = model.flops_per_batch(batch)
        n_params = sum(p.numel() for p in model.parameters())
        for precision in args.precisions:
            model.model.autocast_dtype = DTYPES[precision]  # the model applies it in its forward
            t = training_step_seconds(model, batch, args.steps)
            speed[name, precision] = args.batch / t
            timed.append((name, precision, n_params, t, flops))
        del model
    measure_peaks()
    rows = [(name, precision, n, t, args.batch / t, flops / t, flops / t / peaks[precision])
            for name, precision, n, t, flops in timed]

    _, bf16_hw = cpu_bf16_hardware()
    print(f"\n`python recipes/bench/mfu.py {' '.join(sys.argv[1:])}` — {datetime.date.today()}, {cpu_model()} "
          f"({bf16_hw}), {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{args.mode} mode, batch {args.batch}, sequence {batch['ids'].shape[1]}, median of {args.steps} steps, "
          "every layer trainable\n")
    for precision, peak in peaks.items():
        print(f"measured {precision} matmul peak: {peak / 1e9:.1f} GFLOP/s (best of {len(args.presets) + 1} readings)")
    print("\n| preset | precision | params | s/step | samples/s | model GFLOP/s | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, precision, n, t, sps, fps, mfu in rows:
        print(f"| {name} | {precision} | {n / 1e6:.1f}M | {t:.2f} | {sps:.2f} | {fps / 1e9:.1f} | {100 * mfu:.0f}% |")
    if {"fp32", "bf16"} <= set(args.precisions):
        print("\n| preset | bf16 ÷ fp32 throughput |\n|---|---:|")
        for name in args.presets:
            print(f"| {name} | {speed[name, 'bf16'] / speed[name, 'fp32']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
