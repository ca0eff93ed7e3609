"""Does torch.compile pay on this machine? Training steps eager vs compiled, as Composer compiles them.

    python recipes/bench/compile.py [--preset nano] [--batch 4] [--steps 6] [--mode base]
                                    [--precisions fp32 bf16] [--freeze sam clip] [--seq 512]

For each precision (fp32, or CPU bf16 autocast: NanoOCR.autocast_dtype) one fresh model runs eager, one
compiled the way Composer's Trainer applies `compile_config: {}` (trainer.py: `torch.compile(model)`, then
the model's forward replaced by the compiled one's dynamo context): forward + loss + backward + AdamW on
one batch of --batch synthetic `text_page` records (nanoocr.data.synthetic, --mode views, uint8 as the
loader ships them). --freeze turns off requires_grad of those top-level parts (Tier-1 freezes sam and
clip). Reports the first step (compilation included), the median of the --steps steps after it, and
compiled ÷ eager of the median. The two models start from the same weights; the first losses must agree.
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
from nanoocr.data.processing import process_sample
from nanoocr.data.stream import collate
from nanoocr.data.synthetic import GENERATORS
from nanoocr.data.tokenizer import Tokenizer
from nanoocr.model import presets
from nanoocr.model.vlm import NanoOCR
from nanoocr.train.composer_model import ComposerNanoOCR
from nanoocr.train.memory import keep_freed_memory


def run(cfg, batch, dtype, freeze, compiled: bool, steps: int) -> tuple[float, float, float]:
    """(first step s, median s of the next `steps`, first loss)"""
    torch.manual_seed(0)
    model = ComposerNanoOCR(NanoOCR(cfg)).train()
    model.model.autocast_dtype = dtype
    for name, p in model.model.named_parameters():
        if name.split(".")[0] in freeze:
            p.requires_grad_(False)
    if compiled:  # composer/trainer/trainer.py, compile_config
        c = torch.compile(model)
        model = c._orig_mod
        model.forward = c.dynamo_ctx(model.forward)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times, first_loss = [], None
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = model.loss(model(batch), batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        first_loss = float(loss) if first_loss is None else first_loss
    return times[0], statistics.median(times[1:]), first_loss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--mode", default="base")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--freeze", nargs="*", default=[], help="top-level parts to freeze (sam, clip, projector, gpt)")
    args = ap.parse_args(argv)
    keep_freed_memory()  # what the recipe does on CPU
    records = list(GENERATORS["text_page"](args.batch, 0))
    tok = Tokenizer.train_from_iterator([m["content"] for r in records for m in r["messages"]], vocab_size=512)
    batch = collate([process_sample(r, tok, mode=args.mode, max_seq_len=args.seq, normalize=False) for r in records],
                    tok.pad_id)
    cfg = presets.build_config(args.preset, gpt={"vocab_size": tok.vocab_size}, image_token_id=tok.image_id)

    rows = []
    for name in args.precisions:
        dtype = torch.bfloat16 if name == "bf16" else None
        eager = run(cfg, batch, dtype, set(args.freeze), False, args.steps)
        comp = run(cfg, batch, dtype, set(args.freeze), True, args.steps)
        assert abs(eager[2] - comp[2]) <= 2e-2 * abs(eager[2]), f"{name}: first losses differ: {eager[2]} vs {comp[2]}"
        rows.append((name, eager, comp))

    print(f"\n`python recipes/bench/compile.py {shlex.join(sys.argv[1:])}` — {datetime.date.today()}, {cpu_model()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), preset {args.preset}, "
          f"{args.mode} mode, batch {args.batch}, sequence {batch['ids'].shape[1]}, frozen: {args.freeze or 'none'}, "
          f"median of {args.steps} steps after the first\n")
    print("| precision | eager first s | eager s/step | compiled first s | compiled s/step | compiled ÷ eager |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, e, c in rows:
        print(f"| {name} | {e[0]:.1f} | {e[1]:.2f} | {c[0]:.1f} | {c[1]:.2f} | {c[1] / e[1]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
