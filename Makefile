# Two entry points, each creating .venv on first use: `make run` (main job), `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mnistlab-installed

.PHONY: run test lint install clean

# torch/torchvision first, at the versions this machine serves from disk (never above);
# elasticdeform from source: its 0.5.1 wheel fails to import under NumPy 2.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --no-binary elasticdeform -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/mnistlab data info
	$(BIN)/mnistlab data show --deform elastic -n 16 -o results/data/elastic.png
	$(BIN)/mnistlab data show --deform zoom -n 16 -o results/data/zoom.png

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .test-cache .pytest_cache .ruff_cache
