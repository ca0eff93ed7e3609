"""
Generation speed: KV-cache decoding vs recomputing the full forward every step, measured in one run.

    python recipes/bench/generation.py                       # nano preset, base mode (273 image tokens)
    python recipes/bench/generation.py --preset small --new-tokens 128

Both paths encode the image once (the vision tower is outside the comparison) and produce the same
tokens (checked); the ratio is the KV cache's saving on the language-model side. Greedy, no stop
token, no-repeat guard off, so both generate exactly --new-tokens tokens. Prints a Markdown table.
"""

import argparse
import datetime
import math
import sys
import time

import torch

from nanoocr.model.engine import Engine
from nanoocr.data.images import MODES
from nanoocr.model.presets import build_config
from nanoocr.model.vlm import NanoOCR, image_token_count
from common import cpu_model  # recipes/bench/common.py


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--mode", default="base", choices=[m for m, (_, _, crop) in MODES.items() if not crop])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=16, help="text tokens around the image in the prompt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = build_config(args.preset)
    model = NanoOCR(config).to(args.device).eval()
    with torch.no_grad():  # random weights that do not predict one token forever (nanochat zero-inits lm_head)
        model.gpt.lm_head.weight.normal_(0, 3 / math.sqrt(config.gpt.n_embd))
    size = MODES[args.mode][0]
    n_img = image_token_count(config, size)
    prompt = list(range(1, args.text_tokens // 2 + 1)) + [config.image_token_id] * n_img + \
        list(range(1, args.text_tokens - args.text_tokens // 2 + 1))
    images = torch.randn(1, 3, size, size, device=args.device)
    engine = Engine(model)
    kw = dict(images=images, max_new_tokens=args.new_tokens, no_repeat_ngram=0)

    engine.generate([prompt], **{**kw, "max_new_tokens": 4})  # warm-up (allocator, kernels)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.encode_images(images)
        t_vision = time.perf_counter() - t0
    results = {}
    for name, use_cache in (("KV cache", True), ("recompute (no cache)", False)):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = engine.generate([prompt], use_cache=use_cache, **kw)[0]
        if args.device == "cuda":
            torch.cuda.synchronize()
        results[name] = (time.perf_counter() - t0, out)
    (t_cache, out_cache), (t_full, out_full) = results["KV cache"], results["recompute (no cache)"]
    assert len(out_cache) == args.new_tokens, f"generated {len(out_cache)} tokens, expected {args.new_tokens}"

    device = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"{cpu_model()}, {torch.get_num_threads()} torch threads"
    print(f"command: `python {' '.join(sys.argv)}`  ")
    print(f"machine: {device}, torch {torch.__version__}  ")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  ")
    print(f"model: preset {args.preset}, mode {args.mode} ({n_img} image tokens), prompt {len(prompt)} tokens, "
          f"{args.new_tokens} new tokens, greedy, fp32; same tokens: {'yes' if out_cache == out_full else 'NO'}\n")
    print("| decoding | seconds | tokens/s | speed-up |")
    print("|---|---:|---:|---:|")
    for name, (t, _) in results.items():
        print(f"| {name} | {t:.2f} | {args.new_tokens / t:.1f} | {t_full / t:.1f}x |")
    print(f"\nBoth include one vision encode + prefill; the vision encode alone took {t_vision:.2f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
