-- wrk script: POST one multipart/form-data field per request (mxserve's predict contract).
--   BENCH_FILE      the file whose bytes are the field's value
--   BENCH_FIELD     the field name (default "data")
--   BENCH_FILENAME  a file name makes it a file part (images); empty: a text field (JSON)
local boundary = "mxservebenchboundary7MA4YWxkTrZu0gW"
local path = assert(os.getenv("BENCH_FILE"), "set BENCH_FILE")
local field = os.getenv("BENCH_FIELD") or "data"
local filename = os.getenv("BENCH_FILENAME") or "image.jpg"
local f = assert(io.open(path, "rb"))
local data = f:read("*a")
f:close()
local disposition = 'Content-Disposition: form-data; name="' .. field .. '"'
if filename ~= "" then
  disposition = disposition .. '; filename="' .. filename .. '"\r\nContent-Type: application/octet-stream'
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n" .. disposition .. "\r\n\r\n" .. data .. "\r\n--" .. boundary .. "--\r\n"
