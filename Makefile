# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# the pinned dependencies first (skipped when .venv is up to date with pyproject/constraints).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.maskx-installed

.PHONY: install demo test test-fast bench gpu-data gpu-report clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: $(INSTALLED)
	$(BIN)/maskx demo

# The suite in two phases: every test but the `serial` ones over TEST_PROCESSES processes
# (pytest-xdist; one test file per process at a time, so a module's services start once), then the
# `serial` ones alone (they `ray start` / `ray stop`, which act on every Ray process of the machine).
# Most of the suite waits on services, not cores: two processes on 2 cores take ~2/3 of the time.
# pytest exits 5 when it collects no test: that is not a failure. --durations: CI must stay under
# 30 minutes on 2 cores, and its log then says which tests take the time.
TEST_PROCESSES ?= 2
PYTEST := $(BIN)/python -P -m pytest -q -ra

test: $(INSTALLED)
	$(PYTEST) -n $(TEST_PROCESSES) --dist loadfile -m "not serial" --durations=20; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; \
	$(PYTEST) -m serial --durations=5; rc_serial=$$?; \
	if [ $$rc_serial -eq 5 ]; then echo "no serial tests collected"; rc_serial=0; fi; \
	exit $$(( rc != 0 ? rc : rc_serial ))

test-fast: $(INSTALLED)
	$(BIN)/python -P -m pytest -q -m "not integration"

bench: $(INSTALLED)
	$(BIN)/python bench/model_step.py
	$(BIN)/python bench/data_stream.py

# The lent GPU machine receives the repository only: copy the sample data into it first (git ignores
# .gpu-data/), then run gpu-report there. It needs torch and torchvision; maskx needs no install.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

gpu-data:
	mkdir -p .gpu-data && cp -r ../shared/data/coco-tiny .gpu-data/

gpu-report:
	$(GPU_PYTHON) bench/gpu_report.py --write

clean:
	rm -rf $(VENV) demo-out mlruns mlflow.db .pytest_cache
