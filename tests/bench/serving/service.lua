-- wrk script: POST ROWS random rows (card, its merchant, an amount) to a feature service.
local n = tonumber(os.getenv("ENTITIES") or "100000")
local size = tonumber(os.getenv("ROWS") or "1")
local service = os.getenv("SERVICE") or "bench3"
local headers = { ["Content-Type"] = "application/json" }
math.randomseed(os.time())

request = function()
  local rows = {}
  for i = 1, size do
    local card = math.random(0, n - 1)
    rows[i] = string.format(
      '{"card_id":"card_%012d","merchant":"m_%05d","amount":%d.5}', card, card % 2000, card % 300)
  end
  local body = '{"rows":[' .. table.concat(rows, ",") .. ']}'
  return wrk.format("POST", "/v1/services/" .. service, headers, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
