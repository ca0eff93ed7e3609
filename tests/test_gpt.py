"""GPT vs an independent, straightforward re-implementation of nanochat's GPT math (same weights)."""
import math

import pytest
import torch

from nanoocr.model.gpt import GPT, GPTConfig, KVCache

CFG = dict(sequence_len=64, vocab_size=97, n_layer=2, n_head=4, n_kv_head=4, n_embd=64)


def make_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**CFG, **kw}))
    model.init_weights()
    with torch.no_grad():  # nanochat zero-inits these; a test with zeros could not see most bugs
        model.lm_head.weight.normal_(0, 2.0 / math.sqrt(model.config.n_embd))
        for block in model.transformer.h:
            block.attn.c_proj.weight.normal_(0, 0.1)
            block.mlp.c_proj.weight.normal_(0, 0.05)
    return model.eval()


# ---- the reference: nanochat's math written out from its description, not from nanoocr.model.gpt ----

def ref_rmsnorm(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def ref_rotary(x, pos):
    # x (B, H, T, D); nanochat rotates the first half against the second half (not interleaved pairs)
    D = x.size(-1)
    inv_freq = torch.tensor([10000.0 ** (-2 * i / D) for i in range(D // 2)], dtype=torch.float64)
    ang = (pos.double()[:, None] * inv_freq[None, :]).float()  # (T, D/2)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], -1)


def ref_forward(sd, cfg, ids, targets=None):
    B, T = ids.shape
    H, C = cfg["n_head"], cfg["n_embd"]
    D = C // H
    x = ref_rmsnorm(sd["transformer.wte.weight"][ids])  # norm right after the embedding
    pos = torch.arange(T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        h = ref_rmsnorm(x)
        q = (h @ sd[p + "attn.c_q.weight"].T).view(B, T, H, D).transpose(1, 2)
        k = (h @ sd[p + "attn.c_k.weight"].T).view(B, T, H, D).transpose(1, 2)
        v = (h @ sd[p + "attn.c_v.weight"].T).view(B, T, H, D).transpose(1, 2)
        q, k = ref_rmsnorm(ref_rotary(q, pos)), ref_rmsnorm(ref_rotary(k, pos))  # QK norm AFTER rotary
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ sd[p + "attn.c_proj.weight"].T
        h = ref_rmsnorm(x)
        x = x + (torch.relu(h @ sd[p + "mlp.c_fc.weight"].T) ** 2) @ sd[p + "mlp.c_proj.weight"].T
    logits = ref_rmsnorm(x) @ sd["lm_head.weight"].T
    logits = 15 * torch.tanh(logits / 15)
    if targets is None:
        return logits
    logp = logits.log_softmax(-1).view(-1, logits.size(-1))
    t = targets.view(-1)
    keep = t != -1
    return -logp[keep].gather(1, t[keep][:, None]).mean()


def test_matches_reference_math():
    model = make_gpt()
    sd = model.state_dict()
    torch.manual_seed(1)
    ids = torch.randint(0, CFG["vocab_size"], (2, 23))
    targets = torch.randint(0, CFG["vocab_size"], (2, 23))
    targets[0, :5] = -1
    targets[1, -3:] = -1
    with torch.no_grad():
        logits, ref_logits = model(ids), ref_forward(sd, CFG, ids)
        loss, ref_loss = model(ids, targets), ref_forward(sd, CFG, ids, targets)
    assert logits.dtype == torch.float32 and logits.shape == (2, 23, CFG["vocab_size"])
    assert (logits - ref_logits).abs().max() <= 1e-5
    assert abs(loss.item() - ref_loss.item()) <= 1e-5
    assert logits.std() > 0.5  # not a degenerate model: the comparison means something


def test_forward_is_trunk_of_embed():
    model = make_gpt()
    ids = torch.randint(0, CFG["vocab_size"], (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), model.trunk(model.embed(ids)))


def test_kv_cache_matches_full_forward():
    model = make_gpt()
    ids = torch.randint(0, CFG["vocab_size"], (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(CFG["n_layer"], 2, CFG["n_head"], CFG["n_embd"] // CFG["n_head"], 16)
        parts = [model(ids[:, :7], kv_cache=cache), model(ids[:, 7:10], kv_cache=cache)]  # prefill, then a chunk
        parts += [model(ids[:, t:t + 1], kv_cache=cache) for t in range(10, 12)]  # single tokens
    assert cache.pos == 12
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5


def test_left_padding_with_positions_and_mask_matches_unpadded():
    model = make_gpt()
    a = torch.randint(0, CFG["vocab_size"], (1, 11))
    b = torch.randint(0, CFG["vocab_size"], (1, 6))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])  # row 1 left-padded by 5
    valid = ids.new_ones(ids.shape, dtype=torch.bool)
    valid[1, :5] = False
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(ids, positions=positions, attn_mask=valid)
        assert torch.isfinite(out).all()
        assert (out[0] - model(a)[0]).abs().max() <= 1e-5
        assert (out[1, 5:] - model(b)[0]).abs().max() <= 1e-5


def test_init_weights_follows_nanochat():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**CFG, "n_embd": 128, "vocab_size": 512}))
    model.init_weights()
    assert not model.lm_head.weight.any()
    for block in model.transformer.h:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
    assert abs(model.transformer.wte.weight.std().item() - 1.0) < 0.02
    # c_fc: fan_in 128, fan_out 512 -> 1/sqrt(128) * min(1, 2) ; c_q: 1/sqrt(128)
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 1 / math.sqrt(128)) < 0.003
    assert abs(model.transformer.h[0].attn.c_q.weight.std().item() - 1 / math.sqrt(128)) < 0.003
    assert model.cos.dtype == torch.float32 and model.cos.shape == (1, 640, 1, 16)


def test_activation_checkpointing_same_gradients():
    model = make_gpt().train()
    ids = torch.randint(0, CFG["vocab_size"], (2, 10))
    model(ids, ids).backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # the VLM wraps each Block from outside (the GPT has no checkpointing branch of its own)
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
    for i, block in enumerate(model.transformer.h):
        model.transformer.h[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    model(ids, ids).backward()
    for r, p in zip(ref, model.parameters()):
        assert torch.allclose(r, p.grad, atol=1e-6)


def test_config_rejects_gqa_and_bad_impl():
    with pytest.raises(AssertionError, match="n_kv_head"):
        GPTConfig(**{**CFG, "n_kv_head": 2})
    with pytest.raises(AssertionError, match="attn_impl"):
        GPTConfig(**{**CFG, "attn_impl": "flash"})
