"""OmniDocBench (opendatalab/OmniDocBench): `OmniDocBench.json` + `images/`, read and scored offline.

Each page: `{"layout_dets": [{"category_type", "poly", "ignore", "order", "anno_id", "text" | "latex" | "html",
...}], "page_info": {"image_path", "page_attribute": {"language", ...}, ...}, "extra": {"relation": [...]}}`.

What is computed, following OmniDocBench's end2end evaluation (v1.0, the version DeepSeek-OCR reports):
- GT text = the blocks of its text categories (`TEXT_CATEGORIES`), blocks linked by a "truncated" relation
  joined into one (in reading order, texts concatenated as OmniDocBench does), sorted by `order` (a missing
  order sorts as 0, as theirs does); blocks marked `ignore` and the categories OmniDocBench matches but does
  not score (`IGNORED_CATEGORIES`: headers, footers, page numbers, captions, footnotes...) are not scored;
- normalization (`normalize`): their `clean_string(textblock2unicode(text))` -- an inline formula `$...$` or
  `\\(...\\)` that holds `\\`, `^` or `_` (after dropping escaped `\\\\ \\_ \\& \\% \\^`) becomes unicode
  (pylatexenc's LatexNodes2Text when installed, as theirs; else a small table of commands, unknown commands
  dropped, braces dropped), then tabs/newlines and their literal spellings are removed and only `\\w` and
  U+4E00-U+9FFF characters are kept (so digits, letters of every script, CJK and `_` stay);
- text_edit (per page): Levenshtein / max length between the normalized GT text and the normalized
  prediction text. The prediction text is the markdown minus HTML tables, markdown table lines, display
  math ($$...$$, \\[...\\]) and images, split into paragraphs at blank lines; a paragraph that matches an
  ignored GT block (normalized edit distance <= 0.3 and no closer to a scored block) is dropped, so
  transcribing a header or a page number costs nothing, as in OmniDocBench. The kept paragraphs are put in
  the reading order of the GT block each is closest to (stable) before they are joined: OmniDocBench pairs
  paragraphs with blocks whatever their order, so its text edit does not charge the order (reading_order_edit
  does), and neither does ours;
- reading_order_edit (per page): OmniDocBench's `get_order_paired` on our matching: the `order`s of the
  scored GT blocks, sorted, against the same orders listed in the order the blocks are found in the
  prediction (a block is found when rapidfuzz partial_ratio >= 60 against the prediction's normalized text;
  a block not found is missing from the predicted list). Blocks are located longest first and each match's
  characters are masked (an exact occurrence is taken leftmost), so two blocks never claim the same text: a
  block repeated on the page (a command shown twice, a table cell) takes the next occurrence, a short title its own line rather than a mention inside a longer
  paragraph, as OmniDocBench's one-to-one pairing does. Orders that are 0 or missing are dropped from both
  lists, a quirk of theirs (`if x`) kept for parity. Levenshtein over the two lists / the longer length.
- summary: page means (and "whole": total edits / total lengths) overall and per page language.

How this differs from their score (say it next to any number): OmniDocBench's default `quick_match` pairs
prediction paragraphs with GT blocks one by one (Hungarian matching with merges and splits) and sums the
pairs' edits over their lengths per page; we compare whole pages, paragraphs put in GT order first. Measured
against their code on 24 real pages (BENCHMARKS.md "Benchmark scorers against the official code"), the page
text edits agree within 0.005 on whole or damaged transcriptions and differ by up to 0.06 on pages cut short;
reading order by up to 0.18. Run their `pdf_validation.py` on `write_predictions`' folder for the leaderboard
figure.
NOT computed (`NOT_COMPUTED`, copied into every summary): table TEDS / TEDS-S (needs their TEDS code with
apted + lxml), formula CDM (needs a LaTeX + rendering toolchain), display-formula and table edit distances,
hence no "overall".
"""
from __future__ import annotations

import re
from pathlib import Path

from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from nanoocr.data.records import OCR_PROMPT
from nanoocr.eval.benchmarks.common import load_json, mean, output_path, write_text

PROMPT = OCR_PROMPT
TEXT_CATEGORIES = ("text_block", "title", "code_txt", "code_txt_caption", "reference", "equation_caption",
                   "figure_caption", "figure_footnote", "table_caption", "table_footnote", "code_algorithm",
                   "code_algorithm_caption", "header", "footer", "page_footnote", "page_number")
IGNORED_CATEGORIES = ("figure_caption", "figure_footnote", "table_caption", "table_footnote", "code_algorithm",
                      "code_algorithm_caption", "header", "footer", "page_footnote", "page_number", "equation_caption")
IGNORE_MATCH_MAX_EDIT = 0.3   # a prediction paragraph this close to an ignored GT block is dropped
FOUND_MIN_RATIO = 60          # rapidfuzz partial_ratio for a GT block to count as found (reading order)
NOT_COMPUTED = ["table TEDS / TEDS-S", "formula CDM", "display-formula edit distance", "table edit distance",
                "overall (needs all of the above)"]

_INLINE = re.compile(r"\$(.*?)\$|\\\((.*?)\\\)")  # OmniDocBench's inline_reg (no DOTALL: one line)
_ESCAPED = re.compile(r"\\([\\_&%^])")
_NOT_KEPT = re.compile(r"[^\w\u4e00-\u9fff]")
_LATEX_CMD = re.compile(r"\\([A-Za-z]+)")


def _latex_fallback(math: str) -> str:
    """Without pylatexenc: known commands to unicode, others dropped, braces dropped (pylatexenc drops both)."""
    from nanoocr.eval.metrics import _LATEX_UNICODE  # the project's one table of inline commands
    math = _LATEX_CMD.sub(lambda m: _LATEX_UNICODE.get(m.group(1), ""), math)
    return math.replace("{", "").replace("}", "")


def latex_converter() -> str:
    """Which inline-LaTeX converter `normalize` uses here (the summary says it: the fallback is not theirs)."""
    try:
        from pylatexenc.latex2text import LatexNodes2Text  # noqa: F401
        return "pylatexenc"
    except ImportError:
        return "table (pylatexenc not installed: inline formulas converted by a small command table)"


def _latex_to_text(math: str) -> str:
    try:
        from pylatexenc.latex2text import LatexNodes2Text
    except ImportError:
        return _latex_fallback(math)
    try:
        return LatexNodes2Text().latex_to_text(math)
    except Exception:  # OmniDocBench skips a formula pylatexenc cannot read (their bare except)
        return None


def textblock2unicode(text: str) -> str:
    """Inline formulas holding \\, ^ or _ replaced by their unicode text (OmniDocBench's function, our code)."""
    spans = []
    for m in _INLINE.finditer(text):
        content = m.group(1) if m.group(1) is not None else m.group(2)
        clean = _ESCAPED.sub("", content)
        if any(ch in clean for ch in "\\^_"):
            if clean.endswith("\\"):
                clean += " "
            uni = _latex_to_text(clean)
            if uni is not None:
                spans.append((m.start(), m.end(), uni.strip()))
    for start, end, uni in reversed(spans):
        text = text[:start] + uni + text[end:]
    return text


def clean_string(text: str) -> str:
    for s in ("\\t", "\\n", "\t", "\n", "/t", "/n"):
        text = text.replace(s, "")
    return _NOT_KEPT.sub("", text)


def normalize(text: str) -> str:
    return clean_string(textblock2unicode(text))


def _edit(a: str, b: str) -> float:
    n = max(len(a), len(b))
    return Levenshtein.distance(a, b) / n if n else 0.0


def page_blocks(page: dict) -> list[dict]:
    """The page's text blocks {"category", "order", "text", "scored"}, truncated blocks joined, in reading order."""
    dets = [d for d in page.get("layout_dets", []) if d.get("category_type") in TEXT_CATEGORIES]
    by_id = {d.get("anno_id"): d for d in dets}
    groups: list[list] = []  # anno_ids joined by "truncated" relations (chains of three and more too)
    for rel in (page.get("extra") or {}).get("relation", []) or []:
        if (rel.get("relation_type") or rel.get("relation")) != "truncated":
            continue
        pair = [rel.get("source_anno_id"), rel.get("target_anno_id")]
        hit = [g for g in groups if set(g) & set(pair)]
        merged = [i for g in hit for i in g] + pair
        groups = [g for g in groups if g not in hit] + [list(dict.fromkeys(merged))]
    grouped = {i for g in groups for i in g}
    units = [[d] for d in dets if d.get("anno_id") not in grouped]
    units += [sorted((by_id[i] for i in g if i in by_id), key=lambda d: d.get("order") or 0) for g in groups]
    blocks = []
    for unit in units:
        if not unit:
            continue
        first = unit[0]
        scored = first["category_type"] not in IGNORED_CATEGORIES and not any(d.get("ignore") for d in unit)
        blocks.append({"category": first["category_type"], "order": first.get("order"),
                       "text": "".join(str(d.get("text") or "") for d in unit), "scored": scored})
    blocks.sort(key=lambda b: b["order"] or 0)
    return blocks


def page_gt(page: dict) -> str:
    """The scored GT text of a page, blocks in reading order separated by blank lines (for generic metrics)."""
    return "\n\n".join(b["text"] for b in page_blocks(page) if b["scored"] and b["text"])


def read(root, json_name: str = "OmniDocBench.json", image_dir: str = "images", prompt: str = PROMPT) -> list[dict]:
    """Eval records {"id", "image": path, "prompt", "gt", "language", "page"} (page: the raw annotation)."""
    root = Path(root)
    pages = load_json(root / json_name)
    if not isinstance(pages, list):
        raise ValueError(f"{root / json_name}: expected a list of pages")
    records = []
    for i, page in enumerate(pages):
        try:
            image_path = page["page_info"]["image_path"]
        except (KeyError, TypeError):
            raise ValueError(f"{root / json_name}: page {i} has no page_info.image_path") from None
        name = Path(image_path).name  # OmniDocBench keys pages by the image's base name
        records.append({"id": name, "image": root / image_dir / name, "prompt": prompt, "gt": page_gt(page),
                        "language": ((page["page_info"].get("page_attribute") or {}).get("language")),
                        "page": page})
    return records


_HTML_TABLE = re.compile(r"<table\b.*?</table>", re.S | re.I)
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]", re.S)
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")


def prediction_paragraphs(md: str) -> list[str]:
    """The text part of a markdown prediction as paragraphs (tables, display math and images removed)."""
    md = _IMAGE.sub("", _DISPLAY_MATH.sub("\n\n", _HTML_TABLE.sub("\n\n", md)))
    md = "\n".join(line for line in md.split("\n") if not line.strip().startswith("|"))
    return [p.strip() for p in re.split(r"\n\s*\n", md) if p.strip()]


def score(pred: str, record: dict) -> dict:
    """Per-page text_edit and reading_order_edit (None when the page has no scored text), and the counts."""
    blocks = [b | {"norm": normalize(b["text"])} for b in page_blocks(record["page"])]
    scored = [b for b in blocks if b["scored"] and b["norm"]]
    ignored = [b["norm"] for b in blocks if not b["scored"] and b["norm"]]
    kept, dropped = [], 0
    for para in (normalize(p) for p in prediction_paragraphs(pred)):
        if not para:
            continue
        to_ignored = min((_edit(para, g) for g in ignored), default=1.0)
        dists = [_edit(para, b["norm"]) for b in scored]
        to_scored = min(dists, default=1.0)
        if to_ignored <= IGNORE_MATCH_MAX_EDIT and to_ignored <= to_scored:
            dropped += 1
            continue
        # the closest block, an untaken one first among equals (a block repeated on the page has two homes)
        taken = {k for k, _, _ in kept}
        home = min(range(len(dists)), key=lambda k: (dists[k], k in taken, k)) if dists else 0
        kept.append((home, len(kept), para))
    pred_norm, gt_norm = "".join(p for _, _, p in sorted(kept)), "".join(b["norm"] for b in scored)
    row = {"language": record.get("language"), "n_blocks": len(scored), "dropped_paragraphs": dropped,
           "text_edit": None, "text_edit_chars": None, "text_len": None, "reading_order_edit": None}
    if not gt_norm:
        return row
    row["text_edit_chars"] = Levenshtein.distance(pred_norm, gt_norm)
    row["text_len"] = max(len(pred_norm), len(gt_norm))
    row["text_edit"] = row["text_edit_chars"] / row["text_len"]
    found, text = [], "".join(p for _, _, p in kept)  # the prediction's own order: that is what is scored here
    for b in sorted(scored, key=lambda b: -len(b["norm"])):  # longest first; a match is masked for the others
        start = text.find(b["norm"])  # the leftmost exact occurrence (rapidfuzz's best alignment may be any of them)
        if start >= 0:
            end = start + len(b["norm"])
        else:
            al = fuzz.partial_ratio_alignment(b["norm"], text) if text.strip("\0") else None
            if al is None or al.score < FOUND_MIN_RATIO:
                continue
            start, end = al.dest_start, al.dest_end
        found.append((start, b["order"] or 0))
        text = text[:start] + "\0" * (end - start) + text[end:]
    gt_order = sorted(o for o in (b["order"] for b in scored) if o)
    pred_order = [o for _, o in sorted(found) if o]
    if gt_order or pred_order:
        row["reading_order_edit"] = Levenshtein.distance(gt_order, pred_order) / max(len(gt_order), len(pred_order))
    return row


def _block_summary(rows: list[dict]) -> dict:
    text = [r for r in rows if r["text_edit"] is not None]
    lens = sum(r["text_len"] for r in text)
    return {"n_pages": len(rows), "n_text_pages": len(text), "text_edit": mean(r["text_edit"] for r in text),
            "text_edit_whole": sum(r["text_edit_chars"] for r in text) / lens if lens else None,
            "reading_order_edit": mean(r["reading_order_edit"] for r in rows)}


def summarize(rows: list[dict]) -> dict:
    """Page means overall and per page language (DeepSeek-OCR reports english / simplified_chinese apart)."""
    langs = sorted({r["language"] for r in rows if r.get("language")})
    return {**_block_summary(rows),
            "by_language": {lang: _block_summary([r for r in rows if r.get("language") == lang]) for lang in langs},
            "not_computed": NOT_COMPUTED, "latex_to_unicode": latex_converter(),
            "note": "whole-page comparison, not OmniDocBench's quick_match pairing: run their pdf_validation.py on "
                    "the written predictions for leaderboard numbers"}


def write_predictions(out_dir, records: list[dict], preds: list[str]) -> list[Path]:
    """One `<image stem>.md` per page in `out_dir`: the folder OmniDocBench's end2end config reads as prediction."""
    assert len(records) == len(preds), f"{len(preds)} predictions for {len(records)} records"
    return [write_text(output_path(out_dir, Path(r["id"]).stem + ".md"), p) for r, p in zip(records, preds)]
