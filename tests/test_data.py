"""The Streaming data path on small MDS datasets written here (real PNG images, a real BPE tokenizer).

Checked against independent facts, not earlier outputs: exact mixture counts (0.9/0.1 of an epoch of
100), an uninterrupted epoch as the reference for a resumed one, the full id set for two ranks, the
token counts of docs/FACTS.md "Image modes" (Gundam 273 + (10h)(10w+1)) for the image spans in a batch.
"""
import collections
import gc
import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from streaming import MDSWriter

from nanoocr.data.stream import (DataError, build_dataloader, build_streams, collate, data_spec, get_num_samples_in_batch,
                          get_num_tokens_in_batch, split_batch)
from nanoocr.data.processing import process_sample
from nanoocr.data.tokenizer import Tokenizer

COLUMNS = {"id": "str", "source": "str", "messages": "json", "image": "bytes"}
REPO = Path(__file__).resolve().parents[1]


def png(w: int, h: int, seed: int = 0) -> bytes:
    """A real PNG: a light page with a few dark 'text lines' (varies with seed)."""
    img = Image.new("RGB", (w, h), (245, 245, 240))
    d = ImageDraw.Draw(img)
    for k in range(4):
        y = (k * h) // 5 + 2
        d.rectangle([4 + (seed * 7 + k) % 9, y, w - 5 - (seed % 5), y + max(1, h // 12)], fill=(20, 20, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def vision_record(i: int, size=(64, 48), text=None) -> dict:
    return {"id": f"v{i}", "source": "vision",
            "messages": [{"role": "user", "content": "<image>\nFree OCR."},
                         {"role": "assistant", "content": text or f"Page {i}: the quick brown fox."}],
            "image": png(*size, seed=i)}


def text_record(i: int, answer=None) -> dict:
    return {"id": f"t{i}", "source": "text",
            "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": "assistant", "content": answer or f"It is {2 * i}."}],
            "image": b""}


def write_mds(out: Path, records) -> str:
    with MDSWriter(out=str(out), columns=COLUMNS) as w:
        for r in records:
            w.write(r)
    return str(out)


@pytest.fixture(autouse=True)
def one_thread():
    """Process samples single-threaded in-process, as loader workers do (torch sets 1 thread there):
    on a busy machine two intra-op threads make the per-image tensor ops many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    texts = ["Free OCR. the quick brown fox jumps over the lazy dog", "What is 12 plus 12? It is 24.",
             "Page 3: hello world"] * 20
    return Tokenizer.train_from_iterator(texts, vocab_size=320)


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """Two streams: 60 vision rows (tiny PNGs), 20 text rows."""
    root = tmp_path_factory.mktemp("mds")
    return {"vision": write_mds(root / "vision", [vision_record(i) for i in range(60)]),
            "text": write_mds(root / "text", [text_record(i) for i in range(20)])}


def loader_cfg(mixture, num_workers=0, **dataset):
    ds = {"streams": {"vision": {"local": mixture["vision"], "proportion": 0.9},
                      "text": {"local": mixture["text"], "proportion": 0.1}},
          "epoch_size": 100, "mode": "tiny", "max_seq_len": 256, "shuffle_seed": 7}
    ds.update(dataset)
    return {"dataset": ds, "num_workers": num_workers}


def epoch_ids(loader) -> list[str]:
    ids = [i for batch in loader for i in batch["sample_ids"]]
    del loader
    gc.collect()  # release the dataset's shared memory before the next one over the same folders
    return ids


# ---------------------------------------------------------------------------------------------
# Mixture, determinism, resumption


def test_mixture_exact_counts_and_seed_determinism(mixture, tok):
    ids = epoch_ids(build_dataloader(loader_cfg(mixture), tok, 4))
    assert len(ids) == 100
    counts = collections.Counter(i[0] for i in ids)
    assert counts == {"v": 90, "t": 10}, counts
    # 90 draws from 60 vision rows: every row once, 30 of them twice (up-sampling, not random draws).
    v = collections.Counter(i for i in ids if i[0] == "v")
    assert set(v) == {f"v{i}" for i in range(60)} and sorted(collections.Counter(v.values()).items()) == [(1, 30), (2, 30)]
    # 10 draws from 20 text rows: 10 distinct rows.
    assert len({i for i in ids if i[0] == "t"}) == 10

    assert epoch_ids(build_dataloader(loader_cfg(mixture), tok, 4)) == ids, "same seed must give the same order"
    other = epoch_ids(build_dataloader(loader_cfg(mixture, shuffle_seed=8), tok, 4))
    assert other != ids and collections.Counter(i[0] for i in other) == counts


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_yields_exactly_the_rest(mixture, tok, num_workers):
    cfg = loader_cfg(mixture, num_workers)
    full = epoch_ids(build_dataloader(cfg, tok, 4))

    loader = build_dataloader(cfg, tok, 4)
    it, seen, n_samples = iter(loader), [], 0
    for _ in range(7):  # 28 of 100 samples, mid-epoch, workers still prefetching
        batch = next(it)
        seen += batch["sample_ids"]
        n_samples += get_num_samples_in_batch(batch)
    state = loader.state_dict()
    # Composer checkpoints dataset.state_dict(its sample counter, from_beginning=True): the same state.
    assert loader.dataset.state_dict(n_samples, True) == state
    assert state["sample_in_epoch"] == 28, state
    del it, loader
    gc.collect()

    resumed = build_dataloader(cfg, tok, 4)
    resumed.load_state_dict(state)
    rest = epoch_ids(resumed)
    assert seen == full[:28] and rest == full[28:]


# Each rank builds its own dataset (never one forked from a parent that iterated it) and writes the
# ids it sees; Streaming initialises gloo itself from these environment variables.
RANK_SCRIPT = r"""
import json, sys
from nanoocr.data.stream import build_dataloader
from nanoocr.data.tokenizer import Tokenizer
cfg, tok_dir, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
loader = build_dataloader(cfg, Tokenizer.from_file(tok_dir), 4)
ids = [i for batch in loader for i in batch["sample_ids"]]
json.dump(ids, open(out, "w"))
"""


def test_two_ranks_disjoint_and_complete(tmp_path, tok):
    local = write_mds(tmp_path / "mds", [vision_record(i) for i in range(16)] + [text_record(i) for i in range(32)])
    tok.save(tmp_path / "tok")
    cfg = {"dataset": {"streams": {"all": {"local": local}}, "mode": "tiny", "max_seq_len": 256, "shuffle_seed": 3},
           "num_workers": 0}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, json.dumps(cfg), str(tmp_path / "tok"),
                                       str(tmp_path / f"rank{rank}.json")], env=env, cwd=str(REPO),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        for rank, p in enumerate(procs):
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert len(r0) == len(r1) == 24, (len(r0), len(r1))
    assert not set(r0) & set(r1), f"ranks overlap: {sorted(set(r0) & set(r1))}"
    assert set(r0) | set(r1) == {f"v{i}" for i in range(16)} | {f"t{i}" for i in range(32)}
    # Elastic: one rank with the same global batch (8) sees the same global batches, in the same order.
    single = epoch_ids(build_dataloader(cfg, tok, 8))
    assert [set(single[i:i + 8]) for i in range(0, 48, 8)] == \
        [set(r0[i:i + 4]) | set(r1[i:i + 4]) for i in range(0, 24, 4)]


# ---------------------------------------------------------------------------------------------
# Collate and microbatch splitting


def image_spans(batch, tok) -> list[int]:
    return (batch["ids"] == tok.image_id).sum(1).tolist()


def test_collate_gundam_mixed_batch(tok):
    # Aspect 2:1 -> 2x1 tiles, 1:3 -> 1x3 tiles, small -> global view only (docs/FACTS.md "Gundam crop grids").
    records = [vision_record(0, (1400, 700)), text_record(1), vision_record(2, (700, 2100)), vision_record(3, (300, 200))]
    samples = [process_sample(r, tok, mode="gundam", max_seq_len=1024) for r in records]
    batch = collate(samples, pad_id=tok.pad_id)

    assert batch["sample_ids"] == ["v0", "t1", "v2", "v3"]
    assert batch["images"].shape == (3, 3, 1024, 1024)
    assert batch["tiles"].tolist() == [[2, 1], [1, 3], [1, 1]]
    assert batch["crops"].shape == (5, 3, 640, 640)
    assert torch.equal(batch["crops"][:2], samples[0]["crops"]) and torch.equal(batch["crops"][2:], samples[2]["crops"])
    assert torch.equal(batch["images"][1], samples[2]["image"])
    assert batch["has_image"].tolist() == [True, False, True, True]
    # Image spans: 273 (global) + (10*h)(10*w + 1) (local grid with newlines).
    assert image_spans(batch, tok) == [273 + 10 * 21, 0, 273 + 30 * 11, 273]
    # An image position never has a target, except the last one of a span, whose target is the text
    # after the image; no target is ever an image id.
    is_img = batch["ids"] == tok.image_id
    assert (batch["targets"][:, :-1][is_img[:, :-1] & is_img[:, 1:]] == -1).all()
    assert not (batch["targets"] == tok.image_id).any()

    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["ids"].shape == (4, max(lengths)) and batch["lengths"].tolist() == lengths
    for b, (s, L) in enumerate(zip(samples, lengths)):
        assert torch.equal(batch["ids"][b, :L], s["input_ids"]) and torch.equal(batch["targets"][b, :L], s["targets"])
        assert (batch["ids"][b, L:] == tok.pad_id).all() and (batch["targets"][b, L:] == -1).all()
    assert get_num_tokens_in_batch(batch) == {"total": sum(lengths),
                                              "loss_generating": sum(int((s["targets"] != -1).sum()) for s in samples)}

    # Microbatches keep each image, its crops and tiles with its row.
    for size in (1, 3):
        chunks = split_batch(batch, size)
        assert [c["sample_ids"] for c in chunks] == [batch["sample_ids"][i:i + size] for i in range(0, 4, size)]
        for c in chunks:
            own = [s for s in samples if s["id"] in c["sample_ids"] and s["image"] is not None]
            assert (c["images"] is None) == (not own)
            if own:
                assert torch.equal(c["images"], torch.stack([s["image"] for s in own]))
                assert c["tiles"].tolist() == [list(s["tiles"]) for s in own]
                crops = [s["crops"] for s in own if s["crops"] is not None]
                assert (c["crops"] is None and not crops) or torch.equal(c["crops"], torch.cat(crops))
    assert sum(image_spans(c, tok)[0] for c in split_batch(batch, 1)) == sum(image_spans(batch, tok))


def test_collate_text_only_and_mode_mismatch(tok):
    text = [process_sample(text_record(i, "x" * (5 * i + 1)), tok, max_seq_len=256) for i in range(3)]
    batch = collate(text, pad_id=tok.pad_id)
    assert batch["images"] is None and batch["crops"] is None and batch["tiles"] is None
    assert not batch["has_image"].any() and batch["skipped"] == []
    L = batch["lengths"].tolist()
    assert len(set(L)) == 3 and batch["ids"].shape[1] == max(L)
    assert (batch["targets"][0, L[0]:] == -1).all() and (batch["ids"][0, L[0]:] == tok.pad_id).all()

    tiny = process_sample(vision_record(0), tok, mode="tiny", max_seq_len=512)
    base = process_sample(vision_record(1), tok, mode="small", max_seq_len=512)
    with pytest.raises(AssertionError, match="share a mode"):
        collate([tiny, base], pad_id=tok.pad_id)


# ---------------------------------------------------------------------------------------------
# Rejected samples


@pytest.mark.parametrize("num_workers", [0, 2])
def test_rejected_samples_are_counted_and_reported(tmp_path, tok, caplog, num_workers):
    records = [text_record(i) for i in range(10)]
    records[3] = text_record(3, answer="very long answer " * 40)  # > max_seq_len with overflow="drop"
    corrupt = vision_record(7)
    corrupt["image"] = corrupt["image"][:40]  # a PNG cut inside its header
    records[7] = corrupt
    records.append(vision_record(10))  # a valid image row
    records.append(text_record(11))
    local = write_mds(tmp_path / "mds", records)  # 12 rows
    cfg = {"dataset": {"streams": {"all": {"local": local}}, "mode": "tiny", "max_seq_len": 96, "overflow": "drop",
                       "shuffle": False}, "num_workers": num_workers, "drop_last": False}
    loader = build_dataloader(cfg, tok, 4)
    with caplog.at_level(logging.WARNING, logger="nanoocr.data.stream"):
        batches = list(loader)

    assert sum(get_num_samples_in_batch(b) for b in batches) == 12  # nothing vanished, the loader did not stop
    assert loader.state_dict()["sample_in_epoch"] == 12
    assert loader.num_skipped == 2
    reasons = dict(loader.recent_skips)
    assert set(reasons) == {"t3", "v7"}
    assert "exceeds max_seq_len 96" in reasons["t3"] and "image" in reasons["v7"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "'t3'" in logged and "'v7'" in logged and "exceeds max_seq_len" in logged
    for b in batches:  # placeholders: a row with nothing to learn and no image
        for row, sid in enumerate(b["sample_ids"]):
            if sid in reasons:
                assert b["lengths"][row] == 0 and (b["targets"][row] == -1).all() and not b["has_image"][row]
            else:
                assert b["lengths"][row] > 0
    assert sum(b["images"].shape[0] for b in batches if b["images"] is not None) == 1  # only v10's image
    del loader
    gc.collect()


# ---------------------------------------------------------------------------------------------
# Configuration errors


def test_config_errors_name_the_problem(tmp_path, mixture, tok):
    with pytest.raises(DataError, match="stream 'vision'.*index.json"):
        build_streams({"vision": {"local": str(tmp_path / "nowhere"), "proportion": 1.0}})
    with pytest.raises(DataError, match="unknown keys.*porportion"):
        build_streams({"vision": {"local": mixture["vision"], "porportion": 1.0}})
    with pytest.raises(DataError, match="loss must be one of"):
        build_dataloader(loader_cfg(mixture, loss="everything"), tok, 4)
    with pytest.raises(DataError, match="unknown keys.*num_worker"):
        build_dataloader({**loader_cfg(mixture), "num_worker": 2}, tok, 4)
    with pytest.raises(DataError, match="max_crops"):
        build_dataloader(loader_cfg(mixture, max_crops=100_000), tok, 4)
    gc.collect()


def test_data_that_cannot_train_is_refused_by_name(tmp_path, mixture, tok):
    """Each of these used to hang (empty epochs) or fail deep inside Streaming/numpy."""
    from streaming import MDSWriter
    with MDSWriter(out=str(tmp_path / "empty"), columns={"id": "str"}):
        pass  # an MDS with an index and no samples
    with pytest.raises(DataError, match="stream 'e'.*holds no samples"):
        build_streams({"e": {"local": str(tmp_path / "empty")}})
    with pytest.raises(DataError, match="stream 'vision': proportion must be a number > 0, got 0.0"):
        build_streams({"vision": {"local": mixture["vision"], "proportion": 0.0}})
    n = len(build_dataloader(loader_cfg(mixture), tok, 1).dataset)
    # one sample short of a batch: with drop_last, an epoch of zero batches (Composer loops on it forever)
    with pytest.raises(DataError, match=f"{n} per rank: fewer than one batch of {n + 1}"):
        build_dataloader(loader_cfg(mixture), tok, n + 1)
    assert len(build_dataloader(loader_cfg(mixture), tok, n)) == 1
    gc.collect()


def test_composer_data_spec(mixture, tok):
    """Composer's Trainer reads sample/token counts and microbatches through the DataSpec."""
    loader = build_dataloader(loader_cfg(mixture), tok, 4)
    spec = data_spec(loader)
    batch = next(iter(loader))
    assert spec.get_num_samples_in_batch(batch) == 4
    assert spec.get_num_tokens_in_batch(batch) == int(batch["lengths"].sum())
    assert spec.get_num_tokens_in_batch(batch, token_type="loss_generating") == int((batch["targets"] != -1).sum())
    assert [c["sample_ids"] for c in spec.split_batch(batch, 2)] == [batch["sample_ids"][:2], batch["sample_ids"][2:]]
    del loader
    gc.collect()
