-- wrk script: POST the JSON body in the file named by the first script argument; at the end,
-- print one line "BENCH_RESULT {json}" with the counts, errors and latency percentiles (us).
-- Usage: wrk -t2 -c8 -d5s -s bench/post.lua http://127.0.0.1:8000/path -- body.json

function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = "application/json"
end

local function pct(latency, p)
  return string.format("%.0f", latency:percentile(p))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write("BENCH_RESULT {",
    '"requests": ', summary.requests, ", ",
    '"duration_us": ', summary.duration, ", ",
    '"bytes": ', summary.bytes, ", ",
    '"errors": {"connect": ', e.connect, ', "read": ', e.read, ', "write": ', e.write,
    ', "status": ', e.status, ', "timeout": ', e.timeout, "}, ",
    '"latency_us": {"min": ', latency.min, ', "mean": ', string.format("%.1f", latency.mean),
    ', "max": ', latency.max, ', "p50": ', pct(latency, 50), ', "p90": ', pct(latency, 90),
    ', "p95": ', pct(latency, 95), ', "p99": ', pct(latency, 99), ', "p999": ', pct(latency, 99.9),
    "}}\n")
end
