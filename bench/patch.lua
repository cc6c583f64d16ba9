-- PATCH the URL given to wrk (/api/users/{id}) as that user, with a new name
-- every time (a durable write without hashing).
-- Env: BENCH_TOKEN (the user's own token), BENCH_LUA_DIR (this folder).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  sent = 0
  headers = {
    ["content-type"] = "application/json",
    ["x-access-token"] = os.getenv("BENCH_TOKEN"),
  }
end

function request()
  sent = sent + 1
  return wrk.format("PATCH", nil, headers,
    string.format('{"name":"Bench %d-%d"}', tid, sent))
end
