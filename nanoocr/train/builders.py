"""What a YAML name builds: one name -> builder dict per name-keyed section (the only registries here).

optimizer and scheduler sections are `{name: ..., kwargs...}`; algorithms, callbacks and loggers are
`{name: {kwargs...}}`. Every algorithm, callback and logger Composer ships (the `__all__` of
composer.algorithms / composer.callbacks / composer.loggers) is usable by the snake_case of its class name
(memory_monitor, runtime_estimator, optimizer_monitor, early_stopper, ema, mlflow, wandb, file, ...), with
its own keyword arguments; ours are added over them and win where the names clash (speed_monitor measures
the CPU's peak, tensorboard writes into the run folder). config.validate checks a YAML entry's keys against
its builder's signature (a Composer class: its __init__), so a misspelled argument is refused by name; a
class's `**kwargs` (Generate's generation arguments) are not open to YAML, where no typo in them could be caught.

Our callback builders take `ctx` first: what the recipe built that a callback needs (run folder, tokenizer,
image mode, probe and held-out records); Composer's classes take only their YAML arguments.
"""
from __future__ import annotations

import inspect
import os
import re

import composer.algorithms
import composer.callbacks
import composer.loggers
import composer.optim
from composer.core import Algorithm, Callback
from composer.loggers import LoggerDestination

from nanoocr.train import callbacks as ours


# ----------------------------------------------------------------------------------------------------
# optimizers and schedulers

def _adamw(params, lr: float, betas: list = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
    """torch AdamW: weight decay IS multiplied by the lr (unlike Composer's DecoupledAdamW)."""
    import torch
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _decoupled_adamw(params, lr: float, betas: list = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
    """Composer's DecoupledAdamW: weight decay NOT multiplied by the lr (wd 1e-4 here ≈ torch 0.1 at lr 1e-3)."""
    return composer.optim.DecoupledAdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {"adamw": _adamw, "decoupled_adamw": _decoupled_adamw}


def build_optimizer(ocfg: dict, named_params):
    """The optimizer of `ocfg` ({name, lr, ..., param_groups: {part: {lr, weight_decay, ...}}}) over the
    trainable (clean name, parameter) pairs. Each part named in param_groups (nanoocr.model.vlm.PARTS: sam,
    compressor, clip, projector, newline, gpt) is one torch param group with those arguments over the
    optimizer's own; the other parts share the default group. Composer's schedulers scale every group's lr
    by the same factor, so the ratios hold through warmup and decay; the groups are in the checkpoint."""
    from nanoocr.model.vlm import param_part
    ocfg = dict(ocfg)
    name, groups = ocfg.pop("name"), dict(ocfg.pop("param_groups", None) or {})
    by_part: dict[str, list] = {}
    for pname, p in named_params:
        by_part.setdefault(param_part(pname) if param_part(pname) in groups else "", []).append(p)
    param_groups = [{"params": by_part.pop("", [])}] + [
        {"params": by_part[part], **{k: tuple(v) if k == "betas" else v for k, v in groups[part].items()}}
        for part in groups if part in by_part]
    return OPTIMIZERS[name]([g for g in param_groups if g["params"]], **ocfg)

SCHEDULERS = {
    "cosine_with_warmup": composer.optim.CosineAnnealingWithWarmupScheduler,
    "constant_with_warmup": composer.optim.ConstantWithWarmupScheduler,
    "linear_with_warmup": composer.optim.LinearWithWarmupScheduler,
    "step": composer.optim.StepScheduler,
    "multistep_with_warmup": composer.optim.MultiStepWithWarmupScheduler,
}


# ----------------------------------------------------------------------------------------------------
# Composer's algorithms, callbacks and loggers, by name

# Where the mechanical snake_case reads badly (na_n_monitor, wand_b, ml_flow, mosaic_ml).
_NAMES = {"NaNMonitor": "nan_monitor", "WandBLogger": "wandb", "MLFlowLogger": "mlflow", "MosaicMLLogger": "mosaicml"}


def snake_case(class_name: str, suffix: str = "") -> str:
    """LRMonitor -> lr_monitor, EarlyStopper -> early_stopper, FileLogger -> file (with suffix 'Logger')."""
    if class_name in _NAMES:
        return _NAMES[class_name]
    name = class_name.removesuffix(suffix) or class_name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def composer_native(module, base: type, suffix: str = "") -> dict:
    """snake_case name -> class, for each class in `module.__all__` that is a `base` (not the helpers
    exported beside them: the torchvision transforms in composer.algorithms, Logger itself, ...)."""
    classes = (getattr(module, n) for n in module.__all__)
    return {snake_case(c.__name__, suffix): c for c in classes
            if isinstance(c, type) and issubclass(c, base) and c is not base}


def _freeze(modules: list):
    return ours.FreezeModules(modules)


def _speed_monitor(ctx, window_size: int = 10, peak_flops="auto", time_unit: str = "hours"):
    """Composer's SpeedMonitor; on a device without a peak table entry (CPU) the peak is measured now
    (`auto`), in the precision the model computes in (ctx["autocast_dtype"]: bf16 autocast, or None = fp32),
    so MFU is against that precision's peak; a number sets it (Composer's gpu_flops_available)."""
    import torch
    if peak_flops == "auto":
        dtype = ctx.get("autocast_dtype") or torch.float32
        peak_flops = None if torch.cuda.is_available() else ctx["measure_peak"](dtype=dtype)
    return composer.callbacks.SpeedMonitor(window_size=window_size, gpu_flops_available=peak_flops,
                                           time_unit=time_unit)


def _vision_collapse(ctx, interval: int = 50, probes: int = 8, warn_above: float = 0.95,
                     stop_above: float | None = None):
    return ours.VisionCollapseMonitor(ctx["probe_images"](probes), interval=interval, folder=ctx["run_folder"],
                                      warn_above=warn_above, stop_above=stop_above)


def _generation_eval(ctx, interval: int = 100, samples: int = 4, max_new_tokens: int = 128):
    return ours.GenerationEval(ctx["heldout"](samples), ctx["tokenizer"], ctx["mode"], interval, max_new_tokens)


def _loss_curve(ctx, ema: float = 0.9):
    return ours.LossCurve(ctx["run_folder"], ema=ema)


def _nonfinite_guard(ctx):
    return ours.NonFiniteLossGuard()


def _skipped_samples(ctx, max_fraction: float = 0.5, min_samples: int = 64):
    return ours.SkippedSamplesGuard(max_fraction=max_fraction, min_samples=min_samples)


def _sample_log(ctx):
    return ours.SampleLog(ctx["run_folder"])


def _jsonl(ctx, filename: str = "metrics.jsonl"):
    return ours.JSONLLogger(os.path.join(ctx["run_folder"], filename))


def _tensorboard(ctx, log_dir: str | None = None, flush_interval: int = 100, rank_zero_only: bool = True):
    """Composer's TensorboardLogger, writing into the run folder unless `log_dir` says otherwise."""
    return composer.loggers.TensorboardLogger(log_dir=log_dir or os.path.join(ctx["run_folder"], "tb"),
                                              flush_interval=flush_interval, rank_zero_only=rank_zero_only)


def _unfreeze(modules: list, at):
    # `at` as a batch count or Composer's "Nba" time string, like max_duration
    if not str(at).removesuffix("ba").isdigit():
        raise ValueError(f"algorithms.unfreeze.at must be a batch count like 100ba, got {at!r}")
    return ours.UnfreezeModules(modules, int(str(at).removesuffix("ba")))


ALGORITHMS = {**composer_native(composer.algorithms, Algorithm), "freeze": _freeze, "unfreeze": _unfreeze}
CALLBACKS = {**composer_native(composer.callbacks, Callback, suffix="Callback"),
             "speed_monitor": _speed_monitor, "vision_collapse": _vision_collapse,
             "generation_eval": _generation_eval, "loss_curve": _loss_curve, "nonfinite_guard": _nonfinite_guard,
             "skipped_samples": _skipped_samples, "sample_log": _sample_log}
LOGGERS = {**composer_native(composer.loggers, LoggerDestination, suffix="Logger"),
           "jsonl": _jsonl, "tensorboard": _tensorboard}
# On in every run, also with `callbacks: {}`; a YAML entry of the same name sets their arguments
# (e.g. `skipped_samples: {max_fraction: 1.0}` to train whatever the share of rejected samples).
DEFAULT_CALLBACKS = {"skipped_samples": {}, "nonfinite_guard": {}}


def build(builder, ctx: dict, kwargs: dict | None):
    """An entry of ALGORITHMS / CALLBACKS / LOGGERS from its YAML kwargs (ours get `ctx` too)."""
    if "ctx" in inspect.signature(builder).parameters:
        return builder(ctx, **(kwargs or {}))
    return builder(**(kwargs or {}))
