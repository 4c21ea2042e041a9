"""The report's scenario, peer and target sections (docs/performance.md), from the results
bench/scenarios.py returns. Every figure here is computed from the run; nothing is typed in."""

from __future__ import annotations

import math
from pathlib import Path

from .scenarios import summary

OURS_DEFAULT = "default"


def _f(value: float, fmt: str = "{:.0f}") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def _cells(results: dict, group: str | None = None) -> list[dict]:
    return [c for c in results["scenarios"]["cells"] if group is None or c["group"] == group]


def _targets(results: dict, kinds: tuple[str, ...]) -> list[dict]:
    return [t for t in results["scenarios"]["targets"] if t["kind"] in kinds]


def _cell_text(results: dict) -> list[str]:
    """The cell matrix in words: group, answer, plain/stream, clients and seconds."""
    groups: dict[tuple, list[str]] = {}
    for c in results["scenarios"]["cells"]:
        kind = "streams" if c["stream"] else "not streaming"
        groups.setdefault((c["group"], c["answer"], kind), []).append(f"{c['clients']} ({c['seconds']} s)")
    return [f"{group}, {answer} answers, {kind}: clients " + ", ".join(items)
            for (group, answer, kind), items in groups.items()]


def _errors(s: dict) -> str:
    if not s["errors"]:
        return "0"
    parts = [f"{name} {s[key]}" for name, key in (("connect", "connect"), ("read", "read"), ("write", "write"),
                                                  ("timeout", "timeout"), ("non-2xx", "status"),
                                                  ("incomplete", "incomplete")) if s[key]]
    return f"**{s['errors']}** ({', '.join(parts)})"


def _conn(s: dict, kind: str) -> str:
    if kind == "direct":  # wrk's own connections (one per client, plus the one wrk tests with)
        return f"({_f(s['conn_per_req'], '{:.3f}')})"
    return f"{_f(s['conn_per_req'], '{:.3f}')} / {_f(s['steady_conn_per_req'], '{:.3f}')}"


def _row(s: dict, target: dict, clients: int | str) -> str:
    kind = target["kind"]
    ratio = "1" if kind == "direct" else f"{_f(s['ratio'], '{:.2f}')}"
    spread = f"{s['ok_rps_min']:.0f}–{s['ok_rps_max']:.0f}" if s["rounds"] > 1 else "–"
    cpu = f"{_f(s['cpu_us'])}" + (" (upstream)" if kind == "direct" else "")
    rss = f"{s['rss_worker_mib']:.0f} / {s['rss_total_mib']:.0f}"
    return (f"| {clients} | `{target['name']}` | {s['ok_rps']:.1f} | {spread} | {ratio} | {_f(s['p50_ms'])} | "
            f"{_f(s['p99_ms'])} | {_errors(s)} | {s.get('max_in_flight', 0)} | {cpu} | {_conn(s, kind)} | {rss} | "
            f"{s['other_cpu_share']:.2f} |")


HEADER = ("| clients | target | ok req/s | min–max | × direct | p50 ms | p99 ms | errors | calls at once (upstream) "
          "| CPU µs/req | new upstream conns/req (run / steady) | RSS MiB (max worker / all) | other CPU (cores) |")
RULE = "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"


def _table(results: dict, summ: dict, group: str, stream: bool, kinds: tuple[str, ...],
           keep=lambda target: True) -> list[str]:
    out = [HEADER, RULE]
    for cell in _cells(results, group):
        if cell["stream"] != stream:
            continue
        for target in _targets(results, kinds):
            if not keep(target):
                continue
            s = summ.get(target["name"], {}).get(cell["key"])
            if s:
                out.append(_row(s, target, cell["clients"]))
    return out if len(out) > 2 else []


def scenario_section(results: dict) -> list[str]:
    scn = results["scenarios"]
    summ = summary(scn)
    up = scn["upstream"]
    out: list[str] = []
    w = out.append
    w("## Scenarios: the router in front of a fake upstream")
    w("")
    w("![Throughput against clients](img/scenarios.png)")
    w("")
    w(f"The fake upstream (`bench/upstream.py`, stdlib asyncio, a process of its own) answers "
      f"`POST /v1/chat/completions` after a fixed delay with {up['events']} tokens; a stream sends them as "
      f"{up['events']} events spread evenly over the delay, then the finish and usage events and "
      "`data: [DONE]`. The router (real gunicorn, 2 workers, `llm-router serve`) has one `provider: openai` "
      "model per answer time on it (`max_concurrency: 4096`, `routing.retries: 0`, cache off, a tenant whose "
      "API key every request sends, health probes only at start), metrics and the JSON access log on, traces "
      "off. *direct* is wrk straight to the upstream: the ceiling, measured in the same run.")
    w("")
    w("Load: wrk, closed loop (each client sends its next request when the last one ended), `-t2` (`-t1` at one "
      "client), `bench/openai.lua`. Each client's first request waits a random 0–answer-time (left out of the "
      "latency), so the clients spread over the answer time instead of arriving in waves; absolute req/s are "
      "therefore a little under clients ÷ answer time for every target alike. For a stream, wrk's latency is "
      "the time to the end of the stream. Targets are interleaved cell by cell, their order rotating each round; "
      f"{scn['rounds']} round(s), medians (min–max of ok req/s shown).")
    w("")
    w("Cells (" + "; ".join(_cell_text(results)) + "). Non-streamed 5 s answers are left out: they cost the "
      "router what a 500 ms answer costs, only held ten times longer, which the 5 s streams already exercise "
      "with more work per call.")
    w("")
    w("Configurations:")
    w("")
    for target in scn["targets"]:
        failure = scn["failures"].get(target["name"])
        seen = f" (gunicorn reported worker class `{target['worker_class']}`)" if target.get("worker_class") else ""
        w(f"- `{target['name']}`: {target['description']}{seen}"
          + (f" — **failed**: `{failure[:300]}`" if failure else ""))
    w("")
    w("How each figure is computed:")
    w("")
    w("- *ok req/s*: whole 2xx answers per second of the wrk run (requests − non-2xx − incomplete − timeouts); "
      "*× direct*: that over direct's, in the same round and cell, then the median over rounds.")
    w("- *p50/p99*: wrk's latency percentiles (with wrk's coordinated-omission correction); answers slower "
      "than `--timeout` (10 s, 20 s for 5 s answers) are not in them but counted as *timeout*.")
    w("- *errors*: wrk's connect/read/write errors, timeouts and non-2xx answers, plus *incomplete*: 2xx "
      "answers that were not whole (a stream without `data: [DONE]`, a completion without `usage`), checked "
      "by the Lua script on every answer.")
    w("- *CPU µs/req*: user + system CPU of the router's processes (gunicorn master, workers, metrics "
      "process: the whole process tree, from `/proc/<pid>/stat`) over the wrk run, divided by the requests "
      "wrk completed. For direct: the upstream's own CPU.")
    w("- *new upstream conns/req*: connections the upstream accepted during the run over the chat requests it "
      "received (*run*), and the same over the second half of the run only (*steady*: a pool that is still "
      "growing to the client count shows in *run*, not in *steady*). For direct, wrk's own connections.")
    w("- *calls at once*: the most chat calls the upstream had in flight at one time during the run (the "
      "lowest over rounds): how many of the clients' calls the target actually held open upstream.")
    w("- *RSS*: peak VmRSS sampled every 0.5 s during the run: the largest single worker, and the whole "
      "process tree.")
    w("- *other CPU*: the machine's busy CPU (`/proc/stat`) minus the target, the upstream and wrk, in cores: "
      "what else ran meanwhile (the other targets idle, this harness, and whatever else shares the machine).")
    w("")
    restarts = {k: v for k, v in scn["restarts"].items() if v}
    if restarts:
        w("A target still busy (the upstream not drained) after a cell was restarted before the next one: "
          + ", ".join(f"`{k}` {v} time(s)" for k, v in restarts.items()) + ".")
        w("")
    kinds = ("direct", "router")
    for group, stream, title in (("matrix", False, "500 ms answers, not streaming"),
                                 ("matrix", True, f"500 ms answers, streaming ({up['events']} events)"),
                                 ("long", True, f"5 s answers, streaming ({up['events']} events)")):
        table = _table(results, summ, group, stream, kinds)
        if table:
            w(f"### {title}")
            w("")
            out.extend(table)
            w("")
    latency = [c for c in _cells(results, "latency")]
    if latency:
        w("### Router-added latency at one client")
        w("")
        w("One client, 50 ms answers from the same upstream: the router's p50/p99 minus direct's in the same "
          "round (median over rounds). A difference of percentiles, not a percentile of differences.")
        w("")
        w("| answer | target | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU µs/req |")
        w("|---|---|---:|---:|---:|---:|---:|")
        for cell in latency:
            for target in _targets(results, ("direct", "router", "peer")):
                s = summ.get(target["name"], {}).get(cell["key"])
                if not s:
                    continue
                added = ("–", "–") if target["kind"] == "direct" else (
                    _f(s["p50_added_ms"], "{:.2f}"), _f(s["p99_added_ms"], "{:.2f}"))
                w(f"| {'stream' if cell['stream'] else 'plain'} | `{target['name']}` | {s['p50_ms']:.2f} | "
                  f"{s['p99_ms']:.2f} | {added[0]} | {added[1]} | {_f(s['cpu_us'])} |")
        w("")
    return out


def peers_section(results: dict) -> list[str]:
    scn = results.get("scenarios")
    out: list[str] = []
    w = out.append
    w("## Peers")
    w("")
    peers = _targets(results, ("peer",)) if scn else []
    if not peers:
        w("Not measured in this run: `make bench-peers` installs LiteLLM's proxy (pinned, in `.venv-peers`) and "
          "adds it to the scenarios above, interleaved with ours, on the same upstream.")
        w("")
        return out
    summ = summary(scn)
    for peer in peers:
        w(f"`{peer['name']}`: {peer['description']}. Same cells, same upstream, interleaved with the other "
          "targets. The model points at the fake upstream with `model: openai/<behaviour>`; the master key is "
          "sent as `Authorization: Bearer`.")
        w("")
        failure = scn["failures"].get(peer["name"])
        if failure:
            w(f"It failed: `{failure[:500]}`")
            w("")
        kinds = ("direct", "router", "peer")
        for group, stream, title in (("matrix", False, "500 ms answers, not streaming"),
                                     ("matrix", True, "500 ms answers, streaming"),
                                     ("long", True, "5 s answers, streaming")):
            rows = _table(results, summ, group, stream, kinds,
                          keep=lambda t: t["kind"] != "router" or t["name"] == OURS_DEFAULT)
            if rows:
                w(f"### {title}: `{OURS_DEFAULT}` and `{peer['name']}`")
                w("")
                out.extend(rows)
                w("")
    return out


# --- targets ---------------------------------------------------------------------------------


def target_rows(results: dict, throughput_rows: list[dict] | None) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for every target of issue 11; met is None when not measured."""
    rows: list[tuple[str, str, bool | None]] = []
    scn = results.get("scenarios")
    summ = summary(scn) if scn else {}
    ours = summ.get(OURS_DEFAULT, {})
    direct = summ.get("direct", {})

    def cell(key: str) -> tuple[dict | None, dict | None]:
        return ours.get(key), direct.get(key)

    s, d = cell("matrix/500ms/plain/512")
    if s and d:
        rows.append(("512 clients, 500 ms, not streaming: ≥ 0.85 × direct throughput",
                     f"{s['ratio']:.2f} × ({s['ok_rps']:.0f} vs {d['ok_rps']:.0f} req/s)", s["ratio"] >= 0.85))
        rows.append(("… p99 ≤ 1.5 × the upstream's (direct's p99)",
                     f"{s['p99_ms']:.0f} ms vs {d['p99_ms']:.0f} ms ({s['p99_ms'] / d['p99_ms']:.2f} ×)",
                     s["p99_ms"] <= 1.5 * d["p99_ms"]))
        rows.append(("… 0 errors", f"{s['errors']} of {s['requests']}", s["errors"] == 0))
    else:
        rows += [("512 clients, 500 ms, not streaming: ≥ 0.85 × direct, p99 ≤ 1.5 × upstream's, 0 errors",
                  "not measured", None)]
    s, d = cell("matrix/500ms/stream/512")
    rows.append(("Streaming at 512 clients: ≥ 0.75 × direct",
                 f"{s['ratio']:.2f} × ({s['ok_rps']:.0f} vs {d['ok_rps']:.0f} req/s)" if s and d else "not measured",
                 s["ratio"] >= 0.75 if s and d else None))
    s, d = cell("long/5s/stream/2000")
    if s:
        # "All answered": the router held the 2,000 streams at once upstream, and as many whole
        # answers came back as straight from the upstream (a request still waiting when wrk stops
        # is neither an answer nor an error to wrk, so errors alone cannot say it).
        ratio = s["ratio"] if d else float("nan")
        rows.append(("2,000 concurrent streams of 5 s: all answered, 0 errors (held ≥ 1,900 at once upstream, "
                     "≥ 0.95 × direct's whole answers)",
                     f"{s['errors']} errors of {s['requests']}; {s.get('max_in_flight', 0)} at once; "
                     f"{_f(ratio, '{:.2f}')} × direct", s["errors"] == 0 and s.get("max_in_flight", 0) >= 1900
                     and ratio >= 0.95))
        rows.append(("… RSS ≤ 150 MiB per worker", f"{s['rss_worker_mib']:.0f} MiB (largest worker, peak)",
                     s["rss_worker_mib"] <= 150))
    else:
        rows.append(("2,000 concurrent streams of 5 s: all answered, 0 errors, RSS ≤ 150 MiB per worker",
                     "not measured", None))
    s, _ = cell("matrix/500ms/plain/512")
    st, _ = cell("matrix/500ms/stream/512")
    rows.append(("Router CPU per request ≤ 2 ms, metrics and logs on (512 clients, 500 ms, not streaming)",
                 (f"{s['cpu_us'] / 1000:.2f} ms" + (f" (streams: {st['cpu_us'] / 1000:.2f} ms)" if st else ""))
                 if s else "not measured", s["cpu_us"] <= 2000 if s else None))
    s, _ = cell("latency/50ms/plain/1")
    rows.append(("Router-added latency at one client ≤ 2 ms p50",
                 f"{s['p50_added_ms']:.2f} ms (p99 {s['p99_added_ms']:.2f} ms)" if s else "not measured",
                 s["p50_added_ms"] <= 2 if s and not math.isnan(s["p50_added_ms"]) else None))
    steady = [(key, v["steady_conn_per_req"]) for key, v in ours.items()
              if not key.startswith("latency/") and int(key.rsplit("/", 1)[1]) >= 8
              and not math.isnan(v["steady_conn_per_req"])]
    if steady:
        worst_key, worst = max(steady, key=lambda kv: kv[1])
        rows.append(("New upstream connections per request ≤ 0.05, streams included (steady: second half of "
                     "each run, every cell with ≥ 8 clients)", f"worst {worst:.3f} (`{worst_key}`)", worst <= 0.05))
    else:
        rows.append(("New upstream connections per request ≤ 0.05, streams included", "not measured", None))
    peer = summ.get("litellm")
    if peer:
        behind = []
        for key, p in peer.items():
            o = ours.get(key)
            if not o:
                continue
            if key.startswith("latency/"):
                if not o["p50_added_ms"] < p["p50_added_ms"]:
                    behind.append(f"`{key}` added p50 {o['p50_added_ms']:.1f} vs {p['p50_added_ms']:.1f} ms")
            # Where both reach the ceiling (≥ 0.95 × direct: few clients, the answer time sets the
            # rate) it is a tie, not "behind"; so is a difference of at most one whole answer per
            # round, the measurement's resolution (one client: a handful of answers per cell).
            elif not (o["ok_rps"] >= p["ok_rps"] or (o["ratio"] >= 0.95 and p["ratio"] >= 0.95)
                      or o["requests"] >= p["requests"] - o.get("rounds", 1)):
                behind.append(f"`{key}` {o['ok_rps']:.0f} vs {p['ok_rps']:.0f} req/s")
        compared = sum(1 for key in peer if key in ours)
        rows.append(("Ahead of LiteLLM at every client count, in throughput (both ≥ 0.95 × direct counts as a "
                     "tie) and added latency (one client)",
                     f"behind in {len(behind)} of {compared} cells" + (": " + "; ".join(behind[:5]) if behind else ""),
                     not behind and compared > 0))
    else:
        rows.append(("Ahead of LiteLLM at every client count, in throughput and added latency",
                     "not measured (`make bench-peers`)", None))
    if throughput_rows:
        by = {r["name"]: r for r in throughput_rows}
        for name, floor in (("full", 0.70), ("metrics+logs", 0.90), ("full-sampled-10%", 0.85)):
            if name in by:
                r = by[name]
                rows.append((f"Telemetry: `{name}` ≥ {floor:.2f} × `off` (wrk -c8, simulated models)",
                             f"{r['ratio']:.2f} (rounds {r['ratio_min']:.2f}–{r['ratio_max']:.2f}; CPU ratio "
                             f"{r.get('cpu_ratio', float('nan')):.2f})", r["ratio"] >= floor))
    scrape = [r for r in (results.get("scrape") or {}).get("rows", []) if r["workers"] == 2 and r["tenants"] == 50]
    rows.append(("/metrics p50 < 100 ms at 2 workers × 50 tenants × 10 models",
                 f"{scrape[0]['p50'] * 1000:.0f} ms" if scrape else "not measured",
                 scrape[0]["p50"] < 0.1 if scrape else None))
    return rows


def targets_section(results: dict, throughput_rows: list[dict] | None) -> list[str]:
    out = ["## Targets (issue 11)", "",
           "Computed from this run by `bench/report_scenarios.py` (not typed in); *our router* is the "
           f"`{OURS_DEFAULT}` configuration (no worker variables set). A single run on a shared 2-core machine: "
           "a figure near its threshold can land on either side from one run to the next.", "",
           "| target | measured | |", "|---|---|---|"]
    for target, measured, met in target_rows(results, throughput_rows):
        status = "not measured" if met is None else ("met" if met else "**not met**")
        out.append(f"| {target} | {measured} | {status} |")
    out.append("")
    return out


# --- plot ------------------------------------------------------------------------------------


def plot(results: dict, img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    scn = results["scenarios"]
    summ = summary(scn)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, stream in zip(axes, (False, True)):
        for target in scn["targets"]:
            points = []
            for cell in _cells(results, "matrix"):
                s = summ.get(target["name"], {}).get(cell["key"])
                if cell["stream"] == stream and s:
                    points.append((cell["clients"], s["ok_rps"]))
            if not points:
                continue
            # No whole answer at all cannot sit on a log scale: drawn at the bottom as a "v".
            floor = 0.5
            line = ax.plot([c for c, v in points], [max(v, floor) for c, v in points], marker="o",
                           label=target["name"], linestyle="--" if target["kind"] == "direct" else "-")[0]
            zeros = [c for c, v in points if v <= 0]
            if zeros:
                ax.plot(zeros, [floor] * len(zeros), marker="v", markersize=9, linestyle="none",
                        color=line.get_color())
        ax.set_ylim(bottom=0.4)
        ax.annotate("v at the bottom: no whole answer in the run", (0.02, 0.02), xycoords="axes fraction", ha="left",
                    fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("clients (closed loop)")
        ax.set_ylabel("whole answers per second (median)")
        ax.set_title(f"500 ms answers, {'streaming' if stream else 'not streaming'}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "scenarios.png")
    plt.close(fig)
