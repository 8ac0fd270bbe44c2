-- wrk script: GET one demo entity per request, Zipf-distributed over ENTITIES (exponent ZIPF_S;
-- entity 0 the hottest); with HOT=k only the k hottest (uniformly). Prints a JSON summary.
local n = tonumber(os.getenv("ENTITIES") or "100000")
local s = tonumber(os.getenv("ZIPF_S") or "1.0")
local hot = tonumber(os.getenv("HOT") or "0")
local view = os.getenv("VIEW") or "card_txn"
local cdf = {}

init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  local total = 0
  for i = 1, n do
    total = total + 1 / (i ^ s)
    cdf[i] = total
  end
  for i = 1, n do cdf[i] = cdf[i] / total end
end

local function zipf()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo - 1
end

request = function()
  local i = hot > 0 and math.random(0, hot - 1) or zipf()
  return wrk.format("GET", string.format("/v1/features/%s/card_%012d", view, i))
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
