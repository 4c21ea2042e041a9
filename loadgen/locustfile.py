"""Load for the LLM router's OpenAI-compatible API, driven by Locust.

    locust -f loadgen/locustfile.py --host http://127.0.0.1:8080        # or: make load

Each simulated user is one client app with a fixed identity: a tenant's demo API key
(Authorization: Bearer ...; the router lets no one reach a tenant that has keys without
one), a tenant without keys named in X-Tenant-ID (LOADGEN_TENANTS, none by default), or
anonymous. Its
requests mix models ("auto" and explicit ids), routing strategies (X-Route-Strategy),
streaming (SSE read to `data: [DONE]`, time to first token reported as "ttft"),
popular prompts repeated so the response cache hits, and a few deliberately bad
requests that must get the right 4xx. Users also rate answers they got (POST
/v1/feedback): the task picks one of the user's recent successful non-streamed answers,
never the same one twice, and sends thumbs up/down or a score, sometimes with a reason.
Negative ratings are drawn for LOADGEN_NEGATIVE_SHARE of the ratings (the rest positive);
with no answer to rate yet, the task sends nothing.

Environment variables (defaults match service/config/router.yaml):
  LOADGEN_API_KEYS        tenant API keys sent as Bearer sk-demo-search,sk-demo-support,sk-demo-research,sk-demo-internal
  LOADGEN_TENANTS         keyless tenants, X-Tenant-ID  (none)
  LOADGEN_ANONYMOUS_SHARE share of users with neither   0.1
  LOADGEN_MODELS          models asked for              auto,sim-frontier,sim-balanced,sim-fast,sim-mini,sim-coder
  LOADGEN_STRATEGIES      X-Route-Strategy values       balanced,cost,latency,quality (none sent 1 time in 5)
  LOADGEN_WEIGHTS         task weights                  chat=52,repeat=20,stream=25,bad=3,feedback=8
                          (only the tasks named change: "bad=10" keeps the other defaults)
  LOADGEN_NEGATIVE_SHARE  share of negative feedback    0.2
  LOADGEN_WAIT            think time, min,max seconds   0.5,2
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import deque

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser


def _list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


TENANTS = _list("LOADGEN_TENANTS", "")
API_KEYS = _list("LOADGEN_API_KEYS", "sk-demo-search,sk-demo-support,sk-demo-research,sk-demo-internal")
ANONYMOUS_SHARE = float(os.environ.get("LOADGEN_ANONYMOUS_SHARE", "0.1"))
MODELS = _list("LOADGEN_MODELS", "auto,sim-frontier,sim-balanced,sim-fast,sim-mini,sim-coder")
STRATEGIES = _list("LOADGEN_STRATEGIES", "balanced,cost,latency,quality")
WEIGHTS = {"chat": 52, "repeat": 20, "stream": 25, "bad": 3, "feedback": 8}
WEIGHTS.update({k.strip(): int(v) for k, v in (p.split("=") for p in _list("LOADGEN_WEIGHTS", ""))})
WAIT_MIN, WAIT_MAX = (float(x) for x in _list("LOADGEN_WAIT", "0.5,2"))
NEGATIVE_SHARE = float(os.environ.get("LOADGEN_NEGATIVE_SHARE", "0.2"))

CHAT = "/v1/chat/completions"
FEEDBACK = "/v1/feedback"
# The reasons a user gives for a poor answer (the router's fixed set, "other" aside).
COMPLAINTS = ["inaccurate", "unhelpful", "off_topic", "too_slow", "formatting", "other"]
# How many of its latest answers a user remembers to rate.
REMEMBERED = 20
TOPICS = ["a refund policy", "Kubernetes liveness probes", "a SQL index", "the French revolution",
          "a haiku about latency", "unit tests for a parser", "GDPR data retention", "a sourdough starter"]
ASKS = ["Explain {} in two sentences.", "Write a short summary of {}.", "Give three bullet points on {}.",
        "What are common mistakes with {}?", "Draft a customer reply about {}."]
# The same few questions, asked the same way: identical requests the cache can answer.
POPULAR = ["What are your opening hours?", "How do I reset my password?", "Summarise our refund policy.",
           "What is the status page URL?", "How do I export my data?"]


def _chat_body(model: str, prompt: str, **extra) -> dict:
    messages = [{"role": "user", "content": prompt}]
    if random.random() < 0.3:
        messages.insert(0, {"role": "system", "content": "You are a concise assistant."})
    return {"model": model, "messages": messages, **extra}


def _problem(resp) -> str:
    """A short failure message: the status and the error body, or the connection error."""
    if resp.status_code == 0:
        return f"no response: {resp.error!r}"[:200]
    return f"HTTP {resp.status_code}: {(resp.text or '')[:200]}"


def _fresh_prompt() -> str:
    return f"{random.choice(ASKS).format(random.choice(TOPICS))} (ref {random.randrange(10**6)})"


class RouterUser(FastHttpUser):
    # FastHttpUser (geventhttpclient) rather than HttpUser (requests): several times less CPU
    # per request, so one Locust process can push far more RPS before it, not the router,
    # becomes the bottleneck; it streams (stream=True + iter_content) and has catch_response.
    wait_time = between(WAIT_MIN, WAIT_MAX)
    # Streams from the slowest simulated models run for seconds: time out per read, not per call.
    network_timeout = 120.0

    def on_start(self) -> None:
        # Ids of this user's recent answers (non-streamed: their ids are known to the router
        # when the response arrives); each is rated at most once, so no 409.
        self.answered: deque[str] = deque(maxlen=REMEMBERED)
        self.identity: dict[str, str] = {}
        if random.random() >= ANONYMOUS_SHARE and (TENANTS or API_KEYS):
            if API_KEYS and (not TENANTS or random.random() < 0.5):
                self.identity = {"Authorization": f"Bearer {random.choice(API_KEYS)}"}
            else:
                self.identity = {"X-Tenant-ID": random.choice(TENANTS)}

    def _headers(self) -> dict[str, str]:
        headers = dict(self.identity)
        if STRATEGIES and random.random() < 0.8:
            headers["X-Route-Strategy"] = random.choice(STRATEGIES)
        return headers

    def _complete(self, name: str, body: dict, headers: dict[str, str]) -> None:
        with self.client.post(CHAT, json=body, headers=headers, name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(_problem(resp))
                return
            try:
                payload = resp.json()
                content = payload["choices"][0]["message"]["content"]
            except (ValueError, LookupError, TypeError):
                content = None
            if content:
                self.answered.append(payload["id"])
                resp.success()
            else:
                resp.failure("no choices[0].message.content in the response")

    @task(WEIGHTS["chat"])
    def chat(self) -> None:
        extra = {"max_tokens": random.choice([64, 256, 1024])} if random.random() < 0.5 else {}
        self._complete("chat", _chat_body(random.choice(MODELS), _fresh_prompt(), **extra), self._headers())

    @task(WEIGHTS["repeat"])
    def chat_repeat(self) -> None:
        # Fixed model, strategy and parameters: the cache key is tenant + these + messages.
        body = {"model": "auto", "messages": [{"role": "user", "content": random.choice(POPULAR)}], "max_tokens": 128}
        self._complete("chat (repeat)", body, dict(self.identity))

    @task(WEIGHTS["stream"])
    def chat_stream(self) -> None:
        body = _chat_body(random.choice(MODELS), _fresh_prompt(), stream=True)
        if random.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        with self.client.post(CHAT, json=body, headers=self._headers(), name="chat stream", stream=True,
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(_problem(resp))
                return
            problem, size, first_token, buffer = "stream ended before data: [DONE]", 0, None, ""
            for chunk in resp.iter_content(chunk_size=4096):
                chunk = chunk.decode() if isinstance(chunk, bytes) else chunk
                size += len(chunk)
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in (line for line in lines if line.startswith("data: ")):
                    data = line[len("data: "):]
                    if data == "[DONE]":
                        problem = problem if problem.startswith("stream error") else None
                        break
                    event = json.loads(data)
                    if "error" in event:
                        problem = f"stream error: {event['error'].get('code')}"
                    elif first_token is None and any(c["delta"].get("content") for c in event["choices"]):
                        first_token = (time.perf_counter() - started) * 1000
                        self.environment.events.request.fire(
                            request_type="SSE", name="ttft", response_time=first_token, response_length=0,
                            exception=None, context={}, response=None,
                        )
            # Locust stopped the clock at the headers; the entry should cover the whole stream.
            resp.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            resp.request_meta["response_length"] = size
            if problem:
                resp.failure(problem)
            else:
                resp.success()

    @task(WEIGHTS["bad"])
    def bad_input(self) -> None:
        good = _chat_body("auto", "hello")
        case, expected, data, headers = random.choice([
            ("malformed JSON", 400, '{"model": "auto", "messages": [', self.identity),
            ("unknown model", 404, json.dumps({**good, "model": "no-such-model"}), self.identity),
            ("empty messages", 400, json.dumps({**good, "messages": []}), self.identity),
            ("negative max_tokens", 400, json.dumps({**good, "max_tokens": -5}), self.identity),
            ("unknown strategy", 400, json.dumps(good), {**self.identity, "X-Route-Strategy": "cheapest"}),
            ("unknown tenant", 403, json.dumps(good), {"X-Tenant-ID": "no-such-tenant"}),
        ])
        headers = {**headers, "Content-Type": "application/json"}
        with self.client.post(CHAT, data=data, headers=headers, name="bad input", catch_response=True) as resp:
            if resp.status_code == expected:
                resp.success()
            else:
                resp.failure(f"{case}: expected {expected}, got {_problem(resp)}")

    @task(WEIGHTS["feedback"])
    def feedback(self) -> None:
        if not self.answered:
            return  # nothing to rate yet
        response_id = self.answered.popleft() if random.random() < 0.5 else self.answered.pop()
        negative = random.random() < NEGATIVE_SHARE
        body: dict = {"response_id": response_id}
        if random.random() < 0.5:
            body["thumbs"] = "down" if negative else "up"
        else:
            body["score"] = round(random.uniform(0, 0.45) if negative else random.uniform(0.55, 1), 2)
        if negative and random.random() < 0.6:
            body["reason"] = random.choice(COMPLAINTS)
        with self.client.post(FEEDBACK, json=body, headers=dict(self.identity), name="feedback",
                              catch_response=True) as resp:
            if resp.status_code == 201:
                resp.success()
            else:
                resp.failure(_problem(resp))
