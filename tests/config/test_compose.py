"""compose.yaml, checked through the real compose v2 CLI (`docker compose config --format
json`, which needs no Docker daemon), against the files it wires together: .env.example,
prometheus/prometheus.yml, alertmanager/alertmanager.yml, Grafana's provisioning, and the
Loki, Fluent Bit and Jaeger configs.

The compose CLI is the repo's plugin (`make tools`: .tools/docker/cli-plugins) run by the
docker CLI, or the same binary standalone (.tools/bin/docker-compose). The resolved model
always comes from .env.example (copied to a temporary folder with placeholder secrets),
never from a developer's .env, and with the stack's variables removed from the
environment: the defaults are what is tested.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / ".tools" / "docker"
STANDALONE = REPO / ".tools" / "bin" / "docker-compose"
PROFILES = ("load", "host", "scale")

# Services whose health comes from their image's own HEALTHCHECK (service/Dockerfile: GET
# /readyz with Python's HTTP client), not from compose. The alert sink runs the same image
# on another port, so compose must override it (asserted below).
IMAGE_HEALTHCHECK = {"router"}
# Services that keep state, and where it lives in the container.
STATEFUL = {
    "router": "/var/lib/llm-router",
    "prometheus": "/prometheus",
    "alertmanager": "/alertmanager",
    "grafana": "/var/lib/grafana",
    "loki": "/loki",
    "fluent-bit": "/var/lib/fluent-bit",
}
# Start order that matters: (service, dependency) -> condition.
DEPENDS_ON = {
    ("router", "fluent-bit"): "service_healthy",     # its first log lines are shipped
    ("router", "jaeger"): "service_healthy",         # and its first traces
    ("alert-sink", "fluent-bit"): "service_healthy",
    ("alertmanager", "alert-sink"): "service_healthy",  # every receiver posts to the sink
    ("prometheus", "alertmanager"): "service_healthy",
    ("fluent-bit", "loki"): "service_healthy",
    ("grafana", "prometheus"): "service_healthy",     # its datasources
    ("grafana", "loki"): "service_healthy",
    ("grafana", "jaeger"): "service_healthy",
    ("loadgen", "router"): "service_healthy",
}
# Distroless images: no shell, so exec-form healthchecks only.
DISTROLESS = {"loki", "fluent-bit"}
# Python processes that would be PID 1 and ignore SIGTERM without an init.
NEEDS_INIT = {"router", "alert-sink", "loadgen"}
# Loki stream labels must stay low-cardinality; these values are per request or unbounded.
HIGH_CARDINALITY = {"trace_id", "span_id", "request_id", "tenant", "model", "container_id", "message"}
ALLOWED_LABELS = {"job", "service", "level", "container"}

COMPOSE_ENV_NAMES = {
    line.split("=", 1)[0]
    for line in (REPO / ".env.example").read_text().splitlines()
    if line and not line.startswith("#") and "=" in line
}


def env_example() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def compose_command() -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV_NAMES and not k.startswith("COMPOSE_")}
    docker = shutil.which("docker")
    if docker and (PLUGIN_DIR / "cli-plugins" / "docker-compose").exists():
        return [docker, "compose"], {**env, "DOCKER_CONFIG": str(PLUGIN_DIR)}
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"], env
    if STANDALONE.exists():
        return [str(STANDALONE)], env
    pytest.skip("no compose v2 CLI: neither the docker CLI (with the compose plugin) nor "
                ".tools/bin/docker-compose exists (run `make tools`)")


@pytest.fixture(scope="session")
def env_file(tmp_path_factory) -> Path:
    text = (REPO / ".env.example").read_text()
    text = re.sub(r"(?m)^(ROUTER_ADMIN_TOKEN|GRAFANA_ADMIN_PASSWORD|ALERT_SINK_TOKEN|POSTGRES_PASSWORD)=$",
                  r"\1=placeholder-secret", text)
    path = tmp_path_factory.mktemp("compose-env") / ".env"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def models(env_file) -> dict[str, dict]:
    """The resolved compose model: `base` and one per profile."""
    command, env = compose_command()
    result = {}
    for name, extra in [("base", [])] + [(p, ["--profile", p]) for p in PROFILES]:
        run = subprocess.run([*command, "--project-directory", str(REPO), "--env-file", str(env_file), *extra,
                              "config", "--format", "json"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"compose config ({name}) failed:\n{run.stderr}"
        result[name] = json.loads(run.stdout)
    return result


@pytest.fixture(scope="session")
def services(models) -> dict[str, dict]:
    """Every service of every profile."""
    merged = {}
    for model in models.values():
        merged.update(model["services"])
    return merged


@cache
def raw_compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


@cache
def fluent_bit() -> dict:
    return yaml.safe_load((REPO / "fluent-bit" / "fluent-bit.yaml").read_text())


def binds(service: dict) -> list[dict]:
    return [v for v in service.get("volumes", []) if v["type"] == "bind"]


def bind_at(service: dict, target: str) -> dict:
    found = [v for v in binds(service) if v["target"] == target]
    assert found, f"no bind mount at {target}"
    return found[0]


def container_ports(service: dict) -> set[int]:
    return {int(p["target"]) for p in service.get("ports", [])} | {int(p) for p in service.get("expose", [])}


# --- the model resolves, per profile ----------------------------------------------------------

def test_profiles_add_only_their_services(models):
    base = set(models["base"]["services"])
    assert {"router", "alert-sink", "prometheus", "alertmanager", "grafana", "loki", "fluent-bit", "jaeger"} <= base
    assert set(models["load"]["services"]) - base == {"loadgen"}
    assert set(models["host"]["services"]) - base == {"node-exporter", "cadvisor"}
    assert set(models["scale"]["services"]) - base == {"postgres", "router-replica", "router-lb", "postgres-exporter"}


# --- images -------------------------------------------------------------------------------------

def test_every_image_is_pinned_by_its_own_env_example_variable(services):
    values = env_example()
    variables = {}
    for name, raw in {n: s for n, s in raw_compose()["services"].items()}.items():
        template = raw["image"]
        names = re.findall(r"\$\{(\w+)[^}]*\}", template)
        assert len(names) == 1, f"{name}: image {template!r} must come from exactly one .env.example variable"
        variable = names[0]
        assert variable in values and values[variable], f"{name}: {variable} is not set in .env.example"
        expected = re.sub(r"\$\{\w+[^}]*\}", values[variable], template)
        image = services[name]["image"]
        assert image == expected, f"{name}: resolves to {image}, .env.example says {expected}"
        repository, _, tag = image.rpartition(":")
        assert repository and tag and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and "latest" not in tag, f"{name}: {image} is not pinned"
        variables.setdefault(variable, set()).add(image.rpartition(":")[0])
    # One variable per image: the router and the alert sink share ROUTER_IMAGE (one image).
    for variable, repositories in variables.items():
        assert len(repositories) == 1, f"{variable} pins several images: {repositories}"


def test_pinned_versions_follow_the_release_lines_the_tests_run():
    values = env_example()
    assert values["PROMETHEUS_VERSION"].startswith("v3.5."), "Prometheus 3.5 LTS (promtool 3.5 in the tests)"
    assert values["ALERTMANAGER_VERSION"].startswith("v0.33."), "Alertmanager 0.33 (amtool 0.33 in the tests)"


# --- ports ----------------------------------------------------------------------------------------

def test_every_published_port_binds_loopback_by_default(services):
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            published += 1
            assert port.get("host_ip") == "127.0.0.1", f"{name}: port {port['target']} is published on {port.get('host_ip') or 'every interface'}"
    assert published >= 10


def test_published_host_ports_do_not_collide(services):
    seen = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            key = (port.get("host_ip", ""), port["published"])
            assert key not in seen, f"{name} and {seen.get(key)} both publish {key}"
            seen[key] = name


# --- healthchecks, init, memory, restart ---------------------------------------------------------------

def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        check = service.get("healthcheck")
        if name in IMAGE_HEALTHCHECK:
            # The router's health is its image's HEALTHCHECK (service/Dockerfile), not compose's.
            assert not check or not check.get("disable"), f"{name}: the image healthcheck is disabled"
            assert re.search(r"(?m)^HEALTHCHECK .*\n?.*CMD", (REPO / "service" / "Dockerfile").read_text())
            continue
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        test = check["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: {test}"
        if name in DISTROLESS:
            assert test[0] == "CMD", f"{name}: distroless image, the healthcheck must be exec form"
        if services[name]["image"].startswith(("prom/", "ghcr.io/google/cadvisor")):
            # busybox wget tries IPv6 first for `localhost`
            assert "wget" in test and any("127.0.0.1" in a for a in test), f"{name}: {test}"
        assert "localhost" not in " ".join(test), f"{name}: use 127.0.0.1 in healthchecks"


def test_alert_sink_overrides_the_router_image_healthcheck(services):
    test = " ".join(services["alert-sink"]["healthcheck"]["test"])
    assert "127.0.0.1:9095/healthz" in test, "the image's HEALTHCHECK probes :8080, the sink listens on :9095"


def test_loki_and_jaeger_healthchecks_use_their_own_probes(services):
    assert services["loki"]["healthcheck"]["test"] == ["CMD", "/usr/bin/loki", "-health"]
    jaeger = yaml.safe_load((REPO / "jaeger" / "config.yaml").read_text())
    endpoint = jaeger["extensions"]["healthcheckv2"]["http"]["endpoint"]
    port = endpoint.rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{port}/status" in services["jaeger"]["healthcheck"]["test"]


def test_fluent_bit_healthcheck_runs_the_mounted_config(services):
    test = services["fluent-bit"]["healthcheck"]["test"]
    config = test[test.index("-c") + 1]
    assert test[:2] == ["CMD", "/fluent-bit/bin/fluent-bit"] and "--dry-run" in test
    bind_at(services["fluent-bit"], config)
    # Every file the config names is mounted next to it (the Lua script of the filter).
    for lua_filter in (f for f in fluent_bit()["pipeline"]["filters"] if f["name"] == "lua"):
        mount = bind_at(services["fluent-bit"], lua_filter["script"])
        assert Path(mount["source"]) == REPO / "fluent-bit" / Path(lua_filter["script"]).name


def test_fluent_bit_health_endpoint_is_on(services):
    service = fluent_bit()["service"]
    # /api/v1/health reflects the outputs (make doctor reads it) only with health_check on.
    assert service["health_check"] in (True, "on")
    assert int(service["hc_period"]) > 0 and int(service["hc_errors_count"]) > 0


def _bytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)B?", str(size).strip(), re.IGNORECASE)
    assert match, size
    return int(match.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2).upper()]


def test_fluent_bit_memory_fits_its_limit(services):
    # Chunks in memory reach about 2 MB each (Fluent Bit's chunk size); add the backlog
    # buffer and ~32 MB for Fluent Bit itself: a long Loki outage must not OOM-kill it.
    service = fluent_bit()["service"]
    chunk = 2 * 1024**2
    needed = int(service["storage.max_chunks_up"]) * chunk + _bytes(service["storage.backlog.mem_limit"]) + 32 * 1024**2
    limit = int(services["fluent-bit"]["mem_limit"])
    assert needed <= limit, f"Fluent Bit may hold {needed / 1024**2:.0f} MB, its limit is {limit / 1024**2:.0f} MB"


def test_every_service_has_a_memory_limit(services):
    total = 0
    for name, service in services.items():
        assert service.get("mem_limit"), f"{name}: no mem_limit"
        total += int(service["mem_limit"])
    assert total <= 6 * 1024**3, f"the whole stack may take {total / 1024**3:.1f} GiB: too much for a laptop"


def test_python_services_run_under_an_init(services):
    for name in NEEDS_INIT:
        assert services[name].get("init") is True, f"{name}: a Python PID 1 ignores SIGTERM"


def test_long_running_services_restart(services):
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name


# --- volumes and mounts ---------------------------------------------------------------------------------

def test_config_bind_mounts_are_read_only(services):
    for name, service in services.items():
        for mount in binds(service):
            assert mount.get("read_only") is True, f"{name}: {mount['source']} -> {mount['target']} is writable"
            source = Path(mount["source"])
            if source.is_relative_to(REPO):
                assert source.exists(), f"{name}: {source} does not exist (Docker would create a directory)"


def test_stateful_services_use_named_volumes(models, services):
    declared = set(models["base"]["volumes"])
    for name, target in STATEFUL.items():
        volumes = [v for v in services[name]["volumes"] if v["type"] == "volume" and v["target"] == target]
        assert volumes, f"{name}: no named volume at {target}"
        assert volumes[0]["source"] in declared


def test_storage_paths_are_on_the_volumes(services):
    def flag(service, name):
        return next(a.split("=", 1)[1] for a in services[service]["command"] if a.startswith(f"--{name}="))

    assert flag("prometheus", "storage.tsdb.path") == STATEFUL["prometheus"]
    assert flag("alertmanager", "storage.path") == STATEFUL["alertmanager"]
    loki = yaml.safe_load((REPO / "loki" / "loki.yaml").read_text())
    assert loki["common"]["path_prefix"] == STATEFUL["loki"]
    assert fluent_bit()["service"]["storage.path"].startswith(STATEFUL["fluent-bit"] + "/")


def test_depends_on_conditions(services):
    for (service, dependency), condition in DEPENDS_ON.items():
        depends = services[service].get("depends_on", {})
        assert dependency in depends, f"{service} should wait for {dependency}"
        assert depends[dependency]["condition"] == condition, f"{service} -> {dependency}"
        if condition == "service_healthy" and dependency not in IMAGE_HEALTHCHECK:
            assert services[dependency].get("healthcheck"), f"{dependency} has no healthcheck to wait for"


# --- logging: Docker's fluentd driver -> Fluent Bit -------------------------------------------------------------

def test_router_and_sink_log_through_fluent_bit_asynchronously(services):
    forward = fluent_bit()["pipeline"]["inputs"][0]
    assert forward["name"] == "forward"
    published = {int(p["target"]): p for p in services["fluent-bit"]["ports"]}
    assert int(forward["port"]) in published, "the forward port must be published: the Docker daemon dials it"
    host_port = published[int(forward["port"])]
    assert host_port["host_ip"] == "127.0.0.1"
    parser_match = next(f for f in fluent_bit()["pipeline"]["filters"] if f["name"] == "parser")["match"]
    for name in ("router", "alert-sink"):
        logging_ = services[name]["logging"]
        assert logging_["driver"] == "fluentd", name
        options = logging_["options"]
        assert options["fluentd-async"] == "true", f"{name}: must start while Fluent Bit is down"
        assert options["fluentd-address"] == f"127.0.0.1:{host_port['published']}", name
        assert re.fullmatch(parser_match.replace(".", r"\.").replace("*", ".*"), options["tag"]), \
            f"{name}: tag {options['tag']} is not matched by the parser filter ({parser_match})"
    # Fluent Bit never ships its own logs to itself.
    assert services["fluent-bit"].get("logging", {}).get("driver") in (None, "json-file", "local")


def test_traces_go_to_jaeger_over_otlp_http(services):
    jaeger = yaml.safe_load((REPO / "jaeger" / "config.yaml").read_text())
    http = jaeger["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    grpc = jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert http.startswith("0.0.0.0:") and grpc.startswith("0.0.0.0:"), "receivers default to localhost"
    for name in ("router", "alert-sink"):
        env = services[name]["environment"]
        assert env["OTEL_TRACES_EXPORTER"] == "otlp"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://jaeger:{http.rsplit(':', 1)[1]}"


# --- Grafana ------------------------------------------------------------------------------------------------

def test_grafana_mounts_match_the_provisioning(services):
    grafana = services["grafana"]
    # Each folder the bundle owns, never the whole provisioning folder: that would hide the
    # image's own (alerting, plugins...) and Grafana logs an error for each at start.
    owned = sorted(p.name for p in (REPO / "grafana" / "provisioning").iterdir() if p.is_dir())
    assert owned == ["dashboards", "datasources"]
    assert not [m for m in binds(grafana) if m["target"] == "/etc/grafana/provisioning"]
    for folder in owned:
        mount = bind_at(grafana, f"/etc/grafana/provisioning/{folder}")
        assert Path(mount["source"]) == REPO / "grafana" / "provisioning" / folder
    providers = yaml.safe_load((REPO / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml").read_text())
    for provider in providers["providers"]:
        mount = bind_at(grafana, provider["options"]["path"])
        assert Path(mount["source"]) == REPO / "grafana" / "generated"
        assert mount["read_only"] is True
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert (REPO / "grafana" / "generated" / Path(home).name).exists()


def test_grafana_access(services):
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    # ...but only by default: `make up` turns it off for a non-loopback BIND_ADDRESS.
    assert raw_compose()["services"]["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS:-true}"
    # No app plugin is downloaded at start (offline it fails, and it costs memory).
    assert env["GF_PLUGINS_PREINSTALL_DISABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] not in ("", "admin")
    # Without a generated password compose refuses to start Grafana (never admin/admin).
    assert ":?" in raw_compose()["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert env_example()["GRAFANA_ADMIN_PASSWORD"] == "", "generated by `make up`, never committed"


def test_grafana_datasources_point_at_compose_services(services):
    datasources = yaml.safe_load((REPO / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text())
    for source in datasources["datasources"]:
        match = re.fullmatch(r"http://([\w-]+):(\d+)/?", source["url"])
        assert match, source["url"]
        host, port = match.group(1), int(match.group(2))
        assert host in services, f"datasource {source['name']}: no service {host}"
        assert port in known_ports(services, host), f"datasource {source['name']}: {host} does not serve :{port}"


# --- Prometheus -----------------------------------------------------------------------------------------------

def test_prometheus_runs_the_repo_config_and_rules(services):
    prometheus = services["prometheus"]
    command = prometheus["command"]
    config = next(a.split("=", 1)[1] for a in command if a.startswith("--config.file="))
    assert Path(bind_at(prometheus, config)["source"]) == REPO / "prometheus" / "prometheus.yml"
    rules = bind_at(prometheus, str(Path(config).parent / "rules"))
    assert Path(rules["source"]) == REPO / "prometheus" / "rules"
    assert "--enable-feature=exemplar-storage" in command
    # The lifecycle API (POST /-/quit, /-/reload) would let anyone who reaches the port
    # stop Prometheus; nothing in the bundle needs it (tests/live start their own).
    assert "--web.enable-lifecycle" not in command


def test_alertmanager_runs_the_repo_config_single_node(services):
    alertmanager = services["alertmanager"]
    command = alertmanager["command"]
    config = next(a.split("=", 1)[1] for a in command if a.startswith("--config.file="))
    assert Path(bind_at(alertmanager, config)["source"]) == REPO / "alertmanager" / "alertmanager.yml"
    templates = bind_at(alertmanager, str(Path(config).parent / "templates"))
    assert Path(templates["source"]) == REPO / "alertmanager" / "templates"
    assert "--cluster.listen-address=" in command


def known_ports(services: dict, name: str) -> set[int]:
    """Ports the service's process listens on: published or exposed ones, plus those its own
    config (or its image's documented default) sets without publishing them."""
    ports = container_ports(services[name])
    if name == "jaeger":
        jaeger = yaml.safe_load((REPO / "jaeger" / "config.yaml").read_text())
        for reader in jaeger["service"]["telemetry"]["metrics"]["readers"]:
            exporter = reader["pull"]["exporter"]["prometheus"]
            assert exporter["host"] == "0.0.0.0", "Prometheus scrapes jaeger from another container"
            ports.add(int(exporter["port"]))
        ports.add(int(jaeger["extensions"]["jaeger_query"]["http"]["endpoint"].rsplit(":", 1)[1]))
    elif name == "loki":
        ports.add(yaml.safe_load((REPO / "loki" / "loki.yaml").read_text())["server"]["http_listen_port"])
    elif name == "fluent-bit":
        ports.add(int(fluent_bit()["service"]["http_port"]))
    elif name == "node-exporter":
        ports.add(9100)   # node-exporter's default --web.listen-address
    elif name == "cadvisor":
        ports.add(8080)   # cAdvisor's default --port
    return ports


def scrape_targets() -> list[tuple[str, str, int]]:
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    targets = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.append((job["job_name"], host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                targets.append((job["job_name"], host, int(dns["port"])))
    for manager in config["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.append(("alerting", host, int(port)))
    return targets


def test_every_scrape_target_is_a_service_port(services):
    targets = scrape_targets()
    assert len(targets) >= 10
    for job, host, port in targets:
        # Prometheus scrapes itself on localhost, in its own container.
        service = "prometheus" if host == "localhost" and job == "prometheus" else host
        assert service in services, f"job {job}: {host} is not a compose service"
        assert port in known_ports(services, service), f"job {job}: {service} does not listen on :{port}"


def test_every_service_is_scraped(services):
    scraped = {("prometheus" if host == "localhost" else host) for _, host, _ in scrape_targets()}
    # loadgen (Locust) and router-lb (open-source nginx) have no Prometheus endpoint; postgres
    # is scraped through postgres-exporter (whose DATA_SOURCE_URI names it).
    assert set(services) - scraped == {"loadgen", "router-lb", "postgres"}, "every other service is scraped"
    assert services["postgres-exporter"]["environment"]["DATA_SOURCE_URI"].startswith("postgres:5432/")


def test_alertmanager_webhooks_reach_the_sink(services):
    config = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
    urls = [hook["url"] for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])]
    assert urls
    for url in urls:
        match = re.match(r"http://([\w-]+):(\d+)/", url)
        assert match and match.group(1) == "alert-sink" and int(match.group(2)) in container_ports(services["alert-sink"]), url


# --- Fluent Bit: the parser and the Loki output ------------------------------------------------------------------

def router_parser() -> dict:
    parser_filter = next(f for f in fluent_bit()["pipeline"]["filters"] if f["name"] == "parser")
    assert parser_filter["key_name"] == "log", "Docker's fluentd driver puts the line under `log`"
    return next(p for p in fluent_bit()["parsers"] if p["name"] == parser_filter["parser"])


def strptime_format(fluent_bit_format: str) -> str:
    """Fluent Bit's Time_Format is strptime(3) plus %L (fractional seconds, any number of
    digits). Python's strptime has the same directives, with %f for the fraction (1 to 6
    digits): the router writes milliseconds, so %L and %f read the same text."""
    assert fluent_bit_format.count("%L") <= 1
    return fluent_bit_format.replace("%L", "%f")


def real_router_line() -> str:
    """One line exactly as the router writes it (its own formatter, not a copy)."""
    from llm_router.telemetry.logs import ContextFilter, RouterJsonFormatter

    record = logging.LogRecord("llm_router.access", logging.INFO, __file__, 1, "request", None, None)
    record.created = datetime(2026, 11, 28, 22, 2, 0, 219000, tzinfo=timezone.utc).timestamp()
    ContextFilter("llm-router").filter(record)
    return RouterJsonFormatter().format(record)


def test_parser_time_format_reads_the_router_time_field():
    parser = router_parser()
    assert parser["format"] == "json"
    line = json.loads(real_router_line())
    value = line[parser["time_key"]]
    assert value == "2026-11-28T22:02:00.219Z"
    parsed = datetime.strptime(value, strptime_format(parser["time_format"]))
    assert parsed == datetime(2026, 11, 28, 22, 2, 0, 219000)
    # The literal Z matches UTC only: the router always writes UTC (no +01:00 offsets).
    assert parser["time_format"].endswith("Z")


def loki_output() -> dict:
    return next(o for o in fluent_bit()["pipeline"]["outputs"] if o["name"] == "loki")


def key_values(text: str) -> dict[str, str]:
    pairs = {}
    for item in (part.strip() for part in text.split(",")):
        key, _, value = item.partition("=")
        pairs[key.strip()] = value.strip()
    return pairs


def test_loki_labels_are_low_cardinality():
    output = loki_output()
    labels = key_values(output["labels"])
    assert set(labels) <= ALLOWED_LABELS, f"unexpected labels {set(labels) - ALLOWED_LABELS}"
    assert not set(labels) & HIGH_CARDINALITY
    accessed = {v.lstrip("$") for v in labels.values() if v.startswith("$")}
    assert not accessed & HIGH_CARDINALITY, "a label takes its value from a high-cardinality field"
    assert "label_keys" not in output and "auto_kubernetes_labels" not in output
    # The Grafana dashboards select streams by these labels.
    assert {"service", "level"} <= set(labels)


def test_request_facts_travel_as_structured_metadata():
    # The Lua filter builds the `metadata` map (what ends up in it: test_fluent_bit_records.py);
    # Grafana's derived field matches the structured-metadata field (matcherType label).
    assert loki_output()["structured_metadata_map_keys"] == "$metadata"
    datasources = yaml.safe_load((REPO / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text())
    loki = next(d for d in datasources["datasources"] if d["type"] == "loki")
    fields = [f for f in loki["jsonData"]["derivedFields"] if f["name"] == "trace_id"]
    assert fields and fields[0]["matcherType"] == "label"


def test_labels_and_metadata_name_fields_the_router_writes():
    line = json.loads(real_router_line())
    driver_fields = {"container_name", "container_id", "source"}
    for value in key_values(loki_output()["labels"]).values():
        if value.startswith("$"):
            field = value[1:]
            # tenant and model are on access lines only (request facts); the rest on every line.
            assert field in line or field in driver_fields or field in {"tenant", "model"}, field


def test_fluent_bit_never_drops_logs_during_a_loki_outage():
    output = loki_output()
    service = fluent_bit()["service"]
    assert str(output["retry_limit"]).lower() in ("no_limits", "false")
    assert output.get("storage.total_limit_size")
    assert service["storage.path"] and fluent_bit()["pipeline"]["inputs"][0]["storage.type"] == "filesystem"
    assert service["http_server"] in (True, "on") and int(service["http_port"]) == 2020


# --- Loki and Jaeger configs ---------------------------------------------------------------------------------------

def test_loki_storage_client_is_pinned_and_inside_the_volume():
    loki = yaml.safe_load((REPO / "loki" / "loki.yaml").read_text())
    storage = loki["storage_config"]
    # Loki's own client, explicitly: a newer default (Thanos) would ignore these paths.
    assert storage["use_thanos_objstore"] is False
    # Every path Loki writes (chunks, index, delete requests, compactor) is under /loki,
    # the only directory the image's uid 10001 owns.
    paths = [storage["filesystem"]["directory"], storage["tsdb_shipper"]["active_index_directory"],
             storage["tsdb_shipper"]["cache_location"], loki["compactor"]["working_directory"],
             *loki["common"]["storage"]["filesystem"].values()]
    for path in paths:
        assert Path(path).is_relative_to(STATEFUL["loki"]), path
    assert storage["filesystem"]["directory"] == loki["common"]["storage"]["filesystem"]["chunks_directory"]


def test_loki_config_retention_and_schema():
    loki = yaml.safe_load((REPO / "loki" / "loki.yaml").read_text())
    compactor = loki["compactor"]
    assert compactor["retention_enabled"] is True and compactor["delete_request_store"] == "filesystem"
    schema = loki["schema_config"]["configs"][-1]
    assert (schema["store"], schema["schema"], schema["object_store"]) == ("tsdb", "v13", "filesystem")
    assert loki["limits_config"]["allow_structured_metadata"] is True
    assert loki["limits_config"]["retention_period"]


def test_jaeger_config_details():
    jaeger = yaml.safe_load((REPO / "jaeger" / "config.yaml").read_text())
    resource = jaeger["service"]["telemetry"]["resource"]
    # The declarative list form; the inline map is the legacy one (a warning at every start).
    assert set(resource) == {"attributes"}
    assert {"name": "service.name", "value": "jaeger"} in resource["attributes"]
    # The query service must not trace itself into the store it serves.
    assert jaeger["extensions"]["jaeger_query"]["enable_tracing"] is False
    # A permanently failed component makes /status (the healthcheck) fail.
    assert jaeger["extensions"]["healthcheckv2"]["component_health"]["include_permanent_errors"] is True


def test_jaeger_memory_store_is_bounded(services):
    jaeger = yaml.safe_load((REPO / "jaeger" / "config.yaml").read_text())
    backends = jaeger["extensions"]["jaeger_storage"]["backends"]
    for backend in backends.values():
        assert 0 < backend["memory"]["max_traces"] <= 50000
    pipeline = jaeger["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and pipeline["exporters"] == ["jaeger_storage_exporter"]
    assert {"jaeger_storage", "jaeger_query", "healthcheckv2"} <= set(jaeger["service"]["extensions"])
    command = services["jaeger"]["command"]
    config = next(a.split("=", 1)[1] for a in command if a.startswith("--config="))
    assert Path(bind_at(services["jaeger"], config)["source"]) == REPO / "jaeger" / "config.yaml"
