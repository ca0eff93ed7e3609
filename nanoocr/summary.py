"""`python -m nanoocr.summary`: the entry point of nanoocr.eval.summary (see there)."""
import sys

from nanoocr.eval.summary import main

if __name__ == "__main__":
    sys.exit(main())
