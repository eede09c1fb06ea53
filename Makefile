# Hugging Face-style targets. Each one installs what it needs into the active Python environment.
PYTHON ?= python
# CPU build of torch on machines without one; a torch you already have (e.g. a CUDA build, 2.6 or newer: the floor in
# setup.cfg) is kept, because `pip install -e .` only upgrades a torch below that floor.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-dev test wheel-check quality style demo

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -e .

install-dev:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -e ".[dev]"

# The unit tests (tests/), the measurement harness's tests with the GPU checks' CPU dry run (benchmarks/tests/) and
# every docstring example of the package (dino_hf/, see conftest.py): pyproject.toml's testpaths. PYTEST_ARGS narrows
# it, e.g. `make test PYTEST_ARGS='-m "not under_load"'` or `PYTEST_ARGS=tests/training bash .ci/run`.
test: install-dev
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# The README's install without a clone: the wheel builds, installs into a fresh environment, and its commands run.
wheel-check: install-dev
	PYTHON=$(PYTHON) bash .ci/wheel_check.sh

quality: install-dev
	$(PYTHON) -m ruff check dino_hf examples tests benchmarks conftest.py
	$(PYTHON) -m ruff format --check dino_hf examples tests benchmarks conftest.py

style:
	$(PYTHON) -m ruff check --fix dino_hf examples tests benchmarks conftest.py
	$(PYTHON) -m ruff format dino_hf examples tests benchmarks conftest.py

demo: install
	HF_HUB_OFFLINE=1 $(PYTHON) examples/pretrain.py
