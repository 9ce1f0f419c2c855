# FedOnco-Bench: the two commands a new user runs are `make bench` and `make test`.
# Both create .venv on first use, exactly as locked: torch from TORCH_SPEC (the CPU build from the
# PyTorch CPU index by default), everything else from requirements/lock.txt (versions + sha256).
# torch's own dependencies are in the lock (resolved for the CPU build), hence --no-deps. For a
# CUDA build: `make venv TORCH_SPEC=torch==2.13.0 TORCH_PIP_FLAGS=` (PyPI's Linux torch is a
# multi-GB CUDA build that brings its nvidia-* libraries); see README, Troubleshooting.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIP_FLAGS ?= --no-deps --extra-index-url $(TORCH_INDEX)
LOCK ?= requirements/lock.txt
PY := $(VENV)/bin/python
CONFIG ?= configs/standard.toml
OUT ?= runs
DEVICE ?=   # e.g. DEVICE=cuda: --device for every process of the run (docs/gpu.md); empty: cpu
DEVICE_ARG = $(if $(strip $(DEVICE)),--device $(strip $(DEVICE)))
METHODS ?=  # e.g. METHODS=fedavg,dpsgd: --methods (instead of the profile's fl.methods); empty: the profile's
METHODS_ARG = $(if $(strip $(METHODS)),--methods $(strip $(METHODS)))

WHEELS ?= deploy/wheelhouse

.PHONY: venv lock bench frontier threats fuzz test test-heavy test-all test-fast lint format perf clean proto proto-check wheelhouse images site-image e2e flower-venv

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install $(TORCH_PIP_FLAGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

# Regenerate the locks from pyproject.toml (needs uv: `pip install uv`): requirements/lock.txt
# (every extra: what .venv gets) and requirements/runtime.txt (what the images get). torch is
# resolved as TORCH_SPEC but left out of both (it is installed from TORCH_SPEC). Linux x86_64,
# Python 3.11, hashes of every file of each pinned version. A machine that keeps the CPU wheel in
# /opt/wheels (the reference machine) resolves it there, others from TORCH_INDEX.
TORCH_SOURCE ?= $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match)
LOCK_FLAGS = --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	$(TORCH_SOURCE) --override requirements/torch.txt --no-emit-package torch
lock:
	echo "$(TORCH_SPEC)" > requirements/torch.txt
	uv pip compile -q pyproject.toml requirements/build.in --extra dev --extra diffusion --extra ray $(LOCK_FLAGS) -o requirements/lock.txt
	uv pip compile -q pyproject.toml requirements/build.in $(LOCK_FLAGS) -o requirements/runtime.txt

venv: $(VENV)/.installed

bench: venv
	$(VENV)/bin/fedonco bench --config $(CONFIG) --out $(OUT) $(DEVICE_ARG) $(METHODS_ARG)

# The privacy frontier: the DP recipe at eps 1, 2, 4, 8 and its non-DP twin, 3 seeds each
# (plots/frontier.png: Dice and TPR@1%FPR against eps, mean ± sd).
FRONTIER_METHOD ?= dpsgd-pt
frontier: venv
	$(VENV)/bin/fedonco bench --config $(CONFIG) --sweep target_epsilon=1,2,4,8 \
		--sweep-method $(FRONTIER_METHOD) --seeds 3 --out $(OUT) $(DEVICE_ARG)

# What each defence buys (docs/threat-model.md): the no-DP, per-site DP and distributed DP releases
# with the black-box and white-box attackers, the inversion of the server's view and the lying
# server; writes threats.md into the run directory; then trap weights, a crafted model sent to
# every site alike (python -m bench.trap, ~1 min: runs/threats/trap/trap.md).
# Its own profile (configs/threats.toml: the standard one with a narrower U-Net) so that one seed
# fits ~30 min on 2 cores; `make threats THREATS_CONFIG=configs/standard.toml THREATS_SEEDS=3` is
# the committed table's (docs/runs/threats: hours).
THREATS_SEEDS ?= 1
THREATS_CONFIG ?= configs/threats.toml
threats: venv
	$(VENV)/bin/fedonco threats --config $(THREATS_CONFIG) --seeds $(THREATS_SEEDS) --out runs/threats
	$(VENV)/bin/python -m bench.trap --config $(THREATS_CONFIG) --seeds 5 --out runs/threats/trap

# Fuzz the Federation service with 20,000 property-based messages, then the release service with as
# many (bench/fuzz.py): the servers must never exit, the model must end as the honest site made it,
# no call may get UNKNOWN and no log line a traceback; prints statuses and RSS.
fuzz: venv
	$(PY) -m bench.fuzz --messages 20000

# `make test`: lint and every test but the heavy ones (full benchmarks, the Docker stack, Ray,
# fuzzing, 70 sites); `make test-heavy`: only those; `make test-all`: both.
# CI (.ci/run) runs `make test` only: the heavy tier took ~28 min of a 53-min CI run on a 2-core
# AVX2 machine; run `make test-heavy` before changing what it covers.
test: lint
	$(PY) -m pytest -q -m "not heavy" --durations=10 tests

test-heavy: venv
	$(PY) -m pytest -q -m heavy --durations=0 tests

test-all: test test-heavy

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
	$(PY) bench/perf/perf_train.py --sizes standard paper --threads 1 2
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
	$(PY) -m pip wheel -q --no-deps -w $(WHEELS).tmp --extra-index-url $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip wheel -q --no-deps --require-hashes -w $(WHEELS).tmp -r requirements/runtime.txt
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
