# Two entry points: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,ray]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf results/demo
	$(BIN)/asgd-sim run scenarios/quickstart.toml --out results/demo
	@echo "plots: results/demo/*.png  timeline: results/demo/timeline.json (open in ui.perfetto.dev)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/timing.py

clean:
	rm -rf $(VENV) results .pytest_cache
