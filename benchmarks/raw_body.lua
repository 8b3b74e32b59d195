-- wrk script: POST one file as the raw request body (MMS 1.x's /predictions style).
--   BENCH_FILE          the body
--   BENCH_CONTENT_TYPE  its media type
local f = assert(io.open(assert(os.getenv("BENCH_FILE"), "set BENCH_FILE"), "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = assert(os.getenv("BENCH_CONTENT_TYPE"), "set BENCH_CONTENT_TYPE")
wrk.body = body
