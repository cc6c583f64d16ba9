-- GET the URL given to wrk (/api/auth/me) with a valid token.
-- Env: BENCH_TOKEN (the token), BENCH_LUA_DIR (this folder).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

wrk.method = "GET"
wrk.headers["x-access-token"] = os.getenv("BENCH_TOKEN")
