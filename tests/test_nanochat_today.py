"""nanochat as of commit 92d63d4 (2026-07): its checkpoints load through nanoocr.model.nanochat and compute what
nanochat computes. The reference forward below is written out from nanochat's gpt.py in plain torch (no
nanoocr.model.gpt), and the checkpoint is random weights in nanochat's key layout, saved the way its
checkpoint_manager saves them (`model_<step:06d>.pt` = the uncompiled model's state_dict,
`meta_<step:06d>.json` = json with `model_config` = asdict(GPTConfig))."""
import json
import math

import pytest
import torch

from nanoocr.model.gpt import KVCache
from nanoocr.model.nanochat import extend_vocab, load_nanochat, load_nanochat_into, load_nanochat_with_report

# sequence_len 256 -> short window ceil(256/4/128)*128 = 128 keys back, long window 256: sequences of 300
# tokens exercise both. vocab 61 -> 64 padded rows. n_layer 4: value embeddings on layers 1 and 3.
MODEL_CONFIG = dict(sequence_len=256, vocab_size=61, n_layer=4, n_head=2, n_kv_head=2, n_embd=32,
                    window_pattern="SSSL")
T_LONG = 300


def ref_has_ve(i, n_layer):
    return i % 2 == (n_layer - 1) % 2


def random_state_dict(cfg=MODEL_CONFIG, seed=0, embed_dtype=torch.float32):
    """Random 'trained' weights with nanochat's parameter names and shapes (nothing at its zero init)."""
    g = torch.Generator().manual_seed(seed)
    C, L = cfg["n_embd"], cfg["n_layer"]
    V = -(-cfg["vocab_size"] // 64) * 64  # nanochat pads the vocabulary rows to a multiple of 64
    kv = cfg["n_kv_head"] * C // cfg["n_head"]

    def rnd(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    sd = {"transformer.wte.weight": rnd(V, C, std=0.8).to(embed_dtype),
          "lm_head.weight": rnd(V, C, std=2.0 / math.sqrt(C))}
    for i in range(L):
        p = f"transformer.h.{i}."
        for name in ("c_q", "c_k", "c_v"):
            sd[p + f"attn.{name}.weight"] = rnd(C, C, std=1 / math.sqrt(C))
        sd[p + "attn.c_proj.weight"] = rnd(C, C, std=0.1)
        sd[p + "mlp.c_fc.weight"] = rnd(4 * C, C, std=0.5 / math.sqrt(C))
        sd[p + "mlp.c_proj.weight"] = rnd(C, 4 * C, std=0.05)
        if ref_has_ve(i, L):
            sd[p + "attn.ve_gate.weight"] = rnd(cfg["n_kv_head"], 12, std=0.5)
            sd[f"value_embeds.{i}.weight"] = rnd(V, kv, std=0.5).to(embed_dtype)
    sd["resid_lambdas"] = rnd(L, std=0.05, mean=1.1)
    sd["x0_lambdas"] = rnd(L, std=0.05, mean=0.15)
    sd["smear_gate.weight"] = rnd(1, 24, std=0.5)
    sd["smear_lambda"] = rnd(1, std=0.1, mean=0.3)
    sd["backout_lambda"] = rnd(1, std=0.05, mean=0.2)
    return sd


def write_checkpoint(directory, sd, step=1000, model_config=MODEL_CONFIG):
    torch.save(sd, directory / f"model_{step:06d}.pt")
    meta = {"step": step, "val_bpb": 1.0, "model_config": model_config, "user_config": {"depth": 4},
            "device_batch_size": 2, "max_seq_len": model_config["sequence_len"]}
    with open(directory / f"meta_{step:06d}.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)


# ---- the reference: nanochat 92d63d4's forward, plain torch, fp32 -----------------------------------

def ref_rmsnorm(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def ref_rotary(x, pos, base=100000.0):
    # x (B, H, T, D): first half rotated against the second half
    D = x.size(-1)
    inv_freq = torch.tensor([base ** (-2 * i / D) for i in range(D // 2)], dtype=torch.float64)
    ang = (pos.double()[:, None] * inv_freq[None, :]).float()  # (T, D/2)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], -1)


def ref_windows(cfg):
    long_w = cfg["sequence_len"]
    short_w = math.ceil(long_w / 4 / 128) * 128
    pat = cfg["window_pattern"].upper()
    w = [long_w if pat[i % len(pat)] == "L" else short_w for i in range(cfg["n_layer"])]
    w[-1] = long_w
    return w


def ref_forward(sd, cfg, ids, softcap=15.0, windows=True):
    sd = {k: v.float() for k, v in sd.items()}
    B, T = ids.shape
    H, C, L = cfg["n_head"], cfg["n_embd"], cfg["n_layer"]
    D = C // H
    x = ref_rmsnorm(sd["transformer.wte.weight"][ids])
    gate = sd["smear_lambda"] * torch.sigmoid(x[:, 1:, :24] @ sd["smear_gate.weight"].T)  # (B, T-1, 1)
    x = torch.cat([x[:, :1], x[:, 1:] + gate * x[:, :-1]], 1)
    x0 = x
    pos = torch.arange(T)
    dist = pos[:, None] - pos[None, :]  # query - key
    x_backout = None
    for i, w in enumerate(ref_windows(cfg)):
        x = sd["resid_lambdas"][i] * x + sd["x0_lambdas"][i] * x0
        p = f"transformer.h.{i}."
        h = ref_rmsnorm(x)
        q = (h @ sd[p + "attn.c_q.weight"].T).view(B, T, H, D)
        k = (h @ sd[p + "attn.c_k.weight"].T).view(B, T, H, D)
        v = (h @ sd[p + "attn.c_v.weight"].T).view(B, T, H, D)
        if ref_has_ve(i, L):
            ve = sd[f"value_embeds.{i}.weight"][ids].view(B, T, H, D)
            g = 3 * torch.sigmoid(h[..., :12] @ sd[p + "attn.ve_gate.weight"].T)  # (B, T, H)
            v = v + g[..., None] * ve
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q = ref_rmsnorm(ref_rotary(q, pos)) * 1.2
        k = ref_rmsnorm(ref_rotary(k, pos)) * 1.2
        allowed = (dist >= 0) & ((dist <= w) if windows else True)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ sd[p + "attn.c_proj.weight"].T
        h = ref_rmsnorm(x)
        x = x + (torch.relu(h @ sd[p + "mlp.c_fc.weight"].T) ** 2) @ sd[p + "mlp.c_proj.weight"].T
        if i == L // 2:
            x_backout = x
    x = x - sd["backout_lambda"] * x_backout
    logits = (ref_rmsnorm(x) @ sd["lm_head.weight"].T)[..., :cfg["vocab_size"]]
    return softcap * torch.tanh(logits / softcap)


def ids_for(cfg=MODEL_CONFIG, B=2, T=T_LONG, seed=1):
    return torch.randint(0, cfg["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


# ---- tests ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("embed_dtype", [torch.float32, torch.bfloat16])  # nanochat on CPU / on CUDA
def test_today_checkpoint_loads_and_matches_reference(tmp_path, embed_dtype):
    sd = random_state_dict(embed_dtype=embed_dtype)
    write_checkpoint(tmp_path, sd)
    model, meta, report = load_nanochat_with_report(tmp_path)
    cfg = model.config
    assert report.step == 1000 and report.generation == "2026" and meta["model_config"] == MODEL_CONFIG
    # derived from the generation, not in the meta
    assert (cfg.layout, cfg.rotary_base, cfg.qk_scale, cfg.softcap, cfg.pad_vocab_size_to) == \
        ("2026", 100000.0, 1.2, 15.0, 64)
    assert model.window_sizes == [128, 128, 128, 256]
    assert model.transformer.wte.weight.shape == (64, 32) and sorted(model.value_embeds) == ["1", "3"]
    ids = ids_for()
    targets = ids_for(seed=2)
    targets[0, :7] = -1
    with torch.no_grad():
        logits, ref = model.eval()(ids), ref_forward(sd, MODEL_CONFIG, ids)
        loss = model(ids, targets)
    assert logits.dtype == torch.float32 and logits.shape == (2, T_LONG, 61)  # cropped to vocab_size
    assert (logits - ref).abs().max() <= 1e-5
    ref_loss = torch.nn.functional.cross_entropy(ref.reshape(-1, 61), targets.reshape(-1), ignore_index=-1)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5
    assert logits.std() > 0.5  # not a degenerate model
    # the comparison can see the windows: without them the reference is far off
    assert (ref_forward(sd, MODEL_CONFIG, ids, windows=False) - ref).abs().max() > 1e-2


@pytest.mark.parametrize("pattern,windows", [("SSL", [128, 128, 256, 256]), ("s", [128, 128, 128, 256])])
def test_last_layer_always_long(tmp_path, pattern, windows):
    cfg = {**MODEL_CONFIG, "window_pattern": pattern}
    sd = random_state_dict(cfg)
    write_checkpoint(tmp_path, sd, model_config=cfg)
    model = load_nanochat(tmp_path).eval()
    assert model.window_sizes == windows
    ids = ids_for(B=1)
    with torch.no_grad():
        assert (model(ids) - ref_forward(sd, cfg, ids)).abs().max() <= 1e-5


def test_unrecorded_fields_can_be_overridden(tmp_path):
    sd = random_state_dict()
    write_checkpoint(tmp_path, sd)
    model = load_nanochat(tmp_path, softcap=20.0)  # the 2026-03 week of softcap 20
    ids = ids_for(T=40)
    with torch.no_grad():
        assert (model(ids) - ref_forward(sd, MODEL_CONFIG, ids, softcap=20.0)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="rope_base"):
        load_nanochat(tmp_path, rope_base=1e4)


def test_unknown_key_missing_and_unexpected_tensors_are_named(tmp_path):
    sd = random_state_dict()
    write_checkpoint(tmp_path, sd, model_config={**MODEL_CONFIG, "use_engram": True})
    with pytest.raises(ValueError, match="use_engram"):
        load_nanochat(tmp_path)
    write_checkpoint(tmp_path, {k: v for k, v in sd.items() if k != "value_embeds.3.weight"})
    with pytest.raises(ValueError, match=r"missing keys \['value_embeds\.3\.weight'\], unexpected keys \[\]"):
        load_nanochat(tmp_path)
    write_checkpoint(tmp_path, {**sd, "transformer.h.0.attn.ve_gate.weight": torch.zeros(2, 12)})
    with pytest.raises(ValueError, match=r"missing keys \[\], unexpected keys \['transformer\.h\.0\.attn\.ve_gate"):
        load_nanochat(tmp_path)
    write_checkpoint(tmp_path, {**sd, "smear_gate.weight": torch.zeros(1, 32)})  # another generation's gate
    with pytest.raises(ValueError, match=r"smear_gate\.weight.*\(1, 32\).*\(1, 24\)"):
        load_nanochat(tmp_path)
    d20_meta = {k: v for k, v in MODEL_CONFIG.items() if k != "window_pattern"}
    write_checkpoint(tmp_path, sd, model_config=d20_meta)  # meta and tensors disagree on the generation
    with pytest.raises(ValueError, match="no window_pattern.*resid_lambdas"):
        load_nanochat(tmp_path)


def test_kv_cache_decode_matches_full_recompute(tmp_path):
    """Sliding windows and the smear's previous-token state across a prefill, a chunk and single tokens,
    past both the short (128) and the long (256) window."""
    write_checkpoint(tmp_path, random_state_dict())
    model = load_nanochat(tmp_path).eval()
    ids = ids_for(T=T_LONG)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(4, 2, 2, 16, T_LONG)
        parts = [model(ids[:, :150], kv_cache=cache), model(ids[:, 150:170], kv_cache=cache)]
        parts += [model(ids[:, t:t + 1], kv_cache=cache) for t in range(170, T_LONG)]
    assert cache.pos == T_LONG
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5


def test_left_padding_with_positions_and_mask_matches_unpadded(tmp_path):
    write_checkpoint(tmp_path, random_state_dict())
    model = load_nanochat(tmp_path).eval()
    a, b = ids_for(B=1, T=200, seed=3), ids_for(B=1, T=140, seed=4)
    ids = torch.cat([a, torch.cat([torch.zeros(1, 60, dtype=torch.long), b], 1)])  # row 1 left-padded by 60
    valid = torch.ones(ids.shape, dtype=torch.bool)
    valid[1, :60] = False
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model.trunk(model.embed(ids), positions=positions, attn_mask=valid, ids=ids)
        assert torch.isfinite(out).all()
        assert (out[0] - model(a)[0]).abs().max() <= 1e-5
        assert (out[1, 60:] - model(b)[0]).abs().max() <= 1e-5
        with pytest.raises(AssertionError, match="token ids"):
            model.trunk(model.embed(ids))


def test_engine_padded_batch_matches_single_prompts(tmp_path):
    from nanoocr.model.engine import Engine
    write_checkpoint(tmp_path, random_state_dict())
    model = load_nanochat(tmp_path).eval()
    prompts = [ids_for(B=1, T=140, seed=5)[0].tolist(), ids_for(B=1, T=100, seed=6)[0].tolist()]
    engine = Engine(model)
    kw = dict(max_new_tokens=12, no_repeat_ngram=0)
    batched = engine.generate(prompts, **kw)
    assert batched == [engine.generate([p], **kw)[0] for p in prompts]
    assert batched == engine.generate(prompts, use_cache=False, **kw)


@pytest.mark.parametrize("vocab,new_vocab,rows", [(64, 65, 128), (61, 62, 64)])  # re-padded / not
def test_extend_vocab_padded_layout(tmp_path, vocab, new_vocab, rows):
    cfg = {**MODEL_CONFIG, "vocab_size": vocab}
    sd = random_state_dict(cfg)
    write_checkpoint(tmp_path, sd, model_config=cfg)
    model = load_nanochat(tmp_path).eval()
    ids = ids_for(cfg, T=40)
    with torch.no_grad():
        before = model(ids)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    extend_vocab(model, new_vocab)
    new = model.state_dict()
    assert model.config.vocab_size == new_vocab
    for key in ("transformer.wte.weight", "lm_head.weight", "value_embeds.1.weight", "value_embeds.3.weight"):
        assert new[key].shape == (rows, old[key].shape[1]), key
        assert torch.equal(new[key][:vocab], old[key][:vocab]), key  # old rows bit-identical
        assert not new[key][new_vocab:].any(), key  # padding rows
    assert not new["lm_head.weight"][vocab:].any()  # new output rows: logit 0
    for key in ("transformer.wte.weight", "value_embeds.1.weight"):  # new input rows: near the mean row
        assert torch.allclose(new[key][vocab], old[key][:vocab].mean(0), atol=0.05), key
    with torch.no_grad():
        after = model(ids)
        assert after.shape == (2, 40, new_vocab)
        assert (after[..., :vocab] - before).abs().max() <= 1e-6
        assert not after[..., vocab:].any()
        model(torch.tensor([[new_vocab - 1, 1, 2]]))  # the new id is usable (value embeddings too)


def test_load_into_vlm(tmp_path):
    from nanoocr.model.nanochat import nanochat_gpt_fields
    from nanoocr.model.presets import build_config
    from nanoocr.model.vlm import NanoOCR

    sd = random_state_dict()
    write_checkpoint(tmp_path, sd)
    fields = nanochat_gpt_fields(tmp_path)
    assert fields["layout"] == "2026" and fields["window_pattern"] == "SSSL" and fields["sequence_len"] == 256
    small_sam = {"depth": 1, "global_attn_indexes": ()}
    cfg = build_config("nano", sam=small_sam, gpt={**fields, "vocab_size": 62})
    vlm = NanoOCR(cfg)
    report = load_nanochat_into(vlm, tmp_path)
    assert report.generation == "2026" and cfg.image_token_id == 61
    assert torch.equal(vlm.gpt.value_embeds["3"].weight[:61], sd["value_embeds.3.weight"][:61])
    ids = ids_for(T=30)
    with torch.no_grad():  # text only: the VLM's forward is the checkpoint's
        assert (vlm.eval()(ids)[..., :61] - ref_forward(sd, MODEL_CONFIG, ids)).abs().max() <= 1e-5
    d20 = build_config("nano", sam=small_sam, gpt={k: fields[k] for k in ("n_layer", "n_head", "n_kv_head", "n_embd")}
                       | {"vocab_size": 62})
    with pytest.raises(ValueError, match="layout='2026' but the model has layout='d20'"):
        load_nanochat_into(NanoOCR(d20), tmp_path)
