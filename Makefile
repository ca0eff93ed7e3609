# Two commands for a new user; each does its own set-up (a .venv filled on first use).
#   make train   -> Tier-1: composer recipes/train.py yamls/tier1_overfit.yaml
#   make test    -> the test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test setup

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	@command -v pdftoppm >/dev/null || (apt-get install -y -q poppler-utils || (apt-get update -q && apt-get install -y -q poppler-utils)) || echo "warning: poppler-utils (pdftoppm/pdftotext) not installed; PDF sources will not work"
	@command -v tesseract >/dev/null || (apt-get install -y -q tesseract-ocr tesseract-ocr-eng || (apt-get update -q && apt-get install -y -q tesseract-ocr tesseract-ocr-eng)) || echo "warning: tesseract-ocr not installed; the Tesseract baseline (nanoocr.eval.tesseract) will not run"
	@test -d /usr/share/fonts/truetype/liberation -a -d /usr/share/fonts/truetype/freefont || (apt-get install -y -q fonts-dejavu-core fonts-liberation fonts-freefont-ttf || (apt-get update -q && apt-get install -y -q fonts-dejavu-core fonts-liberation fonts-freefont-ttf)) || echo "warning: fonts-liberation / fonts-freefont-ttf not installed; the reading curriculum (nanoocr.data.reading) has fewer fonts"
	touch $@

setup: $(BIN)/.installed

train: setup
	$(BIN)/composer recipes/train.py yamls/tier1_overfit.yaml

# The default suite first (what a developer runs: `pytest -q -m "not slow"`, ~15 min budget on 2 cores), then
# the slow tests (full Tier-1, stage chain, DDP, kill -9/autoresume...): CI runs both.
test: setup
	$(BIN)/pytest -q -m "not slow" --durations=15
	$(BIN)/pytest -q -m slow --durations=15
