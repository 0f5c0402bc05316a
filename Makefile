# The README's two promises: `make demo` and `make test`. Both create or reuse .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pillsnap-installed
DEMO_CONFIG := examples/synthetic/config.yaml
DEMO_DATA := data/synthetic
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lab install data lint clean-runs
LINTED := pillsnap tests benchmarks scripts notebooks

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[cpu,dev,serve,openvino]"
	$(BIN)/python -m ipykernel install --sys-prefix --name pillsnap --display-name "Python (pillsnap)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

data: $(STAMP)
	test -f $(DEMO_DATA)/detection/data.yaml || $(BIN)/pillsnap synth --out $(DEMO_DATA) --splits val

demo: data
	$(BIN)/pillsnap release --config $(DEMO_CONFIG)
	@echo "Record: runs/latest/{export,equivalence,quantization,benchmark}.html; report: runs/latest/export_report.json, runs/latest/quantization.json, runs/latest/benchmark.json"

test: data lint
	$(BIN)/python -m pytest -q tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider
	rm -rf runs/scratch

lab: $(STAMP)
	$(BIN)/pip install -q -e ".[cpu,dev,openvino,lab]"
	$(BIN)/jupyter lab --notebook-dir=. --no-browser

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

clean-runs:
	rm -rf runs/*/ runs/latest runs/latest_*.onnx
