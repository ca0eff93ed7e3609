"""NanoOCR: token counts per mode (docs/FACTS.md "Image modes"), the image-span layout, merge, errors."""
import pytest
import torch

from nanoocr.model.clip import CLIPConfig
from nanoocr.model.gpt import GPTConfig
from nanoocr.model.sam import SAMConfig
from nanoocr.model.vlm import NanoOCR, VLMConfig, image_token_count

IMG = 63  # image token id (last id of a 64-token vocabulary)


def tiny_config(**kw):
    # windowed-only SAM: token counts depend on the geometry (patch 16, 4x compressor), not on width
    return VLMConfig(
        sam=SAMConfig(embed_dim=32, depth=1, num_heads=1, global_attn_indexes=(), neck_dim=32, net2_dim=32,
                      out_chans=32),
        clip=CLIPConfig(dim=32, layers=1, heads=1, mlp_dim=64),
        gpt=GPTConfig(sequence_len=64, vocab_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32),
        image_token_id=IMG, **kw)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return NanoOCR(tiny_config()).eval()


@pytest.mark.parametrize("mode,size,tokens", [("tiny", 512, 73), ("small", 640, 111), ("base", 1024, 273),
                                              ("large", 1280, 421)])
def test_plain_mode_token_counts(model, mode, size, tokens):
    with torch.no_grad():
        vision = model.encode_images(torch.randn(1, 3, size, size))
    assert vision.shape == (tokens, 32)
    assert image_token_count(model.config, size) == tokens


def test_gundam_token_counts_and_batching(model):
    # docs/FACTS.md "Gundam crop grids" (max 6): 1000x800 -> (2,2) 693, 2000x1000 -> (2,1) 483, 1000x2000 -> (1,2) 493,
    # 1700x2200 -> (2,3) 903, 640x640 -> (1,1) 273
    tiles = torch.tensor([[2, 2], [2, 1], [1, 2], [1, 1], [2, 3]])
    expected = [693, 483, 493, 273, 903]
    n_crops = [4, 2, 2, 0, 6]
    torch.manual_seed(1)
    images, crops = torch.randn(5, 3, 1024, 1024), torch.randn(sum(n_crops), 3, 640, 640)
    with torch.no_grad():
        batched = model.encode_images(images, crops, tiles)
        assert batched.shape[0] == sum(expected)
        offset, k = 0, 0
        for i, n in enumerate(expected):  # each image alone == its slice of the batch
            own = crops[k:k + n_crops[i]] if n_crops[i] else None
            alone = model.encode_images(images[i:i + 1], own, tiles[i:i + 1])
            assert alone.shape[0] == n == image_token_count(model.config, 1024, tuple(tiles[i].tolist()))
            assert (alone - batched[offset:offset + n]).abs().max() < 1e-4
            offset, k = offset + n, k + n_crops[i]


def test_layout_newlines_separator_local_before_global(model):
    """Fake per-view vectors that encode (view, row, col) in channels 0..2, then check every position."""
    C = 32

    def fake_encode_views(pixels):
        B, _, S, _ = pixels.shape
        g = S // 64
        out = torch.zeros(B, g, g, C)
        out[..., 0] = torch.arange(B)[:, None, None] + (100 if S == 1024 else 0)  # global views: 100 + i
        out[..., 1] = torch.arange(g)[None, :, None]
        out[..., 2] = torch.arange(g)[None, None, :]
        out[..., 3] = 1.0  # marks a grid vector
        return out.view(B, g * g, C)

    m = NanoOCR(tiny_config())
    m.encode_views = fake_encode_views
    with torch.no_grad():
        m.image_newline.fill_(-1.0)
        m.view_separator.fill_(-2.0)
        tiles = torch.tensor([[1, 1], [3, 2]])  # image 1: w=3, h=2 tiles -> 6 crops
        out = m.encode_images(torch.zeros(2, 3, 1024, 1024), torch.zeros(6, 3, 640, 640), tiles)
    assert out.shape[0] == 273 + 273 + 20 * 31
    expected = []
    expected += [("g", 100, r, c) for r in range(16) for c in list(range(16)) + ["nl"]] + [("sep",)]
    for R in range(20):  # stitched local grid: 2 tile rows x 10 rows, 3 tile cols x 10 cols
        for Cc in range(30):
            expected.append(("g", (R // 10) * 3 + Cc // 10, R % 10, Cc % 10))
        expected.append(("g", None, R, "nl"))
    expected += [("g", 101, r, c) for r in range(16) for c in list(range(16)) + ["nl"]] + [("sep",)]
    for pos, e in enumerate(expected):
        v = out[pos]
        if e[0] == "sep":
            assert torch.all(v == -2.0), f"position {pos}: expected the separator"
        elif e[-1] == "nl":
            assert torch.all(v == -1.0), f"position {pos}: expected a newline"
        else:
            assert v[3] == 1.0 and v[:3].tolist() == [e[1], e[2], e[3]], f"position {pos}: {v[:4]} != {e}"


def test_fusion_is_clip_then_sam(model):
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        sam_out = model.sam(x)  # (2, 32, 2, 2)
        clip_out = model.clip(sam_out)  # (2, 5, 32)
        W, b = model.projector.weight, model.projector.bias  # (32, 64)
        ref = clip_out[:, 1:] @ W[:, :32].T + sam_out.flatten(2).transpose(1, 2) @ W[:, 32:].T + b
        assert (model.encode_views(x) - ref).abs().max() < 1e-5


def test_merge_row_major_and_count_mismatch(model):
    ids = torch.tensor([[1, IMG, IMG, 2], [IMG, 3, 4, IMG]])
    vision = torch.arange(4 * 32, dtype=torch.float32).view(4, 32)
    x = model.gpt.embed(ids)
    merged = model.merge(x, ids, vision)
    assert torch.equal(merged[0, 1], vision[0]) and torch.equal(merged[0, 2], vision[1])
    assert torch.equal(merged[1, 0], vision[2]) and torch.equal(merged[1, 3], vision[3])
    assert torch.equal(merged[0, 0], x[0, 0]) and torch.equal(merged[1, 2], x[1, 2])
    with pytest.raises(ValueError, match=r"4 image tokens.*3 vision vectors"):
        model.merge(x, ids, vision[:3])
    with pytest.raises(ValueError, match=r"4 image tokens.*0 vision vectors"):
        model(ids)
    with pytest.raises(ValueError, match=r"need 6 crops, but 2"):
        model.encode_images(torch.zeros(1, 3, 128, 128), torch.zeros(2, 3, 64, 64), torch.tensor([[3, 2]]))


def test_forward_loss_and_logits(model):
    images = torch.randn(2, 3, 128, 128)  # 2x2 grid: 2*3 + 1 = 7 vectors each
    ids = torch.randint(0, 60, (2, 12))
    ids[0, 1:8] = IMG
    ids[1, 3:10] = IMG
    targets = torch.where(ids == IMG, -1, ids.roll(-1, 1))
    with torch.no_grad():
        logits = model(ids, images=images)
        loss = model(ids, targets, images=images)
    assert logits.shape == (2, 12, 64) and logits.dtype == torch.float32
    ref = torch.nn.functional.cross_entropy(logits.view(-1, 64), targets.view(-1), ignore_index=-1)
    assert abs(loss.item() - ref.item()) < 1e-5


def test_triton_embed_path_matches_torch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    m = NanoOCR(tiny_config())
    ids = torch.tensor([[1, IMG, IMG, 2, 5], [IMG, 3, 4, IMG, 7]])
    vision = torch.randn(4, 32)
    ref = m.embed(ids, vision)
    m.config.gpt.embed_impl = "triton"
    assert torch.allclose(m.embed(ids, vision), ref)
    with pytest.raises(ValueError, match=r"4 image tokens.*1 vision vectors"):
        m.embed(ids, vision[:1])


def test_activation_checkpointing_same_gradients():
    images, ids = torch.randn(1, 3, 128, 128), torch.randint(0, 60, (1, 10))
    ids[0, 2:9] = IMG
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = NanoOCR(tiny_config(activation_checkpointing=ckpt))
        with torch.no_grad():
            m.gpt.lm_head.weight.normal_()  # zero-init lm_head would leave the encoder without gradient
        m(ids, ids, images=images).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "sam.blocks.0.attn.qkv.weight" in grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_uint8_views_from_the_loader_encode_exactly_like_float_views(model):
    # The loader ships uint8 views (normalize=False); encode_views normalizes them on the device. The
    # float path (images.to_tensor = ToTensor + Normalize(0.5, 0.5)) must give bit-identical vectors.
    from PIL import Image, ImageDraw

    from nanoocr.data.images import image_views
    img = Image.new("RGB", (1500, 700), "white")
    ImageDraw.Draw(img).text((40, 300), "uint8 views", fill=(10, 40, 200))
    f = image_views(img, "gundam", max_crops=6)
    u = image_views(img, "gundam", max_crops=6, normalize=False)
    assert u.global_view.dtype == torch.uint8 and u.crops.dtype == torch.uint8 and u.tiles == f.tiles
    assert torch.equal(u.global_view.float().div(255).sub(0.5).div(0.5), f.global_view)
    with torch.no_grad():
        a = model.encode_images(f.global_view[None], f.crops, torch.tensor([f.tiles]))
        b = model.encode_images(u.global_view[None], u.crops, torch.tensor([u.tiles]))
    assert torch.equal(a, b)


def test_model_grid_count_is_the_data_count():
    """The model's image_token_count (its config's grids) and the data pipeline's count_tokens (the modes) are
    one formula (model.tokens.layout_tokens): equal for every mode and grid, at the docs/FACTS.md "Image modes" values."""
    from nanoocr.data.images import MODES, count_tokens
    from nanoocr.model.tokens import layout_tokens
    cfg = tiny_config()
    for mode, (base, tile, crop) in MODES.items():
        for tiles in ([(1, 1), (2, 1), (1, 2), (2, 3), (3, 3)] if crop else [(1, 1)]):
            assert image_token_count(cfg, base, tiles, tile) == count_tokens(mode, tiles=tiles)
    assert layout_tokens(16) == 273 and layout_tokens(16, (2, 3), 10) == 903 and layout_tokens(8) == 73
