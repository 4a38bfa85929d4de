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

# Main job: train UA-VLS on the embedded demo data (small-demo override), then infer on its test split (replacing
# the outputs of an earlier demo: inference refuses a used output folder otherwise).
demo: $(STAMP)
	$(PY) -m monai.bundle run training --config_file "['$(BUNDLE)/train.json','$(BUNDLE)/demo.json']"
	$(PY) -m monai.bundle run inference --config_file "['$(BUNDLE)/inference.json','$(BUNDLE)/demo.json']" --overwrite true

test: $(STAMP)
	$(PY) -m pytest -q

# MONAI Label server env: a thin layer over .venv (monai_vlseg/label_app/env.py). monailabel 0.8.5 imports
# torchvision, whose PyPI build needs torch 2.14.1 (+ its CUDA libraries), so the layer holds those, monailabel and
# the few requirements .venv lacks; everything else is read from .venv (~4.5 GB instead of a full second env).
LABEL_VENV := .venv-label
LABEL_STAMP := $(LABEL_VENV)/.monailabel-installed

.PHONY: label

label: $(LABEL_STAMP)

$(LABEL_STAMP): pyproject.toml monai_vlseg/label_app/env.py $(STAMP)
	$(PY) -m monai_vlseg.label_app.env --label-env $(LABEL_VENV)
	touch $(LABEL_STAMP)
