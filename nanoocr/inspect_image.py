"""`python -m nanoocr.inspect_image`: the entry point of nanoocr.data.inspect_image (see there)."""
import sys

from nanoocr.data.inspect_image import main

if __name__ == "__main__":
    sys.exit(main())
