"""`python -m nanoocr.train_tokenizer`: the entry point of nanoocr.data.train_tokenizer (see there)."""
import sys

from nanoocr.data.train_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
