# Set-up is part of both targets: a virtual environment with pinned dependencies (CPU torch 2.13.0).
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test bench setup clean

run: $(STAMP)
	$(VENV)/bin/lmforge run

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --durations=25

setup: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements-dev.txt
	$(VENV)/bin/python -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

clean:
	rm -rf $(VENV) runs
