"""Real responses against the OpenAPI document the router serves at /openapi.json: every status
is documented for its operation, every body validates against the documented schema (with
$ref resolved and OpenAPI 3.0's `nullable` turned into JSON Schema), documented headers hold
documented values, and the document itself is valid OpenAPI 3.0.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from conftest import chat_body, config_dict, quiet_models, as_tenant
from test_bad_input import BAD, CASES, KEY_OF, Bad

CHAT = "/v1/chat/completions"


# --- OpenAPI 3.0 schema objects -> JSON Schema (draft 4, which OpenAPI 3.0 builds on) --------


def to_json_schema(node):
    """Convert an OpenAPI 3.0 schema object: `nullable: true` becomes a "null" type (or an
    anyOf with null when the schema names no type); $refs are kept and resolved against a root
    that carries components.schemas."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items() if key not in ("nullable", "example")}
    if node.get("nullable") is True:
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        else:
            out = {"anyOf": [{"type": "null"}, out]}
    return out


class Document:
    def __init__(self, raw: dict) -> None:
        self.raw = raw
        self.components = to_json_schema(raw.get("components", {}).get("schemas", {}))

    def resolve(self, node: dict) -> dict:
        while isinstance(node, dict) and "$ref" in node:
            node = self.at(node["$ref"])
        return node

    def at(self, pointer: str):
        assert pointer.startswith("#/"), pointer
        node = self.raw
        for part in pointer[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def validate(self, schema: dict, instance, where: str = "") -> None:
        root = {"allOf": [to_json_schema(schema)], "components": {"schemas": self.components}}
        validator = jsonschema.Draft4Validator(root)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        assert not errors, f"{where}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5]
        )

    def operation(self, path: str, method: str) -> dict | None:
        return self.raw["paths"].get(path, {}).get(method.lower())

    def response(self, path: str, method: str, status: int) -> dict:
        operation = self.operation(path, method)
        assert operation is not None, f"{method} {path} is not documented"
        responses = operation["responses"]
        documented = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
        assert documented is not None, f"{method} {path}: status {status} is not documented ({sorted(responses)})"
        return self.resolve(documented)

    def check(self, path: str, method: str, response) -> None:
        """The response's status, content type, body and documented headers, as documented."""
        where = f"{method} {path} -> {response.status_code}"
        documented = self.response(path, method, response.status_code)
        content = documented.get("content") or {}
        if content:
            assert response.mimetype in content, f"{where}: {response.mimetype} not in {sorted(content)}"
            schema = content[response.mimetype].get("schema")
            body = response.get_data(as_text=True)
            assert "Traceback" not in body
            if schema is not None and response.mimetype == "application/json":
                self.validate(schema, json.loads(body), where)
            elif schema is not None and response.mimetype == "text/event-stream":
                for event in server_sent_events(body):
                    # As schemathesis reads OpenAPI < 3.2: the schema describes each event.
                    self.validate(schema, event, where + " (event)")
        for name, header in (documented.get("headers") or {}).items():
            value = response.headers.get(name)
            if value is not None:
                self.validate(header.get("schema", {}), value, f"{where} header {name}")


def server_sent_events(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event: dict = {}
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                event["data"] = f"{event['data']}\n{value}" if "data" in event else value
            elif field in ("event", "id"):
                event[field] = value
        events.append(event)
    return events


@pytest.fixture
def document(client) -> Document:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return Document(response.get_json())


def _send(client, method: str, path: str, **kwargs):
    return client.open(path, method=method, **kwargs)


# --- the document itself ---------------------------------------------------------------------


def test_document_is_valid_openapi_30(document):
    try:
        from schemathesis.specs.openapi.definitions import OPENAPI_30
    except ImportError:  # an internal of schemathesis: skip rather than fail if it moves
        pytest.skip("schemathesis' OpenAPI 3.0 meta-schema is not importable")
    errors = list(jsonschema.Draft4Validator(OPENAPI_30).iter_errors(document.raw))
    assert not errors, [e.message for e in errors[:5]]


def test_every_ref_resolves_and_every_schema_compiles(document):
    def walk(node, trail):
        if isinstance(node, dict):
            if "$ref" in node:
                document.at(node["$ref"])  # KeyError if dangling
            for key, value in node.items():
                walk(value, f"{trail}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{trail}/{index}")

    walk(document.raw, "#")
    for name, schema in document.components.items():
        jsonschema.Draft4Validator.check_schema(schema)


def test_error_schema_is_exactly_openais(document):
    error = document.raw["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and error["additionalProperties"] is False
    inner = error["properties"]["error"]
    assert set(inner["required"]) == set(inner["properties"]) == {"message", "type", "param", "code"}
    document.validate(error, {"error": {"message": "m", "type": "t", "param": None, "code": None}})
    with pytest.raises(AssertionError):
        document.validate(error, {"error": {"message": "m", "type": "t", "param": None}})


def test_request_example_is_valid_and_accepted(client, document):
    schema = document.raw["components"]["schemas"]["ChatCompletionRequest"]
    example = schema["example"]
    document.validate(schema, example, "ChatCompletionRequest example")
    response = client.post(CHAT, json=example)
    assert response.status_code == 200
    document.check(CHAT, "POST", response)


# --- successful responses -------------------------------------------------------------------


def test_completion_and_cached_completion(client, document):
    body = chat_body("sim-fast", max_tokens=32, temperature=0.5)
    first = client.post(CHAT, json=body, headers={**as_tenant("search")})
    assert first.status_code == 200 and first.headers["X-Router-Cache"] == "miss"
    document.check(CHAT, "POST", first)
    again = client.post(CHAT, json=body, headers={**as_tenant("search")})
    assert again.status_code == 200 and again.headers["X-Router-Cache"] == "hit"
    document.check(CHAT, "POST", again)
    bypass = client.post(CHAT, json=body, headers={**as_tenant("search"), "Cache-Control": "no-cache"})
    assert bypass.headers["X-Router-Cache"] == "bypass"
    document.check(CHAT, "POST", bypass)


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_events_and_chunks(client, document, include_usage):
    response = client.post(
        CHAT, json=chat_body("auto", stream=True, stream_options={"include_usage": include_usage}),
        headers={"Authorization": f"Bearer {KEY_OF['support']}", "X-Route-Strategy": "latency"},
    )
    try:
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        document.check(CHAT, "POST", response)
        events = server_sent_events(response.get_data(as_text=True))
    finally:
        response.close()
    assert events[-1]["data"] == "[DONE]"
    chunk_schema = document.raw["components"]["schemas"]["ChatCompletionChunk"]
    chunks = [json.loads(event["data"]) for event in events[:-1]]
    for chunk in chunks:
        document.validate(chunk_schema, chunk, "stream chunk")
    assert ("usage" in chunks[-1]) is include_usage


@pytest.mark.parametrize("path", ["/v1/models", "/healthz", "/readyz", "/openapi.json", "/metrics"])
def test_get_endpoints(client, document, path):
    response = client.get(path)
    assert response.status_code == 200
    document.check(path, "GET", response)


def test_metrics_as_openmetrics(client, document):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200 and response.mimetype == "application/openmetrics-text"
    document.check("/metrics", "GET", response)


# --- error responses ------------------------------------------------------------------------


def _app_with(make_app, **overrides):
    return make_app(quiet_models(config_dict(**overrides)))


def test_metrics_switched_off(make_app):
    from llm_router.app import Telemetry

    client = make_app(telemetry=Telemetry(metrics=False)).test_client()
    document = Document(client.get("/openapi.json").get_json())
    response = client.get("/metrics")
    assert response.status_code == 404
    document.check("/metrics", "GET", response)


def test_not_ready_and_backend_failures(make_app, monkeypatch):
    """An unreachable backend without its key: /readyz 503, a chat 502, then (circuit open) 503."""
    monkeypatch.delenv("LLM_ROUTER_TEST_UNSET_KEY", raising=False)
    data = config_dict()
    data["models"] = [{
        "id": "unreachable", "provider": "openai", "base_url": "http://127.0.0.1:9/v1",
        "api_key_env": "LLM_ROUTER_TEST_UNSET_KEY", "price": {"input_per_1k": 0, "output_per_1k": 0}, "quality": 0.5,
        "timeout_seconds": 2,
    }]
    data["routing"] = {**data["routing"], "retries": 0, "circuit_breaker": {"failure_threshold": 1,
                                                                           "reset_timeout_seconds": 60}}
    client = make_app(data).test_client()
    document = Document(client.get("/openapi.json").get_json())
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["reasons"]
    document.check("/readyz", "GET", ready)
    statuses = []
    for _ in range(2):
        response = client.post(CHAT, json=chat_body())
        statuses.append(response.status_code)
        document.check(CHAT, "POST", response)
    assert statuses[0] == 502 and statuses[1] in (502, 503), statuses


@pytest.mark.parametrize("kind, status", [("server_error", 502), ("timeout", 504)])
def test_backend_errors(make_app, kind, status):
    data = config_dict()
    for model in data["models"]:
        model["simulation"].update(error_rate=1.0, error_kinds={kind: 1.0})
    client = make_app(data).test_client()
    document = Document(client.get("/openapi.json").get_json())
    response = client.post(CHAT, json=chat_body())
    assert response.status_code == status
    document.check(CHAT, "POST", response)


def test_api_key_required(make_app):
    data = quiet_models(config_dict())
    data["auth"] = {"allow_anonymous": False, "require_api_key": True}
    client = make_app(data).test_client()
    document = Document(client.get("/openapi.json").get_json())
    response = client.post(CHAT, json=chat_body())
    assert response.status_code == 401
    document.check(CHAT, "POST", response)
    ok = client.post(CHAT, json=chat_body(), headers={"Authorization": f"Bearer {KEY_OF['research']}"})
    assert ok.status_code == 200
    document.check(CHAT, "POST", ok)


def test_budget_exhausted(make_app):
    data = quiet_models(config_dict())
    for tenant in data["tenants"]:
        tenant["monthly_budget_usd"] = 1e-9
    client = make_app(data).test_client()
    document = Document(client.get("/openapi.json").get_json())
    headers = {**as_tenant("internal-tools"), "Cache-Control": "no-store"}
    assert client.post(CHAT, json=chat_body(), headers=headers).status_code == 200
    response = client.post(CHAT, json=chat_body(), headers=headers)
    assert response.status_code == 402
    document.check(CHAT, "POST", response)


def test_bad_input_statuses_are_documented(client, document):
    """Every answer in the bad-input table is documented for its operation (with a body that
    validates); a path or method the document does not have answers 404 or 405."""
    problems = []
    for param in CASES:
        bad: Bad = param.values[0]
        response = bad.send(client)
        try:
            assert response.status_code == bad.status, f"status {response.status_code}, expected {bad.status}"
            if document.operation(bad.path, bad.method) is not None:
                document.check(bad.path, bad.method, response)
            elif bad.path in document.raw["paths"]:
                assert response.status_code == 405, "an undocumented method on a documented path"
            else:
                assert response.status_code == 404, "an undocumented path"
        except AssertionError as error:
            problems.append(f"{param.id}: {error}")
    assert not problems, "\n".join(problems)


def test_bad_input_table_covers_every_documented_client_error(document):
    """The table exercises each 4xx the chat operation documents, except those that need a
    special configuration (401, 402) or load (429): those have their own tests."""
    documented = {int(s) for s in document.raw["paths"][CHAT]["post"]["responses"] if s.startswith("4")}
    exercised = {bad.status for bad in BAD if bad.path == CHAT and bad.method == "POST"}
    assert documented - exercised <= {401, 402, 429}, documented - exercised
