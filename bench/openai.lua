-- wrk script for the OpenAI-shaped scenarios (router, peers, or the fake upstream straight):
-- POST /v1/chat/completions with the model, stream flag and bearer key from the environment,
-- and print the JSON summary line bench/load.py parses. For a stream, wrk's latency is the
-- time to the end of the response (the last chunk), not to the first token.
--   BENCH_MODEL   model name (default "ok")
--   BENCH_STREAM  "1": "stream": true with stream_options.include_usage
--   BENCH_KEY     sent as "Authorization: Bearer <key>" when set
local model = os.getenv("BENCH_MODEL") or "ok"
local stream = os.getenv("BENCH_STREAM") == "1"
local key = os.getenv("BENCH_KEY")

wrk.method = "POST"
local body = '{"model": "' .. model .. '", "messages": [{"role": "user", "content": "Summarise the benchmark."}]'
if stream then
  body = body .. ', "stream": true, "stream_options": {"include_usage": true}'
end
wrk.body = body .. '}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Cache-Control"] = "no-cache"
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
