"""Shared test setup.

TRITON_INTERPRET must be set before any @triton.jit decorator runs (the variable is read at
decoration time), so it is set here, before any test module imports kernels/."""
import os
import socket

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_streaming_shm():
    """Streaming leaves shared memory behind when a test fails mid-iteration; clear it around each test."""
    try:
        from streaming.base.util import clean_stale_shared_memory
    except Exception:  # streaming not importable: nothing to clean
        yield
        return
    # Streaming's cleanup unlinks every Streaming segment on the machine; a concurrent test run may have
    # removed one first, which is harmless.
    try:
        clean_stale_shared_memory()
    except FileNotFoundError:
        pass
    yield
    try:
        clean_stale_shared_memory()
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------------
# An S3-compatible server on 127.0.0.1 (moto), for the remote-shard tests (test_remote, test_stage_chain)

BUCKET = "nanoocr-test"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; the environment points Streaming and boto3 at it
    (inherited by subprocesses). Yields a boto3 client."""
    import boto3  # moto[server] and boto3 are in the dev extra: missing, the test must fail, not skip
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**S3_ENV, "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"])
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def shrunk_reads():
    """shrunk_reads(yaml, data, run, {sub: spec}[, extra overrides]) -> a reading-curriculum YAML (yamls/reads*.yaml)
    as written, loaded with its data sets pre-built small under `data` (build_data then skips them) and a 3-batch run
    into `run`: batch 4, one eval batch, a 300-token BPE, 4 probes, 4 new tokens in the evals."""
    def load(yaml, data, run, sets: dict, extra: tuple = ()):
        from nanoocr.data.convert import main as convert
        from nanoocr.train.config import load_config
        for sub, spec in sets.items():
            assert convert(["--input", f"synthetic:{spec}", "--out", str(data / sub)]) in (0, None)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return load_config(os.path.join(root, "yamls", yaml), [
            f"variables.data_dir={data}", f"run_folder={run}", "save_folder=null", "progress_bar=false",
            "max_duration=3ba", "device_train_batch_size=4", "eval_interval=3ba", "eval_subset_num_batches=1",
            "tokenizer.train_vocab_size=300", "callbacks.vision_collapse.probes=4",
            "callbacks.generation_eval={interval: 3, samples: 2, max_new_tokens: 4}", "final_eval.max_new_tokens=4",
            *extra])
    return load
