"""Grid sweeps over the training recipe: expand, run each config, collect final metrics, table + plot.

    python recipes/sweep.py yamls/sweeps/NAME.yaml [--dry-run] [--launcher composer|python] [-n N]
        [--out DIR] [key=value ...]

A sweep file:
    base: yamls/tier1_overfit.yaml          # the recipe YAML every run starts from
    overrides: [max_duration=200ba, ...]    # applied to every run (then the trailing CLI key=value ones)
    grid:                                   # cartesian product, in file order; one run per combination
      optimizer.lr: [1.0e-3, 2.0e-3]
      variables.mode: [tiny, base]
    metrics: [eval.json:exact_match, loss/train/total]
    out: runs/sweeps/NAME

Run i gets run_name `<i>-<slug>` and run_folder `<out>/<i>-<slug>` (slug: the grid values, e.g.
`lr-0.001_mode-tiny`) and runs as a subprocess, one after another:
`composer -n N recipes/train.py BASE overrides... grid... run_name=... run_folder=...` (or `python
recipes/train.py ...`). Its stdout/stderr go to `<run_folder>/sweep_stdout.log` / `sweep_stderr.log`.

Metrics: `eval.json:KEY` is KEY of the run's `eval.json` summary (final_eval: exact_match, edit_distance,
...); any other name is the LAST value logged under that name in `<run_folder>/metrics.jsonl` (the
jsonl logger), falling back to the eval.json summary when the name is not logged there. Missing → empty.

Outputs in `out`, rewritten after every run so an interrupted sweep keeps what finished:
`results.csv`, `results.md` (Markdown table), `results.png` (the first metric over the first grid key,
one bar group per value, one bar per value of the other grid keys). A failed run is a row with its exit
code and the tail of its stderr, not a crash of the sweep. Every run's config is validated with the
recipe's own validation BEFORE the first run starts, so a typo fails in seconds, not after hours.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

SWEEP_KEYS = {"base", "overrides", "grid", "metrics", "out"}
TRAIN = Path(__file__).resolve().parent / "train.py"
EVAL_PREFIX = "eval.json:"


class SweepError(ValueError):
    pass


def load_sweep(path: str) -> dict:
    """The sweep file as a plain dict, checked (unknown keys, types); SweepError naming the problem."""
    from omegaconf import OmegaConf as om
    if not Path(path).is_file():
        raise SweepError(f"sweep file not found: {path}")
    import yaml
    try:
        sweep = om.to_container(om.load(path), resolve=True)  # YAML safe-loaded by OmegaConf
    except yaml.YAMLError as e:  # e.g. an unquoted `key={a: b}` override, which YAML reads as a mapping
        raise SweepError(f"{path}: not valid YAML: {e}".replace("\n", " "))
    if not isinstance(sweep, dict):
        raise SweepError(f"{path}: expected a mapping with keys {sorted(SWEEP_KEYS)}")
    unknown = set(sweep) - SWEEP_KEYS
    if unknown:
        raise SweepError(f"{path}: unknown keys {sorted(unknown)} (valid: {sorted(SWEEP_KEYS)})")
    for key in ("base", "out"):
        if not isinstance(sweep.get(key), str) or not sweep[key]:
            raise SweepError(f"{path}: '{key}' must be a non-empty string")
    sweep.setdefault("overrides", [])
    sweep.setdefault("metrics", [])
    grid = sweep.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise SweepError(f"{path}: 'grid' must map keys to non-empty lists of values")
    if not all(isinstance(o, str) and "=" in o for o in sweep["overrides"]):
        raise SweepError(f"{path}: 'overrides' must be a list of key=value strings")
    sweep["grid"] = grid
    return sweep


def format_value(v) -> str:
    """A value as an OmegaConf dotlist understands it (lists/dicts in flow style)."""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "null" if v is None else str(v)


def slug(combo: dict) -> str:
    """Short folder-safe name of one grid point: {"optimizer.lr": 0.001, "variables.mode": "tiny"} → lr-0.001_mode-tiny."""
    parts = []
    for key, value in combo.items():
        # A list/dict value gets a stable short hash (str(hash()) changes between processes).
        text = format_value(value) if not isinstance(value, (list, dict)) else f"v{zlib.crc32(json.dumps(value).encode()) % 9973}"
        parts.append(f"{key.split('.')[-1]}-{text}")
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(parts))[:80] or "run"


def expand(sweep: dict, extra: list[str] = ()) -> list[dict]:
    """One entry per grid point: {"i", "name", "folder", "combo", "overrides"}."""
    keys = list(sweep["grid"])
    runs = []
    for i, values in enumerate(itertools.product(*(sweep["grid"][k] for k in keys))):
        combo = dict(zip(keys, values))
        name = f"{i}-{slug(combo)}"
        folder = f"{sweep['out']}/{name}"
        overrides = [*sweep["overrides"], *extra, *(f"{k}={format_value(v)}" for k, v in combo.items()),
                     f"run_name={name}", f"run_folder={folder}"]
        runs.append({"i": i, "name": name, "folder": folder, "combo": combo, "overrides": overrides})
    return runs


def command(base: str, overrides: list[str], launcher: str, nproc: int) -> list[str]:
    if launcher == "python":
        return [sys.executable, str(TRAIN), base, *overrides]
    exe = Path(sys.executable).parent / "composer"  # the launcher of the environment we run in
    exe = str(exe) if exe.exists() else shutil.which("composer")
    if exe is None:
        raise SweepError("the composer launcher is not installed here; use --launcher python")
    return [exe, "-n", str(nproc), str(TRAIN), base, *overrides]


def run_one(cmd: list[str], folder: Path, tail_lines: int = 20) -> dict:
    """Run one config; → {"status", "exit_code", "seconds", "error"} (stderr tail when it failed)."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(folder / "sweep_stdout.log", "w") as out, open(folder / "sweep_stderr.log", "w") as err:
        try:
            code = subprocess.run(cmd, stdout=out, stderr=err).returncode
        except OSError as e:  # the launcher itself could not start
            err.write(f"{type(e).__name__}: {e}\n")
            code = 127
    seconds = round(time.time() - t0, 1)
    if code == 0:
        return {"status": "ok", "exit_code": 0, "seconds": seconds, "error": ""}
    lines = (folder / "sweep_stderr.log").read_text(errors="replace").strip().splitlines()
    return {"status": "failed", "exit_code": code, "seconds": seconds, "error": "\n".join(lines[-tail_lines:])}


def collect(folder: Path, metrics: list[str]) -> dict:
    """Final value of each metric for one run folder (None when the run never logged it)."""
    last = {}
    jsonl = folder / "metrics.jsonl"
    if jsonl.is_file():
        for line in jsonl.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a killed run
            last.update({k: v for k, v in row.items() if k != "step"})
    summary = {}
    if (folder / "eval.json").is_file():
        summary = json.loads((folder / "eval.json").read_text()).get("summary", {})
    out = {}
    for name in metrics:
        if name.startswith(EVAL_PREFIX):
            out[name] = summary.get(name[len(EVAL_PREFIX):])
        else:
            out[name] = last.get(name, summary.get(name))
    return out


def write_results(out: Path, rows: list[dict], grid_keys: list[str], metrics: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    columns = ["i", "run", *grid_keys, "status", "exit_code", "seconds", *metrics, "error"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})

    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")[:120]

    md = ["| " + " | ".join(columns[:-1]) + " |", "|" + "---|" * (len(columns) - 1)]
    md += ["| " + " | ".join(cell(r.get(c)) for c in columns[:-1]) + " |" for r in rows]
    failed = [r for r in rows if r["status"] != "ok"]
    md += [""] + [f"- run {r['i']} ({r['run']}) failed with exit code {r['exit_code']}: "
                  f"`{cell(r['error'].splitlines()[-1] if r['error'] else '')}`" for r in failed]
    (out / "results.md").write_text("\n".join(md) + "\n")
    plot(out / "results.png", rows, grid_keys, metrics[0] if metrics else None)


def plot(path: Path, rows: list[dict], grid_keys: list[str], metric: str | None) -> None:
    """Grouped bars: x = the first grid key's values, one bar per combination of the other keys."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan  # failed runs and missing metrics leave a gap, not a zero

    xkey, rest = (grid_keys[0], grid_keys[1:]) if grid_keys else (None, [])
    xs = list(dict.fromkeys(format_value(r.get(xkey)) for r in rows)) if xkey else ["all"]
    groups = list(dict.fromkeys(", ".join(f"{k.split('.')[-1]}={format_value(r.get(k))}" for k in rest) for r in rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(xs) * max(1, len(groups))), 4))
    width = 0.8 / max(1, len(groups))
    for g, group in enumerate(groups):
        ys = []
        for x in xs:
            match = [r for r in rows if (not xkey or format_value(r.get(xkey)) == x) and
                     ", ".join(f"{k.split('.')[-1]}={format_value(r.get(k))}" for k in rest) == group]
            ys.append(num(match[0].get(metric)) if match and metric else math.nan)
        ax.bar([i + (g - (len(groups) - 1) / 2) * width for i in range(len(xs))], ys, width, label=group or None)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(xkey or "")
    ax.set_ylabel(metric or "(no metric)")
    ax.set_title(f"{metric or ''} over {xkey or 'the run'}")
    if rest:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def validate_runs(base: str, runs: list[dict], world_size: int = 1) -> None:
    """Every run's config through the recipe's loader + validation (unknown keys, bad values, a
    global_train_batch_size that `world_size` ranks cannot split) up front."""
    sys.path.insert(0, str(TRAIN.parent.parent))
    from nanoocr.train.config import ConfigError, load_config
    for run in runs:
        try:
            load_config(base, run["overrides"], world_size=world_size)
        except ConfigError as e:
            raise SweepError(f"run {run['name']}: {e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python recipes/sweep.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="a sweep YAML (base, overrides, grid, metrics, out)")
    ap.add_argument("extra", nargs="*", metavar="key=value", help="overrides added to every run")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--launcher", choices=["composer", "python"], default="composer")
    ap.add_argument("-n", type=int, default=1, help="processes per run (composer launcher)")
    ap.add_argument("--out", help="output folder (default: the sweep file's `out`)")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after the options
    if args.n < 1 or (args.launcher == "python" and args.n != 1):
        ap.error("-n must be >= 1, and 1 with --launcher python (use the composer launcher for DDP)")
    if bad := [e for e in args.extra if "=" not in e]:
        ap.error(f"overrides must be key=value: {bad}")
    try:
        sweep = load_sweep(args.sweep)
        if args.out:
            sweep["out"] = args.out
        runs = expand(sweep, args.extra)
        validate_runs(sweep["base"], runs, args.n)
        cmds = [command(sweep["base"], r["overrides"], args.launcher, args.n) for r in runs]
    except SweepError as e:
        ap.error(str(e))
    out, grid_keys, metrics = Path(sweep["out"]), list(sweep["grid"]), sweep["metrics"]
    if args.dry_run:
        for run, cmd in zip(runs, cmds):
            print(f"# {run['name']}\n{shlex.join(cmd)}")
        return 0
    # The jsonl logger appends: an old run's lines in the same folder would be read as this run's.
    if used := [r["folder"] for r in runs if Path(r["folder"]).is_dir() and any(Path(r["folder"]).iterdir())]:
        ap.error(f"run folders already exist (remove them or pass --out): {used[:3]}")
    rows = []
    for run, cmd in zip(runs, cmds):
        print(f"[sweep] {run['i'] + 1}/{len(runs)} {run['name']} ...", flush=True)
        result = run_one(cmd, Path(run["folder"]))
        row = {"i": run["i"], "run": run["name"], **run["combo"], **result, **collect(Path(run["folder"]), metrics)}
        rows.append(row)
        write_results(out, rows, grid_keys, metrics)
        shown = ", ".join(f"{m}={row[m]}" for m in metrics)
        print(f"[sweep]   {result['status']} in {result['seconds']} s: {shown}"
              + (f"\n{result['error']}" if result["status"] != "ok" else ""), flush=True)
    print((out / "results.md").read_text())
    n_failed = sum(r["status"] != "ok" for r in rows)
    print(f"[sweep] {len(rows) - n_failed}/{len(rows)} runs ok → {out}/results.csv, results.md, results.png")
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
