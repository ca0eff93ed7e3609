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

from nanoocr.eval.metrics import cer, score
from nanoocr.eval.repetition import ends_in_loop

ROOT = Path(__file__).resolve().parents[1]
BOUNDED = ["exact_match", "edit_distance", "edit_distance_omnidoc", "fox_precision", "fox_recall", "fox_f1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from nanoocr.model import presets
    from nanoocr.data.convert import main as convert
    from nanoocr.train.export import export_model
    from nanoocr.data.tokenizer import Tokenizer
    from nanoocr.model.vlm import NanoOCR
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
    probe = "import sys, nanoocr.eval.evaluate as e; rc = e.main(sys.argv[1:]); print('composer' in sys.modules); sys.exit(rc)"
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
    # the repetition figures: each row's own flag, and the set's rate and no-stop rate from them
    assert all(r["ends_in_loop"] == ends_in_loop(r["pred"]) and isinstance(r["stopped"], bool) for r in rows)
    assert summary["repetition_rate"] == sum(r["ends_in_loop"] for r in rows) / n
    assert summary["no_stop_rate"] == sum(not r["stopped"] for r in rows) / n
    # chars per vision token: plain modes take a fixed count per image (docs/FACTS.md: tiny 73, small 111,
    # base 273, large 421)
    per_image = {"tiny": 73, "small": 111, "base": 273, "large": 421}.get(summary["mode"])
    if per_image:
        assert summary["vision_tokens"] == per_image * n
        chars = sum(len(r["gt"]) for r in rows)
        assert summary["chars_per_vision_token"] == pytest.approx(chars / (per_image * n))
        read = sum(len(r["gt"]) * max(0.0, 1 - r["cer"]) for r in rows)
        assert summary["read_chars_per_vision_token"] == pytest.approx(read / (per_image * n))
    assert summary["guard"]["ngram_size"] == 30 and summary["guard"]["window_size"] == 90
    table = (out / "summary.md").read_text()
    assert table.startswith("| metric | value |") and all(f"| {k} |" in table
                                                           for k in BOUNDED + ["cer", "repetition_rate", "no_stop_rate"])
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
    from nanoocr.data.stream import read_records
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


def usage_error(capsys, root: Path, data, out, *extra) -> str:
    """Run evaluate in-process and return its stderr; it must stop with a usage error (exit 2)."""
    from nanoocr.eval.evaluate import main
    with pytest.raises(SystemExit) as exc:
        main(["--model", str(root / "export"), "--data", str(data), "--out", str(out), "--max-new-tokens", "2",
              "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err and "batch/s" not in err, "refused only after generating"  # the tqdm bar
    return err


def test_out_is_checked_before_the_model_is_loaded(setup, tmp_path, capsys):
    """An unusable --out is a usage error up front, not a crash after hours of generation; evaluate never writes
    into an MDS folder (a conversion's summary.json is next to its index.json) nor over a foreign summary.json."""
    mds = setup / "mds"
    before = {p.name: p.read_bytes() for p in mds.iterdir()}
    assert "summary.json" in before and "index.json" in before
    assert "holds an MDS dataset (index.json)" in usage_error(capsys, setup, mds, mds, "--limit", "1")
    assert {p.name: p.read_bytes() for p in mds.iterdir()} == before, "the conversion's files must be untouched"

    other = tmp_path / "other"
    other.mkdir()
    (other / "summary.json").write_text('{"read": 3}')
    (other / "notes.txt").write_text("mine")
    assert "summary.json that evaluate did not write" in usage_error(capsys, setup, mds, other, "--limit", "1")
    assert (other / "summary.json").read_text() == '{"read": 3}'

    (tmp_path / "file").write_text("x")
    assert "not a folder" in usage_error(capsys, setup, mds, tmp_path / "file", "--limit", "1")
    assert "cannot create" in usage_error(capsys, setup, mds, tmp_path / "file" / "out", "--limit", "1")
    # checked before the model: a bad --out is reported even when --model would fail too
    from nanoocr.eval.evaluate import main
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "no-model"), "--data", str(mds), "--out", str(tmp_path / "file")])
    assert "--out" in capsys.readouterr().err


def test_out_accepts_a_previous_evaluation(tmp_path):
    from nanoocr.eval.evaluate import OUTPUTS, check_out
    for name in OUTPUTS:
        (tmp_path / name).write_text("{}")
    check_out(tmp_path)  # evaluate's own file set: a rerun replaces it
    check_out(tmp_path / "new" / "deeper")  # created
    assert (tmp_path / "new" / "deeper").is_dir()


def test_max_new_tokens_beyond_the_model_is_a_usage_error(setup, tmp_path, capsys):
    err = usage_error(capsys, setup, setup / "mds", tmp_path / "out", "--limit", "1", "--max-new-tokens", "100000")
    assert "--max-new-tokens 100000" in err and "2560 positions" in err, err


def test_bad_inputs_are_skipped_and_the_rest_evaluated(setup, tmp_path):
    """Each bad record lands in skipped.jsonl with its reason, found before reading (a sparse file over
    MAX_IMAGE_BYTES) or at generation (a prompt longer than the model holds, in a batch with good records)."""
    import io
    import os

    from PIL import Image

    from nanoocr.data.stream import read_records
    from nanoocr.data.images import MAX_IMAGE_BYTES
    recs = read_records(local=setup / "mds", limit=2)
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (300, 1), "white").save(buf, format="PNG")
    files = {"good0": recs[0]["image"], "good1": recs[1]["image"], "thin": buf.getvalue(),
             "trunc": recs[0]["image"][:200], "garbage": b"GIF89a but not really"}
    for name, blob in files.items():
        (data / "img" / f"{name}.png").write_bytes(blob)
    with open(data / "img" / "sparse.png", "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: costs nothing on disk, must cost nothing to refuse
    ocr = recs[0]["messages"]
    long_prompt = [{"role": "user", "content": "<image>\n" + "x" * 3000}, ocr[1]]  # > 2560 positions
    lines = [
        {"id": "good0", "image": "img/good0.png", "messages": recs[0]["messages"]},
        {"id": "long", "image": "img/good0.png", "messages": long_prompt},
        {"id": "sparse", "image": "img/sparse.png", "messages": ocr},
        {"id": "thin", "image": "img/thin.png", "messages": ocr},
        {"id": "trunc", "image": "img/trunc.png", "messages": ocr},
        {"id": "garbage", "image": "img/garbage.png", "messages": ocr},
        {"id": "text-only", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"id": "good1", "image": "img/good1.png", "messages": recs[1]["messages"]},
    ]
    (data / "eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = run_eval(setup, data / "eval.jsonl", tmp_path / "out", "--mode", "tiny")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary, rows = check_outputs(tmp_path / "out", 2)
    assert [r["id"] for r in rows] == ["good0", "good1"]
    skipped = {s["id"]: s["reason"] for s in map(json.loads, (tmp_path / "out" / "skipped.jsonl").read_text().splitlines())}
    assert summary["skipped"] == len(skipped) == 6 and summary["read"] == 8
    assert f"file too large: {MAX_IMAGE_BYTES + 1} bytes" in skipped["sparse"]
    assert "aspect ratio 300x1" in skipped["thin"]
    assert "truncated" in skipped["trunc"]
    assert "cannot decode" in skipped["garbage"] or "not an image" in skipped["garbage"]
    assert "no image" in skipped["text-only"]
    assert "positions" in skipped["long"], skipped["long"]
    assert os.path.getsize(data / "img" / "sparse.png") == MAX_IMAGE_BYTES + 1


def test_in_training_generation_eval_reports_the_repetition_rate(setup):
    """transcribe.evaluate_records (the end-of-run eval and GenerationEval) flags each looping output and rates
    the set; GenerationEval logs that rate as eval_gen/repetition_rate. The export is rigged to loop: every
    text token embeds to one vector and lm_head favours " fox" whatever the context."""
    import types

    import torch

    from nanoocr.data.stream import read_records
    from nanoocr.eval.transcribe import evaluate_records, load_export
    from nanoocr.train.callbacks import GenerationEval
    model, tok, _ = load_export(setup / "export")
    (fox,) = tok.encode(" fox")
    with torch.no_grad():
        v = torch.randn(model.gpt.config.n_embd, generator=torch.Generator().manual_seed(0))
        model.gpt.transformer.wte.weight.copy_(v.expand_as(model.gpt.transformer.wte.weight))
        model.gpt.lm_head.weight[fox] = v
    samples = read_records(local=setup / "mds", limit=2)
    summary, rows = evaluate_records(model, tok, samples, mode="tiny", max_new_tokens=32, no_repeat_ngram=0)
    # 32 copies of " fox": more than olmOCR's 30, a loop; ran to the budget
    assert [r["pred"] for r in rows] == [" fox" * 32] * 2 and all(r["ends_in_loop"] and not r["stopped"] for r in rows)
    assert (summary["repetition_rate"], summary["n_looped"], summary["no_stop_rate"]) == (1.0, 2, 1.0)
    # GenerationEval decodes with the engine's default guard (30 / 90): the 31st " fox" is banned and <|bos|>
    # (logit 0, the lowest id) stops each row after 30 copies: no loop, and the CER of " fox" x 30
    logged = {}
    logger = types.SimpleNamespace(log_metrics=logged.update)
    GenerationEval(samples, tok, "tiny", max_new_tokens=32).run(types.SimpleNamespace(model=model), logger)
    gts = [m["content"] for r in samples for m in r["messages"] if m["role"] == "assistant"]
    assert logged == {"eval_gen/exact_match": 0.0, "eval_gen/cer": pytest.approx(sum(cer(" fox" * 30, g) for g in gts) / 2),
                      "eval_gen/repetition_rate": 0.0}


@pytest.mark.parametrize("dtype,said", [("bf16", "precision: bf16 autocast, fp32 weights (asked for)"),
                                        ("fp32", "precision: fp32 (asked for)")])
def test_dtype_option_sets_and_reports_the_cpu_precision(setup, tmp_path, dtype, said):
    proc = run_eval(setup, setup / "mds", tmp_path / "out", "--dtype", dtype, "--limit", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert said in proc.stderr
    check_outputs(tmp_path / "out", 2)
