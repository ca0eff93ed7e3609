"""Can the encoder learn glyphs at all? The DeepEncoder alone, trained by a character-level CTC head, no GPT.

    python recipes/bench/glyph_probe.py --source sam --steps 1500
    python recipes/bench/glyph_probe.py --source tokens --steps 1500
    python recipes/bench/glyph_probe.py --source sam --sam-global --save runs/probe_sam/vision.safetensors
    python recipes/bench/glyph_probe.py --source tokens --sam-global --init runs/probe_sam/vision.safetensors

A fresh encoder of --preset (SAM, compressor, CLIP, projector; or one from --init) reads the images of a
reading-curriculum generator (nanoocr/data/reading.py; default reading_nonce_words: 1-3 random letter strings, so
nothing but the image tells the letters) through `NanoOCR.encode_images(..., with_ctc=True)`, the input of the model's CTC head
(`model.vlm.ctc_source`): "tokens" = the projected 64 px vision tokens, row-major; "sam" = SAM's 16 px neck grid,
max over each column. A CTCHead over the answer's characters (not the BPE: what the encoder can see) is trained
with AdamW (cosine schedule with warmup, clip 1.0) on --train images rendered once; every --every steps the
held-out images (other seed) are scored: CTC per character and the greedy decode's CER. Prints a Markdown table
headed by the command, date and CPU model.

Why: with the GPT in the loop nothing told whether the encoder cannot learn glyphs or is not asked to (BENCHMARKS.md
"It reads?"). This takes the GPT out.
"""
from __future__ import annotations

import argparse
import datetime
import math
import random
import shlex
import string
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from common import cpu_model  # recipes/bench/common.py
from nanoocr.data import reading
from nanoocr.data.images import image_views, open_image
from nanoocr.eval.metrics import cer
from nanoocr.model.ctc import CTCHead
from nanoocr.model.pretrained import load_deepseek_vision
from nanoocr.model.presets import build_config
from nanoocr.model.vlm import CTC_SOURCES, NanoOCR
from nanoocr.train.export import released_name

ALPHABET = string.ascii_letters + string.digits + " ,."  # every character the curriculum's single lines use


def render(gen: str, n: int, seed: int, mode: str) -> tuple[torch.Tensor, list[str]]:
    """n samples of generator `gen`: their uint8 global views and answers."""
    views, texts = [], []
    for i in range(n):
        rec, info = reading.sample(gen, seed, i)
        text = "\n".join(info["lines"])
        bad = sorted(set(text) - set(ALPHABET))
        if bad:
            raise ValueError(f"{rec['id']}: characters {bad} outside the probe's alphabet (single lines of "
                             f"letters, digits, space, comma, full stop); use a word- or line-level generator")
        views.append(image_views(open_image(rec["image"]), mode, normalize=False).global_view)
        texts.append(text)
    return torch.stack(views), texts


def targets(texts: list[str]) -> list[torch.Tensor]:
    return [torch.tensor([ALPHABET.index(c) for c in t], dtype=torch.long) for t in texts]


def greedy(head: CTCHead, feats: torch.Tensor) -> list[str]:
    """Best path: argmax per frame, repeats merged, blanks dropped."""
    out = []
    for seq in head(feats).argmax(-1).tolist():
        chars, prev = [], None
        for t in seq:
            if t != prev and t != head.blank:
                chars.append(ALPHABET[t])
            prev = t
        out.append("".join(chars))
    return out


def save_vision(model: NanoOCR, path: str) -> None:
    """The encoder's tensors (SAM with its compressor, CLIP, projector, newline and separator) under the released
    checkpoint's names, which `nanoocr.model.pretrained.load_deepseek_vision` reads back."""
    vision = {released_name(k): t.detach().contiguous() for k, t in model.state_dict().items()
              if not k.startswith("gpt.")}  # released_name refuses any key the released layout lacks
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(vision, path)
    print(f"wrote {len(vision)} vision tensors to {path}", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", choices=CTC_SOURCES, default="sam")
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--gen", default="reading_nonce_words", help="a reading generator with single-line answers")
    ap.add_argument("--mode", default="tiny")
    ap.add_argument("--sam-global", type=int, nargs="*", default=None, metavar="I",
                    help="SAM's global-attention blocks (default: the preset's; none given: windows only, as "
                         "yamls/reads_sam_ctc.yaml)")
    ap.add_argument("--train", type=int, default=4000, help="training images (rendered once, drawn with replacement)")
    ap.add_argument("--val", type=int, default=64, help="held-out images (seed 9)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--upsample", type=int, default=0, help="frames per position (0: 2 for sam, 4 for tokens)")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", help="start the encoder from this vision checkpoint (a --save of an earlier probe, or "
                                   "the released DeepSeek-OCR's) instead of fresh")
    ap.add_argument("--save", help="write the trained vision encoder here (.safetensors, the released DeepSeek-OCR "
                                   "names: a training YAML starts from it with model.pretrained.deepseek)")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    sam = {} if args.sam_global is None else {"global_attn_indexes": tuple(args.sam_global)}
    cfg = build_config(args.preset, ctc_source=args.source, sam=sam)
    model = NanoOCR(cfg).train()
    if args.init:
        print(f"init: {load_deepseek_vision(model, args.init)}", file=sys.stderr)
    up = args.upsample or (2 if args.source == "sam" else 4)
    head = CTCHead(cfg.sam.neck_dim if args.source == "sam" else cfg.gpt.n_embd, len(ALPHABET), up)
    t0 = time.time()
    x, y = render(args.gen, args.train, 0, args.mode)
    xv, yv = render(args.gen, args.val, 9, args.mode)
    render_s = time.time() - t0
    tv = targets(yv)
    params = [p for n, p in model.named_parameters() if not n.startswith(("gpt.", "image_newline", "view_separator"))]
    params += list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    total = max(1, args.steps)  # --steps 0: only the held-out score of the starting encoder
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup)
                                              * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, total) / total))))

    def features(pixels):
        return model.encode_images(pixels, with_ctc=True)[1]

    rng, rows, window, t0 = random.Random(args.seed), [], [], time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                f = features(xv)
                val = float(head.loss(f, tv))
                hyp = greedy(head, f)
            model.train()
            score = sum(cer(h, r) * len(r) for h, r in zip(hyp, yv)) / sum(len(r) for r in yv)
            train = sum(window) / len(window) if window else float("nan")
            rows.append((step, time.time() - t0, train, val, score, f"{hyp[0]!r} for {yv[0]!r}"))
            print(f"step {step}: train CTC {train:.3f}, held-out CTC {val:.3f}, CER {score:.3f}", file=sys.stderr)
            window = []
        if step == args.steps:
            break
        idx = [rng.randrange(len(y)) for _ in range(args.batch)]
        loss = head.loss(features(x[idx]), targets([y[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        window.append(float(loss))
    if args.save:
        save_vision(model, args.save)
    print(f"`python recipes/bench/glyph_probe.py {shlex.join(argv if argv is not None else sys.argv[1:])}` — "
          f"{datetime.date.today()}, {cpu_model()}, {torch.get_num_threads()} threads; {args.train} {args.gen} "
          f"images for training, {args.val} held out (rendered in {render_s:.0f} s), batch {args.batch}, "
          f"lr {args.lr}, source {args.source}, {up} frames per position, encoder "
          f"{'from ' + args.init if args.init else 'fresh'}\n")
    print("| step | seconds | train CTC per char (mean since the last row) | held-out CTC per char | held-out CER | "
          "first held-out image |")
    print("|---:|---:|---:|---:|---:|---|")
    for step, secs, train, val, score, example in rows:
        print(f"| {step} | {secs:.0f} | {train:.3f} | {val:.3f} | {score:.3f} | {example} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
