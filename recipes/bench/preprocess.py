"""Preprocessing per page, file bytes -> model-ready views: ours vs DeepSeek-OCR's reference pipeline.

    python recipes/bench/preprocess.py [--pdfs /usr/share/doc] [--pages 20] [--colour]
                                       [--modes tiny small base large gundam] [--json OUT]

Renders up to --pages pages of the PDFs under --pdfs at 144 dpi (nanoocr.data.pdf.pdf_pages, the PNG
bytes the data path stores; --colour recolours each page, dark blue text on white, re-encoded as an RGB
PNG: the path of pages that are not gray). Then, page by page and mode by mode, in one process with ONE
torch thread (a loader worker's setting), it times three pipelines on the same PNG bytes, decode
INCLUDED, interleaved (the order alternates from page to page so no pipeline always runs on a warm cache):

- ours (uint8): `image_views(open_image(png), mode, normalize=False)`, what the loader ships
  (process_sample(..., normalize=False)); the model normalizes these on the device with the same ops;
- ours (float): `image_views(open_image(png), mode)`, float views in [-1, 1];
- reference: DeepSeek-OCR's pipeline: `Image.open(BytesIO(png)).convert("RGB")`, then tiny/small
  `img.resize((S, S), BICUBIC)`; base/large `ImageOps.pad(img, (S, S), method=BICUBIC, color=(127,) * 3)`;
  gundam the padded 1024 global view plus `img.resize` to the tile grid of `gundam_tiles(w, h)` cut into
  640x640 crops with `Image.crop`; every view `TF.normalize(TF.to_tensor(v), [0.5] * 3, [0.5] * 3)`.

Reports the median wall ms per page over the pages after the first (a warm-up page), the median CPU ms
(`time.process_time`, closer to an idle core's time on a shared machine), the speed-ups reference ms /
ours ms (the goal: >= 1.5), the decode alone (open_image vs PIL open + convert), and the max abs
difference between ours and the reference over all pages in the [-1, 1] range (the uint8 views are
brought to [-1, 1] with the model's ops first; x127.5 gives 0..255 grey levels). Shapes (and the tile
grid) must agree or the script stops. Prints a Markdown table headed by the command, date, CPU model,
load average and thread count; --json OUT writes the same numbers.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shlex
import statistics
import sys
import time

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps

from nanoocr.data.images import MODES, PAD_COLOR, TILE, gray_band, gundam_tiles, image_views, open_image
from nanoocr.data.pdf import DPI, pdf_pages
from common import cpu_model  # recipes/bench/common.py

MEAN = STD = [0.5, 0.5, 0.5]


def render(pdfs: str, n_pages: int, colour: bool) -> list[bytes]:
    pngs = []
    for rec in pdf_pages(pdfs, workers=2):
        if "error" in rec:
            print(f"  skipping {rec['id']}: {rec['error']}", file=sys.stderr)
            continue
        pngs.append(recolour(rec["image"]) if colour else rec["image"])
        if len(pngs) == n_pages:
            break
    assert pngs, f"no renderable PDF page under {pdfs}"
    return pngs


def recolour(png: bytes) -> bytes:
    """The page with dark blue text on white, as an 8-bit RGB PNG (R, G and B differ: the colour path)."""
    page = ImageOps.colorize(Image.open(io.BytesIO(png)).convert("L"), black=(20, 30, 140), white=(255, 255, 255))
    buf = io.BytesIO()
    page.save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# DeepSeek-OCR's reference pipeline


def _tensor(view: Image.Image) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(view), MEAN, STD)


def reference_views(png: bytes, mode: str):
    """(global view (3, S, S), crops (n, 3, 640, 640) | None, tiles): PIL decode + PIL + torchvision."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    base_size, image_size, crop = MODES[mode]
    if not crop and image_size <= 640:  # tiny / small: stretch to the square
        return _tensor(img.resize((image_size, image_size), Image.Resampling.BICUBIC)), None, (1, 1)
    global_view = _tensor(ImageOps.pad(img, (base_size, base_size), method=Image.Resampling.BICUBIC,
                                       color=PAD_COLOR))
    if not crop:
        return global_view, None, (1, 1)
    tiles = gundam_tiles(img.width, img.height)
    if tiles == (1, 1):
        return global_view, None, tiles
    w_tiles, h_tiles = tiles
    big = img.resize((TILE * w_tiles, TILE * h_tiles), Image.Resampling.BICUBIC)
    crops = [_tensor(big.crop((x * TILE, y * TILE, (x + 1) * TILE, (y + 1) * TILE)))
             for y in range(h_tiles) for x in range(w_tiles)]  # row-major
    return global_view, torch.stack(crops), tiles


# ---------------------------------------------------------------------------------------------


def _u8_to_float(t: torch.Tensor) -> torch.Tensor:
    return t.float().div_(255).sub_(0.5).div_(0.5)  # NanoOCR.encode_views' ops


def _diff(a: torch.Tensor | None, b: torch.Tensor | None, what: str) -> float:
    if a is None or b is None:
        assert a is None and b is None, f"{what}: one pipeline has crops and the other has none"
        return 0.0
    assert a.shape == b.shape, f"{what}: ours {tuple(a.shape)} vs reference {tuple(b.shape)}"
    assert a.dtype == b.dtype == torch.float32, f"{what}: dtypes {a.dtype}, {b.dtype}"
    return float((a - b).abs().max())


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _medians_ms(samples: dict[str, list[float]]) -> dict[str, float]:
    return {n: 1000 * statistics.median(v) for n, v in samples.items()}


def bench(pngs: list[bytes], modes: list[str]) -> tuple[list[dict], dict]:
    names = ("ours_uint8", "ours", "baseline")
    wall = {m: {n: [] for n in names} for m in modes}
    cpu = {m: {n: [] for n in names} for m in modes}
    diff = {m: [0.0, 0.0] for m in modes}  # max abs diff: ours float vs reference, ours uint8 vs reference
    shapes = {m: set() for m in modes}
    decode = {"ours": [], "baseline": []}
    for i, png in enumerate(pngs):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        fns = (lambda: open_image(png), lambda: Image.open(io.BytesIO(png)).convert("RGB"))
        for k in order:  # the decode alone: where the time goes
            _, w, _ = _timed(fns[k])
            if i:
                decode[("ours", "baseline")[k]].append(w)
        for mode in modes:
            fns = {"ours_uint8": lambda: image_views(open_image(png), mode, normalize=False),
                   "ours": lambda: image_views(open_image(png), mode),
                   "baseline": lambda: reference_views(png, mode)}
            out = {}
            for n in (names if i % 2 == 0 else names[::-1]):
                out[n], w, c = _timed(fns[n])
                if i:  # page 0 warms up
                    wall[mode][n].append(w)
                    cpu[mode][n].append(c)
            ours, ours8, (g, crops, tiles) = out["ours"], out["ours_uint8"], out["baseline"]
            assert ours8.global_view.dtype == torch.uint8, "normalize=False should give uint8 views"
            assert ours.tiles == ours8.tiles == tiles, f"{mode}: tiles ours {ours.tiles} vs reference {tiles}"
            what = f"{mode} page {i}"
            diff[mode][0] = max(diff[mode][0], _diff(ours.global_view, g, what), _diff(ours.crops, crops, what))
            diff[mode][1] = max(diff[mode][1], _diff(_u8_to_float(ours8.global_view), g, what),
                                _diff(None if ours8.crops is None else _u8_to_float(ours8.crops), crops, what))
            shapes[mode].add((tuple(g.shape), None if crops is None else tuple(crops.shape)))
    rows = []
    for mode in modes:
        w, c = _medians_ms(wall[mode]), _medians_ms(cpu[mode])
        rows.append({"mode": mode, "pages_timed": len(wall[mode]["ours"]),
                     "ours_ms": w["ours"], "ours_uint8_ms": w["ours_uint8"], "baseline_ms": w["baseline"],
                     "speedup": w["baseline"] / w["ours"], "speedup_uint8": w["baseline"] / w["ours_uint8"],
                     "ours_cpu_ms": c["ours"], "ours_uint8_cpu_ms": c["ours_uint8"], "baseline_cpu_ms": c["baseline"],
                     "speedup_cpu": c["baseline"] / c["ours"], "speedup_uint8_cpu": c["baseline"] / c["ours_uint8"],
                     "max_abs_diff": diff[mode][0], "max_abs_diff_uint8": diff[mode][1],
                     "shapes": sorted(str(s) for s in shapes[mode])})
    return rows, _medians_ms(decode)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pdfs", default="/usr/share/doc")
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--colour", action="store_true", help="recolour the pages (dark blue text): the RGB path")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    assert args.pages >= 2, "--pages must be >= 2 (the first page is a warm-up)"
    torch.set_num_threads(1)

    t = time.perf_counter()
    pngs = render(args.pdfs, args.pages, args.colour)
    images = [open_image(p) for p in pngs]
    sizes = sorted({im.size for im in images})
    gray = sum(gray_band(im) is not None for im in images)
    print(f"rendered {len(pngs)} pages in {time.perf_counter() - t:.1f} s; {gray} gray (R = G = B)",
          file=sys.stderr)
    rows, decode = bench(pngs, args.modes)

    command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    date = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n`{command}` — {date}, {cpu_model()}, {os.cpu_count()} cores, load average {load}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} thread), "
          f"{len(pngs)} PDF pages at {DPI} dpi{' recoloured' if args.colour else ''} ({gray} gray, "
          f"{len(pngs) - 1} timed after 1 warm-up page), sizes {', '.join(f'{w}x{h}' for w, h in sizes)}\n")
    print("| mode | ours uint8 ms/page | ours float ms/page | reference ms/page | speed-up uint8 "
          "| speed-up float | CPU ms uint8 / float / reference | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['ours_uint8_ms']:.1f} | {r['ours_ms']:.1f} | {r['baseline_ms']:.1f} | "
              f"{r['speedup_uint8']:.2f} | {r['speedup']:.2f} | "
              f"{r['ours_uint8_cpu_ms']:.1f} / {r['ours_cpu_ms']:.1f} / {r['baseline_cpu_ms']:.1f} | "
              f"{max(r['max_abs_diff'], r['max_abs_diff_uint8']):.3g} |")
    print(f"\nms/page: median wall time per page, PNG bytes to views (decode included), the three pipelines "
          f"interleaved page by page; speed-up = reference ms / ours ms; CPU ms: median `time.process_time` "
          f"per page. Decode alone: open_image {decode['ours']:.1f} ms, PIL open + convert('RGB') "
          f"{decode['baseline']:.1f} ms. ours uint8 = image_views(open_image(png), normalize=False), what the "
          "loader ships; ours float = image_views(open_image(png)); reference = PIL decode + resize/ImageOps.pad"
          "/crop + TF.to_tensor + TF.normalize(0.5, 0.5). max abs diff: largest |ours - reference| over all "
          "pages and views, float and uint8 (after the model's normalization), in [-1, 1] units.")
    print("views (global, crops): " + "; ".join(f"{r['mode']} {' '.join(r['shapes'])}" for r in rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "date": date, "cpu": cpu_model(), "cores": os.cpu_count(),
                       "load_average": os.getloadavg(), "torch": torch.__version__,
                       "torch_threads": torch.get_num_threads(), "pages": len(pngs), "dpi": DPI,
                       "colour": args.colour, "gray_pages": gray, "sizes": sizes, "decode_ms": decode,
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
