#!/usr/bin/env python3
"""What one router replica asks of PostgreSQL, measured: write transactions, rows, WAL and
reads per second at a few request rates (docs/state-store.md quotes the table).

    .venv/bin/python scripts/measure-state-store.py [--seconds 20] [--rates 0,25,100,250]

Starts a throw-away PostgreSQL cluster with the server's defaults (fsync on; tests/pg.py,
Debian's postgresql server) and one `llm-router serve` with 2 gevent workers on it, sends
chat requests at each rate (simulated models, no delays, cache off so every request is a
charge, four tenants), and reads the router's own store metrics and PostgreSQL's
statistics before and after each step. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import psycopg  # noqa: E402
import requests  # noqa: E402

import pg  # noqa: E402
from conftest import LiveRouter, as_tenant, chat_body, config_dict, metric_sum, parse_metrics, quiet_models  # noqa: E402

TENANTS = ["search", "support", "research", "internal-tools"]


def router_counts(url: str) -> dict[str, float]:
    samples = parse_metrics(requests.get(f"{url}/metrics", timeout=10).text)
    name = "llm_router_state_operation_duration_seconds"
    counts = {op: metric_sum(samples, f"{name}_count", operation=op) for op in ("apply", "read_spend", "read_faults")}
    counts["apply_seconds"] = metric_sum(samples, f"{name}_sum", operation="apply")
    counts["answers"] = metric_sum(samples, "llm_router_chat_requests_total", code="200")
    return counts


def database_counts(cluster: pg.Cluster, database: str) -> dict[str, float]:
    with psycopg.connect(cluster.admin_dsn(database), autocommit=True) as conn:
        xacts = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]
        rows = dict(conn.execute("SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables "
                                 "WHERE relname IN ('charges', 'spend')").fetchall())
        wal = conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()[0]
    return {"xacts": xacts, "charge_rows": rows.get("charges", 0), "spend_rows": rows.get("spend", 0),
            "wal_bytes": float(wal)}


def drive(url: str, rate: float, seconds: float) -> int:
    """Open loop: requests started at ``rate`` per second from a few threads."""
    if rate <= 0:
        time.sleep(seconds)
        return 0
    threads, sent = 16, [0]
    lock = threading.Lock()
    start = time.monotonic()

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while True:
            due = start + i / rate
            if due - start >= seconds:
                return
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            session.post(f"{url}/v1/chat/completions", json=chat_body(model="sim-fast"),
                         headers=as_tenant(TENANTS[i % len(TENANTS)]), timeout=30)
            with lock:
                sent[0] += 1
            i += threads

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rates", default="0,25,100,250")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    os.environ.setdefault("LLM_ROUTER_SIM_TIME_SCALE", "0")
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")

    cluster = pg.Cluster.create(durable=True)
    cluster.start()
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-measure-"))
    router = None
    try:
        url = cluster.new_database()
        database = url.rsplit("/", 1)[1]
        config = quiet_models(config_dict())
        config["cache"]["enabled"] = False
        config["health_probes"] = {"enabled": False}
        router = LiveRouter(tmp, 2, config, {**cluster.client_env(), "LLM_ROUTER_STATE_URL": url}).start(timeout=60)
        drive(router.url, 20, 2)  # warm up: both workers connected, schema made
        time.sleep(1)
        print("| requests/s (sent) | write transactions/s | charge rows/s | spend rows/s | WAL kB/s "
              "| mean apply ms | reads/s |")
        print("|---|---|---|---|---|---|---|")
        for rate in rates:
            r0, d0, t0 = router_counts(router.url), database_counts(cluster, database), time.monotonic()
            drive(router.url, rate, args.seconds)
            time.sleep(0.2)  # the last batch
            r1, d1, t1 = router_counts(router.url), database_counts(cluster, database), time.monotonic()
            span = t1 - t0
            applies = r1["apply"] - r0["apply"]
            mean_ms = 1000 * (r1["apply_seconds"] - r0["apply_seconds"]) / applies if applies else 0.0
            reads = (r1["read_spend"] - r0["read_spend"]) + (r1["read_faults"] - r0["read_faults"])
            print(f"| {(r1['answers'] - r0['answers']) / span:.0f} | {applies / span:.1f} "
                  f"| {(d1['charge_rows'] - d0['charge_rows']) / span:.0f} "
                  f"| {(d1['spend_rows'] - d0['spend_rows']) / span:.1f} "
                  f"| {(d1['wal_bytes'] - d0['wal_bytes']) / span / 1024:.0f} | {mean_ms:.2f} | {reads / span:.1f} |")
        with psycopg.connect(cluster.admin_dsn(database), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE charges")
            rows, size = conn.execute("SELECT count(*), pg_total_relation_size('charges') FROM charges").fetchone()
        print(f"\ncharges: {rows} rows, {size / max(rows, 1):.0f} bytes per row with its indexes")
    finally:
        if router is not None:
            router.stop()
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
