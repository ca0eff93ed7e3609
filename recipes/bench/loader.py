"""Loader throughput on real page images: PDF pages -> MDS -> OCRStreamingDataset + collate + loader.

    python recipes/bench/loader.py [--pdfs /usr/share/doc] [--pages 50] [--modes base gundam]
                                   [--workers 2] [--batch-size 4] [--warmup-batches 4] [--samples 96]
                                   [--model-preset nano] [--model-steps 3]

Renders up to --pages pages of the PDFs under --pdfs at 144 dpi (nanoocr.data.pdf: pdftoppm + pdftotext)
into a temporary MDS dataset, trains a small BPE tokenizer on the page texts, then, per mode, iterates
the real `build_dataloader` (shuffled, --workers processes, --batch-size) and times --samples samples
after --warmup-batches batches (worker start-up, first shard open). The epoch is stretched with
`epoch_size` so the timed part never crosses an epoch boundary. A per-stage profile of one process
(decode, views, tokenize+expand) shows where a worker's time goes. The model's consumption, in the
same run: samples/s of full training steps (forward + backward + AdamW, fp32, all torch threads) of
the --model-preset model on one batch from that loader, so the two rates compare directly. Prints a
Markdown table with the command, machine, load average and date (the load matters on a shared machine).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import io
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from nanoocr.data.stream import build_dataloader
from nanoocr.data.images import image_views, open_image
from nanoocr.data.pdf import pdf_pages
from nanoocr.data.processing import process_sample
from nanoocr.data.tokenizer import Tokenizer
from common import cpu_model, training_step_seconds  # recipes/bench/common.py

COLUMNS = {"id": "str", "source": "str", "messages": "json", "image": "bytes"}
GOALS = {"base": 40.0, "gundam": 15.0}  # samples/s with 2 workers


def image_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as im:
        return im.size


def write_pages(pdfs: str, n_pages: int, out: Path) -> list[dict]:
    from streaming import MDSWriter

    records = []
    for rec in pdf_pages(pdfs, workers=2):
        if "error" in rec:
            print(f"  skipping {rec['id']}: {rec['error']}", file=sys.stderr)
            continue
        records.append(rec)
        if len(records) == n_pages:
            break
    assert records, f"no renderable PDF page under {pdfs}"
    with MDSWriter(out=str(out), columns=COLUMNS) as w:
        for r in records:
            w.write(r)
    return records


def profile(records: list[dict], tok: Tokenizer, mode: str, n: int = 8) -> dict[str, float]:
    """Median ms per stage in this process, single-threaded (as in a loader worker).

    Wall time, plus the CPU time of process_sample (`time.process_time`): on a shared machine the
    wall time includes waiting for a core, the CPU time is close to what an idle core would take."""
    times = {"decode": [], "views": [], "process_sample": [], "process_sample_cpu": []}
    for r in records[:n]:
        t0 = time.perf_counter()
        img = open_image(r["image"])
        t1 = time.perf_counter()
        image_views(img, mode)
        t2 = time.perf_counter()
        c2 = time.process_time()
        process_sample(r, tok, mode=mode, max_seq_len=8192)
        t3, c3 = time.perf_counter(), time.process_time()
        times["decode"].append(t1 - t0)
        times["views"].append(t2 - t1)
        times["process_sample"].append(t3 - t2)
        times["process_sample_cpu"].append(c3 - c2)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def measure(local: str, tok: Tokenizer, mode: str, workers: int, batch_size: int, warmup: int, samples: int):
    """(samples seen, seconds, the last batch)."""
    cfg = {"dataset": {"streams": {"pages": {"local": local}}, "mode": mode, "max_seq_len": 8192,
                       "epoch_size": (warmup + 1) * batch_size + samples, "shuffle_seed": 0},
           "num_workers": workers, "drop_last": True}
    loader = build_dataloader(cfg, tok, batch_size)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    seen, t0 = 0, time.perf_counter()
    while seen < samples:
        batch = next(it)
        seen += batch["ids"].shape[0]
    elapsed = time.perf_counter() - t0
    del it, loader
    gc.collect()
    return seen, elapsed, batch


def consumption(batch: dict, tok: Tokenizer, preset: str, steps: int) -> float:
    """Samples/s the --model-preset model trains on `batch` (median of `steps` steps after a warm-up)."""
    from nanoocr.train.composer_model import ComposerNanoOCR
    from nanoocr.model.presets import build_config
    from nanoocr.train.memory import keep_freed_memory
    from nanoocr.model.vlm import NanoOCR

    keep_freed_memory()  # as the recipe does on CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count())
    model = ComposerNanoOCR(NanoOCR(build_config(preset, gpt={"vocab_size": tok.vocab_size},
                                                 image_token_id=tok.image_id)))
    seconds = training_step_seconds(model, batch, steps)
    torch.set_num_threads(threads)
    return batch["ids"].shape[0] / seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pdfs", default="/usr/share/doc")
    p.add_argument("--pages", type=int, default=50)
    p.add_argument("--modes", nargs="+", default=["base", "gundam"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--warmup-batches", type=int, default=4)
    p.add_argument("--samples", type=int, default=96)
    p.add_argument("--model-preset", default="nano")
    p.add_argument("--model-steps", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the profile runs like a loader worker (torch gives workers 1 thread)

    from streaming.base.util import clean_stale_shared_memory
    clean_stale_shared_memory()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        records = write_pages(args.pdfs, args.pages, Path(tmp) / "mds")
        sizes = sorted({image_size(r["image"]) for r in records})
        print(f"rendered {len(records)} pages in {time.perf_counter() - t:.1f} s; sizes {sizes[:4]}"
              f"{' ...' if len(sizes) > 4 else ''}", file=sys.stderr)
        tok = Tokenizer.train_from_iterator([r["messages"][1]["content"] for r in records], vocab_size=2048)

        rows, profiles = [], {}
        for mode in args.modes:
            profiles[mode] = profile(records, tok, mode)
            seen, elapsed, batch = measure(str(Path(tmp) / "mds"), tok, mode, args.workers, args.batch_size,
                                           args.warmup_batches, args.samples)
            rows.append((mode, seen, elapsed, consumption(batch, tok, args.model_preset, args.model_steps)))
        clean_stale_shared_memory()

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nCommand: `{' '.join(shlex.quote(a) for a in [sys.executable.split('/')[-1], *sys.argv])}`  ")
    print(f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), torch {torch.__version__}, load average {load}  ")
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  ")
    print(f"Data: {len(records)} PDF pages at 144 dpi, batch {args.batch_size}, {args.workers} workers, "
          f"{args.warmup_batches} warm-up batches\n")
    print("| mode | samples timed | seconds | samples/s | goal | decode ms | views ms | process_sample ms "
          f"| process_sample CPU ms | idle bound samples/s | {args.model_preset} trains samples/s | loader / model |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, seen, elapsed, model_sps in rows:
        pr = profiles[mode]
        goal = GOALS.get(mode)
        bound = args.workers * 1000 / pr["process_sample_cpu"] if args.workers else 1000 / pr["process_sample_cpu"]
        print(f"| {mode} | {seen} | {elapsed:.1f} | {seen / elapsed:.1f} | {goal if goal else '-'} | "
              f"{pr['decode']:.1f} | {pr['views']:.1f} | {pr['process_sample']:.1f} | "
              f"{pr['process_sample_cpu']:.1f} | {bound:.1f} | {model_sps:.2f} | {seen / elapsed / model_sps:.1f}x |")
    print("\ndecode/views/process_sample: median wall ms per page in one process with 1 torch thread "
          "(process_sample includes its own decode and views); CPU ms: its CPU time; idle bound: "
          "max(workers, 1) x 1000 / CPU ms, what the workers could reach on otherwise idle cores "
          "(ignores the main process and the transfer of the batches). trains samples/s: full training "
          f"steps of the {args.model_preset} preset (all layers trainable, fp32, {os.cpu_count()} threads) on the "
          "last loader batch; loader / model > 1 means the loader keeps the model fed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
