"""Task and TaskMixture (nanochat's idea) plus the few helpers every source shares (the record format itself,
its prompts and `qa`, the one-turn record, live in `nanoocr.data.records`).

A Task is a lazily indexed list of unified records `{"id", "source", "messages", "image": bytes | None}`
with nanochat's `start/stop/step` slicing; a TaskMixture interleaves several Tasks in a deterministic
order fixed by a seed. A record that a source cannot build (a missing image file, a malformed row) is
returned as `{"id", "source", "error": reason}` so `convert_to_mds` reports it instead of crashing.

Rows are read with `datasets.load_dataset` from a hub id or local files (a parquet/json(l) file, or a
folder laid out like a hub repo), never with `trust_remote_code`. Image columns are cast to
`datasets.Image(decode=False)` so records carry the ORIGINAL encoded bytes (no decode/re-encode here;
`records.validate_record` decodes once to check them).
"""
from __future__ import annotations

import random
from pathlib import Path

from nanoocr.data.records import IMAGE_TAG


class NeedsLocalFiles(ValueError):
    """A source that cannot be read from what it was given (e.g. a hub id whose rows point at files the hub
    table does not hold); raised before anything is read, naming the option to pass."""


class Task:
    """Base class: subclasses define `num_examples()` and `get_example(i)` (a physical index)."""

    name = "task"  # the record's "source" field
    HUB_ID: str | None = None  # the dataset this class reads by default (and what `hf:<id>` maps to)

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        assert start >= 0, f"start must be >= 0, got {start}"
        assert stop is None or stop >= start, f"stop ({stop}) must be >= start ({start})"
        assert step >= 1, f"step must be >= 1, got {step}"
        self.start, self.stop, self.step = start, stop, step

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        return max(0, (stop - self.start + self.step - 1) // self.step)

    def __getitem__(self, index: int) -> dict:
        assert isinstance(index, int), f"index must be an int, got {type(index).__name__}"
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__} index {index} out of range (len {len(self)})")
        return self.get_example(self.start + index * self.step)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class TaskMixture(Task):
    """All examples of several tasks in one order, shuffled deterministically by `seed`.

    Oversample a task by listing it twice (nanochat's convention)."""

    name = "mixture"

    def __init__(self, tasks: list[Task], seed: int = 42, **kwargs):
        super().__init__(**kwargs)
        self.tasks = tasks
        self.index_map = [(t, i) for t, task in enumerate(tasks) for i in range(len(task))]
        random.Random(seed).shuffle(self.index_map)

    def num_examples(self) -> int:
        return len(self.index_map)

    def get_example(self, index: int) -> dict:
        t, i = self.index_map[index]
        return self.tasks[t][i]


def load_rows(source: str, split: str = "train", config: str | None = None, image_columns=()):
    """A `datasets.Dataset` from a hub id, a local parquet/json(l) file, or a local hub-style folder.

    `image_columns` are cast to `Image(decode=False)`: rows then hold `{"bytes", "path"}` dicts."""
    import datasets

    path = Path(source)
    if path.is_file():
        builder = "parquet" if path.suffix == ".parquet" else "json"
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    else:  # a local folder is resolved by the same packaged builders as a hub repo (no scripts run)
        ds = datasets.load_dataset(str(source), config, split=split)
    for col in image_columns:
        if col in ds.column_names:
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds


def image_bytes(value) -> bytes | None:
    """Encoded bytes from a `datasets.Image(decode=False)` value (`{"bytes", "path"}`) or raw bytes."""
    if value is None or isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


def with_image_first(text: str) -> str:
    """Move a `<image>` tag to the front ("<image>\\n..."), DeepSeek-OCR's prompt shape."""
    return IMAGE_TAG + "\n" + text.replace(IMAGE_TAG, "").strip()


class HFTask(Task):
    """A Task over one `datasets.Dataset`; subclasses set HUB_ID/image_columns and write `build(row, rid)`."""

    image_columns: tuple[str, ...] = ()
    default_config: str | None = None

    def __init__(self, source: str | None = None, split: str = "train", config: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.split = split
        self.ds = load_rows(source or self.HUB_ID, split, config or self.default_config, self.image_columns)

    def num_examples(self) -> int:
        return len(self.ds)

    def get_example(self, index: int) -> dict:
        rid = f"{self.name}:{self.split}:{index}"
        try:
            return self.build(self.ds[index], rid)
        except (KeyError, IndexError, TypeError, ValueError, OSError) as e:
            # A malformed row is one rejected record, never a crashed conversion.
            return {"id": rid, "source": self.name, "error": f"bad {self.name} row: {type(e).__name__}: {e}"}

    def build(self, row: dict, rid: str) -> dict:
        raise NotImplementedError
