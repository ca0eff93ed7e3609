"""
Model presets: named VLMConfigs, with overrides.

    build_config("full")                                        SAM-B + CLIP-L + nanochat d20 (~961M)
    build_config("nano", gpt={"vocab_size": 512})               tests and Tier-1 from scratch on CPU
    build_config("nano", image_token_id=7, sam={"depth": 3})    unknown keys are errors naming the key
    build_config("deepseek_ocr")                                the released DeepSeek-OCR (3.34B, MoE decoder)
    build_config("deepseek_ocr_tiny")                           its structure at test size (released ids)

Every preset keeps patch 16 and the 4x-per-side compressor, so image-token counts are the same as
DeepSeek-OCR's (73 / 111 / 273 / 421, Gundam 273 + ...) whatever the widths. `image_token_id`
defaults to the last id of the vocabulary, where the tokenizer appends `<|image|>`; the DeepSeek presets
use the released tokenizer's `<image>` id, 128815 (docs/FACTS.md "DeepSeek-OCR decoder").
"""

import dataclasses

from nanoocr.model.clip import CLIPConfig
from nanoocr.model.sam import SAMConfig
from nanoocr.model.vlm import DECODERS, VLMConfig

DEEPSEEK_IMAGE_ID = 128815  # `<image>` in the released tokenizer

# The nano preset's vision parts (tiny widths, the real geometry), shared by nano and deepseek_ocr_tiny.
NANO_SAM = dict(embed_dim=64, depth=2, num_heads=1, window_size=14, global_attn_indexes=(1,),
                neck_dim=64, net2_dim=128, out_chans=128)
NANO_CLIP = dict(dim=128, layers=2, heads=2, mlp_dim=512)

PRESETS = {
    # Tiny widths but the real geometry: patch 16, window 14, a global block, 64x64 pos table, the
    # two stride-2 convs. Base mode (1024 px), batch 10, forward+backward: a few seconds on 2 CPU cores.
    "nano": dict(
        sam=NANO_SAM,
        clip=NANO_CLIP,
        gpt=dict(sequence_len=2048, vocab_size=4096, n_layer=4, n_head=4, n_kv_head=4, n_embd=256),
    ),
    # A larger CPU-sized model for MFU / throughput measurements (matmuls big enough to be efficient).
    "small": dict(
        sam=dict(embed_dim=256, depth=4, num_heads=4, window_size=14, global_attn_indexes=(1, 3),
                 neck_dim=128, net2_dim=256, out_chans=256),
        clip=dict(dim=256, layers=4, heads=4, mlp_dim=1024),
        gpt=dict(sequence_len=2048, vocab_size=8192, n_layer=8, n_head=8, n_kv_head=8, n_embd=512),
    ),
    # DeepEncoder's real widths (SAM-B 768/12 heads with its neck, CLIP-L 1024/16 heads) at 4 layers each,
    # and a 1024-wide GPT: the largest model that trains on a 2-core CPU box in seconds per sample, and
    # the shapes whose matmul efficiency carries over to `full` (recipes/bench/mfu.py).
    "medium": dict(
        sam=dict(embed_dim=768, depth=4, num_heads=12, window_size=14, global_attn_indexes=(1, 3)),
        clip=dict(dim=1024, layers=4, heads=16, mlp_dim=4096),
        gpt=dict(sequence_len=2048, vocab_size=8192, n_layer=8, n_head=8, n_kv_head=8, n_embd=1024),
    ),
    # DeepSeek-OCR's DeepEncoder + nanochat d20. sequence_len 2048 is what d20 was trained with, so its
    # meta json maps 1:1; the field only sizes the rotary table (10x = 20480 positions), so stage 1's
    # 4096 and stage 2's 8192-token sequences fit without changing the checkpoint's config.
    "full": dict(
        sam=dict(),  # SAMConfig defaults are SAM ViT-B
        clip=dict(),  # CLIPConfig defaults are CLIP-L/14
        gpt=dict(sequence_len=2048, vocab_size=65537, n_layer=20, n_head=10, n_kv_head=10, n_embd=1280),
    ),
    # The released deepseek-ai/DeepSeek-OCR: SAM-B + CLIP-L + its MoE decoder (DeepseekDecoderConfig's defaults
    # are the released ones: 12 layers, 1280 wide, 64 routed experts top-6 + 2 shared). 3.34B parameters.
    # With `pretrained.deepseek` the decoder fields come from the checkpoint's config.json (nanoocr.train.build).
    "deepseek_ocr": dict(decoder="deepseek", image_token_id=DEEPSEEK_IMAGE_ID, sam=dict(), clip=dict(), gpt=dict()),
    # Its structure at test size: nano's vision, a 3-layer decoder (layer 0 dense, 2 MoE layers of 8 experts,
    # top-2, 1 shared) over a vocabulary that holds the released special ids (up to 128826).
    "deepseek_ocr_tiny": dict(
        decoder="deepseek", image_token_id=DEEPSEEK_IMAGE_ID, sam=NANO_SAM, clip=NANO_CLIP,
        gpt=dict(vocab_size=128832, n_embd=64, n_layer=3, n_head=4, n_kv_head=4, sequence_len=2048,
                 intermediate_size=96, moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
                 num_experts_per_tok=2),
    ),
}


def build_config(name, **overrides):
    """VLMConfig of preset `name`; overrides: sam=/clip=/gpt= dicts of fields, or top-level fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    top_fields = {f.name for f in dataclasses.fields(VLMConfig)}
    for key in overrides:
        if key not in top_fields:
            raise ValueError(f"unknown model config key {key!r}; expected one of {sorted(top_fields)}")
    preset = PRESETS[name]
    decoder = overrides.get("decoder") or preset.get("decoder", "gpt")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {sorted(DECODERS)}")
    parts = {}
    for sub, cls in {"sam": SAMConfig, "clip": CLIPConfig, "gpt": DECODERS[decoder][0]}.items():
        extra = overrides.get(sub) or {}
        if dataclasses.is_dataclass(extra):
            extra = dataclasses.asdict(extra)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in extra:
            if key not in known:
                raise ValueError(f"unknown {sub} config key {key!r}; expected one of {sorted(known)}")
        parts[sub] = cls(**{**preset[sub], **extra})
    rest = {k: v for k, v in overrides.items() if k not in parts}
    rest["decoder"] = decoder
    rest.setdefault("image_token_id", preset.get("image_token_id", parts["gpt"].vocab_size - 1))  # else the last id
    return VLMConfig(**parts, **rest)
