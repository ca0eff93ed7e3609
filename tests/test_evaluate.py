"""`python -m nanoocr.evaluate` end to end on a tiny exported model: MDS and JSONL eval sets.

The model is an untrained `nano` (its transcriptions are noise); what is checked is the bookkeeping:
files written, n and the skip reasons, metric ranges, per-sample rows vs the summary means, and that
each row's metrics are the metrics of its own (pred, gt) pair.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nanoocr.metrics import score

ROOT = Path(__file__).resolve().parents[1]
BOUNDED = ["exact_match", "edit_distance", "edit_distance_omnidoc", "fox_precision", "fox_recall", "fox_f1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from nanoocr import presets
    from nanoocr.convert_to_mds import main as convert
    from nanoocr.export import export_model
    from nanoocr.tokenizer import Tokenizer
    from nanoocr.vlm import NanoOCR
    root = tmp_path_factory.mktemp("eval")
    assert convert(["--input", "synthetic:overfit10:10:0", "--out", str(root / "mds")]) == 0
    tok = Tokenizer.train_from_iterator(["Free OCR. the quick brown fox jumps over the lazy dog"] * 4, vocab_size=300)
    torch.manual_seed(0)
    model = NanoOCR(presets.build_config("nano", gpt={"vocab_size": tok.vocab_size, "sequence_len": 256},
                                         image_token_id=tok.image_id))
    export_model(model, tok, root / "export", mode="tiny")
    return root


def run_eval(root: Path, data, out: Path, *extra) -> subprocess.CompletedProcess:
    # Run as `python -m nanoocr.evaluate` would, then report whether Composer got imported (it must not).
    probe = "import sys, nanoocr.evaluate as e; rc = e.main(sys.argv[1:]); print('composer' in sys.modules); sys.exit(rc)"
    cmd = [sys.executable, "-c", probe, "--model", str(root / "export"), "--data", str(data),
           "--out", str(out), "--max-new-tokens", "3", "--batch-size", "4", "--device", "cpu", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def check_outputs(out: Path, n: int) -> tuple[dict, list[dict]]:
    for name in ("per_sample.jsonl", "skipped.jsonl", "summary.json", "summary.md"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "per_sample.jsonl").read_text().splitlines()]
    assert summary["n"] == n == len(rows)
    for row in rows:
        assert {"id", "pred", "gt"} <= set(row)
        assert {k: row[k] for k in score("", "")} == score(row["pred"], row["gt"]), row["id"]
        assert all(0.0 <= row[k] <= 1.0 for k in BOUNDED), row
        assert row["cer"] >= 0.0
    for k in BOUNDED + ["cer"]:
        assert summary[k] == pytest.approx(sum(r[k] for r in rows) / n), k
    table = (out / "summary.md").read_text()
    assert table.startswith("| metric | value |") and all(f"| {k} |" in table for k in BOUNDED + ["cer"])
    return summary, rows


def test_evaluate_mds_folder(setup, tmp_path):
    proc = run_eval(setup, setup / "mds", tmp_path / "out", "--limit", "6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary, rows = check_outputs(tmp_path / "out", 6)
    assert summary["skipped"] == 0 and summary["read"] == 6 and summary["mode"] == "tiny"
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # data order kept
    *table, exact, composer_imported = proc.stdout.strip().splitlines()
    assert "| exact_match |" in "\n".join(table) and exact.startswith("exact_match: ") and exact.endswith("/6")
    assert composer_imported == "False"
    assert "evaluate" in proc.stderr  # the tqdm bar


def test_evaluate_jsonl_reports_skips(setup, tmp_path):
    from nanoocr.data import read_records
    recs = read_records(local=setup / "mds", limit=3)
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(recs[0]["image"])
    lines = []
    for i, r in enumerate(recs):
        (data / "img" / f"{i}.png").write_bytes(r["image"])
        lines.append({"id": f"page{i}", "image": f"img/{i}.png", "messages": r["messages"]})
    ocr = recs[0]["messages"]
    lines += [
        {"id": "text-only", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"id": "no-answer", "image": "img/0.png", "messages": ocr[:1]},
        {"id": "escape", "image": "../outside.png", "messages": ocr},
        {"id": "missing", "image": "img/nope.png", "messages": ocr},
        {"id": "system", "image": "img/1.png", "messages": [{"role": "system", "content": "be exact"}, *recs[1]["messages"]]},
    ]
    (data / "eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "not json\n")
    proc = run_eval(setup, data / "eval.jsonl", tmp_path / "out", "--mode", "tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary, rows = check_outputs(tmp_path / "out", 4)
    assert [r["id"] for r in rows] == ["page0", "page1", "page2", "system"]
    assert rows[3]["gt"] == recs[1]["messages"][1]["content"]  # the system message is no prompt nor answer
    skipped = {s["id"]: s["reason"] for s in map(json.loads, (tmp_path / "out" / "skipped.jsonl").read_text().splitlines())}
    assert summary["skipped"] == len(skipped) == 5 and summary["read"] == 9
    assert "no image" in skipped["text-only"]
    assert "no assistant answer" in skipped["no-answer"]
    assert "escapes data root" in skipped["escape"]
    assert "not found" in skipped["missing"]
    assert "not valid JSON" in skipped["eval.jsonl:9"]


def test_usage_errors(setup, tmp_path):
    proc = run_eval(setup, tmp_path / "nope.txt", tmp_path / "out")
    assert proc.returncode == 2 and "expected an MDS folder" in proc.stderr
    proc = run_eval(setup, setup / "mds", tmp_path / "out", "--mode", "huge")
    assert proc.returncode == 2 and "--mode 'huge'" in proc.stderr
