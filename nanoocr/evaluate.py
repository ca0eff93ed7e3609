"""`python -m nanoocr.evaluate`: the entry point of nanoocr.eval.evaluate (see there)."""
import sys

from nanoocr.eval.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
