"""Evaluate an exported model on an OCR eval set: per-sample results and a summary (no Composer import).

    python -m nanoocr.evaluate --model DIR --data SPEC --out DIR [--mode M] [--batch-size B]
        [--max-new-tokens N] [--limit N] [--device cpu|cuda]

--model  a folder written by `nanoocr.train.export` (or a run's `export/`, e.g. runs/tier1_overfit/export)
--data   an MDS folder (holds index.json, as written by `nanoocr.data.convert` / `nanoocr.eval.pages`), or
         a JSONL of unified conversations whose `image` paths are relative to the JSONL's folder

Writes into --out:
    per_sample.jsonl   {"id", "pred", "gt", <every metric>} per evaluated sample, in data order
    skipped.jsonl      {"id", "reason"} per record that could not be evaluated
    summary.json       the mean of every metric (nanoocr.eval.metrics) over samples, `n`, and the counts
                       read = n + skipped
    summary.md         the same as a Markdown table (also printed)

Notable features:
- every record passes `nanoocr.data.records.validate_record` (JSONL image paths resolved inside the data
  root: `../` escapes are refused); a record without an image, without an assistant answer, or that fails
  validation is SKIPPED WITH ITS REASON, counted and listed, never silently dropped;
- the sample's prompt is its first user message, the ground truth the assistant message answering it
  (a leading system message is not part of OCR prompts and is left out; later turns are not scored);
- batched greedy generation (`nanoocr.eval.transcribe.evaluate_records`), one tqdm step per batch; a batch that
  fails on one record (a prompt longer than the model's positions, an image no view of the mode holds) is
  redone record by record, so only that record is skipped, with its reason;
- usage errors before any long work: --out first (a folder evaluate can create and write, holding no MDS
  dataset (index.json) and no summary.json but evaluate's own), then --device, then --model (any way it is
  not a usable export: one error line, `nanoocr.eval.transcribe.load_export`) and --max-new-tokens against the
  model's positions, all before a record is read or generated;
- exit code 0 when the evaluation ran, 1 when nothing could be evaluated, 2 for usage errors.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from nanoocr.eval.metrics import LOWER_IS_BETTER, METRICS

OUTPUTS = ("per_sample.jsonl", "skipped.jsonl", "summary.json", "summary.md")  # the file set evaluate writes


def load_records(spec: str, limit: int | None = None) -> tuple[list[dict], Path | None]:
    """(raw records, data root for relative image paths) of an MDS folder or a JSONL; ValueError if neither."""
    from nanoocr.data.stream import data_source, read_records  # imports torch and Streaming: not before usage checks
    if "remote" in data_source(spec):  # a remote MDS dataset (s3://, gs://, ...): read through a private cache
        return read_records(**data_source(spec), limit=limit), None
    path = Path(spec)
    if path.is_dir():
        if not (path / "index.json").is_file():
            raise ValueError(f"{spec}: a folder but not an MDS dataset (no index.json)")
        return read_records(local=path, limit=limit), None
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise ValueError(f"{spec}: no such file")
        import itertools

        from nanoocr.data.convert import jsonl_records
        return list(itertools.islice(jsonl_records(path), limit)), path.parent
    raise ValueError(f"{spec}: expected an MDS folder (with index.json) or a .jsonl file")


def ocr_pair(record: dict, data_root: Path | None) -> dict:
    """The record reduced to (first user turn, its answer) with image bytes, or ValueError(reason)."""
    from nanoocr.data.records import validate_record
    rec = validate_record(record, data_root)  # RecordError (a ValueError) names the problem
    if rec["image"] is None:
        raise ValueError("no image (a text-only conversation has nothing to transcribe)")
    turns = [m for m in rec["messages"] if m["role"] != "system"]
    # validate_record guarantees user/assistant alternation ending with the assistant, so turns[1] exists.
    return {"id": rec["id"], "image": rec["image"], "messages": turns[:2]}


def split_records(records: list[dict], data_root: Path | None) -> tuple[list[dict], list[dict]]:
    """(evaluable OCR pairs, skipped [{"id", "reason"}]); every record lands in exactly one list."""
    keep, skipped = [], []
    for i, rec in enumerate(records):
        rid = str(rec.get("id") or f"#{i}") if isinstance(rec, dict) else f"#{i}"
        try:
            keep.append(ocr_pair(rec, data_root))
        except ValueError as e:
            skipped.append({"id": rid, "reason": str(e)})
    ids = [r["id"] for r in keep]
    if len(set(ids)) != len(ids):  # evaluate_records re-orders rows by id: duplicates would be ambiguous
        raise ValueError(f"duplicate record ids in the eval set: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    return keep, skipped


def check_out(out: Path) -> None:
    """Create `out`, or ValueError(reason) if evaluate must not or cannot write its OUTPUTS there. Called before
    the model is loaded: a bad --out found after generating would lose hours of results."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        if "index.json" in names:
            raise ValueError(f"{out}: holds an MDS dataset (index.json); its summary.json is the conversion's")
        # evaluate writes per_sample.jsonl and skipped.jsonl before summary.json, and nothing else: a
        # summary.json among other files (a report, a conversion's leftovers) is not evaluate's to replace.
        if "summary.json" in names and not {"per_sample.jsonl", "skipped.jsonl"} <= names <= set(OUTPUTS):
            raise ValueError(f"{out}: holds a summary.json that evaluate did not write (evaluate's own outputs are "
                             f"{', '.join(OUTPUTS)} and nothing else); choose another --out")
        links = [n for n in OUTPUTS if (out / n).is_symlink()]
        if links:  # writing would go through the link, into whatever file it points at
            raise ValueError(f"{out}: {links[0]} is a symlink; refusing to write through it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # writable? (permissions, a read-only mount, a full quota)
            pass
    except OSError as e:
        raise ValueError(f"{out}: cannot create or write this folder ({e.strerror or e})") from None


def evaluate(model, tokenizer, pairs: list[dict], mode: str, batch_size: int,
             max_new_tokens: int) -> tuple[list[dict], list[dict]]:
    """(per-sample rows {"id", "pred", "gt", metrics...}, skipped [{"id", "reason"}]), `batch_size` images per
    generate call. A batch that fails on a record's input is redone one record at a time: only the records
    that fail alone are skipped (one long prompt must not cost its batch-mates, nor the evaluation)."""
    from tqdm import tqdm

    from nanoocr.model.engine import PromptTooLong
    from nanoocr.data.images import ImageError
    from nanoocr.eval.transcribe import evaluate_records

    def generate(chunk):
        return evaluate_records(model, tokenizer, chunk, mode=mode, max_new_tokens=max_new_tokens,
                                batch_size=batch_size)[1]

    rows, skipped = [], []
    for start in tqdm(range(0, len(pairs), batch_size), unit="batch", desc="evaluate", file=sys.stderr):
        chunk = pairs[start:start + batch_size]
        try:
            rows += generate(chunk)
        except (PromptTooLong, ImageError):
            for pair in chunk:
                try:
                    rows += generate([pair])
                except (PromptTooLong, ImageError) as e:
                    skipped.append({"id": pair["id"], "reason": str(e)})
    return rows, skipped


def markdown_table(summary: dict) -> str:
    lines = ["| metric | value | better |", "|---|---:|:---:|"]
    for k in METRICS:
        lines.append(f"| {k} | {summary[k]:.4f} | {'lower' if k in LOWER_IS_BETTER else 'higher'} |")
    k_exact = int(round(summary["exact_match"] * summary["n"]))
    lines += ["", f"n = {summary['n']} evaluated ({k_exact}/{summary['n']} exact), {summary['skipped']} skipped, "
                  f"{summary['read']} read; mode {summary['mode']}"]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], skipped: list[dict], summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # In OUTPUTS' order: summary.json after the per-sample files (check_out recognises evaluate's folders so).
    per_sample, skipped_path, summary_json, summary_md = (out / name for name in OUTPUTS)
    with open(per_sample, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(skipped_path, "w", encoding="utf-8") as f:
        for row in skipped:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    summary_md.write_text(markdown_table(summary))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nanoocr.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="folder written by nanoocr.train.export")
    ap.add_argument("--data", required=True, help="MDS folder (index.json), remote MDS URL (s3://...) or unified-conversation .jsonl")
    ap.add_argument("--out", required=True, help="output folder for per_sample.jsonl, summary.json, summary.md")
    ap.add_argument("--mode", help="image mode (default: the mode the model was trained with)")
    ap.add_argument("--batch-size", type=int, default=8, help="images per generate call")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--limit", type=int, default=None, help="read at most N records")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 0):
        ap.error("--batch-size and --max-new-tokens must be >= 1, --limit >= 0")
    from nanoocr.data.images import MODES
    if args.mode is not None and args.mode not in MODES:
        ap.error(f"--mode {args.mode!r}: expected one of {sorted(MODES)}")
    try:
        check_out(Path(args.out))
    except ValueError as e:
        ap.error(f"--out {e}")

    import torch

    from nanoocr.eval.metrics import summarize
    from nanoocr.eval.transcribe import ExportError, load_export
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        ap.error(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if kind == "cuda" and int(index or 0) >= torch.cuda.device_count():
        ap.error(f"--device {device}: no such CUDA device ({torch.cuda.device_count()} available)")
    try:
        model, tokenizer, meta = load_export(args.model, device=device)
    except ExportError as e:
        ap.error(f"--model {e}")
    if args.max_new_tokens >= model.gpt.rotary_seq_len:  # no record could be evaluated: say so before reading data
        ap.error(f"--max-new-tokens {args.max_new_tokens}: the model holds {model.gpt.rotary_seq_len} positions, "
                 "prompt and image tokens included")
    mode = args.mode or meta["mode"]
    try:
        records, root = load_records(args.data, args.limit)
        pairs, skipped = split_records(records, root)
    except ValueError as e:
        ap.error(f"--data {e}")
    for s in skipped:
        print(f"[skip] {s['id']}: {s['reason']}", file=sys.stderr)
    t0 = time.time()
    rows, failed = evaluate(model, tokenizer, pairs, mode, args.batch_size, args.max_new_tokens)
    for s in failed:
        print(f"[skip] {s['id']}: {s['reason']}", file=sys.stderr)
    skipped += failed
    summary = {**summarize(rows), "skipped": len(skipped), "read": len(records), "mode": mode,
               "model": str(args.model), "data": str(args.data), "max_new_tokens": args.max_new_tokens,
               "seconds": round(time.time() - t0, 2)}
    assert summary["read"] == summary["n"] + summary["skipped"], f"count mismatch: {summary}"
    write_outputs(Path(args.out), rows, skipped, summary)
    print(markdown_table(summary), end="")
    print(f"exact_match: {int(round(summary['exact_match'] * summary['n']))}/{summary['n']}")
    print(f"wrote {args.out}/per_sample.jsonl, summary.json, summary.md", file=sys.stderr)
    if not rows:
        print("error: no record could be evaluated (see skipped.jsonl)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
