"""Transcribe an image or a PDF page with an exported model (no Composer import).

    python -m nanoocr.sample --model DIR --image page.png
    python -m nanoocr.sample --model DIR --image paper.pdf --page 3 [--mode gundam] [--max-new-tokens 1024]
        [--no-repeat-ngram 30 --no-repeat-window 90 --no-repeat-whitelist "<td>,</td>"]
    python -m nanoocr.sample --model DIR --image page.png --prompt $'<image>\n<|grounding|>OCR this image.' \
        --boxes out.png

--boxes draws the output's grounding spans (`<|ref|>label<|/ref|><|det|>[[x1,y1,x2,y2]]<|/det|>`, 0-999
coordinates; nanoocr/eval/grounding.py) on the input page and says on stderr how many boxes it drew and what
did not parse; with no box it still writes the page.

Decoding uses the no-repeat n-gram guard of the serving stack (vLLM NGramPerReqLogitsProcessor semantics,
DeepSeek-OCR's image-script settings by default; --no-repeat-ngram 0 turns it off). An output that ran to
--max-new-tokens without stopping is said so on stderr (the text may be cut, or a loop).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


MAX_NEW_TOKENS = 32768


def load_image(path: Path, page: int):
    """The RGB image to transcribe, or ImageError naming the file and the reason. Nothing is read before the
    file is known to be a regular file (a FIFO would block, /dev/zero never ends) and, for images, of at most
    MAX_IMAGE_BYTES; a PDF may be larger (a scanned book) and is read by pdftoppm, under pdf.py's timeout."""
    from nanoocr.data.images import ImageError, open_image, read_image_file
    from nanoocr.data.pdf import PopplerError, render_page
    if path.suffix.lower() != ".pdf":
        data = read_image_file(path)  # its errors name the path
    elif not path.is_file():
        raise ImageError(f"no such file, or not a regular file: {path}")
    else:
        try:
            data = render_page(path, page)  # 144 dpi, as the training pages were rendered
        except PopplerError as e:
            raise ImageError(f"{path} page {page}: {e}") from None
        except FileNotFoundError:
            raise ImageError("pdftoppm not found; install poppler-utils (apt-get install poppler-utils)") from None
    try:
        return open_image(data)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Transcribe an image or a PDF page with an exported nanoocr model.")
    ap.add_argument("--model", required=True, help="folder written by nanoocr.train.export (or a run's export/)")
    ap.add_argument("--image", required=True, help="an image file, or a .pdf with --page")
    ap.add_argument("--page", type=int, default=1, help="1-based page number for PDFs")
    ap.add_argument("--mode", help="image mode (default: the one the model was trained with)")
    ap.add_argument("--prompt", help="user prompt containing <image> (default: the training prompt)")
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--boxes", metavar="OUT.png",
                    help="draw the output's grounding boxes on the page and save it here (use a grounding prompt)")
    from nanoocr.eval.repetition import add_guard_args, check_guard_args
    add_guard_args(ap)
    from nanoocr.model.precision import add_device_args
    add_device_args(ap)
    args = ap.parse_args(argv)
    if check_guard_args(args):
        ap.error(check_guard_args(args))
    from nanoocr.data.images import MODES, ImageError
    if args.page < 1:
        ap.error(f"--page must be >= 1 (pages are numbered from 1), got {args.page}")
    if args.mode is not None and args.mode not in MODES:
        ap.error(f"--mode must be one of {', '.join(sorted(MODES))}, got {args.mode!r}")
    from nanoocr.data.records import IMAGE_TAG
    if args.prompt is not None and args.prompt.count(IMAGE_TAG) != 1:
        ap.error(f"--prompt must contain {IMAGE_TAG} exactly once, got {args.prompt!r}")
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        ap.error(f"--max-new-tokens must be in 1..{MAX_NEW_TOKENS}, got {args.max_new_tokens}")
    if args.boxes is not None:  # before the model is loaded and run
        from nanoocr.eval.grounding import check_boxes_path
        if check_boxes_path(Path(args.boxes)):
            ap.error(check_boxes_path(Path(args.boxes)))

    # The image before the model (and before torch is imported): a bad file is reported at once.
    path = Path(args.image)
    try:
        image = load_image(path, args.page)
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from nanoocr.model.engine import PromptTooLong
    from nanoocr.eval.repetition import guard_kwargs
    from nanoocr.eval.transcribe import ExportError, load_export, transcribe
    from nanoocr.model.precision import device_from_args
    try:
        device = device_from_args(args)
    except ValueError as e:
        ap.error(str(e))
    try:
        model, tokenizer, meta = load_export(args.model, device=device, dtype=args.dtype)
    except ExportError as e:
        print(f"error: --model {e}", file=sys.stderr)
        return 2
    print(f"[nanoocr] precision: {meta['precision']}", file=sys.stderr, flush=True)
    try:
        texts, stopped = transcribe(model, tokenizer, [image], prompt=args.prompt or meta["prompt"],
                                    mode=args.mode or meta["mode"], max_new_tokens=args.max_new_tokens,
                                    return_stopped=True, **guard_kwargs(args, tokenizer)[0])
    except ImageError as e:  # e.g. an aspect ratio no view of this mode can hold
        print(f"error: {path}: {e}", file=sys.stderr)
        return 2
    except PromptTooLong as e:  # a Gundam image with many crops, or too many new tokens for this model
        print(f"error: {path}: {e} (lower --max-new-tokens, or use a mode with fewer image tokens)", file=sys.stderr)
        return 2
    print(texts[0])
    if not stopped[0]:
        print(f"note: generation ran to --max-new-tokens {args.max_new_tokens} without stopping", file=sys.stderr)
    if args.boxes is not None:
        from nanoocr.eval.grounding import save_boxes
        try:
            report = save_boxes(image, texts[0], Path(args.boxes))
        except OSError as e:
            print(f"error: --boxes {args.boxes}: {e}", file=sys.stderr)
            return 2
        print("\n".join(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
