-- Loaded by every bench/*.lua script (with dofile): at the end of a wrk run,
-- print one machine-readable line that bench/run.sh parses. Latencies are in
-- microseconds; non2xx counts responses with a status of 400 or more (wrk's
-- "status" errors) unless the script passes its own count to bench_line;
-- socket_errors adds up connect, read, write and timeout errors.
function bench_line(summary, latency, non2xx)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests,
    summary.duration,
    latency:percentile(50),
    latency:percentile(99),
    non2xx or e.status,
    e.connect + e.read + e.write + e.timeout))
end

function done(summary, latency, requests)
  bench_line(summary, latency)
end
