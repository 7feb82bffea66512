# llm-pipeline: the commands a user needs. `make run` and `make test` install what they need first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/test.yaml
# Offline by default: the Hub is not needed (the packaged MiniLM is), and a lookup takes a minute to fail here.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error
export HF_HUB_DISABLE_PROGRESS_BARS ?= 1

.PHONY: help install run validate test test-fast lint format lock clean-outputs bench-dedup bench-dedup-real bench-qa bench-load \
        secrets check-env up down deploy logs ps run-test health models clean compose-check images engine test-tools open \
        swarm-up swarm-deploy swarm-down \
        screenshots proxy-check

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=python3.x, 3.11 or 3.12)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

install: $(VENV)/.installed  ## create .venv and install the locked dependencies and the package

run: install  ## run every stage on CONFIG (default configs/test.yaml) in Prefect's embedded mode
	$(BIN)/llm-pipeline run --config $(CONFIG)

validate: install  ## print the resolved CONFIG with secrets masked (exit 2 on a bad config)
	$(BIN)/llm-pipeline validate $(CONFIG)

# Two pytest workers: the stack's, chaos and autoscaling tests mostly wait (heartbeats, cooldowns, containers)
# while the CPU idles; what exists once per machine (the compose stack, the Ray cluster) stays on one worker
# (WORKER_GROUPS in tests/conftest.py). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: install engine test-tools  ## run the whole test suite (the same command CI runs; TEST_WORKERS=0: one process)
	TESTCONTAINERS_RYUK_DISABLED=true $(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS))

# The Postgres, orchestration and stack tests need a Docker engine. On machines that ship
# ../shared/container-engine (this project's CI), it is started here; elsewhere, a running Docker is used.
CONTAINER_ENGINE ?= ../shared/container-engine/up
engine:  ## make sure a Docker engine answers (starts the container-engine stand-in where there is one)
	@if docker info >/dev/null 2>&1; then echo "docker engine: running"; \
	elif [ -f $(CONTAINER_ENGINE) ]; then bash $(CONTAINER_ENGINE); \
	else echo "warning: no Docker engine; tests that need one are skipped (and fail under CI=true)"; fi
	@# what already runs on the engine and the machine's load: a slow suite's first suspect (CI shares the engine
	@# and its data root with the session before it; containers left running come back with the engine)
	@if docker info >/dev/null 2>&1; then echo "containers already running: $$(docker ps -q | wc -l)" \
		"$$(docker ps --format '{{.Names}}' | head -12 | tr '\n' ' ')"; fi; echo "load average: $$(cut -d' ' -f1-3 /proc/loadavg)"

# The browser tests drive Debian's Chromium (Playwright's own browser download needs the internet), and the
# proxy example is checked by Caddy. Installed with apt where this runs as root (CI does); elsewhere, install them
# yourself or the tests that need them are skipped (and fail under CI=true).
TEST_PACKAGES := chromium caddy
test-tools:  ## install Chromium (browser tests) and Caddy (proxy config check) from Debian's packages if missing
	@missing=""; for p in $(TEST_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "test tools: $(TEST_PACKAGES) present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing (apt)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "warning:$$missing not installed; the tests that need them are skipped (apt-get install$$missing)"; fi

test-fast: install  ## the suite without the slow end-to-end tests
	$(BIN)/python -m pytest -m "not slow"

bench-dedup: install  ## dedup quality and speed on 10k and 100k synthetic documents (docs/benchmarks.md)
	$(BIN)/python benchmarks/dedup_benchmark.py --docs 10000 100000 --backend static --semantic-max-docs 100000

bench-dedup-real: install  ## dedup on 83k real docstrings against exact all-pairs truth (docs/benchmarks.md)
	$(BIN)/python benchmarks/dedup_real_benchmark.py --source docstrings --json docs/dedup-real-benchmark.json

bench-qa: install  ## QA throughput vs a 300 ms, 6,000 req/min OpenAI-compatible server (docs/benchmarks.md)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/qa_benchmark.py --docs 2000 --latency 0.3 --rpm 6000 --concurrency 64 \
	  --output docs/qa-benchmark.json

bench-load: install  ## loading speed, one process vs data.load_workers 2, on /usr/share/doc (docs/benchmarks.md)
	$(BIN)/python benchmarks/load_benchmark.py /usr/share/doc --workers 1 2 --rounds 3

lint: install  ## ruff check and format check
	$(BIN)/ruff check src flows services workers tests benchmarks scripts
	$(BIN)/ruff format --check src flows services workers tests benchmarks scripts

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src flows services workers tests benchmarks scripts
	$(BIN)/ruff format src flows services workers tests benchmarks scripts

lock: $(BIN)/python  ## re-resolve pyproject.toml into requirements.lock in a scratch venv
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip && .lock-venv/bin/pip install -q ".[dev]"
	{ echo "# Generated by 'make lock' from pyproject.toml (pip freeze of a fresh install). Do not edit by hand."; \
	  echo "# torch==2.13.0 also matches the CPU build 2.13.0+cpu, which pip prefers where it can see it (a local wheel, or"; \
	  echo "# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu); PyPI alone serves the larger CUDA build."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^llm-pipeline' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > requirements.lock
	rm -rf .lock-venv

clean-outputs:  ## delete local run outputs (asks first)
	@read -p "Delete ./outputs? [y/N] " answer && [ "$$answer" = y ] && rm -rf outputs || echo "kept"

# --- the production stack (Docker Compose) ------------------------------------------------------------------
# GPU=1 runs the gpu-worker on the NVIDIA runtime (profile gpu); GPU=0 runs it on CPU (docker-compose.cpu.yml).
# Default: 1 when `docker info` shows an nvidia runtime.
GPU ?= $(shell docker info 2>/dev/null | grep -qi 'nvidia' && echo 1 || echo 0)
ifeq ($(GPU),1)
COMPOSE_ARGS := -f docker-compose.yml --profile gpu
else
COMPOSE_ARGS := -f docker-compose.yml -f docker-compose.cpu.yml
endif
# ENV_FILE: the stack's variables (default .env); COMPOSE_PROJECT_NAME (default llm-pipeline) names its volumes.
ENV_FILE ?= .env
DC := COMPOSE_BAKE=false docker compose --env-file $(ENV_FILE) $(COMPOSE_ARGS)
SERVICE ?=
REQUIRED_ENV := POSTGRES_PASSWORD PREFECT_SERVER_API_AUTH_STRING

check-env:
	@test -f $(ENV_FILE) || { echo "error: no $(ENV_FILE). Run: cp .env.example .env, then set $(REQUIRED_ENV) (or run: make secrets)"; exit 1; }
	@for v in $(REQUIRED_ENV); do grep -qE "^$$v=.+" $(ENV_FILE) || { echo "error: $$v is not set in $(ENV_FILE) (make secrets fills it with a random value)"; exit 1; }; done

secrets:  ## create .env from .env.example if needed and fill empty required secrets with random values
	@test -f $(ENV_FILE) || cp .env.example $(ENV_FILE)
	@python3 -c "import re, secrets, pathlib; p = pathlib.Path('$(ENV_FILE)'); t = p.read_text(); \
	t = re.sub(r'(?m)^POSTGRES_PASSWORD=$$', 'POSTGRES_PASSWORD=' + secrets.token_urlsafe(24), t); \
	t = re.sub(r'(?m)^PREFECT_SERVER_API_AUTH_STRING=$$', 'PREFECT_SERVER_API_AUTH_STRING=admin:' + secrets.token_urlsafe(24), t); \
	t = re.sub(r'(?m)^RAY_AUTH_TOKEN=$$', 'RAY_AUTH_TOKEN=' + secrets.token_hex(32), t); \
	p.write_text(t)"
	@echo "secrets set in $(ENV_FILE) (git-ignored); the UI's login is PREFECT_SERVER_API_AUTH_STRING"

images: check-env  ## build the project image(s)
	$(DC) build

up: check-env  ## build and start the stack, and wait until every service is healthy
	@echo "$(DC) up -d --build --wait"
	@$(DC) up -d --build --wait || { python3 scripts/why_not_up.py $(DC); exit 1; }
	@$(MAKE) --no-print-directory open

open:  ## print the addresses of the UI and of the run outputs, and how to log in
	@port=$$(sed -n 's/^PREFECT_PORT=//p' $(ENV_FILE) 2>/dev/null); outputs=$$(sed -n 's/^OUTPUTS_PORT=//p' $(ENV_FILE) 2>/dev/null); \
	echo "Prefect UI:   http://127.0.0.1:$${port:-4200}   (log in with the whole PREFECT_SERVER_API_AUTH_STRING from $(ENV_FILE), user:password)"; \
	echo "Run outputs:  http://127.0.0.1:$${outputs:-4201}   (reports, charts, manifests; the browser asks for the same user and password)"; \
	echo "From another machine: ssh -L $${port:-4200}:127.0.0.1:$${port:-4200} -L $${outputs:-4201}:127.0.0.1:$${outputs:-4201} <this host> (README: Reaching the UI)"

down:  ## stop the stack; the database and shared volumes stay
	$(DC) down

deploy: check-env  ## create or update pools, queues, limits, deployments and alerts (idempotent)
	$(DC) run --rm deployer

logs:  ## follow the logs of SERVICE (default: all), e.g. make logs SERVICE=cpu-worker
	$(DC) logs -f $(SERVICE)

ps:  ## list the stack's containers and their health
	$(DC) ps

models: check-env  ## download the models CONFIG names by hub id into the stack's hf-cache volume (HF_TOKEN from .env)
	$(DC) run --rm --no-deps -e HF_HUB_OFFLINE=0 cpu-worker llm-pipeline models --config $(CONFIG)

run-test: check-env  ## trigger the test deployment and follow it; non-zero exit unless it Completed
	$(DC) run --rm deployer llm-pipeline trigger llm-pipeline/test-pipeline --wait

WINDOW ?= 7d
health: check-env  ## the stack's pipeline health over WINDOW (default 7d) against the spec's thresholds; exit 1 when crossed
	$(DC) run --rm deployer llm-pipeline health --window $(WINDOW)

# --- the same stack on Docker Swarm (README "Past one host"): `docker swarm init` first, images on every node --
STACK ?= llm-pipeline
swarm-up: check-env  ## deploy the stack to a Docker Swarm as stack STACK (the workers a replicated service)
	$(DC) config --format json | $(BIN)/python scripts/swarm_stack.py | docker stack deploy --detach=true -c - $(STACK)

swarm-deploy: check-env  ## make deploy, against the swarm stack (the deployer on the stack's network)
	$(DC) --profile tools config --format json | $(BIN)/python scripts/swarm_stack.py run deployer $(STACK)

swarm-down:  ## remove the swarm stack STACK (its volumes stay)
	docker stack rm $(STACK)

clean:  ## stop the stack and delete its volumes (database, run outputs), after asking
	@read -p "Delete the stack's volumes (Prefect database and all run outputs)? [y/N] " answer; \
	if [ "$$answer" = y ]; then $(DC) --profile '*' down -v --remove-orphans; else echo "kept"; fi

# Values for validation only (compose refuses to interpolate the required variables while they are unset).
CHECK_ENV := POSTGRES_PASSWORD=$${POSTGRES_PASSWORD:-validation-only} \
             PREFECT_SERVER_API_AUTH_STRING=$${PREFECT_SERVER_API_AUTH_STRING:-validation:only}
screenshots: install engine test-tools  ## retake the README's UI screenshots (docs/images/) with the browser test
	UI_SCREENSHOT_DIR=docs/images TESTCONTAINERS_RYUK_DISABLED=true $(BIN)/python -m pytest tests/test_ui.py

proxy-check:  ## validate the example reverse-proxy config (docs/proxy/Caddyfile) with Caddy
	caddy validate --config docs/proxy/Caddyfile --adapter caddyfile

compose-check:  ## docker compose config -q for every profile and override
	@export $(CHECK_ENV); set -e; \
	docker compose -f docker-compose.yml config -q; \
	docker compose -f docker-compose.yml --profile gpu config -q; \
	docker compose -f docker-compose.yml --profile ray config -q; \
	docker compose -f docker-compose.yml --profile ray --profile gpu --profile ray-gpu config -q; \
	docker compose -f docker-compose.yml -f docker-compose.cpu.yml --profile ray config -q; \
	docker compose -f docker-compose.yml --profile docker-pool --profile tools config -q; \
	docker compose -f docker-compose.yml -f docker-compose.cpu.yml config -q; \
	docker compose -f docker-compose.yml -f docker-compose.cpu.yml --profile docker-pool --profile tools config -q
	@echo "compose files valid for every profile and override"
