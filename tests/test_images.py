"""Image modes against docs/FACTS.md ("Image modes", "Gundam crop grids", "Pixels"), decoding of odd modes,
and every ImageError reason. The fast paths (libpng decode, gray pages as one band, one horizontal pass
per constant row level, the pad built in torch) against the reference pipeline, pixel for pixel."""
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageOps, PngImagePlugin

from nanoocr.data.images import (MODES, ImageError, _decode_plain_png, count_tokens, gray_band, gundam_tiles,
                                 image_views, open_image, padded_box)

# docs/FACTS.md "Gundam crop grids": (w, h) -> {max_crops: (tiles, crops, tokens)}, min_crops 2.
GUNDAM_ROWS = {
    (640, 640): {6: ((1, 1), 0, 273), 9: ((1, 1), 0, 273)},
    (1000, 800): {6: ((2, 2), 4, 693), 9: ((2, 2), 4, 693)},
    (2000, 1000): {6: ((2, 1), 2, 483), 9: ((4, 2), 8, 1093)},
    (1000, 2000): {6: ((1, 2), 2, 493), 9: ((2, 4), 8, 1113)},
    (3000, 3000): {6: ((2, 2), 4, 693), 9: ((3, 3), 9, 1203)},
    (1700, 2200): {6: ((2, 3), 6, 903), 9: ((2, 3), 6, 903)},
    (600, 4000): {6: ((1, 6), 6, 933), 9: ((1, 7), 7, 1043)},
    (4000, 600): {6: ((6, 1), 6, 883), 9: ((7, 1), 7, 983)},
    (300, 200): {6: ((1, 1), 0, 273), 9: ((1, 1), 0, 273)},
    (1280, 720): {6: ((2, 1), 2, 483), 9: ((2, 1), 2, 483)},
}
GUNDAM_CASES = [(w, h, m, *row) for (w, h), rows in GUNDAM_ROWS.items() for m, row in rows.items()]
PLAIN_TOKENS = {"tiny": 73, "small": 111, "base": 273, "large": 421}  # docs/FACTS.md "Image modes" table
PAD = (127 / 255 - 0.5) / 0.5  # -0.0039216
REFERENCE_NORMALIZE = T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])


def encode(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------
# Token counts and crop grids


@pytest.mark.parametrize("w,h,max_crops,tiles,crops,tokens", GUNDAM_CASES)
def test_gundam_table(w, h, max_crops, tiles, crops, tokens):
    got = gundam_tiles(w, h, min_crops=2, max_crops=max_crops)
    assert got == tiles, f"{w}x{h} max {max_crops}: tiles {got}, reference {tiles}"
    assert (0 if got == (1, 1) else got[0] * got[1]) == crops
    assert count_tokens("gundam", tiles=got) == tokens
    assert count_tokens("gundam", size=(w, h), max_crops=max_crops) == tokens


@pytest.mark.parametrize("mode,tokens", PLAIN_TOKENS.items())
def test_plain_mode_tokens_and_shape(mode, tokens):
    assert count_tokens(mode) == tokens
    views = image_views(Image.new("RGB", (300, 200), (255, 255, 255)), mode)
    side = MODES[mode][0]
    assert views.global_view.shape == (3, side, side) and views.global_view.dtype == torch.float32
    assert views.global_view.is_contiguous()
    assert views.crops is None and views.tiles == (1, 1) and views.tokens == tokens


def test_gundam_views_crop_count():
    for (w, h), max_crops in [((1000, 800), 6), ((2000, 1000), 9), ((300, 200), 6)]:
        tiles, crops, tokens = GUNDAM_ROWS[(w, h)][max_crops]
        views = image_views(Image.new("RGB", (w, h), (0, 0, 0)), "gundam", max_crops=max_crops)
        assert views.tiles == tiles and views.tokens == tokens
        assert views.global_view.shape == (3, 1024, 1024)
        if crops:
            assert views.crops.shape == (crops, 3, 640, 640)
        else:
            assert views.crops is None


# ----------------------------------------------------------------------------------------------
# Pixels


@pytest.mark.parametrize("w,h,first,last", [(1000, 800, 102, 920), (1280, 720, 224, 799), (300, 200, 170, 852)])
def test_base_view_content_rows_and_pad_value(w, h, first, last):
    g = image_views(Image.new("RGB", (w, h), (255, 255, 255)), "base").global_view  # (3, 1024, 1024)
    is_pad = (g - PAD).abs().lt(1e-6).all(0)  # (1024, 1024)
    content_rows = (~is_pad).any(1).nonzero().flatten()
    assert (content_rows[0].item(), content_rows[-1].item()) == (first, last)
    assert g[:, 0, 0].tolist() == pytest.approx([-0.0039216] * 3, abs=1e-7)
    assert g.min() >= -1 and g.max() <= 1


@pytest.mark.parametrize("w,h", [(1000, 802), (802, 1000), (300, 200), (640, 640), (1, 900)])
def test_padded_box_matches_pad_content(w, h):
    # 1000x802 -> 821 content rows: (1024 - 821) / 2 = 101.5, where rounding and floor differ.
    padded = ImageOps.pad(Image.new("RGB", (w, h), (255, 255, 255)), (1024, 1024), color=(127, 127, 127))
    assert padded_box(w, h, 1024) == padded.convert("L").point(lambda v: 255 if v > 127 else 0).getbbox()


@pytest.mark.parametrize("mode", ["base", "large", "gundam"])
def test_global_view_matches_reference_pipeline(mode):
    img = noise(300, 200)
    side = MODES[mode][0]
    ref = REFERENCE_NORMALIZE(ImageOps.pad(img, (side, side), color=(127, 127, 127), method=Image.BICUBIC))
    assert torch.equal(image_views(img, mode).global_view, ref)


@pytest.mark.parametrize("mode,side", [("tiny", 512), ("small", 640)])
def test_tiny_small_stretch_to_square(mode, side):
    img = noise(300, 120, seed=1)
    g = image_views(img, mode).global_view
    assert g.shape == (3, side, side)
    assert torch.equal(g, REFERENCE_NORMALIZE(img.resize((side, side), Image.BICUBIC)))
    assert not (g - PAD).abs().lt(1e-6).all(0).any(1).any(), "tiny/small stretch: no padded rows"


def test_gundam_crops_match_pil_resize_and_crop():
    img = noise(1000, 800, seed=2)  # -> 2x2 tiles
    views = image_views(img, "gundam")
    big = img.resize((1280, 1280), Image.BICUBIC)
    for k in range(4):
        x, y = (k % 2) * 640, (k // 2) * 640  # row-major
        ref = REFERENCE_NORMALIZE(big.crop((x, y, x + 640, y + 640)))
        assert torch.equal(views.crops[k], ref), f"crop {k} differs from PIL resize+crop"


def reference_views(img, mode):
    """DeepSeek-OCR's pipeline written out: ImageOps.pad (base/large/gundam global) or a stretch (tiny/small),
    gundam crops cut from the image stretched to the tile grid, each view ToTensor + Normalize(0.5, 0.5)."""
    base_size, image_size, crop = MODES[mode]
    if not crop and image_size <= 640:
        return REFERENCE_NORMALIZE(img.resize((image_size, image_size), Image.BICUBIC)), None
    g = REFERENCE_NORMALIZE(ImageOps.pad(img, (base_size, base_size), color=(127, 127, 127), method=Image.BICUBIC))
    w_tiles, h_tiles = gundam_tiles(img.width, img.height) if crop else (1, 1)
    if (w_tiles, h_tiles) == (1, 1):
        return g, None
    big = img.resize((640 * w_tiles, 640 * h_tiles), Image.BICUBIC)
    crops = [REFERENCE_NORMALIZE(big.crop((x * 640, y * 640, (x + 1) * 640, (y + 1) * 640)))
             for y in range(h_tiles) for x in range(w_tiles)]
    return g, torch.stack(crops)


def assert_views_match_reference(img, mode, what):
    g, crops = reference_views(img, mode)
    for normalize in (True, False):
        views = image_views(img, mode, normalize=normalize)
        got_g, got_crops = views.global_view, views.crops
        assert got_g.is_contiguous() and (got_crops is None or got_crops.is_contiguous())
        if not normalize:  # uint8, brought to [-1, 1] with NanoOCR.encode_views' ops
            assert got_g.dtype == torch.uint8
            got_g = got_g.float().div_(255).sub_(0.5).div_(0.5)
            got_crops = None if got_crops is None else got_crops.float().div_(255).sub_(0.5).div_(0.5)
        assert torch.equal(got_g, g), f"{what} {mode} normalize={normalize}: global view differs"
        assert (got_crops is None) == (crops is None), f"{what} {mode}: crops present in only one pipeline"
        if crops is not None:
            assert torch.equal(got_crops, crops), f"{what} {mode} normalize={normalize}: crops differ"


@pytest.fixture(scope="module")
def rendered_pages(tmp_path_factory):
    """PNG bytes of a real rendered text page (pdftoppm at 144 dpi, as the data path renders) and of the
    same page in colour (dark blue text: the RGB path)."""
    if shutil.which("pdftoppm") is None:
        pytest.skip("poppler-utils not installed")
    from test_pages import make_pdf

    from nanoocr.data.pdf import render_page
    pdf = tmp_path_factory.mktemp("pdf") / "page.pdf"
    make_pdf(pdf, ["text"])
    gray = render_page(pdf, 1)
    colour = ImageOps.colorize(Image.open(io.BytesIO(gray)).convert("L"), black=(20, 30, 140), white=(255, 255, 255))
    return {"gray": gray, "colour": encode(colour)}


@pytest.mark.parametrize("page", ["gray", "colour"])
@pytest.mark.parametrize("mode", list(MODES))
def test_rendered_page_views_match_reference_pipeline(rendered_pages, page, mode):
    png = rendered_pages[page]
    reference_img = Image.open(io.BytesIO(png)).convert("RGB")  # the reference's decode
    img = open_image(png)
    assert img.mode == "RGB" and img.tobytes() == reference_img.tobytes()
    assert _decode_plain_png(png) is not None, "a rendered page is a plain RGB PNG: libpng decodes it"
    assert (gray_band(img) is not None) == (page == "gray")
    rows = np.asarray(img).reshape(img.height, -1)
    assert (rows.min(1) == rows.max(1)).mean() > 0.25, "a text page is mostly rows of one level"
    assert_views_match_reference(img, mode, f"rendered {page} page")


def striped(w, h, colour, seed=0):
    """Rows of several constant levels (white, black, greys, and in colour a constant non-grey row) between
    noisy rows: every branch of the constant-row bookkeeping."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 1 if not colour else 3), dtype=np.uint8).repeat(3 if not colour else 1, 2)
    for i, level in enumerate([255, 0, 255, 127, 255, 31, 0, 255]):
        a[i * h // 8: i * h // 8 + h // 12] = level
    if colour:
        a[h // 2] = (255, 0, 0)  # one colour in every pixel, but not one level: resampled as it is
    return Image.fromarray(a)


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("w,h", [(1000, 1300), (300, 470), (1700, 900)])  # shrink, enlarge, gundam 3x1
def test_constant_rows_and_gray_bands_match_reference_pipeline(w, h, colour):
    img = striped(w, h, colour)
    assert (gray_band(img) is None) == colour
    for mode in MODES:
        assert_views_match_reference(img, mode, f"striped {w}x{h} colour={colour}")


def test_gray_band_needs_every_pixel_gray():
    img = Image.new("RGB", (50, 40), (200, 200, 200))
    assert gray_band(img).tobytes() == bytes([200]) * 2000
    img.putpixel((49, 39), (200, 200, 201))  # the last pixel of the last band differs
    assert gray_band(img) is None


def test_plain_png_decode_equals_pil_and_odd_pngs_go_to_pil():
    img = noise(64, 48, seed=3)
    plain = encode(img)
    assert _decode_plain_png(plain).tobytes() == Image.open(io.BytesIO(plain)).convert("RGB").tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a text chunk may carry EXIF or XMP")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    for other in (encode(img, pnginfo=info), encode(img, exif=exif.tobytes()), encode(img.convert("RGBA")),
                  encode(img.convert("L")), encode(Image.new("I;16", (8, 6), 40000))):
        assert _decode_plain_png(other) is None
    assert open_image(encode(img, exif=exif.tobytes())).size == (48, 64), "PNG EXIF orientation still applied"
    assert _decode_plain_png(plain[: len(plain) // 2]) is None, "data libpng rejects is left to PIL"


# ----------------------------------------------------------------------------------------------
# Decoding


def _p_with_transparency():
    img = Image.new("P", (8, 6), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.info["transparency"] = 1
    return img


ODD_MODES = {
    # name: (image, format, expected RGB of pixel (0, 0))
    "P": (Image.new("RGB", (8, 6), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG", (10, 200, 30)),
    "P_transparency": (_p_with_transparency(), "PNG", (10, 200, 30)),
    "LA": (Image.new("LA", (8, 6), (90, 0)), "PNG", (90, 90, 90)),
    "RGBA": (Image.new("RGBA", (8, 6), (10, 20, 30, 0)), "PNG", (10, 20, 30)),  # alpha dropped, not composited
    "CMYK": (Image.new("CMYK", (8, 6), (0, 0, 0, 0)), "TIFF", (255, 255, 255)),
    "I;16": (Image.new("I;16", (8, 6), 40000), "PNG", (156, 156, 156)),  # 40000 / 256, not clipped to 255
    "I": (Image.new("I", (8, 6), 40000), "TIFF", (156, 156, 156)),
    "1": (Image.new("1", (8, 6), 1), "PNG", (255, 255, 255)),
    "L": (Image.new("L", (8, 6), 77), "PNG", (77, 77, 77)),
}


@pytest.mark.parametrize("name", ODD_MODES)
def test_odd_modes_convert_to_rgb(name):
    img, fmt, pixel = ODD_MODES[name]
    data = encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode == img.mode, "the fixture must really be stored in that mode"
    out = open_image(data)
    assert out.mode == "RGB" and out.size == (8, 6)
    assert out.getpixel((0, 0)) == pixel


@pytest.mark.parametrize("orientation,corner", [(6, "top_right"), (8, "bottom_left")])
def test_exif_rotation_applied(orientation, corner):
    img = Image.new("RGB", (60, 40), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = open_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (40, 60), f"orientation {orientation} must swap width and height, got {out.size}"
    # 6 = rotate 90 degrees clockwise to display; 8 = counter-clockwise.
    x, y = {"top_right": (35, 4), "bottom_left": (4, 55)}[corner]
    r, g, b = out.getpixel((x, y))
    assert r > 200 and g < 60 and b < 60, f"marker not at {corner}: {(r, g, b)}"
    assert out.getpixel((4, 4))[1] > 200, "stored corner must have moved"


def test_open_image_from_path(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (5, 4), (1, 2, 3)).save(path)
    assert open_image(path).getpixel((0, 0)) == (1, 2, 3)
    assert open_image(str(path)).size == (5, 4)


def _bad_inputs(tmp_path):
    jpeg = encode(noise(64, 64), "JPEG")
    png = encode(noise(64, 64), "PNG")
    (tmp_path / "empty.png").write_bytes(b"")
    return {
        "corrupt": (b"this is not an image" * 10, "not an image"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated_png": (png[: len(png) // 2], "truncated"),
        "zero_bytes": (b"", "empty file"),
        "zero_byte_file": (tmp_path / "empty.png", "empty file"),
        "missing_file": (tmp_path / "nope.png", f"file not found: {tmp_path / 'nope.png'}"),
        "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not an image"),  # no Ghostscript
        "bomb": (encode(Image.new("1", (5000, 4000))), "too many pixels: 5000x4000 = 20000000 > limit 1000000"),
    }


@pytest.mark.parametrize("case", ["corrupt", "truncated_jpeg", "truncated_png", "zero_bytes", "zero_byte_file",
                                  "missing_file", "eps", "bomb"])
def test_bad_images_raise_with_reason(tmp_path, case):
    src, reason = _bad_inputs(tmp_path)[case]
    with pytest.raises(ImageError) as err:
        open_image(src, max_pixels=1_000_000)
    assert reason in str(err.value), f"{case}: {err.value}"
    assert isinstance(err.value, ValueError)


def test_pil_bomb_guard_becomes_image_error(monkeypatch):
    # Beyond PIL's own limit PIL warns or raises inside Image.open; both must surface as ImageError.
    data = encode(Image.new("1", (300, 200)))
    for limit in (40_000, 20_000):  # 60k pixels: a warning (> limit), then an error (> 2x limit)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ImageError, match="decompression bomb"):
            open_image(data)


# ----------------------------------------------------------------------------------------------
# CLI


def run_cli(*args):
    out = subprocess.run([sys.executable, "-m", "nanoocr.inspect_image", *map(str, args)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("w,h,max_crops", [(1000, 800, 6), (600, 4000, 9), (4000, 600, 6), (300, 200, 9)])
def test_inspect_image_cli_json(tmp_path, w, h, max_crops):
    path = tmp_path / f"{w}x{h}.png"
    Image.new("L", (w, h), 200).save(path)
    info = json.loads(run_cli(path, "--mode", "gundam", "--min-crops", 2, "--max-crops", max_crops, "--json"))
    tiles, crops, tokens = GUNDAM_ROWS[(w, h)][max_crops]
    assert info == {"mode": "gundam", "size": [w, h], "tiles": list(tiles), "crops": crops, "tokens": tokens}


def test_inspect_image_cli_text_and_overlay(tmp_path):
    path = tmp_path / "page.png"
    Image.new("RGB", (1280, 720), (255, 255, 255)).save(path)
    line = run_cli(path, "--mode", "gundam", "--overlay", tmp_path / "ov.png")
    assert "1280x720" in line and "2x1 tiles" in line and "483 image tokens" in line, line
    overlay = Image.open(tmp_path / "ov.png").convert("RGB")
    assert overlay.size == (1024, 1024)
    assert overlay.getpixel((512, 100)) == (127, 127, 127), "padding above the content stays grey"
    assert overlay.getpixel((512, 224))[0] == 255 and overlay.getpixel((512, 224))[1] == 0, "content box in red"
    assert overlay.getpixel((512, 500))[2] == 255 and overlay.getpixel((512, 500))[0] == 0, "tile split in blue"
    assert "73 image tokens" in run_cli(path, "--mode", "tiny")


def test_inspect_image_does_not_import_torch():
    code = "import sys, nanoocr.data.inspect_image; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
