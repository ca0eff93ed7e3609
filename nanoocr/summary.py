"""`python -m nanoocr.summary`: the entry point of nanoocr.model.summary (see there)."""
import sys

from nanoocr.model.summary import main

if __name__ == "__main__":
    sys.exit(main())
