# The two set-up commands on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install quickstart test benchmark clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,plots,tfds,stream]"
	touch $@

install: $(VENV)/.installed

# Teacher, student alone and student with VID-I on scikit-learn's digits (no download).
quickstart: install
	$(PY) launch.py --config=configs/quickstart.py --workdir=workdirs/quickstart

# A worker per logical core, at most four (pytest-xdist; "auto" counts physical cores, which a
# 2-vCPU cloud VM may report as one), a module to a worker: module fixtures train once.
test: install
	$(PY) -m pytest -q -n logical --maxprocesses=4 --dist loadfile tests

benchmark: install
	$(PY) benchmarks/step_speed.py --out=benchmarks/results/step_speed_$$(uname -m)_cpu.json

clean:
	rm -rf workdirs
