"""Vision-encoder forward time: nanoocr (SAM -> CLIP) vs the transformers modules with the same weights.

    python recipes/bench/encoder.py [--size 1024] [--runs 3] [--warmup 1] [--threads N]

Both sides do the same work on the same pixels, batch 1, fp32, torch.inference_mode():
  ours: SAMEncoder.forward (blocks, neck, net_2, net_3) -> CLIPEncoder.forward
  HF:   SamVisionEncoder (blocks + neck) -> our net_2/net_3 convs -> CLS + positions (HF's tables)
        -> CLIPVisionModel's pre_layrnorm + encoder
The HF models get random weights (normal 0.02, random rel-pos tables), are saved with save_pretrained and
loaded into ours through nanoocr.model.pretrained, so the outputs must agree (asserted). Timings are the
median of --runs interleaved runs after --warmup runs per side; the table is Markdown for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
import time

import torch

from nanoocr.model.clip import CLIPConfig, CLIPEncoder, resize_positions
from nanoocr.model.pretrained import load_hf_clip, load_hf_sam
from nanoocr.model.sam import SAMConfig, SAMEncoder


def build_hf(tmp: str):
    from transformers import CLIPVisionConfig, CLIPVisionModel, SamVisionConfig
    from transformers.models.sam.modeling_sam import SamVisionModel

    torch.manual_seed(0)
    sam = SamVisionModel(SamVisionConfig()).eval()  # defaults = ViT-B: 768 wide, 12 layers, window 14
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                            num_attention_heads=16, image_size=224, patch_size=14,
                                            hidden_act="quick_gelu", layer_norm_eps=1e-5)).eval()
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    assert args.size == 1024, "HF SamVisionEncoder only accepts its configured 1024 px input"

    with tempfile.TemporaryDirectory() as tmp:
        hf_sam, hf_clip = build_hf(tmp)
        sam, clip = SAMEncoder(SAMConfig()).eval(), CLIPEncoder(CLIPConfig()).eval()
        load_hf_sam(sam, f"{tmp}/sam")
        load_hf_clip(clip, f"{tmp}/clip")

    def run_hf(pixels):
        feats = hf_sam(pixels).last_hidden_state  # (1, 256, 64, 64)
        feats = sam.net_3(sam.net_2(feats))  # (1, 1024, 16, 16): the compressor, same work on both sides
        B, D, h, w = feats.shape
        emb = hf_clip.embeddings
        x = torch.cat([emb.class_embedding.expand(B, 1, D), feats.flatten(2).transpose(1, 2)], dim=1)
        x = x + resize_positions(emb.position_embedding.weight, (h, w))  # 16x16 grid: the table as is
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


if __name__ == "__main__":
    main()
