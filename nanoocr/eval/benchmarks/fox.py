"""Fox page OCR (ucaslcl/Fox, `focus_benchmark_test/`) read, scored and written as Fox's own tools do.

Files: `en_page_ocr.json` + `en_pdf_png/`, `cn_page_ocr.json` + `cn_pdf_png/`; each entry is
`{"image": "<file>", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": GT}]}`.

DeepSeek-OCR's protocol (paper, Table 2): the ENGLISH pages whose ground truth is 600-1300 tokens (100 pages
with DeepSeek's tokenizer), prompt `<image>\\nFree OCR.` instead of Fox's own, results in bins of 100
ground-truth tokens (600-700, ..., 1200-1300). `read(..., count_tokens=)` filters and bins with the
tokenizer you pass (str -> int): with another vocabulary the bins move, which the summary cannot hide.

Scores, as Fox's `eval_tools/eval_ocr_test.py` computes them on the JSON its README's runner writes:
- words: `str.split()`, or `jieba.lcut` of both sides when either has a character in U+4E00-U+9FA5 (jieba
  keeps whitespace runs as words, so ours does too); without jieba installed, Chinese runs fall back to
  single characters and the summary says so ("segmenter": "chars");
- precision, recall, f1 over the SETS of words. Fox's runner stores the ground truth under "label" and the
  output under "answer", and its scorer passes (label, answer) as (pred, gt): nltk's precision(reference=
  output words, test=GT words) is therefore |GT ∩ output| / |GT| -- the share of the page's distinct words
  the model got -- and "recall" |GT ∩ output| / |output|. We report those two numbers under Fox's names,
  because they are what Fox's tables (and, by the same authors, DeepSeek-OCR's "Precision") print. Where
  nltk returns None (an empty output has no words), we score 0 (Fox's own script would crash on it);
- edit_distance: Levenshtein(output, GT) / max(len), raw strings (nltk.edit_distance, cost 1 each); and
  one_minus_edit_distance beside it, since "precision" is read as 1 - edit distance elsewhere. The DeepSeek-OCR
  paper does not define its "Precision"; both are reported per bin, the Fox definition first.

Predictions: `write_predictions` writes Fox's runner JSON, `[{"image", "question", "label": GT, "answer": output}]`,
so `python3 eval_tools/eval_ocr_test.py --out_file FILE` scores our outputs with Fox's own code.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from rapidfuzz.distance import Levenshtein

from nanoocr.data.records import OCR_PROMPT
from nanoocr.eval.benchmarks.common import load_json, mean, output_path

PROMPT = OCR_PROMPT  # "<image>\nFree OCR.", DeepSeek-OCR's Fox prompt
TOKEN_RANGE = (600, 1300)
BIN_WIDTH = 100
FILES = {"en": ("en_page_ocr.json", "en_pdf_png"), "cn": ("cn_page_ocr.json", "cn_pdf_png")}
_CHINESE = re.compile(r"[\u4e00-\u9fa5]")  # Fox's contain_chinese_string
# jieba's own fallback-free split of non-Chinese text: alnum runs, single whitespace, any other char
_FALLBACK_TOKEN = re.compile(r"[\u4e00-\u9fa5]|[A-Za-z0-9+#&._%\-]+|\s|.", re.S)


def token_bin(n: int, token_range=TOKEN_RANGE, width: int = BIN_WIDTH) -> str | None:
    """"600-700" for 600 <= n < 700, ...; the top edge (1300) belongs to the last bin; None outside the range."""
    lo, hi = token_range
    if n < lo or n > hi:
        return None
    start = lo + min((n - lo) // width, (hi - lo - 1) // width) * width
    return f"{start}-{start + width}"


def read(root, lang: str = "en", count_tokens=None, token_range=TOKEN_RANGE, prompt: str = PROMPT,
         image_dir: str | None = None) -> list[dict]:
    """Eval records {"id", "image": path, "prompt", "gt", "benchmark_prompt", "gt_tokens", "bin"} of Fox page OCR.

    count_tokens: str -> int. Given, pages outside `token_range` are left out (DeepSeek's 600-1300) and each
    record is binned; None keeps every page, unbinned. token_range=None with count_tokens bins nothing out."""
    if lang not in FILES:
        raise ValueError(f"lang {lang!r}: expected one of {sorted(FILES)}")
    root = Path(root)
    json_name, default_dir = FILES[lang]
    entries = load_json(root / json_name)
    if not isinstance(entries, list):
        raise ValueError(f"{root / json_name}: expected a list of entries")
    images = root / (image_dir or default_dir)
    records = []
    for i, e in enumerate(entries):
        try:
            conv = e["conversations"]
            human = next(c["value"] for c in conv if c["from"] == "human")
            gt = next(c["value"] for c in conv if c["from"] == "gpt")
            name = e["image"]
        except (KeyError, TypeError, StopIteration):
            raise ValueError(f"{root / json_name}: entry {i} is not "
                             "{'image', 'conversations': [human, gpt]}") from None
        rec = {"id": name, "image": images / name, "prompt": prompt, "gt": gt, "benchmark_prompt": human,
               "gt_tokens": None, "bin": None}
        if count_tokens is not None:
            rec["gt_tokens"] = n = int(count_tokens(gt))
            if token_range is not None:
                rec["bin"] = token_bin(n, token_range)
                if rec["bin"] is None:
                    continue
        records.append(rec)
    return records


def _jieba():
    try:
        import jieba
        return jieba
    except ImportError:
        return None


def words(text: str, chinese: bool) -> list[str]:
    """Fox's word list: whitespace split, or jieba.lcut when the pair holds Chinese (fallback: characters)."""
    if not chinese:
        return text.split()
    jieba = _jieba()
    if jieba is not None:
        return jieba.lcut(text)
    return _FALLBACK_TOKEN.findall(text)


def score(pred: str, record: dict) -> dict:
    """Fox's per-page numbers for `pred` against record["gt"] (module docstring), plus the record's bin."""
    gt = record["gt"]
    chinese = bool(_CHINESE.search(gt) or _CHINESE.search(pred))
    out_words, gt_words = set(words(pred, chinese)), set(words(gt, chinese))
    common = len(out_words & gt_words)
    if not out_words and not gt_words:
        precision = recall = f1 = 1.0
    else:
        precision = common / len(gt_words) if gt_words else 0.0
        recall = common / len(out_words) if out_words else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    n = max(len(pred), len(gt))
    ed = Levenshtein.distance(pred, gt) / n if n else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "edit_distance": ed,
            "one_minus_edit_distance": 1.0 - ed, "gt_tokens": record.get("gt_tokens"), "bin": record.get("bin"),
            "segmenter": ("jieba" if _jieba() else "chars") if chinese else "whitespace"}


METRICS = ("precision", "recall", "f1", "edit_distance", "one_minus_edit_distance")


def summarize(rows: list[dict]) -> dict:
    """Means over pages, and per token bin (in bin order) the page count and each mean."""
    out = {"n": len(rows), **{k: mean(r[k] for r in rows) for k in METRICS},
           "segmenters": sorted({r["segmenter"] for r in rows})}
    bins = sorted({r["bin"] for r in rows if r.get("bin")}, key=lambda b: int(b.split("-")[0]))
    out["bins"] = [{"bin": b, "n": len(sel), **{k: mean(r[k] for r in sel) for k in METRICS}}
                   for b in bins for sel in [[r for r in rows if r.get("bin") == b]]]
    if "chars" in out["segmenters"]:
        out["note"] = "jieba is not installed: Chinese pages were split into characters, not Fox's jieba words"
    return out


def write_predictions(path, records: list[dict], preds: list[str]) -> Path:
    """Fox's runner JSON at `path` (a .json file): [{"image", "question", "label": GT, "answer": output}]."""
    assert len(records) == len(preds), f"{len(preds)} predictions for {len(records)} records"
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"{path}: Fox's scorer reads one .json file; give a path ending in .json")
    items = [{"image": r["id"], "question": r["prompt"], "label": r["gt"], "answer": p} for r, p in zip(records, preds)]
    path = output_path(path.parent, path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
