"""Composer algorithms, callbacks and a logger for nanoocr runs.

- FreezeModules (Algorithm, Event.INIT): stage 2 freezes SAM + compressor. INIT runs inside
  Trainer.__init__ after the optimizer exists but before checkpoint loading and DDP wrapping, so the
  params leave the optimizer and get requires_grad=False before anything else sees them; on autoresume
  the same YAML freezes the same names again, so freezing survives resumption.
- NonFiniteLossGuard (a Composer NaNMonitor that also catches inf and checks the weights): a NaN/inf loss
  stops the run at AFTER_LOSS (before backward and the optimizer step), NaN/inf weights after a step stop
  it at BATCH_END (before that batch's checkpoint is written), so every checkpoint on disk holds finite weights.
- SkippedSamplesGuard: stops a run in which more than a set share of the samples were rejected (a run that
  trains on nothing must not exit 0 with a loss of 0.0); on in every recipe run.
- VisionCollapseMonitor and GenerationEval run the model outside its forward: on every rank, inside
  nanoocr.model.distributed.full_params (whole parameters when the model is FSDP-sharded; a no-op otherwise).
- VisionCollapseMonitor: mean pairwise cosine similarity of the probe set's vision features (see
  feature_similarity; the prototype's failure: it went 0.59 → 0.9998 in 500 steps when the encoder
  collapsed); warns, and stops the run when configured to.
- UnfreezeModules (Algorithm): staged training, named parts held until batch N, then trained; resumable.
- GenerationEval: exact match / CER by real greedy generation on a few held-out samples.
- LossCurve: a PNG of the train loss (raw + EMA) and eval loss, written at fit end.
- SampleLog: the sample ids of every batch, per rank (resumption and rank-disjointness audits).
- JSONLLogger: every logged metric as one JSON line per step (`metrics.jsonl`), which tests and the
  sweep collector read back.
- measure_matmul_peak: the machine's fp32 matmul FLOP/s, measured when SpeedMonitor has no table entry
  (CPUs), so MFU is reported against a peak measured in the same run.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from composer.callbacks import NaNMonitor
from composer.core import Algorithm, Callback, Event, State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from nanoocr.model.distributed import clean_name, full_params
from nanoocr.model.distributed import unwrap as _unwrap  # ComposerNanoOCR / DDP / FSDP → the NanoOCR


class RunStopped(RuntimeError):
    """A guard stopped the run for a reason its message states (the recipe prints it, exit code 1)."""


class FreezeModules(Algorithm):
    """Freeze the named submodules of NanoOCR (e.g. ["sam"]) for the whole run."""

    def __init__(self, modules: list[str]):
        assert modules, "FreezeModules needs at least one module name"
        self.modules = list(modules)

    def match(self, event: Event, state: State) -> bool:
        return event == Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        # ComposerModel names are "model.<NanoOCR name>"; match whole path components only.
        # Wrapper segments (`_checkpoint_wrapped_module.` of activation checkpointing) are not part of the name.
        prefixes = tuple(f"model.{m}." for m in self.modules)
        named = {clean_name(n): p for n, p in state.model.named_parameters()}
        for m in self.modules:
            if not any(n.startswith(f"model.{m}.") for n in named):
                raise ValueError(f"freeze: no parameters under module '{m}' "
                                 f"(top-level modules: {sorted({n.split('.')[1] for n in named})})")
        frozen = {id(p) for n, p in named.items() if n.startswith(prefixes)}
        for n, p in named.items():
            if id(p) in frozen:
                p.requires_grad_(False)
        for opt in state.optimizers:
            for group in opt.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in frozen]
        n_frozen = sum(p.numel() for p in named.values() if id(p) in frozen)
        logger.log_hyperparameters({"frozen_modules": ",".join(self.modules), "frozen_params": n_frozen})


class NonFiniteLossGuard(NaNMonitor):
    """Stops the run on a NaN/inf loss (AFTER_LOSS: before backward, no weight touched) and on NaN/inf
    weights after an optimizer step (BATCH_END: before BATCH_CHECKPOINT, so the bad weights are never
    saved). Either way every checkpoint on disk holds finite weights. A finite loss can still produce
    non-finite weights (lr=inf, an overflowing update), which is why the loss alone is not enough.

    Composer's NaNMonitor (`callbacks.nan_monitor`) is the AFTER_LOSS half of this, for NaN only: an inf
    loss passes it, it never looks at the weights, and it raises a bare RuntimeError (the recipe would
    print a traceback, not the one-line reason with exit 1). This is a NaNMonitor whose after_loss also
    catches inf and raises RunStopped, plus the weight check."""

    def after_loss(self, state: State, logger: Logger) -> None:
        loss = state.loss
        values = loss.values() if isinstance(loss, dict) else loss if isinstance(loss, (list, tuple)) else [loss]
        for v in values:
            if not torch.isfinite(v).all():
                raise RunStopped(
                    f"loss is {v.item()} at batch {int(state.timestamp.batch)} (not finite): stopping before the "
                    f"optimizer step. Weights are unchanged; the last checkpoint saved (if any) is the last good "
                    f"one — lower the learning rate or check the data, then resume from it.")

    def batch_end(self, state: State, logger: Logger) -> None:
        bad = [clean_name(n) for n, p in state.model.named_parameters() if not torch.isfinite(p).all()]
        # Under FSDP each rank holds shards: all ranks must agree to stop (a lone raise would hang the rest).
        flag = torch.tensor([len(bad)], dtype=torch.long, device=next(state.model.parameters()).device)
        dist.all_reduce(flag)
        if int(flag.item()):
            where = f": {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}" if bad else " (on another rank)"
            raise RunStopped(
                f"weights are not finite after the optimizer step of batch {int(state.timestamp.batch) - 1} "
                f"({len(bad)} tensors on this rank{where}): stopping before they are checkpointed. The last "
                f"checkpoint saved (if any) holds finite weights — lower the learning rate, then resume from it.")


class SkippedSamplesGuard(Callback):
    """Stops a run that trains on (almost) nothing: when more than `max_fraction` of the samples seen so far
    (all ranks together) were rejected by the data pipeline (their rows are placeholders with no target),
    checked once `min_samples` were seen and at every epoch and fit end. Without it, a run whose every
    sample is rejected logs a loss of 0.0 at every step and exits 0: it looks like perfect convergence.
    Every rank takes part in the count (one all-reduce per batch), so all ranks stop together."""

    def __init__(self, max_fraction: float = 0.5, min_samples: int = 64):
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction, self.min_samples = max_fraction, min_samples
        self.seen, self.skipped = 0, 0  # this rank
        self.reasons: dict[str, tuple[int, str]] = {}  # kind -> (count, first "id: reason")
        self.total = (0, 0)  # all ranks, as of the last batch

    def after_dataloader(self, state: State, logger: Logger) -> None:
        self.seen += int(state.batch["ids"].shape[0])
        for sample_id, reason in state.batch["skipped"]:
            self.skipped += 1
            # "record ID: sequence of 124 tokens exceeds ..." -> "sequence of N tokens exceeds ..."
            kind = re.sub(r"\d+", "N", reason.removeprefix(f"record {sample_id}: ").split(":")[0])
            n, example = self.reasons.get(kind, (0, f"{sample_id}: {reason}"))
            self.reasons[kind] = (n + 1, example)

    def batch_end(self, state: State, logger: Logger) -> None:
        counts = torch.tensor([self.seen, self.skipped], dtype=torch.long,
                              device=next(state.model.parameters()).device)
        dist.all_reduce(counts)
        self.total = (int(counts[0]), int(counts[1]))
        logger.log_metrics({"data/skipped_fraction": self.total[1] / max(1, self.total[0])})
        if self.total[0] >= self.min_samples:
            self._check()

    def epoch_end(self, state: State, logger: Logger) -> None:
        self._check()

    def fit_end(self, state: State, logger: Logger) -> None:
        self._check()

    def _check(self) -> None:
        seen, skipped = self.total
        if seen and skipped > self.max_fraction * seen:
            kind, (n, example) = max(self.reasons.items(), key=lambda kv: kv[1][0]) if self.reasons else ("?", (0, ""))
            raise RunStopped(
                f"{skipped} of {seen} training samples ({100 * skipped / seen:.0f}%) were rejected by the data "
                f"pipeline, more than max_fraction={self.max_fraction}: there is (almost) nothing to learn from. "
                f"Most common reason on this rank ({n}x): {kind!r}, e.g. {example}. Fix the data or the loader "
                f"settings (mode, max_seq_len, overflow), or raise callbacks.skipped_samples.max_fraction.")


def feature_similarity(feats: torch.Tensor) -> float:
    """Mean pairwise cosine similarity of N images' vision features (N, tokens, C): each image's token
    features flattened into one vector, after removing the mean feature over all tokens of all images.

    Why not the cosine of mean-pooled features: a text image is mostly background, and pooling averages
    the few tokens that see text into the many that see paper, so any two pages pool to almost the same
    vector (0.998 for a random nano encoder on Tier-1's ten images, which it still tells apart). Why
    subtract the shared mean: every token carries the same bias direction (LayerNorm's beta, the
    projector's bias), which makes raw cosines high whatever the image. What remains is the per-position,
    per-image part: the same for every image (cosine 1) when the encoder ignores its input — collapse —
    and lower the more the images' features differ."""
    feats = feats.float()
    centered = (feats - feats.mean((0, 1), keepdim=True)).flatten(1)
    v = F.normalize(centered, dim=-1)
    sim = v @ v.T
    n = sim.shape[0]
    # Features that are one constant vector (total collapse) leave ~0 after centering: count as identical.
    if centered.norm() <= 1e-6 * feats.flatten(1).norm():
        return 1.0
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


class VisionCollapseMonitor(Callback):
    """Logs `vision/mean_cosine` (feature_similarity over a fixed probe set of pixel views) every `interval`
    batches and at fit start, and writes the curve to `vision_cosine.csv` in the run folder. Above
    `warn_above` it warns (once per crossing); above `stop_above` (off unless set) it stops the run with
    RunStopped, naming the batch, the value and the usual causes."""

    def __init__(self, probe_images: torch.Tensor, interval: int = 50, folder: str | None = None,
                 warn_above: float = 0.95, stop_above: float | None = None):
        assert probe_images.ndim == 4 and probe_images.shape[0] >= 2, \
            f"probe set must be (N>=2, 3, S, S), got {tuple(probe_images.shape)}"
        self.probe, self.interval, self.folder = probe_images, interval, folder
        self.warn_above, self.stop_above = warn_above, stop_above
        self.history: list[tuple[int, float]] = []
        self._warned = False

    @torch.no_grad()
    def measure(self, model) -> float:
        # Every rank (collective under FSDP: the probe reads the whole encoder, outside FSDP's forward).
        with full_params(model):
            return self._measure(_unwrap(model))

    def _measure(self, model) -> float:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        feats = model.encode_images(self.probe.to(device))  # (N * tokens, C)
        model.train(was_training)
        return feature_similarity(feats.view(self.probe.shape[0], -1, feats.shape[-1]))

    def fit_start(self, state: State, logger: Logger) -> None:
        self._log(state, logger)

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) % self.interval == 0:
            self._log(state, logger)

    def _log(self, state: State, logger: Logger) -> None:
        batch, value = int(state.timestamp.batch), self.measure(state.model)
        self.history.append((batch, value))
        logger.log_metrics({"vision/mean_cosine": value})
        if self.folder and dist.get_global_rank() == 0:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            path = Path(self.folder) / "vision_cosine.csv"
            if not path.exists():
                path.write_text("batch,mean_cosine\n")
            with path.open("a") as f:
                f.write(f"{batch},{value:.6f}\n")
        why = ("the vision features are turning image-independent (collapse): usual causes are an encoder lr too "
               "high for its init (set optimizer.param_groups.{sam,compressor,clip}.lr lower, or hold them with "
               "algorithms.unfreeze), too little data per step, or no warmup")
        if self.stop_above is not None and value > self.stop_above:
            raise RunStopped(f"vision/mean_cosine is {value:.4f} at batch {batch}, above "
                             f"callbacks.vision_collapse.stop_above={self.stop_above}: {why}.")
        if value > self.warn_above and not self._warned:
            print(f"[nanoocr] warning: vision/mean_cosine {value:.4f} at batch {batch} is above "
                  f"{self.warn_above}: {why}.", flush=True)
        self._warned = value > self.warn_above


class UnfreezeModules(Algorithm):
    """Staged training: the named parts (nanoocr.model.vlm.PARTS, e.g. ["sam", "compressor", "clip"]) are
    held (not updated) until batch `at`, then train with the rest.

    Held parts keep requires_grad and stay in the optimizer; their gradients are dropped after each
    microbatch's backward (AFTER_BACKWARD: after DDP's all-reduce, before gradient clipping and the step),
    so AdamW neither moves them nor builds their moments. That keeps DDP's and FSDP's bookkeeping and the
    optimizer's param groups the same before and after the switch, and the decision depends only on
    state.timestamp, which a checkpoint restores: a run resumed before or after `at` does what the
    uninterrupted run did. (The price: their backward is computed while held. FreezeModules is the
    whole-run freeze that skips it.)"""

    def __init__(self, modules: list[str], at: int):
        from nanoocr.model.vlm import PARTS
        unknown = [m for m in modules if m not in PARTS]
        if not modules or unknown:
            raise ValueError(f"algorithms.unfreeze.modules must name parts among {sorted(PARTS)}, got {modules}")
        if int(at) < 1:
            raise ValueError(f"algorithms.unfreeze.at must be a batch count >= 1, got {at}")
        self.modules, self.at = list(modules), int(at)
        self._held: list[torch.nn.Parameter] | None = None

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.INIT, Event.AFTER_BACKWARD)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        from nanoocr.model.vlm import param_part
        if event == Event.INIT:
            named = [(clean_name(n).removeprefix("model."), p) for n, p in state.model.named_parameters()]
            self._held = [p for n, p in named if param_part(n) in self.modules and p.requires_grad]
            if not self._held:
                raise ValueError(f"algorithms.unfreeze: no trainable parameters in parts {self.modules}")
            logger.log_hyperparameters({"unfreeze_modules": ",".join(self.modules), "unfreeze_at": self.at})
        elif int(state.timestamp.batch) < self.at:
            for p in self._held:
                p.grad = None


class GenerationEval(Callback):
    """Every `interval` batches: greedy-transcribe the held-out samples, log exact match, CER and the repetition rate."""

    def __init__(self, samples: list[dict], tokenizer, mode: str, interval: int = 100, max_new_tokens: int = 128):
        self.samples, self.tokenizer, self.mode = samples, tokenizer, mode
        self.interval, self.max_new_tokens = interval, max_new_tokens

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) % self.interval == 0:
            self.run(state, logger)

    def fit_end(self, state: State, logger: Logger) -> None:
        self.run(state, logger)

    def run(self, state: State, logger: Logger) -> None:
        from nanoocr.eval.transcribe import evaluate_records
        with full_params(state.model):  # every rank: collective under FSDP (generation runs outside its forward)
            summary, _ = evaluate_records(_unwrap(state.model), self.tokenizer, self.samples, mode=self.mode,
                                          max_new_tokens=self.max_new_tokens)
        logger.log_metrics({f"eval_gen/{k}": summary[k] for k in ("exact_match", "cer", "repetition_rate")})


class LossCurve(Callback):
    """Writes `loss_curve.png` (train loss, its EMA, eval loss) into `folder` at fit end."""

    def __init__(self, folder: str, ema: float = 0.9):
        self.folder, self.ema = folder, ema
        self.train: list[tuple[int, float]] = []
        self.eval: list[tuple[int, float]] = []
        self.fit_ended = False

    def batch_end(self, state: State, logger: Logger) -> None:
        loss = state.loss["total"] if isinstance(state.loss, dict) else state.loss  # dict: with the CTC head
        self.train.append((int(state.timestamp.batch), float(loss)))

    def eval_end(self, state: State, logger: Logger) -> None:
        metric = state.eval_metric_values.get("LanguageCrossEntropy")
        if metric is not None:
            self.eval.append((int(state.timestamp.batch), float(metric)))
        if self.fit_ended:  # Composer runs the last eval after FIT_END: redraw to include it
            self.draw()

    def fit_end(self, state: State, logger: Logger) -> None:
        self.fit_ended = True
        self.draw()

    def draw(self) -> None:
        if dist.get_global_rank() != 0 or not self.train:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        steps, losses = zip(*self.train)
        from nanoocr.eval.loss_report import ema_series  # the EMA loss_report judges a run by
        smooth = ema_series(losses, self.ema)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, losses, alpha=0.3, label="train loss")
        ax.plot(steps, smooth, label=f"train loss EMA ({self.ema})")
        if self.eval:
            ax.plot(*zip(*self.eval), "o-", label="eval loss")
        ax.set_xlabel("batch"), ax.set_ylabel("cross-entropy"), ax.set_yscale("log"), ax.legend()
        ax.grid(alpha=0.3)
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(Path(self.folder) / "loss_curve.png", dpi=120)
        plt.close(fig)


class SampleLog(Callback):
    """Writes the sample ids of every batch this rank trains on to `samples-rank{R}.jsonl` (audits data
    order across resumptions and the disjointness of ranks)."""

    def __init__(self, folder: str):
        self.folder = folder

    def after_dataloader(self, state: State, logger: Logger) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        path = Path(self.folder) / f"samples-rank{dist.get_global_rank()}.jsonl"
        with open(path, "a") as f:
            # "step" as in metrics.jsonl: the 0-based index of this batch in the run
            row = {"step": int(state.timestamp.batch), "ids": list(state.batch["sample_ids"])}
            f.write(json.dumps(row) + "\n")


class JSONLLogger(LoggerDestination):
    """Appends `{"step": batch, metric: value, ...}` lines to a file (rank 0 only); resumed runs append."""

    def __init__(self, path: str):
        self.path = path
        self._fh = None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if dist.get_global_rank() != 0:
            return
        if self._fh is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a")
        row = {"step": step}
        row.update({k: float(v) if isinstance(v, (int, float, torch.Tensor)) else v for k, v in metrics.items()})
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self, state: State, logger: Logger) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def measure_matmul_peak(n: int = 2048, dtype=torch.float32, seconds: float = 2.0) -> float:
    """Achievable dense matmul FLOP/s on this device (the best of repeated n x n matmuls)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)  # warm-up: a cold first run reads low
    best, t_end = 0.0, time.perf_counter() + seconds
    # At least one timed matmul: where one takes longer than `seconds` (bf16 emulated on an AVX2-only CPU
    # runs at a few GFLOP/s) the peak is that one's rate, not 0.
    while best == 0.0 or time.perf_counter() < t_end:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best
