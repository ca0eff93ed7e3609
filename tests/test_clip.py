"""CLIPEncoder vs transformers' CLIPVisionModel (random weights, small configs, fp32), and the
SAM -> CLIP output grids of the four plain modes."""
import pytest
import torch
import torch.nn.functional as F

from nanoocr.model.clip import CLIPConfig, CLIPEncoder, resize_positions
from nanoocr.model.pretrained import load_hf_clip
from nanoocr.model.sam import SAMConfig, SAMEncoder

transformers = pytest.importorskip("transformers")
from transformers import CLIPVisionConfig, CLIPVisionModel  # noqa: E402

DIM, GRID = 64, 4  # 56 px / patch 14 = 4x4 grid -> 17 positions


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if ("norm" in name and name.endswith("weight")) else 0.1 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    cfg = CLIPVisionConfig(hidden_size=DIM, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=56, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                           attn_implementation="eager")
    hf = randomize(CLIPVisionModel(cfg))
    path = tmp_path_factory.mktemp("clip")
    hf.save_pretrained(path)
    ours = CLIPEncoder(CLIPConfig(dim=DIM, layers=2, heads=4, mlp_dim=128, num_positions=GRID * GRID + 1)).eval()
    report = load_hf_clip(ours, path)
    return hf, ours, report


def test_loader_report(hf_and_ours):
    _, _, report = hf_and_ours
    assert not report.missing and not report.unexpected, report.summary()
    notes = " ".join(report.notes)
    # The unused patch conv and post-layernorm are reported, not silently dropped.
    assert "embeddings.patch_embedding.weight" in notes and "post_layernorm.weight" in notes


def test_trunk_matches_hf(hf_and_ours):
    hf, ours, _ = hf_and_ours
    x = torch.randn(2, 1 + GRID * GRID, DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        vm = hf.vision_model
        ref = vm.encoder(inputs_embeds=vm.pre_layrnorm(x)).last_hidden_state
        out = ours.encode_embeddings(x)
    assert (out - ref).abs().max().item() <= 1e-5


def test_forward_on_sam_features_matches_hf(hf_and_ours):
    """forward() = CLS + SAM features as patch tokens + positions, then the trunk; HF embeddings built by hand."""
    hf, ours, _ = hf_and_ours
    feats = torch.randn(2, DIM, GRID, GRID, generator=torch.Generator().manual_seed(2))
    vm = hf.vision_model
    with torch.no_grad():
        tokens = feats.reshape(2, DIM, GRID * GRID).permute(0, 2, 1)
        emb = torch.cat([vm.embeddings.class_embedding.expand(2, 1, DIM), tokens], 1)
        emb = emb + vm.embeddings.position_embedding.weight
        ref = vm.encoder(inputs_embeds=vm.pre_layrnorm(emb)).last_hidden_state
        out = ours(feats)
    assert out.shape == (2, 1 + GRID * GRID, DIM)
    assert (out - ref).abs().max().item() <= 1e-5


def test_position_table_resize():
    table = torch.randn(1 + 16 * 16, 8)
    for g in (8, 10, 20):
        out = resize_positions(table, (g, g))
        ref = F.interpolate(table[1:].reshape(1, 16, 16, 8).permute(0, 3, 1, 2), size=(g, g), mode="bicubic",
                            antialias=True, align_corners=False).permute(0, 2, 3, 1).reshape(g * g, 8)
        assert out.shape == (1 + g * g, 8)
        assert torch.equal(out[0], table[0])  # CLS position kept
        assert torch.equal(out[1:], ref)
    assert resize_positions(table, (16, 16)) is table


@pytest.mark.parametrize("size,grid", [(512, 8), (640, 10), (1024, 16), (1280, 20)])
def test_mode_grids(size, grid):
    """Real patch 16 and compressor strides (shallow, narrow trunk): H/64 grids and 1024 channels into CLIP."""
    torch.manual_seed(0)
    sam = SAMEncoder(SAMConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), neck_dim=16,
                               net2_dim=32, out_chans=1024)).eval()
    clip = CLIPEncoder(CLIPConfig(dim=1024, layers=1, heads=16, mlp_dim=64)).eval()
    with torch.no_grad():
        feats = sam(torch.randn(1, 3, size, size))
        out = clip(feats)
    assert feats.shape == (1, 1024, grid, grid)
    assert out.shape == (1, 1 + grid * grid, 1024)
    assert torch.isfinite(out).all()


def test_full_size_parameter_count():
    with torch.device("meta"):
        model = CLIPEncoder(CLIPConfig())
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 302.6e6) <= 0.5e6, n  # docs/FACTS.md "DeepEncoder": 302.6M without the unused patch conv
    assert tuple(model.embeddings.position_embedding.weight.shape) == (257, 1024)
    assert tuple(model.transformer.layers[0].self_attn.qkv_proj.weight.shape) == (3072, 1024)
