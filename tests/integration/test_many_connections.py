"""1,000 simultaneous connections on the real stack: every request is answered 200 or 503
(those that waited frontend_queue_timeout_s for a thread), none hangs past its deadline or
is reset, and health checks (/ping, /livez, /readyz, v2 health) stay fast throughout
because they never wait behind predictions (frontend/gunicorn_worker.py)."""
from __future__ import annotations

import asyncio
import json
import resource
import threading
import time

import requests

CONNECTIONS = 1000


async def _one(port: int, request: bytes, go: asyncio.Event) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await go.wait()
        writer.write(request)
        await writer.drain()
        answer = await reader.read()  # Connection: close -> until EOF
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    kind = "" if status in (0, 200) else json.loads(body)["type"]
    return status, kind


async def _burst(port: int, request: bytes) -> list:
    go = asyncio.Event()
    tasks = [asyncio.create_task(_one(port, request, go)) for _ in range(CONNECTIONS)]
    await asyncio.sleep(1.0)  # every connection open (and accepted) before anyone sends
    go.set()
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)


def test_1000_simultaneous_connections_get_200_or_503_and_ping_stays_fast(server, sample_models):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    image = (sample_models["resnet18"].parent / "examples" / "china.jpg").read_bytes()
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; "
            f"filename=\"china.jpg\"\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    request = (f"POST /resnet18/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    pings: list[tuple[int, float]] = []
    ping_times: list[float] = []
    stop = threading.Event()

    probes = ("/ping", "/livez", "/readyz", "/v2/health/ready")
    by_probe: dict[str, list[float]] = {probe: [] for probe in probes}

    def ping_loop() -> None:
        turn = 0
        while not stop.is_set():
            probe = probes[turn % len(probes)]
            turn += 1
            started = time.monotonic()
            status = requests.get(server.url + probe, timeout=10).status_code
            pings.append((status, time.monotonic() - started))
            by_probe[probe].append(time.monotonic() - started)
            ping_times.append(started)
            time.sleep(0.02)  # ~500 samples over the burst: a p99 worth the name

    pinger = threading.Thread(target=ping_loop)
    pinger.start()
    try:
        started = time.monotonic()
        outcomes = asyncio.run(_burst(server.port, request))
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        pinger.join()
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors[:3]
    counts: dict[tuple[int, str], int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    assert set(counts) <= {(200, ""), (503, "ServiceUnavailable")}, counts
    assert counts.get((200, ""), 0) >= 100  # at least what one frontend admits was served
    latencies = sorted(seconds for _, seconds in pings)
    p99 = latencies[int(len(latencies) * 0.99) - 1] if len(latencies) >= 100 else latencies[-1]
    print(f"{CONNECTIONS} connections in {elapsed:.1f}s: {counts}; /ping x{len(pings)} "
          f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"slowest {[round(t * 1000) for t in latencies[-5:]]} ms")
    slow_at = [round(t - started, 2) for t, (_, d) in zip(ping_times, pings) if d > 0.05]
    print(f"slow pings at {slow_at} s after the burst's start")
    print("slowest per probe (ms):", {probe: round(max(times) * 1000) for probe, times in
                                      by_probe.items() if times})
    assert all(by_probe.values()), by_probe
    # every probe, not just the pooled p99: one that queued behind predictions waits seconds
    assert all(max(times) < 1.0 for times in by_probe.values()), by_probe
    assert {status for status, _ in pings} == {200}
    # A ping that waited behind predictions would take seconds (the burst drains at
    # ~25 req/s). Half a second separates that from this 2-core VM's scheduling noise,
    # which has put single pings at 100-450 ms; speed itself is the benchmark's business.
    assert p99 < 0.5
    assert elapsed < 30 + 5, "some request outlived its deadline"
