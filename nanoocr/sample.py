"""Transcribe an image or a PDF page with an exported model (no Composer import).

    python -m nanoocr.sample --model DIR --image page.png
    python -m nanoocr.sample --model DIR --image paper.pdf --page 3 [--mode gundam] [--max-new-tokens 1024]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path


MAX_NEW_TOKENS = 32768


def pdf_page_png(pdf: Path, page: int, dpi: int = 144) -> bytes:
    """Rasterize one page with poppler's pdftoppm at 144 dpi, as the training pages were."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "page"
        try:
            subprocess.run(["pdftoppm", "-r", str(dpi), "-png", "-singlefile", "-f", str(page), "-l", str(page),
                            str(pdf), str(out)], check=True, capture_output=True)
        except FileNotFoundError:
            raise SystemExit("error: pdftoppm not found; install poppler-utils (apt-get install poppler-utils)")
        except subprocess.CalledProcessError as e:
            raise SystemExit(f"error: pdftoppm failed on {pdf} page {page}: {e.stderr.decode(errors='replace')}")
        return (out.with_suffix(".png")).read_bytes()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Transcribe an image or a PDF page with an exported nanoocr model.")
    ap.add_argument("--model", required=True, help="folder written by nanoocr.export (or a run's export/)")
    ap.add_argument("--image", required=True, help="an image file, or a .pdf with --page")
    ap.add_argument("--page", type=int, default=1, help="1-based page number for PDFs")
    ap.add_argument("--mode", help="image mode (default: the one the model was trained with)")
    ap.add_argument("--prompt", help="user prompt containing <image> (default: the training prompt)")
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    args = ap.parse_args(argv)
    from nanoocr.images import MODES
    if args.page < 1:
        ap.error(f"--page must be >= 1 (pages are numbered from 1), got {args.page}")
    if args.mode is not None and args.mode not in MODES:
        ap.error(f"--mode must be one of {', '.join(sorted(MODES))}, got {args.mode!r}")
    if args.prompt is not None and args.prompt.count("<image>") != 1:
        ap.error(f"--prompt must contain <image> exactly once, got {args.prompt!r}")
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        ap.error(f"--max-new-tokens must be in 1..{MAX_NEW_TOKENS}, got {args.max_new_tokens}")

    from nanoocr.export import load_model
    from nanoocr.images import ImageError, open_image
    from nanoocr.transcribe import transcribe

    path = Path(args.image)
    if not path.is_file():
        print(f"error: no such file: {path}", file=sys.stderr)
        return 2
    src = pdf_page_png(path, args.page) if path.suffix.lower() == ".pdf" else path
    try:
        image = open_image(src)
    except ImageError as e:
        print(f"error: {path}: {e}", file=sys.stderr)
        return 2
    model, tokenizer, meta = load_model(args.model)
    try:
        text = transcribe(model, tokenizer, [image], prompt=args.prompt or meta.get("prompt", "<image>\nFree OCR."),
                          mode=args.mode or meta.get("mode", "base"), max_new_tokens=args.max_new_tokens)[0]
    except ImageError as e:  # e.g. an aspect ratio no view of this mode can hold
        print(f"error: {path}: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
