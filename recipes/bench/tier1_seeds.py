"""Tier-1 as `make train` runs it, over seeds and thread counts: is 10/10 robust, and with what margin?

    python recipes/bench/tier1_seeds.py [--seeds 17 1 2 3 4] [--threads 1 2] [--jobs 2] [--out runs/tier1_seeds]
        [--override KEY=VALUE ...]   (YAML overrides for every run, e.g. a shrunk max_duration)

Each (seed, threads) pair is one `python recipes/train.py yamls/tier1_overfit.yaml variables.seed=S` run with
OMP_NUM_THREADS=T (the seed sets the model's init and the data order), all reading the same data/overfit10.
`--jobs 2` runs two single-thread runs side by side (2 cores); runs with more threads always run alone.
Per run: exact match, the final train loss, the margin (the first batch whose loss is below 0.01, against the
run's 300), the highest vision/mean_cosine after batch 0, and the wall time. A Markdown table is printed and
written to OUT/table.md, the rows to OUT/rows.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def command(seed: int, out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "recipes/train.py", "yamls/tier1_overfit.yaml", f"variables.seed={seed}",
            f"run_name=tier1_seed{seed}", f"run_folder={out}", "progress_bar=false", *overrides]


def start(seed: int, threads: int, root: Path, overrides: list[str]):
    out = root / f"seed{seed}_threads{threads}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = open(out.with_suffix(".log"), "w")
    proc = subprocess.Popen(command(seed, out, overrides), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, out, time.time()


def result(seed: int, threads: int, out: Path, seconds: float, rc: int) -> dict:
    text = out.with_suffix(".log").read_text()
    found = re.findall(r"^exact_match: (\d+/\d+)$", text, re.M)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
    loss = {r["step"]: r["loss/train/total"] for r in rows if "loss/train/total" in r}
    cos = [(r["step"], r["vision/mean_cosine"]) for r in rows if "vision/mean_cosine" in r]
    below = [s for s in sorted(loss) if loss[s] < 0.01]
    return {"seed": seed, "threads": threads, "rc": rc, "exact_match": found[-1] if found else None,
            "final_loss": loss[max(loss)] if loss else None, "first_batch_below_0.01": below[0] if below else None,
            "cosine_start": cos[0][1] if cos else None, "cosine_max_after_0": max((c for s, c in cos if s > 0), default=None),
            "cosine_end": cos[-1][1] if cos else None, "seconds": round(seconds)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[17, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="single-thread runs side by side")
    ap.add_argument("--out", default="runs/tier1_seeds")
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="YAML overrides for every run")
    args = ap.parse_args(argv)
    root = ROOT / args.out  # an absolute --out stays as given
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for threads in args.threads:
        width = args.jobs if threads == 1 else 1  # 2 cores: only single-thread runs share the machine
        for i in range(0, len(args.seeds), width):
            group = []
            for k, seed in enumerate(args.seeds[i:i + width]):
                # Streaming names each run's shared memory by the first free prefix: two runs started in the
                # same instant pick the same one and the second dies (FileExistsError '/000067_locals').
                time.sleep(10 if k else 0)
                group.append((seed, *start(seed, threads, root, args.override)))
            for seed, proc, out, t0 in group:
                rc = proc.wait()
                results.append(result(seed, threads, out, time.time() - t0, rc))
                print(json.dumps(results[-1]), flush=True)
    results.sort(key=lambda r: (r["threads"], args.seeds.index(r["seed"])))
    (root / "rows.json").write_text(json.dumps(results, indent=1))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    cols = list(results[0])
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in results]
    (root / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
