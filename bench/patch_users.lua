-- PATCH /api/users/{id} name changes, each connection as its own user: run
-- wrk with as many threads as connections (-t N -c N) and a users file of
-- at least N lines, "TOKEN ID" each; thread n renames user n, through the
-- path /api/users/ID (the URL given to wrk supplies only the host). Users
-- of their own, because many clients renaming one user queue on that one
-- row's lock, which says little about a store's write rate.
-- Env: BENCH_PATCH_USERS (the users file), BENCH_LUA_DIR (this folder).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function setup(thread)
  local n, line = line_for_next_thread("BENCH_PATCH_USERS", "patch_users.lua")
  local token, id = line:match("^(%S+) (%S+)$")
  if not token then error("patch_users.lua: not a \"TOKEN ID\" line: " .. line) end
  thread:set("token", token)
  thread:set("id", id)
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
