"""Public OCR benchmarks in their own formats: readers, scorers with each benchmark's normalization, and
writers of predictions in the layout each benchmark's official scripts read.

Every benchmark module has the same five names, so `evaluate --benchmark NAME` can drive any of them:
    read(root, ...)                         -> eval records [{"id", "image", "prompt", ...}] from the local folder
    score(pred, record)                     -> the per-sample metrics of one output
    summarize(rows)                         -> the set's figures (rows: {"id", "pred", **score(...)})
    write_predictions(out, records, preds)  -> the files the benchmark's own scorer reads
    PROMPT                                  -> the default prompt ("<image>\\nFree OCR.")
Nothing is downloaded: `root` is the benchmark's folder as its maintainers distribute it.
"""
from nanoocr.eval.benchmarks import fox, olmocr_bench, omnidocbench

BENCHMARKS = {"fox": fox, "omnidocbench": omnidocbench, "olmocr-bench": olmocr_bench}
