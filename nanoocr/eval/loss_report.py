"""Health report of a training run's loss curve, from its `metrics.jsonl`.

    python -m nanoocr.loss_report runs/tier2/metrics.jsonl [--warmup 20] [--ema 0.9] [--segments 10] [--json OUT]

Checks what a healthy run looks like, with the numbers that back each verdict:
- the EMA of the train loss (the same EMA as loss_curve.png, seeded with the first loss) falls steadily:
  after warmup the run is cut into `segments` equal spans and the EMA at the end of each must be lower
  than at the end of the one before;
- no spike: after warmup no batch's loss exceeds 1.5x the EMA of the batches before it;
- the validation loss (metrics/eval/LanguageCrossEntropy) falls: every eval is lower than the one before.
Exit status 0 when all hold, 1 otherwise (so scripts and CI can gate on it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRAIN_KEY = "loss/train/total"
EVAL_KEY = "metrics/eval/LanguageCrossEntropy"


def read_series(path: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, eval) lists of (step, value) from a metrics.jsonl; a resumed run's repeated steps keep the last."""
    train, evals = {}, {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
            if TRAIN_KEY in row:
                train[int(row["step"])] = float(row[TRAIN_KEY])
            if EVAL_KEY in row:
                evals[int(row["step"])] = float(row[EVAL_KEY])
    return sorted(train.items()), sorted(evals.items())


def ema_series(values, beta: float = 0.9) -> list[float]:
    """The exponential moving average after each value, seeded with the first one (so it needs no bias
    correction): e[0] = v[0], e[i] = beta * e[i-1] + (1 - beta) * v[i]. The one smoothing of a loss curve,
    drawn by train/callbacks.py's LossCurve and judged here, so the plot and the report show the same line."""
    out: list[float] = []
    for v in values:
        out.append(v if not out else beta * out[-1] + (1 - beta) * v)
    return out


def report(train: list[tuple[int, float]], evals: list[tuple[int, float]], warmup: int = 0,
           ema: float = 0.9, segments: int = 10, spike: float = 1.5) -> dict:
    if len(train) < 2:
        raise ValueError(f"need at least 2 train losses, got {len(train)}")
    steps, losses = zip(*train)
    smooth = list(zip(steps, ema_series(losses, ema)))
    worst = (0.0, None)
    for (step, loss), (_, before) in zip(train[1:], smooth):  # each loss against the EMA of the batches before it
        if step >= warmup and loss / before > worst[0]:
            worst = (loss / before, step)
    after = [(s, v) for s, v in smooth if s >= warmup]
    if len(after) < segments:
        raise ValueError(f"only {len(after)} train losses after warmup {warmup}; need >= {segments} segments")
    ends = [after[round(len(after) * (i + 1) / segments) - 1] for i in range(segments)]
    ema_points = [after[0]] + ends
    ema_falls = all(b[1] < a[1] for a, b in zip(ema_points, ema_points[1:]))
    eval_falls = len(evals) >= 2 and all(b[1] < a[1] for a, b in zip(evals, evals[1:]))
    return {
        "train_batches": len(train),
        "first_loss": train[0][1],
        "last_loss": train[-1][1],
        "ema_points": [[s, round(v, 4)] for s, v in ema_points],
        "ema_falls_steadily": ema_falls,
        "max_loss_over_ema": round(worst[0], 4),
        "max_loss_over_ema_step": worst[1],
        "no_spike": worst[0] <= spike,
        "eval": [[s, round(v, 4)] for s, v in evals],
        "eval_falls": eval_falls,
        "healthy": ema_falls and worst[0] <= spike and eval_falls,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", help="a run's metrics.jsonl")
    ap.add_argument("--warmup", type=int, default=0, help="batches of lr warmup, excluded from the checks")
    ap.add_argument("--ema", type=float, default=0.9)
    ap.add_argument("--segments", type=int, default=10)
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args(argv)
    train, evals = read_series(args.metrics)
    r = report(train, evals, warmup=args.warmup, ema=args.ema, segments=args.segments)
    print(f"train loss: {r['first_loss']:.4f} -> {r['last_loss']:.4f} over {r['train_batches']} batches")
    print("EMA after warmup, at each segment end: " + ", ".join(f"{v:.3f}@{s}" for s, v in r["ema_points"]))
    print(f"EMA falls steadily: {r['ema_falls_steadily']}")
    print(f"max loss / EMA after warmup: {r['max_loss_over_ema']:.3f} (batch {r['max_loss_over_ema_step']}); "
          f"no spike > 1.5x: {r['no_spike']}")
    print("eval loss: " + (", ".join(f"{v:.3f}@{s}" for s, v in r["eval"]) or "none logged")
          + f"; falls: {r['eval_falls']}")
    print(f"healthy: {r['healthy']}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["healthy"] else 1


if __name__ == "__main__":
    sys.exit(main())
