# Two commands for a fresh machine:
#   make demo   set up .venv with the runtime only and run the main job
#   make test   set up .venv with the test extras too and run the tests
# Without a GPU, the CPU build of torch is a fraction of the default CUDA one:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_INDEX ?=

.PHONY: demo test test-sae-libraries docs install clean

# The runtime: dissect and what `pip install dissect` brings (the demo needs nothing more).
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install torch torchvision --index-url $(TORCH_INDEX))
	$(BIN)/pip install -e .
	touch $@

# The test suite's extras on top.
$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/pip install -e ".[test]"
	touch $@

install: $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/dissect demo

test: $(VENV)/.test
	$(BIN)/python -m pytest

# SAE files written by the SAE libraries themselves (optional: these packages are not dissect's dependencies;
# overcomplete 0.3.0 imports matplotlib.cm.get_cmap, gone in matplotlib 3.9, while saev asks for 3.9.2 or later,
# which its tests here never import: a second pip call, or pip's resolver backtracks through old matplotlib sources).
test-sae-libraries: $(VENV)/.test
	$(BIN)/pip install sae-lens saev dictionary-learning overcomplete
	$(BIN)/pip install "matplotlib<3.9"
	$(BIN)/python -m pytest -m sae_libraries tests/test_sae_libraries.py

docs: $(VENV)/.runtime
	$(BIN)/pip install -e ".[docs]"
	$(BIN)/python -m mkdocs serve

clean:
	rm -rf $(VENV) runs
