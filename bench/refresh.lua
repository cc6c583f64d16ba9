-- POST /api/auth/refresh, each client rotating its own session's chain: run
-- wrk with as many threads as connections (-t N -c N), so that each thread
-- has one connection and keeps its session's refresh token in its own Lua
-- state. wrk calls response() and then request() on a connection's thread
-- for every answer, so each request carries the token of the answer before
-- it, as a client that must never present a spent token would. (One wrk
-- thread with many connections would share one Lua state among them, and
-- request() is not told which connection it is for.)
--
-- Every answer but a 200 with a new refresh_token counts as an error (the
-- BENCH line's non2xx): a chain that breaks stays broken, and each later
-- request of that thread then fails too.
-- Env: BENCH_REFRESH_TOKENS (a file: one refresh token a line, one per
-- thread, each of its own session), BENCH_LUA_DIR (this folder).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local threads = {}

function setup(thread)
  local n, token = line_for_next_thread("BENCH_REFRESH_TOKENS", "refresh.lua")
  threads[n] = thread
  thread:set("refresh_token", token)
end

function init(args)
  failed = 0
  request_headers = { ["content-type"] = "application/json" }
end

function request()
  return wrk.format("POST", nil, request_headers,
    '{"refresh_token":"' .. refresh_token .. '"}')
end

function response(status, headers, body)
  local next_token = status == 200 and body:match('"refresh_token":"([^"]+)"')
  if next_token then
    refresh_token = next_token
  else
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local failures = 0
  for _, thread in ipairs(threads) do
    failures = failures + thread:get("failed")
  end
  bench_line(summary, latency, failures)
end
