"""Weight loaders: the official DeepSeek-OCR layout (single file, sharded, torch file), reports, errors.

The official key names are written here from docs/FACTS.md "Official weight names" (prefix + the official module
names, which our modules mirror), independently of the loader's own tables."""
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from nanoocr.model.clip import CLIPConfig, CLIPEncoder
from nanoocr.model.pretrained import (check_state_dict, load_deepseek_vision, load_hf_sam, read_checkpoint,
                                      state_dict_diff)
from nanoocr.model.sam import SAMConfig, SAMEncoder

N_EMBD = 48


class StandIn(nn.Module):
    """The vision attributes of the NanoOCR VLM, tiny."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.sam = SAMEncoder(SAMConfig(img_size=64, embed_dim=32, depth=2, num_heads=2, window_size=2,
                                        global_attn_indexes=(1,), neck_dim=16, net2_dim=16, out_chans=32,
                                        pos_embed_grid=4))
        self.clip = CLIPEncoder(CLIPConfig(dim=32, layers=1, heads=2, mlp_dim=64, num_positions=5))
        self.projector = nn.Linear(32 + 32, N_EMBD)
        self.image_newline = nn.Parameter(torch.randn(N_EMBD))
        self.view_separator = nn.Parameter(torch.randn(N_EMBD))
        with torch.no_grad():  # rel-pos tables start at zero: make every tensor distinct from a fresh model
            for p in self.parameters():
                p.add_(torch.randn_like(p))


def official_state_dict(src: StandIn) -> dict[str, torch.Tensor]:
    sd = {f"model.sam_model.{k}": v for k, v in src.sam.state_dict().items()}
    sd.update({f"model.vision_model.{k}": v for k, v in src.clip.state_dict().items()})
    sd["model.vision_model.embeddings.patch_embedding.weight"] = torch.randn(32, 3, 14, 14)  # unused by design
    sd["model.vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    sd["model.projector.layers.weight"] = src.projector.weight
    sd["model.projector.layers.bias"] = src.projector.bias
    sd["model.image_newline"] = src.image_newline
    sd["model.view_seperator"] = src.view_separator  # [sic], as in the official weights
    # language-model keys: counted, never loaded
    sd["model.embed_tokens.weight"] = torch.randn(10, N_EMBD)
    sd["model.layers.0.self_attn.q_proj.weight"] = torch.randn(N_EMBD, N_EMBD)
    sd["lm_head.weight"] = torch.randn(10, N_EMBD)
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def write(sd, tmp_path, fmt):
    if fmt == "safetensors":
        save_file(sd, tmp_path / "model.safetensors")
        return tmp_path / "model.safetensors"
    if fmt == "torch":
        torch.save(sd, tmp_path / "pytorch_model.bin")
        return tmp_path
    keys = sorted(sd)  # sharded: two shards + index, as HF save_pretrained writes for big models
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, tmp_path / name)
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    return tmp_path


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "torch"])
def test_official_layout_loads_every_vision_tensor(tmp_path, fmt):
    src, dst = StandIn(seed=0), StandIn(seed=1)
    path = write(official_state_dict(src), tmp_path, fmt)
    report = load_deepseek_vision(dst, path)

    n_vision = sum(1 for _ in dst.parameters())
    assert report.loaded == n_vision and not report.missing and not report.unexpected, report.summary()
    for (name, a), b in zip(dst.named_parameters(), src.parameters()):
        assert torch.equal(a, b), name
    notes = " ".join(report.notes)
    assert "3 non-vision keys" in notes
    assert "model.vision_model.embeddings.patch_embedding.weight" in notes
    assert "model.vision_model.embeddings.position_ids" in notes


def test_sharded_read_skips_unneeded_shards(tmp_path):
    sd = official_state_dict(StandIn(seed=0))
    write(sd, tmp_path, "sharded")
    tensors, skipped = read_checkpoint(tmp_path, want=lambda k: k == "lm_head.weight")
    assert list(tensors) == ["lm_head.weight"] and skipped == len(sd) - 1


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    sd = official_state_dict(StandIn(seed=0))
    sd["model.projector.layers.weight"] = torch.randn(N_EMBD, 40)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.projector\.layers\.weight.*\(48, 40\).*\(48, 64\)"):
        load_deepseek_vision(StandIn(seed=1), tmp_path)
    sd = official_state_dict(StandIn(seed=0))
    sd["model.view_seperator"] = torch.randn(7)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.view_seperator.*\(7,\).*\(48,\)"):
        load_deepseek_vision(StandIn(seed=1), tmp_path)


def test_missing_and_unexpected_keys(tmp_path):
    sd = official_state_dict(StandIn(seed=0))
    del sd["model.sam_model.net_3.weight"]
    sd["model.sam_model.blocks.7.attn.qkv.weight"] = torch.randn(96, 32)  # a deeper model's block
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="net_3.weight"):
        load_deepseek_vision(StandIn(seed=1), tmp_path)
    report = load_deepseek_vision(StandIn(seed=1), tmp_path, strict=False)
    assert report.missing == ["sam.net_3.weight"]
    assert report.unexpected == ["model.sam_model.blocks.7.attn.qkv.weight"]


def test_hf_sam_model_reports_random_compressor(tmp_path):
    """A full SamModel checkpoint: vision_encoder.* loaded, prompt encoder/mask decoder counted,
    net_2/net_3 reported."""
    transformers = pytest.importorskip("transformers")
    vision = transformers.SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=64, window_size=2, global_attn_indexes=[1])
    cfg = transformers.SamConfig(vision_config=vision.to_dict(),
                                 prompt_encoder_config={"hidden_size": 16, "image_size": 64},
                                 mask_decoder_config={"hidden_size": 16, "num_hidden_layers": 1, "mlp_dim": 32,
                                                      "iou_head_hidden_dim": 16})
    hf = transformers.SamModel(cfg)
    hf.save_pretrained(tmp_path)
    sam = StandIn(seed=0).sam
    report = load_hf_sam(sam, tmp_path)
    assert report.missing == ["net_2.weight", "net_3.weight"]
    notes = " ".join(report.notes)
    assert "left at random init: net_2.weight, net_3.weight" in notes
    assert "outside `vision_encoder.`" in notes
    assert torch.equal(sam.neck[0].weight, hf.vision_encoder.neck.conv1.weight)
    assert torch.equal(sam.blocks[1].norm1.weight, hf.vision_encoder.layers[1].layer_norm1.weight)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_hf_sam(StandIn(seed=0).sam, tmp_path / "nope.safetensors")
    torch.save({"a": torch.zeros(1), "step": 3}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="flat dict of tensors"):
        read_checkpoint(tmp_path / "x.pt")


def test_check_state_dict_names_every_difference():
    """The one model-vs-tensors comparison (nanochat's loader and export.load_model use it): shapes from a module,
    tensors or a safetensors header (tuples), every difference in one error, nothing when they match."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # 0.weight (4, 3), 0.bias, 1.weight (2, 4), 1.bias
    same = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(model, same, "ok")  # no error
    check_state_dict(model, {k: tuple(v.shape) for k, v in same.items()}, "header")
    theirs = {**same, "0.weight": (4, 5), "2.weight": (1,)}
    del theirs["1.bias"]
    assert state_dict_diff(model, theirs) == (["1.bias"], ["2.weight"], ["0.weight"])
    with pytest.raises(ValueError) as e:
        check_state_dict(model, theirs, "f.safetensors does not match config.json")
    assert str(e.value) == ("f.safetensors does not match config.json: shape mismatch for 0.weight: checkpoint (4, 5) "
                            "vs model (4, 3); missing keys ['1.bias'], unexpected keys ['2.weight']")
    many = {f"extra.{i}": (1,) for i in range(10)}
    with pytest.raises(ValueError, match=r"unexpected keys \['extra\.0', .*\] and 2 more$"):
        check_state_dict(model, {**same, **many}, "x")
