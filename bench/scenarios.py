"""Scenarios: the router (real gunicorn) in front of the fake upstream (bench/upstream.py, a
process of its own), next to "direct" (wrk straight to the upstream: the ceiling) and, with
`--peers`, LiteLLM's proxy on the same upstream.

Every target runs the same cells (clients x streaming or not x answer time) with wrk in a
closed loop; the targets are interleaved cell by cell, their order rotating every round, so
drift in the machine's load hits all of them alike. Each target stays up across the cells of
a run; after each cell the harness waits for the upstream to have nothing in flight and
restarts the target when it does not drain (a router still working through its backlog
would otherwise steal the next cell's CPU).
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import load, procs
from .router import quiet_config, start_router
from .upstream import UpstreamProcess

# Answer kinds: the model name the upstream reads its behaviour from, and the answer time.
ANSWERS = {"500ms": ("ok", 0.5), "5s": ("slow-5000", 5.0), "50ms": ("slow-50", 0.05)}
TENANT = "bench"
TENANT_KEY = "sk-bench-scenarios"
# Metrics and the JSON access log on, traces off: "with metrics and logs on" in the targets.
ROUTER_ENV = {"LLM_ROUTER_METRICS": "on", "LLM_ROUTER_LOGS": "on", "LLM_ROUTER_TRACES": "off",
              "OTEL_TRACES_EXPORTER": "none", "LLM_ROUTER_GRACEFUL_TIMEOUT": "5"}
DEFAULT_ROUTER_CONFIGS = ["default:", "gthread-8:LLM_ROUTER_WORKER_CLASS=gthread,LLM_ROUTER_THREADS=8"]


@dataclass(frozen=True)
class Cell:
    group: str  # "latency" (one client, 50 ms answers), "matrix" (500 ms), "long" (5 s streams)
    clients: int
    stream: bool
    answer: str  # a key of ANSWERS
    seconds: int

    @property
    def key(self) -> str:
        return f"{self.group}/{self.answer}/{'stream' if self.stream else 'plain'}/{self.clients}"

    @property
    def delay(self) -> float:
        return ANSWERS[self.answer][1]


MATRIX_CLIENTS = (1, 8, 128, 512, 2000)
MATRIX_SECONDS = {1: 4, 8: 5, 128: 6, 512: 8, 2000: 10}


def cells(quick: bool) -> list[Cell]:
    """The scenario matrix (see docs/performance.md, "Scenarios")."""
    if quick:
        return [Cell("latency", 1, False, "50ms", 3), Cell("matrix", 8, False, "500ms", 3),
                Cell("matrix", 8, True, "500ms", 3), Cell("matrix", 128, True, "500ms", 3)]
    out = [Cell("latency", 1, False, "50ms", 8), Cell("latency", 1, True, "50ms", 8)]
    for clients in MATRIX_CLIENTS:
        for stream in (False, True):
            out.append(Cell("matrix", clients, stream, "500ms", MATRIX_SECONDS[clients]))
    out += [Cell("long", 512, True, "5s", 16), Cell("long", 2000, True, "5s", 16)]
    return out


def scenario_config(upstream_base_url: str) -> dict:
    """The shipped config with one model per answer kind on the fake upstream, a tenant with
    a key (required), no retries, no cache, and a limit the load never reaches."""
    data = quiet_config()
    data["models"] = [
        {"id": f"fake-{kind}", "provider": "openai", "base_url": upstream_base_url, "upstream_model": upstream_model,
         "price": {"input_per_1k": 0.001, "output_per_1k": 0.002}, "quality": 0.8, "timeout_seconds": 60,
         "max_concurrency": 4096}
        for kind, (upstream_model, _) in ANSWERS.items()
    ]
    data["tenants"] = [{"id": TENANT, "monthly_budget_usd": 1_000_000_000, "api_keys": [TENANT_KEY]}]
    data["routing"].update(retries=0, max_backends=1)
    data["cache"]["enabled"] = False
    data["auth"] = {"allow_anonymous": False, "require_api_key": True}
    # Probes once at start, not during a cell (their connections would count as new ones).
    data["health_probes"] = {"enabled": True, "interval_seconds": 3600, "timeout_seconds": 5}
    return data


def parse_router_config(spec: str) -> tuple[str, dict[str, str]]:
    """"name:VAR=value,VAR=value" (or "name:" for the router's defaults)."""
    name, _, rest = spec.partition(":")
    env = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, _, value = item.partition("=")
        env[key.strip()] = value.strip()
    if not name:
        raise ValueError(f"a router configuration needs a name: {spec!r}")
    return name, env


# --- targets -------------------------------------------------------------------------------


class Direct:
    """wrk straight to the upstream: the ceiling every router is measured against."""

    kind = "direct"
    restartable = False

    def __init__(self, upstream: UpstreamProcess) -> None:
        self.name = "direct"
        self.upstream = upstream
        self.url, self.key = upstream.url, ""
        self.description = "wrk straight to the fake upstream (no router): the ceiling"

    def model(self, answer: str) -> str:
        return ANSWERS[answer][0]

    def start(self) -> None:
        pass

    def stop(self, fast: bool = False) -> None:
        pass

    def root(self) -> int:
        return self.upstream.pid

    def pids(self) -> list[int]:
        return [self.upstream.pid]

    def worker_pids(self) -> list[int]:
        return [self.upstream.pid]


class RouterTarget:
    kind = "router"
    restartable = True

    def __init__(self, name: str, env: dict[str, str], work: Path, upstream: UpstreamProcess, workers: int = 2) -> None:
        # LLM_ROUTER_WORKERS in a configuration sets the worker count (the harness waits for
        # that many workers, and uses the multiprocess metrics directory with more than one).
        env = dict(env)
        workers = int(env.pop("LLM_ROUTER_WORKERS", workers))
        self.name, self.extra_env, self.work, self.workers = name, env, work, workers
        self.config = scenario_config(upstream.base_url)
        self.router = None
        self.starts = 0
        self.key = TENANT_KEY
        shown = ", ".join(f"`{k}={v}`" for k, v in env.items()) or "no worker variables set"
        self.description = (f"our router, {workers} worker{'s' if workers != 1 else ''}, {shown}; metrics and logs "
                            "on, traces off")

    def model(self, answer: str) -> str:
        return f"fake-{answer}"

    def stopped(self) -> bool:
        return self.router is None

    def start(self) -> None:
        if self.router is None:
            self.starts += 1
            self.router = start_router(self.work, f"scn-{self.name}-{self.starts}", self.config,
                                       {**ROUTER_ENV, **self.extra_env}, workers=self.workers, threads=None)
            self.url = self.router.url
            self.worker_class = self.router.worker_class()

    def stop(self, fast: bool = False) -> None:
        if self.router is not None:
            # SIGQUIT: gunicorn's quick shutdown, for a router dropped with a backlog.
            self.router.stop(timeout=20, sig=signal.SIGQUIT if fast else signal.SIGTERM)
            self.router = None

    def root(self) -> int:
        return self.router.process.pid

    def pids(self) -> list[int]:
        return procs.tree(self.router.process.pid) if self.router else []

    def worker_pids(self) -> list[int]:
        return self.router.worker_pids()


class PeerTarget:
    kind = "peer"
    restartable = True

    def __init__(self, work: Path, upstream: UpstreamProcess, workers: int = 2) -> None:
        from .peers import LITELLM_VERSION, LiteLLM

        self.name = "litellm"
        self._factory = lambda: LiteLLM(work, upstream.base_url,
                                        {f"fake-{kind}": m for kind, (m, _) in ANSWERS.items()}, workers)
        self.proxy = None
        self.key = ""
        self.description = (f"LiteLLM proxy {LITELLM_VERSION}, `--num_workers {workers}`, no database, "
                            "production settings")

    def model(self, answer: str) -> str:
        return f"fake-{answer}"

    def stopped(self) -> bool:
        return self.proxy is None

    def start(self) -> None:
        if self.proxy is None:
            self.proxy = self._factory().start()
            self.url, self.key = self.proxy.url, self.proxy.key

    def stop(self, fast: bool = False) -> None:
        if self.proxy is not None:
            self.proxy.stop(timeout=5 if fast else 20)
            self.proxy = None

    def root(self) -> int:
        return self.proxy.process.pid

    def pids(self) -> list[int]:
        return self.proxy.pids() if self.proxy else []

    def worker_pids(self) -> list[int]:
        return self.proxy.worker_pids()


# --- one cell ------------------------------------------------------------------------------


IDLE_BEFORE_FIRST_REQUEST_S = 4.0


def measure(target, cell: Cell, upstream: UpstreamProcess) -> dict:
    """One wrk run of `cell` against `target`, with the costs read around it."""
    model = target.model(cell.answer)
    # Spread the first requests over the answer time, but under the servers' keep-alive idle
    # timeout (5 s for gunicorn here and for uvicorn): a connection left idle longer before its
    # first request is closed by the server, and wrk counts the next read as an error.
    jitter_ms = int(min(cell.delay, IDLE_BEFORE_FIRST_REQUEST_S) * 1000) if cell.clients > 1 else 0
    timeout_s = max(10, int(cell.delay * 4))
    mid: list[dict] = []
    timer = threading.Timer(cell.seconds / 2, lambda: mid.append(upstream.stats()))
    upstream.reset()  # max_in_flight from here: how many calls the target held at once
    up0 = upstream.stats()
    cpu0, busy0 = procs.cpu_by_pid(target.pids()), procs.machine_busy_seconds()
    timer.start()
    with procs.PeakRss(target.root(), target.worker_pids) as rss:
        result = load.run_wrk_openai(target.url, cell.clients, cell.seconds, model, cell.stream, target.key,
                                     timeout_s=timeout_s, jitter_ms=jitter_ms)
    timer.cancel()
    cpu_s = procs.cpu_delta(cpu0, procs.cpu_by_pid(target.pids()))
    busy1, up1 = procs.machine_busy_seconds(), upstream.stats()
    upstream_cpu = up1["cpu_seconds"] - up0["cpu_seconds"]
    requests = result["requests"] or float("nan")  # nothing answered: no per-request figure
    if not result["requests"]:
        result["p50_us"] = result["p99_us"] = float("nan")
    accepted = up1["connections_accepted"] - up0["connections_accepted"]
    chats = up1["chat_requests"] - up0["chat_requests"]
    result.update({
        "target": target.name, "cell": cell.key, "model": model, "jitter_ms": jitter_ms, "timeout_s": timeout_s,
        "cpu_s": cpu_s, "cpu_us_per_request": cpu_s / requests * 1e6,
        "upstream_cpu_us_per_request": upstream_cpu / requests * 1e6,
        "wrk_cpu_us_per_request": result["wrk_cpu_s"] / requests * 1e6,
        "machine_busy_s": busy1 - busy0,
        "upstream_requests": chats, "upstream_connections": accepted,
        "new_connections_per_request": accepted / chats if chats else float("nan"),
        "rss_worker_max_mib": rss.per_process, "rss_total_mib": rss.total,
        "upstream_max_in_flight": up1["max_in_flight"],
        "upstream_cancelled": (up1["streams_cancelled"] - up0["streams_cancelled"])
        + (up1["requests_cancelled"] - up0["requests_cancelled"]),
    })
    if mid:
        half_accepted = up1["connections_accepted"] - mid[0]["connections_accepted"]
        half_chats = up1["chat_requests"] - mid[0]["chat_requests"]
        result["steady_connections_per_request"] = half_accepted / half_chats if half_chats else float("nan")
    else:
        result["steady_connections_per_request"] = float("nan")
    # Whatever else used the CPU meanwhile (the other engineers' work, idle targets, this harness).
    own = result["cpu_s"] + (upstream_cpu if target.kind != "direct" else 0) + result["wrk_cpu_s"]
    result["other_cpu_s"] = max(0.0, result["machine_busy_s"] - own)
    return result


def settle(upstream: UpstreamProcess, quiet: float = 1.0, timeout: float = 15) -> None:
    """Wait until nothing reaches the upstream for `quiet` seconds (a target that just
    started probes it: those connections must not count in the first cell)."""
    deadline = time.monotonic() + timeout
    last = upstream.stats()["requests"]
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = upstream.stats()["requests"]
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet:
            return


def drain(target, upstream: UpstreamProcess, cell: Cell, quiet: float = 0.5,
          idle_cores: float = 0.15) -> tuple[bool, float]:
    """Wait until, for `quiet` seconds, the upstream has nothing in flight, no new call arrives
    and the target's processes use under `idle_cores` of CPU (the target finished or dropped
    what wrk left behind). False when that does not happen within the answer time + 1.5 s: a
    target still working through a backlog (which may not have reached the upstream yet)."""
    started = time.monotonic()
    deadline = started + cell.delay + 1.5
    last, quiet_since, cpu_then = -1, None, {}
    while time.monotonic() < deadline:
        stats = upstream.stats()
        now = time.monotonic()
        if stats["in_flight"] == 0 and stats["chat_requests"] == last:
            if quiet_since is None:
                quiet_since, cpu_then = now, procs.cpu_by_pid(target.pids())
            elif now - quiet_since >= quiet:
                busy = procs.cpu_delta(cpu_then, procs.cpu_by_pid(target.pids())) / (now - quiet_since)
                if busy < idle_cores:
                    return True, now - started
                quiet_since, cpu_then = now, procs.cpu_by_pid(target.pids())
        else:
            last, quiet_since = stats["chat_requests"], None
        time.sleep(0.1)
    return False, time.monotonic() - started


# --- the whole run -------------------------------------------------------------------------


def run(args, work: Path, log) -> dict:
    plan = cells(args.quick)
    if getattr(args, "cells", None):
        plan = [c for c in plan if any(pattern in c.key for pattern in args.cells)]
        if not plan:
            raise SystemExit(f"no scenario cell matches {args.cells}: {[c.key for c in cells(args.quick)]}")
    upstream = UpstreamProcess(delay=ANSWERS["500ms"][1], events=args.events, log=work / "upstream.log").start()
    targets: list = [Direct(upstream)]
    try:
        for spec in args.router_configs:
            name, env = parse_router_config(spec)
            targets.append(RouterTarget(name, env, work, upstream))
        if args.peers:
            targets.append(PeerTarget(work, upstream))
        runs: dict[str, dict[str, list[dict]]] = {t.name: {c.key: [] for c in plan} for t in targets}
        failures: dict[str, str] = {}
        restarts: dict[str, int] = {t.name: 0 for t in targets}
        for target in targets:
            log(f"scenarios: starting {target.name}")
            try:
                target.start()
            except Exception as error:  # noqa: BLE001 - reported, the others still run
                failures[target.name] = str(error)[-2000:]
                log(f"scenarios: {target.name} did not start: {str(error)[:300]}")
        settle(upstream)
        live = [t for t in targets if t.name not in failures]
        for rnd in range(1, args.scenario_rounds + 1):
            shift = (rnd - 1) % len(live)
            order = live[shift:] + live[:shift]
            for cell in plan:
                for target in order:
                    if target.name in failures:
                        continue
                    try:
                        if getattr(target, "stopped", lambda: False)():
                            target.start()  # after a restart
                            settle(upstream)
                        result = measure(target, cell, upstream)
                    except Exception as error:  # noqa: BLE001
                        failures[target.name] = f"{cell.key}: {error}"[-2000:]
                        log(f"scenarios: {target.name} failed at {cell.key}: {str(error)[:300]}")
                        target.stop()
                        continue
                    drained, waited = drain(target, upstream, cell)
                    result.update(round=rnd, drained=drained, drain_s=waited)
                    if not drained and target.restartable:
                        restarts[target.name] += 1
                        target.stop(fast=True)
                        result["restarted"] = True
                        drain(target, upstream, cell)
                    runs[target.name][cell.key].append(result)
                    log(f"round {rnd} {cell.key:26s} {target.name:10s} {result['ok_rps']:8.1f} ok/s  "
                        f"p50 {result['p50_us'] / 1000:7.0f} ms  p99 {result['p99_us'] / 1000:7.0f} ms  "
                        f"err {result['errors']}+{result['incomplete']}  cpu {result['cpu_us_per_request']:6.0f} µs/req  "
                        f"conn/req {result['new_connections_per_request']:.3f}"
                        + ("" if drained else f"  (not drained after {waited:.1f}s: restarted)"))
        return {
            "cells": [asdict(c) | {"key": c.key, "delay": c.delay} for c in plan],
            "targets": [{"name": t.name, "kind": t.kind, "description": t.description,
                         "env": getattr(t, "extra_env", {}), "worker_class": getattr(t, "worker_class", None)}
                        for t in targets],
            "runs": runs, "failures": failures, "restarts": restarts, "rounds": args.scenario_rounds,
            "upstream": {"delay": ANSWERS["500ms"][1], "events": args.events, "answers": ANSWERS},
            "router_env": ROUTER_ENV,
        }
    finally:
        for target in targets:
            try:
                target.stop()
            except Exception:  # noqa: BLE001 - stop the others whatever happens
                pass
        upstream.stop()


# --- summaries the report uses ---------------------------------------------------------------


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def summary(scn: dict) -> dict[str, dict[str, dict]]:
    """target -> cell key -> medians over rounds (ratios to direct computed within a round)."""
    direct = scn["runs"].get("direct", {})
    out: dict[str, dict[str, dict]] = {}
    for target, by_cell in scn["runs"].items():
        out[target] = {}
        for key, runs in by_cell.items():
            if not runs:
                continue
            base = {r["round"]: r for r in direct.get(key, [])}
            ratios = [r["ok_rps"] / base[r["round"]]["ok_rps"] for r in runs
                      if r["round"] in base and base[r["round"]]["ok_rps"] > 0]
            p50_added = [(r["p50_us"] - base[r["round"]]["p50_us"]) / 1e3 for r in runs if r["round"] in base]
            p99_added = [(r["p99_us"] - base[r["round"]]["p99_us"]) / 1e3 for r in runs if r["round"] in base]
            out[target][key] = {
                "rounds": len(runs),
                "ok_rps": _median([r["ok_rps"] for r in runs]),
                "ok_rps_min": min(r["ok_rps"] for r in runs), "ok_rps_max": max(r["ok_rps"] for r in runs),
                "ratio": _median(ratios), "ratio_min": min(ratios, default=float("nan")),
                "ratio_max": max(ratios, default=float("nan")),
                "p50_ms": _median([r["p50_us"] / 1e3 for r in runs]),
                "p99_ms": _median([r["p99_us"] / 1e3 for r in runs]),
                "p50_added_ms": _median(p50_added), "p99_added_ms": _median(p99_added),
                "requests": sum(r["requests"] for r in runs),
                "connect": sum(r["connect"] for r in runs), "read": sum(r["read"] for r in runs),
                "write": sum(r["write"] for r in runs), "timeout": sum(r["timeout"] for r in runs),
                "status": sum(r["status"] for r in runs), "incomplete": sum(r["incomplete"] for r in runs),
                "cpu_us": _median([r["cpu_us_per_request"] for r in runs]),
                "upstream_cpu_us": _median([r["upstream_cpu_us_per_request"] for r in runs]),
                "wrk_cpu_us": _median([r["wrk_cpu_us_per_request"] for r in runs]),
                "conn_per_req": _median([r["new_connections_per_request"] for r in runs]),
                "steady_conn_per_req": _median([r["steady_connections_per_request"] for r in runs]),
                "max_in_flight": min(r.get("upstream_max_in_flight", 0) for r in runs),
                "rss_worker_mib": max(r["rss_worker_max_mib"] for r in runs),
                "rss_total_mib": max(r["rss_total_mib"] for r in runs),
                "other_cpu_share": _median([r["other_cpu_s"] / (r["duration_us"] / 1e6) for r in runs]),
                "restarted": sum(1 for r in runs if r.get("restarted")),
            }
            s = out[target][key]
            s["errors"] = s["connect"] + s["read"] + s["write"] + s["timeout"] + s["status"] + s["incomplete"]
    return out
