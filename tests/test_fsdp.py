"""Sharding NanoOCR with torch FSDP on CPU (2 ranks, gloo): wrap units, a training step with activation
checkpointing, and generation through the sharded model (nanoocr.model.distributed.full_params).

Composer's FSDP path hard-codes CUDA (docs/FACTS.md "Stack facts"), so this wraps the model with torch's
FullyShardedDataParallel exactly as Composer does (its `fsdp_wrap_fn` as the auto-wrap policy,
use_orig_params, FULL_SHARD) and launches itself with torchrun: `python -m torch.distributed.run
--nproc_per_node 2 tests/test_fsdp.py`. The pytest test below does that and checks the exit status.
"""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**kw):
    from nanoocr.model.clip import CLIPConfig
    from nanoocr.model.gpt import GPTConfig
    from nanoocr.model.sam import SAMConfig
    from nanoocr.model.vlm import VLMConfig
    return VLMConfig(
        sam=SAMConfig(embed_dim=32, depth=2, num_heads=1, global_attn_indexes=(1,), neck_dim=32, net2_dim=32,
                      out_chans=32),
        clip=CLIPConfig(dim=32, layers=2, heads=1, mlp_dim=64),
        gpt=GPTConfig(sequence_len=64, vocab_size=64, n_layer=3, n_head=2, n_kv_head=2, n_embd=32),
        image_token_id=63, **kw)


def worker():
    import copy

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import CustomPolicy

    from nanoocr.model.distributed import full_params, is_sharded, unwrap
    from nanoocr.model.engine import Engine
    from nanoocr.model.vlm import WRAP_UNITS, NanoOCR, image_token_count

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, world
    torch.manual_seed(0)
    model = NanoOCR(tiny_config(activation_checkpointing=True))
    with torch.no_grad():
        model.gpt.lm_head.weight.normal_()  # zero-init lm_head: uniform logits, ties in generation
        for block in model.gpt.transformer.h:  # non-zero c_proj: every block matters for the tokens
            block.attn.c_proj.weight.normal_(std=0.1)
    ref = copy.deepcopy(model)  # the unsharded twin
    total = sum(p.numel() for p in model.parameters())
    keys = list(model.state_dict())
    blocks = {id(b._checkpoint_wrapped_module) for b in ref_units(model)}  # each checkpoint-wrapped by the model

    fsdp = FSDP(model, auto_wrap_policy=CustomPolicy(model.fsdp_wrap_fn), sharding_strategy=ShardingStrategy.FULL_SHARD,
                use_orig_params=True, device_id=torch.device("cpu"))
    assert is_sharded(fsdp) and unwrap(fsdp) is model

    # 1. one FSDP unit per SAM block, CLIP layer and GPT block (each checkpoint-wrapped inside), rest at the root
    units = [m for m in fsdp.modules() if isinstance(m, FSDP) and m is not fsdp]
    assert all(type(m._fsdp_wrapped_module).__name__ == "CheckpointWrapper" for m in units)  # FSDP(ckpt(block))
    inner = [m.module for m in units]  # FSDP's .module: the block inside the checkpoint wrapper
    cfg = model.config
    assert len(units) == cfg.sam.depth + cfg.clip.layers + cfg.gpt.n_layer, len(units)
    assert all(isinstance(m, WRAP_UNITS) for m in inner)
    assert {id(m) for m in inner} == blocks
    assert not any(isinstance(m, FSDP) for u in units for m in u.module.modules())  # no nesting
    # ... and each rank holds about half of every parameter
    local = sum(p.numel() for p in fsdp.parameters())
    assert abs(local - total / 2) < 0.01 * total, (local, total)

    # 2. a training step with activation checkpointing: same batch on both ranks = the unsharded step
    torch.manual_seed(1)
    size = 128
    n_img = image_token_count(cfg, size)
    images = torch.randn(1, 3, size, size)
    ids = torch.randint(0, 60, (1, n_img + 12))
    ids[0, 2:2 + n_img] = cfg.image_token_id
    targets = ids.clone()
    targets[0, :2 + n_img] = -1
    opt = torch.optim.SGD(fsdp.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    fsdp.train(), ref.train()
    loss = fsdp(ids, targets, images=images)
    loss.backward()
    opt.step()
    ref_loss = ref(ids, targets, images=images)
    ref_loss.backward()
    ref_opt.step()
    assert torch.allclose(loss, ref_loss, atol=1e-6), (loss, ref_loss)
    assert ref.sam.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # the encoder learned too

    # 3. generation through the sharded model (full_params) = the unsharded model, token for token
    fsdp.eval(), ref.eval()
    prompt = [1, 2] + [cfg.image_token_id] * n_img + [5, 6, 7]
    kw = dict(images=images, max_new_tokens=12, no_repeat_ngram=0)
    with full_params(fsdp):
        with full_params(fsdp):  # re-entrant
            pass
        nano = unwrap(fsdp)
        assert nano.sam.blocks[0].attn.qkv.weight.shape == ref.sam.blocks[0].attn.qkv.weight.shape
        named, ref_named = dict(nano.named_parameters()), dict(ref.named_parameters())
        assert named.keys() == ref_named.keys() and list(ref_named) == [k for k in keys if k in ref_named]
        for n, p in named.items():
            assert torch.allclose(p, ref_named[n], atol=1e-6), n  # the step updated the shards as the twin
        got = Engine(nano).generate([prompt], **kw)
        got_nocache = Engine(nano).generate([prompt], use_cache=False, **kw)
        assert list(nano.state_dict()) == keys  # export reads this inside full_params
    want = Engine(ref).generate([prompt], **kw)
    assert got == want == got_nocache and len(want[0]) == 12, (got, want, got_nocache)
    assert not any("forward" in m.__dict__ for m in units), "full_params left FSDP's forward patched"

    # 4. after full_params the sharded model trains again, and its full state dict has the plain keys
    fsdp.train()
    fsdp(ids, targets, images=images).backward()
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    with FSDP.state_dict_type(fsdp, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=False)):
        sd = fsdp.state_dict()
    assert list(sd) == keys, [k for k in sd if k not in keys][:5]

    # 5. meta-device build, materialized by FSDP per module through the model's param_init_fn (as Composer's
    # prepare_fsdp_module does, on CPU here): whole parameters = a normal build's kind of init
    with torch.device("meta"):
        meta = NanoOCR(tiny_config(activation_checkpointing=True))

    def init(module):  # Composer's _param_init_fn, with the device it hard-codes as cuda
        if any(t.is_meta for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]):
            module.to_empty(device="cpu", recurse=False)
            meta.param_init_fn(module)

    sharded = FSDP(meta, auto_wrap_policy=CustomPolicy(meta.fsdp_wrap_fn), use_orig_params=True,
                   device_id=torch.device("cpu"), param_init_fn=init)
    with full_params(sharded):
        nano = unwrap(sharded)
        assert not any(t.is_meta for t in [*nano.parameters(), *nano.buffers()])
        assert torch.equal(nano.gpt.cos, ref.gpt.cos) and torch.equal(nano.gpt.sin, ref.gpt.sin)
        assert not nano.gpt.lm_head.weight.any() and not any(b.mlp.c_proj.weight.any() for b in nano.gpt.transformer.h)
        assert nano.gpt.transformer.h[0].attn.c_q.weight.std() > 0.05
        out = Engine(nano).generate([prompt], **kw)  # runs (zero lm_head: argmax 0 every step)
        assert out == [[0] * 12], out
    dist.barrier()
    if rank == 0:
        print("FSDP OK", flush=True)
    dist.destroy_process_group()


def test_meta_build_then_materialize_matches_a_normal_build():
    from nanoocr.model.vlm import NanoOCR
    cfg = tiny_config(activation_checkpointing=True)
    torch.manual_seed(0)
    normal = NanoOCR(cfg)
    with torch.device("meta"):
        meta = NanoOCR(cfg)
    assert all(p.is_meta for p in meta.parameters())
    meta.materialize("cpu")
    a, b = normal.state_dict(), meta.state_dict()
    assert list(a) == list(b) and not any("_checkpoint_wrapped_module" in k for k in a)
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and not b[k].is_meta, k
        if a[k].numel() == 1 or a[k].std() == 0:  # constant inits (zeros, ones): identical
            assert torch.equal(a[k], b[k]), k
        elif a[k].numel() >= 500:
            assert abs(b[k].std() / a[k].std() - 1) < 0.15, (k, a[k].std(), b[k].std())
            assert abs(b[k].mean() - a[k].mean()) < 0.15 * a[k].std() + 1e-3, k
    # GPT's zero-init projections and lm_head are zeros; the rotary tables (non-persistent) are real
    assert not meta.gpt.lm_head.weight.any()
    assert all(not blk.attn.c_proj.weight.any() and not blk.mlp.c_proj.weight.any() for blk in meta.gpt.transformer.h)
    assert torch.equal(meta.gpt.cos, normal.gpt.cos) and torch.equal(meta.gpt.sin, normal.gpt.sin)


def test_wrap_and_checkpoint_units_without_fsdp():
    from nanoocr.model.vlm import WRAP_UNITS, NanoOCR
    m = NanoOCR(tiny_config())
    units = [x for x in m.modules() if m.fsdp_wrap_fn(x)]
    assert len(units) == 2 + 2 + 3 and all(isinstance(u, WRAP_UNITS) for u in units)
    assert not m.fsdp_wrap_fn(m.gpt) and not m.fsdp_wrap_fn(m.projector) and not m.fsdp_wrap_fn(m.sam)
    names = [n for n, _ in m.named_parameters()]
    m.set_activation_checkpointing(True)
    m.set_activation_checkpointing(True)  # idempotent: never wrapped twice
    wrappers = [x for x in m.modules() if type(x).__name__ == "CheckpointWrapper"]
    assert len(wrappers) == len(units) and m.activation_checkpointing
    assert not any(m.activation_checkpointing_fn(x) for x in m.modules())  # all done: Composer adds none
    assert [n for n, _ in m.named_parameters()] == names and list(m.state_dict()) == names
    assert all(m.fsdp_wrap_fn(w) for w in wrappers) and not any(m.fsdp_wrap_fn(u) for u in units)
    m.set_activation_checkpointing(False)
    assert not m.activation_checkpointing and [x for x in m.modules() if m.fsdp_wrap_fn(x)] == units


def ref_units(model):
    return [*model.sam.blocks, *model.clip.transformer.layers, *model.gpt.transformer.h]


def test_fsdp_two_ranks_on_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve())]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "FSDP OK" in r.stdout, r.stdout[-4000:] + r.stderr[-8000:]


if __name__ == "__main__":
    worker()
