"""Convert data sources into Streaming MDS shards, validating every record and reporting every rejection.

    python -m nanoocr.convert_to_mds --input SPEC [--input SPEC ...] --out DIR_OR_URL [--workers N]
        [--max-side PX] [--max-pixels N] [--compression zstd|none] [--limit N] [--pdf-root DIR]

SPEC is one of
    path/to/file.jsonl             one unified conversation per line: {"id"?, "source"?, "messages": [...],
                                   "image"?: path relative to the jsonl's folder}
    pdf:path/to/dir                every page of every PDF under dir (nanoocr.data.pdf)
    hf:<dataset-id>[:<config>][:<split>]   a hub dataset read by the Task whose HUB_ID it is
    task:<Name>[:<source>[:<split>]]       a Task class from nanoocr.data.tasks on a hub id or local path
    synthetic:<generator>:<n>[:<seed>]     a built-in generator (nanoocr.data.synthetic.GENERATORS)

Output: MDS columns `id` str, `source` str, `messages` json, `image` bytes (original encoding; b"" when
none), plus `rejected.jsonl` (one {"id", "reason", "source"} per rejection) and `summary.json` ({"read",
"written", "rejected", "by_source", "by_reason", "reason_examples", "seconds", "records_per_s"}) with
read == written + rejected, asserted. With a remote --out they are uploaded beside the shards
(URL/rejected.jsonl, URL/summary.json).

A conversion is visible only once complete: OUT/index.json (what `build_data` and Streaming take for a built
data set) exists only after every record was handled and every file written. A local OUT is built in
OUT.incomplete beside it and renamed to OUT at the end (check_out's empty OUT folder is removed first); a
crash, Ctrl-C or full disk removes OUT.incomplete, and one left by a kill -9 is named on stderr by the next
run, removed and rebuilt. A remote OUT is built in a local temporary folder, then the shards, rejected.jsonl,
summary.json and index.json LAST are uploaded; after a failure nothing named index.json is. A conversion that
writes no record publishes no MDS: its reports go to OUT.rejected/ (rejected.jsonl, summary.json) and OUT
stays empty, so the same command can run again once the data is fixed (a remote OUT gets the two reports and
no index.json); the next conversion to OUT that writes records removes OUT.rejected/.

Exit codes: 0 when the conversion ran to the end and wrote at least one record; 1 when it wrote nothing
(every record rejected, or none read: the most common rejection reason is printed, and where the reports
are), or when writing the output failed (e.g. a full disk: the output and the OS error are printed);
2 for usage errors (a bad SPEC, an unusable --out, --max-side or --max-pixels below 1, a source that needs
local files it was not given, e.g. `hf:allenai/olmOCR-mix-1025` without `--pdf-root`), reported before
anything is read.

Notable features:
- validation (`nanoocr.data.records.validate_record`: conversation shape, text length, `<image>` tags, UTF-8,
  paths inside the data root, image file size before reading, full image decode) runs in a process pool
  when --workers > 1, in fixed-size batches so memory stays bounded and the output order is the input
  order (deterministic shards);
- JSONL lines are read at most MAX_LINE_BYTES at a time (a longer line is rejected, naming it, and skipped);
  lines that are not UTF-8, not JSON, not an object or nested deeper than MAX_JSON_DEPTH are rejected too;
- PDF pages are rendered by --workers concurrent poppler processes (threads suffice: the work is in
  child processes);
- remote --out (s3://, gs://, oci://, ...): uploaded with Streaming's CloudUploader. Credentials come from
  the usual environment of each cloud SDK.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator

from nanoocr.data.images import MAX_PIXELS
from nanoocr.data.records import RecordError, validate_record

COLUMNS = {"id": "str", "source": "str", "messages": "json", "image": "bytes"}
INDEX_JSON, REJECTED_JSONL, SUMMARY_JSON = "index.json", "rejected.jsonl", "summary.json"
REPORTS = (REJECTED_JSONL, SUMMARY_JSON)
INCOMPLETE, REJECTED = ".incomplete", ".rejected"  # suffixes of the folders beside a local --out
BATCH_PER_WORKER = 32
# One JSONL line: a valid record (MAX_RECORD_CHARS of text) takes at most 48 MB even as \\u escapes.
MAX_LINE_BYTES = 64 * 1024 * 1024
# A unified record nests 3 levels (record, messages, message). Deep nesting breaks json.loads (~1000 levels)
# and pickling to the --workers processes (~500): bounded well below both.
MAX_JSON_DEPTH = 64


class SpecError(ValueError):
    """A --input SPEC that cannot be used (a usage error, exit code 2)."""


def _lines(f) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) of a binary file; None for a line longer than MAX_LINE_BYTES, which is skipped to
    its end a bounded piece at a time, so a 10 GB line without a newline is never held in memory."""
    lineno = 0
    while raw := f.readline(MAX_LINE_BYTES + 1):
        lineno += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            raw = None
        yield lineno, raw


def _nested_deeper(obj, limit: int) -> bool:
    """Whether `obj` nests lists/dicts more than `limit` levels (iterative: a recursive walk is the problem)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def jsonl_records(path: Path) -> Iterator[dict]:
    """Records from a unified-format JSONL; undecodable lines become error records naming the line."""
    stem = path.stem
    with open(path, "rb") as f:
        for lineno, raw in _lines(f):
            rid = f"{path.name}:{lineno}"
            if raw is None:
                yield {"id": rid, "source": stem, "error": f"line too long: line {lineno} holds more than "
                                                           f"{MAX_LINE_BYTES} bytes (MAX_LINE_BYTES)"}
                continue
            if not raw.strip():
                continue  # blank lines separate nothing and hold no record
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield {"id": rid, "source": stem, "error": f"not valid UTF-8: line {lineno}, byte offset {e.start}"}
                continue
            try:
                obj = json.loads(line)
                too_deep = _nested_deeper(obj, MAX_JSON_DEPTH)
            except json.JSONDecodeError as e:
                yield {"id": rid, "source": stem, "error": f"not valid JSON: line {lineno} ({e.msg} at column {e.colno})"}
                continue
            except RecursionError:  # json.loads recurses once per level: ~1000 levels exhaust the stack
                too_deep = True
            if too_deep:
                yield {"id": rid, "source": stem, "error": f"JSON nested too deeply: line {lineno} (more than "
                                                           f"{MAX_JSON_DEPTH} levels of arrays/objects)"}
                continue
            if not isinstance(obj, dict):
                yield {"id": rid, "source": stem, "error": f"not a JSON object: line {lineno}"}
                continue
            image = obj.get("image", obj.get("image_path"))  # image_path: the older data-plan spelling
            yield {"id": str(obj.get("id") or rid), "source": str(obj.get("source") or stem),
                   "messages": obj.get("messages"), "image": image or None}


def task_records(task) -> Iterator[dict]:
    for i in range(len(task)):
        try:
            yield task[i]
        except Exception as e:  # a source bug or a broken row must not stop the conversion
            yield {"id": f"{task.name}:{i}", "source": task.name, "error": f"task failed: {type(e).__name__}: {e}"}


def _task_kwargs(cls, pdf_root: str | None) -> dict:
    """The options a Task class accepts among those given on the command line (now: --pdf-root)."""
    import inspect
    return {"pdf_root": pdf_root} if pdf_root and "pdf_root" in inspect.signature(cls.__init__).parameters else {}


def parse_spec(spec: str, workers: int = 1, pdf_root: str | None = None) -> tuple[Iterator[dict], Path | None]:
    """(record iterator, data root for relative image paths) for one --input SPEC, or SpecError.

    `pdf_root` goes to the Tasks that read PDFs from a local copy of their repo (OlmOCR)."""
    kind, _, rest = spec.partition(":")
    if kind == "pdf":
        from nanoocr.data.pdf import pdf_pages
        if not Path(rest).exists():
            raise SpecError(f"{spec}: no such file or folder {rest!r}")
        return pdf_pages(rest, workers=workers), None
    if kind == "synthetic":
        from nanoocr.data.synthetic import GENERATORS
        parts = rest.split(":")
        if len(parts) not in (2, 3) or parts[0] not in GENERATORS or not all(p.isdigit() for p in parts[1:]):
            raise SpecError(f"{spec}: expected synthetic:<generator>:<n>[:<seed>] with generator in {sorted(GENERATORS)}")
        records = GENERATORS[parts[0]](int(parts[1]), int(parts[2]) if len(parts) == 3 else 0)
        try:  # generators are lazy: pull the first record now so a bad argument is a usage error
            first = next(records, None)
        except ValueError as e:
            raise SpecError(f"{spec}: {e}")
        return itertools.chain([first] if first is not None else [], records), None
    if kind in ("hf", "task"):
        import nanoocr.data.tasks as tasks
        from nanoocr.data.tasks.common import NeedsLocalFiles
        parts = rest.split(":")
        try:
            if kind == "hf":
                matches = [c for c in tasks.SOURCES if c.HUB_ID == parts[0] and issubclass(c, tasks.HFTask)]
                if not matches:
                    known = sorted(c.HUB_ID for c in tasks.SOURCES if issubclass(c, tasks.HFTask))
                    raise SpecError(f"{spec}: no Task reads {parts[0]!r} from the hub (known: {known}); "
                                    "for a downloaded release use task:<Name>:<path>")
                config = parts[1] if len(parts) > 1 and parts[1] else None
                task = matches[0](split=parts[2] if len(parts) > 2 else "train", config=config,
                                  **_task_kwargs(matches[0], pdf_root))
            else:
                cls = getattr(tasks, parts[0], None)
                if cls not in tasks.SOURCES:
                    raise SpecError(f"{spec}: unknown task {parts[0]!r} (known: {[c.__name__ for c in tasks.SOURCES]})")
                args = parts[1:2]
                kwargs = {"split": parts[2]} if len(parts) > 2 else {}
                kwargs.update(_task_kwargs(cls, pdf_root))
                task = cls(*args, **kwargs)
        except SpecError:
            raise
        except NeedsLocalFiles as e:  # raised before anything was read: say what to pass
            raise SpecError(f"{spec}: {e}")
        except Exception as e:  # cannot even open the source: the user's input is wrong
            raise SpecError(f"{spec}: cannot open source: {type(e).__name__}: {e}")
        return task_records(task), None
    path = Path(spec)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise SpecError(f"{spec}: no such file")
        return jsonl_records(path), path.parent
    raise SpecError(f"{spec}: not a .jsonl file nor pdf:, hf:, task:, synthetic: SPEC")


def _validate(item):
    """Worker: (label, record, data_root, max_pixels, max_side) -> (label, record | None, rejection | None)."""
    label, rec, root, max_pixels, max_side = item
    try:
        return label, validate_record(rec, root, max_pixels=max_pixels, max_side=max_side), None
    except RecordError as e:
        reason = str(e)
    except Exception as e:  # a validator bug on one record is that record's rejection, not a crash
        reason = f"validation failed: {type(e).__name__}: {e}"
    rid = rec.get("id", "") if isinstance(rec, dict) else ""
    return label, None, {"id": str(rid), "reason": reason, "source": label}


def write_mds(inputs: list[tuple[str, Iterator[dict], Path | None]], folder: Path, workers: int = 1,
              max_side: int | None = None, max_pixels: int = MAX_PIXELS, compression: str | None = "zstd",
              limit: int | None = None) -> dict:
    """Validate every record of `inputs` [(label, records, data_root)] and write the MDS shards, rejected.jsonl,
    index.json and summary.json into the new local `folder`; returns the summary.

    An exception (a crash, Ctrl-C, a full disk) leaves `folder` without index.json or summary.json: Streaming's
    context manager would write index.json on the way out of an exception, so the writer is finished by hand."""
    from streaming import MDSWriter
    from tqdm import tqdm

    items = ((label, rec, root, max_pixels, max_side)
             for label, records, root in inputs for rec in itertools.islice(records, limit))
    # The pool is forked before MDSWriter starts its upload threads (forking a threaded process is unsafe).
    pool = Pool(workers) if workers > 1 else None
    counts = {label: Counter(read=0, written=0, rejected=0) for label, _, _ in inputs}
    reasons: Counter = Counter()
    examples: dict[str, str] = {}  # the first full reason of each kind
    t0 = time.time()
    try:
        writer = MDSWriter(out=str(folder), columns=COLUMNS, compression=compression)
        with open(folder / REJECTED_JSONL, "w", encoding="utf-8") as rejected, tqdm(unit="rec", desc="convert") as bar:
            while batch := list(itertools.islice(items, max(1, workers) * BATCH_PER_WORKER)):
                results = pool.map(_validate, batch) if pool else map(_validate, batch)
                for label, rec, rej in results:
                    counts[label]["read"] += 1
                    if rec is not None:
                        writer.write({**rec, "image": rec["image"] or b""})
                        counts[label]["written"] += 1
                    else:
                        rejected.write(json.dumps(rej, ensure_ascii=False) + "\n")
                        counts[label]["rejected"] += 1
                        kind = rej["reason"].split(":")[0]
                        reasons[kind] += 1
                        examples.setdefault(kind, f"{rej['id']}: {rej['reason']}")
                    bar.update(1)
        writer.finish()  # the last shard, then index.json
    finally:
        if pool:
            pool.close()
            pool.join()
    total = sum(counts.values(), Counter())
    seconds = time.time() - t0
    summary = {"read": total["read"], "written": total["written"], "rejected": total["rejected"],
               "by_source": {k: dict(v) for k, v in counts.items()}, "by_reason": dict(reasons),
               "reason_examples": examples,
               "seconds": round(seconds, 3), "records_per_s": round(total["read"] / max(seconds, 1e-9), 2)}
    assert summary["read"] == summary["written"] + summary["rejected"], f"count mismatch: {summary}"
    # Written after the shards are on disk: it never claims rows that a full disk kept out.
    (folder / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def sibling(out: str, suffix: str) -> Path:
    """The local folder `out` + `suffix`, beside `out` (made absolute: `out` may be "." or end with "/")."""
    path = Path(os.path.abspath(out))
    return path.with_name(path.name + suffix)


def reports_at(out: str, written: int) -> str:
    """Where the reports of a conversion to `out` that wrote `written` records are (see publish)."""
    return out if written or "://" in out else str(sibling(out, REJECTED))


def staging_folder(out: str) -> Path:
    """A new, empty local folder to build `out` in: OUT.incomplete beside a local OUT, a temporary one for a URL.

    An OUT.incomplete already there was left by a conversion that could not clean up (kill -9, power loss):
    it is named, removed, and this conversion starts from scratch."""
    if "://" in out:
        return Path(tempfile.mkdtemp(prefix="nanoocr-convert-"))
    stage = sibling(out, INCOMPLETE)
    if stage.exists():
        print(f"an interrupted conversion left {stage}; removing it and converting again", file=sys.stderr)
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return stage


def publish(stage: Path, out: str, complete: bool, uploader=None) -> None:
    """Make the conversion finished in `stage` visible at `out` at once; only its reports when not `complete`.

    Local: `stage` is renamed to OUT (replacing the empty folder check_out left) and an older OUT.rejected is
    dropped; not complete, `stage` loses its index.json files and becomes OUT.rejected. Remote (`uploader`):
    the shards, then the reports, then index.json last and only when complete: a reader that finds it finds
    every file it lists."""
    if uploader is not None:
        names = sorted(p.name for p in stage.iterdir())
        with ThreadPoolExecutor(max_workers=8) as threads:  # shards upload in parallel, as MDSWriter's do
            list(threads.map(uploader.upload_file, [n for n in names if n not in (*REPORTS, INDEX_JSON)]))
        for name in REPORTS + ((INDEX_JSON,) if complete else ()):
            uploader.upload_file(name)
        return
    rejected = sibling(out, REJECTED)
    if not complete:
        for index in stage.rglob(INDEX_JSON):
            index.unlink()  # an MDS of 0 samples would pass for a built data set
        shutil.rmtree(rejected, ignore_errors=True)
        stage.rename(rejected)
        return
    if os.path.isdir(out):
        os.rmdir(out)  # empty (check_out); rmdir refuses a folder something was put into meanwhile
    stage.rename(out)
    shutil.rmtree(rejected, ignore_errors=True)  # the reports of an earlier attempt that wrote nothing


def convert(inputs: list[tuple[str, Iterator[dict], Path | None]], out: str, workers: int = 1,
            max_side: int | None = None, max_pixels: int = MAX_PIXELS, compression: str | None = "zstd",
            limit: int | None = None) -> dict:
    """Validate and write every record of `inputs` [(label, records, data_root)] to MDS at `out` (a local folder
    or a URL), which shows the result only once it is complete (see publish); returns the summary."""
    if problem := check_out(out):  # now, not at the rename after all the work
        raise ValueError(problem)
    stage = staging_folder(out)
    try:
        uploader = None
        if "://" in out:  # made while `stage` is empty, as Streaming requires; S3 checks the bucket here
            from streaming.base.storage import CloudUploader
            uploader = CloudUploader.get((str(stage), out))
        summary = write_mds(inputs, stage, workers, max_side, max_pixels, compression, limit)
        publish(stage, out, summary["written"] > 0, uploader)
    finally:
        # Gone once published locally; what is left is a failed conversion's or the uploaded files' folder.
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def check_out(out: str) -> str | None:
    """Why `out` cannot be used as an output location, or None. Remote URLs are checked by convert."""
    if "://" in out:
        return None
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create output folder {out}: {e.strerror}"
    if not os.access(path, os.W_OK):
        return f"output folder {out} is not writable"
    if any(path.iterdir()):
        return f"output folder {out} is not empty (MDS shards are never mixed with older ones)"
    if not os.access(Path(os.path.abspath(out)).parent, os.W_OK):
        return f"the folder holding {out} is not writable (the conversion is built beside it, in {out}{INCOMPLETE})"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nanoocr.convert_to_mds", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", action="append", required=True, metavar="SPEC", help="a source (repeatable)")
    ap.add_argument("--out", required=True, help="output folder or remote URL (s3://bucket/path, ...)")
    ap.add_argument("--workers", type=int, default=1, help="validation processes / PDF renderers")
    ap.add_argument("--max-side", type=int, default=None, help="downscale images whose longer side exceeds PX")
    ap.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="reject images with more pixels (bomb guard)")
    ap.add_argument("--compression", choices=["zstd", "none"], default="zstd")
    ap.add_argument("--limit", type=int, default=None, help="read at most N records from each input")
    ap.add_argument("--pdf-root", default=None, metavar="DIR",
                    help="local copy of a hub repo whose rows point at its PDF files (olmOCR-mix-1025: the "
                         "folder holding pdf_tarballs/)")
    args = ap.parse_args(argv)
    if args.workers < 1 or (args.limit is not None and args.limit < 0):
        ap.error("--workers must be >= 1 and --limit >= 0")
    # 0 or less would reject (or fail to downscale) every image: a typo, not a bound.
    if args.max_side is not None and args.max_side < 1:
        ap.error(f"--max-side must be >= 1 pixel, got {args.max_side}")
    if args.max_pixels < 1:
        ap.error(f"--max-pixels must be >= 1, got {args.max_pixels}")
    try:
        inputs = [(spec, *parse_spec(spec, args.workers, args.pdf_root)) for spec in args.input]
    except SpecError as e:
        ap.error(str(e))
    if problem := check_out(args.out):
        ap.error(problem)
    try:
        summary = convert(inputs, args.out, workers=args.workers, max_side=args.max_side,
                          max_pixels=args.max_pixels, limit=args.limit,
                          compression=None if args.compression == "none" else args.compression)
    except OSError as e:  # a full disk, a vanished folder...: the conversion did not finish, nothing was published
        print(f"error: converting to {args.out} failed, nothing was written there: {e}", file=sys.stderr)
        return 1
    print(f"read {summary['read']}, written {summary['written']}, rejected {summary['rejected']} "
          f"({summary['records_per_s']} records/s) -> {args.out}", file=sys.stderr)
    if summary["written"] == 0:  # an empty dataset is a failed conversion, not a success
        if summary["by_reason"]:
            kind, n = Counter(summary["by_reason"]).most_common(1)[0]
            why = (f"all {summary['read']} records were rejected; most common reason ({n}x): {kind!r}, "
                   f"e.g. {summary['reason_examples'][kind]}")
        else:
            why = "the inputs held no records"
        reports = reports_at(args.out, 0)
        print(f"error: nothing written to {args.out}: {why} (every rejection: {reports}/{REJECTED_JSONL}, "
              f"the counts: {reports}/{SUMMARY_JSON})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
