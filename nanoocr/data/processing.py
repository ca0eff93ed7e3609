"""One unified record -> model-ready tensors (ids, targets, pixels), or a SampleError with the reason.

Notable features:
- Every record passes `records.check_conversation` (the one definition of a valid conversation, the same
  check conversion ran: roles, an assistant answer last, empty or over-long messages, `<image>` tag vs
  image), so a bad record is a clear reason in the loader's log, never a crash or a silent count mismatch
  inside the model, and a record valid here is one `convert_to_mds` accepts and the other way round.
- The single `<|image|>` id from `render_conversation` is expanded to the image's token count, which
  depends on the mode and, in Gundam, on the crop grid chosen for this image.
- Loss policies: `all_text` (every text token is a target, DeepSeek-OCR mid-training) or `assistant`
  (only nanochat's mask==1 tokens, SFT). Image positions are never targets under either.
- Over-long samples are never cut inside the image span: `truncate` cuts the text tail, `drop` raises.

Layout (ids of length L+1, shifted by one):
    ids      = [bos, <|user_start|>, img * n, "\\nFree OCR.", <|user_end|>, <|assistant_start|>, ...]
    inputs   = ids[:-1]      targets = ids[1:] with -1 where the target is an image id / not in the loss
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from nanoocr.data.images import MAX_PIXELS, MODES, ImageError, image_views, open_image
from nanoocr.data.records import IMAGE_TAG, check_conversation, image_present
from nanoocr.data.tokenizer import Tokenizer

LOSS_POLICIES = ("all_text", "assistant")
OVERFLOW_POLICIES = ("truncate", "drop")


class SampleError(ValueError):
    """A record that cannot become a training sample; the message says which record and why."""


def _load_image(image, max_pixels: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if not isinstance(image, (bytes, bytearray, str, Path)):
        raise SampleError(f"image must be bytes, a path or a PIL image, got {type(image).__name__}")
    return open_image(image, max_pixels=max_pixels)


def process_sample(record: dict, tokenizer: Tokenizer, mode: str = "base", loss: str = "all_text",
                   max_seq_len: int = 4096, min_crops: int = 2, max_crops: int = 6,
                   overflow: str = "truncate", max_pixels: int = MAX_PIXELS, normalize: bool = True) -> dict:
    """Unified record {"id", "messages", "image"} -> {"id", "input_ids", "targets", "image", "crops", "tiles"}.

    input_ids/targets: (L,) long with L <= max_seq_len; image: (3, S, S) or None; crops: (n, 3, 640, 640)
    or None; tiles: (w_tiles, h_tiles) for an image ((1, 1) without crops), None for text-only.
    """
    assert mode in MODES, f"unknown image mode {mode!r}; expected one of {sorted(MODES)}"
    assert loss in LOSS_POLICIES, f"unknown loss policy {loss!r}; expected one of {LOSS_POLICIES}"
    assert overflow in OVERFLOW_POLICIES, f"unknown overflow policy {overflow!r}; expected one of {OVERFLOW_POLICIES}"
    rid = record.get("id", "<no id>")
    image = record.get("image")
    has_image = isinstance(image, Image.Image) or image_present(image)
    try:
        messages = check_conversation(record.get("messages"), has_image)  # RecordError: a ValueError
        ids, mask = tokenizer.render_conversation(_cap_text(messages, tokenizer, max_seq_len))
        views = None
        if has_image:
            views = image_views(_load_image(image, max_pixels), mode, min_crops, max_crops, normalize)
            ids, mask = expand_image(ids, mask, tokenizer.image_id, views.tokens)
        ids, mask = _fit(ids, mask, tokenizer.image_id, max_seq_len, overflow)
    except (ImageError, ValueError) as e:  # SampleError is a ValueError too: prefix the record once
        raise SampleError(f"record {rid}: {e}") from None

    ids_t = torch.tensor(ids, dtype=torch.long)
    inputs, targets = ids_t[:-1], ids_t[1:].clone()  # (L,), (L,)
    targets[targets == tokenizer.image_id] = -1  # image positions carry vision vectors, never targets
    if loss == "assistant":
        targets[torch.tensor(mask[1:], dtype=torch.bool).logical_not()] = -1
    if not (targets != -1).any():
        # CE over zero targets is NaN; such a sample teaches nothing anyway.
        raise SampleError(f"record {rid}: no target tokens under loss={loss!r} (length {len(inputs)})")
    return {
        "id": rid,
        "input_ids": inputs,
        "targets": targets,
        "image": views.global_view if views else None,
        "crops": views.crops if views else None,
        "tiles": views.tiles if views else None,
    }


def _cap_text(messages: list[dict], tokenizer: Tokenizer, max_seq_len: int) -> list[dict]:
    """Messages whose contents are cut to what can reach the first max_seq_len + 1 tokens (+ a margin for
    the tokenizer's pre-split at the cut), so an untrusted 50 MB answer is never tokenized whole. A content
    that long yields more tokens than fit on its own: the truncated row is the same (overflow=truncate),
    and the sample is still over-long (overflow=drop)."""
    cap = (max_seq_len + 1) * tokenizer.max_token_chars + 1024
    if all(len(m["content"]) <= cap for m in messages):
        return messages
    return [{**m, "content": m["content"][:cap]} for m in messages]


def expand_image(ids: list[int], mask: list[int], image_id: int, n: int) -> tuple[list[int], list[int]]:
    """Replace the single <|image|> id by n of them (mask 0: the model never produces image tokens)."""
    count = ids.count(image_id)
    assert count == 1, f"expected exactly one {IMAGE_TAG} id after rendering, found {count}"
    p = ids.index(image_id)
    return ids[:p] + [image_id] * n + ids[p + 1:], mask[:p] + [0] * n + mask[p + 1:]


def _fit(ids: list[int], mask: list[int], image_id: int, max_seq_len: int, overflow: str):
    """Apply the overflow policy; ids holds L+1 tokens for L input positions."""
    length = len(ids) - 1
    if length <= max_seq_len:
        return ids, mask
    if overflow == "drop":
        raise SampleError(f"sequence of {length} tokens exceeds max_seq_len {max_seq_len} (overflow=drop)")
    # Keep the image span whole and at least one text token after it (so the cut lands in text).
    image_end = max((i + 1 for i, t in enumerate(ids) if t == image_id), default=0)
    if image_end > max_seq_len:
        raise SampleError(f"image span ends at token {image_end}, leaving no room for text within "
                          f"max_seq_len {max_seq_len} (sequence of {length} tokens)")
    return ids[:max_seq_len + 1], mask[:max_seq_len + 1]
