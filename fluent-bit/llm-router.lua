-- Record handling for the router's log lines, between the JSON parser and the Loki output
-- (fluent-bit/fluent-bit.yaml, filter `lua`, call `llm_router_record`).
--
-- Tested without Fluent Bit by tests/config/test_fluent_bit_records.py, which runs this very
-- file in LuaJIT (the Lua Fluent Bit embeds) on lines the router's own formatter writes.
--
-- What it does, and why:
--   * JSON null never reaches Loki. Fluent Bit hands a null to Lua as nil (unless the filter
--     sets enable_flb_null), which removes the key from the table; the loop below also drops
--     empty strings. Without this the Loki output wrote trace_id="null" into structured
--     metadata for every line logged outside a request.
--   * Every line gets the `service` and `level` stream labels, including lines that are not
--     JSON (a traceback, anything on stderr): `service` from the Docker tag, `level` from
--     the stream (stderr -> error, stdout -> info). Otherwise no dashboard query finds them.
--   * The container name loses Docker's leading "/".
--   * The request facts are copied into a `metadata` map that the Loki output sends as
--     structured metadata (structured_metadata_map_keys) and then removes from the line;
--     the line itself keeps trace_id, request_id, tenant and model, so a plain "line
--     contains" search finds them.

-- Docker tag (compose.yaml, logging.options.tag) -> the service name the router's own JSON
-- lines carry, for lines that carry none.
local SERVICES = {
  ["llm-router.router"] = "llm-router",
  ["llm-router.alert-sink"] = "llm-alertsink",
}

-- Request facts that become structured metadata (never stream labels: one value per line).
local METADATA_KEYS = { "trace_id", "span_id", "request_id", "tenant", "model" }

local function service_for(tag)
  local known = SERVICES[tag]
  if known then
    return known
  end
  -- An unknown tag: its last dot-separated part, so a new container still gets a label.
  return string.match(tag, "([^.]+)$") or tag
end

function llm_router_record(tag, timestamp, record)
  -- Empty strings are no better than null as labels or metadata.
  for key, value in pairs(record) do
    if value == "" then
      record[key] = nil
    end
  end

  -- A line the JSON parser could not read still has Docker's raw `log` field: keep its
  -- text under `message`, like every JSON line.
  if record["log"] ~= nil and record["message"] == nil then
    record["message"] = record["log"]
    record["log"] = nil
  end

  if record["service"] == nil then
    record["service"] = service_for(tag)
  end
  if record["level"] == nil then
    if record["source"] == "stderr" then
      record["level"] = "error"
    else
      record["level"] = "info"
    end
  end

  local name = record["container_name"]
  if type(name) == "string" then
    record["container_name"] = string.gsub(name, "^/", "")
  end

  local metadata = {}
  local found = false
  for _, key in ipairs(METADATA_KEYS) do
    local value = record[key]
    if value ~= nil then
      metadata[key] = tostring(value)
      found = true
    end
  end
  if found then
    record["metadata"] = metadata
  end

  -- 2: the record changed, the timestamp did not (code 1 would round it through a Lua
  -- number and lose the router's milliseconds).
  return 2, timestamp, record
end
