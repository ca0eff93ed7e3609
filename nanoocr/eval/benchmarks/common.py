"""What the benchmark readers and writers share: reading a benchmark's JSON, and writing a prediction file
under an output folder by a name that came from the benchmark's files (so it must not escape the folder)."""
from __future__ import annotations

import json
from pathlib import Path


def load_json(path: Path):
    """The parsed file, or ValueError naming it (a missing file, or one that is not JSON)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON ({e})") from None


def output_path(out_dir: Path, relpath: str) -> Path:
    """out_dir / relpath, or ValueError when relpath is empty, absolute or climbs out (`..`): the names come
    from the benchmark's files, and a writer must only ever write inside the folder it was given."""
    out_dir = Path(out_dir).resolve()
    if not relpath or Path(relpath).is_absolute():
        raise ValueError(f"prediction name {relpath!r}: must be a non-empty relative path")
    full = (out_dir / relpath).resolve()
    if not full.is_relative_to(out_dir) or full == out_dir:
        raise ValueError(f"prediction name {relpath!r}: escapes {out_dir}")
    return full


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
