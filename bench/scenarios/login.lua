-- POST /api/v2/auth/login cycling through the 1,000 clinic owners.
local counter, step = 0, 1
local threads = {}
statuses = {}
local password = os.getenv("BENCH_PASSWORD")

function setup(thread)
  thread:set("tid", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  counter = tid
  step = tonumber(os.getenv("BENCH_THREADS") or "2")
  statuses = {}
end

function request()
  local g = (counter % 1000) + 1
  counter = counter + step
  local body = string.format('{"email":"owner@c%d.bench.molar.test","password":"%s"}', g, password)
  return wrk.format("POST", "/api/v2/auth/login", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do totals[code] = (totals[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(totals) do parts[#parts + 1] = string.format('"%d":%d', code, n) end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    table.concat(parts, ",")))
end
