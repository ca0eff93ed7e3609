"""Export a trained model to a self-contained folder, and load it back without Composer.

    python -m nanoocr.export --checkpoint runs/x/checkpoints/latest-rank0.pt --config runs/x/config.yaml --out DIR

The checkpoint is monolithic (a `.pt` file) or sharded (FSDP `state_dict_type: sharded`: a folder of
`.distcp` files, or the `latest-rank0.pt` link to it).

DIR gets `model.safetensors` (NanoOCR state dict), `config.json` (the VLMConfig as nested dicts, plus the
image mode and prompt used in training) and `tokenizer.json` (or the tokenizer files). `load_model(DIR)`
rebuilds the model from those files alone.

Composer checkpoints are pickles: nanoocr.model.checkpoint opens them without running pickled code.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nanoocr.data.records import OCR_PROMPT


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict):
    from nanoocr.model.clip import CLIPConfig
    from nanoocr.model.gpt import GPTConfig
    from nanoocr.model.sam import SAMConfig
    from nanoocr.model.vlm import VLMConfig

    def make(cls, values):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"config.json: unknown {cls.__name__} keys {sorted(unknown)}")
        # JSON turns tuples into lists; give tuple-typed fields their tuples back.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    d = dict(d)
    return make(VLMConfig, {**d, "sam": make(SAMConfig, d["sam"]), "clip": make(CLIPConfig, d["clip"]),
                            "gpt": make(GPTConfig, d["gpt"])})


MAX_SEQUENCE_LEN = 1 << 18  # an export's rotary tables hold 10x this many positions
EXPORT_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer.tiktoken", "tiktoken.json")


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
    device and its shapes compared with the header's; only then are real tensors made and loaded."""
    import re

    from safetensors import safe_open

    from nanoocr.data.tokenizer import Tokenizer
    from nanoocr.model.pretrained import check_state_dict
    from nanoocr.model.vlm import NanoOCR
    directory = Path(directory)
    for name in ("model.safetensors", "config.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: missing {name} (not a nanoocr export folder)")
    meta = json.loads((directory / "config.json").read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise ValueError(f"{directory}/config.json: no 'model' section (not a nanoocr export)")
    with safe_open(directory / "model.safetensors", framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    cfg = config_from_dict(meta["model"])
    for field, count, pattern in (("sam.depth", cfg.sam.depth, r"sam\.blocks\.(\d+)\."),
                                  ("clip.layers", cfg.clip.layers, r"clip\.transformer\.layers\.(\d+)\."),
                                  ("gpt.n_layer", cfg.gpt.n_layer, r"gpt\.transformer\.h\.(\d+)\.")):
        in_file = len({m.group(1) for k in shapes if (m := re.match(pattern, k))})
        if count != in_file:
            raise ValueError(f"{directory}/config.json: model.{field} = {count} but model.safetensors holds "
                             f"{in_file} such blocks")
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
    # Whatever the run's tokenizer kind: tokenizer.json (BPE) or tokenizer.tiktoken + tiktoken.json
    # (a nanochat tokenizer, saved as text: no pickle in an export).
    tokenizer = Tokenizer.from_file(directory)
    return model.to(device).eval(), tokenizer, meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True,
                    help="a Composer checkpoint written by recipes/train.py: a .pt file or a sharded checkpoint folder")
    ap.add_argument("--config", help="the run's resolved config.yaml (default: next to the run folder)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
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
    model = build_model({**cfg["model"], "pretrained": {}}, tokenizer)
    missing, unexpected = model.load_state_dict(load_composer_state(ckpt), strict=False)
    if missing or unexpected:
        print(f"error: checkpoint does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}",
              file=sys.stderr)
        return 1
    try:
        export_model(model, tokenizer, args.out, mode=cfg["train_loader"]["dataset"].get("mode", "base"),
                     overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
