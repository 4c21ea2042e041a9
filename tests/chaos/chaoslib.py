"""What the chaos cases share: a router whose processes the test can see and hurt, clients
that record exactly what they received, and the reconciliation of that against the state
store, the metrics and (once) the report.

Every case ends in `reconcile()`: the dollars the clients received, computed from each
answer's usage (or, for a stream cut short, from the chunks that arrived plus the prompt's
estimate the router also uses) with the configured prices, must equal the stored charges
(per request id and in total), the stored monthly spend and llm_router_cost_usd_total. The
one allowed difference is named, not tolerated: a request whose worker the test SIGKILLed
after its charge was journaled but before the client got all of it ("charged, not
delivered"); each such request id is listed and must be one whose connection broke and
whose charge comes from the journal of a process the test killed.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from conftest import (LiveRouter, REPO, as_tenant, config_dict, free_port, live_children, metric_sum, parse_metrics,
                      prices, quiet_models)

from llm_router.backends.base import estimate_tokens, message_text
from llm_router.state import SQLiteStore, current_month

SIM_MODELS = ["sim-fast", "sim-mini", "sim-balanced", "sim-frontier", "sim-coder"]
TENANTS = ["search", "support", "research", "internal-tools"]
# Figures of every case, printed at the end of the run (tests/conftest.py) and written to
# reports/chaos.json; docs/reliability.md quotes a run of them.
FIGURES: list[dict] = []


def chaos_config(time_scale: float = 0.0, upstream_models: list[dict] = (), **routing) -> dict:
    """The shipped config without random errors, simulated delays scaled, plus models that
    talk to the upstream stand-in."""
    data = quiet_models(config_dict())
    data["simulation_time_scale"] = time_scale
    data["models"].extend(upstream_models)
    data["health_probes"] = {"enabled": False, "interval_seconds": 30, "timeout_seconds": 5}
    data["routing"].update(routing)
    return data


def upstream_model(model_id: str, base_url: str, behaviour: str, *, timeout: float = 10, concurrency: int = 64,
                   price_in: float = 0.002, price_out: float = 0.008) -> dict:
    return {"id": model_id, "provider": "openai", "provider_name": "bench", "base_url": base_url,
            "upstream_model": behaviour, "price": {"input_per_1k": price_in, "output_per_1k": price_out},
            "quality": 0.5, "timeout_seconds": timeout, "max_concurrency": concurrency}


# --- the router, seen from outside --------------------------------------------------------


class ChaosRouter(LiveRouter):
    """A real `llm-router serve` whose output goes through a pipe (a worker whose file
    writes the test makes fail must still be able to log) into the log file, appended
    across restarts on the same state directory."""

    def __init__(self, tmp: Path, workers: int, config: dict, env: dict[str, str] | None = None) -> None:
        super().__init__(tmp, workers, config, {"LLM_ROUTER_SIM_TIME_SCALE": str(config["simulation_time_scale"]),
                                                **(env or {})})
        self.config = config
        self.state_dir = Path(self.env["LLM_ROUTER_STATE_DIR"])
        self.metrics_dir = Path(self.env["PROMETHEUS_MULTIPROC_DIR"]) if workers > 1 else None
        self._reader: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen:
        process = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        sink = self.log_path.open("ab")
        pipe = process.stdout

        def copy() -> None:
            with sink:
                for line in iter(pipe.readline, b""):
                    sink.write(line)
                    sink.flush()

        self._reader = threading.Thread(target=copy, daemon=True)
        self._reader.start()
        return process

    def _ready(self) -> bool:
        """/readyz, and every worker up (each holds its journal)."""
        return super()._ready() and len(self.workers()) == int(self.env["LLM_ROUTER_WORKERS"])

    def _exited(self) -> None:
        # The copier owns the log file: it closes it at the end of the pipe.
        if self._reader is not None:
            self._reader.join(10)

    def workers(self) -> dict[int, str]:
        """{pid: journal id} of the live serving processes (each holds its journal open)."""
        found = {}
        if self.process is None:
            return found
        for pid in live_children(self.process.pid):
            journal = journal_of(pid)
            if journal is not None:
                found[pid] = journal
        return found

    def access_lines(self) -> dict[str, dict]:
        return {r["request_id"]: r for r in self.events() if r.get("message") == "request completed"
                and r.get("route") == "/v1/chat/completions"}

    def settle(self, timeout: float = 30) -> dict:
        """Until every charge is stored and every dead process's journal replayed: no
        charge waiting, no slot in use, a journal per live worker and no other."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.scrape()
            live = set(self.workers().values())
            files = {p.name.removeprefix("journal-").removesuffix(".bin") for p in self.journals()}
            if (metric_sum(samples, "llm_router_ledger_waiting_charges") == 0
                    and metric_sum(samples, "llm_router_ledger_journal_slots_in_use") == 0 and files == live):
                return samples
            if time.monotonic() > deadline:
                raise AssertionError(f"the ledger did not settle in {timeout}s: waiting "
                                     f"{metric_sum(samples, 'llm_router_ledger_waiting_charges')}, journals {files}, "
                                     f"live {live}")
            time.sleep(0.2)




def journal_of(pid: int) -> str | None:
    """The journal a process owns, from /proc/<pid>/maps: the one it has memory-mapped (a
    process replaying a dead one's journal holds that one open too, but never maps it)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        base = os.path.basename(line.split()[-1]) if len(line.split()) >= 6 else ""
        if base.startswith("journal-") and base.endswith(".bin"):
            return base.removeprefix("journal-").removesuffix(".bin")
    return None


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --- clients that know what they received -------------------------------------------------


@dataclass
class Received:
    """One request as its client saw it."""

    request_id: str
    tenant: str
    requested: str
    stream: bool
    prompt: str
    status: int | None = None  # None: the connection failed before a status line
    model: str | None = None  # the model that answered
    input_tokens: int = 0
    output_tokens: int = 0  # content chunks received, or the answer's usage
    outcome: str = "pending"  # answered | cut (error event) | gone (client left) | rejected | broken
    error: str | None = None  # error code of a rejection or of a stream's error event
    cache: str | None = None
    seconds: float = 0.0
    usage: dict | None = None

    def cost(self, table: dict[str, tuple[float, float]]) -> float:
        if self.model is None or self.cache == "hit" or not (self.input_tokens or self.output_tokens):
            return 0.0
        price_in, price_out = table[self.model]
        return self.input_tokens / 1000 * price_in + self.output_tokens / 1000 * price_out

    @property
    def estimated_input(self) -> int:
        return estimate_tokens(message_text([{"role": "user", "content": self.prompt}]))


class Client:
    """One client connection (keep-alive), reconnecting after a failure."""

    def __init__(self, url: str, timeout: float = 30, keep_alive: bool = True) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.timeout = timeout
        self.keep_alive = keep_alive  # False: a connection per request, spread over the workers
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def chat(self, request_id: str, tenant: str, model: str, prompt: str, *, stream: bool = False,
             include_usage: bool = True, cache: bool = False, headers: dict | None = None,
             leave_after: int | None = None, on_first=None, **extra) -> Received:
        """Send one chat request and read its answer; ``leave_after``: close the connection
        once that many content chunks arrived (a client that goes away)."""
        got = Received(request_id, tenant, model, stream, prompt)
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
        if stream:
            body["stream"] = True
            if include_usage:
                body["stream_options"] = {"include_usage": True}
        sent = {"Content-Type": "application/json", "X-Request-ID": request_id, **(headers or {})}
        if headers is None:
            sent.update(as_tenant(tenant))
        if not cache:
            sent["Cache-Control"] = "no-cache"
        if not self.keep_alive:
            sent["Connection"] = "close"
        started = time.monotonic()
        try:
            conn = self._connection()
            conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=sent)
            response = conn.getresponse()
            got.status = response.status
            got.model = response.getheader("X-Router-Model")
            got.cache = response.getheader("X-Router-Cache")
            if response.status != 200:
                data = response.read()
                got.outcome = "rejected"
                try:
                    got.error = json.loads(data)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    got.error = data[:100].decode(errors="replace")
                got.model = None
            elif not stream:
                answer = json.loads(response.read())
                got.model = answer["model"]
                got.usage = answer["usage"]
                got.input_tokens = answer["usage"]["prompt_tokens"]
                got.output_tokens = answer["usage"]["completion_tokens"]
                got.outcome = "answered"
            else:
                self._read_stream(response, got, leave_after, on_first)
        except ConnectionRefusedError as error:
            got.outcome = "refused"  # nothing listens (the router is down): nothing sent
            got.error = repr(error)[:200]
            self.drop()
        except (OSError, http.client.HTTPException) as error:
            got.outcome = "broken"
            got.error = repr(error)[:200]
            self.drop()
        got.seconds = time.monotonic() - started
        if not self.keep_alive:
            self.drop()
        if got.outcome in ("broken", "gone") and got.stream and got.output_tokens:
            got.input_tokens = got.estimated_input  # what the router charges a stream cut short
        return got

    def abandon(self, request_id: str, tenant: str, model: str, prompt: str, until, timeout: float = 10) -> Received:
        """Send a streaming request and close the connection, without reading a byte, once
        ``until()`` holds (say, the upstream has the call): a client that left before the
        first token."""
        got = Received(request_id, tenant, model, True, prompt)
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True}
        conn = self._connection()
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json", "X-Request-ID": request_id, **as_tenant(tenant)})
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, f"{request_id}: the condition to leave never came"
            time.sleep(0.01)
        conn.sock.shutdown(2)
        self.drop()
        got.outcome = "gone"
        return got

    def _read_stream(self, response, got: Received, leave_after: int | None, on_first=None) -> None:
        chunks = 0
        finished = done = False
        while True:
            if leave_after is not None and chunks >= leave_after:
                # Gone: shut the socket down in both directions, as a client that crashed or
                # gave up would (the router sees the close; nothing more is read).
                got.output_tokens = chunks
                got.outcome = "gone"
                self.conn.sock.shutdown(2)
                self.drop()
                return
            try:
                line = response.readline()
            except (OSError, http.client.HTTPException):
                got.output_tokens = chunks
                raise
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            payload = line[6:]
            if payload == b"[DONE]":
                done = True
                response.read()  # the body's end: the connection is reusable
                break
            event = json.loads(payload)
            if "error" in event:
                got.error = event["error"]["code"]
                continue
            got.model = event.get("model", got.model)
            if event.get("usage"):
                got.usage = event["usage"]
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if chunks == 1 and on_first is not None:
                        on_first()
                if choice.get("finish_reason"):
                    finished = True
        got.output_tokens = chunks
        if done and finished and got.error is None:
            got.outcome = "answered"
            if got.usage:
                assert got.usage["completion_tokens"] == chunks, (got.request_id, got.usage, chunks)
                got.input_tokens = got.usage["prompt_tokens"]
            else:
                got.input_tokens = got.estimated_input
        elif done and got.error is not None:
            got.outcome = "cut"
            got.input_tokens = got.estimated_input if chunks else 0
        else:
            # The body ended without [DONE]: the connection broke under the stream.
            got.outcome = "broken"
            got.error = "incomplete stream"
            got.input_tokens = got.estimated_input if chunks else 0
            self.drop()


class Traffic:
    """Background load: ``threads`` clients sending a fixed mix of tenants, models, streams
    (with and without usage) and a few cache hits, until stopped or ``limit`` requests."""

    def __init__(self, url: str, name: str, threads: int = 6, models: list[str] = SIM_MODELS,
                 limit: int = 100_000, pause: float = 0.0, timeout: float = 30, keep_alive: bool = True) -> None:
        self.url, self.name, self.threads, self.models, self.limit = url, name, threads, models, limit
        self.keep_alive = keep_alive
        self.pause, self.timeout = pause, timeout
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.limit:
                return None
            self._next += 1
            return self._next - 1

    def _run(self) -> None:
        client = Client(self.url, self.timeout, self.keep_alive)
        while not self._stop.is_set():
            i = self._take()
            if i is None:
                break
            tenant = TENANTS[i % len(TENANTS)]
            model = self.models[(i // len(TENANTS)) % len(self.models)]
            stream = i % 3 == 1
            cached = i % 17 == 5  # the same body again and again: cache hits ($0, still rateable)
            prompt = f"{self.name} repeated question" if cached else f"{self.name} question {i} " + "x" * (i % 50)
            got = client.chat(f"{self.name}-{i:05d}", tenant, model, prompt, stream=stream and not cached,
                              include_usage=i % 6 != 4, cache=cached)
            with self._lock:
                self.received.append(got)
            if self.pause:
                time.sleep(self.pause)
        client.drop()

    def __enter__(self) -> "Traffic":
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop_sending(self) -> None:
        """No new request from now on (those in flight go on)."""
        self._stop.set()

    def stop(self) -> list[Received]:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)
        return self.received

    def count(self) -> int:
        with self._lock:
            return len(self.received)


# --- what was stored ----------------------------------------------------------------------


@dataclass
class Stored:
    charges: list
    spend: dict[str, float]
    by_request: dict[str, list]

    @classmethod
    def read(cls, state_dir: Path) -> "Stored":
        store = SQLiteStore(state_dir)
        try:
            charges = store.charges()
            spend = store.spend_totals(current_month())
        finally:
            store.close()
        by_request: dict[str, list] = defaultdict(list)
        for charge in charges:
            by_request[charge.request_id].append(charge)
        return cls(charges, spend, dict(by_request))


def dead_process_counters(metrics_dir: Path) -> dict:
    """The counters the processes of a killed router left in their multiprocess files (what
    Prometheus would have scraped last, had it scraped after the last request)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    return parse_metrics(generate_latest(registry).decode())


# --- the reconciliation -------------------------------------------------------------------


EXACT = 1e-9  # float sums in different orders; every figure is also compared to the cent


def same_money(a: float, b: float) -> bool:
    return round(a, 2) == round(b, 2) and abs(a - b) < EXACT


@dataclass
class Reconciliation:
    requests: int = 0
    answered: int = 0
    partial: int = 0  # streams cut short (error event or client gone), charged for what arrived
    rejected: int = 0
    broken: int = 0
    received_usd: float = 0.0
    stored_usd: float = 0.0
    metric_usd: float | None = None
    report_usd: float | None = None
    charged_not_delivered: list[str] = field(default_factory=list)
    not_charged_not_delivered: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def reconcile(received: list[Received], stored: Stored, table: dict[str, tuple[float, float]], *,
              metrics: dict | None = None, killed_journals: set[str] = frozenset(),
              extra_metric_usd: float = 0.0) -> Reconciliation:
    """Per request id, then in total: what the clients received == the stored charges ==
    the stored spend == llm_router_cost_usd_total (``metrics``: a scrape, or the counters
    of several lives of the router added up, ``extra_metric_usd``)."""
    result = Reconciliation(requests=len(received))
    ids = Counter(r.request_id for r in received)
    assert max(ids.values(), default=1) == 1, "request ids must be unique"
    # Every stored charge belongs to a request a client sent, and to one charge only.
    phantom = sorted(set(stored.by_request) - set(ids))
    assert not phantom, f"charges no client asked for: {phantom[:10]}"
    doubled = {rid: len(c) for rid, c in stored.by_request.items() if len(c) > 1}
    assert not doubled, f"requests charged more than once: {doubled}"
    undelivered_usd = 0.0
    for got in received:
        charges = stored.by_request.get(got.request_id, [])
        charge = charges[0] if charges else None
        cost = got.cost(table)
        if got.outcome == "answered":
            result.answered += 1
            if charge is None:
                result.lost.append(got.request_id)  # answered, not charged
                continue
            assert charge.code == 200 and charge.tenant == got.tenant and charge.model == got.model, (got, charge)
            if got.cache == "hit":
                assert charge.cost_usd == 0 and charge.input_tokens == charge.output_tokens == 0, (got, charge)
            else:
                assert (charge.input_tokens, charge.output_tokens) == (got.input_tokens, got.output_tokens), \
                    (got, charge)
                assert charge.cost_usd == cost, (got, charge, cost)
        elif got.outcome in ("cut", "gone"):
            result.partial += 1
            if got.output_tokens == 0:
                assert charge is None, f"{got.request_id}: nothing produced, yet charged {charge}"
                continue
            if charge is None:
                result.lost.append(got.request_id)  # tokens arrived, not charged
                continue
            assert (charge.input_tokens, charge.output_tokens) == (got.input_tokens, got.output_tokens), (got, charge)
            assert charge.cost_usd == cost and charge.model == got.model, (got, charge, cost)
            assert charge.code != 200, (got, charge)
        elif got.outcome in ("rejected", "refused"):
            result.rejected += 1
            assert charge is None, f"{got.request_id}: rejected ({got.status} {got.error}) but charged {charge}"
        elif got.outcome == "broken":
            result.broken += 1
            if charge is None:
                if got.output_tokens:
                    result.lost.append(got.request_id)  # tokens arrived, not charged
                else:
                    result.not_charged_not_delivered.append(got.request_id)
                continue
            journal = charge.charge_id.split(":")[0]
            assert journal in killed_journals, (
                f"{got.request_id}: its connection broke, but its charge {charge.charge_id} is not from a process "
                f"the test killed ({sorted(killed_journals)}): {got}")
            assert charge.tenant == got.tenant, (got, charge)
            if got.stream:
                assert charge.input_tokens == got.estimated_input, (got, charge)
            if got.stream and got.output_tokens and charge.output_tokens == got.output_tokens:
                # Every token the stream produced before the kill arrived, and is charged.
                assert charge.cost_usd == cost, (got, charge, cost)
                result.partial += 1
                result.received_usd += cost
                continue
            # Journaled (charged), then the kill came before all of it left the worker.
            assert charge.output_tokens >= got.output_tokens, (got, charge)
            if got.stream:
                assert charge.output_tokens - got.output_tokens <= 1, (
                    f"{got.request_id}: {charge.output_tokens - got.output_tokens} tokens charged past what arrived")
            result.charged_not_delivered.append(got.request_id)
            undelivered_usd += charge.cost_usd - cost
        else:
            raise AssertionError(f"{got.request_id}: unexpected outcome {got.outcome}")
        result.received_usd += cost
    assert not result.lost, f"delivered but not charged (lost): {result.lost}"
    result.stored_usd = sum(c.cost_usd for c in stored.charges)
    # Totals: received (+ the listed undelivered remainder) == charges == spend == metrics.
    assert same_money(result.received_usd + undelivered_usd, result.stored_usd), \
        (result.received_usd, undelivered_usd, result.stored_usd)
    per_tenant: dict[str, float] = defaultdict(float)
    for charge in stored.charges:
        per_tenant[charge.tenant] += charge.cost_usd
    for tenant in set(per_tenant) | set(stored.spend):
        assert same_money(stored.spend.get(tenant, 0.0), per_tenant.get(tenant, 0.0)), \
            (tenant, stored.spend.get(tenant), per_tenant.get(tenant))
    assert same_money(sum(stored.spend.values()), result.stored_usd)
    if metrics is not None:
        result.metric_usd = metric_sum(metrics, "llm_router_cost_usd_total") + extra_metric_usd
        assert same_money(result.metric_usd, result.stored_usd), (result.metric_usd, result.stored_usd)
    return result


def metric_tokens_match(metrics: dict, stored: Stored, extra: dict | None = None) -> None:
    """llm_router_tokens_total equals the stored charges' tokens, input and output."""
    for kind, attribute in (("input", "input_tokens"), ("output", "output_tokens")):
        counted = metric_sum(metrics, "llm_router_tokens_total", type=kind)
        if extra is not None:
            counted += metric_sum(extra, "llm_router_tokens_total", type=kind)
        assert counted == sum(getattr(c, attribute) for c in stored.charges), kind


def record(case: str, fault: str, faults: int, result: Reconciliation, **extra) -> dict:
    figures = {
        "case": case, "fault": fault, "faults_injected": faults, "requests": result.requests,
        "answered": result.answered, "partial": result.partial, "rejected": result.rejected, "broken": result.broken,
        "usd_reconciled": round(result.stored_usd, 6), "metric_usd": result.metric_usd, "report_usd": result.report_usd,
        "lost": len(result.lost), "charged_not_delivered": result.charged_not_delivered,
        "not_charged_not_delivered": len(result.not_charged_not_delivered), **extra,
    }
    FIGURES.append(figures)
    out = REPO / "reports"
    out.mkdir(exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(FIGURES, indent=2) + "\n")
    return figures


def note(case: str, fault: str, faults: int, **extra) -> dict:
    """The figures of a case with no traffic to reconcile (the corrupt file at start)."""
    return record(case, fault, faults, Reconciliation(), **extra)


def summary_lines() -> list[str]:
    lines = []
    for f in FIGURES:
        extra = {k: v for k, v in f.items() if k not in {
            "case", "fault", "faults_injected", "requests", "answered", "partial", "rejected", "broken",
            "usd_reconciled", "metric_usd", "report_usd", "lost", "charged_not_delivered",
            "not_charged_not_delivered"}}
        lines.append(
            f"{f['case']}: {f['faults_injected']} fault(s), {f['requests']} requests "
            f"({f['answered']} answered, {f['partial']} partial, {f['rejected']} rejected, {f['broken']} broken), "
            f"${f['usd_reconciled']:.6f} reconciled"
            + (f" (report ${f['report_usd']:.6f})" if f["report_usd"] is not None else "")
            + f", lost {f['lost']}, broken and not charged {f['not_charged_not_delivered']}"
            + f", charged-not-delivered {len(f['charged_not_delivered'])}"
            + (f" {f['charged_not_delivered']}" if f["charged_not_delivered"] else "")
            + (f"; {json.dumps(extra)}" if extra else ""))
    return lines


# --- Prometheus, for the report's figure -----------------------------------------------------


def start_prometheus(tmp: Path, target_port: int):
    """Real Prometheus scraping the router's metrics port every second, as job llm-router."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "config"))
    from toolbox import tool
    from conftest import LiveProcess

    port = free_port()
    directory = tmp / "prometheus"
    directory.mkdir()
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
              "scrape_configs": [{"job_name": "llm-router",
                                  "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}]}
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = LiveProcess(tmp, [
        str(tool("prometheus")), f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
    ], port, ready_path="/-/ready", name="prometheus")
    return prometheus.start()


def prometheus_cost(prometheus) -> float | None:
    result = requests.get(f"{prometheus.url}/api/v1/query",
                          params={"query": 'sum(llm_router_cost_usd_total{job="llm-router"})'}, timeout=5).json()
    samples = result["data"]["result"]
    return float(samples[0]["value"][1]) if samples else None


def report_cost(prometheus, start: float, expected: float, timeout: float = 30) -> float:
    """`llm-router report --format json` over [start, now], once Prometheus scraped the
    router's final figure; returns the report's total cost."""
    import sys

    deadline = time.monotonic() + timeout
    while not same_money(prometheus_cost(prometheus) or 0.0, expected):
        assert time.monotonic() < deadline, f"Prometheus never scraped ${expected}: {prometheus_cost(prometheus)}"
        time.sleep(0.25)
    end = time.time()
    done = subprocess.run([sys.executable, "-m", "llm_router.cli", "report", "--format", "json", "--top", "0",
                           "--from", f"{start:.3f}", "--to", f"{end:.3f}", "--prometheus-url", prometheus.url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["cost_total"]["cost_usd"]


# --- fixtures (imported by the test modules) ------------------------------------------------


@pytest.fixture
def chaos_router(tmp_path):
    """Factory: chaos_router(workers, config, env) starts a ChaosRouter, stopped after the test."""
    started: list[ChaosRouter] = []

    def start(workers: int, config: dict, env: dict[str, str] | None = None) -> ChaosRouter:
        router = ChaosRouter(tmp_path, workers, config, env)
        started.append(router)
        return router.start(timeout=60)

    yield start
    for router in started:
        router.stop()
