# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# the pinned dependencies first (skipped when .venv is up to date with pyproject/constraints).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.maskx-installed

.PHONY: install demo test test-full test-fast bench gpu-data gpu-report clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: $(INSTALLED)
	$(BIN)/maskx demo

# Two lanes (docs/testing.md). `make test` is CI's (.ci/run): every unit test and the one end-to-end
# proof of each capability (integration tests marked `core`), under 20 minutes on 2 cores with the
# install. `make test-full` runs every scenario: the multi-host rehearsal (root), the fault and elastic
# matrix, every sweep, the README's blocks after a demo, the benches' smoke runs. One area alone:
# `make test-full PYTEST_ARGS="-m sweep"` (or cluster, multihost, readme, serving, s3, tracking, bench).
# pytest exits 5 when it collects no test: not a failure of the suite.
PYTEST := $(BIN)/python -P -m pytest -q -ra --durations=30
define run_pytest
	$(PYTEST) $(1) $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc
endef

test: $(INSTALLED)
	$(call run_pytest,-m "not slow")

test-full: $(INSTALLED)
	$(call run_pytest,)

test-fast: $(INSTALLED)
	$(call run_pytest,-m "not integration and not slow")

bench: $(INSTALLED)
	$(BIN)/python bench/model_step.py
	$(BIN)/python bench/data_stream.py

# The lent GPU machine receives the repository only: copy the sample data into it first (git ignores
# .gpu-data/), with the wheels of maskx's data and config dependencies for its image's Python (3.12;
# nothing can be downloaded there), then run gpu-report there (carry .gpu-data). It uses the image's
# torch and torchvision; maskx needs no install.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_IMAGE_PYTHON ?= 3.12
GPU_WHEELS := webdataset braceexpand pycocotools ijson pydantic pydantic-core annotated-types typing-inspection

gpu-data:
	mkdir -p .gpu-data && cp -r ../shared/data/coco-tiny .gpu-data/
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_IMAGE_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-c constraints.txt -d .gpu-data/wheels $(GPU_WHEELS)

# The speed figures, then the training path's correctness smoke (finite losses, float32 proposals, host
# syncs and GPU idle per step); on the lent machine both tables land in $OUT.
gpu-report:
	$(GPU_PYTHON) bench/gpu_report.py --write
	$(GPU_PYTHON) bench/gpu_train_smoke.py

clean:
	rm -rf $(VENV) demo-out mlruns mlflow.db .pytest_cache browse report.html exports predictions-ray
