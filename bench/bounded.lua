-- wrk script: each thread stops after its share of the requests, so a run is
-- bounded in count as well as in time; at the end, one line of JSON.
local limit = tonumber(os.getenv("WRK_REQUESTS_PER_THREAD") or "0")
local answered = 0

function response(status, headers, body)
  answered = answered + 1
  if limit > 0 and answered >= limit then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), errors, summary.errors.status))
end
