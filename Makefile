# Set-up and the two top-level jobs. Everything runs inside .venv at the repository root.
# TORCH_SPEC: the CPU wheel of this machine kind by default; on a CUDA machine use e.g. TORCH_SPEC='torch>=2.8'.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.monai_vlseg-installed
BUNDLE := bundles/ua_vls/configs

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# Main job: train UA-VLS on the embedded demo data (small-demo override), then infer on its test split.
demo: $(STAMP)
	$(PY) -m monai.bundle run training --config_file "['$(BUNDLE)/train.json','$(BUNDLE)/demo.json']"
	$(PY) -m monai.bundle run inference --config_file "['$(BUNDLE)/inference.json','$(BUNDLE)/demo.json']"

test: $(STAMP)
	$(PY) -m pytest -q

# MONAI Label server env, kept apart from .venv: monailabel 0.8.5 wants torch 2.14.1 + torchvision 0.29.1.
# One pip call so that the resolver sees monailabel's and this package's requirements together; then the pydicom 3
# shim that monailabel's pydicom-seg import needs (monai_vlseg/label_app/compat.py).
LABEL_VENV := .venv-label
LABEL_PY := $(LABEL_VENV)/bin/python
LABEL_STAMP := $(LABEL_VENV)/.monailabel-installed
LABEL_SPEC ?= torch==2.14.1 torchvision==0.29.1 monailabel==0.8.5

.PHONY: label

label: $(LABEL_STAMP)

$(LABEL_STAMP): pyproject.toml
	$(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_PY) -m pip install -q --upgrade pip
	$(LABEL_PY) -m pip install -q $(LABEL_SPEC) -e .
	$(LABEL_PY) -m monai_vlseg.label_app.compat
	touch $(LABEL_STAMP)
