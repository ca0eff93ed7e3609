"""Composer opens checkpoints with torch.load and weights_only=False: route every load it does through the
safe loaders of nanoocr/model/checkpoint.py (a monolithic file weights-only with the allow-list; a sharded
checkpoint's `.metadata` through the restricted unpickler and its non-tensor entries weights-only).

The recipe calls `guard_composer_loading()` before the Trainer exists, so `load_path`, `autoresume` and
stage chaining are covered."""
from __future__ import annotations

from pathlib import Path

from nanoocr.model.checkpoint import read_dcp_metadata, torch_load_safe

_guarded = False


def guard_composer_loading() -> None:
    """Route every checkpoint load Composer does in this process through the safe loaders (idempotent)."""
    global _guarded
    if _guarded:
        return
    import composer.utils.checkpoint as cc
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    def load_monolithic(checkpoint_filepath, map_location):
        return torch_load_safe(cc._ensure_valid_checkpoint(checkpoint_filepath), map_location=map_location,
                               what=checkpoint_filepath)

    def read_metadata(self):
        cc._ensure_valid_checkpoint(str(Path(self.path) / ".metadata"))
        return read_dcp_metadata(self.path)

    def load_bytes(self, read_item, value):
        obj = torch_load_safe(value, what=f"sharded checkpoint entry {read_item.dest_index.fqn}")
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes, without weights_only=False
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj

    cc._torch_load_with_validation = load_monolithic
    cc.FileSystemReaderWithValidation.read_metadata = read_metadata
    DefaultLoadPlanner.load_bytes = load_bytes
    _guarded = True
