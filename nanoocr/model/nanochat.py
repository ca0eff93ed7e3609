"""
Load a nanochat base/mid/sft checkpoint into nanoocr's GPT, and extend its vocabulary.

A nanochat checkpoint directory holds `model_<step>.pt` (a state dict, saved from a torch.compile'd
model, so keys may start with `_orig_mod.`) and `meta_<step>.json` (`model_config`: nanochat's
GPTConfig fields). Two generations load (nanoocr/model/gpt.py has both layouts):
- d20 (nanochat up to commit 2c4473d, 2026-01): meta has sequence_len, vocab_size, n_layer, n_head,
  n_kv_head, n_embd
- 2026 (commit 92d63d4): meta adds `window_pattern`; the state dict adds resid/x0 lambdas, value
  embeddings, smear and backout, and pads the vocabulary rows to a multiple of 64. What the meta does not
  record (rotary base 1e5, q/k scale 1.2, softcap 15, the padding) is derived from the generation
  (`GENERATIONS`); any field can still be overridden explicitly.
Notable features:
- the latest step is picked when none is given; files are loaded with `weights_only=True`
- nothing is loaded that is not understood: an unknown meta key, a shape mismatch, a missing or an
  unexpected tensor is a ValueError naming them (no partial, warning-only load; the comparison is
  `nanoocr.model.pretrained.check_state_dict`, and the report its `LoadReport`)
- `extend_vocab` adds rows for new special tokens (`<|image|>`) keeping every old row bit-identical,
  also in the padded layout (re-padded to the multiple)
Checkpoints of nanochat between 2c4473d and a825e63 (2026-01..03: windows and lambdas but no smear,
other gate sizes) fail the tensor check and are refused.
"""

import json
import logging
import re
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn as nn

from nanoocr.model.checkpoint import torch_load_safe
from nanoocr.model.gpt import GPT, GPTConfig
from nanoocr.model.pretrained import LoadReport, check_state_dict

log = logging.getLogger(__name__)

# The keys nanochat's meta["model_config"] has (asdict of its GPTConfig); window_pattern only since 2026.
META_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "window_pattern")
# Per generation: the GPTConfig fields nanochat's forward hard-codes (so its meta does not record them).
GENERATIONS = {
    "d20": dict(layout="d20", rotary_base=10000.0, qk_scale=1.0, softcap=15.0, pad_vocab_size_to=1),
    "2026": dict(layout="2026", rotary_base=100000.0, qk_scale=1.2, softcap=15.0, pad_vocab_size_to=64),
}
# Tensors only the 2026 layout has (prefixes of state-dict keys).
NEW_TENSORS = ("resid_lambdas", "x0_lambdas", "smear_gate.", "smear_lambda", "backout_lambda", "value_embeds.")
# GPTConfig fields that change the function a checkpoint computes (attn_impl/embed_impl do not).
ARCH_FIELDS = ("n_layer", "n_head", "n_kv_head", "n_embd", "layout", "window_pattern", "rotary_base",
               "qk_scale", "softcap", "pad_vocab_size_to")


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


def generation_of(meta, state_dict=None):
    """"2026" if the meta records a window_pattern, else "d20"; the tensors (if given) must agree."""
    gen = "2026" if "window_pattern" in meta["model_config"] else "d20"
    if state_dict is not None:
        new = sorted(k for k in state_dict if k.startswith(NEW_TENSORS))
        if gen == "d20" and new:
            raise ValueError(f"meta model_config has no window_pattern (a d20-era checkpoint) but the state dict "
                             f"has tensors of nanochat's 2026 layout: {new[:8]}{' ...' if len(new) > 8 else ''}")
        if gen == "2026" and not new:
            raise ValueError("meta model_config has window_pattern (nanochat's 2026 layout) but the state dict "
                             f"has none of its tensors ({', '.join(NEW_TENSORS)})")
    return gen


def gpt_config_from_meta(meta, state_dict=None, **overrides):
    """GPTConfig from meta["model_config"] plus the fields of its generation; an unknown key is an error
    naming it. overrides: any GPTConfig field (e.g. attn_impl="triton", softcap=20.0)."""
    model_config = dict(meta["model_config"])
    unknown = sorted(set(model_config) - set(META_KEYS))
    if unknown:
        raise ValueError(f"meta model_config has keys nanoocr does not know: {unknown} (known: {list(META_KEYS)})")
    known = {f.name for f in fields(GPTConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"config overrides {bad} are not GPTConfig fields")
    return GPTConfig(**{**GENERATIONS[generation_of(meta, state_dict)], **model_config, **overrides})


def load_state_dict_checked(model, state_dict, what="checkpoint") -> int:
    """load_state_dict after `check_state_dict` (every difference named in one error): either every tensor
    loads or nothing does. Returns the number of tensors loaded."""
    check_state_dict(model, state_dict, what)
    model.load_state_dict(state_dict)
    return len(state_dict)


def _read_checkpoint(checkpoint_dir, step):
    step = find_step(checkpoint_dir) if step is None else step
    meta_path = _step_file(checkpoint_dir, "meta", ".json", step)
    model_path = _step_file(checkpoint_dir, "model", ".pt", step)
    meta = json.loads(meta_path.read_text())
    if "model_config" not in meta:
        raise ValueError(f"{meta_path}: no 'model_config' key (keys: {sorted(meta)})")
    return step, meta, model_path


def nanochat_gpt_fields(checkpoint_dir, step=None):
    """The GPTConfig fields (but vocab_size) a model must have to take this checkpoint's weights: what a
    recipe's `model.gpt` needs for load_nanochat_into. Reads the tensor names only (mmap)."""
    step, meta, model_path = _read_checkpoint(checkpoint_dir, step)
    keys = [k.removeprefix("_orig_mod.") for k in torch_load_safe(model_path, mmap=True)]
    config = gpt_config_from_meta(meta, dict.fromkeys(keys))
    return {name: getattr(config, name) for name in ("sequence_len", *ARCH_FIELDS)}


def load_nanochat_with_report(checkpoint_dir, step=None, **config_overrides):
    """Build a GPT from a nanochat checkpoint directory -> (GPT on CPU, fp32; meta dict; LoadReport).

    config_overrides: GPTConfig fields, e.g. attn_impl="triton", or a generation's derived field."""
    step, meta, model_path = _read_checkpoint(checkpoint_dir, step)
    state_dict = torch_load_safe(model_path)
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    config = gpt_config_from_meta(meta, state_dict, **config_overrides)
    model = GPT(config)
    model.init_weights()  # the rotary tables (every parameter is then overwritten by the checkpoint)
    # nanochat keeps wte (and value embeddings) in bf16 on GPU; load_state_dict copies into our fp32 params
    loaded = load_state_dict_checked(model, state_dict, what=str(model_path))
    log.info("loaded %s (step %d, nanochat %s layout): %s", model_path, step, config.layout, config)
    return model, meta, LoadReport(source=str(model_path), loaded=loaded, step=step, generation=config.layout)


def load_nanochat(checkpoint_dir, step=None, **config_overrides):
    """The GPT of a nanochat checkpoint directory (CPU, fp32); see load_nanochat_with_report."""
    return load_nanochat_with_report(checkpoint_dir, step, **config_overrides)[0]


@torch.no_grad()
def extend_vocab(gpt, new_vocab_size, seed=0):
    """Grow the vocabulary to new_vocab_size tokens; old rows stay bit-identical.

    New wte rows (and value-embedding rows, 2026 layout): mean of the old rows plus noise of 1% of their
    per-dimension std. A trained embedding table is far from nanochat's init, and the mean keeps a new
    token inside the distribution the trained blocks have seen (Hewitt 2021); the small noise breaks the
    symmetry between several new tokens. (For <|image|> the wte row is never read in a forward: merge
    overwrites image positions; its value-embedding rows are read, image positions keep the image id.)
    New lm_head rows: zeros (nanochat's d20 lm_head init): the new tokens start with logit 0 and the
    old tokens' logits are exactly unchanged; they are never targets (image positions are -1).
    Padding rows (up to a multiple of pad_vocab_size_to) are zeros: never looked up, cropped from logits.
    """
    old_vocab = gpt.config.vocab_size
    assert new_vocab_size >= old_vocab, f"new_vocab_size {new_vocab_size} < current {old_vocab}"
    if new_vocab_size == old_vocab:
        return gpt
    n_new = new_vocab_size - old_vocab
    gen = torch.Generator().manual_seed(seed)
    gpt.config.vocab_size = new_vocab_size
    rows = gpt.config.padded_vocab_size

    def grown(old, new_rows):
        # old: (old rows incl. padding, dim) -> (rows, dim): real old rows, new rows, zero padding
        w = torch.cat([old[:old_vocab], new_rows.to(old.dtype).to(old.device),
                       old.new_zeros(rows - new_vocab_size, old.size(1))])
        return w.requires_grad_(old.requires_grad)

    def grown_embedding(emb):
        old = emb.weight
        noise = torch.randn(n_new, old.size(1), generator=gen, dtype=torch.float32)
        real = old[:old_vocab].float()
        new = nn.Embedding(rows, old.size(1), device=old.device, dtype=old.dtype)
        new.weight = nn.Parameter(grown(old, real.mean(0) + 0.01 * real.std(0) * noise), old.requires_grad)
        return new

    gpt.transformer.wte = grown_embedding(gpt.transformer.wte)
    old_head = gpt.lm_head.weight
    lm_head = nn.Linear(old_head.size(1), rows, bias=False, device=old_head.device, dtype=old_head.dtype)
    lm_head.weight = nn.Parameter(grown(old_head, old_head.new_zeros(n_new, old_head.size(1))), old_head.requires_grad)
    gpt.lm_head = lm_head
    if gpt.config.layout == "2026":
        for name in list(gpt.value_embeds):
            gpt.value_embeds[name] = grown_embedding(gpt.value_embeds[name])
    log.info("extended vocab %d -> %d (%d rows)", old_vocab, new_vocab_size, rows)
    return gpt


@torch.no_grad()
def load_nanochat_into(model, checkpoint_dir, step=None):
    """Initialize `model.gpt` (a NanoOCR's) from a nanochat checkpoint: load it, extend its vocabulary
    to the model's (new special tokens such as <|image|>), copy. Returns the LoadReport.

    model.gpt's config must be of the checkpoint's generation (`nanochat_gpt_fields` lists the fields);
    a difference is an error naming the field and both values."""
    gpt, _, report = load_nanochat_with_report(checkpoint_dir, step)
    ours, theirs = model.gpt.config, gpt.config
    names = ARCH_FIELDS + (("sequence_len",) if theirs.layout == "2026" else ())  # 2026: windows derive from it
    for name in names:
        if getattr(ours, name) != getattr(theirs, name):
            raise ValueError(f"{checkpoint_dir}: checkpoint {name}={getattr(theirs, name)!r} but the model has "
                             f"{name}={getattr(ours, name)!r} (a nanochat {theirs.layout} checkpoint needs "
                             f"model.gpt fields {dict((n, getattr(theirs, n)) for n in names)})")
    extend_vocab(gpt, ours.vocab_size)
    device = model.gpt.lm_head.weight.device
    load_state_dict_checked(model.gpt, {k: v.to(device) for k, v in gpt.state_dict().items()},
                            what=f"{checkpoint_dir} -> model.gpt")
    return report
