"""
Parameter counts and image-token counts of a preset, without allocating any weights.

    python -m nanoocr.summary --preset full          a readable table
    python -m nanoocr.summary --preset nano --json   {"params": {...}, "vision_tokens": {...}}

The model is built on torch.device("meta") (shapes only), so the full ~1B model costs nothing.
Vision-token counts come from the config's grid math (nanoocr.model.vlm.image_token_count), not a table.
"""

import argparse
import json

import torch

from nanoocr.data.images import MODES
from nanoocr.model.presets import PRESETS, build_config
from nanoocr.model.vlm import NanoOCR, image_token_count


def summarize(config):
    with torch.device("meta"):
        model = NanoOCR(config)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    params = {"sam": count(model.sam), "clip": count(model.clip), "projector": count(model.projector),
              "gpt": count(model.gpt)}
    total = count(model)  # includes image_newline and view_separator
    assert total == sum(params.values()) + 2 * config.gpt.n_embd, "a module is missing from the summary"
    params["total"] = total
    vision_tokens = {mode: image_token_count(config, base) for mode, (base, _, crop) in MODES.items() if not crop}
    return {"params": params, "vision_tokens": vision_tokens}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    summary = summarize(build_config(args.preset))
    if args.json:
        print(json.dumps(summary))
        return
    print(f"preset {args.preset}")
    print(f"{'part':<12}{'parameters':>16}")
    for name, n in summary["params"].items():
        print(f"{name:<12}{n:>16,}  ({n / 1e6:.1f}M)")
    print(f"\n{'mode':<12}{'vision tokens':>16}")
    for mode, n in summary["vision_tokens"].items():
        print(f"{mode:<12}{n:>16}")
    config = build_config(args.preset)
    base, tile, _ = MODES["gundam"]
    examples = ", ".join(f"{w}x{h} tiles: {image_token_count(config, base, (w, h), tile)}" for w, h in [(2, 1), (2, 2), (2, 3)])
    print(f"gundam      {image_token_count(config, base)} + (10*h_tiles)*(10*w_tiles + 1) ({examples})")


if __name__ == "__main__":
    main()
