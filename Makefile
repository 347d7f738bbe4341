# Two commands do all set-up on a fresh machine:
#   make reproduce   - install into .venv, then run the quick reproduction
#   make test        - install into .venv, then run the default test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install reproduce test theory clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# The CPU torch wheel first, pinned: nothing later may resolve torch to a newer build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

reproduce: $(STAMP)
	$(BIN)/lora-limits reproduce --profile quick

theory: $(STAMP)
	$(BIN)/lora-limits theory

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) results
