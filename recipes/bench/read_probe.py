"""Does the whole model read once its GPT can copy? A text copy stage, then reading rendered words, encoder trained.

    python recipes/bench/read_probe.py --copy-steps 1500 --steps 1500
    python recipes/bench/read_probe.py --copy-steps 0 --steps 1500          # the same, the GPT from scratch
    python recipes/bench/read_probe.py --crop --ctc 1.0 --copy-steps 0 --steps 1200   # text-line crops + CTC head
    python recipes/bench/read_probe.py --cells --ctc 1.0 --enc-lr 2e-3 --copy-steps 0 --steps 1500

A fresh `nano` model (SAM windows only, as yamls/reads_sam_ctc.yaml) with a character vocabulary (the answer's
characters, not a BPE: what the image shows) is trained in two phases, AdamW (warmup 50, clip 1.0):
1. copy (--copy-steps, text only, no image): a line of 64 random characters (letter strings and spaces), the
   prompt's end, the line again, the loss the second copy's: the copy a pretrained language model can already do
   and a fresh GPT learns slowly (recipes/bench/decoder_probe.py; BENCHMARKS.md says which copy layout forms fastest);
2. read (--steps): rendered `reading_nonce_words` images (1-3 random letter strings at 32-64 px, new ones every
   step: only the image tells the letters) through the whole model, every part trainable (the encoder at
   --enc-lr), the loss the answer's.
`--crop`: the same images as text-line crops (reading_crop_nonce_words, reading_crop_unseen_words: the text starts
at the left edge, as in a line cut from a page), so the GPT need not learn to find where the text starts. `--ctc W`:
a CTC reading head on the vision token columns (model.vlm.ctc_source: columns) adds W x its loss in the read phase: a
glyph signal for the encoder that does not wait for the GPT. `--big`: one word per image at an em of 80-120 px,
cropped (reading_big_*: about one letter per vision token, proportional fonts). `--cells`: one word per image,
each letter centred in its own 64 px cell: one letter per token at fixed token columns (reading_cells_*).
Every --every steps, held-out images are read by greedy decoding and scored (CER): 64 `reading_nonce_words` of
another seed, and the word-level samples among the first --unseen `reading_unseen_words` (real held-out words, train fonts).

Why: a fresh nano GPT does not learn to read even perfect vision tokens in 800 steps; one whose copy has formed on text
reads them sooner, though not reliably (decoder_probe.py, BENCHMARKS.md "Can the GPT read at all?"). This asks the same
with pixels.
"""
from __future__ import annotations

import argparse
import datetime
import random
import shlex
import string
import sys
import time

import torch

from common import cpu_model  # recipes/bench/common.py
from nanoocr.data import reading
from nanoocr.data.images import image_views, open_image
from nanoocr.eval.metrics import cer
from nanoocr.model.presets import build_config
from nanoocr.model.tokens import layout_tokens
from nanoocr.model.vlm import NanoOCR, param_part

GRID = 8  # tiny view: 8 x 8 tokens
N_VISION = layout_tokens(GRID, (1, 1), 0)  # 73
ALPHABET = string.ascii_letters + string.digits + " ,."
SEP, EOS = len(ALPHABET) + 1, len(ALPHABET) + 2  # the characters are 1..len(ALPHABET)
VOCAB = len(ALPHABET) + 4  # + the image token, the last id (the preset's default)
IMAGE = VOCAB - 1


# images -> (training generator, held-out words, held-out fonts): nanoocr.data.reading's splits
LAYOUTS = {"canvas": ("reading_nonce_words", "reading_unseen_words", "reading_unseen_fonts"),
           "crop": ("reading_crop_nonce_words", "reading_crop_unseen_words", "reading_crop_unseen_fonts"),
           "big": ("reading_big_nonce", "reading_big_unseen_words", "reading_big_unseen_fonts"),
           "cells": ("reading_cells_nonce", "reading_cells_unseen_words", "reading_cells_unseen_fonts")}


def encode(text: str) -> list[int]:
    return [ALPHABET.index(c) + 1 for c in text]


def decode(ids: list[int]) -> str:
    return "".join(ALPHABET[t - 1] for t in ids if 1 <= t <= len(ALPHABET))


def sequences(prefixes: list[list[int]], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """prefix (73 ids) + SEP + the text + EOS per row, right-padded with EOS; targets: the text and EOS."""
    T = N_VISION + 1 + max(len(t) for t in texts) + 1
    ids = torch.full((len(texts), T), EOS, dtype=torch.long)
    targets = torch.full((len(texts), T), -1, dtype=torch.long)
    for b, (prefix, text) in enumerate(zip(prefixes, texts)):
        answer = encode(text) + [EOS]
        ids[b, :N_VISION + 1 + len(answer)] = torch.tensor(prefix + [SEP] + answer)
        targets[b, N_VISION:N_VISION + len(answer)] = torch.tensor(answer)
    return ids, targets


def copy_batch(rng: random.Random, n: int, length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-only rows: a line of random letter strings (`length` characters), the prompt's end, the line again;
    the targets are the second copy and the end token."""
    rows = []
    for _ in range(n):
        text = ""
        while len(text) < length:
            text += "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 9))) + " "
        rows.append(encode(text[:length].strip()))
    T = 2 * max(len(r) for r in rows) + 2
    ids = torch.full((n, T), EOS, dtype=torch.long)
    targets = torch.full((n, T), -1, dtype=torch.long)
    for b, line in enumerate(rows):
        seq = line + [SEP] + line + [EOS]
        ids[b, :len(seq)] = torch.tensor(seq)
        targets[b, len(line):len(seq) - 1] = torch.tensor(seq[len(line) + 1:])
    return ids, targets


def render(gen: str, seed: int, indices, mode: str = "tiny") -> tuple[torch.Tensor, list[str]]:
    views, texts = [], []
    for i in indices:
        rec, info = reading.sample(gen, seed, i)
        views.append(image_views(open_image(rec["image"]), mode, normalize=False).global_view)
        texts.append("\n".join(info["lines"]))
    return torch.stack(views), texts


@torch.no_grad()
def read(model: NanoOCR, views: torch.Tensor, max_len: int = 32) -> list[str]:
    """Greedy decoding: the images encoded once, the text prefix recomputed each step (the probe is small)."""
    n = views.shape[0]
    vision = model.encode_images(views)
    ids = torch.cat([torch.full((n, N_VISION), IMAGE), torch.full((n, 1), SEP)], 1)
    out, done = [[] for _ in range(n)], [False] * n
    for _ in range(max_len):
        nxt = model.gpt.trunk(model.embed(ids, vision), ids=ids)[:, -1].argmax(-1)
        for b, t in enumerate(nxt.tolist()):
            if not done[b]:
                done[b] = not 1 <= t <= len(ALPHABET)
                if not done[b]:
                    out[b].append(t)
        ids = torch.cat([ids, nxt[:, None]], 1)
        if all(done):
            break
    return [decode(o) for o in out]


def score(model, views, refs) -> tuple[float, str]:
    model.eval()
    hyp = read(model, views)
    model.train()
    return sum(cer(h, r) * len(r) for h, r in zip(hyp, refs)) / sum(len(r) for r in refs), f"{hyp[0]!r} for {refs[0]!r}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copy-steps", type=int, default=1500)
    ap.add_argument("--copy-until", type=float, default=0.0,
                    help="end the copy phase early once the mean copy loss of the last 50 steps is below this")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="the GPT's (and the copy phase's)")
    ap.add_argument("--enc-lr", type=float, default=1e-3, help="SAM, compressor, CLIP, projector, newline/separator")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--val", type=int, default=64)
    ap.add_argument("--unseen", type=int, default=160, help="reading_unseen_words samples to take the words of")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    layout = ap.add_mutually_exclusive_group()  # which images (LAYOUTS); none: words on a canvas
    layout.add_argument("--crop", action="store_true",
                    help="text-line crops (reading_crop_nonce_words / reading_crop_unseen_words): the text starts at "
                         "the image's left edge instead of anywhere on a canvas")
    layout.add_argument("--big", action="store_true",
                    help="one big word per image, cropped (reading_big_nonce / reading_big_unseen_words / "
                         "reading_big_unseen_fonts: em 80-120 px, about one letter per vision token)")
    layout.add_argument("--cells", action="store_true",
                    help="one word per image, a letter per 64 px cell: one letter per vision token at fixed columns "
                         "(reading_cells_nonce / reading_cells_unseen_words / reading_cells_unseen_fonts)")
    ap.add_argument("--ctc", type=float, default=0.0,
                    help="weight of a CTC reading head on the vision token columns (model.vlm.ctc_source: columns, "
                         "8 frames per column) added to the loss in the read phase; 0 = no head")
    args = ap.parse_args(argv)
    train_gen, unseen_gen, fonts_gen = LAYOUTS["big" if args.big else "cells" if args.cells else
                                               "crop" if args.crop else "canvas"]
    torch.manual_seed(args.seed)
    ctc = dict(ctc_source="columns", ctc_upsample=8) if args.ctc else {}
    model = NanoOCR(build_config("nano", sam={"global_attn_indexes": ()}, gpt={"vocab_size": VOCAB}, **ctc)).train()
    assert model.config.image_token_id == IMAGE
    groups = {"gpt": [], "encoder": []}
    for name, p in model.named_parameters():
        groups["gpt" if param_part(name) == "gpt" else "encoder"].append(p)
    lrs = {"gpt": args.lr, "encoder": args.enc_lr}
    opt = torch.optim.AdamW([{"params": ps, "lr": lrs[g]} for g, ps in groups.items()], betas=(0.9, 0.95),
                            weight_decay=0.0)
    t0 = time.time()
    held_views, held_refs = render(train_gen, 9, range(args.val))
    held_out = {}  # the word-level samples among the first --unseen of each held-out split
    for gen in (unseen_gen, fonts_gen):
        held_out[gen] = render(gen, 1, [i for i in range(args.unseen)
                                        if reading.sample(gen, 1, i)[1]["level"] in ("word", "big", "cells")])
    render_s = time.time() - t0
    rng, rows, window, ctc_window, t0 = random.Random(args.seed), [], [], [], time.time()
    total, recent = args.copy_steps + args.steps, []
    step = -1
    while step < total:  # the copy phase may end early (--copy-until): total moves with it
        step += 1
        if step < args.copy_steps and len(recent) == 50 and sum(recent) / 50 < args.copy_until:
            print(f"copy loss {sum(recent) / 50:.3f} < {args.copy_until} at step {step}: reading from here",
                  file=sys.stderr)
            args.copy_steps, total = step, step + args.steps
        phase = "copy" if step < args.copy_steps else "read"
        if step % args.every == 0 or step == total:
            if phase == "read" or step == total:
                nonce, example = score(model, held_views, held_refs)
                words, _ = score(model, *held_out[unseen_gen])
                fonts, _ = score(model, *held_out[fonts_gen])
            else:
                nonce, words, fonts, example = float("nan"), float("nan"), float("nan"), ""
            train = sum(window) / len(window) if window else float("nan")
            ctc_mean = sum(ctc_window) / len(ctc_window) if ctc_window else float("nan")
            rows.append((step, time.time() - t0, phase, train, ctc_mean, nonce, words, fonts, example))
            print(f"step {step} ({phase}): loss {train:.3f}, CTC {ctc_mean:.3f}, CER nonce {nonce:.3f}, "
                  f"unseen words {words:.3f}, unseen fonts {fonts:.3f} {example}", file=sys.stderr, flush=True)
            window, ctc_window = [], []
        if step == total:
            break
        for g in opt.param_groups:  # warmup at the start of each phase
            g["lr"] = lrs["gpt" if g["params"] is groups["gpt"] else "encoder"] * min(
                1.0, (step - (0 if phase == "copy" else args.copy_steps) + 1) / args.warmup)
        if phase == "copy":
            ids, targets = copy_batch(rng, args.batch)
            loss = loss_total = model(ids, targets)
        else:
            base = args.seed * 10_000_000 + (step - args.copy_steps) * args.batch  # new images every step
            views, texts = render(train_gen, 0, range(base, base + args.batch))
            ids, targets = sequences([[IMAGE] * N_VISION] * args.batch, texts)
            if args.ctc:
                loss, ctc_loss = model(ids, targets, images=views,
                                       ctc_answers=[torch.tensor(encode(t)) for t in texts])
                ctc_window.append(float(ctc_loss))
                loss_total = loss + args.ctc * ctc_loss
            else:
                loss = loss_total = model(ids, targets, images=views)
        opt.zero_grad(set_to_none=True)
        loss_total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(float(loss))
        recent = (recent + [float(loss)])[-50:]
    print(f"`python recipes/bench/read_probe.py {shlex.join(argv if argv is not None else sys.argv[1:])}` — "
          f"{datetime.date.today()}, {cpu_model()}, {torch.get_num_threads()} threads, fp32; nano (SAM windows only), "
          f"character vocabulary, {train_gen}, "
          f"{f'CTC head on the token columns (weight {args.ctc}), ' if args.ctc else ''}"
          f"batch {args.batch}, GPT lr {args.lr}, encoder lr {args.enc_lr}; held out: "
          f"{len(held_refs)} nonce-word images, {len(held_out[unseen_gen][1])} word-level unseen-word images, "
          f"{len(held_out[fonts_gen][1])} word-level unseen-font images (rendered in {render_s:.0f} s)\n")
    print("| step | seconds | phase | GPT loss (mean since the last row) | CTC loss (same) | CER nonce words | "
          "CER unseen words | CER unseen fonts | first held-out image |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for step, secs, phase, train, ctc_mean, nonce, words, fonts, example in rows:
        print(f"| {step} | {secs:.0f} | {phase} | {train:.3f} | {ctc_mean:.3f} | {nonce:.3f} | {words:.3f} | "
              f"{fonts:.3f} | {example} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
