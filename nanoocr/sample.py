"""`python -m nanoocr.sample`: the entry point of nanoocr.eval.sample (see there)."""
import sys

from nanoocr.eval.sample import main

if __name__ == "__main__":
    sys.exit(main())
