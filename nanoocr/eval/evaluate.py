"""Evaluate an exported model on an OCR eval set or a public benchmark: per-sample results and a summary
(no Composer import).

    python -m nanoocr.evaluate --model DIR --data SPEC --out DIR [--mode M] [--batch-size B]
        [--max-new-tokens N] [--limit N] [--device cpu|cuda] [--no-repeat-ngram 30 --no-repeat-window 90
        --no-repeat-whitelist "<td>,</td>"]
    python -m nanoocr.evaluate --benchmark fox|omnidocbench|olmocr-bench BENCH_DIR --model DIR --out DIR
        [--prompt P] [--fox-lang en|cn] [--fox-tokens 600-1300] [the options above]

--model  a folder written by `nanoocr.train.export` (or a run's `export/`, e.g. runs/tier1_overfit/export)
--data   an MDS folder (holds index.json, as written by `nanoocr.data.convert` / `nanoocr.eval.pages`), or
         a JSONL of unified conversations whose `image` paths are relative to the JSONL's folder

--benchmark NAME BENCH_DIR   a public benchmark's own folder (nanoocr.eval.benchmarks; nothing downloaded):
         fox           Fox's focus_benchmark_test/ (en_page_ocr.json + en_pdf_png/); DeepSeek-OCR's protocol by
                       default: English pages of 600-1300 ground-truth tokens (counted with THIS model's
                       tokenizer: --fox-tokens LO-HI), bins of 100 tokens
         omnidocbench  OmniDocBench.json + images/
         olmocr-bench  olmOCR-Bench's bench_data/ (*.jsonl tests + pdfs/, rendered with poppler); no ground-truth
                       text: the pages' unit tests are the score
         The prompt is the benchmark's ("<image>\nFree OCR.", DeepSeek-OCR's) unless --prompt.

Writes into --out:
    per_sample.jsonl   {"id", "pred", "gt", <every metric>, "ends_in_loop", "stopped"} per evaluated sample, in
                       data order (benchmarks: the benchmark's per-sample scores; olmOCR-Bench: its test results,
                       no "gt"); "loop" (benchmarks) the loop the output ends in, or null
    skipped.jsonl      {"id", "reason"} per record that could not be evaluated
    summary.json       the mean of every metric (nanoocr.eval.metrics) over samples, `n`, and the counts
                       read = n + skipped, the repetition figures (repetition_rate: the share of outputs that
                       end in a loop, nanoocr.eval.repetition; no_stop_rate: ran to --max-new-tokens) and the
                       guard used; benchmarks: {"scores": the benchmark's summary, "repetition", "not_computed"}
    summary.md         the same as Markdown tables (also printed)
    predictions/       benchmarks: the outputs in the layout the benchmark's own scorer reads (Fox's runner JSON
                       fox_<lang>.json; OmniDocBench <image stem>.md; olmOCR-Bench <group>/<name>_pg<p>_repeat1.md,
                       a candidate folder to copy into bench_data/)
    fox_precision_by_bin.png   Fox: precision and 1 - edit distance by ground-truth token bin

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
- decoding uses the no-repeat n-gram guard of the serving stack (vLLM NGramPerReqLogitsProcessor semantics,
  nanoocr.model.ngram_guard), by default DeepSeek-OCR's image-script settings 30 / 90 with <td>, </td>
  whitelisted when each is one token of the model's tokenizer; --no-repeat-ngram 0 measures the raw model;
- exit code 0 when the evaluation ran, 1 when nothing could be evaluated, 2 for usage errors.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from nanoocr.eval.metrics import LOWER_IS_BETTER, METRICS

OUTPUTS = ("per_sample.jsonl", "skipped.jsonl", "summary.json", "summary.md")  # the file set evaluate writes
PREDICTIONS, FOX_PLOT = "predictions", "fox_precision_by_bin.png"  # and, for a benchmark, these
ALL_OUTPUTS = frozenset(OUTPUTS + (PREDICTIONS, FOX_PLOT))


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
        ours = {"per_sample.jsonl", "skipped.jsonl"} <= names <= ALL_OUTPUTS
        if "summary.json" in names and not ours:
            raise ValueError(f"{out}: holds a summary.json that evaluate did not write (evaluate's own outputs are "
                             f"{', '.join(sorted(ALL_OUTPUTS))} and nothing else); choose another --out")
        # a benchmark run replaces predictions/ as a whole (stale pages must not linger): only evaluate's own
        if PREDICTIONS in names and not (ours and "summary.json" in names):
            raise ValueError(f"{out}: holds a {PREDICTIONS}/ that evaluate did not write; choose another --out")
        links = [n for n in sorted(ALL_OUTPUTS) if (out / n).is_symlink()]
        if links:  # writing would go through the link, into whatever file it points at
            raise ValueError(f"{out}: {links[0]} is a symlink; refusing to write through it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # writable? (permissions, a read-only mount, a full quota)
            pass
    except OSError as e:
        raise ValueError(f"{out}: cannot create or write this folder ({e.strerror or e})") from None


def run_batches(items: list[dict], batch_size: int, generate) -> tuple[list[dict], list[dict]]:
    """(the rows `generate(chunk)` returns, skipped [{"id", "reason"}]), `batch_size` items per call. A batch that
    fails on an item's input is redone one item at a time: only the items that fail alone are skipped (one
    long prompt must not cost its batch-mates, nor the evaluation)."""
    from tqdm import tqdm

    from nanoocr.model.engine import PromptTooLong
    from nanoocr.data.images import ImageError

    rows, skipped = [], []
    for start in tqdm(range(0, len(items), batch_size), unit="batch", desc="evaluate", file=sys.stderr):
        chunk = items[start:start + batch_size]
        try:
            rows += generate(chunk)
        except (PromptTooLong, ImageError):
            for item in chunk:
                try:
                    rows += generate([item])
                except (PromptTooLong, ImageError) as e:
                    skipped.append({"id": item["id"], "reason": str(e)})
    return rows, skipped


def evaluate(model, tokenizer, pairs: list[dict], mode: str, batch_size: int,
             max_new_tokens: int, **generate_kwargs) -> tuple[list[dict], list[dict]]:
    """(per-sample rows {"id", "pred", "gt", metrics..., "ends_in_loop", "stopped"}, skipped [{"id", "reason"}])
    of OCR pairs, `batch_size` images per generate call (run_batches)."""
    from nanoocr.eval.transcribe import evaluate_records

    def generate(chunk):
        return evaluate_records(model, tokenizer, chunk, mode=mode, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, **generate_kwargs)[1]

    return run_batches(pairs, batch_size, generate)


def markdown_table(summary: dict) -> str:
    lines = ["| metric | value | better |", "|---|---:|:---:|"]
    for k in METRICS:
        lines.append(f"| {k} | {summary[k]:.4f} | {'lower' if k in LOWER_IS_BETTER else 'higher'} |")
    for k in ("repetition_rate", "no_stop_rate"):  # share of outputs ending in a loop / running to the budget
        if k in summary:
            lines.append(f"| {k} | {summary[k]:.4f} | lower |")
    for k in ("chars_per_vision_token", "read_chars_per_vision_token"):  # ground truth / read chars per image token
        if k in summary:
            lines.append(f"| {k} | {summary[k]:.4f} | higher |")
    k_exact = int(round(summary["exact_match"] * summary["n"]))
    lines += ["", f"n = {summary['n']} evaluated ({k_exact}/{summary['n']} exact), {summary['skipped']} skipped, "
                  f"{summary['read']} read; mode {summary['mode']}"]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], skipped: list[dict], summary: dict | None) -> None:
    """The per-sample files, then (unless summary is None: a benchmark writes its own after its predictions)
    summary.json and summary.md."""
    out.mkdir(parents=True, exist_ok=True)
    # In OUTPUTS' order: summary.json after the per-sample files (check_out recognises evaluate's folders so).
    per_sample, skipped_path, summary_json, summary_md = (out / name for name in OUTPUTS)
    with open(per_sample, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(skipped_path, "w", encoding="utf-8") as f:
        for row in skipped:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if summary is not None:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        summary_md.write_text(markdown_table(summary))


# ------------------------------------------------------------------------------------------- benchmarks


def parse_token_range(text: str) -> tuple[int, int]:
    """"600-1300" -> (600, 1300), or ValueError."""
    lo, sep, hi = text.partition("-")
    if not (sep and lo.isdigit() and hi.isdigit() and int(lo) < int(hi)):
        raise ValueError(f"{text!r}: expected LO-HI token counts with LO < HI, e.g. 600-1300")
    return int(lo), int(hi)


def read_benchmark(name: str, root: Path, tokenizer, prompt: str, fox_lang: str, fox_tokens: tuple[int, int],
                   limit: int | None) -> tuple[list[dict], list[dict], list[dict]]:
    """(records read, those to generate for, skipped [{"id", "reason"}]) of a benchmark folder; ValueError for a
    folder the reader refuses. Image paths come from the benchmark's files: one outside BENCH_DIR is skipped,
    not read."""
    from nanoocr.eval.benchmarks import fox, olmocr_bench, omnidocbench
    if name == "fox":
        records = fox.read(root, fox_lang, count_tokens=lambda text: len(tokenizer.encode(text)),
                           token_range=fox_tokens, prompt=prompt)
    elif name == "omnidocbench":
        records = omnidocbench.read(root, prompt=prompt)
    else:
        records = olmocr_bench.read(root, render=False, prompt=prompt)
    records = records[:limit]
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):  # the predictions are named by id: duplicates would overwrite each other
        raise ValueError(f"duplicate page ids: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    if name == "olmocr-bench":  # rendered after --limit: a few pages of a large benchmark cost a few renders
        records = [olmocr_bench.render_record(root, r) for r in records]
    keep, skipped = [], []
    for r in records:
        if r.get("error"):
            skipped.append({"id": r["id"], "reason": r["error"]})
        elif isinstance(r["image"], Path) and not r["image"].resolve().is_relative_to(root.resolve()):
            skipped.append({"id": r["id"], "reason": f"image path escapes {root}: {r['image']}"})
        else:
            keep.append(r)
    return records, keep, skipped


def benchmark_rows(bench, keep: list[dict], generated: list[dict]) -> list[dict]:
    """Per-sample rows: the output, the benchmark's scores of it, and whether it ends in a loop / stopped."""
    from nanoocr.eval.repetition import loop_at_end
    by_id = {r["id"]: r for r in keep}
    rows = []
    for g in generated:
        rec, pred = by_id[g["id"]], g["pred"]
        loop = loop_at_end(pred)
        rows.append({"id": g["id"], "pred": pred, **({"gt": rec["gt"]} if "gt" in rec else {}),
                     **bench.score(pred, rec), "ends_in_loop": loop is not None, "loop": loop,
                     "stopped": g["stopped"]})
    order = {r["id"]: i for i, r in enumerate(keep)}
    rows.sort(key=lambda row: order[row["id"]])
    return rows


def fox_plot(path: Path, bins: list[dict]) -> Path:
    """Precision (Fox's) and 1 - edit distance by ground-truth token bin, pages per bin above the bars."""
    import matplotlib
    matplotlib.use("Agg")  # headless; must precede pyplot's import
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(bins) + 2), 3.6))
    x = range(len(bins))
    ax.bar([i - 0.2 for i in x], [b["precision"] for b in bins], 0.4, label="precision (Fox)")
    ax.bar([i + 0.2 for i in x], [b["one_minus_edit_distance"] for b in bins], 0.4, label="1 - edit distance")
    for i, b in zip(x, bins):
        ax.text(i, 1.02, f"n={b['n']}", ha="center", fontsize=8)
    ax.set_xticks(list(x), [b["bin"] for b in bins], rotation=30)
    ax.set_xlim(-0.6, len(bins) - 0.4)  # one bin must not fill the plot
    ax.set_ylim(0, 1.3)
    ax.set_xlabel("ground-truth tokens (this model's tokenizer)")
    ax.set_title("Fox page OCR by ground-truth length")
    ax.legend(loc="upper right", fontsize=8, ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "—" if v is None else str(v)


def _table(rows: list[dict]) -> list[str]:
    """A Markdown table of dicts (columns in first-seen order, scalar values only)."""
    cols = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (dict, list))))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]


def markdown_scores(scores: dict) -> list[str]:
    """Any benchmark's summary as Markdown: its scalar figures in one table, each dict of dicts (per language,
    per JSONL, per test type) or list of dicts (Fox's bins) as a table, its strings and string lists as notes."""
    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in scores.items() if v is None or isinstance(v, (int, float))]
    notes = []
    for k, v in scores.items():
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            lines += ["", f"**{k}**", ""] + _table([{k: name, **x} for name, x in v.items()])
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lines += ["", f"**{k}**", ""] + _table(v)
        elif isinstance(v, str):
            notes.append(f"- {k}: {v}")
        elif isinstance(v, list | dict) and v:
            notes.append(f"- {k}: {', '.join(map(str, v)) if isinstance(v, list) else json.dumps(v)}")
    return lines + ([""] + notes if notes else [])


def benchmark_markdown(summary: dict) -> str:
    rep = summary["repetition"]
    lines = [f"# {summary['benchmark']}: {summary['model']}", "",
             f"n = {summary['n']} evaluated, {summary['skipped']} skipped, {summary['read']} read; mode "
             f"{summary['mode']}; prompt {summary['prompt']!r}; max_new_tokens {summary['max_new_tokens']}; guard "
             f"{json.dumps(summary['guard'], ensure_ascii=False)}", "", "## Scores", ""]
    lines += markdown_scores(summary["scores"])
    lines += ["", "## Repetition", "", "| metric | value | |", "|---|---:|---|",
              f"| repetition_rate | {rep['repetition_rate']:.4f} | {rep['n_looped']}/{rep['n']} outputs end in a "
              "loop (nanoocr.eval.repetition) |",
              f"| olmocr_repeat_fail_rate | {rep['olmocr_repeat_fail_rate']:.4f} | olmOCR-Bench's narrower rule "
              "(> 30 copies of 1-5 characters) |",
              f"| no_stop_rate | {rep['no_stop_rate']:.4f} | ran to max_new_tokens without stopping |", "",
              "## Not computed", ""]
    lines += [f"- {x}" for x in summary["not_computed"]] or ["- (nothing: every figure of this benchmark's reader)"]
    lines += ["", f"Predictions in the benchmark's layout: `{summary['predictions']}` ({summary['official_scorer']})."]
    if summary.get("plot"):
        lines += ["", f"![precision by token bin]({summary['plot']})"]
    return "\n".join(lines) + "\n"


OFFICIAL_SCORER = {
    "fox": "Fox's eval_tools/eval_ocr_test.py --out_file on the .json",
    "omnidocbench": "OmniDocBench's pdf_validation.py with this folder as the end2end prediction",
    "olmocr-bench": "copy the folder into bench_data/ as a candidate and run olmOCR-Bench's benchmark.py",
}


def not_computed(name: str, scores: dict) -> list[str]:
    """What the benchmark's leaderboard reports and this summary does not, said next to the numbers."""
    from nanoocr.eval.benchmarks import omnidocbench
    if name == "fox":
        return ["ground-truth token counts are this model's tokenizer's, not DeepSeek's: the 600-1300 filter and "
                "the bins select other pages than DeepSeek-OCR's 100"]
    if name == "omnidocbench":
        return list(omnidocbench.NOT_COMPUTED) + ["text edit is a whole-page comparison, not OmniDocBench's "
                                                  "quick_match pairing (see the note)"]
    out = [f"olmOCR-Bench {k} tests ({n} here): not run offline" for k, n in sorted(scores["not_scored"].items())]
    return out + ["overall is over the present / absent / order / baseline tests only"]


def run_benchmark(args, model, tokenizer, mode: str, generate_kwargs: dict, guard_info: dict, ap) -> int:
    from nanoocr.eval.benchmarks import BENCHMARKS
    from nanoocr.eval.repetition import repetition_summary
    from nanoocr.eval.transcribe import transcribe
    name, root = args.benchmark[0], Path(args.benchmark[1])
    bench = BENCHMARKS[name]
    prompt = args.prompt or bench.PROMPT
    try:
        records, keep, skipped = read_benchmark(name, root, tokenizer, prompt, args.fox_lang, args.fox_tokens,
                                                args.limit)
    except ValueError as e:
        ap.error(f"--benchmark {name} {root}: {e}")
    for s in skipped:
        print(f"[skip] {s['id']}: {s['reason']}", file=sys.stderr)

    def generate(chunk):
        texts, stopped = transcribe(model, tokenizer, [r["image"] for r in chunk], prompt=prompt, mode=mode,
                                    max_new_tokens=args.max_new_tokens, batch_size=len(chunk),
                                    return_stopped=True, **generate_kwargs)
        return [{"id": r["id"], "pred": t, "stopped": s} for r, t, s in zip(chunk, texts, stopped)]

    t0 = time.time()
    generated, failed = run_batches(keep, args.batch_size, generate)
    for s in failed:
        print(f"[skip] {s['id']}: {s['reason']}", file=sys.stderr)
    skipped += failed
    rows = benchmark_rows(bench, keep, generated)
    # olmOCR-Bench fails the tests of a page without output (its runner's missing .md): it gets every page read
    scores = bench.summarize(rows, records=records) if name == "olmocr-bench" else bench.summarize(rows)
    summary = {"benchmark": name, "data": str(root), "model": str(args.model), "mode": mode, "prompt": prompt,
               "max_new_tokens": args.max_new_tokens, "guard": guard_info, "n": len(rows), "skipped": len(skipped),
               "read": len(records), "scores": scores,
               "repetition": repetition_summary([r["pred"] for r in rows], stopped=[r["stopped"] for r in rows]),
               "not_computed": not_computed(name, scores), "predictions": None,
               "official_scorer": OFFICIAL_SCORER[name], "plot": None, "seconds": round(time.time() - t0, 2)}
    if name == "fox":
        summary["fox"] = {"lang": args.fox_lang, "token_range": list(args.fox_tokens)}
    assert summary["read"] == summary["n"] + summary["skipped"], f"count mismatch: {summary}"
    by_id = {r["id"]: r for r in keep}
    write_benchmark(Path(args.out), bench, [by_id[r["id"]] for r in rows], rows, skipped, summary)
    print(f"wrote {args.out}/per_sample.jsonl, skipped.jsonl, summary.json, summary.md, {summary['predictions']}"
          + (f", {summary['plot']}" if summary["plot"] else ""), file=sys.stderr)
    if not rows:
        print("error: no page could be evaluated (see skipped.jsonl)", file=sys.stderr)
        return 1
    return 0


def write_benchmark(out: Path, bench, records: list[dict], rows: list[dict], skipped: list[dict], summary: dict):
    """per_sample and skipped first, then predictions/ (and Fox's plot), summary.json and .md last: check_out
    recognises evaluate's folders by that order. Fills summary's "predictions" and "plot"; prints the .md."""
    write_outputs(out, rows, skipped, None)
    pred_dir = out / PREDICTIONS
    if pred_dir.exists():  # check_out made sure it is evaluate's: replaced whole, so no stale page stays
        shutil.rmtree(pred_dir)
    pred_dir.mkdir()
    preds = [r["pred"] for r in rows]
    (out / FOX_PLOT).unlink(missing_ok=True)  # a previous run's plot would not be this run's
    if summary["benchmark"] == "fox":
        path = bench.write_predictions(pred_dir / f"fox_{summary['fox']['lang']}.json", records, preds)
        summary["predictions"] = str(path.relative_to(out.resolve()))
        if summary["scores"]["bins"]:
            summary["plot"] = fox_plot(out / FOX_PLOT, summary["scores"]["bins"]).name
        else:
            summary["not_computed"].append("the precision-by-bin plot: no page was binned")
    else:
        bench.write_predictions(pred_dir, records, preds)
        summary["predictions"] = PREDICTIONS + "/"
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    md = benchmark_markdown(summary)
    (out / "summary.md").write_text(md)
    print(md, end="")


# ------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    from nanoocr.eval.benchmarks import BENCHMARKS  # pure Python readers: no torch yet
    from nanoocr.eval.repetition import add_guard_args, check_guard_args
    ap = argparse.ArgumentParser(prog="python -m nanoocr.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="folder written by nanoocr.train.export")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="MDS folder (index.json), remote MDS URL (s3://...) or unified-conversation .jsonl")
    src.add_argument("--benchmark", nargs=2, metavar=("NAME", "DIR"),
                     help=f"a public benchmark ({', '.join(BENCHMARKS)}) and its local folder")
    ap.add_argument("--out", required=True, help="output folder for per_sample.jsonl, summary.json, summary.md")
    ap.add_argument("--mode", help="image mode (default: the mode the model was trained with)")
    ap.add_argument("--batch-size", type=int, default=8, help="images per generate call")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--limit", type=int, default=None, help="read at most N records (benchmarks: pages)")
    ap.add_argument("--prompt", help="--benchmark only: the user prompt, holding <image> once (default: the "
                                     "benchmark's, DeepSeek-OCR's '<image>\\nFree OCR.')")
    ap.add_argument("--fox-lang", choices=("en", "cn"), default=None, help="--benchmark fox: the page set (en)")
    ap.add_argument("--fox-tokens", default=None, help="--benchmark fox: keep pages whose ground truth has LO-HI "
                                                       "tokens, binned by 100 (default 600-1300, DeepSeek-OCR's)")
    add_guard_args(ap)
    from nanoocr.model.precision import add_device_args
    add_device_args(ap)
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 0):
        ap.error("--batch-size and --max-new-tokens must be >= 1, --limit >= 0")
    if check_guard_args(args):
        ap.error(check_guard_args(args))
    from nanoocr.data.images import MODES
    if args.mode is not None and args.mode not in MODES:
        ap.error(f"--mode {args.mode!r}: expected one of {sorted(MODES)}")
    if args.benchmark is None:
        benchmark_only = {"--prompt": args.prompt, "--fox-lang": args.fox_lang, "--fox-tokens": args.fox_tokens}
        for flag, value in benchmark_only.items():
            if value is not None:
                ap.error(f"{flag} goes with --benchmark (a --data set's prompts are its records' user turns)")
    else:
        name, bench_dir = args.benchmark
        if name not in BENCHMARKS:
            ap.error(f"--benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}")
        if not Path(bench_dir).is_dir():
            ap.error(f"--benchmark {name} {bench_dir}: not a folder (the benchmark's own folder, as distributed)")
        if name != "fox" and (args.fox_lang or args.fox_tokens):
            ap.error(f"--fox-lang / --fox-tokens go with --benchmark fox, not {name}")
        from nanoocr.data.records import IMAGE_TAG
        if args.prompt is not None and args.prompt.count(IMAGE_TAG) != 1:
            ap.error(f"--prompt must contain {IMAGE_TAG} exactly once, got {args.prompt!r}")
        args.fox_lang = args.fox_lang or "en"
        try:
            from nanoocr.eval.benchmarks import fox
            args.fox_tokens = parse_token_range(args.fox_tokens) if args.fox_tokens else fox.TOKEN_RANGE
        except ValueError as e:
            ap.error(f"--fox-tokens {e}")
    try:
        check_out(Path(args.out))
    except ValueError as e:
        ap.error(f"--out {e}")

    import torch

    from nanoocr.eval.metrics import summarize
    from nanoocr.eval.repetition import guard_kwargs
    from nanoocr.eval.transcribe import ExportError, load_export, vision_token_density
    from nanoocr.model.precision import device_from_args
    try:
        device = device_from_args(args)
    except ValueError as e:
        ap.error(str(e))
    try:
        model, tokenizer, meta = load_export(args.model, device=device, dtype=args.dtype)
    except ExportError as e:
        ap.error(f"--model {e}")
    print(f"[nanoocr] precision: {meta['precision']}", file=sys.stderr, flush=True)
    if args.max_new_tokens >= model.gpt.rotary_seq_len:  # no record could be evaluated: say so before reading data
        ap.error(f"--max-new-tokens {args.max_new_tokens}: the model holds {model.gpt.rotary_seq_len} positions, "
                 "prompt and image tokens included")
    mode = args.mode or meta["mode"]
    generate_kwargs, guard_info = guard_kwargs(args, tokenizer)
    if args.benchmark is not None:
        return run_benchmark(args, model, tokenizer, mode, generate_kwargs, guard_info, ap)
    try:
        records, root = load_records(args.data, args.limit)
        pairs, skipped = split_records(records, root)
    except ValueError as e:
        ap.error(f"--data {e}")
    for s in skipped:
        print(f"[skip] {s['id']}: {s['reason']}", file=sys.stderr)
    t0 = time.time()
    rows, failed = evaluate(model, tokenizer, pairs, mode, args.batch_size, args.max_new_tokens, **generate_kwargs)
    for s in failed:
        print(f"[skip] {s['id']}: {s['reason']}", file=sys.stderr)
    skipped += failed
    summary = {**summarize(rows), **vision_token_density(rows), "skipped": len(skipped), "read": len(records), "mode": mode,
               "model": str(args.model), "data": str(args.data), "max_new_tokens": args.max_new_tokens,
               "guard": guard_info, "seconds": round(time.time() - t0, 2)}
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
