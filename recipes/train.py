"""Train nanoocr: `composer recipes/train.py YAML [key=value ...]` (or `python recipes/train.py ...`).

YAML → OmegaConf merge with the CLI → validation → tokenizer, model, Streaming loaders, optimizer,
scheduler, algorithms, callbacks, loggers → composer.Trainer.fit(). See nanoocr/train/recipe.py.
"""
import sys

from nanoocr.train.recipe import main

if __name__ == "__main__":
    sys.exit(main())
