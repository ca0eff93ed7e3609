"""A conversion's output appears only complete: a crash, Ctrl-C, kill -9 or a full disk leaves nothing at --out
that `build_data` or a training run would take for a built data set, and the same command run again converts
everything. Local (OUT.incomplete renamed to OUT) and remote (index.json uploaded last, only on success)."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streaming import MDSWriter

from conftest import BUCKET  # the moto S3 fixture `s3` lives in conftest.py
from nanoocr.data import convert as convert_to_mds

ROOT = Path(__file__).resolve().parents[1]
N_GOOD = 8


def make_jsonl(path: Path) -> Path:
    """N_GOOD text-only records and one bad one (no assistant answer)."""
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": "What?"},
                                         {"role": "assistant", "content": f"answer {i}"}]} for i in range(N_GOOD)]
    rows.insert(4, {"id": "bad", "messages": [{"role": "user", "content": "no answer"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_converted_everything(out: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["read"], summary["written"], summary["rejected"]) == (N_GOOD + 1, N_GOOD, 1), summary
    index = json.loads((out / "index.json").read_text())
    assert sum(s["samples"] for s in index["shards"]) == N_GOOD
    assert len((out / "rejected.jsonl").read_text().splitlines()) == 1
    assert not Path(f"{out}.incomplete").exists() and not Path(f"{out}.rejected").exists()


def fail_after(n: int, exc: BaseException, real):
    """`real`, raising `exc` from its (n+1)-th call on."""
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] > n:
            raise exc
        return real(*args, **kwargs)
    return wrapper


@pytest.mark.parametrize("where", ["writer", "validation"])
def test_crash_mid_conversion_publishes_nothing_and_a_rerun_converts_everything(tmp_path, monkeypatch, where):
    data, out = make_jsonl(tmp_path / "data.jsonl"), tmp_path / "out"
    if where == "writer":  # a bug or an unexpected error while writing the shards
        monkeypatch.setattr(MDSWriter, "write", fail_after(3, RuntimeError("boom"), MDSWriter.write))
        expected = RuntimeError
    else:  # Ctrl-C in the middle of the records
        monkeypatch.setattr(convert_to_mds, "validate_record",
                            fail_after(3, KeyboardInterrupt(), convert_to_mds.validate_record))
        expected = KeyboardInterrupt
    args = ["--input", str(data), "--out", str(out), "--compression", "none"]
    with pytest.raises(expected):
        convert_to_mds.main(args)
    assert not (out / "index.json").exists() and not (out / "summary.json").exists()
    assert not Path(f"{out}.incomplete").exists()  # an exception cleans up after itself
    monkeypatch.undo()
    assert convert_to_mds.main(args) == 0
    assert_converted_everything(out)


def test_killed_conversion_is_detected_and_rebuilt_by_the_next_run(tmp_path, capsys):
    """kill -9 runs no cleanup: the next run names the leftover OUT.incomplete, removes it and converts again."""
    data, out = make_jsonl(tmp_path / "data.jsonl"), tmp_path / "out"
    args = ["--input", str(data), "--out", str(out), "--compression", "none"]
    script = ("import os, signal, sys\n"
              "import nanoocr.data.convert as c\n"
              "real, n = c.validate_record, [0]\n"
              "def killing(*a, **k):\n"
              "    n[0] += 1\n"
              "    if n[0] > 3:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return real(*a, **k)\n"
              "c.validate_record = killing\n"
              "sys.exit(c.main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    stale = Path(f"{out}.incomplete")
    assert stale.is_dir() and not (out / "index.json").exists()
    capsys.readouterr()
    assert convert_to_mds.main(args) == 0
    err = capsys.readouterr().err
    assert f"an interrupted conversion left {stale}; removing it and converting again" in err, err
    assert_converted_everything(out)


@pytest.mark.parametrize("method", ["write", "flush_shard"])
def test_full_disk_fails_with_exit_1_and_publishes_nothing(tmp_path, monkeypatch, capsys, method):
    """ENOSPC on a record (write) or on the last shard (flush_shard, at the end): exit 1, the output and the
    OS error named, nothing complete-looking at OUT (summary.json used to claim the rows written)."""
    data, out = make_jsonl(tmp_path / "data.jsonl"), tmp_path / "out"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(MDSWriter, method, full)
    args = ["--input", str(data), "--out", str(out)]
    assert convert_to_mds.main(args) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "No space left on device" in err, err
    assert not (out / "index.json").exists() and not (out / "summary.json").exists()
    assert not Path(f"{out}.incomplete").exists()
    monkeypatch.undo()  # space freed: the same command now succeeds
    assert convert_to_mds.main(args) == 0
    assert_converted_everything(out)


def test_every_record_rejected_keeps_the_reports_beside_and_a_fixed_rerun_works(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    out = tmp_path / "out"
    assert convert_to_mds.main(["--input", str(bad), "--out", str(out)]) == 1
    reports = Path(f"{out}.rejected")
    assert str(reports) in capsys.readouterr().err
    assert sorted(os.listdir(reports)) == ["rejected.jsonl", "summary.json"]  # no index.json, no shards
    assert not (out / "index.json").exists()
    data = make_jsonl(tmp_path / "data.jsonl")  # the data fixed: the same --out now works
    assert convert_to_mds.main(["--input", str(data), "--out", str(out)]) == 0
    assert_converted_everything(out)  # and the stale reports are gone


def keys(client, prefix: str) -> set[str]:
    return {o["Key"][len(prefix):] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}


def test_remote_out_gets_index_json_last_and_only_on_success(s3, tmp_path, monkeypatch):
    from streaming.base.storage.upload import S3Uploader

    data = make_jsonl(tmp_path / "data.jsonl")
    url = f"s3://{BUCKET}/atomic"
    args = ["--input", str(data), "--out", url]
    monkeypatch.setattr(MDSWriter, "write", fail_after(3, RuntimeError("boom"), MDSWriter.write))
    with pytest.raises(RuntimeError):
        convert_to_mds.main(args)
    assert keys(s3, "atomic/") == set()  # nothing uploaded, in particular no index.json
    monkeypatch.undo()

    uploaded = []
    real = S3Uploader.upload_file

    def recording(self, filename):
        uploaded.append(filename)
        return real(self, filename)
    monkeypatch.setattr(S3Uploader, "upload_file", recording)
    assert convert_to_mds.main(args) == 0
    assert uploaded == ["shard.00000.mds.zstd", "rejected.jsonl", "summary.json", "index.json"], uploaded
    assert keys(s3, "atomic/") == set(uploaded)
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key="atomic/summary.json")["Body"].read())
    assert (summary["read"], summary["written"], summary["rejected"]) == (N_GOOD + 1, N_GOOD, 1)

    # every record rejected: the reports are uploaded, nothing named index.json
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "messages": []}) + "\n")
    assert convert_to_mds.main(["--input", str(bad), "--out", f"s3://{BUCKET}/allbad"]) == 1
    assert keys(s3, "allbad/") == {"rejected.jsonl", "summary.json"}
