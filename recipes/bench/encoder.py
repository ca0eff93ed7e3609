"""Vision-encoder forward time: nanoocr (SAM -> CLIP) vs the transformers modules with the same weights.

    python recipes/bench/encoder.py [--size 1024] [--runs 3] [--warmup 1] [--threads N] [--tiny]

Both sides do the same work on the same pixels, batch 1, fp32, torch.inference_mode():
  ours: SAMEncoder.forward (blocks, neck, net_2, net_3) -> CLIPEncoder.forward
  HF:   SamVisionEncoder (blocks + neck) -> our net_2/net_3 convs -> CLS + positions (HF's tables)
        -> CLIPVisionModel's pre_layrnorm + encoder
The HF models get random weights (normal 0.02, random rel-pos tables), are saved with save_pretrained and
loaded into ours through nanoocr.model.pretrained, so the outputs must agree (asserted). Timings are the
median of --runs interleaved runs after --warmup runs per side; the table is Markdown for BENCHMARKS.md.
--tiny runs the same comparison at toy widths and 128 px (TINY below), a smoke run in seconds
(tests/test_bench_smoke.py).
"""
from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import tempfile
import time

import torch

from nanoocr.model.clip import CLIPConfig, CLIPEncoder, resize_positions
from nanoocr.model.pretrained import load_hf_clip, load_hf_sam
from nanoocr.model.sam import SAMConfig, SAMEncoder

# Toy widths with the real geometry (patch 16, windows, a global block, the 4x compressor): 128 px -> a
# 2 x 2 CLIP grid (4 positions + CLS).
TINY = (SAMConfig(img_size=128, embed_dim=32, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,),
                  neck_dim=16, net2_dim=16, out_chans=32, pos_embed_grid=8),
        CLIPConfig(dim=32, layers=1, heads=2, mlp_dim=64, num_positions=5))


def build_hf(tmp: str, sam_cfg: SAMConfig, clip_cfg: CLIPConfig):
    """The transformers SAM vision model and CLIP vision model of the same sizes (defaults: ViT-B, CLIP-L/14)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, SamVisionConfig
    from transformers.models.sam.modeling_sam import SamVisionModel

    torch.manual_seed(0)
    sam = SamVisionModel(SamVisionConfig(
        hidden_size=sam_cfg.embed_dim, output_channels=sam_cfg.neck_dim, num_hidden_layers=sam_cfg.depth,
        num_attention_heads=sam_cfg.num_heads, image_size=sam_cfg.img_size, patch_size=sam_cfg.patch_size,
        window_size=sam_cfg.window_size, global_attn_indexes=list(sam_cfg.global_attn_indexes),
        mlp_ratio=sam_cfg.mlp_ratio, layer_norm_eps=sam_cfg.norm_eps)).eval()
    side = math.isqrt(clip_cfg.num_positions - 1)  # CLIP's patch grid; HF derives it from image / patch size
    clip = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=clip_cfg.dim, intermediate_size=clip_cfg.mlp_dim, num_hidden_layers=clip_cfg.layers,
        num_attention_heads=clip_cfg.heads, image_size=14 * side, patch_size=14, hidden_act=clip_cfg.act,
        layer_norm_eps=clip_cfg.norm_eps)).eval()
    with torch.no_grad():
        for model in (sam, clip):
            for name, p in model.named_parameters():
                if "norm" in name:  # LayerNorm: keep it near identity so activations stay O(1)
                    p.copy_(1.0 + 0.02 * torch.randn_like(p) if name.endswith("weight") else 0.02 * torch.randn_like(p))
                else:
                    p.normal_(0.0, 0.02)
    sam.save_pretrained(f"{tmp}/sam")
    clip.save_pretrained(f"{tmp}/clip")
    return sam.vision_encoder, clip.vision_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=None, help="input side (default: the SAM config's, 1024)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="toy widths at 128 px: a smoke run")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sam_cfg, clip_cfg = TINY if args.tiny else (SAMConfig(), CLIPConfig())
    args.size = args.size or sam_cfg.img_size
    assert args.size == sam_cfg.img_size, f"HF SamVisionEncoder only accepts its configured {sam_cfg.img_size} px input"

    with tempfile.TemporaryDirectory() as tmp:
        hf_sam, hf_clip = build_hf(tmp, sam_cfg, clip_cfg)
        sam, clip = SAMEncoder(sam_cfg).eval(), CLIPEncoder(clip_cfg).eval()
        load_hf_sam(sam, f"{tmp}/sam")
        load_hf_clip(clip, f"{tmp}/clip")

    def run_hf(pixels):
        feats = hf_sam(pixels).last_hidden_state  # (1, 256, 64, 64) at full size
        feats = sam.net_3(sam.net_2(feats))  # (1, 1024, 16, 16): the compressor, same work on both sides
        B, D, h, w = feats.shape
        emb = hf_clip.embeddings
        x = torch.cat([emb.class_embedding.expand(B, 1, D), feats.flatten(2).transpose(1, 2)], dim=1)
        x = x + resize_positions(emb.position_embedding.weight, (h, w))  # CLIP's own grid: the table as is
        out = hf_clip.encoder(inputs_embeds=hf_clip.pre_layrnorm(x)).last_hidden_state
        return feats, out

    def run_ours(pixels):
        feats = sam(pixels)
        return feats, clip(feats)

    torch.manual_seed(1)
    pixels = torch.rand(1, 3, args.size, args.size) * 2 - 1
    times = {"nanoocr": [], "transformers": []}
    with torch.inference_mode():
        for _ in range(args.warmup):
            ours_out, hf_out = run_ours(pixels), run_hf(pixels)
        for _ in range(args.runs):  # interleaved so that load changes on the shared machine hit both sides
            for name, fn in (("nanoocr", run_ours), ("transformers", run_hf)):
                t0 = time.perf_counter()
                fn(pixels)
                times[name].append(time.perf_counter() - t0)

    for (a, b), what in zip(zip(ours_out, hf_out), ("SAM+compressor", "CLIP")):
        err = (a - b).abs().max().item() / b.abs().max().item()
        assert err < 1e-4, f"{what} output differs from transformers: max rel error {err:.2e}"
        print(f"{what} output matches transformers: max abs diff / max abs = {err:.1e}")

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n| encoder forward, {args.size}x{args.size}, batch 1, fp32, CPU | median s | runs |")
    print("|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in v)} |")
    # On a shared machine the load drifts between runs; the median of the per-pair ratios (each pair
    # ran back to back) is the steadier figure, the ratio of medians is shown too.
    pairs = statistics.median(a / b for a, b in zip(times["nanoocr"], times["transformers"]))
    print(f"\nratio nanoocr / transformers: {med['nanoocr'] / med['transformers']:.3f} (ratio of medians), "
          f"{pairs:.3f} (median of per-pair ratios)  "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"HF attention: {hf_sam.config._attn_implementation} / {hf_clip.config._attn_implementation}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
