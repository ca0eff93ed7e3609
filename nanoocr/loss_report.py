"""`python -m nanoocr.loss_report`: the entry point of nanoocr.eval.loss_report (see there)."""
import sys

from nanoocr.eval.loss_report import main

if __name__ == "__main__":
    sys.exit(main())
