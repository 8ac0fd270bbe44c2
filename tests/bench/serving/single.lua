-- wrk script: GET one random demo entity per request; prints a JSON summary line at the end.
local n = tonumber(os.getenv("ENTITIES") or "100000")
local view = os.getenv("VIEW") or "card_txn"
math.randomseed(os.time())

request = function()
  return wrk.format("GET", string.format("/v1/features/%s/card_%012d", view, math.random(0, n - 1)))
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
