"""Checkpoints the recipe loads (`load_path`, autoresume's `latest-rank0.pt`, export) never run pickled code.

A payload is a pickle whose `__reduce__` would create a marker file; each way in must refuse it with an
error naming the file, and the marker must not exist afterwards."""
import os
import pickle

import pytest
import torch

from nanoocr.model.checkpoint import CheckpointError, load_composer_state, torch_load_safe
from nanoocr.train.build import build_trainer
from nanoocr.train.config import load_config
from test_recipe import mds, shrink  # noqa: F401  (the shared fixture and overrides)


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": {"model": {}, "evil": Payload(marker)}, "rng": []}, path)


def test_torch_load_safe_refuses_a_payload(tmp_path):
    plant(tmp_path / "evil.pt", tmp_path / "pwned")
    with pytest.raises(CheckpointError, match="evil.pt: refusing to load.*GLOBAL posix.system"):
        torch_load_safe(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_composer_state(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_load_path_payload_is_refused(mds, tmp_path):  # noqa: F811
    plant(tmp_path / "evil.pt", tmp_path / "pwned")
    cfg = load_config("yamls/stage2.yaml", shrink(tmp_path / "run", mds / "vision", extra=[
        "max_duration=1ba", f"load_path={tmp_path / 'evil.pt'}", "load_weights_only=true"]))
    with pytest.raises(CheckpointError, match="evil.pt"):
        build_trainer(cfg)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_planted_latest_checkpoint_is_refused_on_autoresume(mds, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    plant(run / "ckpt" / "latest-rank0.pt", tmp_path / "pwned")
    cfg = load_config("yamls/stage1.yaml", shrink(run, mds / "vision", extra=[
        "max_duration=1ba", "autoresume=true", "run_name=planted"]))
    with pytest.raises(CheckpointError, match="latest-rank0.pt"):
        build_trainer(cfg)
    assert not (tmp_path / "pwned").exists()


def test_sharded_entry_payload_is_refused(tmp_path):
    """A sharded checkpoint's non-tensor entries are pickles inside the shards: read weights-only."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from nanoocr.train.composer_loading import guard_composer_loading
    dcp.save({"rng": {"x": Payload(tmp_path / "pwned")}, "w": torch.ones(2)},
             storage_writer=dcp.FileSystemWriter(str(tmp_path / "ck")), no_dist=True)
    guard_composer_loading()
    state = {"rng": {"x": None}, "w": torch.zeros(2)}
    from torch.distributed.checkpoint.api import CheckpointException
    with pytest.raises(CheckpointException) as err:  # DCP wraps each rank's error (a BaseException subclass)
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(tmp_path / "ck")), planner=DefaultLoadPlanner(),
                 no_dist=True)
    assert "rng.x: refusing to load" in str(getattr(err.value, "failures", err.value))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_checkpoint_without_this_models_weights_is_refused(mds, tmp_path):  # noqa: F811
    """A Composer-format checkpoint holding no (or other) model weights must not 'load' into a fresh model."""
    torch.save({"state": {"model": {"model.something.else": torch.zeros(3)}, "rank_zero_seed": 17}, "rng": []},
               tmp_path / "other.pt")
    cfg = load_config("yamls/stage2.yaml", shrink(tmp_path / "run", mds / "vision", extra=[
        "max_duration=1ba", f"load_path={tmp_path / 'other.pt'}", "load_weights_only=true"]))
    with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
        build_trainer(cfg)


@pytest.mark.slow
def test_truncated_latest_checkpoint_falls_back_to_the_previous_intact_one(mds, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    over = ["save_interval=1ba", "autoresume=true", "run_name=trunc", "eval_loader=null", "callbacks={}"]
    trainer, _, _ = build_trainer(load_config("yamls/stage1.yaml", shrink(run, mds / "vision",
                                                                          extra=over + ["max_duration=2ba"])))
    trainer.fit()
    trainer.close()
    latest = run / "ckpt" / "latest-rank0.pt"
    newest = latest.resolve()
    assert newest.name == "ep0-ba2-rank0.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[:len(data) // 2])  # a crash / full disk cut the newest checkpoint short
    trainer, _, _ = build_trainer(load_config("yamls/stage1.yaml", shrink(run, mds / "vision",
                                                                          extra=over + ["max_duration=3ba"])))
    assert latest.resolve().name == "ep0-ba1-rank0.pt"
    assert int(trainer.state.timestamp.batch) == 1  # resumed from the intact one
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 3
    trainer.close()
    # nothing intact left: refused by name, not a traceback from deep inside torch
    for p in (run / "ckpt").glob("ep*-rank0.pt"):
        p.write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(CheckpointError, match="latest-rank0.pt points at .*truncated.*no intact"):
        build_trainer(load_config("yamls/stage1.yaml", shrink(run, mds / "vision", extra=over + ["max_duration=4ba"])))


def test_pretrained_weight_files_with_a_payload_are_refused(tmp_path):
    """HF SAM/CLIP `.bin`/`.pt` files and nanochat's `model_<step>.pt` are read weights-only: refused by name."""
    from nanoocr.model.nanochat import load_nanochat_with_report
    from nanoocr.model.pretrained import read_checkpoint
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "evil": Payload(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refusing to load"):
        read_checkpoint(tmp_path)
    nano = tmp_path / "nanochat"
    nano.mkdir()
    torch.save({"evil": Payload(marker)}, nano / "model_000001.pt")
    (nano / "meta_000001.json").write_text('{"model_config": {"sequence_len": 8, "vocab_size": 8, "n_layer": 1, '
                                           '"n_head": 1, "n_kv_head": 1, "n_embd": 8}}')
    with pytest.raises(CheckpointError, match="model_000001.pt: refusing to load"):
        load_nanochat_with_report(nano)
    assert not marker.exists()


def test_no_trust_remote_code_and_no_unsafe_torch_load_in_the_package():
    """The package never asks for remote code and never calls torch.load without weights_only=True."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for path in [*root.glob("nanoocr/**/*.py"), *root.glob("recipes/**/*.py"), *root.glob("kernels/**/*.py")]:
        text = path.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        for call in re.finditer(r"torch\.load\((.*?)\)\n", text, re.S):
            assert "weights_only=True" in call.group(1), (path, call.group(0)[:200])
