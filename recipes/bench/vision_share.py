"""What a "collapse" of the vision features is made of: exported models' projected vision grids on one probe set.

    python recipes/bench/vision_share.py --data data/reads_curriculum/train --mode tiny EXPORT [EXPORT ...]

For each export (and, with --init PRESET, a fresh model of that preset: the starting point), over the first
--probes images of --data, the global view's projected grid tokens g (N images, L positions, C):
- cosine_73 / cosine_grid: the collapse monitor's feature_similarity over what the GPT reads (grid tokens plus
  the newline and separator vectors: the monitor's input, 73 vectors in tiny mode) and over the grid tokens
  alone (the newline/separator vectors are parameters, the same for every image: once the grid tokens' mean
  moves away from them they count as shared features and push cosine_73 up);
- token_norm: mean |g[n, l]|; image_part_norm: mean |g[n, l] - mean_n g[:, l]|, what differs between images;
- image_share: the image-dependent share of the grid's variance, sum_l var_n(g) / sum_l mean_n |g - mean g|^2:
  1 when every position's content depends on the image only, 0 when every image gives the same grid.
Prints a Markdown table headed by the command, date and CPU model.
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import sys

import torch

from common import cpu_model  # recipes/bench/common.py
from nanoocr.data.images import image_views, open_image
from nanoocr.data.stream import read_records
from nanoocr.train.callbacks import feature_similarity


def decompose(model, pixels: torch.Tensor) -> dict:
    with torch.no_grad():
        model.eval()
        grid = model.encode_views(pixels).float()  # (N, L, C)
        full = model.encode_images(pixels).float().view(pixels.shape[0], -1, grid.shape[-1])
    per_position_mean = grid.mean(0, keepdim=True)
    image_part = grid - per_position_mean
    total = (grid - grid.mean((0, 1), keepdim=True)).pow(2).mean(0).sum()
    return {"cosine_73": feature_similarity(full), "cosine_grid": feature_similarity(grid),
            "token_norm": float(grid.norm(dim=-1).mean()), "image_part_norm": float(image_part.norm(dim=-1).mean()),
            "image_share": float(image_part.pow(2).mean(0).sum() / total)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("exports", nargs="*", help="export folders (python -m nanoocr.export)")
    ap.add_argument("--data", required=True, help="an MDS folder with images: the probe set")
    ap.add_argument("--mode", default="tiny")
    ap.add_argument("--probes", type=int, default=16)
    ap.add_argument("--init", help="also a fresh model of this preset (vocabulary of the first export, or 512)")
    args = ap.parse_args(argv)
    from nanoocr.eval.transcribe import load_export
    recs = [r for r in read_records(local=args.data, limit=4 * args.probes) if r["image"]][:args.probes]
    assert len(recs) >= 2, f"{args.data}: fewer than 2 records with an image"
    pixels = torch.stack([image_views(open_image(r["image"]), args.mode).global_view for r in recs])
    rows = []
    if args.init:
        from nanoocr.model.presets import build_config
        from nanoocr.model.vlm import NanoOCR
        torch.manual_seed(0)
        vocab = 512
        if args.exports:
            vocab = load_export(args.exports[0], dtype="fp32")[0].config.gpt.vocab_size
        model = NanoOCR(build_config(args.init, gpt={"vocab_size": vocab}, image_token_id=vocab - 1))
        rows.append((f"fresh {args.init}", decompose(model, pixels)))
    for path in args.exports:
        rows.append((path, decompose(load_export(path, dtype="fp32")[0], pixels)))
    print(f"`python recipes/bench/vision_share.py {shlex.join(argv if argv is not None else sys.argv[1:])}` — "
          f"{datetime.date.today()}, {cpu_model()}, {len(recs)} probes\n")
    keys = ["cosine_73", "cosine_grid", "token_norm", "image_part_norm", "image_share"]
    print("| model | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, r in rows:
        print(f"| {name} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
