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

# The demo: synthetic phantoms in DEMO_DIR, trained with the recipe in configs/demo.options
# (random initialisation, no downloads, sized for a CPU); evaluate.py and score.py audit them by
# the phantoms' demographics.csv (CheXpert's CHEXPERT DEMO.xlsx layout).
DEMO_DIR ?= data/demo
DEMO_ARGS := --data_root $(DEMO_DIR)/CheXpert-v1.0-small --data_dir $(DEMO_DIR) \
	--models_dir models --demographics $(DEMO_DIR)/demographics.csv @configs/demo.options

# The demo's test set (CheXpert's test layout) is scored against three synthetic readers.
DEMO_READERS = $(subst $() ,$(comma),$(foreach n,1 2 3,$(DEMO_DIR)/test_readers/reader$(n).csv))
comma := ,

# Options shared by a chain of stages go in PIPELINE_OPTIONS, set on each command: every script
# takes the fields it reads and ignores the others (cxr/cli.py); its own command line (e.g.
# --run_name) is strict and overrides them. `quote` makes one shell word of its argument.
quote = '$(subst ','\'',$(1))'
DEMO_OPTIONS = PIPELINE_OPTIONS=$(call quote,$(DEMO_ARGS) $(ARGS))
SHARED_OPTIONS = PIPELINE_OPTIONS=$(call quote,$(ARGS))

.PHONY: install demo pipeline test docs clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-libauc.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-libauc.txt
	touch $@

demo: install
	$(PY) make_demo_data.py --out $(DEMO_DIR)
	$(DEMO_OPTIONS) $(PY) preprocess.py
	$(DEMO_OPTIONS) $(PY) make_splits.py
	$(DEMO_OPTIONS) $(PY) cache.py
	$(DEMO_OPTIONS) $(PY) train.py --run_name demo-$(RUN)
	$(DEMO_OPTIONS) $(PY) evaluate.py --run_name demo-$(RUN)
	$(DEMO_OPTIONS) $(PY) predict.py $(DEMO_DIR)/CheXpert-v1.0/test --run_name demo-$(RUN) \
		--output models/demo-$(RUN)/test_set.csv
	$(DEMO_OPTIONS) $(PY) score.py --predictions models/demo-$(RUN)/test_set_studies.csv \
		--labels $(DEMO_DIR)/test_groundtruth.csv --output_dir models/demo-$(RUN)/score \
		--radiologists $(DEMO_READERS) --thresholds models/demo-$(RUN)/thresholds.json

pipeline: install
	@test -n "$(DATA_ROOT)" || { echo "usage: make pipeline DATA_ROOT=/path/to/CheXpert-v1.0-small [ARGS='--epochs 3']"; exit 2; }
	$(SHARED_OPTIONS) $(PY) preprocess.py --data_root $(DATA_ROOT)
	$(SHARED_OPTIONS) $(PY) make_splits.py
	$(SHARED_OPTIONS) $(PY) cache.py
	$(SHARED_OPTIONS) $(PY) train.py --run_name $(RUN)
	$(SHARED_OPTIONS) $(PY) evaluate.py --run_name $(RUN)

test: install
	$(PY) -m pytest -q tests

# docs/config.md, the configuration reference, generated from config.py's fields (their types,
# defaults, readers, facts and comments); tests/test_config.py fails while it is out of date.
docs: install
	$(PY) -c "from config import Config; from cxr.cli import config_reference; \
		print(config_reference(Config), end='')" > docs/config.md

clean:
	rm -rf $(DEMO_DIR) $(VENV)
