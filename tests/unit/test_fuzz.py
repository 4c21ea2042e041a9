"""Fuzzing: the API against its own OpenAPI document (schemathesis), and arbitrary JSON values
and bytes against POST /v1/chat/completions (hypothesis).

Whatever comes in: no 5xx, errors in OpenAI's shape, responses as documented, and no metric
label value a client made up. Bounded (small max_examples, derandomised) to stay fast and
repeatable in CI; raise FUZZ_EXAMPLES locally for a longer run.
"""

from __future__ import annotations

import json
import os
import tempfile
from itertools import count

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from conftest import config_dict, parse_metrics, quiet_models
from llm_router.app import Telemetry, create_app
from llm_router.config import parse_config
from test_bad_input import ALLOWED_MODELS, ALLOWED_TENANTS, CONFIGURED_MODELS, CONFIGURED_TENANTS, assert_openai_error

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CHAT = "/v1/chat/completions"
CHAT_FIELDS = (
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "user",
)

# schemathesis.pytest.from_fixture() (a schema built from a fixture) fails under pytest 9.2
# (it sets Function._nodeid, which pytest 9.2 no longer has), so the app under fuzz is built
# once for the module, from the shipped configuration without random backend errors.
_STATE = tempfile.TemporaryDirectory(prefix="llm-router-fuzz-")
APP = create_app(parse_config(quiet_models(config_dict())), telemetry=Telemetry(), state_dir=_STATE.name)


def teardown_module() -> None:
    """The module's app has a ledger loop and probes of its own: stop them with the module."""
    APP.extensions["llm_router"].close()

schema = schemathesis.openapi.from_wsgi(
    "/openapi.json",
    APP,
    config=schemathesis.Config.from_dict(
        {
            "seed": 20240607,
            # Positive and negative (schema-violating) data; derandomised for CI stability.
            "generation": {"mode": "all", "max-examples": EXAMPLES, "deterministic": True},
            # Examples, coverage and fuzzing phases; the API has no links for stateful tests.
            "phases": {"stateful": {"enabled": False}},
        }
    ),
)


def _label_values(app) -> dict[str, set[str]]:
    samples = parse_metrics(app.test_client().get("/metrics").get_data(as_text=True))
    values: dict[str, set[str]] = {}
    for (_, labels), _value in samples.items():
        for name, value in labels:
            values.setdefault(name, set()).add(value)
    return values


def assert_no_new_label_values(before: dict[str, set[str]], after: dict[str, set[str]]) -> None:
    for label, allowed in (
        ("tenant", ALLOWED_TENANTS),
        ("model", ALLOWED_MODELS),
        ("from_model", CONFIGURED_MODELS),
        ("to_model", CONFIGURED_MODELS),
        ("strategy", {"balanced", "cost", "latency", "quality"}),
        ("method", {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}),
    ):
        added = after.get(label, set()) - before.get(label, set())
        assert added <= allowed, f"new {label} label values: {sorted(added - allowed)[:20]}"


def assert_sane(response) -> None:
    """No 5xx, no stack trace, and every error in OpenAI's shape."""
    text = response.get_data(as_text=True) if hasattr(response, "get_data") else response.text
    assert "Traceback" not in text, text[:2000]
    status = response.status_code
    assert status < 500, text[:2000]
    if status >= 400:
        assert_openai_error(response, status)


# --- schemathesis: the OpenAPI document drives the requests -------------------------------


@pytest.fixture(scope="module")
def labels_before_schemathesis():
    return _label_values(APP)


_turn = count()
_STEER_MODELS = sorted(CONFIGURED_MODELS) + ["auto"]
_STEER_TENANTS = sorted(CONFIGURED_TENANTS) + [None]


def _steered(case):
    """A positive chat case with a configured model and tenant, so the fuzzed fields reach the
    backends and the 200 answers (JSON and event streams) get checked too: left as generated,
    almost every model and tenant is made up and the answer is a 404 or a 403."""
    turn = next(_turn)
    headers = {key: value for key, value in dict(case.headers or {}).items() if key.lower() != "x-tenant-id"}
    tenant = _STEER_TENANTS[turn % len(_STEER_TENANTS)]
    if tenant is not None:
        headers["X-Tenant-ID"] = tenant
    body = {**case.body, "model": _STEER_MODELS[turn % len(_STEER_MODELS)]}
    if turn % 3 == 0:  # and an event stream now and then, its events checked against the document
        body.update(stream=True, stream_options={"include_usage": turn % 2 == 0})
    return case.operation.Case(headers=headers, body=body, media_type=case.media_type)


def _call_and_check(case) -> None:
    # call_and_validate runs schemathesis' default checks: not_a_server_error,
    # status_code_conformance, content_type_conformance, response_schema_conformance (SSE events
    # too), response_headers_conformance, negative_data_rejection, positive_data_acceptance,
    # unsupported_method, ...
    response = case.call_and_validate()
    assert response.status_code < 500
    if response.status_code >= 400 and case.operation.path != "/readyz":
        assert_openai_error(_Wrapped(response), response.status_code)


@schema.parametrize()
def test_api_conforms_to_its_openapi_document(case, labels_before_schemathesis):
    _call_and_check(case)
    positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    if case.operation.path == CHAT and positive and isinstance(case.body, dict):
        _call_and_check(_steered(case))


class _Wrapped:
    """A schemathesis Response seen through the Flask test-response API assert_openai_error uses."""

    def __init__(self, response) -> None:
        self.response = response
        self.status_code = response.status_code
        content_type = response.headers.get("content-type", [""])
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        self.mimetype = content_type.split(";")[0].strip()
        self.headers = response.headers

    def get_data(self, as_text: bool = False):
        return self.response.text if as_text else self.response.content

    def get_json(self):
        return json.loads(self.response.content)


def test_schemathesis_fuzzing_added_no_label_values(labels_before_schemathesis):
    assert_no_new_label_values(labels_before_schemathesis, _label_values(APP))


# --- hypothesis: arbitrary JSON values and bytes --------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()  # NaN and infinities too: Python's JSON parser accepts them
    | st.text(max_size=30)
)
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
_ROLES = ["system", "developer", "user", "assistant", "tool", "function"]
valid_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(sorted(ALLOWED_MODELS - {"unknown"})),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(_ROLES), "content": st.text(max_size=40)}),
            min_size=1, max_size=3,
        ),
    },
    optional={
        "max_tokens": st.integers(1, 64),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "n": st.just(1),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "user": st.text(max_size=20),
    },
)


def _edit(body: dict, replaced: dict, dropped: set) -> dict:
    return {**{key: value for key, value in body.items() if key not in dropped}, **replaced}


# A valid request with a field or two replaced by any JSON value, or left out.
edited_bodies = st.builds(
    _edit,
    valid_bodies,
    st.dictionaries(st.sampled_from(CHAT_FIELDS + ("unknown_field",)), json_values, max_size=2),
    st.sets(st.sampled_from(CHAT_FIELDS), max_size=2),
)
_messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(_ROLES + ["wizard"]) | json_values,
            "content": st.text(max_size=40) | st.lists(
                st.fixed_dictionaries({}, optional={"type": st.just("text") | json_values, "text": json_values}),
                max_size=3,
            ) | json_values,
            "name": json_values,
        },
    ),
    max_size=3,
)
# Messages of any shape in an otherwise valid request.
odd_messages = st.builds(lambda body, messages: {**body, "messages": messages}, valid_bodies, _messages | json_values)
bodies = valid_bodies | edited_bodies | odd_messages | json_values
_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
headers = st.fixed_dictionaries(
    {},
    optional={
        "X-Tenant-ID": st.sampled_from(sorted(CONFIGURED_TENANTS)) | _header_text,
        "X-Route-Strategy": st.sampled_from(["balanced", "cost", "latency", "quality"]) | _header_text,
        "Authorization": st.sampled_from(["Bearer sk-demo-search", "Bearer nope", "Basic x"]) | _header_text,
        "Cache-Control": st.sampled_from(["no-cache", "no-store", "max-age=0"]),
    },
)
BOUNDED = settings(
    max_examples=EXAMPLES * 4, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _post(client, data, content_type, request_headers):
    response = client.post(CHAT, data=data, content_type=content_type, headers=request_headers)
    try:
        assert_sane(response)
        if response.status_code == 200 and response.mimetype == "text/event-stream":
            assert response.get_data(as_text=True).endswith("data: [DONE]\n\n")
    finally:
        response.close()
    return response


def test_arbitrary_json_bodies(app):
    client = app.test_client()
    before = _label_values(app)
    seen: set[int] = set()

    @BOUNDED
    @given(body=bodies, request_headers=headers)
    def run(body, request_headers):
        seen.add(_post(client, json.dumps(body), "application/json", request_headers).status_code)

    run()
    assert_no_new_label_values(before, _label_values(app))
    assert 400 in seen and 200 in seen, seen  # the fuzzing reached validation and the backends


def test_arbitrary_bytes(app):
    client = app.test_client()
    before = _label_values(app)

    @BOUNDED
    @given(
        data=st.binary(max_size=512)
        | st.text(max_size=200).map(str.encode)
        # Nesting deep enough to exhaust the JSON parser's recursion (once a 500).
        | st.integers(1, 5000).map(lambda depth: ('{"x": ' + "[" * depth + "]" * depth + "}").encode()),
        content_type=st.sampled_from(
            ["application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
             "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
        ),
    )
    def run(data, content_type):
        _post(client, data, content_type, {})

    run()
    assert_no_new_label_values(before, _label_values(app))
