"""Export → load for every tokenizer kind and both Composer checkpoint layouts (monolithic, sharded).

The sharded checkpoint is written the way Composer writes one under FSDP `state_dict_type: sharded`:
two gloo ranks, each block its own FSDP unit, the sharded model state dict under
`state.model`, optimizer state and non-tensor objects beside it, `torch.distributed.checkpoint.save`
into a folder of `__<rank>_0.distcp` files, `latest-rank0.pt` a symlink to that folder."""
import datetime
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from nanoocr.model import presets
from nanoocr.model.checkpoint import load_composer_state
from nanoocr.train.export import export_model, load_model
from nanoocr.model.vlm import NanoOCR

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(sam={"depth": 2}, gpt={"n_layer": 2, "n_embd": 64, "n_head": 2, "n_kv_head": 2, "sequence_len": 512})


def tiny_model(vocab_size, image_id, seed=0, gpt=None):
    torch.manual_seed(seed)
    cfg = presets.build_config("nano", sam=TINY["sam"], gpt={**TINY["gpt"], "vocab_size": vocab_size, **(gpt or {})},
                               image_token_id=image_id)
    model = NanoOCR(cfg)
    with torch.no_grad():  # lm_head and c_proj start at zero: make the logits depend on every weight
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def nanochat_tokenizer(directory):
    """A nanochat tokenizer.pkl (a pickled tiktoken Encoding, as nanochat saves it), loaded by nanoocr."""
    tiktoken = pytest.importorskip("tiktoken")  # a third-party optional extra, not the project's code
    from nanoocr.data.tokenizer import SPECIAL_TOKENS, load_nanochat_tokenizer
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"he"], ranks[b"ll"] = 256, 257
    enc = tiktoken.Encoding(name="rustbpe", pat_str=r"""\s+|\S+""", mergeable_ranks=ranks,
                            special_tokens={s: 258 + i for i, s in enumerate(SPECIAL_TOKENS[:-1])})
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.pkl"), "wb") as f:
        pickle.dump(enc, f)
    return load_nanochat_tokenizer(directory)


def logits(model, tokenizer):
    ids = torch.tensor([tokenizer.encode("hello world") + [tokenizer.image_id] * 0])
    with torch.no_grad():
        return model.eval()(ids)


def test_nanochat_tokenizer_export_loads_and_samples(tmp_path):
    """Regression: an export of a `tokenizer.kind: nanochat` run was unloadable (it looked for tokenizer.pkl)."""
    tok = nanochat_tokenizer(tmp_path / "nanochat")
    model = tiny_model(tok.vocab_size, tok.image_id)
    out = export_model(model, tok, tmp_path / "export", mode="tiny")
    assert not (out / "tokenizer.pkl").exists(), "an export must not carry a pickle"
    loaded, tok2, meta = load_model(out)
    assert type(tok2).__name__ == "TiktokenTokenizer"
    text = "hello <|image|> world"
    assert tok2.encode(text) == tok.encode(text) and tok2.image_id == tok.image_id
    torch.testing.assert_close(logits(loaded, tok2), logits(model, tok), rtol=0, atol=0)
    from PIL import Image
    Image.new("RGB", (200, 100), "white").save(tmp_path / "page.png")
    r = subprocess.run([sys.executable, "-m", "nanoocr.sample", "--model", str(out), "--image",
                        str(tmp_path / "page.png"), "--max-new-tokens", "4"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("layout", [{}, {"layout": "2026", "window_pattern": "SL", "pad_vocab_size_to": 64}],
                         ids=["d20", "nanochat-2026"])
def test_bpe_tokenizer_export_round_trip(tmp_path, layout):
    from nanoocr.data.tokenizer import Tokenizer
    tok = Tokenizer.train_from_iterator(["Free OCR. hello world"] * 4, vocab_size=300)
    model = tiny_model(tok.vocab_size, tok.image_id, gpt=layout)
    loaded, tok2, _ = load_model(export_model(model, tok, tmp_path / "export"))
    torch.testing.assert_close(logits(loaded, tok2), logits(model, tok), rtol=0, atol=0)


class Wrapper(nn.Module):
    """What Composer checkpoints: ComposerNanoOCR keeps the network under `model.`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, targets):
        return self.model(ids, targets)


def _write_sharded(rank, world, port, directory, vocab_size, image_id):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy, StateDictType
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from nanoocr.model import clip, gpt, sam
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        wrapped = FSDP(Wrapper(tiny_model(vocab_size, image_id)), device_id=torch.device("cpu"),
                       sharding_strategy=ShardingStrategy.FULL_SHARD, use_orig_params=True,
                       auto_wrap_policy=ModuleWrapPolicy({sam.Block, clip.CLIPLayer, gpt.Block}))
        opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
        opt.zero_grad()
        wrapped(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]])).backward()
        opt.step()
        # FSDP's sharded state dict (torch's get_model_state_dict trips on a rank that holds no piece of a
        # small tensor, which a tiny model always has; the saved layout is the same).
        with FSDP.state_dict_type(wrapped, StateDictType.SHARDED_STATE_DICT):
            model_state, optim_state = wrapped.state_dict(), FSDP.optim_state_dict(wrapped, opt)
        state = {"state": {"model": model_state, "optimizers": {"AdamW": optim_state},
                           "timestamp": {"total_wct": datetime.timedelta(seconds=3)}, "rank_zero_seed": 17}}
        if rank == 0:
            state["rng"] = [{"python": (3, (1, 2), None)}]
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(directory)))
        with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT):
            full = wrapped.state_dict()  # the reference: gathered by FSDP itself
        if rank == 0:
            torch.save({k[len("model."):]: v for k, v in full.items()}, directory.parent / "full.pt")
        # every rank holds only its shard of a block
        local = sum(p.numel() for p in wrapped.parameters())
        total = sum(p.numel() for p in tiny_model(vocab_size, image_id).parameters())
        assert local < 0.75 * total, (local, total)
    finally:
        dist.destroy_process_group()


def test_sharded_checkpoint_exports(tmp_path):
    import socket

    import torch.multiprocessing as mp
    from nanoocr.data.tokenizer import Tokenizer
    tok = Tokenizer.train_from_iterator(["Free OCR. hello world"] * 4, vocab_size=300)
    ckpts = tmp_path / "run" / "checkpoints"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_write_sharded, args=(2, port, ckpts / "ep0-ba1", tok.vocab_size, tok.image_id), nprocs=2)
    assert sorted(p.name for p in (ckpts / "ep0-ba1").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    os.symlink("ep0-ba1", ckpts / "latest-rank0.pt")  # what Composer's CheckpointSaver links for sharded runs

    state = load_composer_state(ckpts / "latest-rank0.pt")
    full = torch.load(ckpts / "full.pt", weights_only=True)
    assert set(state) == set(full), "keys must be NanoOCR's own (no wrapper prefixes)"
    for k, v in full.items():  # every shard of every tensor, after the training step
        assert torch.equal(state[k], v), k
    fresh = tiny_model(tok.vocab_size, tok.image_id).state_dict()
    assert not torch.equal(state["gpt.lm_head.weight"], fresh["gpt.lm_head.weight"]), "the step must show"
    model = tiny_model(tok.vocab_size, tok.image_id)
    model.load_state_dict(state, strict=True)

    # the CLI, as a user runs it on the run folder (config.yaml found above the checkpoint)
    import yaml
    tok.save(tmp_path / "tok")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({
        "model": {"preset": "nano", "sam": TINY["sam"], "gpt": TINY["gpt"]}, "tokenizer": {"path": str(tmp_path / "tok")},
        "train_loader": {"dataset": {"mode": "tiny"}}}))
    r = subprocess.run([sys.executable, "-m", "nanoocr.export", "--checkpoint", str(ckpts / "latest-rank0.pt"),
                        "--out", str(tmp_path / "export")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    loaded, tok2, meta = load_model(tmp_path / "export")
    assert meta["mode"] == "tiny"
    torch.testing.assert_close(logits(loaded, tok2), logits(model, tok), rtol=0, atol=0)


def test_sharded_metadata_pickle_payload_is_refused(tmp_path):
    """A planted `.metadata` must not run code: the unpickler admits only checkpoint-metadata classes."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "ep0-ba1"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        load_composer_state(folder)
    assert not marker.exists()


def _export(tmp_path):
    from nanoocr.data.tokenizer import Tokenizer
    tok = Tokenizer.train_from_iterator(["Free OCR. hello world"] * 4, vocab_size=300)
    return export_model(tiny_model(tok.vocab_size, tok.image_id), tok, tmp_path / "export")


@pytest.mark.parametrize("key, value, message", [
    (("gpt", "n_layer"), 100000, "gpt.n_layer = 100000 but model.safetensors holds 2"),
    (("sam", "depth"), 7, "sam.depth = 7 but model.safetensors holds 2"),
    (("gpt", "n_embd"), 128, "does not match config.json"),
    (("gpt", "sequence_len"), 10 ** 9, "sequence_len = 1000000000 is outside"),
])
def test_untrusted_export_config_is_checked_before_allocating(tmp_path, key, value, message):
    import json
    import time
    out = _export(tmp_path)
    meta = json.loads((out / "config.json").read_text())
    meta["model"][key[0]][key[1]] = value
    (out / "config.json").write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        load_model(out)
    assert time.perf_counter() - t0 < 10, "refused only after building the model"


def test_export_refuses_symlinks_and_existing_exports(tmp_path):
    out = _export(tmp_path)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_model(*load_model(out)[:2], out, overwrite=False)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(ValueError, match="symlink"):
        export_model(*load_model(out)[:2], tmp_path / "link")
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"keep")
    (tmp_path / "e2").mkdir()
    os.symlink(victim, tmp_path / "e2" / "model.safetensors")
    with pytest.raises(ValueError, match="symlink"):
        export_model(*load_model(out)[:2], tmp_path / "e2")
    assert victim.read_bytes() == b"keep"


@pytest.mark.parametrize("args, message", [
    (["--page", "0"], "--page must be >= 1"),
    (["--mode", "huge"], "--mode must be one of"),
    (["--prompt", "Free OCR."], "--prompt must contain <image> exactly once"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be in"),
    (["--image-size", "thin"], "aspect ratio 1x20000 is more extreme than 200:1"),
])
def test_sample_refuses_bad_arguments_by_name(tmp_path, args, message):
    from PIL import Image
    out = _export(tmp_path)
    Image.new("RGB", (64, 64), "white").save(tmp_path / "ok.png")
    Image.new("RGB", (1, 20000), "white").save(tmp_path / "thin.png")
    image = tmp_path / ("thin.png" if args == ["--image-size", "thin"] else "ok.png")
    args = [] if args[0] == "--image-size" else args
    r = subprocess.run([sys.executable, "-m", "nanoocr.sample", "--model", str(out), "--image", str(image), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
