#!/usr/bin/env python
"""Soak with faults: sustained load, malformed requests mixed in, workers SIGKILLed.

    python scripts/soak.py [--minutes 10] [--connections 32 256] [--malformed 0.1]
                           [--kill-every 60] [--report docs/soak.md]

For each connection count in turn: starts `mxserve start` with the digits model on two CPU
workers, runs that many keep-alive HTTP clients for --minutes (asyncio, raw HTTP/1.1), one
request in ten malformed (truncated JPEG, text bytes, wrong field, a 20000x20000 header,
unknown model, bad JSON tensor), and SIGKILLs one worker every --kill-every seconds. Prints:
requests by kind and status; failed good requests (anything but a 200 with the right class,
or a 503 + Retry-After refusal under overload: must be 0), malformed requests that got
anything but a JSON 4xx (must be 0); p99 latency per minute; RSS of every server process per
minute and its growth from minute 2 to the end (must stay under 100 MB per process).

Bounded: minutes x connection counts, plus about 20 s of start-up per phase. Run it alone.
(benchmarks/soak.py is the plain memory soak under wrk that the README's table reports.)
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mxserve.common.proctree import descendants, role, rss_bytes  # noqa: E402
from tests.server_harness import Server  # noqa: E402

RSS_GROWTH_LIMIT_MIB = 100
BOUNDARY = "soakboundary"


def multipart(field: str, data: bytes) -> tuple[bytes, str]:
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"f\"\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def http_request(path: str, body: bytes, content_type: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def build_requests(examples: Path) -> tuple[bytes, dict[str, bytes]]:
    from PIL import Image

    digit = (examples / "digit_0.jpg").read_bytes()
    good = http_request("/digits/predict", *multipart("data", digit))
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, format="JPEG")
    huge = bytearray(out.getvalue())
    sof = huge.index(b"\xff\xc0")
    huge[sof + 5:sof + 9] = (20_000).to_bytes(2, "big") * 2
    photo = (examples / "china.jpg").read_bytes()
    bad = {
        "truncated_jpeg": http_request("/digits/predict", *multipart("data", photo[:30000])),
        "text_bytes": http_request("/digits/predict", *multipart("data", b"not an image")),
        "wrong_field": http_request("/digits/predict", *multipart("image", digit)),
        "huge_header": http_request("/digits/predict", *multipart("data", bytes(huge))),
        "unknown_model": http_request("/nope/predict", *multipart("data", digit)),
        "bad_tensor": http_request("/digits_mlp/predict", *multipart("data", b"[[1, 2,")),
    }
    return good, bad


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(lines[0].split()[1]), headers, body


class Results:
    def __init__(self, started: float, minutes: float) -> None:
        self.started = started
        self.last_minute = max(1, int(-(-minutes // 1)))
        self.by_kind: Counter = Counter()  # (kind, status)
        self.failed_good: list[str] = []
        self.bad_answers: list[str] = []
        self.latency: dict[int, list[float]] = defaultdict(list)  # minute -> seconds (good)

    def minute(self) -> int:
        """1-based; answers arriving after the end count in the last minute."""
        return min(int((time.monotonic() - self.started) // 60) + 1, self.last_minute)


async def client(port: int, good: bytes, bad: dict[str, bytes], malformed: float,
                 results: Results, stop: asyncio.Event, rng: random.Random) -> None:
    reader = writer = None
    while not stop.is_set():
        kind = rng.choice(list(bad)) if rng.random() < malformed else "good"
        request = good if kind == "good" else bad[kind]
        started = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            status, headers, body = await asyncio.wait_for(read_response(reader), 60)
        except (TimeoutError, OSError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            results.by_kind[(kind, type(exc).__name__)] += 1
            (results.failed_good if kind == "good" else results.bad_answers).append(
                f"{kind}: {type(exc).__name__}")
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        results.by_kind[(kind, status)] += 1
        if kind == "good":
            results.latency[results.minute()].append(time.monotonic() - started)
            if status == 200:
                answer = json.loads(body)["prediction"][0][0]["class"]
                if answer != "0":
                    results.failed_good.append(f"good: wrong class {answer}")
            elif not (status == 503 and "retry-after" in headers):
                results.failed_good.append(f"good: {status} {body[:200]!r}")
        elif not (400 <= status < 500 and headers.get("content-type") == "application/json"):
            results.bad_answers.append(f"{kind}: {status} {body[:200]!r}")
        if headers.get("connection", "").lower() == "close":
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def run_phase(server: Server, connections: int, minutes: float, malformed: float,
                    kill_every: float, good: bytes, bad: dict[str, bytes]) -> dict:
    started = time.monotonic()
    results = Results(started, minutes)
    stop = asyncio.Event()
    rng = random.Random(connections)
    tasks = [asyncio.create_task(client(server.port, good, bad, malformed, results, stop,
                                        random.Random(rng.random())))
             for _ in range(connections)]
    rss: dict[int, dict[int, float]] = defaultdict(dict)  # pid -> minute -> MiB
    roles: dict[int, str] = {}
    kills = 0
    next_kill = started + kill_every
    next_sample = started
    end = started + minutes * 60
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            minute = int((now - started) // 60) + 1
            for pid in descendants(server.process.pid) | {server.process.pid}:
                value = rss_bytes(pid) / 2**20
                if value:
                    roles.setdefault(pid, role(pid))
                    rss[pid][minute] = max(rss[pid].get(minute, 0.0), value)
            next_sample = now + 10
        if now >= next_kill:
            workers = server.processes("worker --archive")
            if workers:
                os.kill(workers[kills % len(workers)], signal.SIGKILL)
                kills += 1
            next_kill = now + kill_every
        await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    return {"results": results, "rss": rss, "roles": roles, "kills": kills,
            "seconds": time.monotonic() - started}


def report(connections: int, minutes: float, phase: dict) -> tuple[str, bool]:
    results: Results = phase["results"]
    lines = [f"## {connections} connections, {minutes:g} min, {phase['kills']} worker "
             f"SIGKILLs", ""]
    total = sum(results.by_kind.values())
    lines.append(f"{total} requests ({total / phase['seconds']:.0f}/s):")
    for (kind, status), count in sorted(results.by_kind.items(), key=str):
        lines.append(f"- {kind} -> {status}: {count}")
    lines += ["", f"failed good requests: {len(results.failed_good)} "
                  f"{results.failed_good[:5] if results.failed_good else ''}",
              f"malformed requests without a JSON 4xx: {len(results.bad_answers)} "
              f"{results.bad_answers[:5] if results.bad_answers else ''}", "",
              "| minute | good requests | p99 ms |", "|---|---|---|"]
    for minute in sorted(results.latency):
        values = sorted(results.latency[minute])
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))] * 1000
        lines.append(f"| {minute} | {len(values)} | {p99:.0f} |")
    last = max((m for per in phase["rss"].values() for m in per), default=1)
    lines += ["", "RSS MiB per process per minute (max of 10 s samples); growth from minute 2 "
              "to the end, for processes alive throughout:", "",
              "| process | pid | " + " | ".join(str(m) for m in range(1, last + 1))
              + " | growth |", "|---|---|" + "---|" * (last + 1)]
    ok = not results.failed_good and not results.bad_answers
    for pid, per in sorted(phase["rss"].items(), key=lambda kv: (phase["roles"][kv[0]], kv[0])):
        cells = [f"{per[m]:.0f}" if m in per else "" for m in range(1, last + 1)]
        growth = ""
        if 2 in per and last in per and last > 2:
            grown = per[last] - per[2]
            growth = f"{grown:+.1f}"
            ok = ok and grown < RSS_GROWTH_LIMIT_MIB
        lines.append(f"| {phase['roles'][pid]} | {pid} | " + " | ".join(cells)
                     + f" | {growth} |")
    return "\n".join(lines) + "\n", ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--malformed", type=float, default=0.1)
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--report", type=Path, default=None, help="also write it here (md)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_sample_models

    models = make_sample_models.build(ROOT / "sample-models")
    good, bad = build_requests(models["digits"].parent / "examples")
    sections = [f"# Soak with faults\n\n`python scripts/soak.py --minutes {args.minutes:g} "
                f"--connections {' '.join(map(str, args.connections))}` on "
                f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs: digits (+ digits_mlp) on "
                f"two CPU workers, {args.malformed:.0%} malformed requests, one worker "
                f"SIGKILLed every {args.kill_every:g} s.\n"]
    all_ok = True
    for connections in args.connections:
        server = Server([f"digits={models['digits']}", f"digits_mlp={models['digits_mlp']}"],
                        "--workers-per-model", "2")
        try:
            server.wait_ready()
            phase = asyncio.run(run_phase(server, connections, args.minutes, args.malformed,
                                          args.kill_every, good, bad))
        finally:
            code = server.stop()
        text, ok = report(connections, args.minutes, phase)
        text += f"\nmxserve exited with {code} after SIGTERM.\n"
        print(text, flush=True)
        sections.append(text)
        all_ok = all_ok and ok and code == 0
    verdict = "PASS" if all_ok else "FAIL"
    sections.append(f"\nVerdict: {verdict} (0 failed good requests, every malformed request a "
                    f"JSON 4xx, RSS growth < {RSS_GROWTH_LIMIT_MIB} MB per process).\n")
    print(sections[-1])
    if args.report:
        args.report.write_text("\n".join(sections))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
