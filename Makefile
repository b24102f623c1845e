# Two commands for a fresh machine:
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test docs install clean

$(BIN)/dissect: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[test]"
	touch $@

install: $(BIN)/dissect

demo: install
	$(BIN)/dissect demo

test: install
	$(BIN)/python -m pytest

docs: install
	$(BIN)/pip install -e ".[docs]"
	$(BIN)/python -m mkdocs serve

clean:
	rm -rf $(VENV) runs
