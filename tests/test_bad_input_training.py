"""The training recipe on a corpus of bad inputs, run as a user runs it (`python recipes/train.py YAML k=v`).

Every try must end within a time bound (nothing hangs: a batch larger than the data used to spin through empty
epochs forever), with the expected exit code and a one-line error on stderr naming its cause: no traceback.
Payload checkpoints must not run (their marker file never appears)."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_recipe import mds, shrink  # noqa: F401  (the shared fixture and overrides)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180  # seconds per try: each starts Python, torch and Composer afresh


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run(yaml_path, overrides, timeout=TIMEOUT):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / "recipes/train.py"), str(yaml_path), *overrides],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.mark.slow
def test_bad_training_inputs_end_with_a_named_cause(mds, tmp_path, capsys):  # noqa: F811
    from streaming import MDSWriter
    with MDSWriter(out=str(tmp_path / "empty"), columns={"id": "str"}):
        pass
    marker = tmp_path / "pwned"
    torch.save({"state": {"model": {}, "evil": Payload(marker)}, "rng": []}, tmp_path / "evil.pt")
    planted = tmp_path / "planted"
    (planted / "ckpt").mkdir(parents=True)
    torch.save({"state": {"evil": Payload(marker)}}, planted / "ckpt" / "latest-rank0.pt")
    (tmp_path / "evil.yaml").write_text(f'a: !!python/object/apply:os.system ["touch {marker}"]\n')
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    vision = mds / "vision"
    text_only = [f"train_loader.dataset.streams={{t: {{local: '{mds / 'text'}'}}}}", "eval_loader=null"]
    stage1 = ROOT / "yamls/stage1.yaml"
    tries = {  # name: (yaml, extra overrides, exit code, words the one-line error must hold)
        "typo": (stage1, ["optimizer.lrr=1"], 2, ["'lrr'", "did you mean 'lr'"]),
        "lr_not_a_number": (stage1, ["optimizer.lr=fast"], 2, ["optimizer (adamw).lr", "'fast'"]),
        "composer_callback_typo": (stage1, ["callbacks.memroy_monitor={}"], 2,
                                   ["'memroy_monitor'", "did you mean 'memory_monitor'"]),
        "composer_kwarg_typo": (stage1, ["callbacks.runtime_estimator={time_unti: hours}"], 2,
                                ["'time_unti'", "did you mean 'time_unit'"]),
        "batch_sizes_disagree": (stage1, ["global_train_batch_size=4"], 2,  # shrink sets 2 per device, 1 rank
                                 ["'device_train_batch_size' 2 disagrees with 'global_train_batch_size' 4"]),
        "duration_not_a_time": (stage1, ["max_duration=banana"], 2, ["max_duration", "banana"]),
        "seed_not_an_int": (stage1, ["seed=abc"], 2, ["'seed'", "'abc'"]),
        "crops_unbounded": (stage1, ["train_loader.dataset.max_crops=100000"], 2, ["max_crops", "100000"]),
        "yaml_python_tag": (tmp_path / "evil.yaml", [], 2, ["not a valid YAML config", "python/object"]),
        "yaml_not_a_mapping": (tmp_path / "list.yaml", [], 2, ["top level must be a mapping"]),
        "yaml_missing": (tmp_path / "nope.yaml", [], 2, ["config file not found"]),
        "bad_interpolation": (stage1, ["seed=${variables.nope}"], 2, ["variables.nope"]),
        "batch_larger_than_data": (stage1, ["device_train_batch_size=64", "device_train_microbatch_size=8"], 2,
                                   ["fewer than one batch of 64"]),
        "empty_mds": (stage1, [f"train_loader.dataset.streams={{e: {{local: '{tmp_path / 'empty'}'}}}}"], 2,
                      ["stream 'e'", "holds no samples"]),
        "proportion_zero": (stage1, [f"train_loader.dataset.streams={{v: {{local: '{vision}', proportion: 0.0}}}}"],
                            2, ["stream 'v'", "proportion must be a number > 0"]),
        "no_mds_there": (stage1, [f"train_loader.dataset.streams={{v: {{local: '{tmp_path / 'nowhere'}'}}}}"], 2,
                         ["stream 'v'", "no MDS index"]),
        "tokenizer_missing": (stage1, [f"tokenizer.path={tmp_path / 'nope'}"], 2, ["tokenizer", "not found"]),
        "pretrained_missing": (stage1, [f"model.pretrained={{hf_sam: '{tmp_path / 'nope'}'}}"], 2, ["not found"]),
        "text_only_with_collapse_probe": (stage1, text_only + ["callbacks.generation_eval=null"], 2,
                                          ["vision_collapse needs", "text-only"]),
        "every_sample_rejected": (stage1, ["train_loader.dataset.overflow=drop", "train_loader.dataset.max_seq_len=20",
                                           "eval_loader=null", "callbacks={}"], 1,
                                  ["run stopped", "rejected by the data pipeline", "exceeds max_seq_len"]),
        "lr_inf": (stage1, ["optimizer.lr=.inf", "algorithms={}", "eval_loader=null", "callbacks={}"], 1,
                   ["run stopped", "not finite"]),
        "load_path_payload": (stage1, [f"load_path={tmp_path / 'evil.pt'}", "load_weights_only=true"], 2,
                              ["evil.pt", "refusing to load"]),
    }
    # In a subprocess: the tries that could hang or run a payload. The rest fail before training starts and
    # run in this process (each subprocess costs ~10 s of starting Python, torch and Composer).
    isolated = {"batch_larger_than_data", "every_sample_rejected", "lr_inf", "load_path_payload", "yaml_python_tag"}
    from nanoocr.train.recipe import main
    results = {}
    for name, (yaml_path, extra, code, words) in tries.items():
        argv = [str(yaml_path), *shrink(tmp_path / name, vision, extra=["max_duration=3ba", *extra])]
        if name in isolated:
            proc = run(argv[0], argv[1:])
            rc, stderr = proc.returncode, proc.stderr
        else:
            capsys.readouterr()
            rc, stderr = main(argv), capsys.readouterr().err
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        results[name] = (rc, last)
        assert rc == code, (name, rc, stderr[-3000:])
        assert "Traceback" not in stderr, (name, stderr[-3000:])
        assert last.startswith(("config error:", "error:")), (name, last)
        for word in words:
            assert word in last, (name, word, last)
    # autoresume from a planted latest checkpoint
    proc = run(stage1, shrink(planted, vision, extra=["max_duration=3ba", "autoresume=true", "run_name=planted"]))
    assert proc.returncode == 2 and "latest-rank0.pt" in proc.stderr and "refusing to load" in proc.stderr, \
        proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not marker.exists(), "a payload ran"
    print(json.dumps(results, indent=1))
