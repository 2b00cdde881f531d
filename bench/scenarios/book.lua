-- POST /api/v2/appointments spread over clinic 1's 50 dentists: request i of thread t
-- books provider (i % 50) in its own chair at slot (i / 50), 30 minutes each, from
-- BENCH_BASE_EPOCH on (20-minute appointments, so the last one of a day still ends
-- inside the 00:00–23:59 working hours); patients rotate through 100 so no two overlap.
-- BENCH_CONTENDED=1 books one slot for everyone instead (exactly one may win).
local counter, step = 0, 1
local threads = {}
statuses = {}
local token = os.getenv("BENCH_TOKEN")
local base = tonumber(os.getenv("BENCH_BASE_EPOCH"))
local contended = os.getenv("BENCH_CONTENDED") == "1"
local patients = {}
for line in io.lines(os.getenv("BENCH_PATIENTS")) do patients[#patients + 1] = line end

local function uuid(kind, n)
  return string.format("%08x-0000-7000-8000-%012x", kind, n)
end

function setup(thread)
  thread:set("tid", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  counter = tid
  step = tonumber(os.getenv("BENCH_THREADS") or "2")
  statuses = {}
end

local function iso(epoch)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", epoch)
end

function request()
  local i = counter
  counter = counter + step
  local k, slot = i % 50, math.floor(i / 50)
  if contended then k, slot = 0, 0 end
  local start = base + slot * 1800
  local body = string.format(
    '{"patient_id":"%s","provider_id":"%s","operatory_id":"%s","start_at":"%s","end_at":"%s"}',
    patients[(i % #patients) + 1], uuid(2, 100 + k + 2), uuid(3, 100 + k + 1), iso(start), iso(start + 1200))
  return wrk.format("POST", "/api/v2/appointments",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
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
