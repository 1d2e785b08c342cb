# One command for the test suite and one for the demo pipeline; both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
# torch/torchvision are pinned for this machine (pip takes them from local disk); override elsewhere,
# e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-cluster demo smoke lint install bench bench-gpu clean-venv screenshots

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# a real loopback SLURM cluster (slurmdbd + MariaDB) and an MLflow server on PostgreSQL, set up
# by tests/cluster/cluster.sh (root: it apt-get installs what is missing); ~40 min on 2 cores
# from a fresh machine
test-cluster: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,cluster]'
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/cluster/cluster_tests.py

lint: $(STAMP)
	$(BIN)/ruff check src tests workflow
	$(BIN)/snakefmt --check Snakefile workflow
	cd $(CURDIR) && PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint --profile profiles/demo

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/demo

# the MLflow and report screenshots of docs/workflow.md, in headless Chromium (apt-get installs
# it if missing): the demo's store and report where `make demo` ran, and the tiny test grid's
screenshots: $(STAMP)
	if [ -f results/demo/mlflow.db ]; then \
		PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/demo --report results/demo/report.html && \
		$(BIN)/python tests/ui_screenshots.py --store sqlite:///$(CURDIR)/results/demo/mlflow.db --name mlflow_demo --report results/demo/report.html; \
	fi
	$(BIN)/python tests/ui_screenshots.py

# the whole chain on the tiny .test configuration, .test/ as the working directory (outputs in
# results/test; a few minutes on 2 cores)
smoke: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores 2 --directory .test

# the performance benchmark against easyfsl and the compute floor (README "Performance", ~3 min)
bench: $(STAMP)
	$(BIN)/python -m subspace_fsl.bench peer

# the same on a GPU, Conv-4 (with easyfsl) and ResNet-12, bf16 autocast (a few minutes)
bench-gpu: $(STAMP)
	$(BIN)/python -m subspace_fsl.bench peer --device cuda --amp --peer-eval-episodes 50 \
		--json results/bench/peer-gpu-conv4.json
	$(BIN)/python -m subspace_fsl.bench peer --device cuda --amp --backbone resnet12 --skip-peer \
		--json results/bench/peer-gpu-resnet12.json
	$(BIN)/python -m subspace_fsl.bench cells --protocol finetune --device cuda \
		--json results/bench/cells-gpu-finetune.json

clean-venv:
	rm -rf $(VENV)
