-- POST /api/auth/register with a new email every time: run id, wrk thread
-- number and a per-thread counter make it unique across threads and runs.
-- Env: BENCH_RUN_ID, BENCH_PASSWORD, BENCH_LUA_DIR (this folder).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  sent = 0
  run_id = os.getenv("BENCH_RUN_ID")
  password = os.getenv("BENCH_PASSWORD")
  headers = { ["content-type"] = "application/json" }
end

function request()
  sent = sent + 1
  local body = string.format(
    '{"name":"Bench %d-%d","email":"reg-%s-%d-%d@bench.example","password":"%s"}',
    tid, sent, run_id, tid, sent, password)
  return wrk.format("POST", nil, headers, body)
end
