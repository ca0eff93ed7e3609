"""The training recipe behind `composer recipes/train.py YAML [key=value ...]`.

main: load_config (nanoocr/train/config.py: YAML + CLI merge, validation) → train: build_trainer
(nanoocr/train/build.py: tokenizer, model, loaders, optimizer, scheduler, algorithms, callbacks, loggers,
from the name -> builder maps in nanoocr/train/builders.py) → `Trainer.fit()` → optional final generation
eval (final_eval) + export (nanoocr/train/export.py).

Sections (llm-foundry shape): variables, model, tokenizer, train_loader, eval_loader, optimizer, scheduler,
algorithms, callbacks, loggers, build_data, final_eval, plus Trainer arguments at the top level (run_name,
max_duration, save_weights_only, ...: any `composer.Trainer` argument passes straight through).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from nanoocr.data.stream import data_source, read_records
from nanoocr.train.build import barrier, build_trainer, is_rank0, run_folder_of
from nanoocr.train.config import ConfigError, load_config


def final_eval(ecfg: dict, model, tokenizer, run_folder: str, mode: str) -> dict:
    """Greedy-transcribe every record (or `limit`) of an MDS folder or remote URL; one line per sample, then
    `exact_match: K/N`."""
    from nanoocr.eval.transcribe import evaluate_records
    records = [r for r in read_records(**data_source(ecfg["data"]), limit=ecfg.get("limit")) if r["image"]]
    summary, rows = evaluate_records(model, tokenizer, records, mode=ecfg.get("mode", mode),
                                     max_new_tokens=ecfg.get("max_new_tokens", 64))
    for row in rows:
        mark = "ok  " if row["exact_match"] else "MISS"
        print(f"[{mark}] {row['id']}: {row['pred']!r}" + ("" if row["exact_match"] else f" (want {row['gt']!r})"))
    k = int(round(summary["exact_match"] * summary["n"]))
    print(f"exact_match: {k}/{summary['n']}", flush=True)
    summary["exact_match_count"] = k
    Path(run_folder).mkdir(parents=True, exist_ok=True)
    with open(Path(run_folder) / "eval.json", "w") as f:
        json.dump({"summary": summary, "samples": rows}, f, indent=2)
    return summary


def train(cfg: dict):
    """Trainer.fit(), then (rank 0; every rank gathers the parameters when sharded) the final generation eval
    and an export; returns the Trainer."""
    trainer, model, tokenizer = build_trainer(cfg)
    trainer.fit()
    run_folder = run_folder_of(cfg)
    mode = cfg["train_loader"]["dataset"].get("mode", "base")

    if cfg.get("final_eval"):
        from nanoocr.model.distributed import full_params
        fe = cfg["final_eval"]
        # Sharded (FSDP): gathering the parameters is collective, so every rank enters full_params; inside
        # nothing communicates, and rank 0 alone evaluates and exports. Not sharded: a no-op.
        with full_params(trainer.state.model):
            if is_rank0():
                final_eval(fe, model, tokenizer, run_folder, mode)
                if fe.get("export", True):
                    from nanoocr.train.export import export_model
                    export_model(model, tokenizer, Path(run_folder) / "export", mode=mode)
    barrier()
    return trainer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: composer recipes/train.py YAML [key=value ...]   (or: python recipes/train.py ...)")
        return 0 if argv else 2
    try:
        cfg = load_config(argv[0], argv[1:])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from nanoocr.data.stream import DataError
    from nanoocr.model.checkpoint import CheckpointError
    from nanoocr.train.callbacks import RunStopped
    try:
        train(cfg)
    except (CheckpointError, DataError, ConfigError, FileNotFoundError) as e:  # the user's input: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # a guard stopped training (non-finite loss or weights, rejected data)
        print(f"error: run stopped: {e}", file=sys.stderr)
        return 1
    return 0
