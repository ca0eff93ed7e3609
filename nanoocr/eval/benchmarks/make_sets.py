"""Small real-page benchmark sets in Fox's, OmniDocBench's and olmOCR-Bench's own on-disk formats, built from
real PDFs, with the ground truth taken from each PDF's text layer.

    python -m nanoocr.eval.benchmarks.make_sets --pdf DIR_OR_FILE --out DIR
        [--format fox omnidocbench olmocr-bench] [--dpi 150] [--max-pages N] [--seed 0]

Writes (docs/FACTS.md "Benchmark formats" has the fields and where they come from):
    DIR/fox/en_page_ocr.json + en_pdf_png/<name>.png       [{"image", "conversations": [human, gpt: GT]}]
    DIR/omnidocbench/OmniDocBench.json + images/<name>.png  per page {"layout_dets", "page_info", "extra"}
    DIR/olmocr-bench/pages.jsonl + pdfs/pages/<name>.pdf    present / absent / order tests on one-page PDFs
    DIR/summary.json, DIR/rejected.jsonl                    read == written + rejected, every page with a reason
so that `python -m nanoocr.evaluate --benchmark NAME DIR/NAME ...` (and each benchmark's own scorer) reads them
as it reads the real benchmark. Every format gets the same pages.

The text layer: one `pdftotext -bbox-layout` per PDF gives flows > blocks > lines > words with boxes in PDF
points, in poppler's reading order (the default-mode order `nanoocr.data.pdf` trains on). From it:
- Fox's GT: the page's lines joined by "\\n", blocks by "\\n\\n" (every block: Fox transcribes the whole page);
- OmniDocBench's blocks, one `layout_det` per poppler block: `poly` the block box in pixels of the rendered
  image, `text` its lines joined by spaces, `line_with_spans` its lines. The category comes from the geometry:
  a one-line block inside the top / bottom HEADER_BAND of the page is `page_number` (a number, arabic or
  roman), `header` or `footer` (order null, as OmniDocBench annotates them: unscored, and transcribing them
  costs nothing); a block of at most TITLE_MAX_LINES lines set TITLE_SCALE x larger than the page's median line
  is `title`; the rest `text_block`. `order` is 1, 2, ... over the scored blocks in reading order;
- olmOCR-Bench's tests: N_PRESENT `present` sentences of the page's body text (seeded), one `absent` sentence
  taken from a page of ANOTHER document (not on this page), one `order` test (a sentence of an earlier block
  `before` one of a later block); `max_diffs` = len // 50 (two edits in a 100-character sentence). Sentences
  that cross a hyphenated line end are not used (would the model join "compat-" "ible" or not?), nor ones
  that occur twice on the page (an order test must be unambiguous). Each test is checked to pass on the
  page's own GT text before it is kept. No `baseline` test is written: olmOCR's runner (and our reader)
  adds one per PDF. Each page is cut out as a one-page PDF (`pdfseparate`), `page` 1, as olmOCR-Bench ships.

Pages (one rejection each, with its reason; `summary.json` counts them per document and per reason):
    unreadable PDF     pdfinfo / pdftotext cannot read the file (one rejection for the file);
    PDF page failed    poppler failed on that page;
    no text layer      a page without any text (scanned or blank): no ground truth;
    near-empty         fewer than nanoocr.eval.pages.MIN_CHARS non-space characters (title pages, dividers);
    non-printable text a control, private-use or U+FFFD character: a font without a usable ToUnicode map;
    no test sentence   no body sentence usable as an olmOCR-Bench `present` test;
    figure-dominant / too much ink   nanoocr.eval.pages.filter_reason on the rendered page: text-dominant only;
    not sampled        beyond --max-pages: the candidates are shuffled with --seed and rendered in that order
                       until --max-pages are kept; the rest are this.
Deterministic: the same PDFs and options give the same files. DIR appears only complete (built in
DIR.incomplete, renamed at the end, as convert_to_mds publishes); when no page is kept, the reports go to
DIR.rejected/ and the exit code is 1.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

FORMATS = ("fox", "omnidocbench", "olmocr-bench")
DPI = 150
FOX_PROMPT = "<image>\nOCR this image: "   # the human turn of Fox's en_page_ocr.json (docs/FACTS.md)
OLMOCR_GROUP = "pages"                    # pages.jsonl, pdfs/pages/<name>.pdf
HEADER_BAND = 0.08                         # top / bottom share of the page height holding running heads
TITLE_SCALE, TITLE_MAX_LINES = 1.25, 2
N_PRESENT = 3
SENTENCE_CHARS = (25, 200)                 # a present / order sentence: long enough to be specific
MAX_DIFFS_PER_CHAR = 1 / 50
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_PAGE_NUMBER = re.compile(r"(\d+|[ivxlcdm]+)", re.I)
_CJK = re.compile(r"[\u4e00-\u9fff]")


# ------------------------------------------------------------------------------------------- the text layer


def parse_blocks(xhtml: str) -> list[dict]:
    """Pages of `pdftotext -bbox-layout`: [{"width", "height", "blocks": [{"box", "lines": [{"box", "text"}]}]}],
    PDF points; a line's text is its words joined by single spaces, ligatures spelled out (as
    nanoocr.eval.lines.parse_bbox_layout, which keeps lines only: the blocks are OmniDocBench's units here)."""
    from nanoocr.eval.lines import LIGATURES, XHTML
    box = lambda el: tuple(float(el.get(k)) for k in ("xMin", "yMin", "xMax", "yMax"))  # noqa: E731
    pages = []
    for page in ET.fromstring(xhtml).iter(f"{XHTML}page"):
        blocks = []
        for block in page.iter(f"{XHTML}block"):
            lines = []
            for line in block.iter(f"{XHTML}line"):
                text = " ".join(w for w in ((w.text or "").strip() for w in line.iter(f"{XHTML}word")) if w)
                if text:
                    lines.append({"box": box(line), "text": "".join(LIGATURES.get(ch, ch) for ch in text)})
            if lines:
                blocks.append({"box": box(block), "lines": lines})
        pages.append({"width": float(page.get("width")), "height": float(page.get("height")), "blocks": blocks})
    return pages


def document_layout(path: Path) -> list[dict]:
    """parse_blocks of the whole PDF in one pdftotext call (PopplerError when poppler fails)."""
    from nanoocr.data.pdf import PopplerError, _run
    try:
        return parse_blocks(_run(["pdftotext", "-bbox-layout", "-enc", "UTF-8", str(path), "-"]).decode("utf-8"))
    except (ET.ParseError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise PopplerError(f"pdftotext -bbox-layout output unreadable: {e}")


def classify(blocks: list[dict], height: float) -> list[str]:
    """OmniDocBench's category_type of each block, from the geometry alone (module docstring)."""
    heights = [ln["box"][3] - ln["box"][1] for b in blocks for ln in b["lines"]]
    median = statistics.median(heights) if heights else 0.0
    cats = []
    for b in blocks:
        text = " ".join(ln["text"] for ln in b["lines"])
        y0, y1 = b["box"][1], b["box"][3]
        in_band = y1 <= HEADER_BAND * height or y0 >= (1 - HEADER_BAND) * height
        line_h = statistics.median(ln["box"][3] - ln["box"][1] for ln in b["lines"])
        if in_band and len(b["lines"]) == 1:
            cats.append("page_number" if _PAGE_NUMBER.fullmatch(text) else
                        "header" if y1 <= HEADER_BAND * height else "footer")
        elif len(b["lines"]) <= TITLE_MAX_LINES and median and line_h >= TITLE_SCALE * median:
            cats.append("title")
        else:
            cats.append("text_block")
    return cats


def page_text(blocks: list[dict]) -> str:
    """Fox's ground truth: lines joined by newlines, blocks by blank lines."""
    return "\n\n".join("\n".join(ln["text"] for ln in b["lines"]) for b in blocks)


def sentences(block: dict) -> list[str]:
    """The block's sentences usable as olmOCR-Bench tests (module docstring)."""
    joined, spans, pos = "", [], 0
    for ln in block["lines"]:
        if joined:
            joined += " "
        joined += ln["text"]
        spans.append(len(joined))  # the line ends here
    hyphen_ends = [end for end, ln in zip(spans[:-1], block["lines"]) if ln["text"].endswith("-")]
    out = []
    for part in _SENTENCE_END.split(joined):
        start = joined.index(part, pos)
        pos = start + len(part)
        if not SENTENCE_CHARS[0] <= len(part) <= SENTENCE_CHARS[1] or len(part.split()) < 5:
            continue
        if any(start < end <= pos for end in hyphen_ends):
            continue
        out.append(part)
    return out


# ------------------------------------------------------------------------------------------------- pages


def scan(docs: list[tuple[str, Path]], verbose: bool) -> tuple[list[dict], list[dict]]:
    """Pass 1, text only: (candidate pages {"id", "doc", "path", "page", "layout", "cats", "gt", "sentences"},
    rejections {"id", "document", "reason"})."""
    from nanoocr.data.pdf import PopplerError, page_count
    from nanoocr.eval.pages import MIN_CHARS
    cands, rejected = [], []
    for doc, path in docs:
        try:
            n = page_count(path)
            layout = document_layout(path)
            if len(layout) != n:
                raise PopplerError(f"pdftotext gave {len(layout)} pages, pdfinfo {n}")
        except (PopplerError, ValueError) as e:
            rejected.append({"id": doc, "document": doc, "reason": f"unreadable PDF: {doc}: {e}"})
            if verbose:
                print(f"[rejected] {doc}: unreadable PDF: {e}", file=sys.stderr)
            continue
        for page, lay in enumerate(layout, start=1):
            pid = f"{doc}#p{page}"
            gt = page_text(lay["blocks"])
            chars = sum(1 for ch in gt if not ch.isspace())
            bad = next((ch for ch in gt if ch != "\n" and (not ch.isprintable() or ch == "\ufffd")), None)
            cats = classify(lay["blocks"], lay["height"])
            body = [s for b, c in zip(lay["blocks"], cats) if c == "text_block" for s in sentences(b)]
            reason = ("no text layer: blank or scanned page" if not chars else
                      f"near-empty: {chars} characters < {MIN_CHARS}" if chars < MIN_CHARS else
                      f"non-printable text: U+{ord(bad):04X}" if bad is not None else
                      "no test sentence: no body sentence of 25-200 characters for olmOCR-Bench" if not body else None)
            if reason:
                rejected.append({"id": pid, "document": doc, "reason": reason})
                continue
            cands.append({"id": pid, "doc": doc, "path": path, "page": page, "layout": lay, "cats": cats, "gt": gt,
                          "sentences": body})
    return cands, rejected


def choose(cands: list[dict], max_pages: int | None, dpi: int, seed: int, rejected: list[dict]) -> list[dict]:
    """Pass 2: render the candidates in seeded order, keep the text-dominant ones up to max_pages (each kept one
    gets "png" and "size"), reject the others; the kept pages come back in (document, page) order."""
    from PIL import Image
    from nanoocr.data.pdf import PopplerError, render_page
    from nanoocr.eval.pages import filter_reason, measure
    order = list(range(len(cands)))
    random.Random(seed).shuffle(order)
    kept = []
    for i in order:
        c = cands[i]
        if max_pages is not None and len(kept) >= max_pages:
            rejected.append({"id": c["id"], "document": c["doc"], "reason": f"not sampled: more text pages than "
                                                                              f"--max-pages {max_pages} (seed {seed})"})
            continue
        try:
            png = render_page(c["path"], c["page"], dpi)
            reason = filter_reason(measure(c["gt"], png, dpi))
        except (PopplerError, OSError) as e:
            png, reason = None, f"PDF page failed: {e}"
        if reason:
            rejected.append({"id": c["id"], "document": c["doc"], "reason": reason})
            continue
        kept.append({**c, "png": png, "size": Image.open(io.BytesIO(png)).size})
    return sorted(kept, key=lambda c: (c["doc"], c["page"]))


def page_name(page_id: str) -> str:
    """A file name for `doc/sub/name.pdf#p12`: `doc_sub_name_p12` (only [A-Za-z0-9._-])."""
    doc, _, page = page_id.rpartition("#p")
    doc = re.sub(r"\.pdf(\.gz)?$", "", doc, flags=re.I)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", doc).strip("_") + f"_p{page}"


# ----------------------------------------------------------------------------------------------- writers


def write_fox(out: Path, pages: list[dict]) -> None:
    (out / "en_pdf_png").mkdir(parents=True)
    entries = []
    for p in pages:
        (out / "en_pdf_png" / f"{p['name']}.png").write_bytes(p["png"])
        entries.append({"image": f"{p['name']}.png", "conversations": [{"from": "human", "value": FOX_PROMPT},
                                                                      {"from": "gpt", "value": p["gt"]}]})
    (out / "en_page_ocr.json").write_text(json.dumps(entries, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _poly(box, sx: float, sy: float) -> list[float]:
    x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    return [round(v, 2) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]  # clockwise from the top left, as theirs


def language(text: str) -> str:
    """OmniDocBench's page_attribute.language from the characters: english / simplified_chinese / en_ch_mixed."""
    cjk = len(_CJK.findall(text))
    letters = sum(ch.isalpha() for ch in text) or 1
    return "english" if not cjk else "simplified_chinese" if cjk / letters > 0.5 else "en_ch_mixed"


def write_omnidocbench(out: Path, pages: list[dict]) -> None:
    (out / "images").mkdir(parents=True)
    entries = []
    for p in pages:
        (out / "images" / f"{p['name']}.png").write_bytes(p["png"])
        w, h = p["size"]
        sx, sy = w / p["layout"]["width"], h / p["layout"]["height"]
        dets, order = [], 0
        for k, (b, cat) in enumerate(zip(p["layout"]["blocks"], p["cats"])):
            scored = cat in ("text_block", "title")
            order += scored
            dets.append({"category_type": cat, "poly": _poly(b["box"], sx, sy), "ignore": False,
                         "order": order if scored else None, "anno_id": k,
                         "text": " ".join(ln["text"] for ln in b["lines"]),
                         "line_with_spans": [{"category_type": "text_span", "poly": _poly(ln["box"], sx, sy),
                                              "text": ln["text"]} for ln in b["lines"]]})
        entries.append({"layout_dets": dets, "extra": {"relation": []},
                        "page_info": {"page_no": p["page"], "height": h, "width": w, "image_path": f"{p['name']}.png",
                                      "page_attribute": {"language": language(p["gt"]),
                                                         "data_source": "pdf_text_layer"}}})
    (out / "OmniDocBench.json").write_text(json.dumps(entries, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def olmocr_tests(p: dict, others: list[str], seed: int) -> list[dict]:
    """The page's present / absent / order tests (module docstring), each checked to pass on the page's GT."""
    from nanoocr.eval.benchmarks.olmocr_bench import check_test, normalize_text, run_test
    rng = random.Random(f"{seed}:{p['id']}")
    content = normalize_text(p["gt"])
    pdf = f"{OLMOCR_GROUP}/{p['name']}.pdf"
    unique = [s for s in dict.fromkeys(p["sentences"]) if content.count(normalize_text(s)) == 1]
    diffs = lambda *texts: int(min(len(t) for t in texts) * MAX_DIFFS_PER_CHAR)  # noqa: E731
    tests = []

    def add(kind: str, **fields) -> bool:
        t = {"pdf": pdf, "page": 1, "id": f"{p['name']}_{kind}_{sum(x['type'] == kind for x in tests):02d}",
             "type": kind, **fields}
        check_test(t)
        if run_test(t, p["gt"])[0]:
            tests.append(t)
            return True
        return False

    for s in rng.sample(unique, min(N_PRESENT, len(unique))):
        add("present", text=s, max_diffs=diffs(s))
    for s in rng.sample(others, len(others)):
        if add("absent", text=s, max_diffs=diffs(s)):
            break
    block_of = {s: k for k, b in enumerate(p["layout"]["blocks"]) if p["cats"][k] == "text_block"
                for s in sentences(b)}
    pairs = [(a, b) for a in unique for b in unique if block_of[a] < block_of[b]]
    if pairs:
        a, b = rng.choice(pairs)
        add("order", before=a, after=b, max_diffs=diffs(a, b))
    return tests


def write_olmocr_bench(out: Path, pages: list[dict], seed: int) -> None:
    from nanoocr.data.pdf import _run
    (out / "pdfs" / OLMOCR_GROUP).mkdir(parents=True)
    lines = []
    for p in pages:
        _run(["pdfseparate", "-f", str(p["page"]), "-l", str(p["page"]), str(p["path"]),
              str(out / "pdfs" / OLMOCR_GROUP / f"{p['name']}.pdf")])
        others = sorted({s for q in pages if q["doc"] != p["doc"] for s in q["sentences"]}) or \
            sorted({s for q in pages if q["id"] != p["id"] for s in q["sentences"]})
        lines += [json.dumps(t, ensure_ascii=False) for t in olmocr_tests(p, others, seed)]
    (out / f"{OLMOCR_GROUP}.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")


# ------------------------------------------------------------------------------------------------- build


def build(pdf: Path, out: str, formats=FORMATS, dpi: int = DPI, max_pages: int | None = None, seed: int = 0,
          verbose: bool = True) -> dict:
    """Write the sets of `pdf` (a file or a folder) under `out`, published at once; returns the summary."""
    from nanoocr.data.convert import publish, staging_folder
    from nanoocr.eval.lines import find_documents
    stage = staging_folder(out)
    try:
        with tempfile.TemporaryDirectory(prefix="nanoocr-sets-") as tmp:
            docs = find_documents(Path(pdf), Path(tmp))
            cands, rejected = scan(docs, verbose)
            read = len(cands) + len(rejected)
            pages = choose(cands, max_pages, dpi, seed, rejected)
            names = [page_name(p["id"]) for p in pages]
            assert len(set(names)) == len(names), f"two pages map to one file name: {names}"
            for p, name in zip(pages, names):
                p["name"] = name
            if pages:
                writers = {"fox": lambda d: write_fox(d, pages), "omnidocbench": lambda d: write_omnidocbench(d, pages),
                           "olmocr-bench": lambda d: write_olmocr_bench(d, pages, seed)}
                for fmt in formats:
                    writers[fmt](stage / fmt)
        by_doc = {doc: Counter(read=0, written=0, rejected=0) for doc, _ in docs}
        for r in rejected:
            by_doc[r["document"]].update(read=1, rejected=1)
        for p in pages:
            by_doc[p["doc"]].update(read=1, written=1)
        summary = {"read": read, "written": len(pages), "rejected": len(rejected), "formats": list(formats),
                   "dpi": dpi, "max_pages": max_pages, "seed": seed,
                   "by_reason": dict(Counter(r["reason"].split(":")[0] for r in rejected)),
                   "by_document": {d: dict(c) for d, c in by_doc.items()},
                   "pages": [{"id": p["id"], "name": p["name"]} for p in pages]}
        assert summary["read"] == summary["written"] + summary["rejected"], f"count mismatch: {summary}"
        (stage / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        (stage / "rejected.jsonl").write_text("".join(json.dumps({"id": r["id"], "reason": r["reason"]},
                                                                 ensure_ascii=False) + "\n" for r in rejected))
        publish(stage, out, complete=bool(pages))
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone once published
    return summary


def main(argv=None) -> int:
    from nanoocr.data.convert import check_out, reports_at
    ap = argparse.ArgumentParser(prog="python -m nanoocr.eval.benchmarks.make_sets",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--pdf", required=True, help="a PDF, or a folder searched recursively for *.pdf and *.pdf.gz")
    ap.add_argument("--out", required=True, help="new or empty folder; one subfolder per format")
    ap.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS), help="the formats to write")
    ap.add_argument("--dpi", type=int, default=DPI, help="render resolution of the page images")
    ap.add_argument("--max-pages", type=int, default=None, help="keep at most N pages (a seeded sample)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the page sample and of the olmOCR-Bench tests")
    args = ap.parse_args(argv)
    if not Path(args.pdf).exists():
        ap.error(f"--pdf {args.pdf}: no such file or folder")
    if args.dpi < 36 or (args.max_pages is not None and args.max_pages < 1):
        ap.error("--dpi must be >= 36 and --max-pages >= 1")
    for tool in ("pdfinfo", "pdftoppm", "pdftotext", "pdfseparate"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found: install poppler-utils (apt-get install poppler-utils)")
    if problem := check_out(args.out):
        ap.error(f"--out {problem}")
    formats = tuple(dict.fromkeys(args.format))
    try:
        s = build(Path(args.pdf), args.out, formats, args.dpi, args.max_pages, args.seed)
    except OSError as e:
        print(f"error: building {args.out} failed, nothing was written there: {e}", file=sys.stderr)
        return 1
    for doc, c in s["by_document"].items():
        print(f"{c['written']:5d} written {c['rejected']:5d} rejected  {doc}")
    print(f"read {s['read']} pages, written {s['written']}, rejected {s['rejected']} {s['by_reason']} -> "
          f"{args.out}/{{{','.join(formats)}}}")
    if not s["written"]:
        print(f"error: no page kept (the reports: {reports_at(args.out, 0)})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
