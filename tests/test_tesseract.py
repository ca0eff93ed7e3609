"""nanoocr.eval.tesseract: the Tesseract baseline reads large clean lines almost perfectly, and its outputs are
evaluate's (same records, same metrics, same counts)."""
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from nanoocr.eval import tesseract
from nanoocr.eval.metrics import METRICS, cer, score

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="tesseract not installed (apt-get install tesseract-ocr tesseract-ocr-eng)")
TEXTS = ["Reading is the first skill", "Tesseract reads clean lines", "Numbers like 2048 and 17 too"]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def render(text: str, path) -> None:
    """Black 40 px DejaVu Sans on white: the easiest case, where any working OCR engine is near perfect."""
    fnt = ImageFont.truetype(FONT, 40) if Path(FONT).is_file() else ImageFont.load_default(size=40)
    img = Image.new("L", (int(fnt.getlength(text)) + 60, 80), 255)
    ImageDraw.Draw(img).text((30, 15), text, font=fnt, fill=0)
    img.save(path)


@pytest.fixture
def jsonl(tmp_path):
    rows = []
    for i, text in enumerate(TEXTS):
        render(text, tmp_path / f"{i}.png")
        rows.append({"id": f"line{i}", "image": f"{i}.png", "messages": [
            {"role": "user", "content": "<image>\nFree OCR."}, {"role": "assistant", "content": text}]})
    rows.append({"id": "no_image", "messages": [{"role": "user", "content": "hello"},
                                                {"role": "assistant", "content": "hi"}]})
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_clean():
    assert tesseract.clean("first line  \n\n second\n\f") == "first line\n second"
    assert tesseract.clean("\f") == ""


@needs_tesseract
def test_large_clean_lines_read_almost_perfectly(tmp_path):
    errors = []
    for i, text in enumerate(TEXTS):
        render(text, tmp_path / f"{i}.png")
        errors.append(cer(tesseract.ocr((tmp_path / f"{i}.png").read_bytes(), psm=7), text))
    assert sum(errors) / len(errors) < 0.03 and max(errors) < 0.1, errors


@needs_tesseract
def test_cli_writes_evaluate_comparable_outputs(jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    assert tesseract.main(["--data", str(jsonl), "--out", str(out), "--psm", "7", "--workers", "2"]) == 0
    printed = capsys.readouterr()
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["line0", "line1", "line2"]
    for r in rows:  # the metrics are nanoocr.eval.metrics' own, on the cleaned prediction
        assert {k: r[k] for k in METRICS} == score(r["pred"], r["gt"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["skipped"] == 1 and summary["read"] == 4
    assert summary["cer"] == pytest.approx(sum(r["cer"] for r in rows) / 3)
    assert summary["model"].startswith("tesseract ") and summary["mode"] == "tesseract --psm 7"
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == ["no_image"]
    k = int(round(summary["exact_match"] * 3))
    assert f"exact_match: {k}/3" in printed.out and "| cer |" in printed.out
    assert (out / "summary.md").read_text() in printed.out
    # The same folder again: its own outputs are replaced; a folder holding anything else is refused.
    assert tesseract.main(["--data", str(jsonl), "--out", str(out), "--limit", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())["read"] == 1
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        tesseract.main(["--data", str(jsonl), "--out", str(out)])


def test_missing_binary_names_the_packages(monkeypatch, jsonl, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(tesseract.TesseractError, match="apt-get install tesseract-ocr tesseract-ocr-eng"):
        tesseract.check_tesseract()
    with pytest.raises(SystemExit) as e:
        tesseract.main(["--data", str(jsonl), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "tesseract-ocr" in capsys.readouterr().err
