"""`python -m nanoocr.convert_to_mds`: the entry point of nanoocr.data.convert (see there)."""
import sys

from nanoocr.data.convert import main

if __name__ == "__main__":
    sys.exit(main())
