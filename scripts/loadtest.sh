#!/usr/bin/env bash
# Load-test a predict endpoint with wrk (default) or ab, posting one multipart field per
# request exactly as a client does, and print a one-line summary.
#
#   scripts/loadtest.sh URL MODEL FILE [-c CONNECTIONS] [-d SECONDS] [-n REQUESTS]
#                       [--tool wrk|ab] [--field data] [--text]
#
#   scripts/loadtest.sh http://127.0.0.1:8080 resnet18 sample-models/examples/china.jpg -c 32 -d 30
#   scripts/loadtest.sh http://127.0.0.1:8080 digits_mlp sample-models/examples/digit_0.json --text
#
# Bounded: wrk runs -d seconds (default 30), ab sends -n requests (default 2000).
# Summary: tool, model, connections, requests/s, p50/p90/p99 ms, non-2xx, socket errors.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 3 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
url="${1%/}"; model="$2"; file="$3"; shift 3
connections=32 seconds=30 requests=2000 tool=wrk field=data text=0
while [ $# -gt 0 ]; do
  case "$1" in
    -c) connections="$2"; shift 2 ;;
    -d) seconds="$2"; shift 2 ;;
    -n) requests="$2"; shift 2 ;;
    --tool) tool="$2"; shift 2 ;;
    --field) field="$2"; shift 2 ;;
    --text) text=1; shift ;;
    *) echo "loadtest.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -r "$file" ] || { echo "loadtest.sh: cannot read $file" >&2; exit 2; }
command -v "$tool" >/dev/null || { echo "loadtest.sh: $tool is not installed (apt-get install wrk apache2-utils)" >&2; exit 2; }
target="$url/$model/predict"
out="$(mktemp)"; body="$(mktemp)"; trap 'rm -f "$out" "$body"' EXIT

if [ "$tool" = wrk ]; then
  filename="$(basename "$file")"; [ "$text" = 1 ] && filename=""
  threads=$(( connections < 2 ? connections : 2 ))
  BENCH_FILE="$file" BENCH_FIELD="$field" BENCH_FILENAME="$filename" \
    wrk -t "$threads" -c "$connections" -d "${seconds}s" --timeout 60s --latency \
        -s "$here/benchmarks/multipart.lua" "$target" > "$out"
  awk -v model="$model" -v c="$connections" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0;
                     if (v ~ /m$/) return v * 60000; return v * 1000 }
    /^ +50%/ { p50 = ms($2) } /^ +90%/ { p90 = ms($2) } /^ +99%/ { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(",", ""); errors = $4 + $6 + $8 + $10 }
    END { printf "wrk %s c=%d: %.1f req/s, p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, non-2xx %d, socket errors %d\n",
                 model, c, rps, p50, p90, p99, non2xx, errors }' "$out"
else
  extra=(); [ "$text" = 1 ] && extra=(--text)
  "$here/.venv/bin/python" "$here/benchmarks/ab_body.py" "$file" "$body" "$target" \
      --field "$field" -n "$requests" -c "$connections" "${extra[@]}" > /dev/null
  ab -q -k -n "$requests" -c "$connections" -s 60 -p "$body" \
     -T "multipart/form-data; boundary=mxservebenchboundary7MA4YWxkTrZu0gW" "$target" > "$out"
  awk -v model="$model" -v c="$connections" '
    /^Requests per second:/ { rps = $4 }
    # ab counts a body whose length differs from the first one as "failed (Length)"; JSON
    # answers legitimately differ in length, so only connect/receive/exception failures count.
    /^   \(Connect: / { gsub(/[(),]/, ""); failed = $2 + $4 + $8 }
    /^Non-2xx responses:/ { non2xx = $3 }
    /^ +50%/ { p50 = $2 } /^ +90%/ { p90 = $2 } /^ +99%/ { p99 = $2 }
    END { printf "ab %s c=%d: %.1f req/s, p50 %d ms, p90 %d ms, p99 %d ms, non-2xx %d, failed %d\n",
                 model, c, rps, p50, p90, p99, non2xx, failed }' "$out"
fi
