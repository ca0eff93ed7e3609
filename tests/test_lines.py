"""nanoocr.eval.lines: line crops cut from PDFs whose text we wrote ourselves (matplotlib's PDF backend writes a
real text layer), every line accounted for, bad files rejected by name, the --max-lines sample seeded."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nanoocr.eval import lines

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")

PAGE1 = ["The quick brown fox jumps over the lazy dog", "Portable documents carry a text layer", "ab",
         "Reading order matters for OCR 2024"]
PAGE2 = ["Held out lines come from real PDFs", "The quick brown fox jumps over the lazy dog", "Seven"]
KEPT = [PAGE1[0], PAGE1[1], PAGE1[3], PAGE2[0]]  # "ab", "Seven": too short; PAGE2[1]: a duplicate


def write_pdf(path: Path, pages: list[list[str]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:  # TrueType: a plain text layer
        for texts in pages:
            fig = plt.figure(figsize=(6, 3))
            if not texts:  # a page of graphics only: no text layer
                fig.add_artist(plt.Rectangle((0.2, 0.2), 0.5, 0.5, color="black"))
            for k, text in enumerate(texts):
                fig.text(0.05, 0.85 - 0.2 * k, text, fontsize=14)
            pdf.savefig(fig)
            plt.close(fig)


@pytest.fixture(scope="module")
def pdf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdfs")
    write_pdf(root / "a_known.pdf", [PAGE1, PAGE2])
    write_pdf(root / "b_figure.pdf", [[]])
    (root / "c_broken.pdf").write_bytes(b"this is not a PDF at all\n")
    return root


def read_set(out: Path) -> list[dict]:
    from nanoocr.data.stream import read_records
    return read_records(local=out)


def test_lines_match_what_was_written_and_every_line_is_counted(pdf_dir, tmp_path):
    out = tmp_path / "lines"
    s = lines.build(pdf_dir, str(out), verbose=False)
    recs = read_set(out)
    assert [r["messages"][1]["content"] for r in recs] == KEPT
    assert [r["id"] for r in recs] == ["a_known.pdf#p1:l1", "a_known.pdf#p1:l2", "a_known.pdf#p1:l4",
                                       "a_known.pdf#p2:l1"]
    assert s["read"] == s["written"] + s["rejected"] == 7 + 1 + 1  # 7 lines, a figure page, a broken file
    assert s["by_reason"] == {"too short": 2, "duplicate text": 1, "no text layer": 1, "unreadable PDF": 1}
    assert s["by_source"]["c_broken.pdf"] == {"read": 1, "written": 0, "rejected": 1}
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == s["rejected"]
    broken = next(r for r in rejected if r["id"] == "c_broken.pdf")
    assert broken["reason"].startswith("unreadable PDF: c_broken.pdf: ")
    for r in recs:
        img = Image.open(io.BytesIO(r["image"]))
        assert img.format == "PNG" and r["source"] == "lines"
        grey = np.asarray(img.convert("L"))
        # 14 pt text at 150 dpi: the crop is a line's height (~30-45 px), and ink spans it left to right
        assert 25 <= img.height <= 60 and img.width > 4 * img.height, img.size
        ink_cols = np.flatnonzero((grey < 128).any(axis=0))
        assert ink_cols.size and (ink_cols[-1] - ink_cols[0]) > 0.85 * img.width
        assert 0.02 < (grey < 128).mean() < 0.5


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed (apt-get install "
                                                                 "tesseract-ocr tesseract-ocr-eng)")
def test_crops_read_back_as_their_text(pdf_dir, tmp_path):
    """An independent reader: Tesseract finds each crop's ground truth in its pixels."""
    from nanoocr.eval.metrics import cer
    from nanoocr.eval.tesseract import ocr
    out = tmp_path / "lines"
    lines.build(pdf_dir / "a_known.pdf", str(out), verbose=False)
    for r in read_set(out):
        gt = r["messages"][1]["content"]
        assert cer(ocr(r["image"], psm=7), gt) < 0.1, gt


def test_max_lines_is_a_seeded_sample(pdf_dir, tmp_path):
    ids = {}
    for run, seed in (("a", 0), ("b", 0), ("c", 1), ("d", 2)):
        out = tmp_path / run
        assert lines.main(["--pdf", str(pdf_dir / "a_known.pdf"), "--out", str(out), "--max-lines", "2",
                           "--seed", str(seed)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["written"] == 2 and summary["by_reason"]["not sampled"] == len(KEPT) - 2
        assert summary["read"] == summary["written"] + summary["rejected"] == 7
        ids[run] = [r["id"] for r in read_set(out)]
    assert ids["a"] == ids["b"]
    assert len({tuple(v) for v in ids.values()}) > 1, "another seed should sample other lines"


def test_nothing_written_fails_naming_the_file(pdf_dir, tmp_path, capsys):
    out = tmp_path / "none"
    assert lines.main(["--pdf", str(pdf_dir / "c_broken.pdf"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "c_broken.pdf: unreadable PDF" in err and "no line written" in err
    assert not (out / "index.json").exists()
    summary = json.loads((tmp_path / "none.rejected" / "summary.json").read_text())
    assert summary["read"] == summary["rejected"] == 1
    with pytest.raises(SystemExit):
        lines.main(["--pdf", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])


def test_parse_and_text_checks():
    xhtml = ('<html xmlns="http://www.w3.org/1999/xhtml"><body><doc><page width="100" height="50"><flow><block>'
             '<line xMin="1" yMin="2" xMax="90" yMax="12"><word>Tom</word><word>&amp;</word>'
             '<word>\ufb01sh</word></line></block></flow></page></doc></body></html>')
    (page,) = lines.parse_bbox_layout(xhtml)
    assert (page["width"], page["height"]) == (100.0, 50.0)
    assert page["lines"] == [{"box": (1.0, 2.0, 90.0, 12.0), "text": "Tom & fish",
                              "words": [("Tom", None), ("&", None), ("fish", None)]}]  # words without boxes
    ok = (10.0, 10.0, 200.0, 22.0)
    assert lines.text_reason("a good line", ok, (612, 792), 150, 8) is None
    assert lines.text_reason("short", ok, (612, 792), 150, 8).startswith("too short")
    for bad in ("bell \x07 here", "lost \ufffd glyph", "private \ue000 use"):
        assert lines.text_reason(bad, ok, (612, 792), 150, 8).startswith("non-printable text"), bad
    assert lines.text_reason("a good line", (10, 10, 10.5, 22), (612, 792), 150, 8).startswith("empty box")
    assert lines.text_reason("a good line", (10, 10, 700, 22), (612, 792), 150, 8) is None  # overhangs: clipped
    assert lines.text_reason("a good line", (10, 10, 22, 300), (612, 792), 150, 8).startswith("vertical text")


def test_max_words_cuts_lines_into_word_segments(pdf_dir, tmp_path):
    """--max-words 3: each kept line becomes its consecutive 3-word groups, cropped to those words (narrower than
    the line), every segment accounted for; min-chars and duplicates then apply per segment."""
    out = tmp_path / "seg"
    assert lines.main(["--pdf", str(pdf_dir / "a_known.pdf"), "--out", str(out), "--max-words", "3"]) == 0
    recs = read_set(out)
    texts = [r["messages"][1]["content"] for r in recs]
    # PAGE1[0] "The quick brown fox jumps over the lazy dog" -> 3 segments; PAGE1[1] (6 words) -> 2;
    # PAGE1[3] "Reading order matters for OCR 2024" -> 2 ("for OCR 2024" has 12 chars); PAGE2[0] -> 3 segments,
    # the last "PDFs" (4 chars < 8) too short; PAGE2[1] is PAGE1[0] again: 3 duplicates.
    assert texts == ["The quick brown", "fox jumps over", "the lazy dog", "Portable documents carry",
                     "a text layer", "Reading order matters", "for OCR 2024", "Held out lines", "come from real"]
    assert [r["id"] for r in recs][:3] == ["a_known.pdf#p1:l1s1", "a_known.pdf#p1:l1s2", "a_known.pdf#p1:l1s3"]
    s = json.loads((out / "summary.json").read_text())
    assert s["read"] == s["written"] + s["rejected"] and s["written"] == 9
    assert s["by_reason"]["duplicate text"] == 3
    whole = {r["messages"][1]["content"]: r for r in read_set(_built(pdf_dir, tmp_path))}
    first = Image.open(io.BytesIO(recs[0]["image"]))
    assert first.width < 0.5 * Image.open(io.BytesIO(whole[PAGE1[0]]["image"])).width
    if shutil.which("tesseract"):  # an independent reader finds each segment's text in its crop
        from nanoocr.eval.metrics import cer
        from nanoocr.eval.tesseract import ocr
        for r in recs:
            assert cer(ocr(r["image"], psm=7), r["messages"][1]["content"]) < 0.15, r["id"]
    with pytest.raises(SystemExit) as e:
        lines.main(["--pdf", str(pdf_dir), "--out", str(tmp_path / "bad"), "--max-words", "0"])
    assert e.value.code == 2


def _built(pdf_dir, tmp_path):
    out = tmp_path / "whole"
    lines.build(pdf_dir / "a_known.pdf", str(out), verbose=False)
    return out
