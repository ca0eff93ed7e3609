"""`python -m nanoocr.export`: the entry point of nanoocr.train.export (see there)."""
import sys

from nanoocr.train.export import main

if __name__ == "__main__":
    sys.exit(main())
