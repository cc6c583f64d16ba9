-- PATCH /api/users/{id} name changes, each connection as its own user: run
-- wrk with as many threads as connections (-t N -c N) and a users file of
-- at least N lines, "TOKEN ID" each; thread n renames user n, through the
-- path /api/users/ID (the URL given to wrk supplies only the host). Users
-- of their own, because many clients renaming one user queue on that one
-- row's lock, which says little about a store's write rate.
-- Env: BENCH_PATCH_USERS (the users file), BENCH_LUA_DIR (this folder).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local threads = {}
local users

function setup(thread)
  if not users then
    users = {}
    for line in io.lines(os.getenv("BENCH_PATCH_USERS")) do
      local token, id = line:match("^(%S+) (%S+)$")
      if token then users[#users + 1] = { token = token, id = id } end
    end
  end
  local n = #threads + 1
  if n > #users then
    error(string.format("patch_users.lua: %d threads but %d users", n, #users))
  end
  threads[n] = thread
  thread:set("token", users[n].token)
  thread:set("id", users[n].id)
  thread:set("tid", n)
end

function init(args)
  sent = 0
  headers = {
    ["content-type"] = "application/json",
    ["x-access-token"] = token,
  }
  path = "/api/users/" .. id
end

function request()
  sent = sent + 1
  return wrk.format("PATCH", path, headers,
    string.format('{"name":"Bench %d-%d"}', tid, sent))
end
