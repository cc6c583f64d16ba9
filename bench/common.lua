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

-- For setup(thread) in scripts that give each wrk thread (and so each
-- connection, with -t N -c N) a line of its own from the file named by the
-- environment variable ENV: returns the thread's number n and the file's
-- n-th non-empty line; fails when there are more threads than lines.
local thread_lines
local threads_set_up = 0
function line_for_next_thread(env, script)
  if not thread_lines then
    thread_lines = {}
    for line in io.lines(os.getenv(env)) do
      if line ~= "" then thread_lines[#thread_lines + 1] = line end
    end
  end
  threads_set_up = threads_set_up + 1
  if threads_set_up > #thread_lines then
    error(string.format("%s: %d threads but %d lines in %s",
      script, threads_set_up, #thread_lines, env))
  end
  return threads_set_up, thread_lines[threads_set_up]
end
