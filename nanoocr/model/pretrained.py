"""Pretrained-weight loaders for the vision encoder (SAM, CLIP) and the official DeepSeek-OCR vision weights.

    load_hf_sam(sam, path)            transformers SamModel (`vision_encoder.*`) or a bare SamVisionEncoder save
    load_hf_clip(clip, path)          transformers CLIPVisionModel / CLIPModel (`vision_model.*`), q/k/v fused
    load_deepseek_vision(vlm, path)   official DeepSeek-OCR checkpoint: SAM, CLIP, projector, newline, separator
    load_deepseek_ocr(vlm, path)      the whole released DeepSeek-OCR (vision + MoE decoder) into a deepseek preset

Notable features:
- `path` is a .safetensors file, a torch file (.pt/.pth/.bin, read with weights_only=True), or a
  directory as written by HF `save_pretrained` (model.safetensors, sharded model.safetensors.index.json,
  or pytorch_model.bin[.index.json]). From sharded safetensors only the needed tensors are read, so
  loading the vision part of a 3B-parameter checkpoint does not read the language model.
- Every loader returns a `LoadReport` (loaded count, missing, unexpected, notes) and prints a summary;
  `nanoocr.model.nanochat` returns the same report (with the checkpoint's step and layout generation).
- `check_state_dict` is the one comparison of a model with a set of tensors (missing, unexpected, wrong
  shapes, all named in one error): nanochat's loader and `nanoocr.train.export.load_model` use it as is;
  the vision loaders here use its `state_dict_diff` but load PARTIALLY on purpose (SAM checkpoints lack
  net_2/net_3), so for them only a shape mismatch always raises and `strict` decides about the rest.
  Nothing is silently dropped: keys that are unused by design (CLIP's patch conv and post-layernorm,
  position_ids) are listed in the notes; keys of other parts (SAM prompt encoder, CLIP text tower, the
  LM) are counted in the notes; net_2/net_3, absent from SAM checkpoints, are reported as missing.
- A shape mismatch raises ValueError naming the checkpoint key, our key and both shapes. With
  strict=True (default) unexpected keys or missing keys other than the known-absent ones also raise.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn


@dataclass
class LoadReport:
    """What a pretrained-weight loader did (every loader: the vision ones here and nanochat's)."""
    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # our parameter names left untouched
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys in the loaded namespace we could not place
    notes: list[str] = field(default_factory=list)
    step: int | None = None  # a nanochat checkpoint's training step
    generation: str | None = None  # a nanochat checkpoint's layout: "d20" | "2026"

    def summary(self) -> str:
        where = self.source if self.step is None else f"{self.source} (step {self.step}, {self.generation} layout)"
        lines = [f"loaded {self.loaded} tensors from {where}; "
                 f"missing {len(self.missing)}; unexpected {len(self.unexpected)}"]
        if self.missing:
            lines.append(f"  missing: {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected: {', '.join(self.unexpected)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Comparing a model with a state dict

def _shapes(tensors) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a module's state dict, or of a {key: tensor | shape} map (e.g. a safetensors header)."""
    if isinstance(tensors, nn.Module):
        tensors = tensors.state_dict()
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in tensors.items()}


def state_dict_diff(ours, theirs) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong_shape) keys, each sorted: `ours` (a module, or {key: tensor | shape}) against
    `theirs` ({key: tensor | shape}, what a file holds)."""
    ours, theirs = _shapes(ours), _shapes(theirs)
    return (sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours)),
            sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k]))


def _listed(keys: list[str], most: int = 8) -> str:
    return str(keys) if len(keys) <= most else f"{keys[:most]} and {len(keys) - most} more"


def check_state_dict(ours, theirs, what: str) -> None:
    """ValueError naming every difference (wrong shapes first, then missing and unexpected keys) unless
    `theirs` has exactly the keys and shapes of `ours` (arguments as `state_dict_diff`). Nothing is loaded here:
    a caller that checks first loads either every tensor or none."""
    missing, unexpected, wrong = state_dict_diff(ours, theirs)
    if not (missing or unexpected or wrong):
        return
    ours, theirs = _shapes(ours), _shapes(theirs)
    parts = [f"shape mismatch for {k}: checkpoint {theirs[k]} vs model {ours[k]}" for k in wrong[:3]]
    if len(wrong) > 3:
        parts.append(f"and {len(wrong) - 3} more shape mismatches")
    if missing or unexpected:
        parts.append(f"missing keys {_listed(missing)}, unexpected keys {_listed(unexpected)}")
    raise ValueError(f"{what}: " + "; ".join(parts))


# ------------------------------------------------------------------------------------------------
# Reading checkpoints

def _torch_file(path: Path) -> dict[str, torch.Tensor]:
    from nanoocr.model.checkpoint import torch_load_safe  # weights only; a pickle with code is refused by name
    sd = torch_load_safe(path)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a flat dict of tensors (a state dict)")
    return sd


def read_checkpoint(path: str | Path, want=lambda key: True) -> tuple[dict[str, torch.Tensor], int]:
    """Tensors whose key satisfies `want`, and the number of keys that were skipped (not read when possible)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors[.index.json] or pytorch_model.bin[.index.json]")
    if path.name.endswith(".index.json"):
        weight_map: dict[str, str] = json.loads(path.read_text())["weight_map"]
        keys = [k for k in weight_map if want(k)]
        out: dict[str, torch.Tensor] = {}
        for shard in sorted({weight_map[k] for k in keys}):
            shard_keys = [k for k in keys if weight_map[k] == shard]
            if shard.endswith(".safetensors"):
                with safe_open(path.parent / shard, framework="pt") as f:
                    out.update({k: f.get_tensor(k) for k in shard_keys})
            else:
                sd = _torch_file(path.parent / shard)
                out.update({k: sd[k] for k in shard_keys})
        return out, len(weight_map) - len(keys)
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as f:
            all_keys = list(f.keys())
            out = {k: f.get_tensor(k) for k in all_keys if want(k)}
        return out, len(all_keys) - len(out)
    sd = _torch_file(path)
    out = {k: v for k, v in sd.items() if want(k)}
    return out, len(sd) - len(out)


def _assign(own: dict[str, torch.Tensor], tensors: dict[str, tuple[str, torch.Tensor]], report: LoadReport,
            known_absent: tuple[str, ...] = ()) -> None:
    """Copy {our_key: (checkpoint_key, tensor)} into `own` (a module's state_dict(keep_vars=True), or named
    parameters); fill loaded/missing/unexpected on the report. A wrong shape raises before anything is copied."""
    missing, unexpected, wrong = state_dict_diff(own, {k: t for k, (_, t) in tensors.items()})
    if wrong:
        ours = wrong[0]
        theirs, t = tensors[ours]
        raise ValueError(f"shape mismatch for {theirs} -> {ours}: checkpoint {tuple(t.shape)} "
                         f"vs model {tuple(own[ours].shape)}" + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
    report.unexpected += [tensors[k][0] for k in unexpected]
    with torch.no_grad():
        for ours, (_, t) in tensors.items():
            if ours in own:
                own[ours].copy_(t.to(own[ours].dtype))
                report.loaded += 1
    missing = set(missing)
    report.missing += [k for k in own if k in missing]  # in the model's order
    absent = [k for k in report.missing if k.startswith(known_absent)] if known_absent else []
    if absent:
        report.notes.append(f"not in this checkpoint, left at random init: {', '.join(absent)}")


def _finish(report: LoadReport, name: str, strict: bool, allowed_missing: tuple[str, ...] = ()) -> LoadReport:
    print(f"[{name}] " + report.summary())
    bad_missing = [k for k in report.missing if not k.startswith(allowed_missing)] if allowed_missing \
        else list(report.missing)
    if strict and (bad_missing or report.unexpected):
        raise ValueError(f"{name} from {report.source}: missing {bad_missing}, unexpected {report.unexpected}")
    return report


# ------------------------------------------------------------------------------------------------
# HF SAM (transformers SamModel / SamVisionModel / SamVisionEncoder)

# HF name (after the vision_encoder. prefix) -> our (official DeepSeek-OCR) name; first match wins.
SAM_HF_RENAMES = [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.", r"blocks.\1."),  # attn.qkv, attn.proj, attn.rel_pos_h/w, mlp.lin1/lin2 keep their names
    (r"^neck\.conv1\.", "neck.0."),
    (r"^neck\.layer_norm1\.", "neck.1."),
    (r"^neck\.conv2\.", "neck.2."),
    (r"^neck\.layer_norm2\.", "neck.3."),
]


def _rename(key: str, renames) -> str:
    for pattern, repl in renames:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def load_hf_sam(sam: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a transformers SAM vision encoder into SAMEncoder; net_2/net_3 keep their random init.

    SamModel and SamVisionModel saves prefix the encoder with `vision_encoder.`; a SamVisionEncoder
    save has bare keys (patch_embed.*, layers.*, neck.*, pos_embed)."""
    tensors, _ = read_checkpoint(path, want=lambda k: True)
    prefix = "vision_encoder." if any(k.startswith("vision_encoder.") for k in tensors) else ""
    report = LoadReport(source=str(path))
    others = [k for k in tensors if not k.startswith(prefix)]
    if others:
        report.notes.append(f"{len(others)} keys outside `{prefix}` ignored (SAM prompt encoder / mask decoder)")
    mapped = {}
    for key, t in tensors.items():
        if key.startswith(prefix):
            mapped[_rename(key[len(prefix):], SAM_HF_RENAMES)] = (key, t)
    _assign(dict(sam.state_dict(keep_vars=True)), mapped, report, known_absent=("net_2.", "net_3."))
    return _finish(report, "load_hf_sam", strict, allowed_missing=("net_2.", "net_3."))


# ------------------------------------------------------------------------------------------------
# HF CLIP (transformers CLIPVisionModel, or a full CLIPModel: the text tower is ignored)

# Unused by design: the patch conv (SAM features replace patches), the post-layernorm (DeepSeek-OCR uses
# the last hidden state), position_ids (an arange buffer).
CLIP_IGNORED = ("embeddings.patch_embedding.", "post_layernorm.", "embeddings.position_ids")


def load_hf_clip(clip: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load transformers CLIP vision weights into CLIPEncoder, fusing q/k/v into qkv_proj (rows q | k | v)."""
    tensors, _ = read_checkpoint(path)
    prefix = "vision_model."
    report = LoadReport(source=str(path))
    others = [k for k in tensors if not k.startswith(prefix)]
    if others:
        report.notes.append(f"{len(others)} keys outside `{prefix}` ignored (text tower / projections)")
    vision = {k[len(prefix):]: (k, t) for k, t in tensors.items() if k.startswith(prefix)}
    ignored = sorted(theirs for k, (theirs, _) in vision.items() if k.startswith(CLIP_IGNORED))
    if ignored:
        report.notes.append(f"unused by design, not loaded: {', '.join(ignored)}")
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    qkv_parts: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, (theirs, t) in vision.items():
        if key.startswith(CLIP_IGNORED):
            continue
        m = re.match(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key)
        if m:
            qkv_parts.setdefault((m[1], m[3]), {})[m[2]] = (theirs, t)
            continue
        mapped[re.sub(r"^encoder\.", "transformer.", key)] = (theirs, t)
    for (layer, kind), parts in qkv_parts.items():
        if set(parts) != {"q", "k", "v"}:
            report.unexpected += [theirs for theirs, _ in parts.values()]  # an incomplete q/k/v set cannot be fused
            continue
        fused = torch.cat([parts[c][1] for c in "qkv"], dim=0)  # (3D, D) or (3D,)
        name = f"vision_model.encoder.layers.{layer}.self_attn.{{q,k,v}}_proj.{kind}"
        mapped[f"transformer.layers.{layer}.self_attn.qkv_proj.{kind}"] = (name, fused)
    _assign(dict(clip.state_dict(keep_vars=True)), mapped, report)
    return _finish(report, "load_hf_clip", strict)


# ------------------------------------------------------------------------------------------------
# Official DeepSeek-OCR checkpoint (vision part)

# official prefix -> (attribute of the model, rename applied to the rest of the key)
DEEPSEEK_PREFIXES = {
    "model.sam_model.": "sam",
    "model.vision_model.": "clip",
    "model.projector.layers.": "projector",
}
DEEPSEEK_PARAMS = {"model.image_newline": "image_newline", "model.view_seperator": "view_separator"}  # [sic]


def _is_deepseek_vision(key: str) -> bool:
    return key.startswith(tuple(DEEPSEEK_PREFIXES)) or key in DEEPSEEK_PARAMS


def _place_deepseek_vision(model: nn.Module, tensors: dict[str, torch.Tensor], report: LoadReport) -> None:
    """Copy official vision tensors (keys as the released checkpoint) into model.{sam, clip, projector,
    image_newline, view_separator}; fill the report (our missing names prefixed by the part)."""
    per_part: dict[str, dict[str, tuple[str, torch.Tensor]]] = {a: {} for a in DEEPSEEK_PREFIXES.values()}
    ignored = []
    for key, t in tensors.items():
        if key in DEEPSEEK_PARAMS:
            continue
        prefix = next(p for p in DEEPSEEK_PREFIXES if key.startswith(p))
        rest = key[len(prefix):]
        if prefix == "model.vision_model." and rest.startswith(CLIP_IGNORED):
            ignored.append(key)
            continue
        per_part[DEEPSEEK_PREFIXES[prefix]][rest] = (key, t)
    if ignored:
        report.notes.append(f"unused by design, not loaded: {', '.join(sorted(ignored))}")
    for attr, part in per_part.items():
        sub = LoadReport(source=report.source)
        _assign(dict(getattr(model, attr).state_dict(keep_vars=True)), part, sub)
        report.loaded += sub.loaded
        report.missing += [f"{attr}.{k}" for k in sub.missing]
        report.unexpected += sub.unexpected
    params = {attr: getattr(model, attr) for attr in DEEPSEEK_PARAMS.values()}
    _assign(params, {attr: (key, tensors[key]) for key, attr in DEEPSEEK_PARAMS.items() if key in tensors}, report)


def load_deepseek_vision(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load official DeepSeek-OCR vision weights into model.{sam, clip, projector, image_newline, view_separator}.

    Only the vision keys are read; the language-model keys are counted in the notes."""
    tensors, skipped = read_checkpoint(path, want=_is_deepseek_vision)
    report = LoadReport(source=str(path))
    if skipped:
        report.notes.append(f"{skipped} non-vision keys (language model) not read")
    _place_deepseek_vision(model, tensors, report)
    return _finish(report, "load_deepseek_vision", strict)


def load_deepseek_ocr(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """The whole released DeepSeek-OCR checkpoint (a folder with model.safetensors[.index.json], or the file) into
    a NanoOCR whose decoder is DeepSeek's (`decoder: deepseek`): vision parts and decoder, one LoadReport.

    The decoder's keys are the released ones under `gpt.` (`model.layers.N...` -> `gpt.model.layers.N...`);
    a key that is neither vision nor decoder is unexpected (strict: an error), as is any missing one.
    A shape mismatch always raises, before anything is copied into that part."""
    from nanoocr.model.deepseek_decoder import DeepseekDecoder, is_decoder_key
    if not isinstance(getattr(model, "gpt", None), DeepseekDecoder):
        raise ValueError(f"load_deepseek_ocr: the model's decoder is {type(getattr(model, 'gpt', None)).__name__}, "
                         "not DeepSeek-OCR's (use a deepseek_ocr preset, or load_deepseek_vision for the vision parts)")
    tensors, _ = read_checkpoint(path)
    report = LoadReport(source=str(path))
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})
    if dtypes:
        report.notes.append(f"checkpoint dtype {'/'.join(dtypes)} -> model dtype "
                            f"{str(model.gpt.lm_head.weight.dtype).replace('torch.', '')}")
    vision = {k: t for k, t in tensors.items() if _is_deepseek_vision(k)}
    decoder = {k: (k, t) for k, t in tensors.items() if is_decoder_key(k)}
    report.unexpected += sorted(k for k in tensors if k not in vision and k not in decoder)
    _place_deepseek_vision(model, vision, report)
    sub = LoadReport(source=report.source)
    _assign(dict(model.gpt.state_dict(keep_vars=True)), decoder, sub)  # our decoder names ARE the released keys
    report.loaded += sub.loaded
    report.missing += [f"gpt.{k}" for k in sub.missing]
    report.unexpected += sub.unexpected
    return _finish(report, "load_deepseek_ocr", strict)
