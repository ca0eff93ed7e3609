"""The recipe's config: YAML + CLI `key=value` merge, then validation, before anything is built.

load_config (OmegaConf YAML + CLI dotlist merge, `variables:` interpolation) → validate → the per-device
batch size from `global_train_batch_size`. Validation: every section has a fixed key set; the top level
takes our own keys (OWN_KEYS) plus any argument of `composer.Trainer.__init__` (passed straight through);
a name-keyed entry's keys (optimizer, scheduler, algorithms, callbacks, loggers) come from its builder's
signature (nanoocr/train/builders.py: ours and every one Composer ships). An unknown key is an error naming
it, its section and the closest valid key; a value of the wrong type is an error naming its key.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from pathlib import Path

from omegaconf import OmegaConf as om


class ConfigError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------------
# schema

# Top-level keys of our own (the llm-foundry shape); every other top-level key must be a Trainer argument.
OWN_KEYS = {
    "variables", "model", "tokenizer", "train_loader", "eval_loader", "optimizer", "scheduler", "algorithms",
    "callbacks", "loggers", "build_data", "final_eval", "run_folder", "global_train_batch_size",
    "device_train_batch_size", "device_eval_batch_size", "cpu_keep_freed_memory", "fsdp_config",
}
# Trainer arguments the recipe builds from its own sections: not settable at the top level (the key a user
# means is then the closest suggestion: optimizers -> optimizer, parallelism_config -> fsdp_config ...).
BUILT_TRAINER_ARGS = {"self", "model", "train_dataloader", "eval_dataloader", "optimizers", "schedulers",
                      "parallelism_config"}
MODEL_KEYS = {"preset", "sam", "clip", "gpt", "vlm", "pretrained", "activation_checkpointing", "gpt_config_from",
              "cpu_autocast"}
PRETRAINED_KEYS = {"hf_sam", "hf_clip", "nanochat", "nanochat_step", "deepseek"}
TOKENIZER_KEYS = {"path", "kind", "train_vocab_size"}
BUILD_DATA_KEYS = {"input", "pages", "out", "max_side", "workers", "max_pages", "val_fraction"}
FINAL_EVAL_KEYS = {"data", "mode", "max_new_tokens", "limit", "export"}
# Types of the top-level keys that are not Trainer arguments of the same name (those use Trainer's annotations).
TOP_TYPES = {"device_train_batch_size": "int | None", "device_eval_batch_size": "int | None",
             "global_train_batch_size": "int | None", "run_folder": "str | None",
             "cpu_keep_freed_memory": "bool", "fsdp_config": "dict | None", "build_data": "list | None",
             "model": "dict", "tokenizer": "dict | None", "train_loader": "dict", "eval_loader": "dict | None",
             "optimizer": "dict", "scheduler": "dict | None", "algorithms": "dict | None",
             "callbacks": "dict | None", "loggers": "dict | None", "final_eval": "dict | None",
             "load_path": "str | None", "save_folder": "str | None", "eval_interval": "Time"}


def trainer_params() -> dict:
    from composer import Trainer
    return dict(inspect.signature(Trainer.__init__).parameters)


def top_keys() -> set:
    return OWN_KEYS | (set(trainer_params()) - BUILT_TRAINER_ARGS)


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(valid))})"


def check_keys(section, valid: set, where: str) -> None:
    if not isinstance(section, dict):
        raise ConfigError(f"section '{where}' must be a mapping of keys, got {section!r}")
    for key in section:
        if key not in valid:
            raise ConfigError(f"unknown key '{key}' in section '{where}'{_suggest(key, valid)}")


def _builder_keys(fn) -> set:
    params = inspect.signature(fn).parameters
    return {n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_builder_kwargs(kwargs, fn, where: str, drop: tuple = ("ctx",)) -> None:
    """kwargs for builder (or class) `fn`: its keyword arguments only, each of a YAML-possible type, and every
    argument without a default given."""
    valid = _builder_keys(fn) - set(drop)
    check_keys(kwargs, valid, where)
    params = inspect.signature(fn).parameters
    missing = [n for n in sorted(valid) if params[n].default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"section '{where}' needs {', '.join(repr(m) for m in missing)}")
    check_signature_types(kwargs, fn, where)


def check_named(cfg: dict, builders: dict, where: str, drop: tuple = ()) -> None:
    """A section `{name: ..., kwargs...}`: the name must be known; kwargs must be the builder's."""
    if "name" not in cfg:
        raise ConfigError(f"section '{where}' needs a 'name' (one of: {', '.join(sorted(builders))})")
    name = cfg["name"]
    if name not in builders:
        raise ConfigError(f"unknown {where} name '{name}'{_suggest(name, builders)}")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    check_builder_kwargs(kwargs, builders[name], f"{where} ({name})", drop=drop)


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
_TIME_KEYS = {"max_duration", "eval_interval", "save_interval", "console_log_interval", "t_warmup", "t_max"}


def _type_names(annotation, default) -> list[str]:
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


def check_signature_types(kwargs: dict, fn, where: str) -> None:
    params = inspect.signature(fn).parameters
    for key, value in kwargs.items():
        if key in params:
            check_type(value, params[key].annotation, params[key].default, f"{where}.{key}")


def stream_items(dataset: dict) -> list[tuple[str, dict]]:
    """Streams are a `{name: {...}}` mapping (llm-foundry style) or a list."""
    streams = dataset.get("streams") or {}
    return list(streams.items()) if isinstance(streams, dict) else [(str(i), s) for i, s in enumerate(streams)]


# ----------------------------------------------------------------------------------------------------
# validation

def validate(cfg: dict) -> None:
    """Every key of a resolved config is known and typed; raises ConfigError naming the first one that is not."""
    from nanoocr.model import presets
    from nanoocr.train import builders
    check_keys(cfg, top_keys(), "<top level>")
    params = trainer_params()
    for key, value in cfg.items():
        if key in TOP_TYPES:
            check_type(value, TOP_TYPES[key], None, key)
        elif key in params:
            check_type(value, params[key].annotation, params[key].default, key)
    for key in ("device_train_batch_size", "device_eval_batch_size", "global_train_batch_size"):
        if cfg.get(key) is not None and cfg[key] <= 0:
            raise ConfigError(f"'{key}' must be > 0, got {cfg[key]}")
    if cfg.get("fsdp_config"):
        # Keys only: Composer takes values its annotations do not list (mixed_precision as a dict).
        from composer.utils.parallelism import FSDPConfig
        check_keys(cfg["fsdp_config"], {f.name for f in dataclasses.fields(FSDPConfig) if f.init}, "fsdp_config")
    if cfg.get("compile_config"):  # Trainer calls torch.compile(model, **compile_config)
        import torch
        check_builder_kwargs(cfg["compile_config"], torch.compile, "compile_config", drop=("model",))
    model = cfg.get("model") or {}
    check_keys(model, MODEL_KEYS, "model")
    from nanoocr.model.precision import SETTINGS
    if model.get("cpu_autocast") is not None and model["cpu_autocast"] not in SETTINGS:
        raise ConfigError(f"model.cpu_autocast must be one of {list(SETTINGS)}, got {model['cpu_autocast']!r}")
    check_keys(model.get("pretrained") or {}, PRETRAINED_KEYS, "model.pretrained")
    base = presets.build_config(model.get("preset", "nano"))
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
        for sname, stream in stream_items(dataset):
            check_keys(stream, set(data.STREAM_KEYS), f"{name}.dataset.streams.{sname}")
    for i, item in enumerate(cfg.get("build_data") or []):
        check_keys(item, BUILD_DATA_KEYS, f"build_data[{i}]")
    check_keys(cfg.get("final_eval") or {}, FINAL_EVAL_KEYS, "final_eval")
    groups = cfg["optimizer"].get("param_groups") or {}
    check_named({k: v for k, v in cfg["optimizer"].items() if k != "param_groups"}, builders.OPTIMIZERS,
                "optimizer", drop=("params",))
    from nanoocr.model.vlm import PARTS
    check_keys(groups, set(PARTS), "optimizer.param_groups")
    optimizer_args = set(_builder_keys(builders.OPTIMIZERS[cfg["optimizer"]["name"]])) - {"params"}
    for part, overrides in groups.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"optimizer.param_groups.{part} must be a mapping of optimizer arguments, got {overrides!r}")
        check_keys(overrides, optimizer_args, f"optimizer.param_groups.{part}")
        check_signature_types(overrides, builders.OPTIMIZERS[cfg["optimizer"]["name"]], f"optimizer.param_groups.{part}")
    if cfg.get("scheduler"):
        check_named(cfg["scheduler"], builders.SCHEDULERS, "scheduler")
    for section, table in (("algorithms", builders.ALGORITHMS), ("callbacks", builders.CALLBACKS),
                           ("loggers", builders.LOGGERS)):
        for name, kwargs in (cfg.get(section) or {}).items():
            if name not in table:
                raise ConfigError(f"unknown {section[:-1]} '{name}' in section '{section}'{_suggest(name, table)}")
            check_builder_kwargs(kwargs or {}, table[name], f"{section}.{name}")


def resolve_batch_size(cfg: dict, world_size: int) -> None:
    """Sets `device_train_batch_size` from `global_train_batch_size` (llm-foundry): the batch of one optimizer
    step over all ranks is fixed, each rank takes global / world_size of it, so a run on 8 GPUs and on 4
    makes the same updates (Composer splits each rank's batch further into `device_train_microbatch_size`)."""
    total, per_device = cfg.get("global_train_batch_size"), cfg.get("device_train_batch_size")
    if total is None:
        if per_device is None:
            raise ConfigError("set 'global_train_batch_size' (all ranks together) or 'device_train_batch_size'")
        return
    if total % world_size:
        raise ConfigError(f"'global_train_batch_size' {total} is not divisible by the world size {world_size}")
    if per_device is not None and per_device != total // world_size:
        raise ConfigError(f"'device_train_batch_size' {per_device} disagrees with 'global_train_batch_size' {total} "
                          f"over {world_size} rank(s) ({total // world_size} each): set only one of them")
    cfg["device_train_batch_size"] = total // world_size


def load_config(yaml_path: str, overrides: list[str], world_size: int | None = None) -> dict:
    """YAML + `key=value` overrides → a plain, resolved, validated dict, with `device_train_batch_size` set
    for `world_size` ranks (default: this process's world, from the launcher's environment)."""
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
    if world_size is None:
        from composer.utils import dist  # reads the launcher's WORLD_SIZE; no process group needed
        world_size = dist.get_world_size()
    resolve_batch_size(cfg, world_size)
    return cfg
