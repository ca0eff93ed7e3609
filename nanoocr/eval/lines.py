"""Real held-out text-line images with ground truth, cut from real PDFs: an MDS eval set like every other.

    python -m nanoocr.eval.lines --pdf DIR_OR_FILE --out DIR [--dpi 150] [--max-pages-per-pdf N]
        [--max-lines N] [--min-chars 8] [--max-words N] [--seed 0]

For each page: `pdftotext -bbox-layout` gives the text layer as XHTML, `<line xMin yMin xMax yMax>` elements
(PDF points, origin top left) holding `<word>` elements; `pdftoppm -r DPI -png` renders the page; each line
box, widened by MARGIN_X_PT / MARGIN_Y_PT, is cropped from the render. A record is
`qa(OCR_PROMPT, words joined by single spaces, crop PNG, "<pdf>#p<page>:l<line>", "lines")`.
With --max-words N a longer line is cut, at word boundaries, into consecutive segments of N words (the last
may be shorter), each cropped from the union of its words' boxes and named "<pdf>#p<page>:l<line>s<k>": short
real text spans, the size of a model's training lines; every segment is then a candidate like a line.

Output: DIR is written by `nanoocr.data.convert.convert`, so it is exactly what `convert_to_mds` writes (MDS
shards, rejected.jsonl, summary.json with read == written + rejected, published only once complete; when
nothing is written the reports go to DIR.rejected/ and the exit code is 1). EVERY line read is accounted for:
a line that is not kept is an error record, rejected with its reason; so is a PDF or a page that yields no
line at all (one rejection each). summary.json's `by_source` has the counts per PDF, `by_reason` per kind:
    unreadable PDF     pdfinfo cannot open the file (not a PDF, damaged, encrypted), named by its path;
    PDF page failed    pdftotext or pdftoppm failed on that page;
    no text layer      a page without any text (scanned or blank);
    too short          fewer than --min-chars characters: page numbers, bullets, stray labels;
    non-printable text a control, private-use or U+FFFD character: a font without a usable ToUnicode
                       map, whose "text" is not what the image shows;
    empty box          a box under 2 px wide or high at --dpi, or outside the page;
    vertical text      a box taller than wide: rotated or vertical text, not a line to read left to right;
    duplicate text     the same text as a line kept earlier (running headers and footers repeat on every
                       page and would weigh the set);
    not sampled        more candidate lines than --max-lines: a seeded sample of them is kept (--seed);
    blank crop         the crop holds no visible ink (less than BLANK_RANGE grey levels between its darkest
                       and lightest pixel): an invisible text layer, e.g. an OCR layer over a blank area;
    plus what `validate_record` refuses (an image larger than the bounds...).

Notable features:
- PDFs are found as `nanoocr.eval.pages` finds them (`*.pdf` and `*.pdf.gz`, duplicates read once), and a
  capped PDF contributes pages evenly spaced through it (`pages.pick_pages`); get real ones from Debian
  documentation packages as pages.py's docstring shows (`apt-get download bash-doc`, `dpkg -x`);
- deterministic: the same PDFs and options give the same lines in the same order; the --max-lines sample is
  `random.Random(seed).sample` over the candidates in (PDF, page, line) order;
- text checks come first, then sampling, then only the pages holding a sampled line are rendered;
- the Latin ligature characters (U+FB00-FB06) pdftotext may emit become their letters ("ﬁ" -> "fi"):
  the image shows those letters and a model writes them so.
"""
from __future__ import annotations

import argparse
import io
import random
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from nanoocr.data.records import OCR_PROMPT, qa

DPI = 150
MIN_CHARS = 8
# White space kept around a line box: 2 pt (~4 px at 150 dpi) left and right; 0.5 pt above and below, because
# pdftotext's box already spans the font's ascent and descent and the next line's box is ~2 pt away.
MARGIN_X_PT, MARGIN_Y_PT = 2.0, 0.5
BLANK_RANGE = 60     # grey levels between darkest and lightest pixel below which a crop shows no text
SOURCE = "lines"
XHTML = "{http://www.w3.org/1999/xhtml}"
LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st",
             "\ufb06": "st"}


def _box(el) -> tuple | None:
    """An element's (xMin, yMin, xMax, yMax) in points, or None when it has none."""
    values = [el.get(k) for k in ("xMin", "yMin", "xMax", "yMax")]
    return None if None in values else tuple(float(v) for v in values)


def parse_bbox_layout(xhtml: str) -> list[dict]:
    """Pages of `pdftotext -bbox-layout` output: [{"width", "height", "lines": [{"box": (x0, y0, x1, y1),
    "text"}]}], coordinates in PDF points; a line's text is its words joined by single spaces."""
    root = ET.fromstring(xhtml)
    pages = []
    for page in root.iter(f"{XHTML}page"):
        lines = []
        for line in page.iter(f"{XHTML}line"):
            words = [("".join(LIGATURES.get(ch, ch) for ch in (w.text or "").strip()), _box(w))
                     for w in line.iter(f"{XHTML}word")]
            words = [w for w in words if w[0]]
            text = " ".join(w for w, _ in words)
            box = tuple(float(line.get(k)) for k in ("xMin", "yMin", "xMax", "yMax"))
            lines.append({"box": box, "text": text, "words": words})
        pages.append({"width": float(page.get("width")), "height": float(page.get("height")), "lines": lines})
    return pages


def page_lines(path: Path, page: int) -> dict:
    """The one page of parse_bbox_layout for 1-based `page` of `path` (PopplerError when poppler fails)."""
    from nanoocr.data.pdf import PopplerError, _run
    out = _run(["pdftotext", "-bbox-layout", "-enc", "UTF-8", "-f", str(page), "-l", str(page), str(path), "-"])
    try:
        pages = parse_bbox_layout(out.decode("utf-8"))
    except (ET.ParseError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise PopplerError(f"pdftotext -bbox-layout output unreadable: {e}")
    if len(pages) != 1:
        raise PopplerError(f"pdftotext -bbox-layout gave {len(pages)} pages for page {page}")
    return pages[0]


def text_reason(text: str, box: tuple, page_size: tuple[float, float], dpi: int, min_chars: int) -> str | None:
    """Why a line is not kept, from its text and box alone (see the module docstring), or None."""
    bad = next((ch for ch in text if not ch.isprintable() or ch == "\ufffd"), None)
    if bad is not None:
        return f"non-printable text: U+{ord(bad):04X} at character {text.index(bad)}"
    if len(text) < min_chars:
        return f"too short: {len(text)} characters < --min-chars {min_chars}"
    x0, y0, x1, y1 = box
    scale = dpi / 72.0
    w, h = (x1 - x0) * scale, (y1 - y0) * scale
    if w < 2 or h < 2 or x1 <= 0 or y1 <= 0 or x0 >= page_size[0] or y0 >= page_size[1]:
        return f"empty box: {w:.1f}x{h:.1f} px at ({x0:.1f}, {y0:.1f}) pt"
    if h > w:
        return f"vertical text: box {w:.0f}x{h:.0f} px is taller than wide"
    return None


def crop_line(page_png: bytes, page_size: tuple[float, float], box: tuple) -> tuple[bytes | None, str | None]:
    """(PNG of the line box plus its margins, None) or (None, "blank crop: ...")."""
    from PIL import Image
    page = Image.open(io.BytesIO(page_png))
    sx, sy = page.width / page_size[0], page.height / page_size[1]  # the render's own scale: no rounding drift
    x0, y0, x1, y1 = box
    rect = (max(0, int((x0 - MARGIN_X_PT) * sx)), max(0, int((y0 - MARGIN_Y_PT) * sy)),
            min(page.width, int((x1 + MARGIN_X_PT) * sx) + 1), min(page.height, int((y1 + MARGIN_Y_PT) * sy) + 1))
    crop = page.crop(rect)
    lo, hi = crop.convert("L").getextrema()
    if hi - lo < BLANK_RANGE:
        return None, f"blank crop: grey levels {lo}-{hi} (less than {BLANK_RANGE} apart), no visible text"
    buf = io.BytesIO()
    crop.save(buf, format="PNG")  # no timestamp chunk: the same PDF gives the same bytes
    return buf.getvalue(), None


def _error(rid: str, reason: str) -> dict:
    return {"id": rid, "source": SOURCE, "error": reason}


def segments(line: dict, max_words: int | None) -> list[tuple[str, dict]]:
    """[(suffix, {"box", "text"})]: the line itself, or with `max_words` its consecutive word groups."""
    words = line.get("words") or []
    if not max_words or len(words) <= max_words or any(b is None for _, b in words):  # no word boxes: kept whole
        return [("", line)]
    out = []
    for k in range(0, len(words), max_words):
        group = words[k:k + max_words]
        box = (min(b[0] for _, b in group), min(b[1] for _, b in group),
               max(b[2] for _, b in group), max(b[3] for _, b in group))
        out.append((f"s{k // max_words + 1}", {"box": box, "text": " ".join(w for w, _ in group)}))
    return out


def scan(docs: list[tuple[str, Path]], max_pages: int | None, min_chars: int, dpi: int,
         verbose: bool = True, max_words: int | None = None) -> dict[str, list[dict]]:
    """Pass 1, text only: {document: [item]} in page and line order, each item either an error record or a
    candidate {"id", "path", "page", "page_size", "box", "text"}."""
    from nanoocr.data.pdf import PopplerError, page_count
    from nanoocr.eval.pages import pick_pages
    items: dict[str, list[dict]] = {}
    seen_text: set[str] = set()
    for doc, path in docs:
        items[doc] = out = []
        try:
            n = page_count(path)
        except (PopplerError, ValueError) as e:
            out.append(_error(doc, f"unreadable PDF: {doc}: {e}"))
            if verbose:
                print(f"[rejected] {doc}: unreadable PDF: {e}", file=sys.stderr)
            continue
        if n == 0:
            out.append(_error(doc, f"unreadable PDF: {doc}: no pages"))
        for page in pick_pages(n, max_pages):
            pid = f"{doc}#p{page}"
            try:
                layout = page_lines(path, page)
            except PopplerError as e:
                out.append(_error(pid, f"PDF page failed: {e}"))
                continue
            if not any(line["text"] for line in layout["lines"]):
                out.append(_error(pid, f"no text layer: page {page} of {doc} has no text (scanned or blank)"))
                continue
            size = (layout["width"], layout["height"])
            for k, whole in enumerate(layout["lines"], start=1):
                for suffix, line in segments(whole, max_words):
                    rid, text = f"{pid}:l{k}{suffix}", line["text"]
                    reason = text_reason(text, line["box"], size, dpi, min_chars)
                    if reason is None and text in seen_text:
                        reason = "duplicate text: the same as an earlier line"
                    if reason:
                        out.append(_error(rid, reason))
                        continue
                    seen_text.add(text)
                    out.append({"id": rid, "path": path, "page": page, "page_size": size, "box": line["box"],
                                "text": text})
    return items


def sample_lines(items: dict[str, list[dict]], max_lines: int | None, seed: int) -> None:
    """Turn all but a seeded sample of `max_lines` candidates into "not sampled" rejections, in place."""
    where = [(doc, i) for doc, its in items.items() for i, it in enumerate(its) if "error" not in it]
    if max_lines is None or len(where) <= max_lines:
        return
    keep = set(random.Random(seed).sample(range(len(where)), max_lines))
    for j, (doc, i) in enumerate(where):
        if j not in keep:
            items[doc][i] = _error(items[doc][i]["id"], f"not sampled: {len(where)} candidate lines > --max-lines "
                                                        f"{max_lines} (seed {seed})")


def render(items: list[dict], dpi: int) -> Iterator[dict]:
    """Pass 2: the records (or error records) of one document's items, rendering each needed page once."""
    from nanoocr.data.pdf import PopplerError, render_page
    cached: tuple[int, bytes | None, str | None] | None = None
    for it in items:
        if "error" in it:
            yield it
            continue
        if cached is None or cached[0] != it["page"]:  # items come in page order: one render per page
            try:
                cached = (it["page"], render_page(it["path"], it["page"], dpi), None)
            except PopplerError as e:
                cached = (it["page"], None, f"PDF page failed: {e}")
        if cached[2]:
            yield _error(it["id"], cached[2])
            continue
        png, reason = crop_line(cached[1], it["page_size"], it["box"])
        yield _error(it["id"], reason) if reason else qa(OCR_PROMPT, it["text"], png, it["id"], SOURCE)


def find_documents(pdf: Path, staging: Path) -> list[tuple[str, Path]]:
    """[(document id, readable PDF path)]: the file itself, or every PDF under the folder (pages.find_pdfs)."""
    from nanoocr.eval.pages import find_pdfs
    if pdf.is_file():
        return [(pdf.name, _gunzip(pdf, staging) if pdf.name.lower().endswith(".gz") else pdf)]
    return find_pdfs(pdf, staging)


def _gunzip(path: Path, staging: Path) -> Path:
    import gzip
    plain = staging / "single.pdf"
    try:
        plain.write_bytes(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError):
        plain.write_bytes(b"")  # pdfinfo then rejects it under its own name
    return plain


def build(pdf: Path, out: str, dpi: int = DPI, max_pages: int | None = None, max_lines: int | None = None,
          min_chars: int = MIN_CHARS, seed: int = 0, verbose: bool = True, max_words: int | None = None) -> dict:
    """Write the line set of `pdf` (a file or a folder) to the MDS folder `out`; returns convert's summary."""
    from nanoocr.data.convert import convert
    with tempfile.TemporaryDirectory(prefix="nanoocr-lines-") as staging:
        docs = find_documents(pdf, Path(staging))
        items = scan(docs, max_pages, min_chars, dpi, verbose, max_words)
        sample_lines(items, max_lines, seed)
        inputs = [(doc, render(its, dpi), None) for doc, its in items.items()]
        return convert(inputs, out, compression="zstd")


def main(argv=None) -> int:
    from nanoocr.data.convert import REJECTED_JSONL, SUMMARY_JSON, check_out, reports_at
    ap = argparse.ArgumentParser(prog="python -m nanoocr.eval.lines", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pdf", required=True, help="a PDF, or a folder searched recursively for *.pdf and *.pdf.gz")
    ap.add_argument("--out", required=True, help="new or empty folder for the MDS line set")
    ap.add_argument("--dpi", type=int, default=DPI, help="render resolution (150: 10 pt text is ~21 px high)")
    ap.add_argument("--max-pages-per-pdf", type=int, default=None, help="at most N pages per PDF, evenly spaced")
    ap.add_argument("--max-lines", type=int, default=None, help="keep a seeded sample of at most N lines")
    ap.add_argument("--min-chars", type=int, default=MIN_CHARS, help="reject lines with fewer characters")
    ap.add_argument("--max-words", type=int, default=None,
                    help="cut longer lines into consecutive segments of at most N words")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --max-lines sample")
    args = ap.parse_args(argv)
    if not Path(args.pdf).exists():
        ap.error(f"--pdf {args.pdf}: no such file or folder")
    if args.dpi < 36 or args.min_chars < 1:
        ap.error("--dpi must be >= 36 and --min-chars >= 1")
    if any(v is not None and v < 1 for v in (args.max_pages_per_pdf, args.max_lines, args.max_words)):
        ap.error("--max-pages-per-pdf, --max-lines and --max-words must be >= 1")
    for tool in ("pdfinfo", "pdftoppm", "pdftotext"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found: install poppler-utils (apt-get install poppler-utils)")
    if problem := check_out(args.out):
        ap.error(f"--out {problem}")
    try:
        s = build(Path(args.pdf), args.out, args.dpi, args.max_pages_per_pdf, args.max_lines, args.min_chars,
                  args.seed, max_words=args.max_words)
    except OSError as e:  # a full disk...: convert published nothing
        print(f"error: building {args.out} failed, nothing was written there: {e}", file=sys.stderr)
        return 1
    for doc, c in s["by_source"].items():
        print(f"{c['written']:6d} written {c['rejected']:6d} rejected  {doc}")
    print(f"read {s['read']}, written {s['written']}, rejected {s['rejected']} {s['by_reason']} -> {args.out}")
    if not s["written"]:
        where = reports_at(args.out, 0)
        print(f"error: no line written (every rejection: {where}/{REJECTED_JSONL}, the counts: {where}/{SUMMARY_JSON})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
