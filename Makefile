# qtraderd — the two front doors: `make run` (demo replay) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch: the project depends on torch>=2.4; this pin picks the CPU wheel on disk
# (any other version pulls gigabytes of CUDA libraries).
TORCH_PIN := torch==2.13.0

.PHONY: install run test test-slow fuzz lint bench clean

install: $(STAMP)

# --no-compile: pip would byte-compile every file of every package (torch alone has
# thousands: half the install time); Python compiles what is imported, once, on first use.
# That needs bytecode caches to be writable, which some environments turn off
# (PYTHONDONTWRITEBYTECODE): then every process would compile all its imports again —
# about 0.5 s per daemon start for qtraderd's own modules alone. The targets here keep the
# caches (in .venv and the clone's gitignored __pycache__ directories).
export PYTHONDONTWRITEBYTECODE :=

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev]' $(TORCH_PIN)
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/qtraderd run --config examples/demo.toml
	$(VENV)/bin/qtraderd report --out state/report --json > /dev/null

# Everything — the default suite and the slow one — in one run over three processes on the
# two cores: the longest tests start first, modules sharing a fixture stay on one worker
# (tests/parallel.py). Three, not two: much of the suite waits — on simulators paced in
# wall time, daemons starting, Ray heads — and two workers left a quarter of the CPU idle
# (6:37 vs 5:12 from a fresh clone). `pytest -q` alone still runs the quick default suite
# serially.
TEST_WORKERS ?= 3
PYTEST_PAR := -n $(TEST_WORKERS) --dist loadgroup

test: $(STAMP)
	$(PY) -m pytest -q -m "" $(PYTEST_PAR)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_PAR)

# every fuzz target with >= 10,000 generated cases (the default suite runs a few hundred)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -m fuzz tests/fuzz

lint: $(STAMP)
	$(VENV)/bin/ruff check qtraderd tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/replay.py
	$(PY) benchmarks/learning.py
	$(PY) benchmarks/live_feed.py
	$(PY) benchmarks/live.py

clean:
	rm -rf $(VENV) state/qtraderd.db* state/*.sock
