"""sample, inspect_image and evaluate on a corpus of bad inputs, run as a user runs them: subprocesses.

Every try must end within TIMEOUT_S (a FIFO or /dev/zero must not hang a reader) with either success or a
non-zero exit and a one-line error naming its cause, never a traceback. Malicious exports are refused
before anything is allocated or unpickled. One tiny export is built once and shared; tries run in sequence."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from test_bad_input import huge_declared_png, png

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60
MARKER = "pwned"  # created by the pickle payloads if anything unpickles them


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import torch

    from nanoocr.model import presets
    from nanoocr.train.export import export_model
    from nanoocr.data.images import MAX_IMAGE_BYTES
    from nanoocr.data.tokenizer import Tokenizer
    from nanoocr.model.vlm import NanoOCR
    root = tmp_path_factory.mktemp("bad_inference")
    tok = Tokenizer.train_from_iterator(["Free OCR. hello world"] * 4, vocab_size=300)
    torch.manual_seed(0)
    # sequence_len 64: a rotary table of 640 positions, so a tiny-mode prompt (~80) fits and 32768 new tokens do not
    cfg = presets.build_config("nano", sam={"depth": 2}, image_token_id=tok.image_id,
                               gpt={"n_layer": 2, "n_embd": 64, "n_head": 2, "n_kv_head": 2, "sequence_len": 64,
                                    "vocab_size": tok.vocab_size})
    export = export_model(NanoOCR(cfg), tok, root / "export", mode="tiny")

    good = png(Image.new("RGB", (64, 48), "white"))
    files = {"ok.png": good, "empty.png": b"", "notimg.png": b"this is not an image at all",
             "trunc.png": good[:len(good) // 2], "bomb.png": huge_declared_png(),
             "thin.png": png(Image.new("RGB", (1, 1000), "white")), "fake.pdf": b"%PDF-1.4 this is not a PDF\n"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    with open(root / "sparse.png", "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)
    os.mkfifo(root / "fifo.png")  # opening it for reading would block forever
    (root / "folder.png").mkdir()

    layers = root / "layers"  # config.json asks for 100000 GPT layers: must be refused before any is built
    shutil.copytree(export, layers)
    meta = json.loads((layers / "config.json").read_text())
    meta["model"]["gpt"]["n_layer"] = 100000
    (layers / "config.json").write_text(json.dumps(meta))
    pkl_tok = root / "pkl_tok"  # a tokenizer.pkl payload instead of tokenizer.json
    pkl_tok.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy(export / name, pkl_tok / name)
    (pkl_tok / "tokenizer.pkl").write_bytes(pickle.dumps(Payload(root / MARKER)))
    pkl_model = root / "pkl_model"  # a pickle named like the weights, and a Composer-style checkpoint next to it
    shutil.copytree(export, pkl_model)
    (pkl_model / "model.safetensors").write_bytes(pickle.dumps(Payload(root / MARKER)))
    ckpt_only = root / "ckpt_only"  # a folder that only holds a (pickled) checkpoint
    ckpt_only.mkdir()
    shutil.copy(export / "config.json", ckpt_only / "config.json")
    (ckpt_only / "latest-rank0.pt").write_bytes(pickle.dumps(Payload(root / MARKER)))
    bad_json = root / "bad_json"
    shutil.copytree(export, bad_json)
    (bad_json / "config.json").write_text('{"model": {"sam": ')
    bad_meta = root / "bad_meta"  # weights fine, but the training mode it names does not exist
    shutil.copytree(export, bad_meta)
    (bad_meta / "config.json").write_text(json.dumps({**json.loads((export / "config.json").read_text()), "mode": "huge"}))
    os.symlink(root / "loop_b", root / "loop_a")
    os.symlink(root / "loop_a", root / "loop_b")

    os.mkfifo(root / "fifo.jsonl")  # for evaluate --data
    (root / "mds").mkdir()  # what a conversion leaves: evaluate --out must not write into it
    (root / "mds" / "index.json").write_text('{"version": 2, "shards": []}')
    (root / "mds" / "summary.json").write_text("{}")
    ocr = [{"role": "user", "content": "<image>\nFree OCR."}, {"role": "assistant", "content": "hello"}]
    (root / "one.jsonl").write_text(json.dumps({"id": "a", "image": "ok.png", "messages": ocr}) + "\n")
    return root


def run(root: Path, module: str, *args) -> subprocess.CompletedProcess:
    """`python -m module args` in the corpus folder; a try that hangs fails the test with TimeoutExpired."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=root, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def assert_refused(proc: subprocess.CompletedProcess, keyword: str) -> None:
    """Non-zero exit, no traceback, and the last stderr line is one error line naming the cause."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    last = proc.stderr.strip().splitlines()[-1]
    assert "error" in last and keyword in last, proc.stderr[-3000:]


# (case, --image, extra args, keyword of the refusal or None for success). Image problems are found before
# torch is even imported; model problems before the model is built.
IMAGE_TRIES = [
    ("ok", "ok.png", [], None),
    ("missing", "nope.png", [], "not found"),
    ("directory", "folder.png", [], "not a regular file"),
    ("fifo", "fifo.png", [], "not a regular file"),
    ("dev_zero", "/dev/zero", [], "not a regular file"),
    ("empty", "empty.png", [], "empty file"),
    ("sparse_huge", "sparse.png", [], "file too large"),
    ("not_an_image", "notimg.png", [], "not an image"),
    ("truncated_png", "trunc.png", [], "truncated"),
    ("bomb_header", "bomb.png", [], "too many pixels"),
    ("aspect_1x1000", "thin.png", [], "aspect ratio 1x1000"),
]
SAMPLE_TRIES = IMAGE_TRIES + [
    ("fake_pdf", "fake.pdf", [], "pdftoppm"),
    ("bad_mode", "ok.png", ["--mode", "huge"], "--mode"),
    ("page_0", "ok.png", ["--page", "0"], "--page"),
    ("max_new_tokens_0", "ok.png", ["--max-new-tokens", "0"], "--max-new-tokens"),
    ("max_new_tokens_huge", "ok.png", ["--max-new-tokens", str(10 ** 12)], "--max-new-tokens"),
    ("max_new_tokens_over_model", "ok.png", ["--max-new-tokens", "32768"], "640 positions"),
]
EXPORT_TRIES = [  # (case, --model, keyword)
    ("no_such_folder", "nope", "No such file"),
    ("n_layer_100000", "layers", "n_layer = 100000"),
    ("pickle_tokenizer", "pkl_tok", "refusing to unpickle"),
    ("pickle_as_safetensors", "pkl_model", "model.safetensors is unreadable"),
    ("checkpoint_only", "ckpt_only", "missing model.safetensors"),
    ("config_not_json", "bad_json", "config.json is not JSON"),
    ("config_bad_mode", "bad_meta", "mode 'huge'"),
    ("symlink_loop", "loop_a", "symbolic links"),
    ("a_file", "ok.png", "not a folder"),
]


@pytest.mark.parametrize("case, image, extra, keyword", SAMPLE_TRIES, ids=[t[0] for t in SAMPLE_TRIES])
def test_sample_bad_input(corpus, case, image, extra, keyword):
    if case == "fake_pdf" and shutil.which("pdftoppm") is None:
        pytest.skip("poppler-utils not installed")
    proc = run(corpus, "nanoocr.sample", "--model", "export", "--image", image, "--max-new-tokens", "2", *extra)
    if keyword is None:
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    else:
        assert_refused(proc, keyword)
        assert proc.returncode == 2
        assert image in proc.stderr.strip().splitlines()[-1] or keyword.startswith("--")  # names the file


@pytest.mark.parametrize("case, model, keyword", EXPORT_TRIES, ids=[t[0] for t in EXPORT_TRIES])
def test_sample_malicious_export(corpus, case, model, keyword):
    proc = run(corpus, "nanoocr.sample", "--model", model, "--image", "ok.png", "--max-new-tokens", "2")
    assert_refused(proc, keyword)
    assert "--model" in proc.stderr.strip().splitlines()[-1]
    assert not (corpus / MARKER).exists(), "a pickle payload ran"


INSPECT_TRIES = IMAGE_TRIES + [
    ("max_crops_100000", "ok.png", ["--mode", "gundam", "--max-crops", "100000"], "--max-crops"),
    ("min_crops_0", "ok.png", ["--mode", "gundam", "--min-crops", "0"], "--min-crops"),
    ("min_over_max", "ok.png", ["--min-crops", "7", "--max-crops", "6"], "--min-crops"),
    ("bad_mode", "ok.png", ["--mode", "huge"], "--mode"),
    ("overlay_unwritable", "ok.png", ["--overlay", "folder.png/no/such/dir/x.png"], "--overlay"),
    ("overlay_bad_format", "ok.png", ["--overlay", "out.nosuchformat"], "--overlay"),
]


@pytest.mark.parametrize("case, image, extra, keyword", INSPECT_TRIES, ids=[t[0] for t in INSPECT_TRIES])
def test_inspect_image_bad_input(corpus, case, image, extra, keyword):
    proc = run(corpus, "nanoocr.inspect_image", image, "--json", *extra)
    if keyword is None:
        assert proc.returncode == 0 and json.loads(proc.stdout)["size"] == [64, 48], proc.stderr
    else:
        assert_refused(proc, keyword)
        assert proc.returncode == 2


def test_evaluate_bad_input_corpus(corpus, tmp_path):
    """One evaluation over every bad image (the corpus folder is the data root): each is skipped with its
    reason, the good one evaluated and written."""
    ocr = [{"role": "user", "content": "<image>\nFree OCR."}, {"role": "assistant", "content": "hello"}]
    lines = [{"id": case, "image": image, "messages": ocr} for case, image, _, _ in IMAGE_TRIES]
    lines += [{"id": "escape", "image": "../ok.png", "messages": ocr},
              {"id": "text_only", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    (corpus / "eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{not json\n")
    out = tmp_path / "out"
    proc = run(corpus, "nanoocr.evaluate", "--model", "export", "--data", "eval.jsonl", "--out", out,
               "--max-new-tokens", "2", "--batch-size", "4", "--device", "cpu")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "per_sample.jsonl").read_text().splitlines()]
    skipped = {s["id"]: s["reason"] for s in map(json.loads, (out / "skipped.jsonl").read_text().splitlines())}
    assert [r["id"] for r in rows] == ["ok"]
    assert summary["n"] == 1 and summary["read"] == len(lines) + 1 == 1 + summary["skipped"] == 1 + len(skipped)
    # records.resolve_image_path reports a folder or a FIFO as "not found" (it is not a file) and /dev/zero as
    # outside the data root: either way before anything is opened.
    expected = {case: keyword for case, _, _, keyword in IMAGE_TRIES if keyword is not None}
    expected.update({"directory": "not found", "fifo": "not found", "dev_zero": "escapes data root",
                     "escape": "escapes data root", "text_only": "no image", f"eval.jsonl:{len(lines) + 1}": "not valid JSON"})
    for rid, keyword in expected.items():
        assert keyword in skipped[rid], (rid, skipped[rid])


EVALUATE_USAGE_TRIES = [  # (case, flags replacing the defaults, keyword)
    ("bad_mode", ["--mode", "huge"], "--mode"),
    ("max_new_tokens_0", ["--max-new-tokens", "0"], "--max-new-tokens"),
    ("max_new_tokens_huge", ["--max-new-tokens", str(10 ** 12)], "--max-new-tokens"),
    ("data_fifo", ["--data", "fifo.jsonl"], "--data"),
    ("out_is_mds", ["--out", "mds"], "index.json"),
    ("out_is_a_file", ["--out", "ok.png"], "--out"),
    ("model_n_layer_100000", ["--model", "layers"], "n_layer = 100000"),  # the other bad exports: sample's tries
    ("device", ["--device", "tpu9"], "--device"),
]


@pytest.mark.parametrize("case, flags, keyword", EVALUATE_USAGE_TRIES, ids=[t[0] for t in EVALUATE_USAGE_TRIES])
def test_evaluate_usage_errors(corpus, case, flags, keyword):
    argv = {"--model": "export", "--data": "one.jsonl", "--out": "evout", "--max-new-tokens": "2", "--device": "cpu"}
    argv.update(zip(flags[::2], flags[1::2]))
    proc = run(corpus, "nanoocr.evaluate", *[x for kv in argv.items() for x in kv])
    assert_refused(proc, keyword)
    assert proc.returncode == 2
    assert not (corpus / MARKER).exists(), "a pickle payload ran"
    assert (corpus / "mds" / "summary.json").read_text() == "{}", "a conversion's summary was overwritten"
