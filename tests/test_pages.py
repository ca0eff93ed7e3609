"""`python -m nanoocr.pages`: PDFs generated here (text pages, a blank page, a figure page, a dark page)
and one real PDF from /usr/share/doc when the machine has one.

Checks the filter reasons, the by-document split (no document in both train and val), the .pdf.gz and
duplicate handling, the MDS folders' contents, and read == written + filtered.
"""
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanoocr.eval.pages import filter_reason, pick_pages, split_documents

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils not installed")

LINE = "Line {i} of page {p}: the quick brown fox jumps over the lazy dog."


def make_pdf(path: Path, pages: list[str]) -> None:
    """pages: "text", "blank", "figure" (a big image + a 5-line caption), "dark" (a black page with text)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.backends.backend_pdf import PdfPages
    rng = np.random.default_rng(0)
    with PdfPages(path) as pdf:
        for p, kind in enumerate(pages, start=1):
            fig = plt.figure(figsize=(8.5, 11))
            if kind == "figure":
                ax = fig.add_axes([0.1, 0.45, 0.8, 0.3])
                ax.imshow(rng.random((50, 50)), cmap="gray")
                ax.axis("off")
            if kind == "dark":
                fig.patch.set_facecolor("black")
            n_lines = {"text": 40, "figure": 5, "dark": 20, "blank": 0}[kind]
            for i in range(n_lines):
                fig.text(0.08, 0.95 - i * 0.022, LINE.format(i=i, p=p), fontsize=10,
                         color="white" if kind == "dark" else "black")
            pdf.savefig(fig, facecolor=fig.get_facecolor())
            plt.close(fig)


def run_pages(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanoocr.pages", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def mds_ids(folder: Path) -> list[str]:
    from nanoocr.data.stream import read_records
    return [r["id"] for r in read_records(local=folder)]


def test_pick_pages_and_split_rules():
    assert pick_pages(5, None) == [1, 2, 3, 4, 5] and pick_pages(3, 10) == [1, 2, 3]
    assert pick_pages(100, 4) == [1, 26, 51, 76]  # evenly spaced: 1 + i*100//4
    pages = {"a": 50, "b": 30, "c": 15, "d": 5}  # 100 pages; a 0.2 budget = 20 pages
    val = split_documents(pages, 0.2, seed=0)
    assert sum(pages[d] for d in val) <= 20 and val and val < set(pages)
    assert split_documents(pages, 0.2, seed=0) == val  # deterministic for a seed
    assert split_documents({"a": 50, "b": 60}, 0.1, seed=0) == {"a"}  # nothing fits: the smallest
    assert split_documents({"a": 50}, 0.5, seed=0) == set()  # one document stays in train
    assert split_documents(pages, 0.0, seed=0) == set()
    # Thresholds: 199 chars is near-empty; 13 pt²/char is text; 147 pt²/char is a figure.
    assert filter_reason({"chars": 199, "ink_fraction": 0.01, "ink_per_char": 5}).startswith("near-empty")
    assert filter_reason({"chars": 1950, "ink_fraction": 0.05, "ink_per_char": 13.1}) is None
    assert filter_reason({"chars": 270, "ink_fraction": 0.08, "ink_per_char": 147}).startswith("figure-dominant")
    assert filter_reason({"chars": 900, "ink_fraction": 0.6, "ink_per_char": 30}).startswith("too much ink")


def test_bounded_map_keeps_order_and_bounds_what_is_in_flight():
    """Both PDF paths (the `pdf:` source and this builder) render through data/pdf.py's bounded_map: results in
    input order, never more than 4 * workers items submitted before the caller takes the results."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from nanoocr.data.pdf import bounded_map
    started, taken, lock, most = [], [0], threading.Lock(), [0]

    def work(i):
        with lock:
            started.append(i)
            most[0] = max(most[0], len(started) - taken[0])
        time.sleep(0.001 * (i % 3))  # out-of-order completion
        return i * i

    with ThreadPoolExecutor(max_workers=2) as pool:
        out = []
        for r in bounded_map(pool, work, list(range(37)), workers=2):
            out.append(r)
            with lock:
                taken[0] += 1
    assert out == [i * i for i in range(37)]
    assert most[0] <= 8, most[0]


def test_generated_pdfs(tmp_path):
    src = tmp_path / "pdfs"
    (src / "sub").mkdir(parents=True)
    make_pdf(src / "a.pdf", ["text", "blank", "figure", "text", "dark"])
    make_pdf(src / "sub" / "b.pdf", ["text", "text"])
    make_pdf(tmp_path / "c.pdf", ["text", "text", "text"])
    (src / "c.pdf.gz").write_bytes(gzip.compress((tmp_path / "c.pdf").read_bytes()))  # Debian-style
    shutil.copy(src / "sub" / "b.pdf", src / "b-copy.pdf")  # the same bytes twice: read once
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    out = tmp_path / "out"
    proc = run_pages("--pdf-dir", src, "--out", out, "--val-fraction", "0.2", "--seed", "1", "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "pages_summary.json").read_text())

    # 5 + 2 + 3 pages read (the copy of b is skipped as a duplicate, the broken PDF is listed as unreadable)
    assert set(s["documents"]) == {"a.pdf", "b-copy.pdf", "c.pdf.gz"}  # sorted paths: b-copy.pdf < sub/b.pdf
    assert [u["document"] for u in s["unreadable_documents"]] == ["broken.pdf"]
    assert s["read"] == 10 and s["written"] == 7 and s["filtered"] == 3
    assert s["read"] == s["written"] + s["filtered"]
    reasons = {f["id"]: f["reason"] for f in s["filtered_pages"]}
    assert reasons["a.pdf#p2"].startswith("no text layer")
    assert reasons["a.pdf#p3"].startswith("figure-dominant")
    assert reasons["a.pdf#p5"].startswith("too much ink")
    for doc, c in s["documents"].items():
        assert c["read"] == c["written"] + c["filtered"], doc

    # by document: val holds whole documents, none of them in train
    train, val = mds_ids(out / "train"), mds_ids(out / "val")
    assert len(train) + len(val) == 7 and val, (train, val)
    train_docs, val_docs = {i.rsplit("#p", 1)[0] for i in train}, {i.rsplit("#p", 1)[0] for i in val}
    assert not train_docs & val_docs
    assert val_docs == set(s["val"]["documents"]) and len(val) == s["val"]["pages"]
    assert "a.pdf#p4" in train + val and "a.pdf#p3" not in train + val

    # ground truth is the page's text layer
    from nanoocr.data.stream import read_records
    rec = next(r for r in read_records(local=out / "train") + read_records(local=out / "val") if r["id"] == "a.pdf#p1")
    assert rec["messages"][1]["content"].startswith(LINE.format(i=0, p=1))
    assert rec["image"][:8] == b"\x89PNG\r\n\x1a\n"

    # an output folder that is not empty is refused
    proc = run_pages("--pdf-dir", src, "--out", out)
    assert proc.returncode == 2 and "not an empty folder" in proc.stderr


def real_pdf() -> Path | None:
    for pattern in ("*.pdf", "*.pdf.gz"):
        for p in sorted(Path("/usr/share/doc").rglob(pattern)):
            if p.is_file() and not p.is_symlink():
                return p
    return None


@pytest.mark.skipif(real_pdf() is None, reason="no PDF under /usr/share/doc")
def test_real_debian_pdf(tmp_path):
    src = tmp_path / "pdfs"
    src.mkdir()
    shutil.copy(real_pdf(), src / real_pdf().name)
    out = tmp_path / "out"
    proc = run_pages("--pdf-dir", src, "--out", out, "--max-pages", "4")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: none of the 4 pages is text-dominant
    reports = out if proc.returncode == 0 else Path(f"{out}.rejected")  # nothing built: only the reports
    s = json.loads((reports / "pages_summary.json").read_text())
    assert s["read"] == min(4, next(iter(s["documents"].values()))["pages_in_pdf"])
    assert s["read"] == s["written"] + s["filtered"] and s["val"]["pages"] == 0  # one document: all in train
    if proc.returncode == 0:
        assert len(mds_ids(out / "train")) == s["written"]
    else:
        assert not (out / "train" / "index.json").exists() and str(reports) in proc.stderr


def test_crash_in_val_publishes_nothing_and_a_rerun_builds(tmp_path, monkeypatch):
    """train finished, then a crash while building val: DIR/train/index.json used to exist, so build_data
    took the set for built. The whole DIR appears only when everything is written."""
    import nanoocr.eval.pages as pages
    src = tmp_path / "pdfs"
    src.mkdir()
    make_pdf(src / "a.pdf", ["text"])  # val: 1 page fits 0.5 of 3, b's 2 do not
    make_pdf(src / "b.pdf", ["text", "text"])
    out = tmp_path / "out"
    args = ["--pdf-dir", str(src), "--out", str(out), "--val-fraction", "0.5"]
    real, calls = pages.kept_pages, []

    def crash_in_val(docs, *a, **k):
        calls.append(docs)
        if len(calls) == 2:  # the val split
            raise KeyboardInterrupt
        return real(docs, *a, **k)
    monkeypatch.setattr(pages, "kept_pages", crash_in_val)
    with pytest.raises(KeyboardInterrupt):
        pages.main(args)
    assert not (out / "train" / "index.json").exists() and not (out / "pages_summary.json").exists()
    assert not Path(f"{out}.incomplete").exists()
    monkeypatch.undo()
    assert pages.main(args) == 0
    s = json.loads((out / "pages_summary.json").read_text())
    assert s["written"] == 3 and len(mds_ids(out / "train")) == 2 and mds_ids(out / "val") == ["a.pdf#p1"]
