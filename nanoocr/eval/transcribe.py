"""Image(s) → text with a trained NanoOCR: prompt building, batched greedy generation, scoring.

Used by the end-of-run evaluation, the GenerationEval callback, `nanoocr.eval.sample` and `nanoocr.eval.evaluate`.
No Composer here. The prompt is the user turn of the training conversations (`records.OCR_PROMPT` by
default) rendered for completion, with the single <|image|> expanded to the image's token count. A
transcription can report whether generation stopped on its own, and every scored row says whether its
output ends in a repetition loop (`nanoocr.eval.repetition`).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import torch
from PIL import Image

from nanoocr.model.distributed import full_params, unwrap
from nanoocr.model.engine import Engine
from nanoocr.model.precision import resolve
from nanoocr.data.images import MODES, count_tokens, image_views, open_image
from nanoocr.eval.metrics import score, summarize
from nanoocr.eval.repetition import ends_in_loop
from nanoocr.data.processing import expand_image
from nanoocr.data.records import IMAGE_TAG, OCR_PROMPT


class ExportError(ValueError):
    """A --model folder that cannot be used; the message names the folder and the reason."""


# Which export file a library's error (which names none) is about.
_FILE_OF_ERROR = {"JSONDecodeError": "config.json is not JSON", "SafetensorError": "model.safetensors is unreadable"}


def load_export(directory: str | Path, device: str = "cpu", dtype: str = "auto"):
    """`export.load_model` for the CLIs: → (model, tokenizer, meta with a valid 'mode' and 'prompt', and
    'precision': what the model computes in and why), or ExportError. `dtype`: the CPU autocast setting
    (auto | bf16 | fp32, nanoocr.model.precision). An export may come from anywhere, so every way it can be unusable (missing, a symlink loop,
    config.json not JSON or not matching the weights, a refused pickle, a broken tokenizer file...) is one
    error naming it, never a traceback; load_model itself allocates nothing before the config is checked."""
    from nanoocr.train.export import load_model
    directory = Path(directory)
    try:
        # os.stat, not is_dir(): is_dir() answers False for a symlink loop or a permission problem alike.
        if not stat.S_ISDIR(os.stat(directory).st_mode):
            raise ExportError(f"{directory}: not a folder (an export is the folder nanoocr.train.export wrote)")
        model, tokenizer, meta = load_model(directory, device=device)
    except ExportError:
        raise
    except Exception as e:  # OSError, ValueError, KeyError, TypeError, SafetensorError, tokenizers' Exception...
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)  # not "[Errno 40] ...: 'dir'"
        if str(directory) not in reason:  # load_model's own messages name the file; the libraries' do not
            reason = f"{directory}: {_FILE_OF_ERROR.get(type(e).__name__, 'not a usable export')}: {reason}"
        raise ExportError(reason) from None
    # meta comes from the same untrusted config.json: a bad mode or prompt would trip an assert mid-generation.
    model.autocast_dtype, why = resolve(dtype, torch.device(device).type)
    meta = {**meta, "mode": meta.get("mode", "base"), "prompt": meta.get("prompt", OCR_PROMPT), "precision": why}
    if not (isinstance(meta["mode"], str) and meta["mode"] in MODES):
        raise ExportError(f"{directory}/config.json: mode {meta['mode']!r} is not one of {sorted(MODES)}")
    if not (isinstance(meta["prompt"], str) and meta["prompt"].count(IMAGE_TAG) == 1):
        raise ExportError(f"{directory}/config.json: prompt {meta['prompt']!r} must hold {IMAGE_TAG} exactly once")
    return model, tokenizer, meta


def build_prompt(tokenizer, image: Image.Image, prompt: str, mode: str, min_crops: int = 2, max_crops: int = 6):
    """→ (prompt ids with the image span expanded, ImageViews)."""
    views = image_views(image, mode, min_crops, max_crops)
    ids = tokenizer.render_for_completion({"messages": [{"role": "user", "content": prompt}]})
    assert ids.count(tokenizer.image_id) == 1, f"the prompt must hold exactly one {IMAGE_TAG}, got: {prompt!r}"
    ids, _ = expand_image(ids, [0] * len(ids), tokenizer.image_id, views.tokens)
    return ids, views


@torch.no_grad()
def transcribe(model, tokenizer, images: list, prompt: str = OCR_PROMPT, mode: str = "base",
               max_new_tokens: int = 512, batch_size: int = 8, min_crops: int = 2, max_crops: int = 6,
               return_stopped: bool = False, **generate_kwargs):
    """Greedy transcription of PIL images (or bytes/paths), `batch_size` images per generate call: the texts,
    or with return_stopped (texts, stopped): stopped[i] False when image i ran to max_new_tokens.

    `model`: a NanoOCR, or the Trainer's wrapped model (ComposerNanoOCR / DDP / FSDP). Sharded (FSDP), pass
    the outermost module and call this on every rank: its parameters are gathered (full_params) first."""
    with full_params(model):
        texts, stopped = _transcribe(unwrap(model), tokenizer, images, prompt, mode, max_new_tokens, batch_size,
                                     min_crops, max_crops, **generate_kwargs)
    return (texts, stopped) if return_stopped else texts


def _transcribe(model, tokenizer, images, prompt, mode, max_new_tokens, batch_size, min_crops, max_crops,
                **generate_kwargs):
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stop = [tokenizer.token_id("<|assistant_end|>"), tokenizer.bos_id]
    engine, texts, stopped = Engine(model), [], []
    for i in range(0, len(images), batch_size):
        chunk = [im if isinstance(im, Image.Image) else open_image(im) for im in images[i:i + batch_size]]
        prompts, views = zip(*(build_prompt(tokenizer, im, prompt, mode, min_crops, max_crops) for im in chunk))
        crops = [v.crops for v in views if v.crops is not None]
        out = engine.generate(
            list(prompts),
            images=torch.stack([v.global_view for v in views]).to(device),
            crops=torch.cat(crops).to(device) if crops else None,
            tiles=torch.tensor([v.tiles for v in views], dtype=torch.long, device=device),
            max_new_tokens=max_new_tokens, stop_ids=stop, return_stopped=True, **generate_kwargs)
        texts += [tokenizer.decode(ids) for ids in out[0]]
        stopped += out[1]
    model.train(was_training)
    return texts, stopped


def evaluate_records(model, tokenizer, records: list[dict], mode: str = "base", max_new_tokens: int = 512,
                     batch_size: int = 8, **kwargs) -> tuple[dict, list[dict]]:
    """Transcribe unified records (image + user prompt) and score against the assistant answer: (summary, rows),
    each row {"id", "pred", "gt", <metrics>, "ends_in_loop", "stopped"}, the summary with the repetition rate.
    `model` as in `transcribe` (sharded: every rank, the outermost module); kwargs go to Engine.generate."""
    def prompt_of(r):  # the first user turn (a leading system message is not part of the image prompt)
        return next(m["content"] for m in r["messages"] if m["role"] == "user")

    rows = []
    for prompt in sorted({prompt_of(r) for r in records}):  # one generate call shape per prompt text
        group = [r for r in records if prompt_of(r) == prompt]
        preds, stopped = transcribe(model, tokenizer, [r["image"] for r in group], prompt=prompt, mode=mode,
                                    max_new_tokens=max_new_tokens, batch_size=batch_size, return_stopped=True,
                                    **kwargs)
        for r, pred, stop in zip(group, preds, stopped):
            gt = next(m["content"] for m in r["messages"] if m["role"] == "assistant")
            rows.append({"id": r["id"], "pred": pred, "gt": gt, **score(pred, gt), "ends_in_loop": ends_in_loop(pred),
                         "stopped": stop, "vision_tokens": count_tokens(mode, open_image(r["image"]).size,
                                                              min_crops=kwargs.get("min_crops", 2),
                                                              max_crops=kwargs.get("max_crops", 6))})
    order = {r["id"]: i for i, r in enumerate(records)}
    rows.sort(key=lambda row: order[row["id"]])
    return {**summarize(rows), **vision_token_density(rows)}, rows


def vision_token_density(rows: list[dict]) -> dict:
    """DeepSeek-OCR's compression figure for a set of evaluate_records rows: characters of ground truth per
    vision token (`chars_per_vision_token`), and of it read correctly (`read_chars_per_vision_token`: each
    sample's characters times max(0, 1 - CER)), with `vision_tokens` the image positions the images took."""
    tokens = sum(row["vision_tokens"] for row in rows)
    chars = sum(len(row["gt"]) for row in rows)
    read = sum(len(row["gt"]) * max(0.0, 1.0 - row["cer"]) for row in rows)
    return {"vision_tokens": tokens, "chars_per_vision_token": chars / tokens if tokens else 0.0,
            "read_chars_per_vision_token": read / tokens if tokens else 0.0}

