-- Loaded by every bench/*.lua script (with dofile): at the end of a wrk run,
-- print one machine-readable line that bench/run.sh parses. Latencies are in
-- microseconds; non2xx counts responses with a status of 400 or more (wrk's
-- "status" errors); socket_errors adds up connect, read, write and timeout
-- errors.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests,
    summary.duration,
    latency:percentile(50),
    latency:percentile(99),
    e.status,
    e.connect + e.read + e.write + e.timeout))
end
