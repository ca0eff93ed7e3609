"""Peak memory of a training step with and without activation checkpointing (Gundam and base mode).

    python recipes/bench/memory.py [--preset nano] [--batch 2] [--modes gundam base] [--steps 2]
                                   [--generator gundam10] [--eager-malloc] [--json OUT]

Each (mode, activation checkpointing off/on) runs in its own fresh subprocess (this script with
--child), so its RSS figures are that configuration's alone. The child builds the --preset model
(`presets.build_config(..., activation_checkpointing=...)`, NanoOCR in ComposerNanoOCR, fp32, train
mode) and AdamW, and one batch the way the loader makes it: --batch records of --generator
(nanoocr.data.synthetic; gundam10 = 2400x1600 / 1600x2400 pages, 6 Gundam crops each; the same pages in
every mode), `process_sample(r, tok, mode=mode, max_seq_len=2048, normalize=False)` (uint8 views, as
the loader ships them) and `nanoocr.data.stream.collate`. Before the baseline it allocates the gradients
(zeros, kept between steps: `zero_grad(set_to_none=False)`) and AdamW's state (one step with lr 0,
weights unchanged), so that the baseline already holds weights + gradients + optimizer state + batch
and what a step adds on top is activations (plus the logits and transient buffers). The baseline is
the current RSS after `malloc_trim(0)`; the peak RSS high-water mark is then reset (writing 5 to
/proc/self/clear_refs) and --steps training steps run (forward, loss, backward, AdamW step).

Columns: peak RSS = the child's own peak (`ru_maxrss`, max over setup and steps); RSS over baseline =
the steps' peak RSS - baseline (activation memory as the OS sees it: with glibc's default settings it
includes freed heap memory malloc keeps resident, which at these sizes is a large part of it, so it
understates what checkpointing saves; --eager-malloc runs the children with glibc settings under
which RSS follows the live memory); tensor peak over baseline = the peak of the CPU tensor bytes allocated
during one extra training step, from torch.profiler with profile_memory=True (allocator-independent:
activations, the logits, activation gradients, recomputation, optimizer temporaries); saved-for-backward
= the bytes of the distinct tensor storages (parameters and buffers excluded) autograd holds for
backward at the end of step 1's forward + loss, counted exactly with
`torch.autograd.graph.saved_tensors_hooks` (a checkpointed block saves only its inputs; what it
recomputes in backward is in the two peaks, not here); s/step = median wall time of the steps after
the first (the profiled step is not timed). Prints a Markdown table headed by the command, date, CPU
model and thread count; --json OUT writes the same numbers and more (per-step times, setup peak, the
raw sum of packed tensor sizes with duplicates).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from common import cpu_model  # recipes/bench/common.py

MiB = 2 ** 20
# glibc: every block >= 64 KiB gets its own mapping and the heap top is trimmed at once, so RSS follows
# the live memory (the default keeps freed heap resident and raises the mmap threshold as it goes).
EAGER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def rss_bytes() -> int:
    """Current resident set size (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the peak RSS (VmHWM, and so ru_maxrss) to the current RSS; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back to the OS: a lower, truer baseline
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------
# Child: one configuration


class SavedTensors:
    """Counts what autograd saves for backward while active: distinct storages, parameters and buffers
    (e.g. the rotary cos/sin table, whose slices attention saves) excluded."""

    def __init__(self, model):
        self.param_ptrs = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        self.storages: dict[int, int] = {}
        self.raw = 0  # sum of numel * element_size over every packed tensor (duplicates and views counted)
        self.packed = 0

    def pack(self, t):
        import torch

        self.packed += 1
        self.raw += t.numel() * t.element_size()
        if t.layout == torch.strided and not t.is_meta:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr and ptr not in self.param_ptrs:
                # ints only: keeping the tensor here would keep it alive. A saved storage stays alive
                # until backward, so its address cannot be reused by another storage meanwhile.
                self.storages[ptr] = st.nbytes()
        return t

    @staticmethod
    def unpack(t):
        return t

    @property
    def distinct(self) -> int:
        return sum(self.storages.values())


def allocation_peak(fn) -> int:
    """Peak bytes of CPU tensors allocated (and not freed before the peak) while fn() runs.

    torch.profiler with profile_memory=True reports every c10 CPU allocation with the running total of
    the bytes allocated (and not yet freed) since profiling started: its maximum is the peak tensor
    memory over what existed before, whatever malloc does with the freed memory."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation:
            peak = max(peak, e.extra_fields.total_allocated)
    assert peak > 0, "the profiler reported no CPU allocation"
    return peak


def profiled_step(model, opt, inputs, batch) -> int:
    """Peak bytes of CPU tensors allocated during one more training step (allocation_peak)."""
    def step():
        model.loss(model(inputs), batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    return allocation_peak(step)


def child(args) -> dict:
    import torch

    from nanoocr.model import presets
    from nanoocr.train.composer_model import ComposerNanoOCR
    from nanoocr.data.stream import collate
    from nanoocr.data.processing import process_sample
    from nanoocr.data.synthetic import GENERATORS
    from nanoocr.data.tokenizer import Tokenizer
    from nanoocr.model.vlm import NanoOCR

    torch.manual_seed(0)
    records = list(GENERATORS[args.generator](args.batch, 0))
    tok = Tokenizer.train_from_iterator([m["content"] for r in records for m in r["messages"]], vocab_size=512)
    batch = collate([process_sample(r, tok, mode=args.mode, max_seq_len=2048, normalize=False) for r in records],
                    tok.pad_id)
    inputs = {k: batch[k] for k in ("ids", "targets", "images", "crops", "tiles")}
    del records

    cfg = presets.build_config(args.preset, gpt={"vocab_size": tok.vocab_size}, image_token_id=tok.image_id,
                               activation_checkpointing=args.checkpointing)
    model = ComposerNanoOCR(NanoOCR(cfg))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = list(model.parameters())
    # Gradients and AdamW state now, so the baseline holds them: a step with lr 0 leaves the weights as
    # they are (decay and update are both scaled by lr) but creates exp_avg / exp_avg_sq.
    for p in params:
        p.grad = torch.zeros_like(p)
    for g in opt.param_groups:
        g["lr"] = 0.0
    opt.step()
    for g in opt.param_groups:
        g["lr"] = 1e-4
    opt.zero_grad(set_to_none=False)

    malloc_trim()
    setup_peak = maxrss_bytes()
    baseline = rss_bytes()
    reset_ok = reset_peak_rss()

    saved = SavedTensors(model)
    times = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        if step == 0:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                loss = model.loss(model(inputs), batch)
        else:
            loss = model.loss(model(inputs), batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        times.append(time.perf_counter() - t0)
        assert torch.isfinite(loss), f"loss {loss.item()} at step {step}"
    steps_peak = maxrss_bytes()  # since the reset when reset_ok, else the whole process's
    tensor_peak = profiled_step(model, opt, inputs, batch)  # after the RSS reading: the profiler's own memory stays out
    n_params = sum(p.numel() for p in params)
    return {
        "mode": args.mode, "activation_checkpointing": args.checkpointing, "preset": args.preset,
        "batch": args.batch, "generator": args.generator, "steps": args.steps,
        "seq_len": batch["ids"].shape[1], "images": list(batch["images"].shape),
        "crops": None if batch.get("crops") is None else list(batch["crops"].shape),
        "params": n_params, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "peak_rss_mib": max(setup_peak, steps_peak) / MiB, "setup_peak_rss_mib": setup_peak / MiB,
        "baseline_rss_mib": baseline / MiB, "steps_peak_rss_mib": steps_peak / MiB,
        "peak_reset": reset_ok, "rss_over_baseline_mib": (steps_peak - baseline) / MiB,
        "tensor_peak_over_baseline_mib": tensor_peak / MiB,
        "saved_for_backward_mib": saved.distinct / MiB, "saved_raw_mib": saved.raw / MiB,
        "saved_tensors_packed": saved.packed, "saved_storages": len(saved.storages),
        "step_s": times, "s_per_step": statistics.median(times[1:] or times), "loss": float(loss),
    }


# ---------------------------------------------------------------------------------------------
# Parent


def run_child(args, mode: str, checkpointing: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode, "--preset", args.preset,
           "--batch", str(args.batch), "--steps", str(args.steps), "--generator", args.generator]
    if checkpointing:
        cmd.append("--checkpointing")
    env = {**os.environ, **(EAGER_MALLOC if args.eager_malloc else {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {mode} checkpointing={checkpointing} failed with exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["gundam", "base"])
    ap.add_argument("--steps", type=int, default=2, help="training steps per configuration (>= 1)")
    ap.add_argument("--generator", default="gundam10", help="nanoocr.data.synthetic generator of the batch's pages")
    ap.add_argument("--eager-malloc", action="store_true",
                    help="run the children with " + " ".join(f"{k}={v}" for k, v in EAGER_MALLOC.items())
                    + " so that RSS follows live memory (steps get slower)")
    ap.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    assert args.steps >= 1, "--steps must be >= 1"
    if args.child:
        print(json.dumps(child(args)))
        return 0

    rows = []
    for mode in args.modes:
        for ckpt in (False, True):
            t = time.perf_counter()
            rows.append(run_child(args, mode, ckpt))
            print(f"  {mode} checkpointing={ckpt}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)

    r0 = rows[0]
    command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    date = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    shapes = {}
    for r in rows:
        crops = "" if r["crops"] is None else f", crops {tuple(r['crops'])}"
        shapes[r["mode"]] = f"{r['mode']}: images {tuple(r['images'])}{crops}, sequence {r['seq_len']}"
    shapes = "; ".join(shapes.values())
    print(f"\n`{command}` — {date}, {cpu_model()}, {os.cpu_count()} cores, load average {load}, "
          f"torch {r0['torch']} ({r0['torch_threads']} thread{'s' if r0['torch_threads'] > 1 else ''}), fp32, preset {args.preset} "
          f"({r0['params'] / 1e6:.1f}M params), batch {args.batch} of {args.generator} pages, "
          f"{args.steps} steps per configuration, each configuration in a fresh process"
          f"{', glibc malloc ' + ' '.join(f'{k}={v}' for k, v in EAGER_MALLOC.items()) if args.eager_malloc else ''}\n")
    print(f"batch: {shapes}\n")
    print("| mode | activation checkpointing | peak RSS MiB | baseline RSS MiB | RSS over baseline MiB "
          "| tensor peak over baseline MiB | saved-for-backward MiB | s/step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {'on' if r['activation_checkpointing'] else 'off'} | {r['peak_rss_mib']:.0f} | "
              f"{r['baseline_rss_mib']:.0f} | {r['rss_over_baseline_mib']:.0f} | "
              f"{r['tensor_peak_over_baseline_mib']:.0f} | {r['saved_for_backward_mib']:.1f} | "
              f"{r['s_per_step']:.2f} |")
    print("\nbaseline: RSS with weights, gradients, AdamW state and the batch allocated (after malloc_trim); "
          "RSS over baseline: peak RSS during the steps - baseline"
          f"{'' if args.eager_malloc else ' (with glibc defaults it includes freed heap memory malloc keeps resident, so it understates what checkpointing saves; see --eager-malloc)'}"
          "; tensor peak over baseline: peak of the "
          "CPU tensor bytes allocated during one extra step (torch.profiler, profile_memory=True); "
          "saved-for-backward: distinct storages (parameters and buffers excluded) autograd holds for "
          "backward after step 1's forward + loss "
          "(saved_tensors_hooks); s/step: median of the steps after the first.")
    if not all(r["peak_reset"] for r in rows):
        print("\nWARNING: /proc/self/clear_refs could not reset the peak RSS: 'RSS over baseline' is the "
              "process's peak since start - baseline, and may include setup peaks.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "date": date, "cpu": cpu_model(), "cores": os.cpu_count(),
                       "load_average": os.getloadavg(), "eager_malloc": args.eager_malloc, "rows": rows},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
