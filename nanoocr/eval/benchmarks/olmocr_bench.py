"""olmOCR-Bench (allenai/olmOCR-bench, `bench_data/`): `*.jsonl` unit tests over single-page PDFs in `pdfs/`.

Layout: `bench_data/<group>.jsonl` (one JSON test a line: `{"pdf": "<group>/<name>.pdf", "page": 1, "id",
"type", "max_diffs", ...}`), `bench_data/pdfs/<group>/<name>.pdf`; a candidate's outputs are
`bench_data/<candidate>/<group>/<name>_pg<page>_repeat<r>.md` (`write_predictions`).

Test types run here, with the semantics of olmOCR's `bench/tests.py` (our code):
- text normalization (`normalize_text`): <br> to a space, markdown/HTML bold and italics unwrapped, whitespace
  runs to one space, Unicode NFC, fancy quotes/dashes to ASCII, micro sign to Greek mu;
- present / absent (`text`, `case_sensitive` = true, `first_n` / `last_n`, `max_diffs`): the output is cut to
  its first_n / last_n characters, then the best rapidfuzz `fuzz.partial_ratio(text, output) / 100` against
  threshold 1 - max_diffs / len(text): present passes at >= threshold, absent below it (olmOCR itself calls
  rapidfuzz here). There is no length check, as in olmOCR's code: partial_ratio aligns the SHORTER string
  inside the longer, so an output that is a fragment of the text ("The quick" for "The quick brown fox")
  passes a present test and fails an absent one; an empty output scores 0;
- order (`before`, `after`, `max_diffs`; a max_diffs over half either text is invalid): both texts must occur
  with at most max_diffs Levenshtein edits, some `before` match starting before some `after` match. olmOCR
  uses fuzzysearch.find_near_matches(max_l_dist=max_diffs); `near_match_starts` is our exhaustive search of
  every substring within max_diffs edits (rapidfuzz distances with a cutoff). fuzzysearch reports one best
  match per group of overlapping matches, so its start positions are a subset of ours; verdicts can differ only
  when the two texts' matches start within ~2 * max_diffs characters of each other;
- baseline (`max_length`, `max_length_skips_image_alt_tags`, `max_repeats` = 30, `check_disallowed_characters`):
  blank-page check when max_length is set, else fails on no alphanumeric character, on a tail repeated more
  than max_repeats times (`repetition.olmocr_repeat_failure`, n-grams of 1..5 characters), or on CJK/kana/
  emoji characters. As olmOCR's runner does, a PDF without a baseline test gets one (page 1, group "baseline").
Not run: table, math, format, footnote tests (table needs their table parser, math a KaTeX renderer). They are
counted per type in the summary's `not_scored` and left out of every rate: the overall figure is then over the
scored types only, not the leaderboard's.

Scoring as `bench/benchmark.py`: each test passes or fails on the page's output (one repeat); a missing output
fails; overall = mean over JSONL files (groups, "baseline" included) of passed / total; per test type, the mean
pass rate of that type's tests.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from nanoocr.data.records import OCR_PROMPT
from nanoocr.eval.benchmarks.common import mean, output_path, write_text
from nanoocr.eval.repetition import OLMOCR_MAX_REPEATS, olmocr_repeat_failure

PROMPT = OCR_PROMPT
SCORED_TYPES = ("present", "absent", "order", "baseline")
KNOWN_TYPES = SCORED_TYPES + ("table", "math", "format", "footnote")

_REPLACEMENTS = {"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "＿": "_", "–": "-", "—": "-",
                 "‑": "-", "‒": "-", "−": "-", "\u00b5": "\u03bc"}
# olmOCR BaselineTest's disallowed characters: CJK ideographs, hiragana, katakana, emoji blocks
_DISALLOWED = re.compile("[\u4e00-\u9fff\u3040-\u309f\u30a0-\u30ff\U0001F600-\U0001F64F\U0001F300-\U0001F5FF"
                         "\U0001F680-\U0001F6FF\U0001F1E0-\U0001F1FF]")


def normalize_text(md: str) -> str:
    """olmOCR-Bench's normalize_text, step by step in its order."""
    md = re.sub(r"<br/?>", " ", md)
    md = re.sub(r"\*\*(.*?)\*\*", r"\1", md)
    md = re.sub(r"__(.*?)__", r"\1", md)
    md = re.sub(r"</?b>", "", md)
    md = re.sub(r"</?i>", "", md)
    md = re.sub(r"(\*\*|__)(.*?)\1", r"\2", md)
    md = re.sub(r"(\*|_)(.*?)\1", r"\2", md)  # `.` stops at newlines: italics never span lines
    md = re.sub(r"\s+", " ", md)
    md = unicodedata.normalize("NFC", md)
    for fancy, plain in _REPLACEMENTS.items():
        md = md.replace(fancy, plain)
    return md


def near_match_starts(pattern: str, text: str, max_dist: int, first_only: bool = False,
                      reverse: bool = False) -> list[int]:
    """Every start s such that some text[s:e] is within `max_dist` Levenshtein edits of `pattern` (ascending,
    or descending with reverse=True); first_only stops at the first found. A match is between len - d and
    len + d long, so trying those lengths at each start is exhaustive."""
    m, n = len(pattern), len(text)
    if m == 0:
        raise ValueError("empty pattern")
    if max_dist == 0:
        starts, i = [], text.find(pattern)
        while i != -1:
            starts.append(i)
            i = text.find(pattern, i + 1)
        starts = starts[::-1] if reverse else starts
        return starts[:1] if first_only else starts
    lengths = range(max(1, m - max_dist), m + max_dist + 1)
    starts = []
    for s in (range(n - 1, -1, -1) if reverse else range(n)):
        if any(s + L <= n and Levenshtein.distance(pattern, text[s:s + L], score_cutoff=max_dist) <= max_dist
               for L in lengths):
            starts.append(s)
            if first_only:
                break
    return starts


def check_test(test: dict) -> None:
    """ValueError naming the problem, as olmOCR's loader refuses a test (so a file is not silently half-read)."""
    for key in ("pdf", "id", "type"):
        if not test.get(key):
            raise ValueError(f"test {test.get('id')!r}: {key} is missing or empty")
    if test["type"] not in KNOWN_TYPES:
        raise ValueError(f"test {test['id']!r}: unknown type {test['type']!r}")
    md = test.get("max_diffs", 0)
    if not isinstance(md, int) or isinstance(md, bool) or md < 0:
        raise ValueError(f"test {test['id']!r}: max_diffs must be an integer >= 0, got {md!r}")
    if test["type"] in ("present", "absent") and not normalize_text(str(test.get("text") or "")).strip():
        raise ValueError(f"test {test['id']!r}: text is empty")
    if test["type"] == "order":
        before, after = (normalize_text(str(test.get(k) or "")) for k in ("before", "after"))
        if not before.strip() or not after.strip():
            raise ValueError(f"test {test['id']!r}: before/after is empty")
        if md > len(before) // 2 or md > len(after) // 2:
            raise ValueError(f"test {test['id']!r}: max_diffs {md} is over half the search text")


def run_test(test: dict, md: str) -> tuple[bool | None, str]:
    """(passed, explanation) of one test on the page's markdown; (None, reason) for a type not run here."""
    kind, max_diffs = test["type"], test.get("max_diffs", 0)
    if kind in ("present", "absent"):
        query, content = normalize_text(test["text"]), normalize_text(md)
        if not test.get("case_sensitive", True):
            query, content = query.lower(), content.lower()
        first_n, last_n = test.get("first_n"), test.get("last_n")
        if first_n and last_n:
            content = content[:first_n] + content[-last_n:]
        elif first_n:
            content = content[:first_n]
        elif last_n:
            content = content[-last_n:]
        threshold = 1.0 - max_diffs / (len(query) or 1)
        ratio = fuzz.partial_ratio(query, content) / 100.0
        found = ratio >= threshold
        passed = found if kind == "present" else not found
        return passed, "" if passed else f"best match ratio {ratio:.3f}, threshold {threshold:.3f}"
    if kind == "order":
        before, after, content = normalize_text(test["before"]), normalize_text(test["after"]), normalize_text(md)
        first_before = near_match_starts(before, content, max_diffs, first_only=True)
        if not first_before:
            return False, f"'before' text not found within {max_diffs} edits"
        last_after = near_match_starts(after, content, max_diffs, first_only=True, reverse=True)
        if not last_after:
            return False, f"'after' text not found within {max_diffs} edits"
        passed = first_before[0] < last_after[0]
        return passed, "" if passed else "no 'before' match starts before an 'after' match"
    if kind == "baseline":
        alnum = len("".join(c for c in md if c.isalnum()))
        if test.get("max_length") is not None:
            text = re.sub(r"!\[.*?\]\(.*?\)", "", md) if test.get("max_length_skips_image_alt_tags") else md
            n = len("".join(c for c in text if c.isalnum()))
            return n <= test["max_length"], "" if n <= test["max_length"] else f"{n} characters on a blank page"
        if alnum == 0:
            return False, "no alphanumeric character"
        reason = olmocr_repeat_failure(md, test.get("max_repeats", OLMOCR_MAX_REPEATS))
        if reason:
            return False, reason
        if test.get("check_disallowed_characters", True):
            bad = _DISALLOWED.findall(md)
            if bad:
                return False, f"disallowed characters {bad[:5]}"
        return True, ""
    return None, f"{kind} tests are not run offline"


def read(root, render: bool = True, prompt: str = PROMPT, dpi: int | None = None) -> list[dict]:
    """Eval records, one per (pdf, page) that has tests: {"id", "pdf", "page", "image", "prompt", "tests"}.

    Each test gets "jsonl" (its group: the file's name; "baseline" for the ones added). render=True rasterizes
    the page with poppler (`nanoocr.data.pdf.render_page`, 144 dpi) into PNG bytes; a page that fails becomes
    an error record (`"error": reason`, which the eval's validation skips with that reason); render=False
    leaves "image" None."""
    root = Path(root)
    files = sorted(root.glob("*.jsonl"))
    if not files:
        raise ValueError(f"{root}: no *.jsonl test files (expected olmOCR-Bench's bench_data folder)")
    tests, seen = [], set()
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                test = json.loads(line)
                if not isinstance(test, dict):
                    raise ValueError("not a JSON object")
                check_test(test)
            except ValueError as e:  # JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{lineno}: {e}") from None
            if test["id"] in seen:
                raise ValueError(f"{path}:{lineno}: duplicate test id {test['id']!r}")
            seen.add(test["id"])
            tests.append({**test, "page": int(test.get("page", 1)), "jsonl": path.name})
    for pdf in sorted({t["pdf"] for t in tests}):  # olmOCR's runner adds a default baseline test per PDF
        if not any(t["type"] == "baseline" and t["pdf"] == pdf for t in tests):
            tests.append({"pdf": pdf, "page": 1, "id": f"{pdf}_baseline", "type": "baseline", "jsonl": "baseline"})
    pages: dict[tuple, list] = {}
    for t in tests:
        pages.setdefault((t["pdf"], t["page"]), []).append(t)
    records = []
    for (pdf, page), page_tests in sorted(pages.items()):
        rec = {"id": f"{pdf}#p{page}", "pdf": pdf, "page": page, "image": None, "prompt": prompt, "tests": page_tests}
        records.append(render_record(root, rec, dpi) if render else rec)
    return records


def render_record(root, rec: dict, dpi: int | None = None) -> dict:
    """`rec` with "image" the PNG bytes of its page (poppler), or "error" the reason; apart from `read` so that
    a caller taking a few records of a large benchmark (evaluate --limit) renders only those."""
    from nanoocr.data.pdf import DPI, PopplerError, render_page
    root = Path(root)
    path = root / "pdfs" / rec["pdf"]
    try:
        if not path.resolve().is_relative_to((root / "pdfs").resolve()):
            raise ValueError(f"pdf path escapes {root / 'pdfs'}")
        rec["image"] = render_page(path, rec["page"], dpi or DPI)
    except (PopplerError, OSError, ValueError) as e:
        rec["error"] = f"{path}: {e}"
    return rec


def score(pred: str, record: dict) -> dict:
    """The page's test results [{"id", "type", "jsonl", "passed", "why"}] (passed None: not run) and its pass rate."""
    results = []
    for t in record["tests"]:
        passed, why = run_test(t, pred)
        results.append({"id": t["id"], "type": t["type"], "jsonl": t["jsonl"], "passed": passed, "why": why})
    run = [r["passed"] for r in results if r["passed"] is not None]
    return {"tests": results, "page_pass_rate": mean(float(p) for p in run)}


def summarize(rows: list[dict], records: list[dict] | None = None) -> dict:
    """olmOCR-Bench's aggregation over the scored tests. `records`: every record that was read; the tests of a
    page with no row (no output) count as failed, as a missing .md does in olmOCR's runner."""
    results = [r for row in rows for r in row["tests"]]
    if records is not None:
        done = {row["id"] for row in rows}
        results += [{"id": t["id"], "type": t["type"], "jsonl": t["jsonl"], "passed": False if t["type"] in SCORED_TYPES
                     else None, "why": "no output"} for rec in records if rec["id"] not in done for t in rec["tests"]]
    scored = [r for r in results if r["passed"] is not None]
    by_jsonl, by_type = {}, {}
    for r in scored:
        g = by_jsonl.setdefault(r["jsonl"], {"passed": 0, "total": 0})
        g["passed"] += r["passed"]
        g["total"] += 1
        by_type.setdefault(r["type"], []).append(float(r["passed"]))
    for g in by_jsonl.values():
        g["pass_rate"] = g["passed"] / g["total"]
    not_scored = {}
    for r in results:
        if r["passed"] is None:
            not_scored[r["type"]] = not_scored.get(r["type"], 0) + 1
    out = {"overall": mean(g["pass_rate"] for g in by_jsonl.values()), "n_tests": len(scored), "n_pages": len(rows),
           "by_jsonl": dict(sorted(by_jsonl.items())),
           "by_type": {k: {"pass_rate": sum(v) / len(v), "n": len(v)} for k, v in sorted(by_type.items())},
           "not_scored": not_scored}
    if not_scored:
        skipped = ", ".join(f"{n} {k}" for k, n in sorted(not_scored.items()))
        out["note"] = (f"overall is over the test types scored here ({', '.join(SCORED_TYPES)}), not olmOCR-Bench's "
                       f"leaderboard figure: {skipped} tests were not run")
    return out


def write_predictions(out_dir, records: list[dict], preds: list[str], repeat: int = 1) -> list[Path]:
    """`<out_dir>/<group>/<name>_pg<page>_repeat<r>.md` per page: put out_dir in bench_data/ as a candidate."""
    assert len(records) == len(preds), f"{len(preds)} predictions for {len(records)} records"
    paths = []
    for r, p in zip(records, preds):
        stem = r["pdf"][:-4] if r["pdf"].lower().endswith(".pdf") else r["pdf"]
        paths.append(write_text(output_path(out_dir, f"{stem}_pg{r['page']}_repeat{repeat}.md"), p))
    return paths
