"""Export a trained model to a self-contained folder, and load it back without Composer.

    python -m nanoocr.export --checkpoint runs/x/checkpoints/latest-rank0.pt --config runs/x/config.yaml --out DIR
    python -m nanoocr.export --checkpoint ... --out DIR --layout released   (a DeepSeek-OCR model: the released layout)

The checkpoint is monolithic (a `.pt` file) or sharded (FSDP `state_dict_type: sharded`: a folder of
`.distcp` files, or the `latest-rank0.pt` link to it).

DIR gets `model.safetensors` (NanoOCR state dict), `config.json` (the VLMConfig as nested dicts, plus the
image mode and prompt used in training) and `tokenizer.json` (or the tokenizer files). `load_model(DIR)`
rebuilds the model from those files alone. LoRA adapters are merged into their weights first (in place: the
same outputs, plain Linears again), so an export holds the model's usual names and no adapter.

The released layout (`export_released`, a model with DeepSeek-OCR's decoder): what deepseek-ai/DeepSeek-OCR
publishes, so the fine-tuned model loads where the original does (vLLM's DeepseekOCRForCausalLM, the HF remote
code): `model-00001-of-000001.safetensors` + `model.safetensors.index.json` under the released key names
(docs/FACTS.md "DeepSeek-OCR checkpoint layout"), a `deepseek_vl_v2` config.json with the decoder fields at the
top level AND in `language_config`, the released tokenizer files, and the remote-code files (`*.py`,
processor_config.json) copied from the released folder the model was loaded from, when given. config.json also
carries a `nanoocr` block (the exact vision config, mode, prompt) that the other loaders ignore and
`load_model` reads back: `load_model` takes either layout.

Composer checkpoints are pickles: nanoocr.model.checkpoint opens them without running pickled code.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nanoocr.data.records import OCR_PROMPT


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict):
    from nanoocr.model.clip import CLIPConfig
    from nanoocr.model.sam import SAMConfig
    from nanoocr.model.vlm import DECODERS, VLMConfig

    def make(cls, values):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"config.json: unknown {cls.__name__} keys {sorted(unknown)}")
        # JSON turns tuples into lists; give tuple-typed fields their tuples back.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    d = dict(d)
    decoder = d.get("decoder", "gpt")
    if decoder not in DECODERS:
        raise ValueError(f"config.json: model.decoder {decoder!r} is not one of {sorted(DECODERS)}")
    return make(VLMConfig, {**d, "sam": make(SAMConfig, d["sam"]), "clip": make(CLIPConfig, d["clip"]),
                            "gpt": make(DECODERS[decoder][0], d["gpt"])})


MAX_SEQUENCE_LEN = 1 << 18  # an export's rotary tables hold 10x this many positions
MAX_EXPERTS = 4096  # bounds what an untrusted config.json builds (the released model has 64 per layer)
EXPORT_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer.tiktoken", "tiktoken.json")


def _merged(model):
    """The model with its LoRA adapters folded in (in place) and a config that says so (lora None)."""
    from nanoocr.model.lora import merge_lora
    if merge_lora(model):
        model.config = dataclasses.replace(model.config, lora=None)
    return model


def export_model(model, tokenizer, out: str | Path, mode: str = "base", prompt: str = OCR_PROMPT,
                 overwrite: bool = True) -> Path:
    """Write DIR/{model.safetensors, config.json, tokenizer files}. Never writes through a symlink; an existing
    export is replaced only with `overwrite` (the recipe's end-of-run export: yes; the CLI: --overwrite)."""
    out = Path(out)
    if out.is_symlink() or any((out / n).is_symlink() for n in EXPORT_FILES):
        raise ValueError(f"{out}: refusing to export through a symlink")
    if not overwrite and (out / "model.safetensors").exists():
        raise FileExistsError(f"{out} already holds an export (pass --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    model = _merged(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors")
    meta = {"model": config_to_dict(model.config), "mode": mode, "prompt": prompt}
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    tokenizer.save(out)
    print(f"[nanoocr] exported {sum(v.numel() for v in state.values()):,} parameters → {out}", flush=True)
    return out


def load_model(directory: str | Path, device: str = "cpu"):
    """→ (NanoOCR in eval mode, tokenizer, meta dict with 'mode' and 'prompt').

    An export may come from elsewhere: nothing is allocated until config.json is known to describe the
    tensors in model.safetensors. Its depths must equal the block counts in the file's header (so a config
    asking for 100000 layers is refused before any layer is built), then the model is built on the meta
    device and its shapes compared with the header's; only then are real tensors made and loaded.
    A released-layout folder (DeepSeek-OCR's, `export_released`) goes to `load_released`."""
    from safetensors import safe_open

    from nanoocr.data.tokenizer import Tokenizer
    from nanoocr.model.pretrained import check_state_dict
    from nanoocr.model.vlm import NanoOCR
    directory = Path(directory)
    if (directory / "config.json").is_file() and not (directory / "model.safetensors").is_file():
        meta = json.loads((directory / "config.json").read_text())
        if isinstance(meta, dict) and meta.get("model_type") == RELEASED_MODEL_TYPE:
            return load_released(directory, device=device)
    for name in ("model.safetensors", "config.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: missing {name} (not a nanoocr export folder)")
    meta = json.loads((directory / "config.json").read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise ValueError(f"{directory}/config.json: no 'model' section (not a nanoocr export)")
    with safe_open(directory / "model.safetensors", framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    cfg = config_from_dict(meta["model"])
    check_counts(cfg, shapes, f"{directory}/config.json", "model.", "model.safetensors")
    if not 0 < cfg.gpt.sequence_len <= MAX_SEQUENCE_LEN:  # sizes the rotary tables, which are not in the file
        raise ValueError(f"{directory}/config.json: model.gpt.sequence_len = {cfg.gpt.sequence_len} is outside "
                         f"1..{MAX_SEQUENCE_LEN}")
    with torch.device("meta"):
        model = NanoOCR(cfg)
    check_state_dict(model, shapes, f"{directory}/model.safetensors does not match config.json")
    # Every parameter and persistent buffer comes from the file; the rotary tables (non-persistent) are computed.
    model.to_empty(device="cpu")
    model.load_state_dict(load_file(directory / "model.safetensors"), strict=True)
    model.gpt.init_rotary()
    # Whatever the run's tokenizer kind: tokenizer.json (BPE, or DeepSeek-OCR's) or tokenizer.tiktoken +
    # tiktoken.json (a nanochat tokenizer, saved as text: no pickle in an export).
    tokenizer = Tokenizer.from_file(directory)
    return model.to(device).eval(), tokenizer, meta


def check_counts(cfg, shapes: dict, where: str, prefix: str, weights: str) -> None:
    """Before anything is built from an untrusted config: its block (and expert) counts must be those the weight
    file's header holds (`shapes`: our state-dict keys), so a config asking for 100000 layers is refused first."""
    deepseek = cfg.decoder == "deepseek"
    checks = [("sam.depth", cfg.sam.depth, r"sam\.blocks\.(\d+)\."),
              ("clip.layers", cfg.clip.layers, r"clip\.transformer\.layers\.(\d+)\."),
              ("gpt.n_layer", cfg.gpt.n_layer, r"gpt\.model\.layers\.(\d+)\." if deepseek else r"gpt\.transformer\.h\.(\d+)\.")]
    if deepseek:
        checks.append(("gpt.n_routed_experts", cfg.gpt.n_routed_experts if any(
            cfg.gpt.is_moe(i) for i in range(min(cfg.gpt.n_layer, 1 << 16))) else 0,
            r"gpt\.model\.layers\.\d+\.mlp\.experts\.(\d+)\."))
        if not 0 <= cfg.gpt.n_routed_experts <= MAX_EXPERTS:
            raise ValueError(f"{where}: {prefix}gpt.n_routed_experts = {cfg.gpt.n_routed_experts} is outside 0..{MAX_EXPERTS}")
    for field, count, pattern in checks:
        pattern = re.compile(pattern)
        in_file = len({m.group(1) for k in shapes if (m := pattern.match(k))})
        if count != in_file:
            raise ValueError(f"{where}: {prefix}{field} = {count} but {weights} holds {in_file} such blocks")


# ------------------------------------------------------------------------------------------------
# The released DeepSeek-OCR layout (docs/FACTS.md "DeepSeek-OCR checkpoint layout")

RELEASED_MODEL_TYPE = "deepseek_vl_v2"
RELEASED_WEIGHTS = "model-00001-of-000001.safetensors"
RELEASED_INDEX = "model.safetensors.index.json"
RELEASED_EXTRA = ("processor_config.json",)  # copied from the source folder with its *.py (the HF remote code)
# our state-dict prefix -> the released one (the decoder's names are already the released ones)
RELEASED_PREFIXES = (("sam.", "model.sam_model."), ("clip.", "model.vision_model."),
                     ("projector.", "model.projector.layers."), ("image_newline", "model.image_newline"),
                     ("view_separator", "model.view_seperator"), ("gpt.", ""))  # [sic] seperator
RELEASED_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def released_name(key: str) -> str:
    """Our state-dict key -> the released checkpoint's."""
    for ours, theirs in RELEASED_PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise ValueError(f"no released name for parameter {key!r}")


def released_config(cfg, dtype: str, mode: str, prompt: str) -> dict:
    """config.json of the released layout for VLMConfig `cfg`: the released file's structure (its vision and
    projector sections with this model's sizes), the decoder fields twice (top level: the HF remote code;
    language_config: vLLM), and a `nanoocr` block with what the released fields cannot say (nano-sized parts)."""
    from nanoocr.model.deepseek_decoder import hf_config
    decoder = hf_config(cfg.gpt)
    language = {"architectures": ["DeepseekV2ForCausalLM"],
                "auto_map": {"AutoConfig": "configuration_deepseekv2.DeepseekV2Config",
                             "AutoModel": "modeling_deepseek.DeepseekV2Model",
                             "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM"},
                **decoder, "torch_dtype": dtype}
    vision = {"image_size": 1024, "mlp_ratio": 3.7362, "model_name": "deeplip_b_l", "model_type": "vision",
              "width": {"clip-l-14-224": {"heads": cfg.clip.heads, "image_size": 224, "layers": cfg.clip.layers,
                                          "patch_size": 14, "width": cfg.clip.dim},
                        "sam_vit_b": {"downsample_channels": [cfg.sam.net2_dim, cfg.sam.out_chans],
                                      "global_attn_indexes": list(cfg.sam.global_attn_indexes),
                                      "heads": cfg.sam.num_heads, "layers": cfg.sam.depth, "width": cfg.sam.embed_dim}}}
    return {"candidate_resolutions": [[1024, 1024]], "global_view_pos": "head",
            "architectures": ["DeepseekOCRForCausalLM"],
            "auto_map": {"AutoConfig": "modeling_deepseekocr.DeepseekOCRConfig",
                         "AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM"},
            "language_config": language, "model_type": RELEASED_MODEL_TYPE,
            "projector_config": {"input_dim": cfg.clip.dim + cfg.sam.out_chans, "model_type": "mlp_projector",
                                 "n_embed": cfg.gpt.n_embd, "projector_type": "linear"},
            "tile_tag": "2D", "torch_dtype": dtype, "vision_config": vision, **decoder,
            "nanoocr": {"sam": dataclasses.asdict(cfg.sam), "clip": dataclasses.asdict(cfg.clip),
                        "image_token_id": cfg.image_token_id, "mode": mode, "prompt": prompt}}


def export_released(model, tokenizer, out: str | Path, source: str | Path | None = None, dtype: str = "bfloat16",
                    mode: str = "gundam", prompt: str = OCR_PROMPT, overwrite: bool = True) -> Path:
    """Write a NanoOCR with DeepSeek-OCR's decoder in the released layout (module docstring): weights in `dtype`
    (the released bfloat16 by default), LoRA merged first. `source`: the released folder the model came from;
    its remote-code files (*.py, processor_config.json) are copied so the HF remote code loads the export too."""
    from nanoocr.data.tokenizer import DeepseekTokenizer
    from nanoocr.model.deepseek_decoder import DeepseekDecoder
    out = Path(out)
    if not isinstance(model.gpt, DeepseekDecoder):
        raise ValueError(f"the released layout is DeepSeek-OCR's: this model's decoder is {type(model.gpt).__name__}")
    if not isinstance(tokenizer, DeepseekTokenizer):
        raise ValueError(f"the released layout needs DeepSeek-OCR's tokenizer, not a {type(tokenizer).__name__}")
    if dtype not in RELEASED_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(RELEASED_DTYPES)}, got {dtype!r}")
    if out.is_symlink() or any((out / n).is_symlink() for n in (RELEASED_WEIGHTS, RELEASED_INDEX, "config.json")):
        raise ValueError(f"{out}: refusing to export through a symlink")
    if not overwrite and (out / RELEASED_INDEX).exists():
        raise FileExistsError(f"{out} already holds an export (pass --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    model = _merged(model)
    to = RELEASED_DTYPES[dtype]
    state = {released_name(k): v.detach().to(to).contiguous().cpu() for k, v in model.state_dict().items()}
    # CLIP's patch conv: never used (SAM features are its patch tokens), so nanoocr does not build it, but the
    # released file has it and its loaders expect every parameter: written as zeros of the released shape.
    state["model.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(model.config.clip.dim, 3, 14, 14,
                                                                                dtype=to)
    save_file(state, out / RELEASED_WEIGHTS, metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
             "weight_map": {k: RELEASED_WEIGHTS for k in sorted(state)}}
    (out / RELEASED_INDEX).write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(released_config(model.config, dtype, mode, prompt), indent=2))
    tokenizer.save(out)
    copied = []
    if source is not None:
        src = Path(source) if Path(source).is_dir() else Path(source).parent
        for f in [*sorted(src.glob("*.py")), *(src / n for n in RELEASED_EXTRA)]:
            if f.is_file() and not f.is_symlink():
                shutil.copyfile(f, out / f.name)
                copied.append(f.name)
    print(f"[nanoocr] exported {sum(v.numel() for v in state.values()):,} parameters ({dtype}) in the released "
          f"DeepSeek-OCR layout → {out}" + (f"; copied {', '.join(copied)}" if copied else
                                            "; no remote-code files copied (vLLM needs none; the HF remote code "
                                            "needs the released *.py next to config.json)"), flush=True)
    return out


def load_released(directory: str | Path, device: str = "cpu"):
    """A released-layout DeepSeek-OCR folder (the original or an `export_released`) → (NanoOCR in eval mode,
    DeepseekTokenizer, meta with 'mode' and 'prompt'). The decoder config is config.json's (checked as
    `config_from_hf` does); the vision config its `nanoocr` block's, else the released SAM-B / CLIP-L. As in
    load_model, counts are checked against the weights' header and the model is built on the meta device and
    compared before any real tensor exists."""
    from safetensors import safe_open

    from nanoocr.data.tokenizer import load_deepseek_tokenizer
    from nanoocr.model import presets
    from nanoocr.model.deepseek_decoder import config_from_hf
    from nanoocr.model.pretrained import check_state_dict, load_deepseek_ocr
    from nanoocr.model.vlm import NanoOCR
    directory = Path(directory)
    hf = json.loads((directory / "config.json").read_text())
    if not isinstance(hf, dict) or hf.get("model_type") != RELEASED_MODEL_TYPE:
        raise ValueError(f"{directory}/config.json: model_type is not {RELEASED_MODEL_TYPE!r} (not the released layout)")
    ours = hf.get("nanoocr") if isinstance(hf.get("nanoocr"), dict) else {}
    decoder = dataclasses.asdict(config_from_hf(hf))
    cfg = presets.build_config("deepseek_ocr", sam=ours.get("sam") or {}, clip=ours.get("clip") or {},
                               gpt={k: v for k, v in decoder.items() if k not in ("attn_impl", "embed_impl")},
                               image_token_id=ours.get("image_token_id", presets.DEEPSEEK_IMAGE_ID))
    if (directory / RELEASED_INDEX).is_file():
        weight_map = json.loads((directory / RELEASED_INDEX).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = [RELEASED_WEIGHTS if (directory / RELEASED_WEIGHTS).is_file() else "model.safetensors"]
    shapes = {}
    for name in files:
        if Path(name).name != name:
            raise ValueError(f"{directory}/{RELEASED_INDEX}: weight file {name!r} is not a file name in the folder")
        with safe_open(directory / name, framework="pt") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    check_counts(cfg, {released_to_ours(k): v for k, v in shapes.items() if released_to_ours(k)},
                 f"{directory}/config.json", "", "the weights")
    if not 0 < cfg.gpt.sequence_len <= MAX_SEQUENCE_LEN:
        raise ValueError(f"{directory}/config.json: max_position_embeddings {cfg.gpt.sequence_len} is outside "
                         f"1..{MAX_SEQUENCE_LEN}")
    with torch.device("meta"):
        model = NanoOCR(cfg)
    want = {released_name(k): v for k, v in model.state_dict().items()}
    want["model.vision_model.embeddings.patch_embedding.weight"] = shapes.get(
        "model.vision_model.embeddings.patch_embedding.weight", (cfg.clip.dim, 3, 14, 14))
    check_state_dict(want, shapes, f"{directory}: the weights do not match config.json")
    model.to_empty(device="cpu")
    load_deepseek_ocr(model, directory)
    model.gpt.init_rotary()
    meta = {"mode": ours.get("mode", "gundam"), "prompt": ours.get("prompt", OCR_PROMPT)}
    return model.to(device).eval(), load_deepseek_tokenizer(directory), meta


def released_to_ours(key: str) -> str | None:
    """The released checkpoint's key -> our state-dict key (None: unused by design, CLIP's patch conv)."""
    if key.startswith("model.vision_model.embeddings.patch_embedding."):
        return None
    for ours, theirs in RELEASED_PREFIXES[:-1]:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return "gpt." + key


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True,
                    help="a Composer checkpoint written by recipes/train.py: a .pt file or a sharded checkpoint folder")
    ap.add_argument("--config", help="the run's resolved config.yaml (default: next to the run folder)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    ap.add_argument("--layout", choices=("nanoocr", "released"), default="nanoocr",
                    help="released: DeepSeek-OCR's own layout (a model with its decoder), for vLLM / the HF remote code")
    ap.add_argument("--dtype", choices=sorted(RELEASED_DTYPES), default="bfloat16",
                    help="weight dtype of the released layout (the released model's: bfloat16)")
    ap.add_argument("--source", help="the released DeepSeek-OCR folder whose remote-code files to copy "
                                     "(default: the run's model.pretrained.deepseek)")
    args = ap.parse_args(argv)
    from omegaconf import OmegaConf as om

    from nanoocr.model.checkpoint import load_composer_state
    from nanoocr.train.build import build_model, build_tokenizer
    ckpt = Path(args.checkpoint)
    cfg_path = Path(args.config) if args.config else next(
        (p / "config.yaml" for p in ckpt.resolve().parents if (p / "config.yaml").is_file()), None)
    if cfg_path is None or not cfg_path.is_file():
        print(f"error: no config.yaml found above {ckpt}; pass --config", file=sys.stderr)
        return 2
    cfg = om.to_container(om.load(cfg_path), resolve=True)
    run_folder = cfg.get("run_folder") or str(cfg_path.parent)
    tokenizer = build_tokenizer(cfg.get("tokenizer") or {}, run_folder, [])
    model = build_model({**cfg["model"], "pretrained": {}}, tokenizer)  # with the run's LoRA adapters, if any
    missing, unexpected = model.load_state_dict(load_composer_state(ckpt), strict=False)
    if missing or unexpected:
        print(f"error: checkpoint does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}",
              file=sys.stderr)
        return 1
    mode = cfg["train_loader"]["dataset"].get("mode", "base")
    try:
        if args.layout == "released":
            source = args.source or ((cfg["model"].get("pretrained") or {}).get("deepseek"))
            export_released(model, tokenizer, args.out, source=source, dtype=args.dtype, mode=mode,
                            overwrite=args.overwrite)
        else:
            export_model(model, tokenizer, args.out, mode=mode, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
