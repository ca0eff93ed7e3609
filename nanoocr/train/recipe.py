"""The training recipe behind `composer recipes/train.py YAML [key=value ...]`.

load_config (OmegaConf YAML + CLI dotlist merge, `variables:` interpolation) → validate (every section
has a fixed key set; a name-keyed section's keys come from its builder's signature; an unknown key is an
error naming it, its section and the closest valid key) → build tokenizer, model, dataloaders, optimizer,
scheduler, algorithms, callbacks, loggers → `Trainer.fit()` → optional final generation eval + export.

Sections (llm-foundry shape): variables, model, tokenizer, train_loader, eval_loader, optimizer, scheduler,
algorithms, callbacks, loggers, plus trainer keys at the top level (run_name, max_duration, ...).
"""
from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf as om

from nanoocr.data.stream import data_source, read_records

log = logging.getLogger("nanoocr")


class ConfigError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------------
# schema

TOP_KEYS = {
    "variables", "run_name", "run_folder", "seed", "max_duration", "device", "precision",
    "device_train_batch_size", "device_train_microbatch_size", "device_eval_batch_size",
    "eval_interval", "eval_subset_num_batches", "save_folder", "save_interval", "save_num_checkpoints_to_keep",
    "save_overwrite", "autoresume", "load_path", "load_weights_only", "load_strict_model_weights", "progress_bar",
    "log_to_console",
    "cpu_keep_freed_memory", "console_log_interval", "python_log_level", "dist_timeout", "fsdp_config",
    "build_data", "model", "tokenizer",
    "train_loader", "eval_loader", "optimizer", "scheduler", "algorithms", "callbacks", "loggers", "final_eval",
}
MODEL_KEYS = {"preset", "sam", "clip", "gpt", "vlm", "pretrained", "activation_checkpointing", "gpt_config_from"}
PRETRAINED_KEYS = {"hf_sam", "hf_clip", "nanochat", "nanochat_step", "deepseek"}
TOKENIZER_KEYS = {"path", "kind", "train_vocab_size"}
BUILD_DATA_KEYS = {"input", "pages", "out", "max_side", "workers", "max_pages", "val_fraction"}
FINAL_EVAL_KEYS = {"data", "mode", "max_new_tokens", "limit", "export"}
# Types of the top-level keys that are not Trainer arguments of the same name (those use Trainer's annotations).
TOP_TYPES = {"device_train_batch_size": "int", "device_eval_batch_size": "int", "run_folder": "str | None",
             "cpu_keep_freed_memory": "bool", "fsdp_config": "dict | None", "build_data": "list | None",
             "model": "dict", "tokenizer": "dict | None", "train_loader": "dict", "eval_loader": "dict | None",
             "optimizer": "dict", "scheduler": "dict | None", "algorithms": "dict | None",
             "callbacks": "dict | None", "loggers": "dict | None", "final_eval": "dict | None",
             "load_path": "str | None", "save_folder": "str | None", "eval_interval": "Time"}


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(valid))})"


def check_keys(section: dict, valid: set, where: str) -> None:
    for key in section:
        if key not in valid:
            raise ConfigError(f"unknown key '{key}' in section '{where}'{_suggest(key, valid)}")


def _builder_keys(fn) -> set:
    params = inspect.signature(fn).parameters
    return {n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_named(cfg: dict, builders: dict, where: str, drop: tuple = ()) -> None:
    """A section `{name: ..., kwargs...}`: the name must be known; kwargs must be the builder's."""
    if "name" not in cfg:
        raise ConfigError(f"section '{where}' needs a 'name' (one of: {', '.join(sorted(builders))})")
    name = cfg["name"]
    if name not in builders:
        raise ConfigError(f"unknown {where} name '{name}'{_suggest(name, builders)}")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    check_keys(kwargs, _builder_keys(builders[name]) - set(drop), f"{where} ({name})")
    check_signature_types(kwargs, builders[name], f"{where} ({name})")


# What a YAML value can be, by the type names an annotation (or a default's type) mentions. Names not
# listed here (Callable, Precision, Device, ...) cannot come from YAML and are ignored; an annotation that
# names none of these is not checked.
_YAML_TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "None": lambda v: v is None, "Optional": lambda v: v is None,
    "list": lambda v: isinstance(v, list), "tuple": lambda v: isinstance(v, list),
    "List": lambda v: isinstance(v, list), "Tuple": lambda v: isinstance(v, list),
    "Sequence": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict), "Dict": lambda v: isinstance(v, dict),
    "Time": lambda v: isinstance(v, (str, int)) and not isinstance(v, bool),
}


def _type_names(annotation, default) -> list[str]:
    import re
    if annotation is inspect.Parameter.empty:
        return [] if default in (None, inspect.Parameter.empty) else [type(default).__name__]
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return [n for n in re.findall(r"[A-Za-z_]+", text) if n in _YAML_TYPES]


def check_type(value, annotation, default, key: str) -> None:
    """ConfigError naming `key` unless `value` fits the annotation (or the default's type); a string for a
    Composer `Time` must parse as one ("100ba", "1ep", "0.5dur", ...)."""
    names = _type_names(annotation, default)
    if "Any" in str(annotation) or not names or value is None and default is None:
        return
    if not any(_YAML_TYPES[n](value) for n in names):
        want = " or ".join(dict.fromkeys({"Time": "a time like '100ba'", "Optional": "null", "None": "null"}.get(n, n)
                                         for n in names))
        raise ConfigError(f"'{key}' must be {want}, got {value!r} ({type(value).__name__})")
    if "Time" in names and isinstance(value, str):
        from composer.core import Time
        try:
            Time.from_timestring(value)
        except ValueError:
            if "str" not in names or key.rsplit(".", 1)[-1] in _TIME_KEYS:
                raise ConfigError(f"'{key}' must be a time like '100ba', '2ep', '1000tok', '0.5dur', got {value!r}") \
                    from None


_TIME_KEYS = {"max_duration", "eval_interval", "save_interval", "console_log_interval", "t_warmup", "t_max"}


def check_signature_types(kwargs: dict, fn, where: str) -> None:
    params = inspect.signature(fn).parameters
    for key, value in kwargs.items():
        if key in params:
            check_type(value, params[key].annotation, params[key].default, f"{where}.{key}")


def validate(cfg: dict) -> None:
    """Every key of a resolved config is known; raises ConfigError naming the first one that is not."""
    from composer import Trainer

    from nanoocr.model import presets
    check_keys(cfg, TOP_KEYS, "<top level>")
    trainer_params = inspect.signature(Trainer.__init__).parameters
    for key, value in cfg.items():
        if key in TOP_TYPES:
            check_type(value, TOP_TYPES[key], None, key)
        elif key in trainer_params:
            check_type(value, trainer_params[key].annotation, trainer_params[key].default, key)
    for key in ("device_train_batch_size", "device_eval_batch_size"):
        if cfg.get(key) is not None and cfg[key] <= 0:
            raise ConfigError(f"'{key}' must be > 0, got {cfg[key]}")
    model = cfg.get("model") or {}
    check_keys(model, MODEL_KEYS, "model")
    check_keys(model.get("pretrained") or {}, PRETRAINED_KEYS, "model.pretrained")
    base = presets.build_config(model.get("preset", "nano"))
    import dataclasses
    for part, config in (("sam", base.sam), ("clip", base.clip), ("gpt", base.gpt), ("vlm", base)):
        fields = {f.name: f for f in dataclasses.fields(config) if f.name not in ("sam", "clip", "gpt")}
        section = model.get(part) or {}
        check_keys(section, set(fields), f"model.{part}")
        for key, value in section.items():
            check_type(value, fields[key].type, getattr(config, key), f"model.{part}.{key}")
    check_keys(cfg.get("tokenizer") or {}, TOKENIZER_KEYS, "tokenizer")
    from nanoocr.data import stream as data
    dataset_keys = _builder_keys(data.OCRStreamingDataset.__init__) - {"tokenizer", "batch_size"}
    for name in ("train_loader", "eval_loader"):
        loader = cfg.get(name)
        if loader is None:
            continue
        check_keys(loader, set(data.LOADER_KEYS), name)
        dataset = loader.get("dataset") or {}
        check_keys(dataset, dataset_keys, f"{name}.dataset")
        check_signature_types({k: v for k, v in dataset.items() if k != "streams"}, data.OCRStreamingDataset.__init__,
                              f"{name}.dataset")
        if not dataset.get("streams"):
            raise ConfigError(f"section '{name}.dataset' needs at least one entry in 'streams'")
        for sname, stream in _streams(dataset):
            check_keys(stream, set(data.STREAM_KEYS), f"{name}.dataset.streams.{sname}")
    for i, item in enumerate(cfg.get("build_data") or []):
        check_keys(item, BUILD_DATA_KEYS, f"build_data[{i}]")
    check_keys(cfg.get("final_eval") or {}, FINAL_EVAL_KEYS, "final_eval")
    check_named(cfg["optimizer"], OPTIMIZERS, "optimizer", drop=("params",))
    if cfg.get("scheduler"):
        check_named(cfg["scheduler"], SCHEDULERS, "scheduler")
    for section, table in (("algorithms", ALGORITHMS), ("callbacks", CALLBACKS), ("loggers", LOGGERS)):
        for name, kwargs in (cfg.get(section) or {}).items():
            if name not in table:
                raise ConfigError(f"unknown {section[:-1]} '{name}' in section '{section}'{_suggest(name, table)}")
            check_keys(kwargs or {}, _builder_keys(table[name]) - {"ctx"}, f"{section}.{name}")
            check_signature_types(kwargs or {}, table[name], f"{section}.{name}")


def _streams(dataset: dict) -> list[tuple[str, dict]]:
    """Streams are a `{name: {...}}` mapping (llm-foundry style) or a list."""
    streams = dataset.get("streams") or {}
    return list(streams.items()) if isinstance(streams, dict) else [(str(i), s) for i, s in enumerate(streams)]


def load_config(yaml_path: str, overrides: list[str]) -> dict:
    """YAML + `key=value` overrides → a plain, resolved, validated dict."""
    import yaml
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException
    if not Path(yaml_path).is_file():
        raise ConfigError(f"config file not found: {yaml_path}")
    try:
        base = om.load(yaml_path)  # YAML safe-loaded by OmegaConf: a python/object tag is an error, never run
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as e:
        raise ConfigError(f"{yaml_path} is not a valid YAML config: {' '.join(str(e).split())}") from None
    if not isinstance(base, DictConfig):
        raise ConfigError(f"{yaml_path}: the top level must be a mapping of keys, not a list")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
    # Applied one by one, in order. A dict or list value replaces its node wholesale: om.merge is deep,
    # so `scheduler={name: step, ...}` would otherwise keep the YAML's old scheduler kwargs.
    merged = base
    try:
        for item in overrides:
            key = item.split("=", 1)[0]
            value = om.select(om.from_dotlist([item]), key)
            om.update(merged, key, value, merge=False)
        cfg = om.to_container(merged, resolve=True)
    except (yaml.YAMLError, OmegaConfBaseException) as e:  # a bad override value, a broken ${interpolation}
        raise ConfigError(f"{' '.join(str(e).split())}") from None
    cfg.pop("variables", None)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------------
# builders (one dict per name-keyed section: the only "registries" here)

def _adamw(params, lr: float, betas: list = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
    """torch AdamW: weight decay IS multiplied by the lr (unlike Composer's DecoupledAdamW)."""
    import torch
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _decoupled_adamw(params, lr: float, betas: list = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
    """Composer's DecoupledAdamW: weight decay NOT multiplied by the lr (wd 1e-4 here ≈ torch 0.1 at lr 1e-3)."""
    from composer.optim import DecoupledAdamW
    return DecoupledAdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {"adamw": _adamw, "decoupled_adamw": _decoupled_adamw}


def _sched(cls_name):
    def build(**kwargs):
        import composer.optim
        return getattr(composer.optim, cls_name)(**kwargs)
    import composer.optim
    build.__signature__ = inspect.signature(getattr(composer.optim, cls_name).__init__)
    return build


SCHEDULERS = {
    "cosine_with_warmup": _sched("CosineAnnealingWithWarmupScheduler"),
    "constant_with_warmup": _sched("ConstantWithWarmupScheduler"),
    "linear_with_warmup": _sched("LinearWithWarmupScheduler"),
    "step": _sched("StepScheduler"),
    "multistep_with_warmup": _sched("MultiStepWithWarmupScheduler"),
}


def _freeze(modules):
    from nanoocr.train.callbacks import FreezeModules
    return FreezeModules(modules)


def _grad_clip(clipping_type="norm", clipping_threshold=1.0):
    from composer.algorithms import GradientClipping
    return GradientClipping(clipping_type=clipping_type, clipping_threshold=clipping_threshold)


ALGORITHMS = {"freeze": _freeze, "gradient_clipping": _grad_clip}


def _speed_monitor(ctx, window_size=10, peak_flops="auto"):
    """SpeedMonitor; on a device without a peak table entry (CPU) the peak is measured now (`auto`)."""
    from composer.callbacks import SpeedMonitor
    import torch
    if peak_flops == "auto":
        peak_flops = None if torch.cuda.is_available() else ctx["measure_peak"]()
    return SpeedMonitor(window_size=window_size, gpu_flops_available=peak_flops)


def _lr_monitor(ctx):
    from composer.callbacks import LRMonitor
    return LRMonitor()


def _vision_collapse(ctx, interval=50, probes=8):
    from nanoocr.train.callbacks import VisionCollapseMonitor
    return VisionCollapseMonitor(ctx["probe_images"](probes), interval=interval)


def _generation_eval(ctx, interval=100, samples=4, max_new_tokens=128):
    from nanoocr.train.callbacks import GenerationEval
    return GenerationEval(ctx["heldout"](samples), ctx["tokenizer"], ctx["mode"], interval, max_new_tokens)


def _loss_curve(ctx, ema=0.9):
    from nanoocr.train.callbacks import LossCurve
    return LossCurve(ctx["run_folder"], ema=ema)


def _nonfinite_guard(ctx):
    from nanoocr.train.callbacks import NonFiniteLossGuard
    return NonFiniteLossGuard()


def _skipped_samples(ctx, max_fraction=0.5, min_samples=64):
    from nanoocr.train.callbacks import SkippedSamplesGuard
    return SkippedSamplesGuard(max_fraction=max_fraction, min_samples=min_samples)


def _sample_log(ctx):
    from nanoocr.train.callbacks import SampleLog
    return SampleLog(ctx["run_folder"])


CALLBACKS = {"sample_log": _sample_log, "speed_monitor": _speed_monitor, "lr_monitor": _lr_monitor,
             "vision_collapse": _vision_collapse, "generation_eval": _generation_eval, "loss_curve": _loss_curve,
             "nonfinite_guard": _nonfinite_guard, "skipped_samples": _skipped_samples}
# On in every run, also with `callbacks: {}`; a YAML entry of the same name sets their arguments
# (e.g. `skipped_samples: {max_fraction: 1.0}` to train whatever the share of rejected samples).
DEFAULT_CALLBACKS = {"skipped_samples": {}, "nonfinite_guard": {}}


def _jsonl(ctx, filename="metrics.jsonl"):
    from nanoocr.train.callbacks import JSONLLogger
    return JSONLLogger(os.path.join(ctx["run_folder"], filename))


def _tensorboard(ctx, log_dir=None):
    from composer.loggers import TensorboardLogger
    return TensorboardLogger(log_dir=log_dir or os.path.join(ctx["run_folder"], "tb"))


def _wandb(ctx, project=None, entity=None):
    from composer.loggers import WandBLogger
    return WandBLogger(project=project, entity=entity)


LOGGERS = {"jsonl": _jsonl, "tensorboard": _tensorboard, "wandb": _wandb}


# ----------------------------------------------------------------------------------------------------
# building the run

def _barrier():
    from composer.utils import dist
    if dist.get_world_size() > 1:
        dist.barrier()


def _is_rank0() -> bool:
    from composer.utils import dist
    return dist.get_global_rank() == 0


def build_data(items: list[dict]) -> None:
    """Builds each data set whose output is missing (rank 0; the others wait).

    `{input: SPEC, out: DIR}` runs convert_to_mds on a source spec; `{pages: PDF_DIR, out: DIR}` runs the
    real-page builder (nanoocr.eval.pages: text-dominant pages, split by document into DIR/train and DIR/val)."""
    for i, item in enumerate(items or []):
        if ("input" in item) == ("pages" in item):
            raise ConfigError(f"build_data[{i}] needs exactly one of 'input' (a source spec) or 'pages' (a PDF folder)")
        out = Path(item["out"])
        done = (out / "train" / "index.json") if "pages" in item else (out / "index.json")
        if not done.exists() and _is_rank0():
            if "pages" in item:
                from nanoocr.eval.pages import main as build
                args = ["--pdf-dir", item["pages"], "--out", str(out)]
                args += ["--max-pages", str(item["max_pages"])] if item.get("max_pages") else []
                args += ["--val-fraction", str(item["val_fraction"])] if item.get("val_fraction") else []
            else:
                from nanoocr.data.convert import main as build
                args = ["--input", item["input"], "--out", str(out)]
                args += ["--max-side", str(item["max_side"])] if item.get("max_side") else []
            args += ["--workers", str(item["workers"])] if item.get("workers") else []
            print(f"[nanoocr] building {out} from {item.get('input') or 'pages:' + item['pages']}", flush=True)
            if build(args) not in (0, None):
                raise RuntimeError(f"build_data[{i}]: building {out} failed (see the messages above)")
        _barrier()


def _stream_source(stream: dict) -> dict:
    """A stream config's `remote`/`local`/`split`: `read_records` reads what the training stream reads."""
    return {"remote": stream.get("remote"), "local": stream.get("local"), "split": stream.get("split")}


def build_tokenizer(tcfg: dict, run_folder: str, train_streams: list[dict]):
    """A given tokenizer, or a small BPE trained on the texts of `train_streams` (stream configs)."""
    from nanoocr.data.tokenizer import Tokenizer, load_nanochat_tokenizer
    if tcfg.get("path"):
        if tcfg.get("kind", "nanoocr") == "nanochat":
            return load_nanochat_tokenizer(tcfg["path"])
        return Tokenizer.from_file(tcfg["path"])
    # No tokenizer given: train a small BPE on the training texts (Tier-1 trains everything from scratch).
    out = Path(run_folder) / "tokenizer"
    if not (out / "tokenizer.json").exists() and _is_rank0():
        texts = [m["content"] for s in train_streams for r in read_records(**_stream_source(s))
                 for m in r["messages"]]
        tok = Tokenizer.train_from_iterator(texts, vocab_size=tcfg.get("train_vocab_size", 512))
        tok.save(out)
        print(f"[nanoocr] trained a {tok.vocab_size}-token BPE on {len(texts)} texts → {out}", flush=True)
    _barrier()
    return Tokenizer.from_file(out)


def build_model(mcfg: dict, tokenizer):
    """Preset + per-part overrides; vocabulary and image id from the tokenizer; pretrained weights."""
    from nanoocr.model import presets
    from nanoocr.model.vlm import NanoOCR
    gpt = dict(mcfg.get("gpt") or {})
    pre = mcfg.get("pretrained") or {}
    gpt.setdefault("vocab_size", tokenizer.vocab_size)  # a nanochat checkpoint is extended to this size
    # The GPT's architecture comes from the nanochat checkpoint (its meta and tensor names: d20-era or today's
    # layout), under any field the YAML sets: `pretrained.nanochat` (stage 1, weights too) or `gpt_config_from`
    # (stage 2: the same architecture, weights from stage 1's checkpoint). The fields are written back into
    # the config, so the saved config.yaml rebuilds the same GPT (export, sample) without the checkpoint.
    arch_from = pre.get("nanochat") or mcfg.get("gpt_config_from")
    if arch_from:
        from nanoocr.model.nanochat import nanochat_gpt_fields
        derived = nanochat_gpt_fields(arch_from, pre.get("nanochat_step"))
        for key, value in derived.items():
            gpt.setdefault(key, value)
        mcfg["gpt"] = {**(mcfg.get("gpt") or {}), **{k: gpt[k] for k in derived}}
        mcfg["gpt_config_from"] = None
    cfg = presets.build_config(mcfg.get("preset", "nano"), sam=mcfg.get("sam") or {}, clip=mcfg.get("clip") or {},
                               gpt=gpt, image_token_id=tokenizer.image_id, **(mcfg.get("vlm") or {}))
    if mcfg.get("activation_checkpointing"):
        cfg.activation_checkpointing = True
    model = NanoOCR(cfg)
    if pre.get("nanochat"):
        from nanoocr.model.nanochat import load_nanochat_into
        load_nanochat_into(model, pre["nanochat"], step=pre.get("nanochat_step"))
    from nanoocr.model import pretrained
    if pre.get("hf_sam"):
        pretrained.load_hf_sam(model.sam, pre["hf_sam"])
    if pre.get("hf_clip"):
        pretrained.load_hf_clip(model.clip, pre["hf_clip"])
    if pre.get("deepseek"):
        pretrained.load_deepseek_vision(model, pre["deepseek"])
    return model


def build_loader(lcfg: dict, tokenizer, batch_size: int):
    from nanoocr.data.stream import build_dataloader, data_spec
    loader = build_dataloader(lcfg, tokenizer, batch_size)
    return loader, data_spec(loader)


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


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel (CPU training).

    By default glibc serves every block over its mmap threshold (at most 32 MiB) with a fresh mmap and
    unmaps it on free, so each training step page-faults (and the kernel zeroes) its large activations
    anew: on 2 cores that is ~10% of a `small` step in system time. With mmap off and no trimming the
    heap grows to the step's peak once and is reused (recipes/bench/mfu.py: MFU 40% -> 44% on `small`).
    The process's RSS then stays at its peak. False where this is not glibc."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False


def build_trainer(cfg: dict):
    """Build everything from a validated config → (Trainer, NanoOCR, tokenizer), before fit."""
    import torch
    from composer import Trainer
    from composer.utils import reproducibility

    from nanoocr.train.callbacks import measure_matmul_peak
    from nanoocr.train.composer_model import ComposerNanoOCR

    logging.basicConfig(level=cfg.get("python_log_level", "INFO").upper(),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from composer.utils import dist, get_device
    device = cfg.get("device") or ("gpu" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and cfg.get("cpu_keep_freed_memory", True):
        log.info("glibc keeps freed memory for reuse: %s", keep_freed_memory())
    # Data building and tokenizer training below synchronize ranks before the Trainer exists.
    dist.initialize_dist(get_device(device), timeout=cfg.get("dist_timeout", 300.0))
    run_name = cfg.get("run_name", "nanoocr")
    run_folder = cfg.get("run_folder") or os.path.join("runs", run_name)
    seed = cfg.get("seed", 17)
    reproducibility.seed_all(seed)
    if _is_rank0():
        Path(run_folder).mkdir(parents=True, exist_ok=True)
        om.save(om.create(cfg), Path(run_folder) / "config.yaml")

    build_data(cfg.get("build_data"))
    from nanoocr.data.stream import build_streams
    for name in ("train_loader", "eval_loader"):  # each stream's data exists, before anything reads it
        if cfg.get(name):
            build_streams(cfg[name]["dataset"]["streams"])
    train_streams = [s for _, s in _streams(cfg["train_loader"]["dataset"])]
    tokenizer = build_tokenizer(cfg.get("tokenizer") or {}, run_folder, train_streams)
    model = build_model(cfg["model"], tokenizer)
    if _is_rank0():  # again, with the GPT fields build_model took from a nanochat checkpoint
        om.save(om.create(cfg), Path(run_folder) / "config.yaml")
    composer_model = ComposerNanoOCR(model)
    mode = cfg["train_loader"]["dataset"].get("mode", "base")
    batch_size = cfg["device_train_batch_size"]
    _, train_spec = build_loader(cfg["train_loader"], tokenizer, batch_size)
    eval_spec = None
    if cfg.get("eval_loader"):
        _, eval_spec = build_loader(cfg["eval_loader"], tokenizer, cfg.get("device_eval_batch_size", batch_size))

    trainable = [p for p in composer_model.parameters() if p.requires_grad]
    ocfg = dict(cfg["optimizer"])
    optimizer = OPTIMIZERS[ocfg.pop("name")](trainable, **ocfg)
    schedulers = []
    if cfg.get("scheduler"):
        scfg = dict(cfg["scheduler"])
        schedulers = [SCHEDULERS[scfg.pop("name")](**scfg)]
    algorithms = [ALGORITHMS[n](**(kw or {})) for n, kw in (cfg.get("algorithms") or {}).items()]

    def probe_images(n):
        from nanoocr.data.images import image_views, open_image
        # Read through each stream's remote + local, like the training stream (the cache may be empty).
        recs = [r for s in train_streams for r in read_records(**_stream_source(s), limit=4 * n) if r["image"]][:n]
        if len(recs) < 2:
            raise ConfigError(f"callbacks.vision_collapse needs >= 2 records with an image among the first {4 * n} "
                              f"of each training stream, found {len(recs)} (a text-only set? drop the callback)")
        return torch.stack([image_views(open_image(r["image"]), mode).global_view for r in recs])

    def heldout(n):
        name, src = _streams((cfg.get("eval_loader") or cfg["train_loader"])["dataset"])[0]
        recs = [r for r in read_records(**_stream_source(src), limit=4 * n) if r["image"]][:n]
        if not recs:
            raise ConfigError(f"callbacks.generation_eval needs records with an image; the first {4 * n} of stream "
                              f"'{name}' have none (a text-only set? drop the callback)")
        return recs

    ctx = {"tokenizer": tokenizer, "run_folder": run_folder, "mode": mode, "measure_peak": measure_matmul_peak,
           "probe_images": probe_images, "heldout": heldout}
    callbacks = [CALLBACKS[n](ctx, **(kw or {})) for n, kw in {**DEFAULT_CALLBACKS, **(cfg.get("callbacks") or {})}.items()]
    loggers = [LOGGERS[n](ctx, **(kw or {})) for n, kw in (cfg.get("loggers") or {}).items()]

    parallelism = None
    if cfg.get("fsdp_config") and device == "gpu":
        # Composer wraps NanoOCR's own units (model.fsdp_wrap_fn) and, with `activation_checkpointing`, wraps
        # the same units in checkpoint_wrapper (model.activation_checkpointing_fn): the model must not have
        # done it already, so the model's checkpointing moves into the FSDP config.
        fsdp = dict(cfg["fsdp_config"])
        if model.activation_checkpointing:
            model.set_activation_checkpointing(False)
            fsdp["activation_checkpointing"] = True
        parallelism = {"fsdp": fsdp}
    # load_path, autoresume and stage chaining open pickles: Composer must not run code from them.
    from nanoocr.model.checkpoint import CheckpointError, guard_composer_loading, repair_latest
    guard_composer_loading()
    if cfg.get("autoresume") and cfg.get("save_folder") and "://" not in cfg["save_folder"] and _is_rank0():
        if message := repair_latest(cfg["save_folder"]):
            log.warning(message)
    _barrier()
    try:
        trainer = Trainer(
            run_name=run_name, model=composer_model, train_dataloader=train_spec, eval_dataloader=eval_spec,
            eval_interval=cfg.get("eval_interval", 1), eval_subset_num_batches=cfg.get("eval_subset_num_batches", -1),
            max_duration=cfg["max_duration"], optimizers=optimizer, schedulers=schedulers,
            step_schedulers_every_batch=True, algorithms=algorithms, callbacks=callbacks, loggers=loggers,
            device=device, precision=cfg.get("precision", "fp32" if device == "cpu" else "amp_bf16"),
            device_train_microbatch_size=cfg.get("device_train_microbatch_size", batch_size),
            # Microbatch losses weighted by their loss-generating tokens (data.get_num_tokens_in_batch), so the
            # step's loss and gradient are the per-token mean over the whole batch, however it is split.
            accumulate_train_batch_on_tokens=True,
            parallelism_config=parallelism, seed=seed,
            save_folder=cfg.get("save_folder"), save_interval=cfg.get("save_interval", "1ep"),
            save_num_checkpoints_to_keep=cfg.get("save_num_checkpoints_to_keep", -1),
            # A crash between writing a checkpoint and moving `latest` to it leaves a file newer than the one
            # autoresume loads; resuming must be allowed to overwrite it, so autoresume implies overwrite.
            save_overwrite=cfg.get("save_overwrite", cfg.get("autoresume", False)), autoresume=cfg.get("autoresume", False),
            load_path=cfg.get("load_path"), load_weights_only=cfg.get("load_weights_only", False),
            # A checkpoint whose weights are not exactly this model's must fail, not "load" and leave the model
            # at its random init (Composer's default is False).
            load_strict_model_weights=cfg.get("load_strict_model_weights", True),
            progress_bar=cfg.get("progress_bar", True), log_to_console=cfg.get("log_to_console", False),
            console_log_interval=cfg.get("console_log_interval", "1ba"), dist_timeout=cfg.get("dist_timeout", 300.0),
        )
    except CheckpointError as e:  # Composer copies the file to a temporary name first: say which one it was
        raise CheckpointError(f"{_checkpoint_source(cfg)}: {e}") from None
    return trainer, model, tokenizer


def _checkpoint_source(cfg: dict) -> str:
    """The checkpoint Composer opens at start-up: autoresume's latest when there is one, else load_path."""
    latest = Path(cfg.get("save_folder") or "") / "latest-rank0.pt"
    if cfg.get("autoresume") and cfg.get("save_folder") and (latest.exists() or latest.is_symlink()):
        return f"autoresume checkpoint {latest}"
    return f"load_path {cfg.get('load_path')}"


def train(cfg: dict):
    """Trainer.fit(), then (rank 0; every rank gathers the parameters when sharded) the final generation eval
    and an export; returns the Trainer."""
    trainer, model, tokenizer = build_trainer(cfg)
    trainer.fit()
    run_folder = cfg.get("run_folder") or os.path.join("runs", cfg.get("run_name", "nanoocr"))
    mode = cfg["train_loader"]["dataset"].get("mode", "base")

    if cfg.get("final_eval"):
        from nanoocr.model.distributed import full_params
        fe = cfg["final_eval"]
        # Sharded (FSDP): gathering the parameters is collective, so every rank enters full_params; inside
        # nothing communicates, and rank 0 alone evaluates and exports. Not sharded: a no-op.
        with full_params(trainer.state.model):
            if _is_rank0():
                final_eval(fe, model, tokenizer, run_folder, mode)
                if fe.get("export", True):
                    from nanoocr.train.export import export_model
                    export_model(model, tokenizer, Path(run_folder) / "export", mode=mode)
    _barrier()
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
    from nanoocr.train.callbacks import RunStopped
    from nanoocr.model.checkpoint import CheckpointError
    from nanoocr.data.stream import DataError
    try:
        train(cfg)
    except (CheckpointError, DataError, ConfigError, FileNotFoundError) as e:  # the user's input: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # a guard stopped training (non-finite loss or weights, rejected data)
        print(f"error: run stopped: {e}", file=sys.stderr)
        return 1
    return 0
