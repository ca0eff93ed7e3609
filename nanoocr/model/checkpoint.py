"""Opening Composer checkpoints without running pickled code.

Composer checkpoints are pickles: a monolithic one is one `torch.save` file; a sharded one (FSDP
`state_dict_type: sharded`) is a folder of `__<rank>_0.distcp` files plus a pickled `.metadata`, and its
non-tensor entries (RNG states, timestamps) are pickles inside the shards. Composer opens all of them with
`weights_only=False`, so a planted `latest-rank0.pt` or a `load_path` from elsewhere could run code.

- `torch_load_safe(path)`: `torch.load(weights_only=True)` with an allow-list of the few stdlib / numpy /
  torch classes a Composer checkpoint holds; anything else is refused with an error naming the file.
- `read_dcp_metadata(dir)`: a sharded checkpoint's `.metadata` through an unpickler admitting only the
  distributed-checkpoint metadata classes.
- nanoocr/train/composer_loading.py makes Composer itself load through those two (Composer is not imported
  here: this is a model file).
- `load_composer_state(path)`: NanoOCR's own state dict from either layout (export uses it).
- `repair_latest(save_folder)`: before autoresume, a `latest-rank0.pt` pointing at a truncated file is
  pointed at the newest intact earlier checkpoint instead (Composer would fail on it).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch


class CheckpointError(ValueError):
    pass


def _safe_globals() -> list:
    import datetime

    import numpy as np
    # What a Composer checkpoint holds besides tensors: timedeltas, the torch version, numpy RNG states.
    return [datetime.timedelta, torch.torch_version.TorchVersion, np._core.multiarray._reconstruct, np.ndarray,
            np.dtype, np.dtypes.UInt32DType, np.dtypes.Int64DType, np.dtypes.Float64DType]


def torch_load_safe(source, map_location="cpu", what=None, mmap=None):
    """torch.load(weights_only=True) with the Composer allow-list; a pickle needing more is refused."""
    with torch.serialization.safe_globals(_safe_globals()):
        try:
            return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            # torch's message is long; its "... unsupported GLOBAL posix.system ..." line is the one that says why
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "global" in ln.lower() and "weights only load failed" not in ln.lower()),
                       lines[0] if lines else type(e).__name__)
            raise CheckpointError(f"{what or source}: refusing to load this checkpoint: it needs objects a "
                                  f"weights-only load does not allow ({why})") from None


def read_dcp_metadata(directory: str | Path):
    """The `.metadata` pickle of a torch distributed checkpoint, admitting only its metadata classes,
    torch dtypes/sizes and paths, so a planted file cannot run code."""
    import pathlib

    import torch.distributed.checkpoint.filesystem as fs
    import torch.distributed.checkpoint.metadata as md
    directory = Path(directory)
    allowed = {("torch", "Size"): torch.Size, ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
               ("pathlib", "PosixPath"): pathlib.PosixPath, ("pathlib", "WindowsPath"): pathlib.WindowsPath,
               ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): fs._StorageInfo}
    for name in ("Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
                 "BytesStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"):
        allowed[("torch.distributed.checkpoint.metadata", name)] = getattr(md, name)

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in allowed:
                return allowed[(module, name)]
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            raise pickle.UnpicklingError(f"{directory}/.metadata: refusing to unpickle {module}.{name} "
                                         "(not a torch distributed-checkpoint metadata class)")

    path = directory / ".metadata"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no .metadata (not a sharded Composer checkpoint folder)")
    return Restricted(io.BytesIO(path.read_bytes())).load()




def _model_state(state: dict, path) -> dict:
    """`ComposerNanoOCR` keeps the network under `model.` (DDP adds `module.`) → NanoOCR's own keys."""
    from nanoocr.model.distributed import clean_name  # FSDP / checkpoint-wrapper segments the model does not have
    state = {clean_name(k): v for k, v in state.items()}
    prefix = "module.model." if any(k.startswith("module.model.") for k in state) else "model."
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise CheckpointError(f"{path}: no model weights in this checkpoint (no keys under '{prefix}')")
    return out


def load_composer_state(path: str | Path) -> dict:
    """The model state dict inside a Composer checkpoint: a monolithic `.pt` (`ep0-ba100-rank0.pt`,
    `latest-rank0.pt`) or a sharded folder (`ep0-ba100/`, which `latest-rank0.pt` links to)."""
    path = Path(path)
    if path.is_dir():
        return _load_sharded_state(path)
    return _model_state(torch_load_safe(path)["state"]["model"], path)


def _load_sharded_state(directory: Path) -> dict:
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    metadata = read_dcp_metadata(directory)

    class Reader(dcp.FileSystemReader):
        def read_metadata(self):
            return metadata

    # Only the model's tensors are requested (DCP reads tensors with weights_only=True); the checkpoint's
    # pickled non-tensor entries (optimizer hyper-parameters, RNG states...) are never read.
    flat = {k[len("state.model."):]: torch.empty(m.size, dtype=m.properties.dtype)
            for k, m in metadata.state_dict_metadata.items()
            if k.startswith("state.model.") and isinstance(m, TensorStorageMetadata)}
    state = {"state": {"model": flat}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(state, storage_reader=Reader(str(directory)), no_dist=True)
    return _model_state(state["state"]["model"], directory)


def _intact(path: Path) -> bool:
    """A monolithic checkpoint whose zip central directory (written last) reads: a file cut short by a crash,
    a full disk or a partial copy is not."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _batch_of(path: Path) -> int:
    """`ep0-ba12-rank0.pt` -> 12 (Composer's default checkpoint names); -1 when the name has no batch."""
    import re
    m = re.search(r"-ba(\d+)-", path.name)
    return int(m.group(1)) if m else -1


def repair_latest(save_folder: str | Path, latest_name: str = "latest-rank0.pt") -> str | None:
    """Before autoresume: when `latest` points at a truncated monolithic checkpoint, point it at the newest
    intact earlier one of the same folder (a message saying so is returned); CheckpointError when none is.
    Sharded checkpoints (folders) and a missing `latest` are left to Composer."""
    folder = Path(save_folder)
    latest = folder / latest_name
    if not latest.is_symlink() and not latest.exists():
        return None
    target = latest.resolve()
    if target.is_dir() or (target.is_file() and _intact(target)):
        return None
    candidates = sorted((p for p in folder.glob("ep*-ba*-rank0.pt") if p.resolve() != target and p.is_file()),
                        key=_batch_of, reverse=True)
    for candidate in candidates:
        if _intact(candidate):
            tmp = folder / f".{latest_name}.repair"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(candidate.name)
            tmp.replace(latest)  # atomic: `latest` is never missing
            return (f"autoresume: {latest} pointed at {target.name}, which is {'missing' if not target.exists() else 'truncated'}; "
                    f"resuming from the newest intact checkpoint, {candidate.name}")
    raise CheckpointError(f"autoresume: {latest} points at {target.name}, which is "
                          f"{'missing' if not target.exists() else 'truncated'}, and {folder} holds no intact "
                          "earlier checkpoint: remove it to start over, or restore the file")
