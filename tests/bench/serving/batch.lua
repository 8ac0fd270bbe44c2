-- wrk script: POST a batch of BATCH random demo entities per request; JSON summary at the end.
local n = tonumber(os.getenv("ENTITIES") or "100000")
local size = tonumber(os.getenv("BATCH") or "100")
local view = os.getenv("VIEW") or "card_txn"
local headers = { ["Content-Type"] = "application/json" }
math.randomseed(os.time())

request = function()
  local ids = {}
  for i = 1, size do
    ids[i] = string.format('"card_%012d"', math.random(0, n - 1))
  end
  local body = '{"entities":[' .. table.concat(ids, ",") .. ']}'
  return wrk.format("POST", "/v1/features/" .. view, headers, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
