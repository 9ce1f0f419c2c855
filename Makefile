# FedOnco-Bench: the two commands a new user runs are `make bench` and `make test`.
# Both create .venv on first use. TORCH_SPEC pins the CPU wheel on the reference machine;
# a GPU user overrides it, e.g. `make venv TORCH_SPEC='torch>=2.4'` (PyPI's Linux torch is a CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
CONFIG ?= configs/standard.toml
OUT ?= runs

WHEELS ?= deploy/wheelhouse

.PHONY: venv bench frontier fuzz test test-fast lint format perf clean proto proto-check wheelhouse images site-image e2e flower-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev,diffusion,ray]"
	touch $@

venv: $(VENV)/.installed

bench: venv
	$(VENV)/bin/fedonco bench --config $(CONFIG) --out $(OUT)

# The privacy frontier: the DP recipe at eps 1, 2, 4, 8 and its non-DP twin, 3 seeds each
# (plots/frontier.png: Dice and TPR@1%FPR against eps, mean ± sd).
FRONTIER_METHOD ?= dpsgd-pt
frontier: venv
	$(VENV)/bin/fedonco bench --config $(CONFIG) --sweep target_epsilon=1,2,4,8 \
		--sweep-method $(FRONTIER_METHOD) --seeds 3 --out $(OUT)

# Fuzz the Federation service with 20,000 property-based messages (bench/fuzz.py): the server must
# never exit and the model must end as the honest site made it; prints statuses and RSS.
fuzz: venv
	$(PY) -m bench.fuzz --messages 20000

test: lint
	$(PY) -m pytest -q tests

# The unit tests only (no processes, no network): the quick loop while working.
test-fast: venv
	$(PY) -m pytest -q tests/unit -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

perf: venv
	$(PY) bench/perf/perf_dp.py --steps 10 --modes fast hooks
	$(PY) bench/perf/perf_data.py
	$(PY) bench/perf/perf_secagg.py
	$(PY) bench/perf/perf_restart.py
	$(PY) bench/perf/perf_ddp.py
	$(PY) bench/perf/perf_diffusion.py
	$(MAKE) flower-venv
	$(PY) bench/perf/perf_scale.py --flower $(FLOWER_VENV)/bin/python --out $(OUT)/perf-scale

# Flower (flwr 1.27.0) in a venv of its own, for perf_scale's side-by-side SecAgg+ maths only
# (its pinned dependencies stay out of ours).
FLOWER_VENV ?= .venv-flower
flower-venv: $(FLOWER_VENV)/.installed
$(FLOWER_VENV)/.installed:
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/pip install -q flwr==1.27.0
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache

proto: venv
	$(PY) proto/gen.py

proto-check: venv
	$(PY) proto/gen.py --check

# Every runtime wheel (CPU torch included) for an offline image build: run it where the package
# index is reachable, then `deploy/compose build` needs no network (deploy/README.md).
wheelhouse: venv
	rm -rf $(WHEELS).tmp && mkdir -p $(WHEELS).tmp
	$(PY) -m pip wheel -q --prefer-binary -w $(WHEELS).tmp "$(TORCH_SPEC)" . setuptools wheel
	rm -f $(WHEELS).tmp/fedonco_bench-*.whl  # the project itself is installed from the source
	rm -rf $(WHEELS) && mv $(WHEELS).tmp $(WHEELS)
	@du -sh $(WHEELS)

# Docker engine, local base image, wheelhouse and image (as root on a Debian machine; CI does it).
images:
	deploy/docker-setup.sh

# The image file a hospital loads: `docker load -i fedonco-bench.tar` (deploy/README.md, §4).
site-image: images
	mkdir -p dist && docker save -o dist/fedonco-bench.tar fedonco-bench:latest
	@du -sh dist/fedonco-bench.tar

e2e: images venv
	CI=true $(PY) -m pytest -q tests/e2e
