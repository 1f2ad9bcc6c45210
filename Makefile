# Entry points; every target first runs the idempotent set-up (seconds when nothing changed).
PY := .venv/bin/python
DETECTRON2_DATASETS ?= $(CURDIR)/datasets
export DETECTRON2_DATASETS

# The upstream-detectron2 test venv, built from D2_SRC (a detectron2 source folder or .tar.gz).
UPSTREAM_VENV ?= .venv-upstream

.PHONY: setup demo test test-upstream lint coco

setup:
	bash scripts/setup.sh

test: setup
	bash scripts/install_browser.sh
	$(PY) -m pytest -q -n 2 --dist worksteal tests

test-upstream:
	@test -n "$(D2_SRC)" || { echo "make test-upstream needs D2_SRC=PATH (detectron2 sources)"; exit 2; }
	VENV=$(UPSTREAM_VENV) D2_SRC="$(D2_SRC)" bash scripts/setup.sh
	bash scripts/install_browser.sh
	$(UPSTREAM_VENV)/bin/python -m pytest -q -n 2 --dist worksteal tests

demo: setup
	$(PY) tools/run_demo.py --output output/demo

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

coco: setup
	bash scripts/run_coco.sh
