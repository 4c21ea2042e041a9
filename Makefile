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
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) \
	  | sed -e 's|$$(ROUTER_BIND)|$(ROUTER_BIND)|g' -e 's|$$(ROUTER_URL)|$(ROUTER_URL)|g' \
	  | awk -F':.*## ' '{printf "  \033[1m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): service/pyproject.toml service/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip==25.3
	$(PIP) install --quiet -c service/constraints.txt -e 'service[test,load,bench]'
	touch $(STAMP)

venv: $(STAMP) ## Create .venv with the router, its test, load and benchmark dependencies

tools: ## Install the real Prometheus, promtool, Alertmanager, amtool, compose and kubectl into .tools/
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

.PHONY: k8s
k8s: venv ## Regenerate deploy/kubernetes/ (rules, dashboards, datasources, routing, router config) from the compose sources
	$(PY) deploy/kubernetes/generate.py

lint: venv tools compose-config ## Check configs and rules with the real tools: promtool, amtool, compose, the router's validator
	$(PY) prometheus/generate.py --check
	$(PY) grafana/dashboards/generate.py --check
	$(PY) deploy/kubernetes/generate.py --check
	$(TOOLS)/promtool check config --lint=all --lint-fatal prometheus/prometheus.yml prometheus/examples/*.yml
	$(TOOLS)/promtool check rules --lint=all --lint-fatal prometheus/rules/*.yml
	cd prometheus/tests && ../../$(TOOLS)/promtool test rules *.test.yml
	$(TOOLS)/amtool check-config alertmanager/alertmanager.yml alertmanager/examples/*.yml
	scripts/check-alertmanager-routes.sh
	$(VENV)/bin/llm-router check-config service/config/router.yaml

# Extra pytest options: `make test ARGS="-k alertsink -x"` (or ARGS=tests/config).
ARGS ?=
test: venv tools ## Run the whole test suite (creates .venv, installs the tools it needs); pytest options in ARGS="..."
	$(PY) -m pytest $(ARGS)

# The chaos suite alone (it also runs in `make test`): faults injected for real under load,
# each followed by an exact reconciliation of dollars served against dollars stored
# (docs/reliability.md). Figures in reports/chaos.json.
.PHONY: chaos
chaos: venv tools ## Run the chaos suite: SIGKILLs, state file faults, upstream faults, disconnects, stop order; pytest options in ARGS="..."
	$(PY) -m pytest tests/chaos $(ARGS)

# Needs Docker: starts an engine where none answers (as root, no systemd needed), builds the
# router image offline (a debootstrap base, host-built wheels), then runs tests/integration.
.PHONY: test-integration
test-integration: venv ## Run tests/integration against the router image in Docker (starts an engine, builds the image)
	scripts/docker-engine.sh
	PYTHON=$(PY) scripts/build-router-image.sh
	LLM_ROUTER_INTEGRATION_REQUIRED=1 $(PY) -m pytest tests/integration

constraints: ## Re-resolve service/constraints.txt from pyproject.toml
	rm -rf /tmp/llm-router-constraints && $(PYTHON) -m venv /tmp/llm-router-constraints
	/tmp/llm-router-constraints/bin/pip install --quiet -e 'service[test,load,bench]'
	{ sed -n '1,3p' service/constraints.txt; /tmp/llm-router-constraints/bin/pip freeze --exclude-editable; } > service/constraints.new
	mv service/constraints.new service/constraints.txt

clean: ## Stop the stack and delete its volumes; remove the virtual environment, tools and reports
	@if [ -f .env ] && command -v docker >/dev/null; then $(COMPOSE) $(ALL_PROFILES) down -v --remove-orphans; fi
	rm -rf $(VENV) .venv-peers .tools reports .pytest_cache

# --- the stack (Docker) ---------------------------------------------------------------------
# `make up PROFILES="load host"` adds Locust (load) and node-exporter + cAdvisor (host);
# PROFILES=scale adds router replicas on PostgreSQL behind nginx (ROUTER_LB_PORT).
PROFILES ?=
# The system's compose v2 plugin; where there is none, the one `make tools` installs
# (run standalone, so the user's Docker config and context still apply). The preflight
# says what to do when neither works.
ifndef COMPOSE
COMPOSE := $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
	elif [ -x .tools/bin/docker-compose ]; then echo "$(CURDIR)/.tools/bin/docker-compose"; \
	else echo "docker compose"; fi)
endif
ALL_PROFILES := --profile load --profile host --profile scale
UP_PROFILES := $(foreach p,$(PROFILES),--profile $(p))
# Secrets `make up` generates into .env when they are missing or empty.
SECRETS := ROUTER_ADMIN_TOKEN GRAFANA_ADMIN_PASSWORD ALERT_SINK_TOKEN POSTGRES_PASSWORD
PREFLIGHT := $(PYTHON) scripts/preflight.py

.PHONY: up down logs ps compose-config secrets doctor

# .env holds generated secrets: readable by its owner only (0600), from the first write.
.env:
	(umask 077 && cp .env.example .env)
	@echo "created .env from .env.example (edit it to change versions and ports)"

secrets: .env
	@chmod 600 .env
	@for var in $(SECRETS); do \
	  if ! grep -q "^$$var=." .env; then \
	    value="$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(24))')"; \
	    if grep -q "^$$var=" .env; then sed -i.bak "s|^$$var=.*|$$var=$$value|" .env && rm -f .env.bak; \
	    else echo "$$var=$$value" >> .env; fi; \
	    echo "generated $$var in .env"; \
	  fi; \
	done
	@chmod 600 .env

# Grafana's anonymous (Viewer) access is for a stack on loopback only: for any other
# BIND_ADDRESS `make up` turns it off (GRAFANA_ANONYMOUS=false) and says so.
up: secrets ## Check Docker, compose and images, build and start the stack (PROFILES="load host" for more), wait until healthy, print the URLs
	@$(PREFLIGHT) up --compose "$(COMPOSE)" --env-file .env $(UP_PROFILES)
	@. ./.env; b="$${BIND_ADDRESS:-127.0.0.1}"; \
	case "$$b" in 127.0.0.1|localhost|::1) anonymous=true;; \
	  *) anonymous=false; echo "BIND_ADDRESS=$$b is not loopback: Grafana's anonymous access is off (sign in as admin)";; esac; \
	echo "$(COMPOSE) $(UP_PROFILES) up -d --build --wait"; \
	GRAFANA_ANONYMOUS=$$anonymous $(COMPOSE) $(UP_PROFILES) up -d --build --wait
	@. ./.env; b="$${BIND_ADDRESS:-127.0.0.1}"; echo; \
	case "$$b" in 127.0.0.1|localhost|::1) grafana="anonymous viewer; ";; *) grafana="";; esac; \
	echo "  router        http://$$b:$${ROUTER_PORT}/v1   (metrics: /metrics, health: /readyz)"; \
	echo "  grafana       http://$$b:$${GRAFANA_PORT}   ($${grafana}admin password: GRAFANA_ADMIN_PASSWORD in .env)"; \
	echo "  prometheus    http://$$b:$${PROMETHEUS_PORT}"; \
	echo "  alertmanager  http://$$b:$${ALERTMANAGER_PORT}"; \
	echo "  alert sink    http://$$b:$${ALERT_SINK_PORT}"; \
	echo "  jaeger        http://$$b:$${JAEGER_UI_PORT}   (OTLP: grpc $$b:$${JAEGER_OTLP_GRPC_PORT}, http $$b:$${JAEGER_OTLP_HTTP_PORT})"; \
	echo "  loki          http://$$b:$${LOKI_PORT}   (query it through Grafana's Explore)"; \
	echo "  fluent-bit    http://$$b:$${FLUENT_BIT_HTTP_PORT}/api/v1/health   (forward input: 127.0.0.1:$${FLUENT_BIT_FORWARD_PORT})"; \
	echo; echo "  check it end to end: make doctor"

down: ## Stop the stack, every profile included (keeps volumes)
	@if [ ! -f .env ]; then echo "no .env: nothing was started with make up"; exit 0; fi; \
	$(PREFLIGHT) down --compose "$(COMPOSE)" && $(COMPOSE) $(ALL_PROFILES) down --remove-orphans

doctor: venv ## Check a running stack end to end (traffic in, then what each backend saw); DOCTOR_ARGS="--json" for CI
	$(VENV)/bin/llm-router doctor --env-file .env $(DOCTOR_ARGS)

logs: .env ## Follow the stack's logs
	$(COMPOSE) $(ALL_PROFILES) logs -f --tail=100

ps: .env ## Show the stack's services and health
	$(COMPOSE) $(ALL_PROFILES) ps

# `docker compose config` for the base file and each profile, with the repo's compose v2
# plugin (make tools). Uses .env, or a copy of .env.example (secrets filled with
# placeholders) in a temporary folder when there is no .env.
COMPOSE_CHECK_PROFILES := load host scale
compose-config: tools ## Validate compose.yaml (base and every profile) with the real compose CLI
	@set -euo pipefail; \
	if command -v docker >/dev/null; then compose=(env DOCKER_CONFIG="$(CURDIR)/.tools/docker" docker compose); \
	else compose=("$(CURDIR)/$(TOOLS)/docker-compose"); fi; \
	env_file=.env; \
	if [ ! -f .env ]; then \
	  tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; env_file="$$tmp/.env"; \
	  sed -e 's/^ROUTER_ADMIN_TOKEN=$$/ROUTER_ADMIN_TOKEN=placeholder/' \
	      -e 's/^GRAFANA_ADMIN_PASSWORD=$$/GRAFANA_ADMIN_PASSWORD=placeholder/' \
	      -e 's/^POSTGRES_PASSWORD=$$/POSTGRES_PASSWORD=placeholder/' \
	      -e 's/^ALERT_SINK_TOKEN=$$/ALERT_SINK_TOKEN=placeholder-sink-token/' .env.example > "$$env_file"; \
	fi; \
	echo "compose config: base (env file: $$env_file)"; \
	"$${compose[@]}" --env-file "$$env_file" config --quiet; \
	for profile in $(COMPOSE_CHECK_PROFILES); do \
	  echo "compose config: --profile $$profile"; \
	  "$${compose[@]}" --env-file "$$env_file" --profile "$$profile" config --quiet; \
	done

# --- performance (bench/) -------------------------------------------------------------------
.PHONY: bench bench-quick bench-peers
# Extra `python -m bench` arguments, e.g. BENCH_ARGS="--scenario-rounds 1 --note 'text'".
BENCH_ARGS ?=

# wrk is a Debian package: installed with apt-get when missing (as root, or with sudo).
define BENCH_DEPS
	@command -v wrk >/dev/null || { echo "installing wrk (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq wrk; fi; }
	$(PIP) install --quiet -c service/constraints.txt -e 'service[bench]'
endef

bench: venv ## Performance suite (~20 min): writes docs/performance.md and docs/img/*.png
	$(BENCH_DEPS)
	$(PY) -m bench $(BENCH_ARGS)

# Opt-in (not in make test): LiteLLM's proxy, pinned in bench/peers.py, in .venv-peers (~760 MB).
bench-peers: venv ## make bench plus LiteLLM's proxy in the scenarios (installs it into .venv-peers)
	$(BENCH_DEPS)
	$(PY) -m bench.peers --install
	$(PY) -m bench --peers $(BENCH_ARGS)

bench-quick: venv ## The benchmark's short mode (checks it runs), into a temporary directory
	$(BENCH_DEPS)
	@out="$$(mktemp -d)"; $(PY) -m bench --quick --out "$$out" && echo "report: $$out/performance.md"
