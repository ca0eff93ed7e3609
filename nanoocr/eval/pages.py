"""Real-page OCR set builder: a folder of PDFs → text-dominant page images + text, split by document.

    python -m nanoocr.pages --pdf-dir DIR --out DIR [--max-pages N] [--val-fraction 0.1] [--seed S]
        [--workers N] [--dpi 144]

Writes `DIR/train/` and `DIR/val/` (MDS folders, each with its own rejected.jsonl and summary.json, written
by `nanoocr.data.convert.write_mds`) and `DIR/pages_summary.json`: per-document counts, every filtered
page with its reason and measurements, and read == written + filtered (asserted).

DIR appears only complete, the way convert_to_mds publishes (`build_data` takes DIR/train/index.json for a
built set): everything is written into DIR.incomplete beside it, renamed to DIR at the end; a crash leaves no
DIR/train, a kill -9 leaves DIR.incomplete, named and rebuilt by the next run. When no page is kept (exit 1)
the reports (pages_summary.json, train/ and val/ rejected.jsonl and summary.json) go to DIR.rejected/ and DIR
stays empty. A failed write (e.g. a full disk) exits 1 naming DIR and the OS error.

Notable features:
- every `*.pdf` and `*.pdf.gz` under DIR (Debian compresses documentation; .gz files are unpacked to a
  temporary folder), duplicates (the same bytes under two names, e.g. a package's compatibility
  symlinks) read once; page image (`pdftoppm`, 144 dpi) and text (`pdftotext`, reading order) from
  `nanoocr.data.pdf`, rendered by --workers concurrent poppler processes (this builder is the curated
  counterpart of the `pdf:` conversion source, which keeps every page: see `nanoocr.data.pdf`);
- split BY DOCUMENT (no document in both train and val): documents are shuffled with --seed and put into
  val first-fit while they fit in val-fraction of the pages (the smallest document when none fits), so a
  model is validated on manuals it never saw, not on neighbouring pages of the same manual;
- --max-pages N reads at most N pages per document, evenly spaced through it (a capped manual contributes
  body pages, not only its title page and table of contents);
- the text-dominant filter (thresholds below), each rejection recorded with its numbers:
    * "no text layer"  pdftotext finds nothing: a blank or scanned page, no ground truth to learn from;
    * "near-empty"     fewer than MIN_CHARS (200) non-space characters: title pages, part dividers, "this page
                       intentionally left blank". A full page of body text has 1500-4000; 200 is about three
                       lines, too little text for the page image to be an OCR sample rather than a layout one;
    * "figure-dominant" more than MAX_INK_PER_CHAR (40) pt² of ink per text character. Ink = pixels
                       darker than INK_LEVEL (160/255), measured in pt² so the rule does not depend on --dpi.
                       Typeset text costs 4-20 pt² of ink per character (8-10 on most pages; up to ~19 on
                       bold-heavy ones; measured on 90 pages of the Debian manuals below), and a
                       generated page with a 50x50 image and a 5-line caption measures ~150, so a page
                       above 40 carries mostly ink that the text layer does not describe: plots, diagrams,
                       screenshots, photos. Such a page's pdftotext output is a caption and some axis
                       labels, a wrong target for "Free OCR.". Known blind spot: thin line plots have little
                       ink, so a half-page line plot above a full half page of text is kept;
    * "too much ink"   more than MAX_INK_FRACTION (0.35) of the page is ink whatever the text: full-page
                       images with an invisible text layer, dark backgrounds.

Debian documentation packages with good text pages (typeset manuals, one column, English). Fetch them
without installing, unpack, and point --pdf-dir at the tree (or `apt-get install <pkg>`: PDFs land under
/usr/share/doc and /usr/share/<pkg>):

    mkdir debdocs && cd debdocs && apt-get download bash-doc debian-policy developers-reference
    for d in *.deb; do dpkg -x "$d" .; done && cd ..
    python -m nanoocr.pages --pdf-dir debdocs --out data/debian_pages --workers 2

Text-dominant pages (this filter, 144 dpi, Debian 12 "bookworm" versions; all pages unless "sampled"):

    package               PDF(s)                                    pages  kept  filtered (why)
    bash-doc              bash.pdf, bashref.pdf                       283   282  1 near-empty (title page)
    debian-policy         policy.pdf.gz, fhs/fhs-3.0.pdf.gz           243   218  24 near-empty, 1 no text
    developers-reference  developers-reference.pdf                    114   104  9 near-empty, 1 no text
    gnuplot-doc           gnuplot.pdf                       311 (80 sampled)  79  1 near-empty
    zsh-doc               zsh.pdf                           480 (10 sampled)   9  1 near-empty
    debian-reference-en   debian-reference.en.pdf           261 (10 sampled)   9  1 no text (cover)
    debian-faq            FAQ/debian-faq.en.pdf.gz           73 (10 sampled)   7  1 near-empty, 2 no text

The first three give 604 text-dominant pages (bash-doc + debian-policy alone: 500). bash-doc ships its PDFs
twice (bash-doc/*.pdf are symlinks to bash/*.pdf): read once. These manuals have almost no figures, so on
them the figure rules fire rarely; tests/test_pages.py checks them on generated figure and dark pages.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import shutil
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

MIN_CHARS = 200
MAX_INK_PER_CHAR = 40.0      # pt² of ink per non-space text character
MAX_INK_FRACTION = 0.35
INK_LEVEL = 160              # grey level below which a pixel counts as ink (anti-aliased edges are lighter)


def find_pdfs(root: Path, staging: Path) -> list[tuple[str, Path]]:
    """[(document id = path relative to root, readable .pdf path)], sorted, duplicates (same bytes) once.

    `.pdf.gz` files are decompressed into `staging` (poppler reads only plain files)."""
    docs, seen = [], set()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith((".pdf", ".pdf.gz"))):
        data = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                data = b""  # page_count() then reports the file as unreadable, under its own name
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        rel = path.relative_to(root).as_posix()
        if path.name.lower().endswith(".gz"):
            plain = staging / f"{len(docs)}.pdf"
            plain.write_bytes(data)
            path = plain
        docs.append((rel, path))
    return docs


def pick_pages(n_pages: int, max_pages: int | None) -> list[int]:
    """1-based page numbers: all, or `max_pages` evenly spaced through the document."""
    if max_pages is None or n_pages <= max_pages:
        return list(range(1, n_pages + 1))
    return [1 + (i * n_pages) // max_pages for i in range(max_pages)]


def split_documents(pages: dict[str, int], val_fraction: float, seed: int) -> set[str]:
    """Document ids for val: shuffled, first-fit into val_fraction of all pages; never every document."""
    if val_fraction <= 0 or len(pages) < 2:
        return set()
    docs = sorted(pages)
    random.Random(seed).shuffle(docs)
    target = val_fraction * sum(pages.values())
    val, total = set(), 0
    for doc in docs:
        if total + pages[doc] <= target and len(val) < len(docs) - 1:
            val.add(doc)
            total += pages[doc]
    if not val:  # every document is bigger than the budget: the smallest one is the closest to it
        val.add(min(docs, key=lambda d: (pages[d], d)))
    return val


def measure(text: str, png: bytes, dpi: int) -> dict:
    """Text characters, ink fraction of the page and ink area (pt²) per character."""
    import numpy as np
    from PIL import Image
    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    ink = int((grey < INK_LEVEL).sum())
    chars = sum(1 for ch in text if not ch.isspace())
    pt2_per_px = (72.0 / dpi) ** 2
    return {"chars": chars, "ink_fraction": round(ink / grey.size, 4),
            "ink_per_char": round(ink * pt2_per_px / max(chars, 1), 2)}


def filter_reason(m: dict) -> str | None:
    """Why a page is not text-dominant (see the module docstring), or None to keep it."""
    if m["chars"] < MIN_CHARS:
        return f"near-empty: {m['chars']} characters < {MIN_CHARS}"
    if m["ink_fraction"] > MAX_INK_FRACTION:
        return f"too much ink: {m['ink_fraction']:.0%} of the page > {MAX_INK_FRACTION:.0%}"
    if m["ink_per_char"] > MAX_INK_PER_CHAR:
        return f"figure-dominant: {m['ink_per_char']} pt² of ink per character > {MAX_INK_PER_CHAR}"
    return None


def classify_page(path: Path, page: int, rid: str, dpi: int) -> tuple[dict | None, dict | None]:
    """(record to write, None) or (None, {"id", "reason", measurements...})."""
    from nanoocr.data.pdf import page_record
    rec = page_record(path, page, rid, dpi=dpi, source="pages")
    if "error" in rec:
        reason = rec["error"]
        if "no text layer" in reason:
            reason = "no text layer: blank or scanned page"
        return None, {"id": rid, "reason": reason}
    try:
        m = measure(rec["messages"][1]["content"], rec["image"], dpi)
    except Exception as e:  # e.g. PIL's decompression-bomb guard on a poster-sized page: that page only
        return None, {"id": rid, "reason": f"rendered page unreadable: {type(e).__name__}: {e}"}
    reason = filter_reason(m)
    if reason:
        return None, {"id": rid, "reason": reason, **m}
    return rec, None


def kept_pages(docs: list[tuple[str, Path, list[int]]], dpi: int, workers: int, filtered: list,
               counts: dict) -> Iterator[dict]:
    """Records of the text-dominant pages of `docs`; filtered pages go to `filtered`, counts per document."""
    from nanoocr.data.pdf import bounded_map
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for doc, path, pages in docs:
            for rec, rej in bounded_map(pool, lambda p: classify_page(path, p, f"{doc}#p{p}", dpi), pages, workers):
                counts[doc]["read"] += 1
                if rej:
                    filtered.append({**rej, "document": doc})
                    counts[doc]["filtered"] += 1
                else:
                    counts[doc]["written"] += 1
                    yield rec


def build(pdf_dir: Path, out: Path, max_pages: int | None = None, val_fraction: float = 0.1, seed: int = 0,
          workers: int = 1, dpi: int = 144) -> dict:
    """Build out/train, out/val and out/pages_summary.json, published at once (see the module docstring);
    returns the summary."""
    from nanoocr.data.convert import publish, staging_folder
    stage = staging_folder(str(out))
    try:
        summary = build_into(pdf_dir, stage, max_pages, val_fraction, seed, workers, dpi)
        publish(stage, str(out), complete=summary["written"] > 0)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone once published; what a failed build left otherwise
    return summary


def build_into(pdf_dir: Path, out: Path, max_pages: int | None, val_fraction: float, seed: int, workers: int,
               dpi: int) -> dict:
    """Write train/, val/ and pages_summary.json into the new folder `out`; returns the summary."""
    from nanoocr.data.convert import REJECTED_JSONL, write_mds
    from nanoocr.data.pdf import PopplerError, page_count
    with tempfile.TemporaryDirectory(prefix="nanoocr-pages-") as staging:
        docs, filtered, unreadable, in_pdf = {}, [], [], {}
        for doc, path in find_pdfs(pdf_dir, Path(staging)):
            try:
                in_pdf[doc] = page_count(path)
            except (PopplerError, ValueError) as e:
                unreadable.append({"document": doc, "reason": f"unreadable PDF: {e}"})
                continue
            docs[doc] = (path, pick_pages(in_pdf[doc], max_pages))
        val = split_documents({d: len(p) for d, (_, p) in docs.items()}, val_fraction, seed)
        counts = {d: Counter(read=0, written=0, filtered=0) for d in docs}
        splits = {}
        for split in ("train", "val"):
            chosen = [(d, path, pages) for d, (path, pages) in docs.items() if (d in val) == (split == "val")]
            records = kept_pages(chosen, dpi, workers, filtered, counts)
            splits[split] = write_mds([(f"pages:{split}", records, None)], out / split, compression="zstd")
            # A page that passed the filter but failed validation (write_mds' rejected.jsonl) is filtered too.
            for line in (out / split / REJECTED_JSONL).read_text().splitlines():
                rej = json.loads(line)
                doc = rej["id"].rsplit("#p", 1)[0]
                filtered.append({"id": rej["id"], "reason": f"invalid record: {rej['reason']}", "document": doc})
                counts[doc]["written"] -= 1
                counts[doc]["filtered"] += 1
    written = splits["train"]["written"] + splits["val"]["written"]
    summary = {
        "read": sum(c["read"] for c in counts.values()), "written": written, "filtered": len(filtered),
        "train": {"documents": sorted(d for d in docs if d not in val), "pages": splits["train"]["written"]},
        "val": {"documents": sorted(val), "pages": splits["val"]["written"]},
        "documents": {d: {"split": "val" if d in val else "train", "pages_in_pdf": in_pdf[d], **counts[d]}
                      for d in docs},
        "unreadable_documents": unreadable,
        "by_reason": dict(Counter(f["reason"].split(":")[0] for f in filtered)),
        "thresholds": {"min_chars": MIN_CHARS, "max_ink_per_char_pt2": MAX_INK_PER_CHAR,
                       "max_ink_fraction": MAX_INK_FRACTION, "ink_level": INK_LEVEL, "dpi": dpi},
        "filtered_pages": filtered,
    }
    assert summary["read"] == summary["written"] + summary["filtered"], f"count mismatch: {summary}"
    assert all(c["read"] == c["written"] + c["filtered"] for c in counts.values()), f"count mismatch: {counts}"
    (out / "pages_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nanoocr.pages", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pdf-dir", required=True, help="folder searched recursively for *.pdf and *.pdf.gz")
    ap.add_argument("--out", required=True, help="new or empty folder for train/, val/ and pages_summary.json")
    ap.add_argument("--max-pages", type=int, default=None, help="read at most N pages per document (evenly spaced)")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="share of pages (by whole documents) for val")
    ap.add_argument("--seed", type=int, default=0, help="seed of the document shuffle for the split")
    ap.add_argument("--workers", type=int, default=1, help="concurrent poppler processes")
    ap.add_argument("--dpi", type=int, default=144, help="render resolution (144: a US-letter page is 1224x1584)")
    args = ap.parse_args(argv)
    if not Path(args.pdf_dir).is_dir():
        ap.error(f"--pdf-dir {args.pdf_dir}: no such folder")
    if not 0.0 <= args.val_fraction < 1.0:
        ap.error("--val-fraction must be in [0, 1)")
    if args.workers < 1 or args.dpi < 36 or (args.max_pages is not None and args.max_pages < 1):
        ap.error("--workers and --max-pages must be >= 1, --dpi >= 36")
    for tool in ("pdfinfo", "pdftoppm", "pdftotext"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found: install poppler-utils (apt-get install poppler-utils)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        ap.error(f"--out {out}: exists and is not an empty folder (MDS shards are never mixed with older ones)")
    try:
        s = build(Path(args.pdf_dir), out, args.max_pages, args.val_fraction, args.seed, args.workers, args.dpi)
    except OSError as e:  # a full disk...: nothing was published (build removes what it had written)
        print(f"error: building {out} failed, nothing was written there: {e}", file=sys.stderr)
        return 1
    for doc, c in s["documents"].items():
        print(f"{c['split']:5s} {c['written']:5d}/{c['read']:<5d} {doc}")
    print(f"read {s['read']} pages, written {s['written']} (train {s['train']['pages']}, val {s['val']['pages']}), "
          f"filtered {s['filtered']} {s['by_reason']} -> {out}")
    if not s["written"]:
        from nanoocr.data.convert import reports_at
        print(f"error: no text-dominant page found (the reports: {reports_at(str(out), 0)})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
