-- wrk script: POST one prebuilt KServe v2 binary request (JSON header + tensor bytes).
--   BENCH_FILE            the request body, as benchmarks/protocols.py writes it
--   BENCH_HEADER_LENGTH   the length of its JSON part (Inference-Header-Content-Length)
local f = assert(io.open(assert(os.getenv("BENCH_FILE"), "set BENCH_FILE"), "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Inference-Header-Content-Length"] = assert(os.getenv("BENCH_HEADER_LENGTH"))
wrk.body = body
