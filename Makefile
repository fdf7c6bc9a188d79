# Two entry points, each creating .venv on first use: `make run` (main job), `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mnistlab-installed

.PHONY: run quick test lint install browser postgres clean

# torch/torchvision first, at the versions this machine serves from disk (never above);
# elasticdeform from source: its 0.5.1 wheel fails to import under NumPy 2.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --no-binary elasticdeform -e '.[dev,ray,mlflow,postgres,onnx]'
	touch $(STAMP)

install: $(STAMP)

# The main job: every study as specified, then results/report.html (see README for timings).
run: $(STAMP)
	$(BIN)/mnistlab run all --profile full

# A few-minute demonstration of the whole pipeline (labelled QUICK in its report).
quick: $(STAMP)
	$(BIN)/mnistlab run all --profile quick

# Headless Chromium for the report test (Debian package; root on this machine kind).
browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# PostgreSQL for the shared-tuning test (Debian package; the test starts its own server on a
# loopback port in a temporary data directory and stops it).
postgres:
	command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint browser postgres
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .test-cache .pytest_cache .ruff_cache
