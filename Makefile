# Two entry points: `make demo` and `make test` (`make test-fast` skips the slow tests). Each creates .venv when missing.
# The demo installs the core dependencies only; the tests add the test and Ray extras (two stamps).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast bench gallery clean

$(CORE): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(CORE)

$(STAMP): $(CORE)
	$(BIN)/pip install --quiet -e '.[test,ray]'
	touch $(STAMP)

demo: $(CORE)
	rm -rf results/demo
	$(BIN)/asgd-sim run scenarios/quickstart.toml --out results/demo
	@echo "plots: results/demo/*.png  timeline: results/demo/timeline.json (open in ui.perfetto.dev)"

# Two passes: the suite on 2 processes (pytest-xdist; a file's tests stay in one process, so its
# module fixtures run once), then alone the real runs (marked real_time: their assertions read
# wall-clock times, which a test running beside them would stretch).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not real_time" --durations=10
	$(BIN)/python -m pytest -q -m real_time --durations=10

# Everything but the tests marked slow (@pytest.mark.slow: more than ~10 s each).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The benchmarks print JSON (ratios against baselines run in the same process); the matrix covers
# every algorithm, round restarts, the Ringmaster paper experiment and run folders (~15 min on 2 cores).
bench: $(STAMP)
	$(BIN)/python benchmarks/timing.py
	$(BIN)/python benchmarks/numerics.py
	$(BIN)/python benchmarks/matrix.py

# The README gallery: four sweeps (2-4 minutes each on 2 cores) and the scripts that draw them.
gallery: $(STAMP)
	$(BIN)/asgd-sim sweep scenarios/straggler.toml --grid 'workers[1].compute.mean=0.05,0.1,0.2,0.4' \
	    --variant async:algorithm.kind=async --variant sync:algorithm.kind=sync \
	    --variant 'backup:algorithm.kind=sync;algorithm.backup=1' --seeds 3 --jobs 2 --quiet --out results/straggler
	$(BIN)/python analysis/straggler.py results/straggler --out docs/gallery/straggler.png
	$(BIN)/asgd-sim sweep scenarios/lock_contention.toml --timing-only --grid server.lock=global,shard,none \
	    --grid server.apply_time=0.0002,0.0005,0.001,0.002,0.004 --seeds 3 --jobs 2 --quiet --out results/locks
	$(BIN)/python analysis/locks.py results/locks --out docs/gallery/locks.png
	$(BIN)/asgd-sim sweep scenarios/bandwidth.toml --timing-only --grid server.shards=1,2,4,8,16 \
	    --grid network.compression=1.0,0.25 --seeds 3 --jobs 2 --quiet --out results/bandwidth
	$(BIN)/python analysis/bandwidth.py results/bandwidth --out docs/gallery/bandwidth.png
	$(BIN)/asgd-sim sweep scenarios/staleness_mitigation.toml --seeds 3 --jobs 2 --quiet --out results/mitigation \
	    --variant none:optimizer.staleness_rule=none --variant inverse:optimizer.staleness_rule=inverse \
	    --variant adaptive:optimizer.staleness_rule=adaptive --variant dc-asgd:optimizer.dc_lambda=0.5 \
	    --variant drop-stale:algorithm.drop_staleness_above=20
	$(BIN)/python analysis/mitigation.py results/mitigation --out docs/gallery/mitigation.png

clean:
	rm -rf $(VENV) results .pytest_cache
