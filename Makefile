# Two commands from a fresh clone: `make reproduce` and `make test`.
# Both create (or refresh) the local virtualenv .venv from pyproject.toml first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: reproduce test venv bench lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,experiments]"
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests

reproduce: $(STAMP)
	$(PY) experiments/run_all.py $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/lrp_speed.py
	$(PY) benchmarks/am_speed.py
	$(PY) benchmarks/sharded_speed.py

lint: $(STAMP)
	$(VENV)/bin/ruff check lrpjax tests experiments benchmarks

clean:
	rm -rf $(VENV) checkpoints figures/*.png figures/results.json
