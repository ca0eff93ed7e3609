"""`python -m nanoocr.pages`: the entry point of nanoocr.eval.pages (see there)."""
import sys

from nanoocr.eval.pages import main

if __name__ == "__main__":
    sys.exit(main())
