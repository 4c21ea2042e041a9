"""Load: wrk (closed loop, throughput), a Python open-loop client (latency), /metrics scrapes."""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .upstream import raise_nofile_limit

LUA = Path(__file__).resolve().parent / "chat.lua"
OPENAI_LUA = Path(__file__).resolve().parent / "openai.lua"
CHAT_PATH = "/v1/chat/completions"


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (make bench does this when it can)")
    return path


def wrk_version() -> str:
    out = subprocess.run([wrk_path(), "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).split("Copyright")[0].strip()


def run_wrk(url: str, seconds: float, threads: int = 2, connections: int = 8) -> dict:
    """One wrk run against the chat endpoint; returns the summary the Lua script prints."""
    duration = max(1, round(seconds))
    command = [wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
               "-s", str(LUA), f"{url}{CHAT_PATH}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    result = _wrk_summary(out.stdout, out.stderr, command)
    result["failed"] = result["errors"]
    return result


def _wrk_summary(out: str, err: str, command: list[str]) -> dict:
    """The BENCH_JSON line the Lua scripts print at the end, with req/s and the errors wrk
    counted (non-2xx answers, socket errors, timeouts)."""
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line[len("BENCH_JSON "):])
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["errors"] = result["status"] + result["connect"] + result["read"] + result["write"] + result["timeout"]
            result["command"] = " ".join(command)
            return result
    raise RuntimeError(f"wrk printed no summary:\n{out}\n{err}")


def run_wrk_openai(base_url: str, clients: int, seconds: int, model: str, stream: bool = False, key: str = "",
                   timeout_s: int = 10, jitter_ms: int = 0) -> dict:
    """One closed-loop wrk run of the scenarios (bench/openai.lua) against `base_url`/v1.

    Also returns `wrk_cpu_s`, wrk's own CPU seconds (the load client's cost), from wait4."""
    threads = 1 if clients < 2 else 2
    seconds = max(1, int(seconds))
    command = [wrk_path(), f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--timeout", f"{timeout_s}s",
               "-s", str(OPENAI_LUA), f"{base_url}/v1/chat/completions"]
    env = {**os.environ, "BENCH_MODEL": model, "BENCH_STREAM": "1" if stream else "0", "BENCH_KEY": key,
           "BENCH_JITTER_MS": str(int(jitter_ms)), "BENCH_FIRST": str(math.ceil(clients / threads))}
    # 2,000 connections need more open files than a default soft limit of 1,024.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               preexec_fn=raise_nofile_limit)
    killer = threading.Timer(seconds + timeout_s + 60, process.kill)
    killer.start()
    try:
        out = process.stdout.read().decode(errors="replace")
        err = process.stderr.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        killer.cancel()
        process.stdout.close()
        process.stderr.close()
    result = _wrk_summary(out, err, command)
    # Whole 2xx answers per second. A timeout is an answer slower than --timeout: wrk counts
    # it in requests (and as an error) but leaves it out of the latency histogram.
    good = result["requests"] - result["status"] - result["incomplete"] - result["timeout"]
    result["ok_rps"] = max(0, good) / (result["duration_us"] / 1e6)
    result["wrk_cpu_s"] = usage.ru_utime + usage.ru_stime
    return result


class _Client:
    """A keep-alive HTTP/1.1 connection per thread (http.client: little client-side overhead)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 10) -> tuple[int, bytes]:
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                response = conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    self.local.conn = None
                return response.status, data
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    return 0, b""
        return 0, b""


def chat_body(model: str = "auto") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Summarise the benchmark."}]}).encode()


def chat_headers(api_key: str = "sk-demo-search") -> dict:
    """A tenant's API key (the router refuses a keyed tenant named by X-Tenant-ID alone)."""
    return {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}", "Cache-Control": "no-cache"}


def open_loop(port: int, rate: float, count: int, concurrency: int = 32) -> dict:
    """Send `count` requests at a fixed `rate`, each scheduled on the clock whatever the
    responses do; latency counts from the scheduled time (no coordinated omission)."""
    client = _Client(port)
    body, headers = chat_body(), chat_headers()
    latencies: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def send(scheduled: float) -> None:
        status, _ = client.request("POST", CHAT_PATH, body, headers)
        elapsed = time.perf_counter() - scheduled
        with lock:
            latencies.append(elapsed)
            codes[status] = codes.get(status, 0) + 1

    start = time.perf_counter() + 0.05
    late = 0
    with ThreadPoolExecutor(concurrency) as pool:
        for i in range(count):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.01:
                late += 1
            pool.submit(send, scheduled)
    elapsed = time.perf_counter() - start
    return {
        "rate": rate, "count": count, "achieved_rate": count / elapsed, "codes": codes,
        "failed": sum(n for code, n in codes.items() if code != 200), "late_dispatch": late,
        "p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "max": max(latencies),
    }


def closed_loop_latency(port: int, count: int) -> list[float]:
    """Sequential requests (one at a time): per-request latency in seconds."""
    client = _Client(port)
    body, headers = chat_body(), chat_headers()
    out = []
    for _ in range(count):
        started = time.perf_counter()
        client.request("POST", CHAT_PATH, body, headers)
        out.append(time.perf_counter() - started)
    return out


def drive_label_sets(port: int, api_keys: list[str], models: list[str], per_combo: int, concurrency: int = 8) -> dict:
    """Traffic over every tenant x model combination (bounded: per_combo requests each), each
    tenant by its API key. Refused requests would create none of the label sets measured:
    they stop the run."""
    client = _Client(port)
    jobs = [(k, m) for k in api_keys for m in models for _ in range(per_combo)]

    def send(job) -> int:
        key, model = job
        return client.request("POST", CHAT_PATH, chat_body(model), chat_headers(key))[0]

    with ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(send, jobs))
    failed = sum(code != 200 for code in codes)
    if failed:
        raise RuntimeError(f"{failed} of {len(jobs)} label-set requests failed (codes {sorted(set(codes))})")
    return {"requests": len(jobs), "failed": failed}


def scrape(port: int) -> tuple[float, bytes]:
    client = _Client(port)
    started = time.perf_counter()
    status, data = client.request("GET", "/metrics", timeout=30)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return elapsed, data


def time_scrapes(port: int, count: int) -> dict:
    times, body = [], b""
    for _ in range(count):
        elapsed, body = scrape(port)
        times.append(elapsed)
    samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return {"p50": statistics.median(times), "min": min(times), "max": max(times), "samples": samples,
            "bytes": len(body), "count": count}


def scrape_blocking(port: int, count: int, scrape_port: int | None = None) -> dict:
    """Request latency without, then with, a /metrics scrape running in a loop meanwhile
    (on ``scrape_port``: the request port by default, or the metrics process's)."""
    scrape_port = scrape_port or port
    quiet = closed_loop_latency(port, count)
    stop = threading.Event()
    scrapes = [0]

    def loop() -> None:
        while not stop.is_set():
            scrape(scrape_port)
            scrapes[0] += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        busy = closed_loop_latency(port, count)
    finally:
        stop.set()
        thread.join(30)
    return {
        "count": count, "scrapes": scrapes[0],
        "quiet_p50": percentile(quiet, 50), "quiet_p99": percentile(quiet, 99),
        "busy_p50": percentile(busy, 50), "busy_p99": percentile(busy, 99),
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of a label-less histogram in a text exposition."""
    buckets: dict[float, float] = {}
    prefix = f"{name}_bucket{{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, value = line[len(prefix):].split("}", 1)
        le = next(part.split("=", 1)[1].strip('"') for part in labels.split(",") if part.startswith("le="))
        buckets[float(le)] = buckets.get(float(le), 0.0) + float(value.split()[0])
    return buckets


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus histogram_quantile over the bucket deltas (linear inside a bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    lower, previous = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the +Inf bucket: the highest finite bound, as Prometheus does
            if count == previous:
                return bound
            return lower + (bound - lower) * (rank - previous) / (count - previous)
        lower, previous = bound, count
    return bounds[-2] if len(bounds) > 1 else math.nan
