# Two commands: `make demo` and `make test`. Both set up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "Installing bce3s and its dev tools into $(VENV) (PyTorch, torchvision, pytest, ruff, ...); this takes about a minute."
	@echo "No NVIDIA GPU? Install the CPU build of PyTorch into $(VENV) first to skip ~4 GB of CUDA wheels (see README, Install)."
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bce3s demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench tools

test: $(STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/losses.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
