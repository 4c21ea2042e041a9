"""deploy/kubernetes/, checked without a cluster (none can run here, no image can be pulled):

1. freshness: `deploy/kubernetes/generate.py --check` (the generated objects are what the
   compose sources render);
2. rendering: `kubectl kustomize` of every kustomization (base, monitoring, grafana, the
   whole bundle, every overlay; the component through the overlay that uses it);
3. schemas: every core object against the Kubernetes API's own schemas (kubernetes-validate,
   strict: unknown fields fail) for the oldest and newest release we support, and the
   Prometheus Operator objects against the CRDs' openAPIV3Schema ($PROMETHEUS_OPERATOR_CRDS_DIR),
   with unknown fields refused the way the API server's strict field validation does;
4. agreement with compose: PrometheusRule groups equal prometheus/rules/*.yml and pass
   promtool; the dashboard ConfigMaps hold exactly grafana/generated/*.json; the datasources
   equal provisioning but for the documented URLs; the AlertmanagerConfig translates back
   to alertmanager.yml; the router's config is service/config/router.yaml with the keys moved
   to the environment;
5. wiring: the ServiceMonitor selects the router Service and its metrics port with the job
   the rules select; HPA, PDB and NetworkPolicy select the router's pods; every webhook
   reaches a rendered Service; the Deployment's environment, probes and stop timing;
6. lint: every container has probes, requests and limits, runs as non-root on a read-only
   root filesystem with no capabilities, and its image is pinned.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from toolbox import REPO, TOOLS, promtool, run  # noqa: F401 (fixtures)

K8S = REPO / "deploy" / "kubernetes"
SETTINGS = yaml.safe_load((K8S / "settings.yaml").read_text())
# The Kubernetes releases the manifests are validated for: the oldest we document as
# supported (docs/kubernetes.md) and the newest kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30", "1.37")
OPERATOR_GROUP = "monitoring.coreos.com"
ROUTER_JOB = re.fullmatch(r'job="([^"]+)"', yaml.safe_load((REPO / "prometheus" / "config.yaml").read_text())
                          ["selectors"]["router"]).group(1)


# --- rendering ------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """YAML as Kubernetes reads it: a bare `=` (an AlertmanagerConfig matchType, as kustomize
    writes it, or a CRD's enum) is the string "=", not YAML 1.1's `value` tag."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def kustomizations() -> list[str]:
    """Every directory that `kubectl kustomize` can build (kind Kustomization, not Component)."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization":
            found.append(path.parent.relative_to(K8S).as_posix() or ".")
    return found


KUSTOMIZATIONS = kustomizations()


@pytest.fixture(scope="session")
def kubectl() -> Path:
    """The kubectl of `make tools` (Debian's, .tools/bin), else one on PATH; its bundled
    kustomize must be v5 (components, labels, replacements)."""
    candidates = [TOOLS / "kubectl"] + ([Path(p)] if (p := shutil.which("kubectl")) else [])
    for candidate in candidates:
        if not candidate.exists():
            continue
        result = subprocess.run([str(candidate), "version", "--client", "-o", "json"], capture_output=True, text=True)
        version = json.loads(result.stdout or "{}").get("kustomizeVersion", "") if result.returncode == 0 else ""
        if re.match(r"v?([5-9]|\d\d)\.", version):
            return candidate
    pytest.skip("no kubectl with kustomize v5 (`make tools` installs Debian's kubectl into .tools/bin): "
                "the manifests cannot be rendered here")


@pytest.fixture(scope="session")
def rendered(kubectl) -> dict[str, list[dict]]:
    """`kubectl kustomize DIR` of every kustomization, as lists of objects."""
    out = {}
    for directory in KUSTOMIZATIONS:
        result = run(kubectl, "kustomize", K8S / directory)
        out[directory] = [doc for doc in yaml.load_all(result.stdout, Loader=_Loader) if doc]
    return out


@pytest.fixture(scope="session")
def everything(rendered) -> list[dict]:
    return rendered["."]


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def router_deployment(objects: list[dict]) -> dict:
    return named(objects, "Deployment", "llm-router")


def router_container(objects: list[dict]) -> dict:
    return next(c for c in router_deployment(objects)["spec"]["template"]["spec"]["containers"] if c["name"] == "router")


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are used here: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_every_kustomization_is_rendered_here():
    assert {".", "base", "monitoring", "grafana", "overlays/example"} <= set(KUSTOMIZATIONS), KUSTOMIZATIONS
    components = [p.parent.relative_to(K8S).as_posix() for p in K8S.rglob("kustomization.yaml")
                  if yaml.safe_load(p.read_text()).get("kind") == "Component"]
    assert components == ["components/in-flight-autoscaling"]
    # A component renders only through a kustomization that uses it.
    used = {c for d in KUSTOMIZATIONS for c in yaml.safe_load((K8S / d / "kustomization.yaml").read_text())
            .get("components", [])}
    for component in components:
        assert any((K8S / d / u).resolve() == (K8S / component).resolve() for d in KUSTOMIZATIONS for u in used), \
            f"{component} is used by no kustomization, so it is never rendered"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kustomization_renders(rendered, directory):
    objects = rendered[directory]
    assert objects, f"{directory} renders nothing"
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(set(keys)) == len(keys), f"{directory}: duplicate objects"


# --- 1. freshness ----------------------------------------------------------------------------

def test_generated_objects_are_current():
    run(sys.executable, K8S / "generate.py", "--check")


def test_generator_is_deterministic():
    import importlib.util

    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    first = generate.render()
    assert set(first) >= {"base/router.yaml", "monitoring/prometheusrules.yaml", "grafana/dashboards.yaml"}
    assert generate.render() == first


# --- 2. Kubernetes schemas ----------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_objects_validate_against_the_kubernetes_schemas(rendered, directory, version):
    import kubernetes_validate

    errors, checked = [], set()
    for obj in rendered[directory]:
        if obj["apiVersion"].split("/")[0] == OPERATOR_GROUP:
            continue  # custom resources: test_operator_objects_validate_against_the_crds
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{where}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{where}: {error.message}")
        checked.add(obj["kind"])
    assert errors == [], f"{directory} against Kubernetes {version}:\n" + "\n".join(errors)
    if directory != "monitoring":  # the Prometheus Operator's objects only
        assert checked, "nothing was validated"


def test_the_schema_check_can_fail():
    import kubernetes_validate

    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}},
                                 "spec": {"containers": [{"name": "c", "image": "i:1", "livenessProbe": {"httpGet": {
                                     "path": "/", "port": "http"}, "periodSecond": 5}}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


# --- 3. Prometheus Operator CRDs -----------------------------------------------------------------

def strict(schema):
    """An openAPIV3Schema as the API server's strict field validation applies it: an object
    with `properties` and no preserve-unknown-fields refuses fields it does not declare."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="session")
def crd_schemas() -> dict[tuple[str, str], dict]:
    value = os.environ.get("PROMETHEUS_OPERATOR_CRDS_DIR")
    if not value:
        pytest.skip("PROMETHEUS_OPERATOR_CRDS_DIR is not set (.ci/run sets it to the Prometheus Operator CRDs "
                    "in ../shared/reference/prometheus-operator-crds)")
    folder = Path(value)
    files = sorted(folder.glob("monitoring.coreos.com_*.yaml"))
    if not files:
        pytest.fail(f"PROMETHEUS_OPERATOR_CRDS_DIR={value}: no monitoring.coreos.com_*.yaml CRDs there")
    schemas = {}
    for path in files:
        crd = yaml.load(path.read_text(), Loader=_Loader)
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            schemas[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = schema
    return schemas


def crd_errors(obj: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(strict(schema))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in validator.iter_errors(obj)]
    if obj["kind"] == "AlertmanagerConfig":
        # Child routes are preserve-unknown-fields in the CRD; the operator reads each as a
        # Route: validate them against the route's own schema, at every depth.
        route_schema = strict(schema["properties"]["spec"]["properties"]["route"])
        route_validator = jsonschema.Draft7Validator(route_schema)

        def walk(route, path):
            for i, child in enumerate(route.get("routes", [])):
                errors.extend(f"{path}.routes.{i}.{'.'.join(map(str, e.absolute_path))}: {e.message[:300]}"
                              for e in route_validator.iter_errors(child))
                walk(child, f"{path}.routes.{i}")
        walk(obj["spec"]["route"], "spec.route")
    return errors


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_operator_objects_validate_against_the_crds(rendered, crd_schemas, directory):
    errors, checked = [], []
    for obj in rendered[directory]:
        if obj["apiVersion"].split("/")[0] != OPERATOR_GROUP:
            continue
        schema = crd_schemas.get((obj["apiVersion"], obj["kind"]))
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if schema is None:
            errors.append(f"{where}: no CRD for {obj['apiVersion']} {obj['kind']}")
            continue
        errors += [f"{where}: {e}" for e in crd_errors(obj, schema)]
        checked.append(obj["kind"])
    assert errors == [], f"{directory}:\n" + "\n".join(errors)
    if directory in (".", "monitoring"):
        assert {"ServiceMonitor", "PrometheusRule", "AlertmanagerConfig"} <= set(checked)


def test_the_crd_check_can_fail(crd_schemas):
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
               "spec": {"selector": {}, "endpoints": [{"port": "metrics", "interval": "15 seconds", "portName": "x"}]}}
    errors = "\n".join(crd_errors(monitor, crd_schemas[("monitoring.coreos.com/v1", "ServiceMonitor")]))
    assert "15 seconds" in errors and "portName" in errors, errors
    config = {"apiVersion": "monitoring.coreos.com/v1alpha1", "kind": "AlertmanagerConfig", "metadata": {"name": "x"},
              "spec": {"route": {"receiver": "r", "routes": [{"receiver": "r", "matchers": [{"name": "a", "matchType": "=="}]}]},
                       "receivers": [{"name": "r"}]}}
    errors = "\n".join(crd_errors(config, crd_schemas[("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig")]))
    assert "spec.route.routes.0.matchers.0.matchType" in errors, errors


# --- 4. the same rules, dashboards, datasources and routing as compose -------------------------

def test_prometheus_rules_equal_the_compose_rule_files(everything):
    rules = {o["metadata"]["annotations"]["llm-router/source"]: o for o in of_kind(everything, "PrometheusRule")}
    files = {f"prometheus/rules/{p.name}": p for p in sorted((REPO / "prometheus" / "rules").glob("*.yml"))}
    excluded = {f"prometheus/rules/{name}" for name in SETTINGS["excluded_rule_files"]}
    assert excluded <= set(files), "settings.yaml excludes rule files that do not exist"
    assert all(len(reason.split()) >= 5 for reason in SETTINGS["excluded_rule_files"].values()), \
        "every excluded rule file needs its reason"
    assert set(rules) == set(files) - excluded
    for source, rule in rules.items():
        assert rule["spec"]["groups"] == yaml.safe_load(files[source].read_text())["groups"], source


def test_prometheus_rule_groups_pass_promtool(everything, promtool, tmp_path):
    paths = []
    for rule in of_kind(everything, "PrometheusRule"):
        path = tmp_path / f"{rule['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False, width=1000))
        paths.append(path)
    assert len(paths) >= 4
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", *paths)
    assert result.stdout.count("SUCCESS") == len(paths), result.stdout


def test_alerts_keep_the_namespace_for_the_alertmanager_config(everything):
    """An AlertmanagerConfig (matcher strategy OnNamespace) sees only alerts labelled with its
    namespace: every aggregation in the rules keeps `namespace` next to `job`."""
    for rule in of_kind(everything, "PrometheusRule"):
        for group in rule["spec"]["groups"]:
            for item in group["rules"]:
                for clause in re.findall(r"\b(?:by|on) \(([^)]*)\)", item["expr"]):
                    labels = [label.strip() for label in clause.split(",")]
                    if "job" in labels:
                        assert "namespace" in labels, f"{item.get('alert') or item.get('record')}: by/on ({clause})"


def test_dashboard_configmaps_hold_exactly_the_generated_json(rendered):
    files = {p.name: p.read_text() for p in sorted((REPO / "grafana" / "generated").glob("*.json"))}
    for directory in (".", "grafana"):
        maps = [o for o in of_kind(rendered[directory], "ConfigMap")
                if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
        held = {}
        for config_map in maps:
            assert len(config_map["data"]) == 1, config_map["metadata"]["name"]
            held.update(config_map["data"])
            assert config_map["metadata"]["namespace"] == SETTINGS["grafana_namespace"]
        assert held == files, f"{directory}: the dashboard ConfigMaps differ from grafana/generated/"
    for name, text in files.items():
        assert json.loads(text)["uid"] == Path(name).stem


def test_datasource_configmap_is_provisioning_with_cluster_urls(everything):
    provisioning = (REPO / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
    maps = [o for o in of_kind(everything, "ConfigMap") if o["metadata"].get("labels", {}).get("grafana_datasource") == "1"]
    assert len(maps) == 1 and maps[0]["metadata"]["namespace"] == SETTINGS["grafana_namespace"]
    (text,) = maps[0]["data"].values()
    ours, theirs = yaml.safe_load(text)["datasources"], yaml.safe_load(provisioning)["datasources"]
    assert [d["uid"] for d in ours] == [d["uid"] for d in theirs]
    for mine, compose in zip(ours, theirs):
        assert mine["url"] == SETTINGS["datasource_urls"][mine["uid"]], mine["uid"]
        assert re.fullmatch(r"http://[a-z0-9-]+\.[a-z0-9-]+\.svc(:\d+)?", mine["url"]), mine["url"]
        assert {k: v for k, v in mine.items() if k != "url"} == {k: v for k, v in compose.items() if k != "url"}
    # Line for line the same file but the url lines (comments and $$ escapes kept).
    changed = [(a, b) for a, b in zip(text.splitlines(), provisioning.splitlines()) if a != b]
    assert len(text.splitlines()) == len(provisioning.splitlines())
    assert len(changed) == len(theirs) and all(a.strip().startswith("url: ") for a, _ in changed), changed


def back_to_alertmanager(spec: dict) -> dict:
    """An AlertmanagerConfig spec translated back into alertmanager.yml's terms."""
    def matcher(m):
        return f'{m["name"]}{m["matchType"]}"{m["value"]}"'

    def route(r):
        names = {"receiver": "receiver", "groupBy": "group_by", "groupWait": "group_wait",
                 "groupInterval": "group_interval", "repeatInterval": "repeat_interval", "continue": "continue"}
        out = {names[k]: v for k, v in r.items() if k in names}
        if "matchers" in r:
            out["matchers"] = [matcher(m) for m in r["matchers"]]
        if r.get("routes"):
            out["routes"] = [route(c) for c in r["routes"]]
        return out

    return {
        "route": route(spec["route"]),
        "inhibit_rules": [{"source_matchers": [matcher(m) for m in i["sourceMatch"]],
                           "target_matchers": [matcher(m) for m in i["targetMatch"]],
                           "equal": i["equal"]} for i in spec["inhibitRules"]],
        "receivers": [{"name": r["name"], "webhook_configs": [
            {"url": w["url"], "send_resolved": w["sendResolved"]} for w in r.get("webhookConfigs", [])]}
            for r in spec["receivers"]],
    }


def test_alertmanager_config_is_alertmanager_yml(everything):
    source = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
    (config,) = of_kind(everything, "AlertmanagerConfig")
    back = back_to_alertmanager(config["spec"])
    sink = f"http://{SETTINGS['alert_sink_service']}.{SETTINGS['router_namespace']}.svc:"
    for receiver in back["receivers"]:
        for webhook in receiver["webhook_configs"]:
            assert webhook["url"].startswith(sink), webhook["url"]
            webhook["url"] = webhook["url"].replace(sink, "http://alert-sink:")
    expected = {key: copy.deepcopy(source[key]) for key in ("route", "inhibit_rules", "receivers")}
    for receiver in expected["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook.setdefault("send_resolved", True)
    assert back == expected


def test_every_webhook_reaches_a_rendered_service(rendered):
    """In every rendering (the example overlay moves the namespace) each receiver URL names a
    Service of the same rendering, by name, namespace and port."""
    checked = []
    for directory, objects in rendered.items():
        services = {(s["metadata"]["name"], s["metadata"].get("namespace")): {p["port"] for p in s["spec"]["ports"]}
                    for s in of_kind(objects, "Service")}
        if not services:
            continue  # monitoring/ alone: the Services come with base/
        checked.append(directory)
        for config in of_kind(objects, "AlertmanagerConfig"):
            for receiver in config["spec"]["receivers"]:
                for webhook in receiver.get("webhookConfigs", []):
                    m = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)/.*", webhook["url"])
                    assert m, webhook["url"]
                    name, namespace, port = m.group(1), m.group(2), int(m.group(3))
                    assert port in services.get((name, namespace), set()), \
                        f"{directory}: {webhook['url']} names no rendered Service port"
                    assert namespace == config["metadata"]["namespace"], directory
    assert {".", "overlays/example"} <= set(checked)


def test_router_config_is_the_compose_config_with_keys_from_the_environment(everything, monkeypatch):
    compose = yaml.safe_load((REPO / "service" / "config" / "router.yaml").read_text())
    (config_map,) = [o for o in of_kind(everything, "ConfigMap") if o["metadata"]["name"].startswith("llm-router-config-")]
    config = yaml.safe_load(config_map["data"]["router.yaml"])
    variables = {}
    for mine, theirs in zip(config["tenants"], compose["tenants"], strict=True):
        assert "api_keys" not in mine, f"tenant {mine['id']}: keys in a ConfigMap"
        variables[mine["id"]] = mine["api_keys_env"]
        assert {k: v for k, v in mine.items() if k != "api_keys_env"} == \
               {k: v for k, v in theirs.items() if k != "api_keys"}
    assert len(set(variables.values())) == len(variables)
    expected = {k: v for k, v in compose.items() if k != "tenants"} | SETTINGS["router_config_overrides"]
    assert {k: v for k, v in config.items() if k != "tenants"} == expected
    # No demo key of the compose config anywhere in the cluster's objects.
    text = yaml.safe_dump_all(everything)
    for tenant in compose["tenants"]:
        for key in tenant.get("api_keys", []):
            assert key not in text
    # The router accepts it, and each tenant's keys come from its variable.
    from llm_router.config import parse_config

    for tenant, variable in variables.items():
        monkeypatch.setenv(variable, f"k1-{tenant}, k2-{tenant}")
    parsed = parse_config(config)
    assert {t.id: t.keys() for t in parsed.tenants} == {t: [f"k1-{t}", f"k2-{t}"] for t in variables}
    assert parsed.auth.require_api_key is True


# --- 5. wiring ------------------------------------------------------------------------------------

def router_service(objects: list[dict]) -> dict:
    return named(objects, "Service", "llm-router")


def test_service_monitor_selects_the_router_service_and_its_metrics_port(rendered):
    for directory, objects in rendered.items():
        monitors = of_kind(objects, "ServiceMonitor")
        if not monitors or not of_kind(objects, "Service"):
            continue
        (monitor,) = monitors
        matching = [s for s in of_kind(objects, "Service") if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
                    and s["metadata"].get("namespace") == monitor["metadata"]["namespace"]]
        assert [s["metadata"]["name"] for s in matching] == ["llm-router"], directory
        service = matching[0]
        # job = the value of the jobLabel label on the Service: what the rules select.
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == ROUTER_JOB
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in ports
        # The Service's port leads to the container port the metrics process binds.
        container = router_container(objects)
        container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        target = ports[endpoint["port"]]["targetPort"]
        bind_port = int(env(container)["LLM_ROUTER_METRICS_BIND"]["value"].rsplit(":", 1)[1])
        assert container_ports[target] == bind_port == ports[endpoint["port"]]["port"]
        # The Service selects the router's pods, and only those.
        pod_labels = router_deployment(objects)["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_service_monitor_scrapes_like_compose(everything):
    prometheus = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    (monitor,) = of_kind(everything, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["interval"] == prometheus["global"]["scrape_interval"]
    assert endpoint["scrapeTimeout"] == prometheus["global"]["scrape_timeout"]
    job = next(s for s in prometheus["scrape_configs"] if s["job_name"] == ROUTER_JOB)
    assert job["static_configs"][0]["targets"][0].endswith(":9464")


def test_operator_objects_carry_the_release_label_and_the_router_namespace(rendered):
    for directory, objects in rendered.items():
        operator = [o for o in objects if o["apiVersion"].startswith(OPERATOR_GROUP)]
        if not operator:
            continue
        releases = {o["metadata"]["labels"].get("release") for o in operator}
        assert len(releases) == 1 and None not in releases, f"{directory}: release labels {releases}"
        namespaces = {o["metadata"]["namespace"] for o in operator}
        services = of_kind(objects, "Service")
        expected = {router_service(objects)["metadata"]["namespace"]} if services else {SETTINGS["router_namespace"]}
        assert namespaces == expected, directory


def test_workload_selectors_match_the_router_pods(rendered):
    for directory, objects in rendered.items():
        if not of_kind(objects, "Deployment"):
            continue
        deployment = router_deployment(objects)
        pods = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"], pods)
        (pdb,) = of_kind(objects, "PodDisruptionBudget")
        assert selects(pdb["spec"]["selector"], pods)
        (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm-router"}
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"], "a drain must leave one replica serving"
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count; an apply would reset it"
        sink = named(objects, "Deployment", "llm-router-alert-sink")
        assert not selects(pdb["spec"]["selector"], sink["spec"]["template"]["metadata"]["labels"])


def test_in_flight_autoscaling_component(rendered, promtool, tmp_path):
    base = {m.get("pods", m.get("resource", {})).get("metric", {}).get("name") or m["resource"]["name"]
            for m in of_kind(rendered["base"], "HorizontalPodAutoscaler")[0]["spec"]["metrics"]}
    assert base == {"cpu"}
    (hpa,) = of_kind(rendered["overlays/example"], "HorizontalPodAutoscaler")
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert len(pods) == 1 and any(m["type"] == "Resource" for m in hpa["spec"]["metrics"])
    name = pods[0]["metric"]["name"]
    # prometheus-adapter serves exactly that name, from a gauge the router emits.
    values = yaml.safe_load((K8S / "components" / "in-flight-autoscaling" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == name
    assert re.search(rule["name"]["matches"], name)
    from llm_router.telemetry import metrics

    gauges = {v._name for v in vars(metrics).values()
              if not isinstance(v, type) and getattr(v, "_type", None) == "gauge"}
    assert name in gauges, f"{name} is not a gauge of llm_router.telemetry.metrics"
    assert rule["seriesQuery"].startswith(name + "{") and f'job="{ROUTER_JOB}"' in rule["seriesQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # Both queries parse (the adapter's templates filled as it fills them).
    query = rule["metricsQuery"].replace("<<.GroupBy>>", "namespace, pod").replace("<<.Series>>", name) \
        .replace("<<.LabelMatchers>>", 'namespace="llm-router", pod=~"llm-router-.*"')
    path = tmp_path / "adapter.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [
        {"record": "adapter:series:check", "expr": rule["seriesQuery"]},
        {"record": "adapter:metrics:check", "expr": query}]}]}))
    run(promtool, "check", "rules", "--lint=none", path)


def test_network_policy_lets_prometheus_scrape_and_clients_in(everything):
    policies = {p["metadata"]["name"]: p for p in of_kind(everything, "NetworkPolicy")}
    router = policies["llm-router"]
    pods = router_deployment(everything)["spec"]["template"]["metadata"]["labels"]
    assert selects(router["spec"]["podSelector"], pods)
    rules = router["spec"]["ingress"]
    open_ports = {p["port"] for r in rules if "from" not in r for p in r["ports"]}
    assert open_ports == {"http"}, "the API is open to the cluster, nothing else"
    scrape = [r for r in rules if any(p["port"] == "metrics" for p in r["ports"])]
    assert scrape and all(peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": SETTINGS["grafana_namespace"]} for r in scrape for peer in r["from"])
    egress_ports = {p["port"] for r in router["spec"]["egress"] for p in r["ports"]}
    assert {53, 5432, 4318} <= egress_ports
    sink = policies["llm-router-alert-sink"]
    sink_pods = named(everything, "Deployment", "llm-router-alert-sink")["spec"]["template"]["metadata"]["labels"]
    assert selects(sink["spec"]["podSelector"], sink_pods) and not selects(sink["spec"]["podSelector"], pods)


def seconds(value: str) -> int:
    return int(value)


def test_router_deployment_environment_probes_and_stop(everything):
    deployment = router_deployment(everything)
    pod = deployment["spec"]["template"]["spec"]
    container = router_container(everything)
    variables = env(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": 9464}
    assert variables["LLM_ROUTER_BIND"]["value"] == f"0.0.0.0:{ports['http']}"
    assert variables["LLM_ROUTER_METRICS_BIND"]["value"] == f"0.0.0.0:{ports['metrics']}"
    assert int(variables["LLM_ROUTER_WORKERS"]["value"]) >= 2
    assert variables["LLM_ROUTER_WORKER_CLASS"]["value"] in ("gevent", "gthread")
    assert int(variables["LLM_ROUTER_WORKER_CONNECTIONS"]["value"]) > 0
    # The config file is the ConfigMap's key, where the ConfigMap is mounted.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = Path(variables["LLM_ROUTER_CONFIG"]["value"])
    config_volume = next(n for n, m in mounts.items() if Path(m["mountPath"]) == config_path.parent)
    config_map = named(everything, "ConfigMap", volumes[config_volume]["configMap"]["name"])
    assert config_path.name in config_map["data"]
    # The state directory is a writable volume (the root filesystem is read-only).
    state = next(m for m in mounts.values() if m["mountPath"] == variables["LLM_ROUTER_STATE_DIR"]["value"])
    assert not state.get("readOnly") and "emptyDir" in volumes[state["name"]]
    assert {"/tmp", "/dev/shm"} <= {m["mountPath"] for m in mounts.values()}
    # Secrets by reference, never by value.
    for name, (secret, required) in {"LLM_ROUTER_STATE_URL": ("llm-router-postgres", True),
                                     "PGPASSWORD": ("llm-router-postgres", True),
                                     "LLM_ROUTER_ADMIN_TOKEN": ("llm-router-admin", False)}.items():
        reference = variables[name]["valueFrom"]["secretKeyRef"]
        assert "value" not in variables[name] and reference["name"] == secret, name
        assert reference.get("optional", False) is (not required), name
    assert {"secretRef": {"name": "llm-router-tenant-keys"}} in container["envFrom"]
    assert not of_kind(everything, "Secret"), "Secrets are created by the operator of the cluster, not shipped"
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"} <= set(variables)
    # Liveness /healthz, readiness /readyz, on the API port.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # Stop: preStop sleep, then gunicorn's graceful timeout (+ ~5 s of flushing), inside the grace period.
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and 3 <= seconds(sleep[1]) <= 10
    graceful = seconds(variables["LLM_ROUTER_GRACEFUL_TIMEOUT"]["value"])
    assert pod["terminationGracePeriodSeconds"] > seconds(sleep[1]) + graceful + 5
    # Spread over nodes.
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys
    for constraint in pod["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"], deployment["spec"]["template"]["metadata"]["labels"])


def test_image_tag_is_the_router_version(rendered):
    version = re.search(r'(?m)^version = "([^"]+)"', (REPO / "service" / "pyproject.toml").read_text()).group(1)
    env_example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                       if "=" in line and not line.startswith("#"))
    assert env_example["ROUTER_IMAGE"] == f"llm-router:{version}"
    for directory, objects in rendered.items():
        for deployment in of_kind(objects, "Deployment"):
            for container in deployment["spec"]["template"]["spec"]["containers"]:
                assert container["image"].rsplit(":", 1)[1] == version, f"{directory}: {container['image']}"
    # The bundle names your registry (a placeholder to replace); the overlay shows an override.
    assert router_container(rendered["."])["image"] == f"registry.example.com/llm-router:{version}"
    assert router_container(rendered["overlays/example"])["image"] != router_container(rendered["."])["image"]


# --- 6. the container lint ---------------------------------------------------------------------------

def container_problems(pod_spec: dict, where: str) -> list[str]:
    problems = []
    pod_security = pod_spec.get("securityContext", {})
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: no seccompProfile RuntimeDefault")
    if pod_spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: mounts a service account token")
    for container in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        here = f"{where}/{container['name']}"
        for probe in ("livenessProbe", "readinessProbe"):
            if not container.get(probe):
                problems.append(f"{here}: no {probe}")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    problems.append(f"{here}: no {kind}.{resource}")
        security = container.get("securityContext", {})
        if not (security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
                and security.get("runAsUser", pod_security.get("runAsUser", 1)) != 0):
            problems.append(f"{here}: may run as root")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{here}: writable root filesystem")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{here}: privilege escalation allowed")
        if security.get("capabilities", {}).get("drop") != ["ALL"] or security.get("capabilities", {}).get("add"):
            problems.append(f"{here}: capabilities not dropped")
        image = container.get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if "@sha256:" not in image and (not tag or tag == "latest"):
            problems.append(f"{here}: image {image!r} is not pinned")
    return problems


def pod_specs(objects: list[dict]):
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield f"Pod/{obj['metadata']['name']}", obj["spec"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_every_container_passes_the_lint(rendered, directory):
    problems = [p for where, spec in pod_specs(rendered[directory]) for p in container_problems(spec, where)]
    assert problems == [], "\n".join(problems)


def test_the_lint_can_fail():
    spec = {"containers": [{"name": "c", "image": "router:latest", "resources": {"requests": {"cpu": "1"}},
                            "securityContext": {"runAsUser": 0, "capabilities": {"drop": ["NET_RAW"]}}}]}
    problems = "\n".join(container_problems(spec, "x"))
    for expected in ("no seccompProfile", "service account token", "no livenessProbe", "no readinessProbe",
                     "no requests.memory", "no limits.cpu", "may run as root", "writable root filesystem",
                     "privilege escalation", "capabilities not dropped", "is not pinned"):
        assert expected in problems, f"{expected!r} not in {problems}"
    assert container_problems({**spec, "containers": [{**spec["containers"][0], "image": "r@sha256:ab"}]}, "x") != []


def test_overview_kubernetes_panels_name_the_rendered_deployment_and_autoscaler(everything):
    """The Overview's kube-state-metrics panels select the router's Deployment and HPA by name."""
    overview = (REPO / "grafana" / "generated" / "llm-router-overview.json").read_text()
    deployments = set(re.findall(r'deployment=\\"([^"\\]+)\\"', overview))
    autoscalers = set(re.findall(r'horizontalpodautoscaler=\\"([^"\\]+)\\"', overview))
    assert deployments == {router_deployment(everything)["metadata"]["name"]}
    assert autoscalers == {o["metadata"]["name"] for o in of_kind(everything, "HorizontalPodAutoscaler")}
