"""Remote shards for real: an S3-compatible server (moto) on 127.0.0.1, started by these tests.

convert_to_mds --out s3://... uploads zstd shards and its reports; `read_records` reads a remote (S3 or a
plain folder) through a cache, fetching only the shards it needs; a shrunk Tier-1 run trains from S3 with
an empty cache (tokenizer texts, vision_collapse and generation_eval samples and the final eval all read
through Streaming), and a kill -9 + autoresume continues with the same losses as the uninterrupted run.

Streaming's S3 backend (streaming/base/storage/{download,upload}.py) is pointed at the server by
S3_ENDPOINT_URL; boto3 takes AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BUCKET  # the moto S3 fixture `s3` lives in conftest.py

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
def keys(client, prefix: str) -> dict[str, int]:
    objs = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: o["Size"] for o in objs}


@pytest.fixture(scope="module")
def remote_data(s3):
    """overfit10 converted straight to s3://BUCKET/overfit10 (the CLI, in this process)."""
    from nanoocr.data.convert import main as convert
    assert convert(["--input", "synthetic:overfit10:10:0", "--out", f"s3://{BUCKET}/overfit10"]) == 0
    return f"s3://{BUCKET}/overfit10"


def test_convert_uploads_zstd_shards_and_reports(s3, remote_data):
    listing = keys(s3, "overfit10/")
    assert set(listing) == {"index.json", "shard.00000.mds.zstd", "rejected.jsonl", "summary.json"}, listing
    index = json.loads(s3.get_object(Bucket=BUCKET, Key="overfit10/index.json")["Body"].read())
    assert [(sh["compression"], sh["zip_data"]["basename"]) for sh in index["shards"]] == \
        [("zstd", "shard.00000.mds.zstd")]
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key="overfit10/summary.json")["Body"].read())
    assert (summary["read"], summary["written"], summary["rejected"]) == (10, 10, 0)


def test_read_records_from_s3_through_a_cache(remote_data, tmp_path):
    from nanoocr.data.stream import read_records
    cache = tmp_path / "cache"
    recs = read_records(remote=remote_data, local=cache, limit=3)
    assert [r["id"] for r in recs] == [f"overfit10-s0-000{i}" for i in range(3)]
    assert recs[0]["image"][:4] == b"\x89PNG" and recs[0]["messages"][0]["role"] == "user"
    assert sorted(os.listdir(cache)) == ["index.json", "shard.00000.mds"]  # decompressed, zip dropped
    # no local cache given: a private temporary one
    assert [r["id"] for r in read_records(remote=remote_data)] == [f"overfit10-s0-{i:04d}" for i in range(10)]


def test_read_records_fetches_only_the_shards_it_needs(tmp_path):
    """A plain-folder remote of 3 shards: the first rows need the first shard only."""
    from streaming import MDSWriter

    from nanoocr.data.convert import COLUMNS
    from nanoocr.data.stream import read_records
    src = tmp_path / "src"
    with MDSWriter(out=str(src), columns=COLUMNS, compression="zstd", size_limit=1 << 10) as w:
        for i in range(30):
            w.write({"id": f"r{i}", "source": "t", "image": b"",
                     "messages": [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": f"{i}"}]})
    shards = json.loads((src / "index.json").read_text())["shards"]
    assert len(shards) >= 3
    first = shards[0]["samples"]
    cache = tmp_path / "cache"
    recs = read_records(remote=str(src), local=cache, limit=first)
    assert [r["id"] for r in recs] == [f"r{i}" for i in range(first)] and recs[0]["image"] is None
    assert sorted(os.listdir(cache)) == ["index.json", shards[0]["raw_data"]["basename"]]
    recs = read_records(remote=str(src), local=cache, limit=first + 1)
    assert len(recs) == first + 1 and len(os.listdir(cache)) == 3
    assert [r["id"] for r in read_records(local=src)] == [f"r{i}" for i in range(30)]  # local-only, in place


def train_args(tmp_path: Path, name: str, remote: str, cache: Path, extra=()) -> list[str]:
    """recipes/train.py on the Tier-1 YAML shrunk to a few tiny-mode batches, reading `remote` via `cache`."""
    run = tmp_path / name
    streams = f"{{overfit10: {{remote: '{remote}', local: '{cache}', proportion: 1.0}}}}"
    return [PY, "recipes/train.py", "yamls/tier1_overfit.yaml", "build_data=null", f"run_name={name}",
            f"run_folder={run}", f"save_folder={run}/ckpt", f"train_loader.dataset.streams={streams}",
            "train_loader.dataset.mode=tiny", "tokenizer.train_vocab_size=300", "model.gpt.n_layer=2",
            "device_train_batch_size=2", "max_duration=8ba", "scheduler.t_warmup=2ba", "progress_bar=false",
            "save_interval=2ba", "autoresume=true",
            "callbacks={lr_monitor: {}, vision_collapse: {interval: 3, probes: 3}, "
            "generation_eval: {interval: 4, samples: 2, max_new_tokens: 3}}", *extra]


def losses(run: Path) -> dict[int, float]:
    got = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)  # the last value logged for a step wins (steps after a checkpoint ran twice)
        if "loss/train/total" in r:
            got[r["step"]] = r["loss/train/total"]
    return got


@pytest.mark.slow
def test_tier1_from_s3_runs_and_kill9_autoresume_matches(remote_data, tmp_path):
    final = [f"final_eval.data={remote_data}", "final_eval.limit=3", "final_eval.max_new_tokens=3",
             "final_eval.export=false"]
    ref = subprocess.run(train_args(tmp_path, "ref", remote_data, tmp_path / "cache-ref", final), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    lines = [x for x in ref.stdout.splitlines() if x.startswith("exact_match: ")]
    assert lines and lines[-1].endswith("/3"), ref.stdout[-2000:]  # the final eval read its 3 samples from S3
    rows = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert any("vision/mean_cosine" in r for r in rows), "vision_collapse logged nothing"
    assert (tmp_path / "ref" / "tokenizer" / "tokenizer.json").is_file()  # trained on texts read from S3
    want = losses(tmp_path / "ref")
    assert sorted(want) == list(range(8))

    args = train_args(tmp_path, "killed", remote_data, tmp_path / "cache-killed", ["final_eval=null"])
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ckpts = tmp_path / "killed" / "ckpt"
    deadline = time.time() + 600
    while not (ckpts / "ep0-ba4-rank0.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run, no cleanup: Streaming's shared memory is left behind
    proc.wait()
    latest = ckpts / "latest-rank0.pt"
    assert latest.is_symlink(), f"no checkpoint finished before the kill: {sorted(os.listdir(ckpts))}"
    resume_at = int(os.readlink(latest).split("-ba")[1].split("-")[0])
    assert 2 <= resume_at < 8, resume_at
    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Autoresuming training from checkpoint" in resumed.stderr
    got = losses(tmp_path / "killed")
    assert sorted(got) == list(range(8))
    for step in range(resume_at, 8):  # every batch after the resume point: the same loss, bit for bit
        assert got[step] == want[step], (step, got[step], want[step])


@pytest.mark.slow
def test_tier1_from_a_plain_folder_remote(tmp_path):
    """`remote:` a local MDS folder, `local:` an empty cache: Streaming copies the shards over."""
    from nanoocr.data.convert import main as convert
    src = tmp_path / "mds"
    assert convert(["--input", "synthetic:overfit10:10:0", "--out", str(src)]) == 0
    cache = tmp_path / "cache"
    out = subprocess.run(train_args(tmp_path, "folder", str(src), cache,
                                    ["max_duration=3ba", "autoresume=false", "save_folder=null", "final_eval=null"]),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(losses(tmp_path / "folder")) == [0, 1, 2]
    assert (cache / "index.json").is_file() and (cache / "shard.00000.mds").is_file()
    assert not (src / "shard.00000.mds").exists()  # the remote is only read: nothing decompressed there
