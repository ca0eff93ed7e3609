"""Memory and time of the training loss head: chunked (nanoocr/model/loss.py) vs plain (B, T, V) logits.

    python recipes/bench/logits.py [--seq 4096] [--vocab 65537] [--batch 1] [--preset nano] [--steps 2]

Two measurements per loss_impl, in this one process, with torch.profiler's CPU allocation totals
(profile_memory=True: the peak of the tensor bytes allocated and not yet freed; allocator-independent):
- head: the loss head alone, final hidden states h (B, T, C) (a leaf that requires grad) -> norm ->
  loss -> backward, for the --preset's n_embd and lm_head (V x C): what the logits cost by themselves;
  the plain path's figure is the (B, T, V) fp32 logits and what autograd keeps with them;
- step: one full training step (forward, loss, backward, AdamW) of the --preset's NanoOCR on a text-only
  batch of B x T tokens (the logits do not depend on the images), gradients and AdamW state allocated
  before (so the peak is activations + logits + transients), plus the median s/step of --steps steps.
The goal: chunked head peak <= 1/4 of the plain path's logits memory (B * T * V * 4 bytes).
Prints a Markdown table headed by the command, date, CPU model and thread count.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time

import torch

from common import cpu_model  # recipes/bench/common.py
from memory import allocation_peak, profiled_step  # recipes/bench/memory.py
from nanoocr.model import presets
from nanoocr.model.gpt import norm
from nanoocr.model.vlm import NanoOCR
from nanoocr.train.composer_model import ComposerNanoOCR

MiB = 2 ** 20


def model_width(args) -> int:
    return presets.build_config(args.preset).gpt.n_embd


def build(args, impl: str) -> ComposerNanoOCR:
    torch.manual_seed(0)
    cfg = presets.build_config(args.preset, gpt={"vocab_size": args.vocab, "sequence_len": args.seq,
                                                 "loss_impl": impl}, image_token_id=args.vocab - 1)
    return ComposerNanoOCR(NanoOCR(cfg)).train()


def head_peak(model: ComposerNanoOCR, batch: dict) -> int:
    gpt = model.model.gpt
    h = torch.randn(*batch["ids"].shape, gpt.config.n_embd, requires_grad=True)

    def run():  # the trunk's tail as GPT.trunk runs it: final norm -> loss head
        x = norm(h)
        if gpt.config.loss_impl == "chunked":
            from nanoocr.model.loss import chunked_softcap_cross_entropy
            out = chunked_softcap_cross_entropy(x, gpt.lm_head.weight, batch["targets"], gpt.config.softcap)
        else:
            logits = gpt.lm_head(x)[..., :gpt.config.vocab_size].float()
            logits = gpt.config.softcap * torch.tanh(logits / gpt.config.softcap)
            out = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-1)
        out.backward()
    return allocation_peak(run)


def step_figures(model: ComposerNanoOCR, batch: dict, steps: int) -> tuple[int, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # AdamW state now: the peak below is what a step adds
    opt.zero_grad(set_to_none=False)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.loss(model(batch), batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        times.append(time.perf_counter() - t0)
    return profiled_step(model, opt, batch, batch), statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=65537)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)
    assert presets.build_config(args.preset, gpt={"vocab_size": args.vocab}).gpt.pad_vocab_size_to == 1, \
        "the head measurement uses lm_head.weight whole: a preset without vocabulary padding"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab - 1, (args.batch, args.seq), generator=g)
    batch = {"ids": ids, "targets": torch.roll(ids, -1, 1)}

    rows = {}
    for impl in ("plain", "chunked"):
        model = build(args, impl)
        rows[impl] = (head_peak(model, batch), *step_figures(model, batch, args.steps))
        del model
    logits = args.batch * args.seq * args.vocab * 4

    print(f"\n`python recipes/bench/logits.py {shlex.join(sys.argv[1:])}` — {datetime.date.today()}, {cpu_model()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), fp32, "
          f"preset {args.preset}, B={args.batch}, T={args.seq}, V={args.vocab}\n")
    print(f"(B, T, V) fp32 logits: {logits / MiB:.0f} MiB\n")
    print("| loss_impl | head peak MiB | head peak ÷ logits | step peak over baseline MiB | s/step |")
    print("|---|---:|---:|---:|---:|")
    for impl, (head, step, t) in rows.items():
        print(f"| {impl} | {head / MiB:.0f} | {head / logits:.2f} | {step / MiB:.0f} | {t:.2f} |")
    grads = (args.vocab * model_width(args) + args.batch * args.seq * model_width(args)) * 4  # dL/dW + dL/dh
    print(f"\nchunked head peak ÷ (B, T, V) fp32 logits: {rows['chunked'][0] / logits:.3f} (goal <= 0.25); "
          f"without the dL/dW + dL/dh every path allocates ({grads / MiB:.0f} MiB): "
          f"{(rows['chunked'][0] - grads) / logits:.3f}; chunked ÷ plain head peak: "
          f"{rows['chunked'][0] / rows['plain'][0]:.3f}; step peak chunked ÷ plain: "
          f"{rows['chunked'][1] / rows['plain'][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
