"""The Tesseract baseline: a classical OCR engine on the same eval sets, scored exactly as `nanoocr.evaluate`.

    python -m nanoocr.eval.tesseract --data DIR --out DIR [--psm 7] [--lang eng] [--limit N] [--workers 1]

--data  what evaluate's --data takes (an MDS folder, a remote MDS URL, a unified-conversation JSONL), read by
        evaluate's own `load_records` and `split_records`: the same samples, skipped for the same reasons
--psm   Tesseract's page segmentation mode: 7 one text line (nanoocr.eval.lines, the reading curriculum's
        word and line images), 6 one uniform block of text (reading blocks), 3 automatic (whole pages)

Writes into --out:
    predictions.jsonl  {"id", "pred", "gt", <every metric of nanoocr.eval.metrics>} per evaluated sample
    skipped.jsonl      {"id", "reason"} per record that could not be evaluated (invalid, no image, Tesseract
                       failed on it)
    summary.json       the mean of every metric over samples, `n`, read = n + skipped, the repetition figures,
                       the engine ("model": "tesseract <version>"), psm and language
    summary.md         evaluate's Markdown table (also printed, with evaluate's "exact_match: k/n" line)

Notable features:
- `tesseract stdin stdout --psm N -l LANG`, the image bytes on stdin (no temporary files), with
  OMP_THREAD_LIMIT=1: Tesseract's OpenMP threads only slow small images down; --workers runs that many
  processes at once;
- the output is cleaned the way a transcription is compared: the form feed Tesseract ends a page with is
  dropped, every line right-stripped and empty lines removed (the answers of these sets have no blank lines),
  lines joined by "\\n";
- a missing `tesseract` binary or language is a usage error (exit 2) naming the Debian packages
  (tesseract-ocr, tesseract-ocr-<lang>); exit 1 when nothing could be evaluated.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUTPUTS = ("predictions.jsonl", "skipped.jsonl", "summary.json", "summary.md")
TIMEOUT_S = 60
APT = "apt-get install tesseract-ocr tesseract-ocr-eng"


class TesseractError(RuntimeError):
    """Tesseract is missing or failed on one image; the message says which and why."""


def check_tesseract(lang: str = "eng") -> str:
    """Tesseract's version ("5.3.0"), or TesseractError naming the packages to install."""
    if shutil.which("tesseract") is None:
        raise TesseractError(f"tesseract not found: {APT}")
    proc = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, timeout=TIMEOUT_S)
    langs = set(proc.stdout.split()[1:])  # the first line is "List of available languages in ...:"
    if lang not in langs:
        raise TesseractError(f"tesseract has no {lang!r} language data (has {sorted(langs)}): "
                             f"apt-get install tesseract-ocr-{lang}")
    version = subprocess.run(["tesseract", "--version"], capture_output=True, text=True, timeout=TIMEOUT_S)
    first = (version.stdout or version.stderr).split("\n", 1)[0]  # "tesseract 5.3.0"
    return first.split()[-1] if first else "unknown"


def clean(text: str) -> str:
    """Tesseract's output as a transcription: no form feed, no trailing spaces, no empty lines."""
    lines = (line.rstrip() for line in text.replace("\f", "").splitlines())
    return "\n".join(line for line in lines if line.strip()).strip()


def ocr(image: bytes, psm: int = 7, lang: str = "eng") -> str:
    """The cleaned text Tesseract reads in PNG/JPEG bytes `image`, or TesseractError."""
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        proc = subprocess.run(["tesseract", "stdin", "stdout", "--psm", str(psm), "-l", lang], input=image,
                              capture_output=True, timeout=TIMEOUT_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise TesseractError(f"tesseract timed out after {TIMEOUT_S} s")
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise TesseractError(f"tesseract exit {proc.returncode}: {lines[-1] if lines else 'no message'}")
    return clean(proc.stdout.decode("utf-8", "replace"))


def evaluate(pairs: list[dict], psm: int, lang: str = "eng", workers: int = 1) -> tuple[list[dict], list[dict]]:
    """(rows {"id", "pred", "gt", metrics...}, skipped [{"id", "reason"}]) of evaluate's OCR pairs, in order."""
    from nanoocr.eval.metrics import score

    def one(pair):
        gt = pair["messages"][1]["content"]
        try:
            pred = ocr(pair["image"], psm, lang)
        except TesseractError as e:
            return None, {"id": pair["id"], "reason": str(e)}
        return {"id": pair["id"], "pred": pred, "gt": gt, **score(pred, gt)}, None

    rows, skipped = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads: the work is in the child processes
        for row, skip in pool.map(one, pairs):
            (rows if row else skipped).append(row or skip)
    return rows, skipped


def check_out(out: Path) -> None:
    """Create `out`, or ValueError if it holds anything but this tool's own OUTPUTS (an MDS set, a report)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS or p.is_symlink())
        if foreign:
            raise ValueError(f"{out}: holds {', '.join(foreign[:3])}, which this tool did not write; "
                             "choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{out}: cannot create this folder ({e.strerror or e})") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nanoocr.eval.tesseract", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="MDS folder (index.json), remote MDS URL or unified .jsonl")
    ap.add_argument("--out", required=True, help="output folder for predictions.jsonl, summary.json, summary.md")
    ap.add_argument("--psm", type=int, default=7, help="page segmentation mode: 7 line, 6 block, 3 page")
    ap.add_argument("--lang", default="eng", help="Tesseract language (tesseract-ocr-<lang> installs it)")
    ap.add_argument("--limit", type=int, default=None, help="read at most N records")
    ap.add_argument("--workers", type=int, default=1, help="Tesseract processes at once")
    args = ap.parse_args(argv)
    if not 0 <= args.psm <= 13 or args.workers < 1 or (args.limit is not None and args.limit < 0):
        ap.error("--psm must be in 0..13, --workers >= 1, --limit >= 0")
    try:
        version = check_tesseract(args.lang)
    except TesseractError as e:
        ap.error(str(e))
    try:
        check_out(Path(args.out))
    except ValueError as e:
        ap.error(f"--out {e}")

    from nanoocr.eval.evaluate import load_records, markdown_table, split_records
    from nanoocr.eval.metrics import summarize
    try:
        records, root = load_records(args.data, args.limit)
        pairs, skipped = split_records(records, root)
    except (ValueError, FileNotFoundError) as e:
        ap.error(f"--data {e}")
    for s in skipped:
        print(f"[skip] {s['id']}: {s['reason']}", file=sys.stderr)
    t0 = time.time()
    rows, failed = evaluate(pairs, args.psm, args.lang, args.workers)
    for s in failed:
        print(f"[skip] {s['id']}: {s['reason']}", file=sys.stderr)
    skipped += failed
    summary = {**summarize(rows), "skipped": len(skipped), "read": len(records), "mode": f"tesseract --psm {args.psm}",
               "model": f"tesseract {version}", "data": str(args.data), "psm": args.psm, "lang": args.lang,
               "seconds": round(time.time() - t0, 2)}
    assert summary["read"] == summary["n"] + summary["skipped"], f"count mismatch: {summary}"
    out = Path(args.out)
    predictions, skipped_path, summary_json, summary_md = (out / name for name in OUTPUTS)
    predictions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    skipped_path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped), encoding="utf-8")
    summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    summary_md.write_text(markdown_table(summary))
    print(markdown_table(summary), end="")
    print(f"exact_match: {int(round(summary['exact_match'] * summary['n']))}/{summary['n']}")
    print(f"wrote {out}/predictions.jsonl, skipped.jsonl, summary.json, summary.md", file=sys.stderr)
    if not rows:
        print("error: no record could be evaluated (see skipped.jsonl)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
