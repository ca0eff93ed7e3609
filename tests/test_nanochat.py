"""Loading a nanochat-format checkpoint (written here in nanochat's layout) and extending the vocabulary."""
import json
import math

import pytest
import torch

from nanoocr.model.gpt import GPT, GPTConfig
from nanoocr.model.nanochat import extend_vocab, load_nanochat, load_nanochat_with_report

MODEL_CONFIG = dict(sequence_len=32, vocab_size=61, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)


def nanochat_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**MODEL_CONFIG))
    model.init_weights()
    with torch.no_grad():  # a "trained" model: nothing left at zero
        model.lm_head.weight.normal_(0, 1 / math.sqrt(32))
        for block in model.transformer.h:
            block.attn.c_proj.weight.normal_(0, 0.1)
            block.mlp.c_proj.weight.normal_(0, 0.1)
    return model.eval()


def write_checkpoint(model, directory, step, model_config=MODEL_CONFIG):
    # what nanochat's checkpoint_manager writes for a torch.compile'd model
    sd = {"_orig_mod." + k: v.clone() for k, v in model.state_dict().items()}
    sd["_orig_mod.transformer.wte.weight"] = sd["_orig_mod.transformer.wte.weight"].bfloat16().float()
    torch.save(sd, directory / f"model_{step:06d}.pt")
    meta = {"step": step, "model_config": model_config, "user_config": {}}
    (directory / f"meta_{step:06d}.json").write_text(json.dumps(meta))


def test_load_latest_step_same_logits(tmp_path):
    old, new = nanochat_model(0), nanochat_model(1)
    write_checkpoint(old, tmp_path, 100)
    write_checkpoint(new, tmp_path, 650)
    model, meta, report = load_nanochat_with_report(tmp_path)
    assert report.step == 650 and meta["step"] == 650 and report.generation == "d20"
    # the same LoadReport as the vision loaders: every tensor of the file loaded, nothing missing
    assert report.loaded == len(new.state_dict()) and not report.missing and not report.unexpected
    assert report.source.endswith("model_000650.pt") and "(step 650, d20 layout)" in report.summary()
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        model.transformer.wte.weight.copy_(new.transformer.wte.weight.bfloat16().float())
        new.transformer.wte.weight.copy_(model.transformer.wte.weight)
        assert torch.equal(model.eval()(ids), new(ids))
    model100 = load_nanochat(tmp_path, step=100)
    assert torch.equal(model100.lm_head.weight, old.lm_head.weight)


def test_shape_mismatch_and_missing_keys_are_named(tmp_path):
    write_checkpoint(nanochat_model(), tmp_path, 5, {**MODEL_CONFIG, "vocab_size": 62})
    with pytest.raises(ValueError, match=r"transformer\.wte\.weight.*\(61, 32\).*\(62, 32\)"):
        load_nanochat(tmp_path)
    sd = {"_orig_mod." + k: v for k, v in nanochat_model().state_dict().items() if "h.1.mlp" not in k}
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "model_000005.pt")
    (tmp_path / "meta_000005.json").write_text(json.dumps({"model_config": MODEL_CONFIG}))
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight.*extra\.weight"):
        load_nanochat(tmp_path)
    with pytest.raises(ValueError, match="strict"):  # no warning-only partial load any more
        load_nanochat_with_report(tmp_path, strict=False)


def test_unknown_meta_key_and_missing_dir(tmp_path):
    write_checkpoint(nanochat_model(), tmp_path, 1, {**MODEL_CONFIG, "window_pattern": "SSSL"})
    with pytest.raises(ValueError, match="window_pattern"):  # a 2026 meta over d20 tensors
        load_nanochat(tmp_path)
    write_checkpoint(nanochat_model(), tmp_path, 1, {**MODEL_CONFIG, "rope_theta": 1e4})
    with pytest.raises(ValueError, match="rope_theta"):
        load_nanochat(tmp_path)
    with pytest.raises(FileNotFoundError, match="model_"):
        load_nanochat(tmp_path / "nothing")


def test_extend_vocab_keeps_old_rows():
    model = nanochat_model()
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        before = model(ids)
    old_wte = model.transformer.wte.weight.clone()
    old_head = model.lm_head.weight.clone()
    extend_vocab(model, 64)
    assert model.config.vocab_size == 64
    wte, head = model.transformer.wte.weight, model.lm_head.weight
    assert wte.shape == (64, 32) and head.shape == (64, 32)
    assert torch.equal(wte[:61], old_wte) and torch.equal(head[:61], old_head)
    assert not head[61:].any()  # new output rows start at zero
    new_rows = wte[61:]
    assert torch.allclose(new_rows, old_wte.mean(0).expand(3, -1), atol=0.05)  # near the mean row ...
    assert not torch.equal(new_rows[0], new_rows[1])  # ... but not identical to each other
    with torch.no_grad():
        after = model(ids)
        assert after.shape == (2, 9, 64)
        assert (after[..., :61] - before).abs().max() <= 1e-6  # old ids, old vocab: unchanged
        assert not after[..., 61:].any()  # zero rows -> logit exactly 0
    model(torch.tensor([[63, 1, 2]]), torch.tensor([[1, 2, 63]])).backward()  # new ids usable


def test_load_into_vlm_extends_vocab(tmp_path):
    from nanoocr.model.presets import build_config
    from nanoocr.model.nanochat import load_nanochat_into
    from nanoocr.model.vlm import NanoOCR

    src = nanochat_model()
    write_checkpoint(src, tmp_path, 3)
    cfg = build_config("nano", sam={"depth": 1, "global_attn_indexes": ()},
                       gpt={k: MODEL_CONFIG[k] for k in ("n_layer", "n_head", "n_kv_head", "n_embd")} | {"vocab_size": 62})
    vlm = NanoOCR(cfg)
    report = load_nanochat_into(vlm, tmp_path)
    assert report.step == 3 and cfg.image_token_id == 61
    assert torch.equal(vlm.gpt.lm_head.weight[:61], src.lm_head.weight)
    assert not vlm.gpt.lm_head.weight[61].any()
    with pytest.raises(ValueError, match="n_layer=2 but the model has n_layer=4"):
        load_nanochat_into(NanoOCR(build_config("nano", gpt={"n_embd": 32, "n_head": 2, "n_kv_head": 2})), tmp_path)
