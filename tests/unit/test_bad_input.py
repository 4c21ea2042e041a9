"""Bad input to the API: always a 4xx in OpenAI's error shape, never a 5xx or a stack trace,
and never a new metric label value (unknown tenants fold into "other", unknown models into
"unknown").

CASES is a table other tests reuse (test_openapi_conformance checks every status it yields
is documented).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import pytest

from conftest import chat_body, config_dict, parse_metrics

SHIPPED = config_dict()
LIMITS = SHIPPED["limits"]
CONFIGURED_TENANTS = {tenant["id"] for tenant in SHIPPED["tenants"]}
CONFIGURED_MODELS = {model["id"] for model in SHIPPED["models"]}
ALLOWED_TENANTS = CONFIGURED_TENANTS | {"other", "anonymous"}
ALLOWED_MODELS = CONFIGURED_MODELS | {"auto", "unknown"}
OPENAI_ERROR_TYPES = {
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error", "rate_limit_error",
    "insufficient_quota", "server_error",
}
KEY_OF = {tenant["id"]: tenant["api_keys"][0] for tenant in SHIPPED["tenants"]}

# Values a client made up: none of them may ever appear in /metrics.
JUNK_MODEL = "no-such-model-7f3a"
JUNK_TENANT = "tenant-nobody-7f3a"
JUNK_STRATEGY = "warp-speed-7f3a"

CHAT = "/v1/chat/completions"
JSON = "application/json"


@dataclass(frozen=True)
class Bad:
    """One bad request and what the API must answer."""

    status: int
    code: str
    body: object = None  # sent as JSON unless `data` is given
    data: bytes | str | None = None  # sent verbatim, with `content_type`
    content_type: str | None = JSON
    headers: dict = field(default_factory=dict)
    method: str = "POST"
    path: str = CHAT
    param: str | None = None  # the expected error.param, when it names one

    def send(self, client):
        kwargs: dict = {"headers": self.headers}
        if self.data is not None:
            kwargs["data"] = self.data
        elif self.body is not None:
            kwargs["data"] = json.dumps(self.body)
        if self.content_type is not None and "data" in kwargs:
            kwargs["content_type"] = self.content_type
        return client.open(self.path, method=self.method, **kwargs)


def _msg(**fields) -> dict:
    return chat_body(messages=[{"role": "user", "content": "hello", **fields}])


def _with(**fields) -> dict:
    return chat_body(**fields)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


CASES = [
    # --- the body is not JSON, or not JSON at all --------------------------------------
    pytest.param(Bad(400, "invalid_json", data='{"model": "auto", "messages": ['), id="malformed-json"),
    pytest.param(Bad(400, "invalid_json", data="{'model': 'auto'}"), id="single-quoted-json"),
    pytest.param(Bad(400, "invalid_json", data=b""), id="empty-body"),
    pytest.param(Bad(400, "invalid_json", data=b"\xff\xfe\xfa{}"), id="not-utf8"),
    pytest.param(Bad(400, "invalid_json", data='{"model": "auto"} trailing'), id="trailing-garbage"),
    pytest.param(
        Bad(400, "invalid_json", data='{"model": "auto", "messages": [], "x": ' + _nested(5000) + "}"),
        id="json-nested-too-deep",  # json.loads raises RecursionError here, not ValueError
    ),
    pytest.param(Bad(415, "unsupported_media_type", body=chat_body(), content_type="text/plain"), id="text-plain"),
    pytest.param(
        Bad(415, "unsupported_media_type", data="model=auto", content_type="application/x-www-form-urlencoded"),
        id="form-encoded",
    ),
    pytest.param(Bad(415, "unsupported_media_type", content_type=None), id="no-body-no-content-type"),
    # --- the body is JSON but not an object ----------------------------------------------
    pytest.param(Bad(400, "invalid_body", body=[chat_body()]), id="body-is-array"),
    pytest.param(Bad(400, "invalid_body", data="null"), id="body-is-null"),
    pytest.param(Bad(400, "invalid_body", data='"hello"'), id="body-is-string"),
    pytest.param(Bad(400, "invalid_body", data="42"), id="body-is-number"),
    # --- messages ------------------------------------------------------------------------
    pytest.param(Bad(400, "missing_required_parameter", body={"model": "auto"}, param="messages"), id="no-messages"),
    pytest.param(Bad(400, "invalid_value", body=_with(messages=[]), param="messages"), id="empty-messages"),
    pytest.param(Bad(400, "invalid_value", body=_with(messages="hello"), param="messages"), id="messages-string"),
    pytest.param(Bad(400, "invalid_value", body=_with(messages=["hello"]), param="messages.0"), id="message-string"),
    pytest.param(
        Bad(400, "invalid_value", body=_with(messages=[{"role": "user", "content": "x"}] * (LIMITS["max_messages"] + 1)),
            param="messages"),
        id="too-many-messages",
    ),
    pytest.param(Bad(400, "invalid_value", body=_msg(role="wizard"), param="messages.0.role"), id="bad-role"),
    pytest.param(Bad(400, "invalid_value", body=_msg(role=None), param="messages.0.role"), id="null-role"),
    pytest.param(
        Bad(400, "missing_required_parameter", body=_with(messages=[{"content": "hi"}]), param="messages.0.role"),
        id="missing-role",
    ),
    pytest.param(Bad(400, "invalid_value", body=_msg(content=42), param="messages.0.content"), id="content-int"),
    pytest.param(Bad(400, "invalid_value", body=_msg(content={"text": "hi"}), param="messages.0.content"),
                 id="content-object"),
    pytest.param(Bad(400, "invalid_value", body=_msg(content=[1, 2]), param="messages.0.content.0"),
                 id="content-list-of-ints"),
    pytest.param(
        Bad(400, "missing_required_parameter", body=_msg(content=[{"text": "hi"}]), param="messages.0.content.0.type"),
        id="content-part-without-type",
    ),
    pytest.param(Bad(400, "invalid_value", body=_msg(name="n" * 257), param="messages.0.name"), id="name-too-long"),
    # --- model ---------------------------------------------------------------------------
    pytest.param(Bad(400, "missing_required_parameter", body={"messages": chat_body()["messages"]}, param="model"),
                 id="no-model"),
    pytest.param(Bad(400, "invalid_value", body=chat_body(""), param="model"), id="empty-model"),
    pytest.param(Bad(400, "invalid_value", body=chat_body(42), param="model"), id="model-int"),
    pytest.param(Bad(400, "invalid_value", body=chat_body(None), param="model"), id="model-null"),
    pytest.param(Bad(400, "invalid_value", body=chat_body("m" * 257), param="model"), id="model-too-long"),
    pytest.param(Bad(404, "model_not_found", body=chat_body(JUNK_MODEL), param="model"), id="unknown-model"),
    # --- wrong types -----------------------------------------------------------------------
    pytest.param(Bad(400, "invalid_value", body=_with(stream="yes"), param="stream"), id="stream-string"),
    pytest.param(Bad(400, "invalid_value", body=_with(stream=1), param="stream"), id="stream-int"),
    pytest.param(Bad(400, "invalid_value", body=_with(stream_options={"include_usage": "yes"}),
                     param="stream_options.include_usage"), id="include-usage-string"),
    pytest.param(Bad(400, "invalid_value", body=_with(stream_options=[]), param="stream_options"),
                 id="stream-options-list"),
    pytest.param(Bad(400, "invalid_value", body=_with(max_tokens="10"), param="max_tokens"), id="max-tokens-string"),
    pytest.param(Bad(400, "invalid_value", body=_with(max_tokens=True), param="max_tokens"), id="max-tokens-true"),
    pytest.param(Bad(400, "invalid_value", body=_with(max_tokens=10.5), param="max_tokens"), id="max-tokens-float"),
    pytest.param(Bad(400, "invalid_value", body=_with(user=7), param="user"), id="user-int"),
    pytest.param(Bad(400, "invalid_value", body=_with(temperature="hot"), param="temperature"), id="temperature-string"),
    # --- out of range ----------------------------------------------------------------------
    pytest.param(Bad(400, "invalid_value", body=_with(max_tokens=-1), param="max_tokens"), id="max-tokens-negative"),
    pytest.param(Bad(400, "invalid_value", body=_with(max_tokens=0), param="max_tokens"), id="max-tokens-zero"),
    pytest.param(Bad(400, "invalid_value", body=_with(max_tokens=LIMITS["max_tokens"] + 1), param="max_tokens"),
                 id="max-tokens-over-limit"),
    pytest.param(Bad(400, "invalid_value", body=_with(max_tokens=10**30), param="max_tokens"), id="max-tokens-absurd"),
    pytest.param(Bad(400, "invalid_value", body=_with(max_completion_tokens=0), param="max_completion_tokens"),
                 id="max-completion-tokens-zero"),
    pytest.param(Bad(400, "invalid_value", body=_with(temperature=-0.1), param="temperature"),
                 id="temperature-negative"),
    pytest.param(Bad(400, "invalid_value", body=_with(temperature=2.5), param="temperature"), id="temperature-high"),
    # NaN and 1e999 are not JSON numbers (RFC 8259): the parser refuses the body.
    pytest.param(Bad(400, "invalid_json", data=json.dumps(chat_body())[:-1] + ', "temperature": NaN}'),
                 id="temperature-nan"),
    pytest.param(Bad(400, "invalid_json", data=json.dumps(chat_body())[:-1] + ', "temperature": 1e999}'),
                 id="temperature-infinite"),
    pytest.param(Bad(400, "invalid_value", body=_with(top_p=1.5), param="top_p"), id="top-p-high"),
    pytest.param(Bad(400, "invalid_value", body=_with(n=2), param="n"), id="n-2"),
    pytest.param(Bad(400, "invalid_value", body=_with(n=0), param="n"), id="n-0"),
    # --- too big -------------------------------------------------------------------------
    pytest.param(Bad(413, "request_too_large", body=chat_body(content="x" * LIMITS["max_body_bytes"])),
                 id="body-over-max-body-bytes"),
    # --- headers -------------------------------------------------------------------------
    pytest.param(Bad(400, "invalid_strategy", body=chat_body(), headers={"X-Route-Strategy": JUNK_STRATEGY},
                     param="X-Route-Strategy"), id="unknown-strategy"),
    pytest.param(Bad(400, "invalid_strategy", body=chat_body(), headers={"X-Route-Strategy": ""},
                     param="X-Route-Strategy"), id="empty-strategy"),
    pytest.param(Bad(403, "unknown_tenant", body=chat_body(), headers={"X-Tenant-ID": JUNK_TENANT},
                     param="X-Tenant-ID"), id="unknown-tenant"),
    pytest.param(Bad(403, "unknown_tenant", body=chat_body(), headers={"X-Tenant-ID": ""}, param="X-Tenant-ID"),
                 id="empty-tenant"),
    pytest.param(
        Bad(403, "tenant_mismatch", body=chat_body(),
            headers={"Authorization": f"Bearer {KEY_OF['search']}", "X-Tenant-ID": "support"}, param="X-Tenant-ID"),
        id="api-key-of-another-tenant",
    ),
    # A tenant with keys is reachable only with one of them: its header alone is 401, and a
    # wrong or unknown key is 401 whatever the header says.
    pytest.param(Bad(401, "missing_api_key", body=chat_body(), headers={"X-Tenant-ID": "research"}),
                 id="tenant-with-keys-by-header-alone"),
    pytest.param(Bad(401, "invalid_api_key", body=chat_body(),
                     headers={"Authorization": "Bearer sk-wrong-key", "X-Tenant-ID": "research"}),
                 id="wrong-key-with-tenant-header"),
    pytest.param(Bad(401, "invalid_api_key", body=chat_body(), headers={"Authorization": "Bearer sk-wrong-key"}),
                 id="unknown-key"),
    pytest.param(Bad(401, "invalid_api_key", body=chat_body(), headers={"Authorization": "Basic c2VhcmNoOng="}),
                 id="not-a-bearer-key"),
    pytest.param(Bad(401, "invalid_api_key", body=chat_body(), headers={"Authorization": "Bearer "}),
                 id="empty-bearer-key"),
    # The tenant is checked before the body: an unknown tenant with a bad body is still a 403.
    pytest.param(Bad(403, "unknown_tenant", data="{not json", headers={"X-Tenant-ID": JUNK_TENANT}),
                 id="unknown-tenant-and-bad-json"),
    # --- routes and methods --------------------------------------------------------------
    pytest.param(Bad(404, "not_found", body=chat_body(), path="/v1/completions"), id="unknown-route"),
    pytest.param(Bad(404, "not_found", method="GET", path="/v1/models/" + JUNK_MODEL), id="unknown-route-get"),
    pytest.param(Bad(405, "method_not_allowed", method="GET"), id="get-chat-completions"),
    pytest.param(Bad(405, "method_not_allowed", method="PUT", body=chat_body()), id="put-chat-completions"),
    pytest.param(Bad(405, "method_not_allowed", method="DELETE", path="/v1/models"), id="delete-models"),
    pytest.param(Bad(405, "method_not_allowed", method="POST", path="/healthz", body={}), id="post-healthz"),
]

BAD = [param.values[0] for param in CASES]


def assert_openai_error(response, status: int, code: str | None = None, param: str | None = None) -> dict:
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and 'File "' not in text, text[:2000]
    assert response.status_code == status, text[:2000]
    assert response.mimetype == "application/json", response.headers
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] in OPENAI_ERROR_TYPES, error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize("bad", CASES)
def test_bad_request_gets_an_openai_error(client, bad: Bad):
    response = bad.send(client)
    error = assert_openai_error(response, bad.status, bad.code, bad.param)
    assert response.headers.get("X-Request-ID"), "every answer carries a request id"
    if bad.status == 405:
        assert response.headers.get("Allow"), "a 405 names the allowed methods"
    # The status and the error type agree (as OpenAI's do).
    expected_type = {401: "authentication_error", 403: "permission_error"}.get(bad.status)
    if expected_type:
        assert error["type"] == expected_type, error


def _chunked(client, payload: bytes):
    # As gunicorn passes a chunked upload on: no Content-Length, wsgi.input_terminated set.
    return client.post(
        CHAT, input_stream=io.BytesIO(payload), content_type=JSON, headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_chunked_body_within_the_limit_is_served(client):
    response = _chunked(client, json.dumps(chat_body()).encode())
    assert response.status_code == 200, response.get_data(as_text=True)


# Werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH instead of refusing it: without
# a check of its own the router answered 400 invalid_json, or even served the truncated body.
@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(json.dumps(chat_body(content="x" * LIMITS["max_body_bytes"])).encode(), id="oversized"),
        # Truncated at the limit, this one would even parse.
        pytest.param(json.dumps(chat_body()).encode() + b" " * LIMITS["max_body_bytes"] + b"garbage",
                     id="valid-prefix-then-garbage"),
    ],
)
def test_chunked_body_over_the_limit_is_a_413(client, payload):
    assert_openai_error(_chunked(client, payload), 413, "request_too_large")


def _label_values(samples: dict) -> dict[str, set[str]]:
    values: dict[str, set[str]] = {}
    for (_, labels), _value in samples.items():
        for name, value in labels:
            values.setdefault(name, set()).add(value)
    return values


def test_bad_input_adds_no_metric_label_values(client):
    """After the whole table (plus a few valid requests), tenant and model labels only take
    configured values, "other"/"anonymous" and "auto"/"unknown"; nothing a client made up."""
    before = parse_metrics(client.get("/metrics").get_data(as_text=True))
    ok = client.post(CHAT, json=chat_body(), headers={"Authorization": f"Bearer {KEY_OF['search']}"})
    assert ok.status_code == 200
    for bad in BAD:
        response = bad.send(client)
        assert response.status_code == bad.status, (bad, response.get_data(as_text=True)[:500])
    text = client.get("/metrics").get_data(as_text=True)
    after = parse_metrics(text)

    for junk in (JUNK_MODEL, JUNK_TENANT, JUNK_STRATEGY, "wizard", "m" * 257):
        assert junk not in text, f"{junk!r} leaked into /metrics"

    old, new = _label_values(before), _label_values(after)
    for label, allowed in (
        ("tenant", ALLOWED_TENANTS),
        ("model", ALLOWED_MODELS),
        ("from_model", CONFIGURED_MODELS),
        ("to_model", CONFIGURED_MODELS),
    ):
        added = new.get(label, set()) - old.get(label, set())
        assert added <= allowed, f"new {label} label values: {sorted(added - allowed)}"
    # Every series this test moved has bounded tenant and model labels (whatever other
    # tests with other configurations left in the process-wide registry).
    moved = [key for key, value in after.items() if value != before.get(key)]
    for name, labels in moved:
        labels = dict(labels)
        assert labels.get("tenant", "other") in ALLOWED_TENANTS, (name, labels)
        assert labels.get("model", "unknown") in ALLOWED_MODELS, (name, labels)
        assert labels.get("strategy", "balanced") in {"balanced", "cost", "latency", "quality"}, (name, labels)

    # The rejected requests were counted, under the folded values.
    def grew(**wanted) -> bool:
        return any(
            name == "llm_router_chat_requests_total" and set(wanted.items()) <= set(labels)
            and after[(name, labels)] > before.get((name, labels), 0)
            for name, labels in after
        )

    assert grew(tenant="other", code="403"), "unknown tenants count as tenant=other"
    assert grew(tenant="other", code="401"), "callers without a valid key count as tenant=other"
    assert grew(tenant="anonymous", model="unknown", code="404"), "unknown models count as model=unknown"
    assert grew(model="unknown", code="400")
    assert grew(code="413") and grew(code="415")


def test_unknown_http_method_adds_no_method_label_value(client):
    for path in ("/healthz", "/no/such/route", CHAT):
        response = client.open(path, method="BREWCOFFEE")
        assert_openai_error(response, 405 if path != "/no/such/route" else 404)
    text = client.get("/metrics").get_data(as_text=True)
    assert "BREWCOFFEE" not in text
    assert 'method="other"' in text
