"""Three router replicas on one PostgreSQL behind the project's nginx balancer.

Real processes on 127.0.0.1: a throw-away PostgreSQL cluster (tests/pg.py), three
`llm-router serve` (gunicorn, two gevent workers each, LLM_ROUTER_STATE_URL on that
cluster, each its own LLM_ROUTER_STATE_DIR for its journals) and Debian's nginx running
nginx/router-lb.conf as tests/nginx_lb.py renders it. Clients are tenants with their API
keys; every request carries an X-Request-ID, so each charge in PostgreSQL is matched to
what its client received.

The money rule, checked after each phase: the spend PostgreSQL holds per tenant equals the
sum of the costs the clients received (from each answer's usage and the configured prices),
to the cent, plus the charges explicitly listed as journaled but not delivered (streams cut
by a replica's death, charged for what they produced); each request is charged at most
once, and the spend totals equal the sum of the charge rows.

Phases (one deployment, in order; each test's assertions hold on their own):
- a store call waiting inside PostgreSQL (the test holds a lock) does not hold up the
  gevent workers: requests are answered meanwhile;
- 900 requests across tenants through nginx: exact spend, every replica served, each
  budget threshold crossed exactly once across all replicas' logs;
- feedback for an answer served by another replica is accepted (and 409 on a third);
- a tenant whose budget was spent on one replica gets 402 from every replica; a fault set
  through one replica reaches the others;
- PostgreSQL stopped for 10 s under load (pg_ctl stop -m fast, then start): every request
  served, nothing lost once it returns, state_store_failing/recovered logged once per
  worker, llm_router_state_errors_total moved;
- a replica SIGKILLed (master and workers) with streams in flight: those streams end at
  nginx promptly (no hang), new requests go to the others, its journals hold the
  undelivered charges, and restarting it on the same state directory replays them: each
  stored once.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests

import nginx_lb
import pg
from llm_router import state_pg
from llm_router.ledger import Ledger
from conftest import LiveProcess, LiveRouter, SHIPPED_KEYS, chat_body, config_dict, free_port, metric_sum, \
    prices, quiet_models

pytestmark = pytest.mark.live

ADMIN_TOKEN = "replicas-admin-token"
TENANTS = ["search", "support", "research", "internal-tools"]
TINY_KEY = "sk-test-tiny"
MODELS = ["sim-fast", "sim-mini", "sim-balanced"]
THRESHOLDS = [0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0]
BUDGET_USD = 0.5  # each tenant of TENANTS: the phases spend roughly a tenth to a half of it
TINY_BUDGET_USD = 0.002


def replica_config() -> dict:
    data = quiet_models(config_dict())
    # Streams long enough to be in flight when a replica is killed (about 2 s at the time
    # scale below).
    data["models"].append({
        "id": "sim-slow", "provider": "simulated", "price": {"input_per_1k": 0.002, "output_per_1k": 0.008},
        "quality": 0.5, "timeout_seconds": 60, "max_concurrency": 64,
        "simulation": {"time_to_first_token": {"median_ms": 100, "p95_ms": 150}, "tokens_per_second": 10,
                       "output_tokens_min": 150, "output_tokens_max": 200, "error_rate": 0.0,
                       "content_filter_rate": 0.0},
    })
    for tenant in data["tenants"]:
        tenant["monthly_budget_usd"] = BUDGET_USD
    data["tenants"].append({"id": "tiny", "monthly_budget_usd": TINY_BUDGET_USD, "api_keys": [TINY_KEY]})
    data["budgets"] = {"on_exhausted": "reject", "alert_thresholds": THRESHOLDS}
    data["health_probes"] = {"enabled": False}
    data["cache"]["enabled"] = False  # every answer is a charge
    return data


PRICES = prices(replica_config())


def cost(model: str, usage: dict) -> float:
    """What the router charges for an answer: its usage at the configured prices."""
    price_in, price_out = PRICES[model]
    return usage["prompt_tokens"] / 1000 * price_in + usage["completion_tokens"] / 1000 * price_out


def headers(tenant: str, request_id: str) -> dict:
    key = TINY_KEY if tenant == "tiny" else SHIPPED_KEYS[tenant]
    return {"Authorization": f"Bearer {key}", "X-Request-ID": request_id}


@dataclass
class Deployment:
    cluster: pg.Cluster
    url: str
    database: str
    replicas: list[LiveRouter]
    nginx: subprocess.Popen
    nginx_url: str
    nginx_log: Path
    tmp: Path
    received: dict[str, tuple[str, float]] = field(default_factory=dict)  # request id -> (tenant, cost)
    undelivered: set[str] = field(default_factory=set)  # request ids journaled but not delivered
    sent: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def query(self, sql: str, params=()) -> list[tuple]:
        with psycopg.connect(self.cluster.admin_dsn(self.database), autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def chat(self, base: str, tenant: str, request_id: str, model: str, session=None,
             timeout: float = 30) -> requests.Response:
        """A non-streaming request; records what the client received."""
        with self.lock:
            self.sent.add(request_id)
        body = chat_body(model=model, content=f"question {request_id}")
        response = (session or requests).post(f"{base}/v1/chat/completions", json=body,
                                              headers=headers(tenant, request_id), timeout=timeout)
        if response.status_code == 200:
            answer = response.json()
            with self.lock:
                self.received[request_id] = (tenant, cost(answer["model"], answer["usage"]))
        return response

    def events(self, name: str, replicas=None) -> list[dict]:
        found = []
        for replica in replicas or self.all_logs():
            for line in replica.read_text(errors="replace").splitlines():
                if line.startswith("{") and f'"{name}"' in line:
                    record = json.loads(line)
                    if record.get("event") == name:
                        found.append(record)
        return found

    def all_logs(self) -> list[Path]:
        return sorted(self.tmp.glob("router-*.log"))

    def expected(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for tenant, usd in self.received.values():
            totals[tenant] = totals.get(tenant, 0.0) + usd
        for request_id, tenant, usd in self.query("SELECT request_id, tenant, cost_usd FROM charges"):
            if request_id in self.undelivered:
                totals[tenant] = totals.get(tenant, 0.0) + usd
        return totals

    def stored(self) -> dict[str, float]:
        return {tenant: usd for tenant, usd in self.query("SELECT tenant, sum(usd) FROM spend GROUP BY tenant")}

    def reconcile(self, timeout: float = 60) -> dict[str, float]:
        """Wait until PostgreSQL holds exactly what the clients received (bounded), then
        assert it, with the per-request rules; returns the stored totals."""
        deadline = time.monotonic() + timeout
        while True:
            stored, expected = self.stored(), self.expected()
            charged = {row[0] for row in self.query("SELECT request_id FROM charges")}
            if (same(stored, expected) and charged >= set(self.received)) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert cents(stored) == cents(expected), f"stored {stored} != received {expected}"
        assert same(stored, expected), f"stored {stored} != received {expected}"
        rows = self.query("SELECT request_id, tenant, cost_usd FROM charges")
        by_request: dict[str, list] = {}
        for request_id, tenant, usd in rows:
            by_request.setdefault(request_id, []).append((tenant, usd))
        twice = {r: c for r, c in by_request.items() if len(c) > 1}
        assert not twice, f"charged more than once: {twice}"
        assert set(by_request) <= self.sent, f"charges for requests nobody sent: {set(by_request) - self.sent}"
        for request_id, (tenant, usd) in self.received.items():
            assert request_id in by_request, f"{request_id} answered but not charged"
            assert by_request[request_id][0][0] == tenant
            assert by_request[request_id][0][1] == pytest.approx(usd, rel=1e-12, abs=1e-15), request_id
        per_row: dict[str, float] = {}
        for _, tenant, usd in rows:
            per_row[tenant] = per_row.get(tenant, 0.0) + usd
        assert same(per_row, stored), "spend totals are the sum of the charge rows"
        return stored


def cents(totals: dict[str, float]) -> dict[str, int]:
    return {tenant: round(usd * 100) for tenant, usd in totals.items() if usd}


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal sums of the same charges, added in another order (far finer than a cent)."""
    return set(a) == set(b) and all(abs(a[t] - b[t]) < 1e-9 for t in a)


def start_nginx(tmp: Path, servers: list[str]) -> tuple[subprocess.Popen, str, Path]:
    binary = "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    if binary is None:
        pytest.skip("no nginx binary: install Debian's nginx (`apt-get install nginx`; .ci/run does)")
    port = free_port()
    folder = tmp / "nginx"
    folder.mkdir()
    config = folder / "router-lb.conf"
    config.write_text(nginx_lb.render(servers, listen=f"127.0.0.1:{port}"))
    check = subprocess.run([binary, "-t", "-q", "-p", str(folder), "-c", str(config),
                            "-g", f"pid {folder}/nginx.pid; error_log stderr;"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = folder / "access.log"
    process = subprocess.Popen([binary, "-p", str(folder), "-c", str(config),
                                "-g", f"daemon off; pid {folder}/nginx.pid; error_log stderr;"],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(f"{url}/healthz", timeout=2)
            return process, url, log
        except requests.ConnectionError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    cluster = pg.start_cluster()
    replicas: list[LiveRouter] = []
    nginx = None
    try:
        url = cluster.new_database()
        env = {
            **cluster.client_env(),
            "LLM_ROUTER_STATE_URL": url,
            "LLM_ROUTER_ADMIN_TOKEN": ADMIN_TOKEN,
            "LLM_ROUTER_SIM_TIME_SCALE": "0.1",
        }
        for _ in range(3):
            replica = LiveRouter(tmp, 2, replica_config(), env)
            replicas.append(replica)
        # Started together: the schema is migrated once, under the advisory lock.
        threads = [threading.Thread(target=r.start, kwargs={"timeout": 90}) for r in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for replica in replicas:
            assert requests.get(f"{replica.url}/readyz", timeout=10).status_code == 200, replica.log_path.read_text()
        nginx, nginx_url, nginx_log = start_nginx(tmp, [f"127.0.0.1:{r.port}" for r in replicas])
        yield Deployment(cluster, url, url.rsplit("/", 1)[1], replicas, nginx, nginx_url, nginx_log, tmp)
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        for replica in replicas:
            replica.stop()
        cluster.destroy()


def load(deployment: Deployment, prefix: str, count: int, base: str | None = None, clients: int = 12,
         until: threading.Event | None = None) -> dict[int, int]:
    """``count`` requests (or until ``until`` is set) across tenants and models from
    ``clients`` threads, each with a kept-alive session; returns {status: count}."""
    statuses: dict[int, int] = {}
    counter = iter(range(10**9))
    lock = threading.Lock()

    def client(worker: int) -> None:
        session = requests.Session()
        while True:
            with lock:
                i = next(counter)
            if (until is None and i >= count) or (until is not None and until.is_set()):
                return
            tenant, model = TENANTS[i % len(TENANTS)], MODELS[(i // len(TENANTS)) % len(MODELS)]
            try:
                status = deployment.chat(base or deployment.nginx_url, tenant, f"{prefix}-{i}", model,
                                         session).status_code
            except requests.RequestException:
                status = -1
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return statuses


# --- a store call waiting does not hold up a gevent worker ------------------------------------

def test_a_store_call_waiting_in_postgres_does_not_hold_up_the_workers(deployment):
    replica = deployment.replicas[0]
    with psycopg.connect(deployment.cluster.admin_dsn(deployment.database)) as admin:
        admin.execute("LOCK TABLE spend IN ACCESS EXCLUSIVE MODE")  # until this block ends

        def waiting() -> int:
            admin.execute("SELECT pg_stat_clear_snapshot()")  # a fresh look, inside this transaction
            return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'llm-router' "
                                 "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()").fetchone()[0]

        deadline = time.monotonic() + 10
        while waiting() < 2 and time.monotonic() < deadline:  # every worker's sync loop reads the totals
            time.sleep(0.05)
        assert waiting() >= 2, "both workers of the replica should be waiting on the lock"
        statuses = load(deployment, "locked", 20, base=replica.url, clients=4)
        assert statuses == {200: 20}
        assert requests.get(f"{replica.url}/healthz", timeout=5).status_code == 200
        assert waiting() >= 2, "the answers came while the store calls were still waiting in PostgreSQL"
    deployment.reconcile()
    # Six workers started at once on an empty database: one of them created the schema.
    assert [e["to_version"] for e in deployment.events("state_schema_migrated")] == [state_pg.SCHEMA_VERSION]


# --- 900 requests ------------------------------------------------------------------------------

def test_900_requests_through_the_balancer_are_charged_exactly(deployment):
    statuses = load(deployment, "load", 900, clients=16)
    assert statuses == {200: 900}
    stored = deployment.reconcile()
    # nginx spread them over every replica.
    upstreams: dict[str, int] = {}
    for line in deployment.nginx_log.read_text().splitlines():
        if line.startswith("{") and '"/v1/chat/completions"' in line:
            record = json.loads(line)
            upstreams[record["upstream"]] = upstreams.get(record["upstream"], 0) + 1
    assert set(upstreams) == {f"127.0.0.1:{r.port}" for r in deployment.replicas}, upstreams
    # Each threshold a tenant's total passed was logged exactly once, by whichever replica
    # stored the batch that crossed it.
    crossed = [(e["tenant"], e["threshold"]) for e in deployment.events("budget_threshold_crossed")]
    for tenant in TENANTS:
        for threshold in THRESHOLDS:
            want = 1 if stored[tenant] >= threshold * BUDGET_USD else 0
            assert crossed.count((tenant, threshold)) == want, (tenant, threshold, stored[tenant])
    assert len(crossed) >= 2 * len(TENANTS), "the load should cross a few thresholds per tenant"
    print(f"\n900 requests: per replica {sorted(upstreams.values())}, stored ${sum(stored.values()):.6f}, "
          f"{len(crossed)} threshold crossings")


# --- feedback across replicas ------------------------------------------------------------------

def test_feedback_for_an_answer_served_by_another_replica(deployment):
    first, second, third = deployment.replicas
    assert deployment.chat(first.url, "search", "fb-1", "sim-fast").status_code == 200
    deadline = time.monotonic() + 10
    while not deployment.query("SELECT 1 FROM charges WHERE request_id = 'fb-1'") and time.monotonic() < deadline:
        time.sleep(0.05)
    body = {"response_id": "chatcmpl-fb-1", "thumbs": "up"}
    rated = requests.post(f"{second.url}/v1/feedback", json=body, headers=headers("search", "fb-rate"), timeout=10)
    assert rated.status_code == 201, rated.text
    again = requests.post(f"{third.url}/v1/feedback", json=body, headers=headers("search", "fb-again"), timeout=10)
    assert again.status_code == 409, again.text
    other = requests.post(f"{third.url}/v1/feedback", json=body, headers=headers("support", "fb-other"), timeout=10)
    assert other.status_code == 404, "another tenant's answer stays unknown"
    assert deployment.query("SELECT feedback_score FROM charges WHERE request_id = 'fb-1'") == [(1.0,)]
    deployment.reconcile()


# --- budgets and faults reach every replica ----------------------------------------------------

def test_a_spent_budget_is_402_on_every_replica_and_faults_reach_all(deployment):
    first = deployment.replicas[0]
    statuses = []
    for i in range(200):  # spent on the first replica only
        statuses.append(deployment.chat(first.url, "tiny", f"tiny-{i}", "sim-balanced").status_code)
        if statuses[-1] == 402:
            break
    assert statuses[-1] == 402 and set(statuses[:-1]) == {200}, statuses
    deployment.reconcile()
    assert deployment.stored()["tiny"] >= TINY_BUDGET_USD
    for replica in deployment.replicas:  # the other two never served this tenant
        deadline = time.monotonic() + 10
        while True:
            status = deployment.chat(replica.url, "tiny", f"tiny-at-{replica.port}-{time.monotonic_ns()}",
                                     "sim-fast").status_code
            if status == 402 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 402, f"replica {replica.port} still serves a spent budget"
    # A fault injected through one replica reaches the others through the store: their
    # requests to sim-coder fail over to its fallback, sim-frontier. (sim-coder serves
    # nothing else here, so its breaker does not matter.)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    injected = requests.post(f"{first.url}/admin/faults", headers=auth, timeout=10,
                             json={"model": "sim-coder", "error_rate": 1.0, "error_kind": "server_error",
                                   "duration_seconds": 60})
    assert injected.status_code == 201, injected.text
    try:
        for replica in deployment.replicas[1:]:
            deadline = time.monotonic() + 10
            while True:
                answer = deployment.chat(replica.url, "research", f"fault-{replica.port}-{time.monotonic_ns()}",
                                         "sim-coder")
                assert answer.status_code == 200, answer.text
                if answer.headers["X-Router-Model"] == "sim-frontier" or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert answer.headers["X-Router-Model"] == "sim-frontier", f"replica {replica.port} never saw the fault"
    finally:
        cleared = requests.delete(f"{first.url}/admin/faults", headers=auth, timeout=10)
        assert cleared.status_code == 200
    deployment.reconcile()


# --- PostgreSQL stopped under load ---------------------------------------------------------------

def state_errors(deployment: Deployment) -> float:
    return sum(metric_sum(r.scrape(), "llm_router_state_errors_total") for r in deployment.replicas)


def test_postgres_stopped_under_load_loses_nothing(deployment):
    errors_before = state_errors(deployment)
    failing_before = len(deployment.events("state_store_failing"))
    recovered_before = len(deployment.events("state_store_recovered"))
    stop = threading.Event()
    outcome: dict[int, int] = {}
    loader = threading.Thread(target=lambda: outcome.update(load(deployment, "outage", 0, clients=6, until=stop)))
    loader.start()
    try:
        time.sleep(1)
        deployment.cluster.stop("fast")
        served_before_outage = len(deployment.received)
        time.sleep(10)
        served_during_outage = len(deployment.received) - served_before_outage
        deployment.cluster.start()
        time.sleep(1)
    finally:
        stop.set()
        loader.join(60)
        if not deployment.cluster.running:
            deployment.cluster.start()
    assert set(outcome) == {200}, f"every request served while PostgreSQL was down: {outcome}"
    assert served_during_outage > 0
    deployment.reconcile(timeout=60)
    # Each worker (3 replicas x 2) logged the outage once and its end once. A worker that
    # served nothing during the outage failed only at its periodic refresh, and notices the
    # store is back at its next try, up to the ledger's longest back-off after the restart:
    # the money is reconciled by then, its log line may come a little later (bounded wait).
    workers = 2 * len(deployment.replicas)
    assert len(deployment.events("state_store_failing")) - failing_before == workers
    deadline = time.monotonic() + Ledger.MAX_BACKOFF_SECONDS + 10
    while (len(deployment.events("state_store_recovered")) - recovered_before < workers
           and time.monotonic() < deadline):
        time.sleep(0.25)
    assert len(deployment.events("state_store_recovered")) - recovered_before == workers
    assert len(deployment.events("state_store_failing")) - failing_before == workers
    errors = state_errors(deployment) - errors_before
    assert errors > 0
    print(f"\noutage: {sum(outcome.values())} requests, {served_during_outage} answered while PostgreSQL was down, "
          f"{errors:.0f} failed store operations counted")


# --- a replica killed ----------------------------------------------------------------------------



def stream(deployment: Deployment, request_id: str, tenant: str, opened: threading.Barrier) -> dict:
    """A streamed answer of sim-slow through nginx: signals the barrier after its first
    event; returns what the client got (complete with [DONE] and usage, or cut)."""
    body = chat_body(model="sim-slow", content=request_id, stream=True, stream_options={"include_usage": True})
    with deployment.lock:
        deployment.sent.add(request_id)
    started = time.monotonic()
    result = {"request_id": request_id, "done": False, "events": 0, "error": None}
    try:
        with requests.post(f"{deployment.nginx_url}/v1/chat/completions", json=body, stream=True, timeout=30,
                           headers=headers(tenant, request_id)) as response:
            result["status"] = response.status_code
            for line in response.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                result["events"] += 1
                if result["events"] == 1:
                    opened.wait(30)
                if line == b"data: [DONE]":
                    result["done"] = True
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result["model"], result["usage"] = chunk["model"], chunk["usage"]
    except (requests.RequestException, threading.BrokenBarrierError) as error:
        result["error"] = type(error).__name__
    result["seconds"] = time.monotonic() - started
    if result["done"] and "usage" in result:
        with deployment.lock:
            deployment.received[request_id] = (tenant, cost(result["model"], result["usage"]))
    return result


def test_a_replica_killed_mid_stream_fails_cleanly_and_its_journal_is_replayed(deployment):
    victim = deployment.replicas[2]
    streams = 9
    opened = threading.Barrier(streams + 1)
    with ThreadPoolExecutor(streams) as pool:
        futures = [pool.submit(stream, deployment, f"kill-{i}", TENANTS[i % len(TENANTS)], opened)
                   for i in range(streams)]
        opened.wait(30)  # every stream has its first event: all in flight
        assert len(victim.kill_all()) == 3  # the master and its 2 workers
        results = [f.result(timeout=60) for f in futures]
    cut = [r for r in results if not r["done"]]
    finished = [r for r in results if r["done"]]
    assert cut and finished, results
    assert all(r["seconds"] < 25 for r in cut), "a cut stream ends at nginx, it does not hang"
    assert all(r["events"] >= 1 for r in cut)
    # New requests go to the replicas left (nginx skips the dead one before sending).
    assert load(deployment, "after-kill", 30, clients=3) == {200: 30}
    # The victim's journals (one per worker) hold what it had not stored: the cut streams,
    # charged for the tokens they produced.
    from llm_router.ledger import read_journal

    journals = victim.journals()
    assert len(journals) == 2
    journaled = [entry.charge for path in journals for entry in read_journal(path.read_bytes())[1]]
    cut_ids = {r["request_id"] for r in cut}
    assert {c.request_id for c in journaled} >= cut_ids, "every cut stream is in the journal"
    stored_ids = {row[0] for row in deployment.query("SELECT charge_id FROM charges")}
    assert not stored_ids & {c.charge_id for c in journaled if c.request_id in cut_ids}, \
        "nothing of a cut stream reached PostgreSQL before the restart"
    with deployment.lock:
        deployment.undelivered |= cut_ids
    # The replica restarts on the same state directory and port: it replays its journals
    # before serving, each charge once.
    restarted = LiveProcess(deployment.tmp, victim.command, victim.port, victim.env, "/readyz",
                            name=f"router-restarted-{victim.port}")
    restarted.start(timeout=90)
    try:
        replayed = deployment.events("journal_replayed", [restarted.log_path])
        assert sum(e["charges"] for e in replayed) == len(journaled)
        assert not any(path.exists() for path in journals), "a replayed journal is removed"
        rows = deployment.query("SELECT charge_id, request_id, output_tokens FROM charges WHERE charge_id = ANY(%s)",
                                ([c.charge_id for c in journaled],))
        assert len(rows) == len(journaled), "every journaled charge stored, once"
        for charge_id, request_id, output_tokens in rows:
            if request_id in cut_ids:
                assert output_tokens > 0, "a cut stream is charged for the tokens it produced"
        assert load(deployment, "restarted", 12, base=restarted.url, clients=2) == {200: 12}
        stored = deployment.reconcile()
        print(f"\nkill: {len(cut)} streams cut ({max(r['seconds'] for r in cut):.1f}s at most), {len(finished)} "
              f"finished, {len(journaled)} journaled charges replayed; in all {len(deployment.received)} answers, "
              f"${sum(stored.values()):.6f} stored")
    finally:
        restarted.stop()
