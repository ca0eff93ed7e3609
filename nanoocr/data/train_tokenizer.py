"""Train the byte-level BPE tokenizer offline on local text files and save tokenizer.json.

    python -m nanoocr.train_tokenizer --input a.txt b.jsonl ... --vocab-size 8192 --out runs/tokenizer

Each input file is read as UTF-8 text (undecodable bytes are replaced, not fatal) and fed line-chunked
to the trainer. Prints the vocabulary size and a round-trip check on a mixed-script sample.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanoocr.data.tokenizer import Tokenizer

ROUND_TRIP_SAMPLE = "Invoice #2024-07: total 1,234.56 EUR — 合计 ¥88 ✓ 😀\n\tLine two."


def iter_texts(paths: list[str], chunk_chars: int = 1 << 16):
    """Yield text chunks of about `chunk_chars` characters, cut at line ends, from each file."""
    for path in paths:
        buf, size = [], 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                buf.append(line)
                size += len(line)
                if size >= chunk_chars:
                    yield "".join(buf)
                    buf, size = [], 0
        if buf:
            yield "".join(buf)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="text files to train on")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--out", required=True, help="output directory for tokenizer.json")
    args = parser.parse_args(argv)
    missing = [p for p in args.input if not Path(p).is_file()]
    if missing:
        print(f"error: input files not found: {missing}", file=sys.stderr)
        return 1
    tok = Tokenizer.train_from_iterator(iter_texts(args.input), args.vocab_size)
    path = tok.save(args.out)
    ids = tok.encode(ROUND_TRIP_SAMPLE)
    ok = tok.decode(ids) == ROUND_TRIP_SAMPLE
    print(f"saved {path}: vocab size {tok.vocab_size} (requested {args.vocab_size})")
    print(f"round trip {'ok' if ok else 'FAILED'}: {len(ROUND_TRIP_SAMPLE)} chars -> {len(ids)} tokens")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
