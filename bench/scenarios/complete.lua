-- POST /api/v2/procedures/{id}/complete with the body {}, each request a different planned
-- procedure: the ids bench/run topped up and listed in BENCH_PROCEDURES, thread t taking
-- the t-th, (t + BENCH_THREADS)-th… (once the list is used up it starts again, and the
-- repeats answer 409, which the status counts show).
local counter, step = 0, 1
local threads = {}
statuses = {}
local token = os.getenv("BENCH_TOKEN")
local procedures = {}
for line in io.lines(os.getenv("BENCH_PROCEDURES")) do procedures[#procedures + 1] = line end

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
  local id = procedures[(counter % #procedures) + 1]
  counter = counter + step
  return wrk.format("POST", "/api/v2/procedures/" .. id .. "/complete",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, "{}")
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
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"p50_ms":%.3f,"p90_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    table.concat(parts, ",")))
end
