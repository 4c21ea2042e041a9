"""`python -m bench`: run the suite and write the report (see bench/__init__.py)."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from . import load, report, scenarios
from .router import REPO, free_port, label_set_config, quiet_config, start_router
from .sink import TraceSink

CONFIGS = ["off", "metrics", "metrics+logs", "full", "full-sampled-10%", "full-collector-down"]
SECTIONS = ["telemetry", "overhead", "scrape", "scenarios"]


def telemetry_env(name: str, sink_url: str, dead_url: str) -> dict[str, str]:
    off = {"LLM_ROUTER_METRICS": "off", "LLM_ROUTER_LOGS": "off", "LLM_ROUTER_TRACES": "off",
           "OTEL_TRACES_EXPORTER": "none"}
    if name == "off":
        return off
    if name == "metrics":
        return {**off, "LLM_ROUTER_METRICS": "on"}
    if name == "metrics+logs":
        return {**off, "LLM_ROUTER_METRICS": "on", "LLM_ROUTER_LOGS": "on"}
    full = {"LLM_ROUTER_METRICS": "on", "LLM_ROUTER_LOGS": "on", "LLM_ROUTER_TRACES": "on",
            "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
            "OTEL_TRACES_SAMPLER": "always_on"}
    if name == "full":
        return full
    if name == "full-sampled-10%":
        return {**full, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    if name == "full-collector-down":
        return {**full, "OTEL_EXPORTER_OTLP_ENDPOINT": dead_url}
    raise ValueError(name)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def throughput(args, work: Path, sink: TraceSink) -> dict:
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for rnd in range(1, args.rounds + 1):
        for name in CONFIGS:
            env = telemetry_env(name, sink.url, dead_url)
            router = start_router(work, f"tp-{name.replace('%', 'pct').replace('+', '-')}-r{rnd}", quiet_config(), env,
                                  workers=2, threads=4)
            try:
                worker_class = router.worker_class()
                rss_start = router.worker_rss_mib()
                sink_before = sink.requests
                if args.warmup > 0:
                    load.run_wrk(router.url, args.warmup)
                cpu_before = router.cpu_seconds()
                result = load.run_wrk(router.url, args.duration)
                # CPU per request: the router's own cost, much steadier than throughput on a
                # machine whose neighbours (or the load client) take CPU away at random.
                result["cpu_us_per_request"] = (router.cpu_seconds() - cpu_before) / max(1, result["requests"]) * 1e6
                result["rss_start"], result["rss_end"] = rss_start, router.worker_rss_mib()
            finally:
                result_stop = router.stop()
            # After the stop: the workers flush their last spans on the way out.
            result["sink_requests"] = sink.requests - sink_before
            result["stop_s"] = result_stop
            result["round"] = rnd
            runs[name].append(result)
            log(f"round {rnd} {name:20s} {result['rps']:8.1f} req/s  {result['cpu_us_per_request']:6.0f} µs CPU/req  "
                f"failed {result['failed']}  stop {result_stop:.2f}s")
            if result["failed"]:
                # A refused request (a wrong key, a bad body) costs the router next to nothing:
                # the figures would measure the refusal, not the router.
                raise RuntimeError(f"{name}: {result['failed']} of {result['requests']} requests failed "
                                   "(bench/chat.lua's request no longer accepted?)")
    # Ratio to `off` within each round, then the median over rounds.
    for name in CONFIGS:
        for run, base in zip(runs[name], runs["off"]):
            run["ratio"] = run["rps"] / base["rps"] if base["rps"] else float("nan")
            # The throughput ratio the CPU cost implies: off's CPU per request over this one's.
            run["cpu_ratio"] = base["cpu_us_per_request"] / run["cpu_us_per_request"] if run["cpu_us_per_request"] else float("nan")
    return {"configs": CONFIGS, "runs": runs, "worker_class": worker_class, "command": runs["off"][0]["command"].replace(
        str(REPO) + "/", "").split(" http")[0] + " http://127.0.0.1:PORT/v1/chat/completions"}


def overhead(args, work: Path, sink: TraceSink) -> dict:
    env = telemetry_env("full", sink.url, "")
    router = start_router(work, "open-loop-full", quiet_config(), env, workers=2, threads=4)
    try:
        if args.warmup > 0:
            load.run_wrk(router.url, 1)  # warm the workers
        before = load.histogram_buckets(load.scrape(router.port)[1].decode(), "llm_router_overhead_seconds")
        client = load.open_loop(router.port, args.rate, args.count)
        after = load.histogram_buckets(load.scrape(router.port)[1].decode(), "llm_router_overhead_seconds")
    finally:
        router.stop()
    n = after.get(float("inf"), 0) - before.get(float("inf"), 0)
    client.update({
        "overhead_p50": load.histogram_quantile(0.5, before, after),
        "overhead_p99": load.histogram_quantile(0.99, before, after),
        "overhead_count": n,
    })
    log(f"open loop {args.rate}/s x {args.count}: client p50 {client['p50']*1000:.2f} ms p99 {client['p99']*1000:.2f} ms; "
        f"overhead p50 {client['overhead_p50']*1000:.3f} ms p99 {client['overhead_p99']*1000:.3f} ms")
    return client


def scrapes(args, work: Path) -> dict:
    rows, blocking = [], []
    env = {"LLM_ROUTER_METRICS": "on", "LLM_ROUTER_LOGS": "off", "LLM_ROUTER_TRACES": "off",
           "OTEL_TRACES_EXPORTER": "none"}
    for workers in args.workers:
        for tenants in args.tenants:
            config = label_set_config(tenants)
            router = start_router(work, f"scrape-w{workers}-n{tenants}", config, env, workers=workers, threads=4)
            try:
                rss_start = router.worker_rss_mib()
                traffic = load.drive_label_sets(router.port, [t["api_keys"][0] for t in config["tenants"]],
                                                [m["id"] for m in config["models"]], per_combo=max(2, workers))
                # Where Prometheus scrapes (the metrics port), and, for comparison, the
                # request port, whose /metrics a request worker renders.
                timing = load.time_scrapes(router.metrics_port, args.scrapes)
                inline = load.time_scrapes(router.port, args.scrapes)
                row = {"workers": workers, "tenants": tenants, "label_sets": tenants * len(config["models"]),
                       **timing, "inline": inline, "traffic": traffic, "rss_start": rss_start,
                       "rss_end": router.worker_rss_mib()}
                rows.append(row)
                log(f"scrape workers={workers} tenants={tenants}: p50 {timing['p50']*1000:.1f} ms "
                    f"(request port {inline['p50']*1000:.1f} ms), {timing['samples']} samples, "
                    f"failed requests {traffic['failed']}")
                if tenants == max(args.tenants):
                    for where, port in (("metrics port", router.metrics_port), ("request port", router.port)):
                        result = load.scrape_blocking(router.port, args.blocking_requests, port)
                        result.update(workers=workers, tenants=tenants, where=where)
                        blocking.append(result)
                        log(f"scrape blocking workers={workers} scraping the {where}: p50 "
                            f"{result['quiet_p50']*1000:.2f} -> {result['busy_p50']*1000:.2f} ms, p99 "
                            f"{result['quiet_p99']*1000:.2f} -> {result['busy_p99']*1000:.2f} ms")
            finally:
                router.stop()
    return {"rows": rows, "blocking": blocking}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (configurations interleaved)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of wrk warmup before each run")
    parser.add_argument("--quick", action="store_true", help="CI mode: checks the bench runs, figures mean little")
    parser.add_argument("--out", type=Path, default=REPO / "docs",
                        help="where performance.md and img/*.png go (default: docs/)")
    parser.add_argument("--json", type=Path, help="also write the raw results to this JSON file")
    parser.add_argument("--rate", type=float, default=100, help="open-loop requests per second")
    parser.add_argument("--count", type=int, default=3000, help="open-loop requests in all")
    parser.add_argument("--tenants", type=int, nargs="+", default=[5, 25, 50], help="tenant counts (x 10 models)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts for scrapes")
    parser.add_argument("--scrapes", type=int, default=20, help="timed scrapes per configuration")
    parser.add_argument("--blocking-requests", type=int, default=300,
                        help="sequential requests measured without and with scraping")
    parser.add_argument("--scenario-rounds", type=int, default=2,
                        help="rounds of the scenarios against the fake upstream (targets interleaved)")
    parser.add_argument("--events", type=int, default=20, help="tokens (stream events) per fake-upstream answer")
    parser.add_argument("--router-config", dest="router_configs", action="append", metavar="NAME:VAR=V,...",
                        help="a router configuration for the scenarios, by environment (repeatable); default: "
                             + " and ".join(f"'{c}'" for c in scenarios.DEFAULT_ROUTER_CONFIGS))
    parser.add_argument("--peers", action="store_true",
                        help="add LiteLLM's proxy (.venv-peers, `make bench-peers` installs it) to the scenarios")
    parser.add_argument("--cells", nargs="+", metavar="PATTERN",
                        help="only the scenario cells whose key contains one of these (e.g. 'stream/2000')")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS,
                        help="what to measure (a partial run needs --out elsewhere than docs/)")
    parser.add_argument("--note", help="a line printed at the top of the report (e.g. what else ran)")
    parser.add_argument("--report-only", type=Path, metavar="JSON",
                        help="rewrite the report and plots from a --json file, without measuring")
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads(args.report_only.read_text())
        (args.out / "img").mkdir(parents=True, exist_ok=True)
        report.plots(results, args.out / "img")
        report.markdown(results, args.out / "performance.md")
        return 0
    if args.router_configs is None:
        args.router_configs = list(scenarios.DEFAULT_ROUTER_CONFIGS)
    if set(args.sections) != set(SECTIONS) and args.out.resolve() == (REPO / "docs").resolve():
        parser.error("a partial run (--sections) would overwrite docs/performance.md: give --out")
    if args.peers:
        from .peers import LITELLM_REQUIREMENT, installed_version

        if installed_version() is None:
            parser.error(f"--peers needs LiteLLM's proxy in .venv-peers: `make bench-peers` installs {LITELLM_REQUIREMENT}")
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 0
        args.rate, args.count = 50, 100
        args.tenants, args.workers, args.scrapes, args.blocking_requests = [2, 5], [1, 2], 5, 50
        args.scenario_rounds = 1
    argv_used = sys.argv[1:] if argv is None else argv
    # Where the raw results went, and the note, are no part of how they were measured.
    for option in ("--json", "--note"):
        i = argv_used.index(option) if option in argv_used else -1
        argv_used = argv_used[:i] + argv_used[i + 2:] if i >= 0 else [a for a in argv_used if not a.startswith(option + "=")]
    command = "python -m bench " + " ".join(shlex.quote(a) for a in argv_used)

    # SIGTERM unwinds like Ctrl-C, so every router started so far is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    load.wrk_path()
    code_at_start = report.code_version()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command.strip(),
               "quick": args.quick, "note": args.note,
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="llm-router-bench-") as tmp, TraceSink() as sink:
        work = Path(tmp)
        if "telemetry" in args.sections:
            log(f"throughput: {args.rounds} round(s) x {len(CONFIGS)} configurations x {args.duration:g}s")
            results["throughput"] = throughput(args, work, sink)
        if "overhead" in args.sections:
            log("router overhead, open loop")
            results["overhead"] = overhead(args, work, sink)
        if "scrape" in args.sections:
            log(f"scrape time: tenants {args.tenants} x workers {args.workers}")
            results["scrape"] = scrapes(args, work)
        if "scenarios" in args.sections:
            log(f"scenarios: {args.scenario_rounds} round(s), router configurations {args.router_configs}"
                + (", with LiteLLM" if args.peers else ""))
            results["scenarios"] = scenarios.run(args, work, log)
        results["sink_requests"] = sink.requests
    results["elapsed_s"] = time.monotonic() - started
    results["machine"] = report.machine(load.wrk_version())
    results["code_at_start"] = code_at_start
    (args.out / "img").mkdir(parents=True, exist_ok=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    report.plots(results, args.out / "img")
    report.markdown(results, args.out / "performance.md")
    log(f"done in {results['elapsed_s']:.0f}s: {args.out / 'performance.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
