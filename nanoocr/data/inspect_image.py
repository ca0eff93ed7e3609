"""Show how an image will be seen by the model in a given mode: size, crop grid, token count.

    python -m nanoocr.inspect_image page.png --mode gundam [--min-crops 2] [--max-crops 6] [--json]
    python -m nanoocr.inspect_image page.png --mode gundam --overlay out.png

--overlay writes the global view (what the encoder gets at base_size), with the image content outlined
in red (grey outside it is padding) and, in Gundam, the 640px crop grid in blue, mapped back onto that
view. Imports PIL only (no torch), so it answers in well under a second.
"""
from __future__ import annotations

import argparse
import json
import sys

from PIL import ImageDraw

from nanoocr.data.images import (MODES, ImageError, check_crop_bounds, count_tokens, global_view_image, gundam_tiles,
                            is_stretched, open_image, padded_box)


def describe(img, mode: str, min_crops: int = 2, max_crops: int = 6) -> dict:
    """Geometry and token count of one RGB image in `mode`."""
    w, h = img.size
    tiles = gundam_tiles(w, h, min_crops, max_crops) if MODES[mode][2] else (1, 1)
    crops = 0 if tiles == (1, 1) else tiles[0] * tiles[1]
    tokens = count_tokens(mode, tiles=tiles)
    return {"mode": mode, "size": [w, h], "tiles": list(tiles), "crops": crops, "tokens": tokens}


def draw_overlay(img, info: dict):
    """The global view with the content box (red) and the crop grid (blue) drawn on it."""
    mode = info["mode"]
    view = global_view_image(img, mode)
    side = view.width
    left, top, right, bottom = (0, 0, side, side) if is_stretched(mode) else padded_box(img.width, img.height, side)
    draw = ImageDraw.Draw(view)
    w_tiles, h_tiles = info["tiles"]
    if info["crops"]:
        # Crops cover the whole image (stretched to the grid), so the grid divides the content box evenly.
        for i in range(1, w_tiles):
            x = left + (right - left) * i / w_tiles
            draw.line([(x, top), (x, bottom - 1)], fill=(0, 90, 255), width=3)
        for j in range(1, h_tiles):
            y = top + (bottom - top) * j / h_tiles
            draw.line([(left, y), (right - 1, y)], fill=(0, 90, 255), width=3)
    draw.rectangle([left, top, right - 1, bottom - 1], outline=(255, 0, 0), width=3)
    return view


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--mode", default="base", choices=sorted(MODES))
    parser.add_argument("--min-crops", type=int, default=2)
    parser.add_argument("--max-crops", type=int, default=6)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--overlay", help="write the global view with the content box and crop grid drawn")
    args = parser.parse_args(argv)
    try:  # before any work: the grid search is cubic in --max-crops (100000 would never end)
        check_crop_bounds(args.min_crops, args.max_crops)
    except ValueError as e:
        parser.error(f"--min-crops {args.min_crops} --max-crops {args.max_crops}: {e}")
    try:
        img = open_image(args.file)  # a path: size-checked (check_image_file) before a byte is read
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = describe(img, args.mode, args.min_crops, args.max_crops)
    if args.json:
        print(json.dumps(info))
    else:
        w, h = info["size"]
        grid = f"{info['tiles'][0]}x{info['tiles'][1]} tiles, {info['crops']} crops" if info["crops"] else "no crops"
        print(f"{args.file}: {w}x{h}, mode {args.mode} (global {MODES[args.mode][0]}px), {grid}, "
              f"{info['tokens']} image tokens")
    if args.overlay:
        try:
            draw_overlay(img, info).save(args.overlay)
        except (OSError, ValueError) as e:  # a missing folder, or an extension PIL has no writer for
            print(f"error: --overlay {args.overlay}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
