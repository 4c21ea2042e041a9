# The front door: every command a user, a test or CI runs goes through here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TOOLS := .tools/bin

# `make run` and `make load` settings (override on the command line).
ROUTER_URL ?= http://127.0.0.1:8080
ROUTER_BIND ?= 127.0.0.1:8080
USERS ?= 20
SPAWN_RATE ?= 5
DURATION ?= 60s

.PHONY: help venv tools run load rules dashboards lint test constraints clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): service/pyproject.toml service/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip==25.3
	$(PIP) install --quiet -c service/constraints.txt -e 'service[test,load]'
	touch $(STAMP)

venv: $(STAMP) ## Create .venv with the router, its test and load dependencies

tools: ## Install the real Prometheus, promtool, Alertmanager, amtool and compose into .tools/
	@bash scripts/install-tools.sh

run: venv ## Run the router locally under gunicorn on $(ROUTER_BIND)
	LLM_ROUTER_BIND=$(ROUTER_BIND) OTEL_TRACES_EXPORTER=$${OTEL_TRACES_EXPORTER:-none} $(VENV)/bin/llm-router serve

load: venv ## Drive load with Locust against $(ROUTER_URL) (USERS, SPAWN_RATE, DURATION)
	@mkdir -p reports
	$(VENV)/bin/locust -f loadgen/locustfile.py --headless --host $(ROUTER_URL) \
		--users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(DURATION) \
		--stop-timeout 20 --html reports/load.html --csv reports/load

rules: venv ## Regenerate prometheus/rules/*.yml from prometheus/config.yaml
	$(PY) prometheus/generate.py

dashboards: venv ## Regenerate grafana/generated/*.json from the grafanalib sources
	$(PY) grafana/dashboards/generate.py

lint: venv tools ## Check configs and rules with the real tools: promtool, amtool, the router's validator
	$(PY) prometheus/generate.py --check
	$(PY) grafana/dashboards/generate.py --check
	$(TOOLS)/promtool check config --lint=all --lint-fatal prometheus/prometheus.yml
	$(TOOLS)/promtool check rules --lint=all --lint-fatal prometheus/rules/*.yml
	cd prometheus/tests && ../../$(TOOLS)/promtool test rules *.test.yml
	$(TOOLS)/amtool check-config alertmanager/alertmanager.yml alertmanager/examples/*.yml
	scripts/check-alertmanager-routes.sh
	$(VENV)/bin/llm-router check-config service/config/router.yaml

test: venv tools ## Run the whole test suite (creates .venv, installs the tools it needs)
	$(PY) -m pytest

constraints: ## Re-resolve service/constraints.txt from pyproject.toml
	rm -rf /tmp/llm-router-constraints && $(PYTHON) -m venv /tmp/llm-router-constraints
	/tmp/llm-router-constraints/bin/pip install --quiet -e 'service[test,load]'
	{ sed -n '1,3p' service/constraints.txt; /tmp/llm-router-constraints/bin/pip freeze --exclude-editable; } > service/constraints.new
	mv service/constraints.new service/constraints.txt

clean: ## Remove the virtual environment, tools and reports
	rm -rf $(VENV) .tools reports .pytest_cache

# --- the stack (Docker) ---------------------------------------------------------------------
COMPOSE := docker compose

.PHONY: up down logs ps

.env:
	cp .env.example .env
	sed -i "s/^ROUTER_ADMIN_TOKEN=$$/ROUTER_ADMIN_TOKEN=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(24))')/" .env
	@echo "created .env (secrets generated; edit it to change versions and ports)"

up: .env ## Build and start the stack, wait until healthy, print the URLs
	$(COMPOSE) up -d --build --wait
	@. ./.env; echo; echo "  router      http://$${BIND_ADDRESS}:$${ROUTER_PORT}/v1  (metrics at /metrics)"

down: ## Stop the stack (keeps volumes)
	$(COMPOSE) down

logs: ## Follow the stack's logs
	$(COMPOSE) logs -f --tail=100

ps: ## Show the stack's services and health
	$(COMPOSE) ps
