"""Can the GPT learn to read at all? The decoder alone, on vision tokens that carry the characters exactly.

    python recipes/bench/decoder_probe.py --steps 1000                      # 1-4 characters per token
    python recipes/bench/decoder_probe.py --steps 800 --chars-per-token 1
    python recipes/bench/decoder_probe.py --steps 2200 --chars-per-token 1 --text-steps 1500
    python recipes/bench/decoder_probe.py --steps 600 --chars-per-token 1 --place corner   # lines start at cell 0
    python recipes/bench/decoder_probe.py --steps 600 --chars-per-token 2 --min-chars-per-token 2 --place corner

No encoder, no pixels: each sample is one line of 1-3 random letter strings (as `reading_nonce_words`) laid on the
tiny view's 8 x 8 token grid at a random row and column, k characters per token (k drawn per sample from
--min-chars-per-token..--chars-per-token, as a 64 px token holds 1-4 characters of the curriculum's text).
A token's vector is pos[r, c] + sum_j slot[j] * char[c_j] (fixed random vectors, so a token holds its characters
in order and its place, exactly and linearly readable for k = 1), put through a trainable Linear (the model's
projector) into the GPT's embedding at the image positions, a learned newline vector after every row and a
separator at the end: the 73 vectors of one tiny view, in the model's order. Then a separator token, the answer, an
end token; the loss is the answer's. The GPT is the model's (nanoocr.model.gpt, `--layout`, nano's widths by
default), trained with AdamW (warmup 50, clip 1.0). Every --every steps 64 held-out lines (another seed) are read
by greedy decoding and scored (CER). `--place corner` starts every line in the grid's first cell, `--place row` in
the first cell of a random row (as text-line crops place it), instead of anywhere. `--text-steps N`: for the first
N steps the grid holds the characters' own token ids instead (a copy task in text: what a pretrained language model
can already do), then the vision tokens as above.

Why: the reading runs (BENCHMARKS.md "It reads?") showed features that differ between images, and a CTC head that
finds glyphs in them, but a GPT that never reads. This asks whether the GPT could, given perfect tokens.
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

import torch
import torch.nn as nn

from common import cpu_model  # recipes/bench/common.py
from nanoocr.eval.metrics import cer
from nanoocr.model.gpt import GPT, GPTConfig
from nanoocr.model.tokens import layout_tokens

GRID = 8  # the tiny view (512 px): 8 x 8 tokens of 64 px
CHARS = string.ascii_lowercase + " "
# token ids: 1..27 the characters, then the specials; 0 = an empty grid cell in the text phase
SEP, EOS, NEWLINE, IMAGE = 28, 29, 30, 31
VOCAB = 32
N_VISION = layout_tokens(GRID, (1, 1), 0)  # 8 x (8 + newline) + separator = 73


class Oracle:
    """Random lines and their exact token grids; `dim` = width of the oracle vectors."""

    def __init__(self, dim: int, max_k: int, seed: int = 1, place: str = "random", min_k: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.dim, self.max_k, self.place, self.min_k = dim, max_k, place, min_k
        self.pos = torch.randn(GRID, GRID, dim, generator=g)
        self.slot = torch.randn(max_k, dim, generator=g)
        self.char = torch.randn(len(CHARS), dim, generator=g)

    def sample(self, rng: random.Random) -> tuple[torch.Tensor, list[int], str]:
        """(grid (8, 8, dim), the grid as token ids in the model's order (73), the line)."""
        text = " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 9)))
                        for _ in range(rng.randint(1, 3)))
        k = rng.randint(self.min_k, self.max_k)
        text = text[:GRID * k].rstrip()  # one row holds 8 k characters
        row, col = rng.randrange(GRID), rng.randint(0, GRID - math.ceil(len(text) / k))
        if self.place == "corner":  # the line always starts at the grid's first cell
            row, col = 0, 0
        elif self.place == "row":  # at the start of a random row
            col = 0
        grid = self.pos.clone()
        ids = [0] * N_VISION
        for r in range(GRID):
            ids[r * (GRID + 1) + GRID] = NEWLINE
        ids[-1] = SEP
        for i, ch in enumerate(text):
            grid[row, col + i // k] += self.slot[i % k] * self.char[CHARS.index(ch)]
            ids[row * (GRID + 1) + col + i // k] = CHARS.index(ch) + 1  # the text phase's grid (k = 1)
        return grid / math.sqrt(self.dim), ids, text

    def batch(self, rng: random.Random, n: int):
        grids, cells, texts = zip(*[self.sample(rng) for _ in range(n)])
        T = N_VISION + 1 + max(len(t) for t in texts) + 1
        ids = torch.full((n, T), EOS, dtype=torch.long)
        targets = torch.full((n, T), -1, dtype=torch.long)
        text_ids = ids.clone()
        for b, (cell, t) in enumerate(zip(cells, texts)):
            answer = [CHARS.index(c) + 1 for c in t] + [EOS]
            ids[b, :N_VISION + 1 + len(answer)] = torch.tensor([IMAGE] * N_VISION + [SEP] + answer)
            text_ids[b, :N_VISION + 1 + len(answer)] = torch.tensor(cell + [SEP] + answer)
            targets[b, N_VISION:N_VISION + len(answer)] = torch.tensor(answer)
        return torch.stack(grids), ids, text_ids, targets, list(texts)


class Reader(nn.Module):
    """The oracle grid -> projector -> [grid rows + newlines, separator] in the GPT's image positions."""

    def __init__(self, gpt: GPT, dim: int):
        super().__init__()
        n_embd = gpt.config.n_embd
        self.gpt = gpt
        self.projector = nn.Linear(dim, n_embd)
        self.newline = nn.Parameter(torch.randn(n_embd) / math.sqrt(n_embd))
        self.separator = nn.Parameter(torch.randn(n_embd) / math.sqrt(n_embd))

    def embed(self, grids, ids):
        n, C = grids.shape[0], self.newline.shape[0]
        v = torch.cat([self.projector(grids), self.newline.expand(n, GRID, 1, C)], 2).flatten(1, 2)
        v = torch.cat([v, self.separator.expand(n, 1, C)], 1)
        x = self.gpt.embed(ids)
        return torch.cat([v, x[:, N_VISION:]], 1)

    def loss(self, grids, ids, targets):
        return self.gpt.trunk(self.embed(grids, ids), targets=targets, ids=ids)

    @torch.no_grad()
    def read(self, grids, max_len: int = 32) -> list[str]:
        """Greedy decoding (recomputes the prefix each step: the probe is small)."""
        n = grids.shape[0]
        ids = torch.cat([torch.full((n, N_VISION), IMAGE), torch.full((n, 1), SEP)], 1)
        done, out = [False] * n, [[] for _ in range(n)]
        for _ in range(max_len):
            nxt = self.gpt.trunk(self.embed(grids, ids), ids=ids)[:, -1].argmax(-1)
            for b, t in enumerate(nxt.tolist()):
                if not done[b]:
                    if 1 <= t <= len(CHARS):
                        out[b].append(CHARS[t - 1])
                    else:
                        done[b] = True
            ids = torch.cat([ids, nxt[:, None]], 1)
            if all(done):
                break
        return ["".join(o) for o in out]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--text-steps", type=int, default=0, help="first steps on the grid as token ids (copy task)")
    ap.add_argument("--chars-per-token", type=int, default=4, help="k is drawn per sample from 1..this")
    ap.add_argument("--min-chars-per-token", type=int, default=1, help="... or from this..--chars-per-token")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--layout", default="d20", choices=("d20", "2026"))
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--dim", type=int, default=128, help="width of the oracle vectors (the projector's input)")
    ap.add_argument("--val", type=int, default=64)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--place", default="random", choices=("random", "row", "corner"),
                    help="where a line starts: a random cell (default), a random row's first cell, the first cell")
    args = ap.parse_args(argv)
    if args.text_steps and args.chars_per_token != 1:
        ap.error("--text-steps needs --chars-per-token 1 (a grid cell holds one token id in the text phase)")
    torch.manual_seed(args.seed)
    gpt = GPT(GPTConfig(sequence_len=256, vocab_size=VOCAB, n_layer=args.n_layer, n_head=args.n_embd // 64,
                        n_kv_head=args.n_embd // 64, n_embd=args.n_embd, layout=args.layout))
    gpt.init_weights()
    model = Reader(gpt, args.dim).train()
    oracle = Oracle(args.dim, args.chars_per_token, place=args.place, min_k=args.min_chars_per_token)
    held = oracle.batch(random.Random(10_000 + args.seed), args.val)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    rng, rows, window, t0 = random.Random(args.seed), [], [], time.time()
    for step in range(args.steps + 1):
        phase = "text" if step < args.text_steps else "vision"
        if step % args.every == 0 or step == args.steps:
            model.eval()
            hyp = model.read(held[0])
            model.train()
            refs = held[4]
            score = sum(cer(h, r) * len(r) for h, r in zip(hyp, refs)) / sum(len(r) for r in refs)
            train = sum(window) / len(window) if window else float("nan")
            rows.append((step, time.time() - t0, phase, train, score, f"{hyp[0]!r} for {refs[0]!r}"))
            print(f"step {step} ({phase}): train loss {train:.3f}, held-out CER {score:.3f}", file=sys.stderr)
            window = []
        if step == args.steps:
            break
        grids, ids, text_ids, targets, _ = oracle.batch(rng, args.batch)
        loss = model.gpt(text_ids, targets) if phase == "text" else model.loss(grids, ids, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        window.append(float(loss))
    print(f"`python recipes/bench/decoder_probe.py {shlex.join(argv if argv is not None else sys.argv[1:])}` — "
          f"{datetime.date.today()}, {cpu_model()}, {torch.get_num_threads()} threads; GPT {args.layout} "
          f"{args.n_layer} x {args.n_embd}, batch {args.batch}, lr {args.lr}, "
          f"{args.min_chars_per_token}-{args.chars_per_token} characters per token, lines placed: {args.place}, "
          f"{args.text_steps} text steps first, {args.val} held-out lines\n")
    print("| step | seconds | phase | train loss (mean since the last row) | held-out CER | first held-out line |")
    print("|---:|---:|---|---:|---:|---|")
    for step, secs, phase, train, score, example in rows:
        print(f"| {step} | {secs:.0f} | {phase} | {train:.3f} | {score:.3f} | {example} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
