-- wrk script for the scenarios against an OpenAI-shaped endpoint (our router, a peer, or the
-- fake upstream straight): POST /v1/chat/completions, then print the JSON summary line that
-- bench/load.py parses. For a stream, wrk's latency is the time to the end of the response
-- (its last chunk), not to the first token. From the environment:
--   BENCH_MODEL      model name (default "ok")
--   BENCH_STREAM     "1": "stream": true with stream_options.include_usage
--   BENCH_KEY        sent as "Authorization: Bearer <key>" when set
--   BENCH_JITTER_MS  each connection's first request waits a random 0..N ms (wrk leaves the
--                    wait out of the latency), so the clients spread over the answer time
--                    instead of arriving in lockstep waves
--   BENCH_FIRST      connections per wrk thread (how many first requests a thread sends)
local model = os.getenv("BENCH_MODEL") or "ok"
local stream = os.getenv("BENCH_STREAM") == "1"
local key = os.getenv("BENCH_KEY")
local jitter_ms = tonumber(os.getenv("BENCH_JITTER_MS") or "0") or 0
local first = tonumber(os.getenv("BENCH_FIRST") or "0") or 0

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

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (id or 0) * 7919)
  calls = 0
  incomplete = 0
end

if jitter_ms > 0 then
  function delay()
    calls = calls + 1
    if calls <= first then
      return math.random(0, jitter_ms)
    end
    return 0
  end
end

-- A 2xx answer that is not a whole answer: a stream without its final `data: [DONE]`, or a
-- completion without `usage`. wrk counts the first as a success otherwise.
function response(status, headers, body)
  if status >= 200 and status < 300 then
    if stream then
      if not string.find(string.sub(body, -40), "[DONE]", 1, true) then
        incomplete = incomplete + 1
      end
    elseif not string.find(body, '"usage"', 1, true) then
      incomplete = incomplete + 1
    end
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("incomplete") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "incomplete": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, bad, latency:percentile(50), latency:percentile(99), latency.max))
end
