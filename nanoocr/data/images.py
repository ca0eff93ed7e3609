"""Image decoding and the five DeepSeek-OCR image modes, pixel-exact with the public reference.

Notable features:
- `open_image`: bytes or path -> RGB PIL image with EXIF orientation applied; every failure (missing,
  empty, not an image, truncated, decompression bomb, undecodable) is an `ImageError` with a reason.
  The pixels are decoded here, so a truncated file fails at open time, not in the loader. Plain 8-bit
  RGB PNGs (rendered pages) are decoded by libpng through torchvision when torch is loaded (faster than
  PIL's decoder, the same pixels); anything else, or anything libpng rejects, goes through PIL.
- Odd modes (palette with transparency, LA, RGBA, CMYK, 1-bit, grayscale) go through PIL's plain
  `.convert("RGB")`, as the reference does: alpha is dropped, NOT composited, so transparent areas
  show whatever colour is stored under them. 16-bit images are scaled to 8 bits first (a plain
  convert would clip them to white). Only raster formats are opened (`FORMATS`).
- `MODES`: tiny/small stretch to a square; base/large aspect-pad with grey 127 (`ImageOps.pad`, which
  also upscales small images); gundam adds 640px tiles chosen by the reference's aspect-ratio rule.
- `count_tokens` / `gundam_tiles` are pure Python (no torch import) so the inspection CLI starts fast;
  torch/torchvision are imported on first use of `image_views`.
- `image_views` gives the reference's pixels bit for bit (PIL's bicubic resize defines them) for less
  work: a gray image (R = G = B, as rendered text pages are) is resized as one band; rows of one grey
  level (margins, line gaps) go through the horizontal pass once per level; the aspect pad is a grey
  fill plus one copy; the views stay uint8 until one normalization pass (none with normalize=False).

Token layout of one image (what the model builds and `count_tokens` counts):
    [local grid (10*h_tiles x 10*w_tiles) + newline per row]  (gundam with crops only)
    [global grid (nq x nq) + newline per row] [view separator]        nq = base_size // 64
"""
from __future__ import annotations

import io
import struct
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from nanoocr.model.tokens import layout_tokens

# mode -> (base_size, image_size, crop). base_size is the global view; image_size the tile size.
MODES = {
    "tiny": (512, 512, False),
    "small": (640, 640, False),
    "base": (1024, 1024, False),
    "large": (1280, 1280, False),
    "gundam": (1024, 640, True),
}
PAD_COLOR = (127, 127, 127)  # int(0.5 * 255): the normalization mean, so padding maps to ~0
TILE = 640  # gundam tile side
# Raster formats only: e.g. EPS would be handed to Ghostscript, a needless attack surface for data files.
# (Multi-picture camera JPEGs open through "JPEG" as MPO images.)
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000")
# A 600 dpi A4 scan is ~35M pixels; anything far beyond that is more likely a bomb than a page.
MAX_PIXELS = 50_000_000
MAX_ASPECT = 200  # the longest side at most 200x the shortest: every mode's views keep >= 2 px across
# An uncompressed 600 dpi A4 RGB TIFF is ~105 MB: a bigger file is refused before a byte of it is read.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
# Gundam grids: the reference uses at most 9 tiles; the candidate search is cubic in this bound.
MAX_CROPS = 64


class ImageError(ValueError):
    """An image that cannot be used; the message is the reason (for rejected.jsonl and logs)."""


# ---------------------------------------------------------------------------------------------
# Decoding


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way the reference does, except 16-bit (scaled, not clipped)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit PNG/TIFF: a plain convert clips every value above 255 to white. Scale to 8 bits,
        # unless an "I" image only holds 8-bit values (some TIFF writers do that).
        if img.mode != "I":
            img = img.convert("I")
        _, hi = img.getextrema()
        scale = 1 / 256 if hi > 255 else 1.0
        img = img.point(lambda v: v * scale, mode="L")
    # P (with or without transparency), PA, LA, RGBA, CMYK, 1, L, YCbCr...: PIL's own conversion.
    # Alpha is dropped, not composited over white: that is what the reference's `.convert("RGB")` does.
    return img.convert("RGB")


def _decode_reason(e: Exception) -> str:
    truncated = isinstance(e, EOFError) or "truncat" in str(e).lower()
    return f"{'truncated image data' if truncated else 'cannot decode image'} ({type(e).__name__}: {e})"


# PNG chunks that cannot make PIL's pixels differ from libpng's for an 8-bit RGB PNG: none carries an
# orientation (eXIf, or EXIF/XMP in text chunks), frames (APNG) or transparency. iCCP is left out too:
# libpng prints a warning to stderr for many common profiles, PIL decodes those quietly.
PLAIN_PNG_CHUNKS = {b"IHDR", b"IDAT", b"IEND", b"pHYs", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"bKGD", b"tIME"}


def _decode_plain_png(data: bytes) -> Image.Image | None:
    """An 8-bit RGB PNG of only PLAIN_PNG_CHUNKS decoded by libpng (torchvision.io.decode_png, ~15% faster
    than PIL's decoder on rendered pages; PNG is lossless, so the pixels are the same), else None: PIL
    decodes it. Also None when torch is not loaded yet (the inspection CLI stays torch-free) or libpng
    rejects the data (PIL then decodes it or gives the reason)."""
    if "torch" not in sys.modules or data[24:26] != b"\x08\x02":  # IHDR: bit depth 8, colour type 2 (RGB)
        return None
    pos = 8  # after the signature: (length, type, data, CRC) chunks
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind not in PLAIN_PNG_CHUNKS:
            return None
        if kind == b"IEND":
            break
        pos += 12 + length
    import torch
    from torchvision.io import decode_png

    try:  # libpng prints its own "libpng error" line to stderr on broken data
        hwc = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8)).permute(1, 2, 0)  # (H, W, 3)
    except RuntimeError:
        return None
    return Image.frombytes("RGB", (hwc.shape[1], hwc.shape[0]), hwc.contiguous().numpy())


def _decode(fp, max_pixels: int) -> Image.Image:
    """Open, size-check BEFORE decoding, decode, EXIF-transpose and convert one image file object."""
    Image.init()  # register every plugin once: `formats=` only looks among the registered ones
    with warnings.catch_warnings():
        # PIL warns (rather than raises) between MAX_IMAGE_PIXELS and twice that: make it an error too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp, formats=FORMATS)
        except UnidentifiedImageError:
            raise ImageError("not an image (cannot identify format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"too many pixels (decompression bomb guard, limit {max_pixels}): {e}") from None
        except Exception as e:  # a header cut short or garbled inside a known format
            raise ImageError(_decode_reason(e)) from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"too many pixels: {w}x{h} = {w * h} > limit {max_pixels} (decompression bomb guard)")
    if w == 0 or h == 0:
        raise ImageError(f"image has zero size {w}x{h}")
    if max(w, h) > MAX_ASPECT * min(w, h):
        # Padded into a square view, the short side would shrink below a pixel (1x20000 -> 0 x 1024).
        raise ImageError(f"aspect ratio {w}x{h} is more extreme than {MAX_ASPECT}:1")
    if img.format == "PNG":
        fp.seek(0)  # PIL seeks to the pixel data itself if it decodes after all
        if (plain := _decode_plain_png(fp.read())) is not None:  # decoding reads the whole file anyway
            return plain  # RGB, nothing to transpose
    try:
        img.load()  # decode now: truncated data must fail here, not later in a loader worker
    except Exception as e:  # PIL plugins raise OSError, SyntaxError, ValueError, EOFError... on broken data
        raise ImageError(_decode_reason(e)) from None
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no extra copy of the pixels
        return _to_rgb(img)
    except Exception as e:  # a broken EXIF block or an exotic mode: still a clear reason, never a crash
        raise ImageError(f"cannot convert image to RGB ({type(e).__name__}: {e})") from None


def open_image(src: bytes | str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `src` (encoded bytes or a file path) into an RGB PIL image, or raise ImageError.

    Note: PIL's own bomb limit (Image.MAX_IMAGE_PIXELS, ~89M) still applies when max_pixels is larger.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise ImageError("empty file (0 bytes)")
        return _decode(io.BytesIO(data), max_pixels)
    path = Path(src)
    check_image_file(path)
    try:
        with open(path, "rb") as f:
            return _decode(f, max_pixels)
    except ImageError as e:
        raise ImageError(f"{e}: {path}") from None


def check_image_file(path: Path) -> None:
    """ImageError unless `path` is a regular, non-empty file of at most MAX_IMAGE_BYTES (checked with
    stat, before anything is read: a sparse 1 TB file costs nothing to refuse)."""
    if not path.is_file():
        raise ImageError(f"file not found: {path}" if not path.exists() else f"not a regular file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"empty file (0 bytes): {path}")
    if size > MAX_IMAGE_BYTES:
        raise ImageError(f"file too large: {size} bytes > limit {MAX_IMAGE_BYTES}: {path}")


def read_image_file(path: str | Path) -> bytes:
    """The bytes of an image file, size-checked first (check_image_file)."""
    path = Path(path)
    check_image_file(path)
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Geometry and token counts (pure Python: no torch)


def check_crop_bounds(min_crops: int, max_crops: int) -> None:
    """ValueError unless 1 <= min_crops <= max_crops <= MAX_CROPS (integers)."""
    if not (isinstance(min_crops, int) and isinstance(max_crops, int) and 1 <= min_crops <= max_crops <= MAX_CROPS):
        raise ValueError(f"need integers 1 <= min_crops <= max_crops <= {MAX_CROPS}, got {min_crops!r}, {max_crops!r}")


def gundam_tiles(w: int, h: int, min_crops: int = 2, max_crops: int = 6) -> tuple[int, int]:
    """(w_tiles, h_tiles) for an image of w x h pixels; (1, 1) means no crops (global view only).

    Reproduces the reference's `find_closest_aspect_ratio`: candidates sorted by tile count, the
    closest aspect ratio wins, and on an exact float tie the later (larger) grid wins only when the
    image has more than half the pixels of that grid.
    """
    check_crop_bounds(min_crops, max_crops)
    if w <= TILE and h <= TILE:
        return (1, 1)
    # Built as a set and then sorted exactly like the reference: within one tile count the order is
    # CPython's (deterministic) set order, which decides mirror ties such as 1x2 vs 2x1.
    candidates = {(i, j) for n in range(min_crops, max_crops + 1)
                  for i in range(1, n + 1) for j in range(1, n + 1) if min_crops <= i * j <= max_crops}
    candidates = sorted(candidates, key=lambda t: t[0] * t[1])
    aspect = w / h
    best, best_diff = (1, 1), float("inf")
    for tw, th in candidates:
        diff = abs(aspect - tw / th)
        if diff < best_diff:
            best, best_diff = (tw, th), diff
        elif diff == best_diff and w * h > 0.5 * TILE * TILE * tw * th:
            best = (tw, th)
    return best


PIXELS_PER_TOKEN = 64  # side of the square of pixels one vision vector stands for: 16 px patches, 4x compressor


def count_tokens(mode: str, size: tuple[int, int] | None = None, tiles: tuple[int, int] | None = None,
                 min_crops: int = 2, max_crops: int = 6) -> int:
    """Number of `<|image|>` positions one image takes in `mode`.

    Plain modes ignore size/tiles. Gundam needs `tiles` or the image `size` (w, h) to choose them.
    """
    assert mode in MODES, f"unknown image mode {mode!r}; expected one of {sorted(MODES)}"
    base_size, image_size, crop = MODES[mode]
    if not crop:
        return layout_tokens(base_size // PIXELS_PER_TOKEN)
    if tiles is None:
        assert size is not None, "gundam token count needs the image size or its tiles"
        tiles = gundam_tiles(size[0], size[1], min_crops, max_crops)
    return layout_tokens(base_size // PIXELS_PER_TOKEN, tiles, image_size // PIXELS_PER_TOKEN)


def is_stretched(mode: str) -> bool:
    """tiny/small stretch the image to the square (aspect NOT kept); the others aspect-pad it."""
    base_size, image_size, crop = MODES[mode]
    return not crop and image_size <= 640


def global_view_image(img: Image.Image, mode: str) -> Image.Image:
    """The PIL image the global view is made from: stretched (tiny/small) or aspect-padded (others)."""
    base_size, image_size, crop = MODES[mode]
    if is_stretched(mode):
        # Reference: "directly resize" to the square (aspect NOT kept); a pad afterwards is a no-op.
        return img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return ImageOps.pad(img, (base_size, base_size), color=PAD_COLOR, method=Image.Resampling.BICUBIC)


def padded_box(w: int, h: int, side: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the content inside ImageOps.pad(w x h -> side x side), exclusive."""
    # Same expressions as ImageOps.contain + pad (Python's round: halves go to even).
    cw, ch = side, side
    if w > h:
        ch = round(h / w * side)
    elif w < h:
        cw = round(w / h * side)
    left, top = round((side - cw) * 0.5), round((side - ch) * 0.5)
    return left, top, left + cw, top + ch


# ---------------------------------------------------------------------------------------------
# Tensors


@dataclass
class ImageViews:
    global_view: "torch.Tensor"  # (3, S, S) float in [-1, 1] (uint8 0..255 with normalize=False)  # noqa: F821
    crops: "torch.Tensor | None"  # (n, 3, 640, 640) row-major tiles, None without crops  # noqa: F821
    tiles: tuple[int, int]  # (w_tiles, h_tiles); (1, 1) when no crops
    tokens: int  # image positions this image takes in the sequence


def _pil_to_uint8(img: Image.Image):
    import torchvision.transforms.functional as TF  # lazy: keeps the inspection CLI free of torch

    return TF.pil_to_tensor(img)  # (C, H, W) uint8: C = 1 for L, 3 for RGB (a permuted view of the HWC buffer)


def _normalize(t):
    """uint8 -> contiguous float in [-1, 1]; bit-identical to ToTensor() + Normalize(0.5, 0.5) (same op order)."""
    import torch

    # One float allocation (also undoing pil_to_tensor's channels-last strides), then in place.
    t = t.to(torch.float32, memory_format=torch.contiguous_format)
    return t.div_(255).sub_(0.5).div_(0.5)


def to_tensor(img: Image.Image):
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    return _normalize(_pil_to_uint8(img))


def gray_band(img: Image.Image) -> Image.Image | None:
    """The R band of an RGB image whose three bands are equal (R = G = B everywhere), else None.

    Rendered text pages are such images. PIL resamples each band with the same integer arithmetic
    (one code path for L, the same per channel for RGB), so resizing this one band gives each channel
    of the RGB resize bit for bit, for a third of the work. The check is a split and two memcmp."""
    r, g, b = img.split()
    return r if r.tobytes() == g.tobytes() == b.tobytes() else None


def _bicubic_resizer(src: Image.Image):
    """resize((w, h)) -> (C, h, w) uint8, bit-identical to `src.resize((w, h), BICUBIC)` (src L or RGB).

    PIL resamples horizontally first, row by row, then vertically, rounding to uint8 in between. A row
    of one grey level (page margins, the gaps between text lines: half a rendered page or more) comes
    out of the horizontal pass the same wherever it lies, so each such level is resampled once: the
    horizontal pass runs on the other rows plus one row per level, the rows are put back in place and
    the vertical pass runs on the full height. Same coefficients (they depend on the sizes only), same
    integer arithmetic, a fraction of the horizontal pass (the larger one when shrinking a page)."""
    import numpy as np

    a = np.asarray(src)  # (H, W) or (H, W, 3)
    flat = a.reshape(a.shape[0], -1)
    one_level = flat.min(1) == flat.max(1)  # rows of one grey level (the same in every channel)
    if one_level.sum() < len(one_level) // 4:  # too few to pay for the bookkeeping
        return lambda size: _pil_to_uint8(src.resize(size, Image.Resampling.BICUBIC))
    rows = np.flatnonzero(one_level)
    _, first, level = np.unique(flat[rows, 0], return_index=True, return_inverse=True)
    keep = ~one_level
    keep[rows[first]] = True  # one row per level
    index = np.cumsum(keep) - 1  # each kept row's place among the kept rows
    index[rows] = index[rows[first]][level]  # the others: their level's kept row
    kept = Image.fromarray(a[keep])

    def resize(size):
        w, h = size
        wide = np.asarray(kept.resize((w, kept.height), Image.Resampling.BICUBIC))[index]  # horizontal only
        return _pil_to_uint8(Image.fromarray(wide).resize((w, h), Image.Resampling.BICUBIC))  # vertical only
    return resize


def _finish(t, normalize: bool):
    """(..., C, H, W) uint8, C = 1 (a gray band) or 3 -> contiguous (..., 3, H, W), uint8 or float in [-1, 1]."""
    if normalize:
        t = _normalize(t)  # before the expansion: a gray band is normalized once, not three times
    return t.expand(*t.shape[:-3], 3, *t.shape[-2:]).contiguous()  # one copy (none for contiguous RGB floats)


def image_views(img: Image.Image, mode: str, min_crops: int = 2, max_crops: int = 6,
                normalize: bool = True) -> ImageViews:
    """All pixel tensors the encoder needs for one RGB image in `mode`, pixel-exact with the reference
    (`global_view_image` / PIL resize + crop, then ToTensor + Normalize(0.5, 0.5)).

    normalize=False keeps the views uint8 (0..255): loader workers ship them 4x smaller and
    NanoOCR.encode_views normalizes them on the device with the same ops, bit for bit.
    Gray images (R = G = B, e.g. rendered text pages) are resized as one band (`gray_band`); the
    aspect pad is a grey fill plus one copy of the resized pixels (no PIL canvas and paste)."""
    import torch

    assert mode in MODES, f"unknown image mode {mode!r}; expected one of {sorted(MODES)}"
    assert img.mode == "RGB", f"image_views expects an RGB image (use open_image), got mode {img.mode}"
    base_size, image_size, crop = MODES[mode]
    gray = gray_band(img)
    resize = _bicubic_resizer(img if gray is None else gray)  # the RGB image or its one gray band
    if is_stretched(mode):
        global_view = resize((image_size, image_size))  # stretched: aspect NOT kept
    else:
        # ImageOps.pad: the content resized to padded_box (the same rounding), centred on grey.
        left, top, right, bottom = padded_box(img.width, img.height, base_size)
        bands = 3 if gray is None else 1
        global_view = torch.full((bands, base_size, base_size), PAD_COLOR[0], dtype=torch.uint8)
        global_view[:, top:bottom, left:right] = resize((right - left, bottom - top))
    global_view = _finish(global_view, normalize)  # (3, S, S)
    tiles, crops = (1, 1), None
    if crop:
        tiles = gundam_tiles(img.width, img.height, min_crops, max_crops)
    if tiles != (1, 1):
        w_tiles, h_tiles = tiles
        # Stretch (aspect NOT kept) to the grid, then cut row-major: a view of the uint8 pixels, copied
        # once by _finish (4x less memory traffic than cutting floats).
        big = resize((image_size * w_tiles, image_size * h_tiles))  # (C, h_tiles*640, w_tiles*640)
        c = big.shape[0]
        tiles_u8 = big.view(c, h_tiles, image_size, w_tiles, image_size).permute(1, 3, 0, 2, 4)
        crops = _finish(tiles_u8, normalize).view(h_tiles * w_tiles, 3, image_size, image_size)
    tokens = count_tokens(mode, tiles=tiles)
    return ImageViews(global_view=global_view, crops=crops, tiles=tiles, tokens=tokens)
