# difaug — the commands of the README. Everything installs itself into ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# controlnet-aux imports torchvision at import time, and torchvision only imports beside the torch
# build it was made for: install them as one matched pair. Override on a cluster with its own CUDA,
# e.g. `make install TORCH="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,slurm
CONFIG ?= pipelines/demo.yaml
TINY ?= models/tiny
DEMO_OUT ?= runs/demo

.PHONY: install test lint demo shards bench clean slurm-start slurm-stop slurm-status

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check difaug tests benchmarks
	$(BIN)/ruff format --check difaug tests benchmarks

$(TINY)/difaug-models.json: | install
	$(BIN)/difaug models make-tiny $(TINY)

# Offline end to end: tiny random models, the bundled demo set, the full job, then a look at it.
demo: install $(TINY)/difaug-models.json
	$(BIN)/difaug manifest validate manifests/demo/manifest.csv
	$(BIN)/difaug generate --config pipelines/demo.yaml --model $(TINY) --out $(DEMO_OUT)
	$(BIN)/difaug inspect $(DEMO_OUT) --sheet $(DEMO_OUT)/contact_sheet.png

# The real job, on a GPU machine or cluster: make shards CONFIG=pipelines/pascal5i-fold0-hed.yaml
shards: install
	$(BIN)/difaug generate --config $(CONFIG)

# A one-node SLURM on this machine (root; see scripts/slurm-local.sh): the SLURM tests use it.
slurm-start slurm-stop slurm-status:
	scripts/slurm-local.sh $(@:slurm-%=%)

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf runs models/tiny .pytest_cache
