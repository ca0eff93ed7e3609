"""Working with a sharded (FSDP) model outside its training forward: generation, probes, final eval.

Under FSDP every rank holds only a shard of each unit's parameters; they are gathered inside the FSDP
module's own forward. Code that calls `encode_images` / `embed` / `gpt.trunk` directly (the Engine, the
collapse probe) would read the shards. Wrap such code in `full_params`:

    with full_params(state.model):          # the OUTERMOST module (Trainer's state.model), on EVERY rank
        texts = transcribe(unwrap(state.model), tokenizer, images)

- `full_params(model)`: `FSDP.summon_full_params(model, writeback=False)` when any submodule is FSDP, a no-op
  otherwise. Collective: every rank must enter it (then each may do different work inside: nothing inside
  communicates). Inside, the FSDP modules' forwards run their wrapped module directly (FSDP's own forward
  would gather and free the parameters again, which summon_full_params forbids). Re-entrant.
- `unwrap(model)`: ComposerNanoOCR / DDP / FSDP wrappers -> the NanoOCR inside.
- `clean_name(name)`: a parameter name without wrapper segments (`_fsdp_wrapped_module.`,
  `_checkpoint_wrapped_module.`, `_orig_mod.`), i.e. the name in the model's state_dict.
- `is_sharded(model)`: any FSDP module inside.
"""
from __future__ import annotations

import contextlib

import torch.nn as nn

_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_summoned: set[int] = set()  # ids of FSDP modules inside an active full_params (re-entrancy)


def clean_name(name: str) -> str:
    for seg in _WRAPPER_SEGMENTS:
        name = name.replace(seg, "")
    return name


def _fsdp_modules(model: nn.Module) -> list:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    return [m for m in model.modules() if isinstance(m, FSDP)]


def is_sharded(model: nn.Module) -> bool:
    return bool(_fsdp_modules(model))


def unwrap(model: nn.Module) -> nn.Module:
    """Peel ComposerModel (`.model`), DDP and FSDP (`.module`) wrappers down to the NanoOCR."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.nn.parallel import DistributedDataParallel as DDP
    while True:
        if isinstance(model, (DDP, FSDP)):
            model = model.module
        elif not hasattr(model, "encode_images") and isinstance(getattr(model, "model", None), nn.Module):
            model = model.model  # ComposerNanoOCR
        else:
            return model


def _direct_forward(inner: nn.Module):
    def forward(*args, **kwargs):
        return inner(*args, **kwargs)
    return forward


@contextlib.contextmanager
def full_params(model: nn.Module):
    """Every parameter of `model` whole (read-only: changes are not written back to the shards) inside."""
    fsdp = [m for m in _fsdp_modules(model) if id(m) not in _summoned]
    if not fsdp:  # not sharded, or already inside full_params
        yield model
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    with FSDP.summon_full_params(model, recurse=True, writeback=False):
        _summoned.update(id(m) for m in fsdp)
        for m in fsdp:  # an instance attribute shadows FSDP.forward for this context only
            m.forward = _direct_forward(m._fsdp_wrapped_module)
        try:
            yield model
        finally:
            for m in fsdp:
                del m.forward
            _summoned.difference_update(id(m) for m in fsdp)
