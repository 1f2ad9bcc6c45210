# Entry points; every target first runs the idempotent set-up (seconds when nothing changed).
PY := .venv/bin/python
DETECTRON2_DATASETS ?= $(CURDIR)/datasets
export DETECTRON2_DATASETS

.PHONY: setup demo test lint coco

setup:
	bash scripts/setup.sh

test: setup
	bash scripts/install_browser.sh
	$(PY) -m pytest -q -n 2 tests

demo: setup
	$(PY) tools/run_demo.py --output output/demo

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

coco: setup
	bash scripts/run_coco.sh
