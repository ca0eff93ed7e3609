"""The unified conversation record: its format, the one check of a conversation, and the gate every sample
passes before it becomes an MDS row.

A record is `{"id": str, "source": str, "messages": [{"role", "content"}, ...], "image": bytes | path | None}`.
`validate_record` returns the normalized record (image as the ORIGINAL bytes, never re-encoded unless a
`max_side` downscale is asked for) or raises `RecordError(reason)` with a reason meant for a human reading
`rejected.jsonl`.

This module is the one home of the format: `IMAGE_TAG` (what user text writes for the image), the
training prompts (`OCR_PROMPT`, the default of export, transcription and every OCR source), `qa` (a
one-turn record) and `check_conversation`, the ONE definition of a valid conversation, which conversion
(`validate_record`), training (`processing.process_sample`) and rendering (`Tokenizer.render_conversation`)
all call, so a conversation is valid for all three or for none:
- an optional leading system message, then user/assistant alternating from the user, ending with the
  assistant (a sample without an answer has nothing to train on); only a prompt rendered for completion
  (`need_answer=False`) may end on the user;
- no empty content, none longer than MAX_TEXT_CHARS characters, and at most MAX_RECORD_CHARS over all the
  messages;
- at most one `<image>` tag, in the first user message; exactly one iff an image is present (an image is
  absent when it is None, b"" (how MDS stores "none") or "");
- text must be valid UTF-8: bytes that don't decode and lone surrogates (what `json.loads` makes of
  "\\udcff") are rejected with the byte/char offset.

Notable features of `validate_record`:
- image paths stay inside the data root (`../`, absolute paths elsewhere and symlinks pointing out are
  rejected after `Path.resolve()`, which follows symlinks);
- image files larger than `nanoocr.data.images.MAX_IMAGE_BYTES` are refused by their size before a byte is read
  (`read_image_file`), image bytes handed over in memory by the same bound;
- images are decoded once by `nanoocr.data.images.open_image` (corrupt, truncated, zero-byte, pixel bombs are
  rejected there); palette/LA/RGBA/CMYK/16-bit/1-bit modes and EXIF rotation are fine;
- sources may hand over a record that already failed upstream as `{"id", "source", "error": reason}`
  (a line that is not JSON, a broken PDF): it is rejected here with that reason, so every failure is
  reported the same way.
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from nanoocr.data.images import MAX_IMAGE_BYTES, MAX_PIXELS, ImageError, open_image, read_image_file

IMAGE_TAG = "<image>"  # what user text writes where the image goes; the tokenizer makes it one <|image|> id
# The training prompts, shared by the real sources (tasks/, pdf.py) and the synthetic generators that stand in
# for them; OCR_PROMPT is also what an export records and transcription uses by default.
OCR_PROMPT = f"{IMAGE_TAG}\nFree OCR."
TABLE_PROMPT = f"{IMAGE_TAG}\nConvert the table to HTML."
FORMULA_PROMPT = f"{IMAGE_TAG}\nConvert the formula to LaTeX."
# The released DeepSeek-OCR's prompts (docs/FACTS.md "DeepSeek-OCR decoder"), by task; `locate` takes the
# object's name: DEEPSEEK_PROMPTS["locate"].format("the title"). Free OCR is OCR_PROMPT itself.
DEEPSEEK_PROMPTS = {
    "document": f"{IMAGE_TAG}\n<|grounding|>Convert the document to markdown.",
    "ocr": f"{IMAGE_TAG}\n<|grounding|>OCR this image.",
    "free_ocr": OCR_PROMPT,
    "figure": f"{IMAGE_TAG}\nParse the figure.",
    "describe": f"{IMAGE_TAG}\nDescribe this image in detail.",
    "locate": f"{IMAGE_TAG}\nLocate <|ref|>{{}}<|/ref|> in the image.",
}
# A dense printed page holds ~4000 characters: 1M is a book in one answer, beyond any sequence the model
# trains on; a longer text is a broken or hostile record (a 50 MB answer), not an OCR sample.
MAX_TEXT_CHARS = 1_000_000
MAX_RECORD_CHARS = 4 * MAX_TEXT_CHARS  # all messages together: many turns each under the bound


class RecordError(ValueError):
    """A record that cannot be used; `str(err)` is the reason."""


def _check_text(text, where: str) -> str:
    """Return `text` as a str that encodes to valid UTF-8, or raise naming where the bad byte is."""
    if isinstance(text, (bytes, bytearray)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"{where} is not valid UTF-8: byte 0x{text[e.start]:02x} at byte offset {e.start}")
    if not isinstance(text, str):
        raise RecordError(f"{where} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates, e.g. from a JSON "\udcff" escape
        raise RecordError(f"{where} is not valid UTF-8: unpaired surrogate at character offset {e.start}")
    return text


def qa(prompt: str, answer, image=None, rid: str = "", source: str = "") -> dict:
    """A one-turn record; a None answer becomes "" so validation reports it as empty, not as a type error."""
    return {"id": rid, "source": source, "image": image,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer or ""}]}


def image_present(image) -> bool:
    """Whether a record's `image` field holds an image: None, b"" (MDS's "none") and "" (JSONL's) do not."""
    return image is not None and not (isinstance(image, (str, bytes, bytearray)) and len(image) == 0)


def check_conversation(messages, has_image: bool | None = None, need_answer: bool = True) -> list[dict]:
    """Normalized copy of `messages` ({"role", "content"} only, str contents), or RecordError naming the problem.

    The one definition of a valid conversation (the rules are in the module docstring). `has_image`: whether
    the record has an image (None: not known here, e.g. a prompt being rendered; the tag's place and count
    are still checked). `need_answer=False` only for a prompt rendered for completion: it may end on the user.
    """
    if not isinstance(messages, list) or not messages:
        raise RecordError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RecordError(f"message {i} must be a dict with 'role' and 'content'")
        role = _check_text(m["role"], f"message {i} role")
        content = _check_text(m["content"], f"message {i} content")
        if not content.strip():
            raise RecordError(f"message {i} ({role}) has empty content")
        if len(content) > MAX_TEXT_CHARS:
            raise RecordError(f"message {i} ({role}) content too long: {len(content)} characters > limit "
                              f"{MAX_TEXT_CHARS}")
        out.append({"role": role, "content": content})
    total = sum(len(m["content"]) for m in out)
    if total > MAX_RECORD_CHARS:
        raise RecordError(f"messages too long: {total} characters in {len(out)} messages > limit {MAX_RECORD_CHARS}")
    start = 1 if out[0]["role"] == "system" else 0
    turns = out[start:]
    if not turns:
        raise RecordError("messages hold only a system message")
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise RecordError(f"wrong role order: message {i + start} is '{m['role']}', expected '{want}'")
    if need_answer and turns[-1]["role"] != "assistant":
        raise RecordError("last message is from the user: no assistant answer to train on")
    _check_image_tags(out, start, has_image)
    return out


def _check_image_tags(messages: list[dict], first_user: int, has_image: bool | None) -> None:
    """At most one `<image>`, in the first user message; exactly one iff there is an image (when known)."""
    n_first = messages[first_user]["content"].count(IMAGE_TAG)
    n_total = sum(m["content"].count(IMAGE_TAG) for m in messages)
    if n_total != n_first:
        raise RecordError(f"{IMAGE_TAG} tag outside the first user message")
    if has_image is True and n_first == 0:
        raise RecordError(f"image but no {IMAGE_TAG} tag")
    if has_image is False and n_first > 0:
        raise RecordError(f"{IMAGE_TAG} tag but no image")
    if n_first > 1:
        raise RecordError(f"{n_first} {IMAGE_TAG} tags (exactly one allowed)")


def resolve_image_path(path, data_root) -> Path:
    """`path` (relative to `data_root`, or absolute inside it) as a real path inside the root, else RecordError."""
    if data_root is None:
        raise RecordError(f"image is a path ({path}) but no data root was given to resolve it")
    root = Path(data_root).resolve()
    # resolve() follows symlinks, so a link inside the root that points outside is caught too.
    full = (root / path).resolve()
    if not full.is_relative_to(root):
        raise RecordError(f"path escapes data root: {path}")
    if not full.is_file():
        raise RecordError(f"image file not found: {path}")
    return full


def _downscale(data: bytes, img: Image.Image, max_side: int) -> bytes:
    """Re-encode only when the image is larger than `max_side`; JPEG stays JPEG (photos), else PNG (lossless)."""
    if max(img.size) <= max_side:
        return data
    img = img.copy()
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if data[:3] == b"\xff\xd8\xff":
        img.save(buf, format="JPEG", quality=95)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def validate_record(record: dict, data_root=None, max_pixels: int = MAX_PIXELS,
                    max_side: int | None = None) -> dict:
    """Normalized `{"id", "source", "messages", "image": bytes | None}` or RecordError(reason)."""
    if not isinstance(record, dict):
        raise RecordError(f"record must be a dict, got {type(record).__name__}")
    if record.get("error"):
        raise RecordError(str(record["error"]))
    image = record.get("image")
    if image is not None and not isinstance(image, (bytes, bytearray, str, Path)):
        raise RecordError(f"image must be bytes or a path, got {type(image).__name__}")
    has_image = image_present(image)
    messages = check_conversation(record.get("messages"), has_image)
    data = None
    if has_image:
        try:
            if isinstance(image, (bytes, bytearray)):
                data = bytes(image)
                if len(data) > MAX_IMAGE_BYTES:
                    raise ImageError(f"image too large: {len(data)} bytes > limit {MAX_IMAGE_BYTES}")
            else:
                data = read_image_file(resolve_image_path(image, data_root))  # size checked before reading
            img = open_image(data, max_pixels=max_pixels)
        except ImageError as e:
            raise RecordError(f"bad image: {e}")
        if max_side is not None:
            data = _downscale(data, img, max_side)
    return {"id": str(record.get("id", "")), "source": str(record.get("source", "")),
            "messages": messages, "image": data}
