"""Presets: full-size parameter counts (docs/FACTS.md "Presets") on the meta device, overrides, CLI."""
import json
import subprocess
import sys

import pytest

from nanoocr.model.presets import build_config
from nanoocr.eval.summary import summarize


def test_full_preset_parameter_counts():
    params = summarize(build_config("full"))["params"]
    assert abs(params["sam"] - 95.6e6) <= 0.5e6, params  # docs/FACTS.md "DeepEncoder": SAM ViT-B 95.6M measured
    assert abs(params["clip"] - 302.6e6) <= 0.5e6, params  # CLIP-L without its unused patch conv
    assert params["projector"] == 2048 * 1280 + 1280
    assert abs(params["gpt"] - 560e6) <= 0.02 * 560e6, params  # nanochat d20 (+1 vocab row)
    assert params["total"] == sum(params[k] for k in ("sam", "clip", "projector", "gpt")) + 2 * 1280


def test_full_preset_is_d20():
    cfg = build_config("full")
    g = cfg.gpt
    assert (g.n_layer, g.n_embd, g.n_head, g.n_kv_head, g.vocab_size) == (20, 1280, 10, 10, 65537)
    assert cfg.image_token_id == 65536
    assert (cfg.sam.embed_dim, cfg.sam.depth, cfg.sam.out_chans, cfg.clip.dim, cfg.clip.layers) == (768, 12, 1024, 1024, 24)


def test_overrides_and_unknown_keys():
    cfg = build_config("nano", gpt={"vocab_size": 512, "n_layer": 2}, activation_checkpointing=True)
    assert cfg.gpt.vocab_size == 512 and cfg.gpt.n_layer == 2 and cfg.image_token_id == 511
    assert cfg.activation_checkpointing and cfg.gpt.n_embd == 256  # the rest of the preset kept
    assert build_config("nano", image_token_id=7).image_token_id == 7
    with pytest.raises(ValueError, match="n_layers"):
        build_config("nano", gpt={"n_layers": 2})
    with pytest.raises(ValueError, match="'dropout'"):
        build_config("nano", dropout=0.1)
    with pytest.raises(ValueError, match="'huge'"):
        build_config("huge")


@pytest.mark.parametrize("name", ["nano", "small", "medium"])
def test_small_presets_keep_deepseek_token_counts(name):
    assert summarize(build_config(name))["vision_tokens"] == {"tiny": 73, "small": 111, "base": 273, "large": 421}


def test_summary_cli_json():
    out = subprocess.run([sys.executable, "-m", "nanoocr.summary", "--preset", "full", "--json"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    data = json.loads(out)
    assert set(data["params"]) == {"sam", "clip", "projector", "gpt", "total"}
    assert all(type(v) is int for v in data["params"].values())
    assert data["vision_tokens"] == {"tiny": 73, "small": 111, "base": 273, "large": 421}
    assert data["params"]["projector"] == 2622720
