"""The Streaming data path: MDS rows -> processed samples -> padded batches for the model.

Notable features:
- `OCRStreamingDataset`: one thin `StreamingDataset` subclass. Images are stored encoded in the
  shards and processed at load time (`processing.process_sample`), so the image mode, loss policy and
  sequence length are training-time choices. Its docstring explains every Streaming knob it sets.
- Mixtures: several `Stream`s with `proportion`s (e.g. 0.9 vision / 0.1 text); an epoch holds
  exactly those proportions (a small stream is up-sampled), in an order fixed by `shuffle_seed`
  and `num_canonical_nodes` alone: the same global batches on 1 or 8 GPUs (at the same global batch
  size), resumable mid-epoch.
- Rejected samples never crash the loader and are never lost silently: `process_sample` raising
  `SampleError` turns the sample into a fully masked placeholder row (same batch size on
  every rank, so Streaming's and Composer's sample counts and mid-epoch resumption stay exact);
  the batch lists it under `skipped`, and `OCRDataLoader` logs each one (id + reason) and counts them
  in `num_skipped` for the loggers. (A batch whose rows were ALL rejected has no target at all: the
  loss must not divide by a zero target count.)
- `collate`: right padding to the longest row, targets -1 on padding, global views stacked, Gundam
  crops of all images concatenated in sample order, `tiles` (N, 2).
- Composer glue: Composer's default DataSpec helpers cannot read this batch (`None` values, image
  tensors whose first dim is not the batch size), so `get_num_samples_in_batch`,
  `get_num_tokens_in_batch` and `split_batch` (microbatches keep each image with its row) are here;
  `data_spec(loader)` bundles them.

Batch layout (`collate`):
    ids        (B, T) long      right-padded with pad_id
    targets    (B, T) long      -1 on padding (process_sample already put -1 on image/non-loss tokens)
    images     (N, 3, S, S)     global views of the N rows that have an image, in row order | None
    crops      (M, 3, 640, 640) Gundam tiles, image i owns w_i*h_i consecutive ones when tiles[i] != (1,1) | None
    tiles      (N, 2) long      (w_tiles, h_tiles) per image, (1, 1) = no crops | None
    sample_ids list[str]        one per row (a placeholder row keeps the id of the rejected sample)
    has_image  (B,) bool        which rows own an image (for splitting into microbatches)
    lengths    (B,) long        real tokens per row (0 for placeholder rows)
    skipped    list[(id, reason)]  rejected samples of this batch, in row order
"""
from __future__ import annotations

import collections
import functools
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from streaming import Stream, StreamingDataLoader, StreamingDataset

from nanoocr.data.images import MODES, check_crop_bounds
from nanoocr.data.processing import LOSS_POLICIES, OVERFLOW_POLICIES, SampleError, process_sample

log = logging.getLogger(__name__)

SKIP = "skip"  # key of the placeholder a rejected sample becomes (its value is the reason)
STREAM_KEYS = ("local", "remote", "proportion", "repeat", "choose", "split")
LOADER_KEYS = ("dataset", "num_workers", "prefetch_factor", "persistent_workers", "pin_memory", "drop_last",
               "timeout")


class DataError(ValueError):
    """A data configuration that cannot train: the message names the stream or loader and the reason."""


class OCRStreamingDataset(StreamingDataset):
    """MDS rows (`id`, `source`, `messages` json, `image` bytes, b"" = none) -> `process_sample` dicts.

    Processing (forwarded to `processing.process_sample`):
        tokenizer: the `Tokenizer` (fork-inherited by loader workers).
        mode: image mode, a key of `images.MODES` (tiny/small/base/large/gundam).
        loss: which tokens carry loss: "all_text" (OCR pre-training) or "assistant" (SFT).
        max_seq_len: hard cap on a row's length; images are never cut.
        min_crops, max_crops: Gundam tile-grid bounds.
        overflow: "truncate" (cut the text tail) or "drop" (reject the sample) when a row is too long.

    Rejected samples: when process_sample raises `SampleError` (undecodable image, over-long with
    overflow="drop", malformed messages...) the item becomes
    `{"id": ..., "skip": reason}`. It is NOT removed: Streaming hands every rank the same number of
    items per epoch, and the resume offset, Composer's sample counter and DDP's lock-step all assume
    it stays that way. `collate` turns it into a masked row and lists it in `batch["skipped"]`;
    `OCRDataLoader` logs and counts it. Any other exception is a bug and propagates.

    Streaming knobs (every one is a plain `StreamingDataset` argument):
        streams: list of `Stream(local, remote, proportion)`. With proportions, an epoch draws
            exactly `proportion * epoch_size` samples from each stream (a stream smaller than its
            share is repeated, a larger one sub-sampled), so the vision/text mix is exact per epoch,
            not just on average. `remote=None` reads local shards in place.
        epoch_size: samples per epoch over all streams; None = the streams' total size. Set it when
            proportions should not be tied to the size of the largest stream.
        batch_size: the per-device batch size, the SAME number given to the DataLoader. Streaming
            partitions samples to (node, rank, worker) in whole batches; a mismatch breaks
            deterministic order and exact mid-epoch resumption.
        shuffle: shuffle the sample order (True for training, False for eval).
        shuffle_algo: "py1e" (default) shuffles inside overlapping blocks of shards: near-global mix,
            but a worker only needs a few shards at a time (bounded downloads and cache).
        shuffle_seed: the whole epoch order is a function of (seed, epoch, num_canonical_nodes):
            the same seed gives the same order, another seed another order. Keep it across resumes.
        shuffle_block_size: samples per shuffle block; None = Streaming's max(4M // NCN, 2**18).
        num_canonical_nodes (NCN): the number of "virtual nodes" the sample order is built for. We fix
            it (default 1) instead of Streaming's None (= the node count of the first run) so the
            order does not depend on the hardware: a run started on 1 node resumes bit-exactly on 2
            (elasticity). Physical and canonical node counts must divide one another; for multi-node
            streaming from a remote, use a multiple of the node count so each node reads fewer shards.
        partition_algo: "relaxed" (default) lets a resumed run use a different node count as long as
            the global batch size is unchanged.
        sampling_method: "balanced" (default) picks a stream's partial repeat from different samples
            each epoch; "fixed" always the same ones.
        sampling_granularity: samples drawn per shard at a time for a partial repeat (1 = even).
        batching_method: "random" (default): the mix is exact per epoch, per-batch counts vary.
            "stratified" fixes the count of each stream in every batch but drops some samples.
        predownload: samples each worker fetches ahead of the one it is reading; None = 8 * batch_size.
            Only matters with a remote: enough to hide download latency, small enough for the cache.
        cache_limit: LRU-evict downloaded shards above this size ("10gb"); None = never. Must stay
            None for local-only data (remote=None): eviction would delete the only copy.
        replication: consecutive ranks that get the same samples (tensor/sequence parallel); None.
        download_retry, download_timeout, validate_hash, keep_zip: remote download behaviour
            (retries, seconds per shard, checksum e.g. "xxh64", keep the compressed shard).
    """

    def __init__(self, *, streams: Sequence[Stream], tokenizer, batch_size: int, max_seq_len: int,
                 mode: str = "base", loss: str = "all_text", min_crops: int = 2, max_crops: int = 6,
                 overflow: str = "truncate", shuffle: bool = True, shuffle_seed: int = 9176,
                 shuffle_algo: str = "py1e", shuffle_block_size: int | None = None, num_canonical_nodes: int = 1,
                 partition_algo: str = "relaxed", sampling_method: str = "balanced", sampling_granularity: int = 1,
                 batching_method: str = "random", epoch_size: int | str | None = None,
                 predownload: int | None = None, cache_limit: int | str | None = None,
                 replication: int | None = None, download_retry: int = 2, download_timeout: float = 60,
                 validate_hash: str | None = None, keep_zip: bool = False):
        # Configuration errors must fail here, not turn every sample into a "skipped" one later.
        for key, value, valid in (("mode", mode, sorted(MODES)), ("loss", loss, LOSS_POLICIES),
                                  ("overflow", overflow, OVERFLOW_POLICIES)):
            if value not in valid:
                raise DataError(f"dataset: {key} must be one of {list(valid)}, got {value!r}")
        for key, value in (("max_seq_len", max_seq_len), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DataError(f"dataset: {key} must be an integer > 0, got {value!r}")
        try:
            check_crop_bounds(min_crops, max_crops)
        except ValueError as e:
            raise DataError(f"dataset: {e}") from None
        if not streams:
            raise DataError("dataset: need at least one Stream")
        super().__init__(
            streams=streams, batch_size=batch_size, shuffle=shuffle, shuffle_seed=shuffle_seed,
            shuffle_algo=shuffle_algo, shuffle_block_size=shuffle_block_size,
            num_canonical_nodes=num_canonical_nodes, partition_algo=partition_algo,
            sampling_method=sampling_method, sampling_granularity=sampling_granularity,
            batching_method=batching_method, epoch_size=epoch_size, predownload=predownload,
            cache_limit=cache_limit, replication=replication, download_retry=download_retry,
            download_timeout=download_timeout, validate_hash=validate_hash, keep_zip=keep_zip,
            allow_unsafe_types=False,  # never unpickle shard data
        )
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len  # build_dataloader's collate re-checks it
        # uint8 views: 4x less to copy out of the workers; the model normalizes them (bit-identical).
        self.process_kwargs = dict(mode=mode, loss=loss, max_seq_len=max_seq_len, min_crops=min_crops,
                                   max_crops=max_crops, overflow=overflow, normalize=False)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        row = super().__getitem__(idx)
        record = {"id": row["id"], "source": row["source"], "messages": row["messages"],
                  "image": row["image"] or None}  # MDS stores "no image" as b""
        try:
            return process_sample(record, self.tokenizer, **self.process_kwargs)
        except SampleError as e:  # bad image, over-long with overflow="drop", malformed messages...
            return {"id": row["id"], SKIP: str(e)}


def _shared_out(tensors: Sequence[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor | None:
    """In a loader worker, an output tensor in shared memory (what torch's default_collate does).

    The batch crosses to the main process through shared memory; stacking straight into it saves a
    copy of every pixel (a base view is 12.6 MB in float32, a 6-crop Gundam sample ~42 MB)."""
    if torch.utils.data.get_worker_info() is None:
        return None
    numel = sum(t.numel() for t in tensors)
    storage = tensors[0]._typed_storage()._new_shared(numel, device=tensors[0].device)
    return tensors[0].new(storage).resize_(*shape)


def collate(samples: Sequence[dict], pad_id: int, max_seq_len: int | None = None) -> dict[str, Any]:
    """Processed samples (and skip placeholders) -> one batch; see the module docstring for the layout."""
    B = len(samples)
    assert B > 0, "collate got an empty list of samples"
    rows, images, crops, tiles, has_image, skipped = [], [], [], [], [], []
    for s in samples:
        if SKIP in s:  # a rejected sample keeps its row (fixed batch size), with nothing to learn from
            rows.append(None)
            has_image.append(False)
            skipped.append((s["id"], s[SKIP]))
            continue
        ids, tgt = s["input_ids"], s["targets"]
        assert ids.ndim == 1 and ids.shape == tgt.shape, \
            f"sample {s['id']!r}: input_ids {tuple(ids.shape)} and targets {tuple(tgt.shape)} must be equal 1-D"
        assert max_seq_len is None or len(ids) <= max_seq_len, \
            f"sample {s['id']!r}: length {len(ids)} > max_seq_len {max_seq_len} (process_sample must cap it)"
        rows.append((ids, tgt))
        has_image.append(s["image"] is not None)
        if s["image"] is None:
            assert s.get("crops") is None, f"sample {s['id']!r}: crops without an image"
            continue
        w, h = s.get("tiles") or (1, 1)
        n = 0 if s.get("crops") is None else s["crops"].shape[0]
        assert n == (0 if (w, h) == (1, 1) else w * h), \
            f"sample {s['id']!r}: tiles {(w, h)} need {0 if (w, h) == (1, 1) else w * h} crops, got {n}"
        images.append(s["image"])
        tiles.append((w, h))
        if n:
            crops.append(s["crops"])

    lengths = [0 if r is None else len(r[0]) for r in rows]
    T = max(1, max(lengths))  # an all-placeholder batch still has one (padding) column
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        if r is not None:
            ids[b, :len(r[0])] = r[0]
            targets[b, :len(r[1])] = r[1]

    sizes = {tuple(im.shape) for im in images}
    ids_with_image = [s["id"] for s, h in zip(samples, has_image) if h]
    assert len(sizes) <= 1, \
        f"images of one batch must share a mode/size, got {sorted(sizes)} for samples {ids_with_image}"
    if images:
        images = torch.stack(images, out=_shared_out(images, (len(images), *images[0].shape)))  # (N, 3, S, S)
    if crops:
        crops = torch.cat(crops, out=_shared_out(crops, (sum(len(c) for c in crops), *crops[0].shape[1:])))
    return {
        "ids": ids,  # first key: StreamingDataLoader counts samples with len(first value)
        "targets": targets,
        "images": images if len(images) else None,  # (N, 3, S, S)
        "crops": crops if len(crops) else None,  # (M, 3, 640, 640)
        "tiles": torch.tensor(tiles, dtype=torch.long) if tiles else None,  # (N, 2)
        "sample_ids": [s["id"] for s in samples],
        "has_image": torch.tensor(has_image, dtype=torch.bool),  # (B,)
        "lengths": torch.tensor(lengths, dtype=torch.long),  # (B,)
        "skipped": skipped,
    }


# ---------------------------------------------------------------------------------------------
# Composer DataSpec helpers


def get_num_samples_in_batch(batch: Mapping[str, Any]) -> int:
    """Rows in the batch, placeholders included: Composer's sample counter feeds Streaming's resume
    offset (`dataset.state_dict(sample_in_epoch)`), so it must count every sample consumed."""
    return int(batch["ids"].shape[0])


# The loss-token count of a microbatch without any (only rejected samples' placeholder rows). Composer
# weights each microbatch by count / (the batch's total): a batch of only such rows would divide 0 by 0.
# So small that float32 rounds `real + NO_TARGETS` back to `real`: a real batch's weights stay exact.
NO_TARGETS = 1e-9


def get_num_tokens_in_batch(batch: Mapping[str, Any]) -> dict[str, int | float]:
    """Real (non-padding) tokens, and tokens that carry loss (for `accumulate_train_batch_on_tokens`;
    NO_TARGETS when there are none)."""
    return {"total": int(batch["lengths"].sum()), "loss_generating": int((batch["targets"] != -1).sum()) or NO_TARGETS}


def _crop_counts(batch: Mapping[str, Any]) -> list[int]:
    if batch["tiles"] is None:
        return []
    return [0 if (w, h) == (1, 1) else w * h for w, h in batch["tiles"].tolist()]


def split_batch(batch: Mapping[str, Any], microbatch_size: int) -> list[dict[str, Any]]:
    """Split rows into microbatches of `microbatch_size`, each keeping its rows' images, crops, tiles."""
    if isinstance(microbatch_size, float):
        assert microbatch_size.is_integer(), f"microbatch_size must be a whole number, got {microbatch_size}"
        microbatch_size = int(microbatch_size)
    assert microbatch_size > 0, f"microbatch_size must be > 0, got {microbatch_size}"
    B = get_num_samples_in_batch(batch)
    has_image = batch["has_image"].tolist()
    n_crops = _crop_counts(batch)
    out, img0, crop0, skip0 = [], 0, 0, 0
    for r0 in range(0, B, microbatch_size):
        r1 = min(B, r0 + microbatch_size)
        n_img = sum(has_image[r0:r1])
        n_crop = sum(n_crops[img0:img0 + n_img])
        n_skip = sum(1 for L in batch["lengths"][r0:r1].tolist() if L == 0)
        out.append({
            "ids": batch["ids"][r0:r1],
            "targets": batch["targets"][r0:r1],
            "images": batch["images"][img0:img0 + n_img] if n_img else None,
            "crops": batch["crops"][crop0:crop0 + n_crop] if n_crop else None,
            "tiles": batch["tiles"][img0:img0 + n_img] if n_img else None,
            "sample_ids": batch["sample_ids"][r0:r1],
            "has_image": batch["has_image"][r0:r1],
            "lengths": batch["lengths"][r0:r1],
            "skipped": batch["skipped"][skip0:skip0 + n_skip],
        })
        img0, crop0, skip0 = img0 + n_img, crop0 + n_crop, skip0 + n_skip
    return out


def data_spec(dataloader):
    """Wrap a loader from `build_dataloader` in a Composer DataSpec that understands this batch."""
    from composer.core import DataSpec  # lazy: the data path runs without Composer
    return DataSpec(dataloader, get_num_samples_in_batch=get_num_samples_in_batch,
                    get_num_tokens_in_batch=get_num_tokens_in_batch, split_batch=split_batch)


# ---------------------------------------------------------------------------------------------
# Loader and builders


class OCRDataLoader(StreamingDataLoader):
    """A `StreamingDataLoader` (resumable via `state_dict()`) that reports rejected samples.

    Each sample listed in `batch["skipped"]` is logged (id and reason) in the main process, where it
    is seen whatever the number of workers, and counted in `num_skipped` (this rank, since creation);
    `recent_skips` keeps the last 100 (id, reason) pairs for loggers.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_skipped = 0
        self.recent_skips: collections.deque = collections.deque(maxlen=100)

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            for sample_id, reason in batch["skipped"]:
                self.num_skipped += 1
                self.recent_skips.append((sample_id, reason))
                log.warning("skipped sample %r (%s); %d skipped so far on this rank", sample_id, reason,
                            self.num_skipped)
            yield batch


def _plain(cfg) -> Any:
    """OmegaConf config -> plain dicts/lists (interpolations resolved); anything else unchanged."""
    from omegaconf import OmegaConf
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def build_streams(streams_cfg) -> list[Stream]:
    """`{name: {local, remote, proportion, ...}}` (or a list of such dicts) -> a list of `Stream`s.

    Checked here so the error names the stream instead of surfacing later inside Streaming: a local-only
    stream (no remote) must already hold an MDS `index.json` with at least one shard; `proportion`,
    `repeat` and `choose` must be positive numbers (Streaming turns a 0.0 into a numpy error).
    """
    streams_cfg = _plain(streams_cfg)
    items = list(streams_cfg.items()) if isinstance(streams_cfg, Mapping) else \
        [(str(i), s) for i, s in enumerate(streams_cfg)]
    if not items:
        raise DataError("streams: need at least one stream")
    streams = []
    for name, s in items:
        unknown = set(s) - set(STREAM_KEYS)
        if unknown:
            raise DataError(f"stream {name!r}: unknown keys {sorted(unknown)} (allowed: {STREAM_KEYS})")
        if not (s.get("local") or s.get("remote")):
            raise DataError(f"stream {name!r}: needs `local` and/or `remote`")
        for key in ("proportion", "repeat", "choose"):
            value = s.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise DataError(f"stream {name!r}: {key} must be a number > 0, got {value!r} "
                                "(leave a stream out of `streams` to not train on it)")
        if not s.get("remote"):
            index = os.path.join(s["local"], s.get("split") or "", "index.json")
            if not os.path.isfile(index):
                raise DataError(f"stream {name!r}: no MDS index at {index} (and no remote to fetch it from)")
            if not _index_shards(index):
                raise DataError(f"stream {name!r}: the MDS at {index} holds no samples")
        streams.append(Stream(**s))
    return streams


def _index_shards(index: str) -> list:
    import json
    with open(index) as f:
        return [sh for sh in json.load(f).get("shards", []) if sh.get("samples", 0) > 0]


def build_dataset(dataset_cfg, tokenizer, device_batch_size: int) -> OCRStreamingDataset:
    """`dataset` config section (`streams` + OCRStreamingDataset keyword arguments) -> the dataset."""
    cfg = dict(_plain(dataset_cfg))
    if "streams" not in cfg:
        raise DataError("dataset config needs `streams`")
    streams = build_streams(cfg.pop("streams"))
    try:
        return OCRStreamingDataset(streams=streams, tokenizer=tokenizer, batch_size=device_batch_size, **cfg)
    except TypeError as e:  # an unknown key: say which section it came from
        raise TypeError(f"dataset config: {e}") from None
    except RuntimeError as e:  # e.g. a remote stream whose index lists no samples
        raise DataError(f"dataset: {e}") from None


def build_dataloader(cfg, tokenizer, device_batch_size: int) -> OCRDataLoader:
    """Loader config (`dataset:` section + DataLoader knobs) -> an `OCRDataLoader`.

    DataLoader knobs: num_workers (2), prefetch_factor (2 batches per worker), persistent_workers
    (True: keeps worker processes and their open shards across epochs), pin_memory (default: only
    when CUDA is available), drop_last (True: every batch full, every rank the same number of
    steps), timeout (0). Wrap the result with `data_spec(loader)` for Composer's Trainer.
    A loader with no batch in an epoch (fewer samples per rank than `device_batch_size` with
    drop_last) is a DataError: Composer would otherwise spin through empty epochs forever.
    """
    cfg = dict(_plain(cfg))
    unknown = set(cfg) - set(LOADER_KEYS)
    if unknown:
        raise DataError(f"loader config: unknown keys {sorted(unknown)} (allowed: {LOADER_KEYS})")
    dataset = build_dataset(cfg["dataset"], tokenizer, device_batch_size)
    drop_last = cfg.get("drop_last", True)
    if len(dataset) < (device_batch_size if drop_last else 1):
        raise DataError(
            f"an epoch holds {dataset.epoch_size} samples, {len(dataset)} per rank: fewer than one batch of "
            f"{device_batch_size}{' (drop_last: true drops it)' if drop_last else ''}; lower the batch size, "
            "add data, or set the dataset's epoch_size")
    num_workers = cfg.get("num_workers", 2)
    return OCRDataLoader(
        dataset,
        batch_size=device_batch_size,  # the same number the dataset partitions with
        collate_fn=functools.partial(collate, pad_id=tokenizer.pad_id, max_seq_len=dataset.max_seq_len),
        num_workers=num_workers,
        # Both are only valid with workers (torch raises otherwise).
        prefetch_factor=cfg.get("prefetch_factor", 2) if num_workers > 0 else None,
        persistent_workers=cfg.get("persistent_workers", True) if num_workers > 0 else False,
        pin_memory=cfg.get("pin_memory", torch.cuda.is_available()),
        drop_last=drop_last,
        timeout=cfg.get("timeout", 0),
    )


def data_source(data: str | Path) -> dict:
    """A dataset named by one string (`final_eval.data`, `evaluate --data`) -> `read_records` arguments:
    a remote URL (s3://..., read through a private cache) or a local MDS folder."""
    return {"remote": str(data)} if "://" in str(data) else {"local": data}


def read_records(remote: str | None = None, local: str | Path | None = None, limit: int | None = None,
                 split: str | None = None) -> list[dict]:
    """The first `limit` raw unified records (all when None) of one MDS stream, in index order.

    For tokenizer training, the callbacks' probe / held-out samples and the final eval. Reads through
    Streaming's own `Stream(remote, local, split)`, exactly as the training stream with the same
    arguments would, so a remote dataset works before any training sample was read (`local` may hold
    only `index.json`, or nothing at all):
        remote=None, local=DIR       a local MDS folder, read in place (zstd shards are decompressed
                                     next to themselves, as StreamingDataset does: DIR must be writable);
        remote=URL_OR_DIR, local=DIR `index.json` and the shards are fetched into the cache DIR
                                     (s3://, gs://, ..., or a plain folder) unless already there;
        remote=URL_OR_DIR, local=None a private temporary cache, deleted before returning.
    Only the shards that hold the first `limit` rows are fetched. This is a separate `Stream`, never a
    training dataset: no StreamingDataset shared memory and no distributed collective, so any one rank
    may call it alone (rank 0 in `final_eval`). Concurrent callers on one machine sharing a cache are
    serialized by a file lock while they fetch and decompress."""
    import hashlib
    import shutil
    import tempfile

    from filelock import FileLock
    from streaming.base.world import World

    if remote is None and local is None:
        raise ValueError("read_records needs `local` (an MDS folder or cache) and/or `remote`")
    remote = str(remote) if remote else None
    if remote is None and not os.path.isfile(os.path.join(local, split or "", "index.json")):
        raise FileNotFoundError(f"no MDS index at {os.path.join(local, split or '', 'index.json')} "
                                "(and no remote to fetch it from)")
    private = local is None
    local = tempfile.mkdtemp(prefix="nanoocr-read-") if private else str(local)
    os.makedirs(local, exist_ok=True)
    stream = Stream(remote=remote, local=local, split=split)
    stream.apply_default({"split": None, "download_retry": 2, "download_timeout": 120, "validate_hash": None,
                          "keep_zip": False})
    key = hashlib.blake2s(os.path.realpath(local).encode(), digest_size=8).hexdigest()
    lock = FileLock(os.path.join(tempfile.gettempdir(), f"nanoocr-read-{key}.lock"))
    one_process = World(num_nodes=1, ranks_per_node=1, workers_per_rank=1, worker=0)  # this process fetches
    rows: list[dict] = []
    try:
        with lock:
            shards = stream.get_shards(one_process, allow_unsafe_types=False)
        for shard in shards:
            if limit is not None and len(rows) >= limit:
                break
            with lock:
                stream.prepare_shard(shard)
            for j in range(shard.samples if limit is None else min(shard.samples, limit - len(rows))):
                row = shard.get_item(j)
                rows.append({"id": row["id"], "source": row.get("source", ""), "messages": row["messages"],
                             "image": row["image"] or None})  # MDS stores "no image" as b""
    finally:
        if private:
            shutil.rmtree(local, ignore_errors=True)
    return rows
