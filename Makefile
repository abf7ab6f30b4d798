# Everything a fresh clone needs, with only python3 on PATH:
#   make demo    create .venv, install torch and bayesmeta, run the walk-through (bayesmeta demo)
#   make test    create .venv, install torch and bayesmeta with its test extras, run the whole suite
# On a CUDA machine install the default (CUDA) torch wheel instead of the pinned CPU build:
#   make test TORCH=torch
# The venv is built once (a stamp file records it); it is rebuilt when pyproject.toml changes.
# To switch torch builds later, run `make clean` first.

PYTHON ?= python3
TORCH ?= torch==2.13.0
# One torch (OpenMP) thread per process: the suite's models are tiny, so it costs little on an idle
# machine, while with the default two threads on 2 cores the whole suite took 19 min instead of 2 min
# here whenever other processes shared the CPU (threads spin-wait for each other). Override with
# `make test OMP_NUM_THREADS=2`, or by setting it in the environment.
OMP_NUM_THREADS ?= 1
export OMP_NUM_THREADS
# pytest-xdist workers for `make test`, one per core of the 2-core machine CI runs on; each test file stays
# in one worker (--dist loadfile) so that module fixtures (fitted priors) are built once. `make test JOBS=0`
# runs everything in one process.
JOBS ?= 2
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: $(VENV) test demo clean

$(VENV): $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install '$(TORCH)'
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n $(JOBS) --dist loadfile

demo: $(STAMP)
	$(VENV)/bin/bayesmeta demo

clean:
	rm -rf $(VENV) build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
