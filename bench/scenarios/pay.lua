-- POST /api/v2/payments as the owner (who holds ledger.write), no allocations, so each
-- payment's whole amount becomes the payer's credit. Request i of thread t pays for
-- patient (i % 100) of BENCH_PATIENTS (i runs t, t + BENCH_THREADS, …); each round of
-- the patients pays another amount (10.00 to 59.00) by the next method (cash, card, bank
-- transfer, check). Each request carries an Idempotency-Key of its own, made of the
-- run's BENCH_PAY_RUN, the thread and the request's number, so that no key repeats
-- within a run or across runs (keys are kept 24 hours). A replayed answer
-- (`Idempotent-Replayed: true`) posts nothing and is counted apart; bench/run checks
-- the balances against the 201 answers afterwards.
local counter, step = 0, 1
local threads = {}
statuses = {}
replayed = 0
local token = os.getenv("BENCH_TOKEN")
local run = os.getenv("BENCH_PAY_RUN")
local methods = {"cash", "card", "bank_transfer", "check"}
local patients = {}
for line in io.lines(os.getenv("BENCH_PATIENTS")) do patients[#patients + 1] = line end

function setup(thread)
  thread:set("tid", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  counter = tid
  step = tonumber(os.getenv("BENCH_THREADS") or "2")
  statuses = {}
  replayed = 0
end

function request()
  local i = counter
  counter = counter + step
  local round = math.floor(i / #patients)
  local body = string.format('{"patient_id":"%s","amount_cents":%d,"method":"%s"}',
    patients[(i % #patients) + 1], 1000 + (round % 50) * 100, methods[(round % #methods) + 1])
  return wrk.format("POST", "/api/v2/payments",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token,
     ["Idempotency-Key"] = string.format("bench-pay-%s-%d-%d", run, tid, i)}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if headers["idempotent-replayed"] or headers["Idempotent-Replayed"] then replayed = replayed + 1 end
end

function done(summary, latency, requests)
  local totals, again = {}, 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do totals[code] = (totals[code] or 0) + n end
    again = again + t:get("replayed")
  end
  local parts = {}
  for code, n in pairs(totals) do parts[#parts + 1] = string.format('"%d":%d', code, n) end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"p50_ms":%.3f,"p90_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"replayed":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, again,
    table.concat(parts, ",")))
end
