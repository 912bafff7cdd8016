# `make demo` and `make test` are all the set-up a fresh clone needs.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test bench clean

# torch first, pinned (a plain `torch` requirement would pull a multi-GB CUDA build), then the package
$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	touch $@

# what the tests need on top: pytest, hypothesis, transformers, onnx(runtime), tensorflow-cpu, matplotlib, sgp4
$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q -e ".[dev,onnx,tensorflow,plot,orbits]"
	touch $@

# the demo draws its plan: matplotlib (the plot extra) on top of the package
$(VENV)/.plot: $(VENV)/.base
	$(PIP) install -q -e ".[plot]"
	touch $@

demo: $(VENV)/.plot
	$(PY) examples/demo.py

test: $(VENV)/.test
	$(PY) -m pytest -q

bench: $(VENV)/.test
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info
