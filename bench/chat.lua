-- wrk script: POST a chat completion that always routes (no cache), and print a JSON
-- summary line (requests, errors, latency percentiles) that bench/load.py parses.
wrk.method = "POST"
wrk.body = '{"model": "auto", "messages": [{"role": "user", "content": "Summarise the benchmark."}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-demo-search"
wrk.headers["Cache-Control"] = "no-cache"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
