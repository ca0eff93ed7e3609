"""DeepSeek-OCR's decoder (nanoocr/model/deepseek_decoder.py) against independent references.

- transformers' DeepseekV2ForCausalLM (its MoE gate/experts, MLP, RMSNorm, decoder layer) with its MLA
  attention replaced by transformers' LlamaAttention + LlamaRotaryEmbedding (plain MHA, rotate-half rotary,
  head_dim = hidden / heads; transformers 4.57's own DeepseekV2Attention is MLA-only): its parameter names
  are the released `model.layers.N.*` keys; its weights go through a released-layout safetensors file and
  OUR loader.
- per-token loops written here for the MoE (norm_topk_prob, which transformers 4.57 does not implement)
  and the load-balancing loss (the official remote code's formulas, per sequence and per batch).
Everything fp32 on CPU, a tiny config (hidden 64, 3 layers, 8 experts, top-2, 1 shared expert).
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from nanoocr.model.deepseek_decoder import (
    DeepseekDecoder,
    DeepseekDecoderConfig,
    MoE,
    config_from_hf,
    hf_config,
    load_deepseek_decoder,
)
from nanoocr.model.engine import Engine
from nanoocr.model.gpt import KVCache

# A released-style config.json (same keys and structure as deepseek-ai/DeepSeek-OCR's), tiny sizes.
TINY_LANG = {
    "architectures": ["DeepseekV2ForCausalLM"], "bos_token_id": 0, "eos_token_id": 1,
    "first_k_dense_replace": 1, "hidden_size": 64, "intermediate_size": 96, "kv_lora_rank": None,
    "lm_head": True, "max_position_embeddings": 128, "moe_intermediate_size": 32, "n_group": 1,
    "n_routed_experts": 8, "n_shared_experts": 1, "num_attention_heads": 4, "num_experts_per_tok": 2,
    "num_hidden_layers": 3, "num_key_value_heads": 4, "q_lora_rank": None, "qk_nope_head_dim": 0,
    "qk_rope_head_dim": 0, "rm_head": False, "topk_group": 1, "topk_method": "greedy",
    "torch_dtype": "bfloat16", "use_mla": False, "v_head_dim": 0, "vocab_size": 256,
}
# The released full-size decoder fields (docs/FACTS.md "DeepSeek-OCR decoder").
RELEASED_LANG = dict(TINY_LANG, hidden_size=1280, intermediate_size=6848, max_position_embeddings=8192,
                     moe_intermediate_size=896, n_routed_experts=64, n_shared_experts=2, num_attention_heads=10,
                     num_experts_per_tok=6, num_hidden_layers=12, num_key_value_heads=10, vocab_size=129280)


def released_config_json(lang):
    # the decoder fields appear twice in the released file: at the top level and in language_config
    return {**lang, "architectures": ["DeepseekOCRForCausalLM"], "model_type": "deepseek_vl_v2",
            "language_config": dict(lang)}


def randomize_(model, seed=0):
    """Weights large enough that routing is decisive and every layer matters (init std 0.02 would make
    the comparison trivially small)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # RMSNorm weights
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:  # Linear (out, in) and the router (E, C)
                scale = 3.0 if name.endswith("mlp.gate.weight") else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def hf_reference(monkeypatch, lang):
    """transformers' DeepseekV2ForCausalLM with plain multi-head attention (see the module docstring)."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM
    from transformers.models.deepseek_v2 import modeling_deepseek_v2
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    monkeypatch.setattr(modeling_deepseek_v2, "DeepseekV2Attention", LlamaAttention)
    monkeypatch.setattr(modeling_deepseek_v2, "DeepseekV2RotaryEmbedding", LlamaRotaryEmbedding)
    cfg = DeepseekV2Config(**{k: v for k, v in lang.items() if k != "architectures"})
    cfg.head_dim = lang["hidden_size"] // lang["num_attention_heads"]  # DeepseekV2Config sets qk_rope_head_dim
    cfg._attn_implementation = "eager"
    model = DeepseekV2ForCausalLM(cfg).float()
    randomize_(model)
    return model.eval()


def write_released(tmp_path, hf_model, lang):
    """A released-layout checkpoint folder: model.safetensors (decoder keys as transformers names them, plus
    vision keys the decoder loader must skip) and config.json."""
    tensors = {k: v.detach().clone().contiguous() for k, v in hf_model.state_dict().items()}
    tensors.update({"model.sam_model.pos_embed": torch.zeros(1, 4, 4, 8), "model.view_seperator": torch.zeros(64),
                    "model.projector.layers.weight": torch.zeros(64, 16)})
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(released_config_json(lang)))
    return tmp_path


def ours_from_checkpoint(folder):
    hf = json.loads((folder / "config.json").read_text())
    decoder = DeepseekDecoder(config_from_hf(hf))
    report = load_deepseek_decoder(decoder, folder)
    return decoder.eval(), report


@pytest.mark.parametrize("changes", [{}, {"routed_scaling_factor": 2.5, "first_k_dense_replace": 2}],
                         ids=["released-settings", "scaled-2-dense"])
def test_logits_equal_transformers(monkeypatch, tmp_path, changes):
    lang = dict(TINY_LANG, **changes)
    ref = hf_reference(monkeypatch, lang)
    folder = write_released(tmp_path, ref, lang)
    ours, report = ours_from_checkpoint(folder)
    # the parameter names are the released keys: nothing renamed, nothing left over
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert report.loaded == len(ref.state_dict()) and not report.missing and not report.unexpected
    assert any("3 non-decoder keys" in n for n in report.notes)
    ids = torch.randint(0, lang["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        got = ours(ids)
    assert got.shape == want.shape == (2, 16, lang["vocab_size"])
    diff = (got - want).abs().max().item()
    assert diff <= 1e-5, f"max abs logit diff {diff:.3g}"
    assert want.abs().max() > 1.0  # the comparison is not between near-zero logits
    # training mode (aux loss computed on the side) gives the same logits
    ours.train()
    with torch.no_grad():
        assert (ours(ids) - want).abs().max().item() <= 1e-5


def test_gradients_equal_transformers(monkeypatch, tmp_path):
    """The training path (grouped experts, fp32 combine) back-propagates like transformers' MoE."""
    ref = hf_reference(monkeypatch, TINY_LANG)
    ours, _ = ours_from_checkpoint(write_released(tmp_path, ref, TINY_LANG))
    ref.train()
    ours.train()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 256, (2, 12), generator=g)
    targets = torch.randint(0, 256, (2, 12), generator=g)
    targets[0, :3] = -1  # ignored positions
    want = F.cross_entropy(ref(input_ids=ids).logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
    got = ours(ids, targets)
    assert abs(got.item() - want.item()) <= 1e-5
    want.backward()
    got.backward()
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        q = theirs[name]
        if q.grad is None:  # an expert that got no token: transformers skips it, ours gives exact zeros
            assert p.grad is not None and not p.grad.any(), name
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def tiny_config(**changes):
    return config_from_hf(TINY_LANG, **changes)


def tiny_decoder(**changes):
    decoder = DeepseekDecoder(tiny_config(**changes))
    randomize_(decoder)
    return decoder.eval()


def test_kv_cache_logits_equal_full_forward():
    decoder = tiny_decoder()
    ids = torch.randint(0, 256, (2, 14), generator=torch.Generator().manual_seed(3))
    cfg = decoder.config
    with torch.no_grad():
        full = decoder(ids)
        cache = KVCache(cfg.n_layer, 2, cfg.n_head, cfg.n_embd // cfg.n_head, 14)
        parts = [decoder.trunk(decoder.embed(ids[:, :6]), kv_cache=cache)]  # prefill
        parts.append(decoder.trunk(decoder.embed(ids[:, 6:9]), kv_cache=cache))  # a chunk after the cache
        for t in range(9, 14):  # one token at a time
            parts.append(decoder.trunk(decoder.embed(ids[:, t:t + 1]), kv_cache=cache))
    diff = (torch.cat(parts, 1) - full).abs().max().item()
    assert diff <= 1e-5, f"cached vs full max abs logit diff {diff:.3g}"


def test_engine_generation_cache_equals_no_cache():
    """The engine drives the decoder as it drives the GPT: left-padded batch, KV cache vs recompute."""
    decoder = tiny_decoder()
    prompts = [[5, 17, 99, 3, 42, 7, 8], [11, 200, 13]]
    engine = Engine(decoder)
    cached = engine.generate(prompts, max_new_tokens=10, use_cache=True)
    full = engine.generate(prompts, max_new_tokens=10, use_cache=False)
    assert cached == full and all(len(o) == 10 for o in cached)
    alone = [engine.generate([p], max_new_tokens=10)[0] for p in prompts]  # padding changes nothing
    assert alone == cached


def naive_moe(moe, x, cfg):
    """The MoE layer one token at a time, from the formulas (softmax, top-k, optional renormalization)."""
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        scores = torch.softmax(x[n] @ moe.gate.weight.T, dim=-1)
        w, idx = torch.topk(scores, cfg.num_experts_per_tok)
        if cfg.norm_topk_prob:
            w = w / w.sum()
        w = w * cfg.routed_scaling_factor
        for wj, e in zip(w, idx.tolist()):
            out[n] += wj * moe.experts[e](x[n])
        out[n] += moe.shared_experts(x[n])
    return out


@pytest.mark.parametrize("norm_topk_prob,scale", [(False, 1.0), (True, 1.0), (True, 2.5)])
def test_moe_equals_per_token_loop(norm_topk_prob, scale):
    cfg = tiny_config(norm_topk_prob=norm_topk_prob, routed_scaling_factor=scale)
    moe = MoE(cfg)
    randomize_(moe)
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got, aux = moe.eval()(x)
        want = naive_moe(moe, x.flatten(0, 1), cfg).view(2, 9, 64)
    assert aux is None  # eval: no balancing loss
    assert (got - want).abs().max().item() <= 1e-5


def test_expert_without_tokens_gets_zero_gradient():
    """Under gradients every expert is in the graph (DDP needs every parameter's gradient each step)."""
    cfg = tiny_config()
    moe = MoE(cfg)
    randomize_(moe)
    x = torch.randn(6, 64, requires_grad=True)
    idx = torch.tensor([[1, 2], [2, 3], [1, 3], [4, 5], [5, 6], [7, 1]])  # expert 0 gets nothing
    w = torch.rand(6, 2)
    y = moe.routed(x, idx, w)
    want = torch.stack([sum(w[n, j] * moe.experts[idx[n, j]](x[n]) for j in range(2)) for n in range(6)])
    assert (y - want).abs().max().item() <= 1e-5
    y.square().sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in moe.experts[0].parameters())
    assert all(p.grad is not None and p.grad.any() for p in moe.experts[1].parameters())


def expected_aux(inputs, moe, cfg, batch_size):
    """The official remote code's balancing loss for one MoE layer, written with loops."""
    x = inputs.reshape(-1, inputs.shape[-1])
    scores = torch.softmax(x @ moe.gate.weight.T, dim=-1)  # (N, E)
    idx = torch.topk(scores, cfg.num_experts_per_tok, dim=-1).indices
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    groups = list(range(batch_size)) if cfg.seq_aux else [None]
    T = x.shape[0] // batch_size
    total = 0.0
    for b in groups:
        rows = range(x.shape[0]) if b is None else range(b * T, (b + 1) * T)
        counts = [0] * E
        for n in rows:
            for e in idx[n].tolist():
                counts[e] += 1
        f = [c * E / (len(rows) * k) for c in counts]
        P = scores[list(rows)].mean(0)
        total = total + sum(f[e] * P[e] for e in range(E))
    return total / len(groups) * cfg.aux_loss_alpha


@pytest.mark.parametrize("seq_aux", [True, False])
def test_aux_loss(seq_aux):
    decoder = tiny_decoder(seq_aux=seq_aux, aux_loss_alpha=0.01)
    cfg = decoder.config
    captured = {}
    moes = [(i, layer.mlp) for i, layer in enumerate(decoder.model.layers) if isinstance(layer.mlp, MoE)]
    assert [i for i, _ in moes] == [1, 2]  # layer 0 dense (first_k_dense_replace 1)
    for i, moe in moes:
        moe.register_forward_hook(lambda mod, args, out, i=i: captured.__setitem__(i, args[0].detach()))
    ids = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(5))
    decoder.train()
    loss = decoder(ids, ids)
    aux = decoder.aux_loss
    assert aux is not None and torch.isfinite(aux) and aux.item() > 0
    want = sum(expected_aux(captured[i], moe, cfg, 3) for i, moe in moes)
    assert abs(aux.item() - float(want)) <= 1e-6
    # routing is spread: more experts are used than top-k, in every MoE layer
    for i, moe in moes:
        x = captured[i].flatten(0, 1)
        assert torch.topk(x @ moe.gate.weight.T, 2).indices.unique().numel() > 2
    aux.backward()  # the loss reaches every router
    for _, moe in moes:
        g = moe.gate.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert torch.isfinite(loss)
    decoder.eval()
    decoder(ids)
    assert decoder.aux_loss is None  # eval: none
    off = tiny_decoder(aux_loss_alpha=0.0).train()
    off(ids)
    assert off.aux_loss is None  # alpha 0: none


def test_loader_reports_and_refuses(monkeypatch, tmp_path):
    from safetensors.torch import load_file

    ref = hf_reference(monkeypatch, TINY_LANG)
    folder = write_released(tmp_path, ref, TINY_LANG)
    tensors = load_file(str(folder / "model.safetensors"))
    decoder = DeepseekDecoder(tiny_config())

    missing = dict(tensors)
    del missing["model.layers.2.mlp.experts.7.down_proj.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="experts.7.down_proj"):
        load_deepseek_decoder(decoder, tmp_path / "missing.safetensors")
    report = load_deepseek_decoder(decoder, tmp_path / "missing.safetensors", strict=False)
    assert report.missing == ["model.layers.2.mlp.experts.7.down_proj.weight"]

    mla = dict(tensors, **{"model.layers.0.self_attn.kv_a_proj_with_mqa.weight": torch.zeros(8, 64)})
    save_file(mla, str(tmp_path / "mla.safetensors"))
    with pytest.raises(ValueError, match="kv_a_proj_with_mqa"):
        load_deepseek_decoder(decoder, tmp_path / "mla.safetensors")

    wrong = dict(tensors, **{"model.layers.1.mlp.gate.weight": torch.zeros(16, 64)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match="shape mismatch for model.layers.1.mlp.gate.weight"):
        load_deepseek_decoder(decoder, tmp_path / "wrong.safetensors", strict=False)


def test_config_mapping():
    released = config_from_hf(released_config_json(RELEASED_LANG))
    assert released == DeepseekDecoderConfig()  # our defaults are the released decoder
    assert config_from_hf(hf_config(released)) == released
    tiny = tiny_config(norm_topk_prob=True, aux_loss_alpha=0.0, seq_aux=False)
    assert config_from_hf(hf_config(tiny)) == tiny
    with pytest.raises(ValueError, match="disagree"):
        config_from_hf(dict(released_config_json(TINY_LANG), num_hidden_layers=4))
    for key, value in (("use_mla", True), ("topk_method", "group_limited_greedy"), ("scoring_func", "sigmoid")):
        with pytest.raises(ValueError, match=key):
            config_from_hf(dict(TINY_LANG, **{key: value}))
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        config_from_hf({k: v for k, v in TINY_LANG.items() if k != "num_experts_per_tok"})


def test_released_size():
    """The released decoder's size, built on the meta device (docs/FACTS.md "DeepSeek-OCR decoder"): 2.93B
    parameters (3.34B with the 0.40B vision parts), ~570M active per token (matmul weights incl. lm_head)."""
    with torch.device("meta"):
        decoder = DeepseekDecoder(DeepseekDecoderConfig())
    total = sum(p.numel() for p in decoder.parameters())
    assert 2.930e9 < total < 2.940e9, total
    assert 565e6 < decoder.active_matmul_params() < 580e6, decoder.active_matmul_params()
    assert [type(layer.mlp).__name__ for layer in decoder.model.layers] == ["MLP"] + ["MoE"] * 11


def test_activation_checkpointing_and_bf16():
    """The VLM wraps each block in torch's checkpoint_wrapper: a DecoderLayer returns (x, aux) through it
    with the same loss, aux loss and gradients. bf16 (the released dtype) runs, routing in fp32."""
    import functools

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    from nanoocr.model.deepseek_decoder import DecoderLayer

    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(6))
    wrapper = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    runs = []
    for wrap in (False, True):
        decoder = tiny_decoder().train()
        if wrap:
            apply_activation_checkpointing(decoder, checkpoint_wrapper_fn=wrapper,
                                           check_fn=lambda m: isinstance(m, DecoderLayer))
            assert "_checkpoint_wrapped_module" in next(n for n, _ in decoder.named_parameters() if "layers.0" in n)
        loss = decoder(ids, ids)
        aux = decoder.aux_loss
        (loss + aux).backward()
        runs.append((loss.item(), aux.item(), [p.grad.clone() for p in decoder.parameters()]))
    (l0, a0, g0), (l1, a1, g1) = runs
    assert abs(l0 - l1) <= 1e-6 and abs(a0 - a1) <= 1e-7
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(g0, g1))

    decoder = tiny_decoder()
    with torch.no_grad():
        want = decoder(ids)
        got = decoder.to(torch.bfloat16)(ids)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - want).abs().max() < 0.25 * want.std()  # bf16 rounding, not a different model


def test_routing_stays_fp32_under_autocast():
    """Under bf16 autocast (Composer's amp_bf16, nanoocr's CPU bf16) the router still scores in fp32, as
    released, and the training forward with its balancing loss runs (a bf16 score tensor broke it)."""
    decoder = tiny_decoder().train()
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(8))
    moe = decoder.model.layers[1].mlp
    seen = {}
    moe.gate.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], weight=out[1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = decoder(ids, ids)
    aux = decoder.aux_loss
    assert aux.dtype == torch.float32 and torch.isfinite(aux) and torch.isfinite(loss)
    assert seen["weight"].dtype == torch.float32
    want = torch.softmax(seen["x"].float() @ moe.gate.weight.float().T, dim=-1).topk(2).values
    torch.testing.assert_close(seen["weight"].sort(dim=-1).values, want.sort(dim=-1).values, rtol=1e-6, atol=1e-7)
    (loss + aux).backward()
