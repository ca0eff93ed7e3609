"""Composer-native YAML: every callback, logger and algorithm Composer ships by its snake_case name, with its
own keyword arguments checked; any Trainer argument at the top level passed straight through; the
llm-foundry `global_train_batch_size`; misspelled keys refused by name at any depth.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import composer.algorithms
import composer.callbacks
import composer.loggers
import pytest
import torch

from nanoocr.train import builders
from nanoocr.train.build import build_trainer
from nanoocr.train.config import ConfigError, load_config, resolve_batch_size
from test_recipe import mds, shrink  # noqa: F401  (the shared fixture and overrides)

ROOT = Path(__file__).resolve().parents[1]
TIER1 = str(ROOT / "yamls/tier1_overfit.yaml")


def refused(overrides: list[str], world_size: int | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(TIER1, overrides, world_size=world_size)
    return str(err.value)


def test_every_composer_class_is_usable_by_its_snake_case_name():
    # The names the README and llm-foundry use, written out by hand (not derived by the code under test).
    expected = {
        "callbacks": {"memory_monitor": "MemoryMonitor", "runtime_estimator": "RuntimeEstimator",
                      "optimizer_monitor": "OptimizerMonitor", "nan_monitor": "NaNMonitor",
                      "early_stopper": "EarlyStopper", "lr_monitor": "LRMonitor", "checkpoint_saver": "CheckpointSaver",
                      "system_metrics_monitor": "SystemMetricsMonitor", "oom_observer": "OOMObserver",
                      "threshold_stopper": "ThresholdStopper", "activation_monitor": "ActivationMonitor"},
        "loggers": {"mlflow": "MLFlowLogger", "wandb": "WandBLogger", "file": "FileLogger", "console": "ConsoleLogger",
                    "in_memory": "InMemoryLogger", "comet_ml": "CometMLLogger", "neptune": "NeptuneLogger"},
        "algorithms": {"gradient_clipping": "GradientClipping", "ema": "EMA", "swa": "SWA", "sam": "SAM",
                       "layer_freezing": "LayerFreezing", "label_smoothing": "LabelSmoothing", "alibi": "Alibi"},
    }
    tables = {"callbacks": builders.CALLBACKS, "loggers": builders.LOGGERS, "algorithms": builders.ALGORITHMS}
    for section, names in expected.items():
        for name, cls in names.items():
            assert getattr(tables[section][name], "__name__", None) == cls, (section, name, tables[section][name])
    # ... and every class each module exports, but where our builder of the same name wins
    ours = {"speed_monitor": "SpeedMonitor", "tensorboard": "TensorboardLogger"}
    for module, base, table in ((composer.callbacks, composer.core.Callback, builders.CALLBACKS),
                                (composer.loggers, composer.loggers.LoggerDestination, builders.LOGGERS),
                                (composer.algorithms, composer.core.Algorithm, builders.ALGORITHMS)):
        classes = {getattr(module, n) for n in module.__all__}
        exported = {c for c in classes if isinstance(c, type) and issubclass(c, base) and c is not base}
        missing = exported - set(table.values())
        assert {c.__name__ for c in missing} <= set(ours.values()), (module.__name__, missing)
        assert len(exported) >= 10, module.__name__
    assert builders.CALLBACKS["speed_monitor"] is builders._speed_monitor
    assert builders.LOGGERS["tensorboard"] is builders._tensorboard


def test_composer_entries_load_and_their_keyword_typos_are_refused():
    cfg = load_config(TIER1, ["callbacks.memory_monitor={}", "callbacks.runtime_estimator={time_unit: minutes}",
                              "callbacks.early_stopper={monitor: LanguageCrossEntropy, dataloader_label: eval}",
                              "loggers.file={filename: log.txt}", "algorithms.ema={half_life: 10ba}",
                              "callbacks.nan_monitor={}"])
    assert cfg["callbacks"]["runtime_estimator"] == {"time_unit": "minutes"}
    cases = {  # override: what the one-line error must say
        "callbacks.memroy_monitor={}": "unknown callback 'memroy_monitor' in section 'callbacks' "
                                       "(did you mean 'memory_monitor'?)",
        "callbacks.memory_monitor={memory_kyes: {}}": "'memory_kyes' in section 'callbacks.memory_monitor' "
                                                       "(did you mean 'memory_keys'?)",
        "callbacks.runtime_estimator={skip_batchs: 2}": "(did you mean 'skip_batches'?)",
        "loggers.file={filenam: x.txt}": "'filenam' in section 'loggers.file' (did you mean 'filename'?)",
        "loggers.mlfow={}": "unknown logger 'mlfow' in section 'loggers' (did you mean 'mlflow'?)",
        "algorithms.ema={half_lif: 10ba}": "'half_lif' in section 'algorithms.ema' (did you mean 'half_life'?)",
        "algorithms.gradient_clipping={clipping_type: norm, clipping_threshhold: 1}":
            "(did you mean 'clipping_threshold'?)",
        "callbacks.nan_monitor={verbose: true}": "'verbose' in section 'callbacks.nan_monitor'",  # takes none
        # required arguments (no default in the class's __init__) and types (its annotations)
        "callbacks.early_stopper={monitor: x}": "section 'callbacks.early_stopper' needs 'dataloader_label'",
        "algorithms.gradient_clipping={clipping_type: norm}": "needs 'clipping_threshold'",
        "callbacks.runtime_estimator={skip_batches: many}": "'callbacks.runtime_estimator.skip_batches' must be int",
        "callbacks.lr_monitor=5": "section 'callbacks.lr_monitor' must be a mapping",
    }
    for override, expected in cases.items():
        message = refused([override])
        assert expected in message, (override, message)


def test_misspelled_keys_are_refused_at_any_depth():
    cases = {
        "save_weights_onyl=true": "'save_weights_onyl' in section '<top level>' (did you mean 'save_weights_only'?)",
        "spin_dataloader=false": "(did you mean 'spin_dataloaders'?)",
        "optimizers={name: adamw}": "'optimizers' in section '<top level>' (did you mean 'optimizer'?)",  # we build it
        "fsdp_config={sharding_strateg: FULL_SHARD}": "'sharding_strateg' in section 'fsdp_config' "
                                                      "(did you mean 'sharding_strategy'?)",
        "compile_config={mdoe: default}": "'mdoe' in section 'compile_config' (did you mean 'mode'?)",
        "model.pretrained={hf_sma: x}": "'hf_sma' in section 'model.pretrained' (did you mean 'hf_sam'?)",
        "train_loader.dataset.streams.overfit10.proportoin=1": "'proportoin' in section "
                                                               "'train_loader.dataset.streams.overfit10'",
        "build_data=[{inptu: x, out: y}]": "'inptu' in section 'build_data[0]' (did you mean 'input'?)",
        "final_eval.max_new_tokes=3": "(did you mean 'max_new_tokens'?)",
        "scheduler.alpha=0.1": "'alpha' in section 'scheduler (cosine_with_warmup)' (did you mean 'alpha_f'?)",
        "save_weights_only=sure": "'save_weights_only' must be bool",
    }
    for override, expected in cases.items():
        message = refused([override])
        assert expected in message, (override, message)


def test_trainer_keys_are_valid_at_the_top_level():
    import inspect

    from composer import Trainer
    cfg = load_config(TIER1, ["save_weights_only=true", "spin_dataloaders=false", "save_latest_filename=newest.pt",
                              "load_ignore_keys=[state/optimizers]", "compile_config={mode: default}",
                              "save_metrics=true", "deterministic_mode=false"])
    params = inspect.signature(Trainer.__init__).parameters
    for key in ("save_weights_only", "spin_dataloaders", "save_latest_filename", "load_ignore_keys", "compile_config",
                "save_metrics", "deterministic_mode"):
        assert key in params and key in cfg, key
    assert cfg["load_ignore_keys"] == ["state/optimizers"] and cfg["spin_dataloaders"] is False


def test_global_train_batch_size_derives_the_per_rank_batch():
    base = ["device_train_batch_size=null"]
    assert load_config(TIER1, base + ["global_train_batch_size=8"], world_size=1)["device_train_batch_size"] == 8
    assert load_config(TIER1, base + ["global_train_batch_size=8"], world_size=2)["device_train_batch_size"] == 4
    # both given: fine where they agree, an error naming both where they do not
    assert load_config(TIER1, ["global_train_batch_size=8", "device_train_batch_size=4"],
                       world_size=2)["device_train_batch_size"] == 4
    message = refused(["global_train_batch_size=8", "device_train_batch_size=8"], world_size=2)
    assert "'device_train_batch_size' 8 disagrees with 'global_train_batch_size' 8 over 2 rank(s) (4 each)" in message
    message = refused(base + ["global_train_batch_size=9"], world_size=2)
    assert "'global_train_batch_size' 9 is not divisible by the world size 2" in message
    assert "set 'global_train_batch_size'" in refused(base)  # neither
    assert "'global_train_batch_size' must be > 0" in refused(base + ["global_train_batch_size=0"])
    cfg = {"global_train_batch_size": 64}
    resolve_batch_size(cfg, 8)
    assert cfg["device_train_batch_size"] == 8  # the stage YAMLs' 64 on 8 GPUs


def test_global_train_batch_size_follows_the_launchers_world_size(monkeypatch):
    """Without world_size, load_config asks Composer's dist, which reads the launcher's WORLD_SIZE
    (patched here: this process may already hold a 1-rank process group)."""
    import composer.utils.dist as dist
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    cfg = load_config(TIER1, ["device_train_batch_size=null", "global_train_batch_size=6"])
    assert cfg["device_train_batch_size"] == 3


def test_nonfinite_guard_is_a_nan_monitor_that_also_stops_on_inf():
    from composer.callbacks import NaNMonitor

    from nanoocr.train.callbacks import NonFiniteLossGuard, RunStopped
    guard = NonFiniteLossGuard()
    assert isinstance(guard, NaNMonitor)
    state = SimpleNamespace(loss=torch.tensor(float("inf")), timestamp=SimpleNamespace(batch=3))
    NaNMonitor().after_loss(state, None)  # Composer's lets an inf loss through ...
    with pytest.raises(RunStopped, match="loss is inf at batch 3"):  # ... ours stops the run
        guard.after_loss(state, None)
    state.loss = torch.tensor(float("nan"))
    with pytest.raises(RuntimeError, match="NaN"):
        NaNMonitor().after_loss(state, None)
    with pytest.raises(RunStopped, match="loss is nan"):
        guard.after_loss(state, None)


def test_composer_callbacks_algorithm_and_trainer_keys_reach_the_trainer(mds, tmp_path):  # noqa: F811
    """A real (shrunk) run with Composer's own callbacks, logger and algorithm by name, Trainer keys from the
    top level, and the batch from global_train_batch_size on 1 rank."""
    from composer.algorithms import EMA
    from composer.callbacks import CheckpointSaver, MemoryMonitor, NaNMonitor, OptimizerMonitor, RuntimeEstimator

    from nanoocr.model.checkpoint import torch_load_safe
    run = tmp_path / "native"
    cfg = load_config(str(ROOT / "yamls/stage1.yaml"), shrink(run, mds / "vision") + [
        "max_duration=3ba", "save_interval=1ba", "eval_loader=null",
        "save_weights_only=true", "spin_dataloaders=false", "save_latest_filename=newest-rank{rank}.pt",
        "device_train_batch_size=null", "global_train_batch_size=2",
        "callbacks={memory_monitor: {}, runtime_estimator: {}, optimizer_monitor: {batch_log_interval: 1}, "
        "nan_monitor: {}}", f"loggers={{jsonl: {{}}, file: {{filename: '{run}/log.txt'}}}}",
        "algorithms={ema: {half_life: 2ba}}"])
    trainer, _, _ = build_trainer(cfg)
    kinds = {type(c) for c in trainer.state.callbacks}
    assert {MemoryMonitor, RuntimeEstimator, OptimizerMonitor, NaNMonitor} <= kinds
    assert [type(a) for a in trainer.state.algorithms] == [EMA]
    assert trainer.spin_dataloaders is False
    saver = next(c for c in trainer.state.callbacks if isinstance(c, CheckpointSaver))
    assert saver.weights_only is True
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 3 and int(trainer.state.timestamp.sample) == 6  # 2 per batch
    keys = set().union(*(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()))
    assert "time/remaining_estimate" in keys and "l2_norm/grad/global" in keys  # the callbacks ran
    assert (run / "log.txt").stat().st_size > 0
    state = torch_load_safe(run / "ckpt" / "newest-rank0.pt")["state"]
    assert "model" in state and "optimizers" not in state  # weights only
