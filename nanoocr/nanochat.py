"""
Load a nanochat base/mid/sft checkpoint into nanoocr's GPT, and extend its vocabulary.

A nanochat checkpoint directory holds `model_<step>.pt` (a state dict, saved from a torch.compile'd
model, so keys may start with `_orig_mod.`) and `meta_<step>.json` (`model_config`: GPTConfig's
fields). Notable features:
- the latest step is picked when none is given; files are loaded with `weights_only=True`
- every key and shape is checked before loading: a shape mismatch names the key and both shapes;
  missing/unexpected keys are reported (an error unless strict=False, then a warning)
- `extend_vocab` adds rows for new special tokens (`<|image|>`) keeping every old row bit-identical
"""

import json
import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn

from nanoocr.gpt import GPT, GPTConfig

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    step: int
    missing: list  # model keys the checkpoint did not have (left at their random init)
    unexpected: list  # checkpoint keys the model does not have (ignored)


def find_step(checkpoint_dir):
    """The largest step with a `model_<step>.pt` in the directory."""
    steps = [int(m.group(1)) for p in Path(checkpoint_dir).glob("model_*.pt")
             if (m := re.fullmatch(r"model_(\d+)\.pt", p.name))]
    if not steps:
        raise FileNotFoundError(f"no model_<step>.pt in {checkpoint_dir}")
    return max(steps)


def _step_file(checkpoint_dir, prefix, suffix, step):
    # nanochat writes zero-padded steps (model_000650.pt); accept any padding
    for p in Path(checkpoint_dir).glob(f"{prefix}_*{suffix}"):
        m = re.fullmatch(rf"{prefix}_(\d+){re.escape(suffix)}", p.name)
        if m and int(m.group(1)) == step:
            return p
    raise FileNotFoundError(f"no {prefix}_<{step}>{suffix} in {checkpoint_dir}")


def gpt_config_from_meta(meta, **overrides):
    """GPTConfig from meta["model_config"]; an unknown key is an error naming it."""
    model_config = dict(meta["model_config"])
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(model_config) - known)
    if unknown:
        raise ValueError(f"meta model_config has keys GPTConfig does not know: {unknown}")
    return GPTConfig(**{**model_config, **overrides})


def load_state_dict_checked(model, state_dict, strict=True, what="checkpoint"):
    """load_state_dict with nanoocr's checks: shapes (error naming key and both shapes), then
    missing/unexpected keys (error if strict, else a warning). Returns (missing, unexpected)."""
    own = model.state_dict()
    for key, value in state_dict.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"{what}: shape mismatch for {key}: checkpoint {tuple(value.shape)} "
                             f"vs model {tuple(own[key].shape)}")
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if (missing or unexpected) and strict:
        raise ValueError(f"{what}: missing keys {missing}, unexpected keys {unexpected}")
    if missing:
        log.warning("%s: %d missing keys (random init kept): %s", what, len(missing), missing)
    if unexpected:
        log.warning("%s: %d unexpected keys (ignored): %s", what, len(unexpected), unexpected)
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return missing, unexpected


def load_nanochat_with_report(checkpoint_dir, step=None, strict=True, **config_overrides):
    """Build a GPT from a nanochat checkpoint directory -> (GPT on CPU, fp32; meta dict; LoadReport).

    config_overrides: e.g. attn_impl="triton" (fields nanochat's meta does not have)."""
    step = find_step(checkpoint_dir) if step is None else step
    meta_path = _step_file(checkpoint_dir, "meta", ".json", step)
    model_path = _step_file(checkpoint_dir, "model", ".pt", step)
    meta = json.loads(meta_path.read_text())
    if "model_config" not in meta:
        raise ValueError(f"{meta_path}: no 'model_config' key (keys: {sorted(meta)})")
    config = gpt_config_from_meta(meta, **config_overrides)
    state_dict = torch.load(model_path, map_location="cpu", weights_only=True)
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    model = GPT(config)
    model.init_weights()  # anything the checkpoint lacks (strict=False) gets nanochat's init
    # nanochat keeps wte in bf16 on GPU; load_state_dict copies into our fp32 parameters
    missing, unexpected = load_state_dict_checked(model, state_dict, strict, what=str(model_path))
    log.info("loaded %s (step %d): %s", model_path, step, config)
    return model, meta, LoadReport(step, missing, unexpected)


def load_nanochat(checkpoint_dir, step=None, strict=True, **config_overrides):
    """The GPT of a nanochat checkpoint directory (CPU, fp32); see load_nanochat_with_report."""
    return load_nanochat_with_report(checkpoint_dir, step, strict, **config_overrides)[0]


@torch.no_grad()
def extend_vocab(gpt, new_vocab_size, seed=0):
    """Grow wte and lm_head to new_vocab_size rows; old rows stay bit-identical.

    New wte rows: mean of the old rows plus noise of 1% of their per-dimension std. A trained
    embedding table is far from nanochat's std-1 init, and the mean keeps a new token inside the
    distribution the trained blocks have seen (Hewitt 2021); the small noise breaks the symmetry
    between several new tokens. (For <|image|> the row is never read in a forward: merge overwrites
    image positions; it only matters if the token appears in text.)
    New lm_head rows: zeros (nanochat's own lm_head init): the new tokens start with logit 0 and the
    old tokens' logits are exactly unchanged; they are never targets (image positions are -1).
    """
    old_vocab, n_embd = gpt.transformer.wte.weight.shape
    assert new_vocab_size >= old_vocab, f"new_vocab_size {new_vocab_size} < current {old_vocab}"
    if new_vocab_size == old_vocab:
        return gpt
    n_new = new_vocab_size - old_vocab
    old_wte, old_head = gpt.transformer.wte.weight, gpt.lm_head.weight
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n_new, n_embd, generator=gen, dtype=torch.float32)
    mean, std = old_wte.float().mean(0), old_wte.float().std(0)
    new_rows = (mean + 0.01 * std * noise).to(old_wte.dtype).to(old_wte.device)

    wte = nn.Embedding(new_vocab_size, n_embd, device=old_wte.device, dtype=old_wte.dtype)
    wte.weight.copy_(torch.cat([old_wte, new_rows]))
    lm_head = nn.Linear(n_embd, new_vocab_size, bias=False, device=old_head.device, dtype=old_head.dtype)
    lm_head.weight.copy_(torch.cat([old_head, old_head.new_zeros(n_new, n_embd)]))
    wte.weight.requires_grad_(old_wte.requires_grad)
    lm_head.weight.requires_grad_(old_head.requires_grad)
    gpt.transformer.wte, gpt.lm_head = wte, lm_head
    gpt.config.vocab_size = new_vocab_size
    log.info("extended vocab %d -> %d", old_vocab, new_vocab_size)
    return gpt


@torch.no_grad()
def load_nanochat_into(model, checkpoint_dir, step=None, strict=True):
    """Initialize `model.gpt` (a NanoOCR's) from a nanochat checkpoint: load it, extend its vocabulary
    to the model's (new special tokens such as <|image|>), copy. Returns the LoadReport."""
    gpt, _, report = load_nanochat_with_report(checkpoint_dir, step, strict)
    ours, theirs = model.gpt.config, gpt.config
    for name in ("n_layer", "n_head", "n_embd"):
        if getattr(ours, name) != getattr(theirs, name):
            raise ValueError(f"{checkpoint_dir}: checkpoint {name}={getattr(theirs, name)} but the model has "
                             f"{name}={getattr(ours, name)}")
    extend_vocab(gpt, ours.vocab_size)
    device = model.gpt.lm_head.weight.device
    model.gpt.load_state_dict({k: v.to(device) for k, v in gpt.state_dict().items()})
    return report
