# Two commands after cloning:  make demo   (whole chain on synthetic data, ~5 min on a CPU)
#                              make test   (the test suite)
# On a real CheXpert download:  make pipeline DATA_ROOT=/path/to/CheXpert-v1.0-small [ARGS="--epochs 3"]
# Every target creates the virtual environment from requirements.txt first (once).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
ifndef RUN
RUN := $(shell date +%Y%m%d-%H%M%S)
endif

# The demo: synthetic phantoms, from random initialisation (no downloads), sized for a CPU.
DEMO_DIR ?= data/demo
DEMO_ARGS := --data_root $(DEMO_DIR)/CheXpert-v1.0-small --data_dir $(DEMO_DIR) \
	--models_dir models --pretrained false --image_size 96 --batch_size 16 \
	--accumulation_steps 1 --epochs 8 --frozen_epochs 1 --lr_head 1e-3 --lr_backbone 1e-3 \
	--warmup_steps 50

.PHONY: install demo pipeline test clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

demo: install
	$(PY) make_demo_data.py --out $(DEMO_DIR)
	$(PY) preprocess.py $(DEMO_ARGS) $(ARGS)
	$(PY) make_splits.py $(DEMO_ARGS) $(ARGS)
	$(PY) cache.py $(DEMO_ARGS) $(ARGS)
	$(PY) train.py $(DEMO_ARGS) --run_name demo-$(RUN) $(ARGS)
	$(PY) evaluate.py $(DEMO_ARGS) --run_name demo-$(RUN) $(ARGS)

pipeline: install
	@test -n "$(DATA_ROOT)" || { echo "usage: make pipeline DATA_ROOT=/path/to/CheXpert-v1.0-small [ARGS='--epochs 3']"; exit 2; }
	$(PY) preprocess.py --data_root $(DATA_ROOT) $(ARGS)
	$(PY) make_splits.py $(ARGS)
	$(PY) cache.py $(ARGS)
	$(PY) train.py --run_name $(RUN) $(ARGS)
	$(PY) evaluate.py --run_name $(RUN) $(ARGS)

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(DEMO_DIR) $(VENV)
