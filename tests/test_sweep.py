"""recipes/sweep.py: grid expansion, metric collection on fake run folders, failure rows, config
validation up front, and (slow) the CI sweep end to end through the composer launcher."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import sweep  # noqa: E402  (recipes/ is a folder of scripts, not a package)


def test_expand_is_the_cartesian_product_in_file_order():
    s = {"base": "b.yaml", "overrides": ["max_duration=2ba"], "out": "runs/sw",
         "grid": {"optimizer.lr": [0.001, 0.002], "variables.mode": ["tiny", "base"]}, "metrics": []}
    runs = sweep.expand(s, ["seed=3"])
    assert [r["name"] for r in runs] == ["0-lr-0.001_mode-tiny", "1-lr-0.001_mode-base",
                                         "2-lr-0.002_mode-tiny", "3-lr-0.002_mode-base"]
    r = runs[3]
    assert r["folder"] == "runs/sw/3-lr-0.002_mode-base"
    assert r["overrides"] == ["max_duration=2ba", "seed=3", "optimizer.lr=0.002", "variables.mode=base",
                              "run_name=3-lr-0.002_mode-base", "run_folder=runs/sw/3-lr-0.002_mode-base"]
    # list values: dotlist flow syntax in the override, a stable short tag in the name
    runs = sweep.expand({**s, "grid": {"optimizer.betas": [[0.9, 0.95]]}})
    assert runs[0]["overrides"][-3] == "optimizer.betas=[0.9, 0.95]"
    assert runs[0]["name"] == sweep.expand({**s, "grid": {"optimizer.betas": [[0.9, 0.95]]}})[0]["name"]
    assert sweep.expand({**s, "grid": {}})[0]["name"] == "0-run"  # no grid: one run of the base


def fake_run(folder: Path, losses: list[float], summary: dict | None) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps({"step": i, "loss/train/total": v, "lr-AdamW/group0": 1e-3}) for i, v in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 9, "loss/tr')  # a line cut by a kill
    if summary is not None:
        (folder / "eval.json").write_text(json.dumps({"summary": summary, "samples": []}))


def test_collect_and_write_results(tmp_path):
    fake_run(tmp_path / "a", [3.0, 2.0, 1.5], {"exact_match": 0.7, "n": 10})
    fake_run(tmp_path / "b", [3.0], None)
    metrics = ["loss/train/total", "eval.json:exact_match", "exact_match", "nope"]
    a = sweep.collect(tmp_path / "a", metrics)
    assert a == {"loss/train/total": 1.5, "eval.json:exact_match": 0.7, "exact_match": 0.7, "nope": None}
    b = sweep.collect(tmp_path / "b", metrics)
    assert b["loss/train/total"] == 3.0 and b["eval.json:exact_match"] is None
    assert sweep.collect(tmp_path / "missing", metrics)["loss/train/total"] is None

    ok = {"status": "ok", "exit_code": 0, "seconds": 1.0, "error": ""}
    failed = sweep.run_one([sys.executable, "-c", "import sys; print('boom: bad', file=sys.stderr); sys.exit(3)"],
                           tmp_path / "c")
    assert failed["status"] == "failed" and failed["exit_code"] == 3 and "boom: bad" in failed["error"]
    rows = [{"i": 0, "run": "0-lr-1", "optimizer.lr": 1, "variables.mode": "tiny", **ok, **a},
            {"i": 1, "run": "1-lr-2", "optimizer.lr": 2, "variables.mode": "tiny", **failed, **b}]
    out = tmp_path / "out"
    sweep.write_results(out, rows, ["optimizer.lr", "variables.mode"], metrics)
    table = list(csv.DictReader(open(out / "results.csv")))
    assert len(table) == 2 and set(metrics) <= set(table[0])
    assert table[0]["eval.json:exact_match"] == "0.7" and table[1]["exit_code"] == "3"
    assert table[1]["eval.json:exact_match"] == ""  # a missing metric is empty, not 0
    md = (out / "results.md").read_text()
    assert md.startswith("| i | run | optimizer.lr | variables.mode | status |")
    assert "run 1 (1-lr-2) failed with exit code 3: `boom: bad`" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def run_sweep(*args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "recipes/sweep.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_sweeps_fail_before_any_run(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: yamls/tier1_overfit.yaml\nout: x\ngrid: {optimizer.lrr: [1, 2]}\n")
    proc = run_sweep(bad, "--dry-run")
    assert proc.returncode == 2 and "unknown key 'lrr'" in proc.stderr and "did you mean 'lr'" in proc.stderr
    bad.write_text("base: yamls/tier1_overfit.yaml\nout: x\ngird: {}\n")
    proc = run_sweep(bad)
    assert proc.returncode == 2 and "unknown keys ['gird']" in proc.stderr
    proc = run_sweep(ROOT / "yamls/sweeps/ci.yaml", "--dry-run", "--launcher", "python", "-n", "2")
    assert proc.returncode == 2 and "-n must be" in proc.stderr


def test_shipped_sweeps_expand_and_validate():
    proc = run_sweep(ROOT / "yamls/sweeps/lr_mode.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("recipes/train.py yamls/tier1_overfit.yaml") == 6


@pytest.mark.slow
def test_ci_sweep_end_to_end(tmp_path):
    out = tmp_path / "sweep"
    proc = run_sweep(ROOT / "yamls/sweeps/ci.yaml", "--out", out, f"variables.data_dir={tmp_path / 'overfit10'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 and [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["optimizer.lr"] for r in rows] == ["0.001", "0.002"]
    losses = [float(r["loss/train/total"]) for r in rows]
    assert all(map(math.isfinite, losses))
    assert losses[0] != losses[1], "both runs logged the same loss: the grid's lr did not reach the runs"
    for r in rows:
        assert float(r["eval.json:exact_match"]) in (0.0, 0.5, 1.0)  # 2 samples
        assert 0.0 <= float(r["eval.json:edit_distance"]) <= 1.0
    md = (out / "results.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 3 and "loss/train/total" in md  # header + 2 rows
    assert (out / "results.png").stat().st_size > 0
    assert (out / "0-lr-0.001" / "eval.json").is_file()
