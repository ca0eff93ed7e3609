"""PDF folders → unified OCR records, one per page, with poppler-utils (pdfinfo, pdftoppm, pdftotext).

Notable features:
- every page of every `*.pdf` under a folder (sorted, recursive), id `"<relpath>#p<N>"` (N from 1);
- page image: `pdftoppm -r 144 -png` (144 dpi, the reference's render, docs/FACTS.md "Pixels": a US-letter page is 1224x1584);
- page text: `pdftotext` in its DEFAULT mode, not `-layout`. `-layout` reproduces the physical layout
  with runs of spaces and reads multi-column pages line by line ACROSS the columns; the default mode
  follows poppler's reading-order analysis (column by column), which is the natural-reading-order
  transcription an OCR model should learn. `-raw` (content-stream order) is often not reading order;
- a broken PDF, a page that fails to render, or a page without a text layer (a scan) yields an error
  record `{"id", "source", "error": reason}` instead of raising, so a conversion reports it and goes on;
- every poppler call has a timeout: a pathological PDF cannot hang a conversion.

This is the one poppler wrapper (`sample` renders PDF pages and `tasks/olmocr.py` single-page PDFs through it).
`nanoocr.eval.pages` is a second PDF ingestion path ON PURPOSE, built on this module's `page_count`,
`page_record` and `bounded_map`: the `pdf:` source here converts EVERY page of the user's own PDFs, as they
are (a page without text is a reported error record); pages.py builds a curated real-page set from
documentation trees: `.pdf.gz` too, duplicate files once, only text-dominant pages, split by document.
"""
from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

from nanoocr.data.records import OCR_PROMPT, qa

DPI = 144
TIMEOUT_S = 120


class PopplerError(RuntimeError):
    """A poppler tool failed; the message is its last stderr line."""


def _run(args: list[str]) -> bytes:
    try:
        proc = subprocess.run(args, capture_output=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise PopplerError(f"{args[0]} timed out after {TIMEOUT_S} s")
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise PopplerError(f"{args[0]} exit {proc.returncode}: {lines[-1] if lines else 'no message'}")
    return proc.stdout


def page_count(path) -> int:
    """Number of pages from `pdfinfo` (raises PopplerError for a file poppler cannot open)."""
    for line in _run(["pdfinfo", str(path)]).decode("utf-8", "replace").splitlines():
        if line.startswith("Pages:"):
            return int(line.split()[1])
    raise PopplerError("pdfinfo printed no page count")


def render_page(path, page: int, dpi: int = DPI) -> bytes:
    """PNG bytes of 1-based `page` (pdftoppm writes to stdout when given no output root)."""
    data = _run(["pdftoppm", "-r", str(dpi), "-png", "-f", str(page), "-l", str(page), str(path)])
    if not data:
        raise PopplerError(f"pdftoppm produced no image for page {page}")
    return data


def page_text(path, page: int) -> str:
    """UTF-8 text of 1-based `page` in reading order (see the module docstring for why not -layout)."""
    out = _run(["pdftotext", "-enc", "UTF-8", "-f", str(page), "-l", str(page), str(path), "-"])
    # pdftotext ends every page with a form feed; trailing whitespace carries no information.
    return out.decode("utf-8").replace("\f", "").strip()


def page_record(path, page: int, rid: str, dpi: int = DPI, source: str = "pdf") -> dict:
    """The record for one page, or an error record saying why there is none."""
    try:
        text = page_text(path, page)
        png = render_page(path, page, dpi)
    except (PopplerError, UnicodeDecodeError) as e:
        return {"id": rid, "source": source, "error": f"PDF page failed: {e}"}
    if not text:
        return {"id": rid, "source": source, "error": "PDF page has no text layer (scanned or blank page)"}
    return qa(OCR_PROMPT, text, png, rid, source)


def bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: list, workers: int) -> Iterator:
    """`pool.map(fn, items)` in order, 4 * workers items at a time: Executor.map submits everything at once,
    which would hold every rendered page in memory."""
    for start in range(0, len(items), 4 * workers):
        yield from pool.map(fn, items[start:start + 4 * workers])


def pdf_pages(root, dpi: int = DPI, source: str = "pdf", workers: int = 1) -> Iterator[dict]:
    """One record per page of every PDF under `root` (or the single PDF `root`), in order; errors become records.

    `workers` pages are rendered at once: threads are enough because poppler runs in child processes."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix.lower() == ".pdf")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path in files:
            rel = path.name if root.is_file() else path.relative_to(root).as_posix()
            try:
                n = page_count(path)
            except (PopplerError, ValueError) as e:
                yield {"id": rel, "source": source, "error": f"unreadable PDF: {e}"}
                continue
            yield from bounded_map(pool, lambda p: page_record(path, p, f"{rel}#p{p}", dpi, source),
                                   list(range(1, n + 1)), workers)
