"""The official `openai` client works against the router unchanged."""

from __future__ import annotations

import openai
import pytest

from conftest import serving


@pytest.fixture
def server(app):
    with serving(app) as url:
        yield url


def client_for(url: str, key: str = "sk-demo-research", **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, default_headers=headers, timeout=10)


def test_non_streaming_completion(server):
    client = client_for(server)
    raw = client.chat.completions.with_raw_response.create(
        model="sim-balanced", messages=[{"role": "user", "content": "Say hi"}], max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 50
    assert completion.model == "sim-balanced"
    assert raw.headers["x-router-model"] == "sim-balanced"


def test_streaming_completion_with_usage(server):
    client = client_for(server, **{"X-Route-Strategy": "cost"})
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Tell me a story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.completion_tokens == len(text.split())
    # The cost strategy picks the cheapest configured model.
    assert {c.model for c in chunks} == {"sim-mini"}


def test_models_list(server):
    ids = [model.id for model in client_for(server).models.list()]
    assert "auto" in ids and "sim-frontier" in ids


def test_errors_map_to_openai_exceptions(server):
    client = client_for(server)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])
    with pytest.raises(openai.PermissionDeniedError):
        client_for(server, **{"X-Tenant-ID": "nobody"}).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}]
        )
