"""docs/performance.md and the PNG plots, from the results dict bench/__main__.py builds."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from importlib import metadata
from pathlib import Path

from . import report_scenarios
from .router import REPO


def machine(wrk_version: str) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    versions = {}
    for package in ("llm-router", "gunicorn", "Flask", "prometheus-client", "opentelemetry-sdk",
                    "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = math.nan
    commit = code_version()
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "wrk": wrk_version, "versions": versions,
            "load1": load1, "commit": commit}


def code_version() -> str:
    """HEAD's short hash, plus "+dirty" when service/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "service/src"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _ms(seconds: float, digits: int = 2) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.{digits}f}"


def _spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}"


def throughput_rows(results: dict) -> list[dict]:
    rows = []
    for name in results["throughput"]["configs"]:
        runs = results["throughput"]["runs"][name]
        rps = [r["rps"] for r in runs]
        ratios = [r["ratio"] for r in runs]
        rows.append({
            "name": name, "rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "failed": sum(r["failed"] for r in runs), "requests": sum(r["requests"] for r in runs),
            "p50": statistics.median(r["p50_us"] for r in runs) / 1e6,
            "p99": statistics.median(r["p99_us"] for r in runs) / 1e6,
            "stop": statistics.median(r["stop_s"] for r in runs), "stop_min": min(r["stop_s"] for r in runs),
            "stop_max": max(r["stop_s"] for r in runs),
            "rss_start": statistics.median(statistics.mean(r["rss_start"]) for r in runs if r["rss_start"]),
            "rss_end": statistics.median(statistics.mean(r["rss_end"]) for r in runs if r["rss_end"]),
            "sink": sum(r["sink_requests"] for r in runs),
            **_cpu(runs),
        })
    return rows


def _cpu(runs: list[dict]) -> dict:
    """CPU per request and the ratio it implies (absent from results of older bench runs)."""
    if not all("cpu_ratio" in r for r in runs):
        return {}
    ratios = [r["cpu_ratio"] for r in runs]
    return {"cpu_us": statistics.median(r["cpu_us_per_request"] for r in runs), "cpu_ratio": statistics.median(ratios),
            "cpu_ratio_min": min(ratios), "cpu_ratio_max": max(ratios)}


DESCRIPTIONS = {
    "off": "every signal off (`LLM_ROUTER_METRICS/LOGS/TRACES=off`)",
    "metrics": "Prometheus metrics only (multiprocess mode, 2 workers)",
    "metrics+logs": "metrics + JSON access log (stdout to a file)",
    "full": "metrics + logs + traces, every request sampled (`always_on`), OTLP/HTTP to a local sink",
    "full-sampled-10%": "full, production sampling (`parentbased_traceidratio`, 0.1)",
    "full-collector-down": "full (`always_on`), OTLP endpoint a closed 127.0.0.1 port",
}


def plots(results: dict, img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if results.get("scenarios"):
        report_scenarios.plot(results, img)
    if results.get("throughput"):
        rows = throughput_rows(results)
        fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
        names = [r["name"] for r in rows]
        medians = [r["rps"] for r in rows]
        err = [[r["rps"] - r["rps_min"] for r in rows], [r["rps_max"] - r["rps"] for r in rows]]
        bars = ax.bar(names, medians, yerr=err, capsize=4, color="#4c72b0")
        for bar, row in zip(bars, rows):
            ax.annotate(f"{row['ratio']:.2f}×", (bar.get_x() + bar.get_width() / 2, row["rps_max"]),
                        xytext=(0, 8), textcoords="offset points", ha="center", fontsize=8)
        ax.set_ylim(0, max(r["rps_max"] for r in rows) * 1.15)
        ax.set_ylabel("requests/s (median; bars: min–max)\nlabels: ratio to off")
        rounds = len(results["throughput"]["runs"]["off"])
        ax.set_title(f"Throughput by telemetry level — 2 workers × 4 threads, wrk -t2 -c8, {rounds} round(s)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        fig.tight_layout()
        fig.savefig(img / "throughput.png")
        plt.close(fig)

    if results.get("scrape"):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        scrape_rows = results["scrape"]["rows"]
        for workers in sorted({r["workers"] for r in scrape_rows}):
            series = sorted((r for r in scrape_rows if r["workers"] == workers), key=lambda r: r["label_sets"])
            x = [r["label_sets"] for r in series]
            y = [r["p50"] * 1000 for r in series]
            yerr = [[(r["p50"] - r["min"]) * 1000 for r in series], [(r["max"] - r["p50"]) * 1000 for r in series]]
            ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=f"{workers} worker(s)")
        ax.set_xlabel("tenant × model label sets")
        ax.set_ylabel("/metrics scrape time, ms (p50; bars: min–max)")
        ax.set_title("Scrape time against label sets and workers", fontsize=9)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "scrape.png")
        plt.close(fig)


def markdown(results: dict, path: Path) -> None:
    m = results["machine"]
    a = results["args"]
    tp = throughput_rows(results) if results.get("throughput") else []
    ov = results.get("overhead")
    sc = results.get("scrape")
    out: list[str] = []
    w = out.append
    w("# Performance")
    w("")
    if results["quick"]:
        w("> **Quick mode** (`make bench-quick`): checks that the benchmark runs; its figures mean little.")
        w("")
    if results.get("note"):
        w(f"> {results['note']}")
        w("")
    w(f"Measured {results['date']} on the machine below (code `{m['commit']}`), in {results['elapsed_s'] / 60:.1f} "
      "minutes. Every figure comes from the real router under gunicorn on 127.0.0.1, driven by a load "
      "client on the same machine: they compare configurations with each other, they are not capacity "
      "figures for production. Configurations are interleaved round by round so that drift in the "
      "machine's load hits all of them alike; medians are reported with the min–max of the rounds so the "
      "noise stays visible.")
    w("")
    w("## How to reproduce")
    w("")
    w("```sh")
    w("make bench          # the full suite (writes this file and docs/img/*.png)")
    w("make bench-peers    # the same, with LiteLLM's proxy in the scenarios (installs it into .venv-peers)")
    w("make bench-quick    # one short round into a temporary directory (what CI runs)")
    w(f"{results['command']}   # what produced this file")
    w("# only the scenarios, another router configuration side by side (any LLM_ROUTER_* variables):")
    w("python -m bench --sections scenarios --out /tmp/bench \\")
    w("  --router-config default: --router-config 'one-worker:LLM_ROUTER_WORKERS=1'")
    w("```")
    w("")
    if tp:
        w(f"Each run starts `llm-router serve` (gunicorn, worker class `{results['throughput'].get('worker_class', 'gthread')}`) with a copy of "
          "`service/config/router.yaml` whose simulated latency is 0 (`LLM_ROUTER_SIM_TIME_SCALE=0`) and whose "
          "simulated error rates are 0, so the router's own cost is what is measured. Requests send "
          "`Cache-Control: no-cache`, so every one routes. Throughput uses wrk (closed loop):")
        w("")
        w("```sh")
        w(f"{results['throughput']['command']}")
        w("```")
        w("")
        warm = f"preceded by a {a['warmup']:g} s warmup run; " if a["warmup"] > 0 else "with no warmup run (quick mode); "
        w(f"{warm}the measured run lasts {a['duration']:g} s. `bench/chat.lua` holds the request body and headers.")
        w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| CPUs (nproc) | {m['nproc']} |")
    w(f"| CPU model | {m['cpu']} |")
    w(f"| memory | {m['memory']} |")
    w(f"| kernel | {m['kernel']} |")
    w(f"| Python | {m['python']} |")
    w(f"| wrk | {m['wrk']} |")
    for package, version in m["versions"].items():
        w(f"| {package} | {version} |")
    w(f"| load average (1 min) at the end | {m['load1']:.2f} |")
    w("")
    w("The load client (wrk or the Python client) and the trace sink run on the same cores as the router, so "
      "they take CPU from it too. What else ran on the machine: the note at the top, when the run was given one, "
      "and for the scenarios their *other CPU* column.")
    w("")
    out.extend(report_scenarios.targets_section(results, tp))
    # Why the router runs gevent workers, and what cooperates how: prose kept in one file.
    worker_model = Path(__file__).with_name("worker-model.md").read_text(encoding="utf-8")
    out.extend(line for line in worker_model.splitlines() if not line.startswith("<!--"))
    w("")
    if tp:
        w("## Throughput by telemetry level")
        w("")
        w("![Throughput by telemetry level](img/throughput.png)")
        w("")
        w(f"2 workers × 4 threads, wrk `-t2 -c8`, {len(results['throughput']['runs']['off'])} round(s). The ratio to "
          "`off` is computed within each round, then the median (and min–max) over the rounds is taken. Latency "
          "columns are wrk's closed-loop figures (median over rounds), given for orientation only; the open-loop "
          "section below is the latency measurement.")
        w("")
        w("| configuration | req/s median | req/s min–max | ratio to off | ratio min–max | failed / requests | "
          "p50 ms | p99 ms | graceful stop s (min–max) |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in tp:
            w(f"| `{r['name']}` | {r['rps']:.0f} | {r['rps_min']:.0f}–{r['rps_max']:.0f} | {r['ratio']:.2f} | "
              f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f} | {r['failed']} / {r['requests']} | {_ms(r['p50'])} | "
              f"{_ms(r['p99'])} | {r['stop']:.2f} ({r['stop_min']:.2f}–{r['stop_max']:.2f}) |")
        w("")
        if all("cpu_us" in r for r in tp):
            w("The router's CPU per request (user + system time of the gunicorn master, workers and metrics process "
              "over the measured run, from `/proc/<pid>/stat`, divided by the requests served) is steadier than "
              "throughput on a shared machine; *CPU ratio* is off's CPU per request over the configuration's, the "
              "throughput ratio that cost implies when the router is CPU-bound. Median over rounds (min–max).")
            w("")
            w("| configuration | CPU µs per request | CPU ratio to off | CPU ratio min–max |")
            w("|---|---:|---:|---:|")
            for r in tp:
                w(f"| `{r['name']}` | {r['cpu_us']:.0f} | {r['cpu_ratio']:.2f} | {r['cpu_ratio_min']:.2f}–{r['cpu_ratio_max']:.2f} |")
            w("")
        w("| configuration | what is on |")
        w("|---|---|")
        for r in tp:
            w(f"| `{r['name']}` | {DESCRIPTIONS[r['name']]} |")
        w("")
        w("*Failed* counts non-2xx answers and socket errors/timeouts as wrk reports them. *Graceful stop* is "
          "SIGTERM to the master's exit, right after the measured run. The trace sink received (over all rounds, "
          "final flush included) "
          + ", ".join(f"{r['sink']} export requests for `{r['name']}`" for r in tp if r["name"].startswith("full"))
          + ".")
        w("")
    if ov:
        w("## Router overhead (open loop)")
        w("")
        w(f"A Python open-loop client sends {ov['count']} requests at a fixed {ov['rate']:g} req/s (each scheduled on "
          "the clock whatever the answers do; latency counts from the scheduled time) to the `full` configuration "
          "(2 workers × 4 threads, traces `always_on` to the sink). The router's own `llm_router_overhead_seconds` "
          "histogram is read before and after; p50/p99 are interpolated over the bucket deltas as "
          "`histogram_quantile` does (buckets 0.1 ms … 1 s, so the figure is only as fine as its bucket).")
        w("")
        w("| | p50 ms | p99 ms | notes |")
        w("|---|---:|---:|---|")
        w(f"| router overhead (`llm_router_overhead_seconds`) | {_ms(ov['overhead_p50'], 3)} | "
          f"{_ms(ov['overhead_p99'], 3)} | {ov['overhead_count']:.0f} observations |")
        w(f"| client-side latency | {_ms(ov['p50'])} | {_ms(ov['p99'])} | max {_ms(ov['max'])} ms; achieved "
          f"{ov['achieved_rate']:.1f} req/s; failed {ov['failed']}; late dispatches {ov['late_dispatch']} |")
        w("")
    if sc:
        w("## /metrics scrape time against label sets and workers")
        w("")
        w("![Scrape time against label sets and workers](img/scrape.png)")
        w("")
        w(f"A config with N tenants × 10 models; metrics on, logs and traces off. Traffic first covers every "
          f"tenant × model combination (max(2, workers) requests each), then {a['scrapes']} scrapes are timed one "
          "after another. Samples are the exposition's sample lines.")
        w("")
        w("Scrapes are timed where Prometheus scrapes in the default deployment, `LLM_ROUTER_METRICS_BIND`: "
          "with several workers a process of its own merges the workers' files there; with one worker a thread "
          "of that worker serves its in-memory registry. The request port's `/metrics` (rendered by a request "
          "worker) is timed too, for comparison.")
        w("")
        w("| workers | tenants | label sets | samples | body KiB | scrape p50 ms | min–max ms | request port p50 ms | traffic failed |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in sc["rows"]:
            inline = _ms(r["inline"]["p50"], 1) if "inline" in r else "–"
            w(f"| {r['workers']} | {r['tenants']} | {r['label_sets']} | {r['samples']} | {r['bytes'] / 1024:.0f} | "
              f"{_ms(r['p50'], 1)} | {_ms(r['min'], 1)}–{_ms(r['max'], 1)} | {inline} | {r['traffic']['failed']} / "
              f"{r['traffic']['requests']} |")
        w("")
        w("### Does a scrape block request serving?")
        w("")
        w("Sequential chat requests (one at a time) at the largest label-set count, first with nothing else "
          "running, then while another client scrapes `/metrics` in a loop (on the metrics port, then on the "
          "request port). Reported, not asserted.")
        w("")
        w("| workers | tenants | scraped at | requests | scrapes meanwhile | p50 ms quiet → scraping | p99 ms quiet → scraping |")
        w("|---:|---:|---|---:|---:|---:|---:|")
        for b in sc["blocking"]:
            w(f"| {b['workers']} | {b['tenants']} | {b.get('where', 'request port')} | {b['count']} | {b['scrapes']} | "
              f"{_ms(b['quiet_p50'])} → {_ms(b['busy_p50'])} | {_ms(b['quiet_p99'])} → {_ms(b['busy_p99'])} |")
        w("")
    if results.get("scenarios"):
        out.extend(report_scenarios.scenario_section(results))
    if results.get("scenarios"):
        out.extend(report_scenarios.peers_section(results))
    if tp or sc:
        w("## Memory (RSS per worker)")
        w("")
        w("VmRSS of each gunicorn worker (from `/proc/<pid>/status`), right after the router is ready and at the end "
          "of its load; the mean over workers (median over rounds for the throughput runs).")
        w("")
        w("| run | MiB after start | MiB after load | growth MiB |")
        w("|---|---:|---:|---:|")
        for r in tp:
            w(f"| throughput `{r['name']}` | {r['rss_start']:.1f} | {r['rss_end']:.1f} | {r['rss_end'] - r['rss_start']:+.1f} |")
        for r in (sc or {}).get("rows", []):
            if r["rss_start"] and r["rss_end"]:
                s, e = statistics.mean(r["rss_start"]), statistics.mean(r["rss_end"])
                w(f"| scrape series, {r['workers']} worker(s), {r['label_sets']} label sets | {s:.1f} | {e:.1f} | {e - s:+.1f} |")
        w("")
    notes = observations(results, tp)
    w("## Observations from this run")
    w("")
    for note in notes:
        w(f"- {note}")
    w("")
    path.write_text("\n".join(out))


def observations(results: dict, tp: list[dict]) -> list[str]:
    notes = []
    for r in tp:
        if r["failed"]:
            notes.append(f"`{r['name']}`: {r['failed']} of {r['requests']} requests failed.")
        if r["stop_max"] > 5:
            notes.append(f"`{r['name']}`: graceful stop took up to {r['stop_max']:.1f} s.")
    if results.get("code_at_start") and results["code_at_start"] != results["machine"]["commit"]:
        notes.append(f"The code changed during the run (`{results['code_at_start']}` at the start, "
                     f"`{results['machine']['commit']}` at the end): the figures mix versions.")
    ov = results.get("overhead")
    if ov and ov["failed"]:
        notes.append(f"open loop: {ov['failed']} of {ov['count']} requests failed.")
    for r in (results.get("scrape") or {}).get("rows", []):
        if r["traffic"]["failed"]:
            notes.append(f"scrape series ({r['workers']} workers, {r['tenants']} tenants): "
                         f"{r['traffic']['failed']} requests failed.")
    scn = results.get("scenarios")
    if scn:
        from .scenarios import summary

        for name, failure in scn["failures"].items():
            notes.append(f"scenarios: `{name}` failed: `{failure[:300]}`")
        summ = summary(scn)
        for target, cells in summ.items():
            bad = [f"`{key}` {v['errors']} of {v['requests']}" for key, v in cells.items() if v["errors"]]
            if bad:
                notes.append(f"scenarios, `{target}`: errors in " + ", ".join(bad) + ".")
        other = [(v["other_cpu_share"], target, key) for target, cells in summ.items() for key, v in cells.items()]
        if other:
            share, target, key = max(other)
            notes.append(f"scenarios: other work took up to {share:.2f} cores of the 2 during a cell (`{target}` at "
                         f"`{key}`); median over all cells "
                         f"{statistics.median(o[0] for o in other):.2f}.")
    if not notes:
        notes.append("No failed requests and no graceful stop over 5 s.")
    return notes
