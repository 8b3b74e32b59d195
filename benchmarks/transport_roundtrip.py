#!/usr/bin/env python
"""What one message round trip costs on this machine: a unix socketpair (the floor: one
wake-up each way) against ZeroMQ DEALER/ROUTER over ipc (the broker hop: ZeroMQ's I/O
thread on each side adds wake-ups), and mxserve's own BrokerClient against an echo
ROUTER. One client thread, an echo server in another process.

    python benchmarks/transport_roundtrip.py [--count 4000]

Prints round trips per second and the client's CPU per round trip (user, system), and
ZeroMQ's cost as a ratio of the socketpair's, measured in the same run.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _echo_socket(sock: socket.socket) -> None:
    while data := sock.recv(4096):
        sock.sendall(data)


def _echo_router(endpoint: str, protocol_aware: bool) -> None:
    import zmq

    from mxserve.common.protocol import Item, Kind, Message, from_frames, to_frames

    router = zmq.Context().socket(zmq.ROUTER)
    router.bind(endpoint)
    while True:
        identity, *frames = router.recv_multipart(copy=False)
        if not protocol_aware:
            router.send_multipart([identity, *frames], copy=False)
            continue
        request = from_frames(frames)
        reply = Message(Kind.REPLY, {"queue_ms": 0.0}, [
            Item(request.items[0].id, {"result": [[0.0]]})])
        router.send_multipart([identity, *to_frames(reply)], copy=False)


def _measure(label: str, count: int, round_trip: Callable[[int], None]) -> dict:
    for i in range(min(200, count)):  # warm up
        round_trip(i)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for i in range(count):
        round_trip(i)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    result = {"label": label, "round_trips_per_s": count / elapsed,
              "user_us": (after.ru_utime - before.ru_utime) / count * 1e6,
              "system_us": (after.ru_stime - before.ru_stime) / count * 1e6}
    print(f"{label:44s} {result['round_trips_per_s']:8.0f} /s   client CPU per round trip: "
          f"user {result['user_us']:5.0f} us, system {result['system_us']:5.0f} us", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=4000)
    args = parser.parse_args()
    import numpy as np
    import zmq

    from mxserve.frontend.broker_client import BrokerClient

    results = []
    ours, theirs = socket.socketpair()
    echo = mp.Process(target=_echo_socket, args=(theirs,), daemon=True)
    echo.start()

    def socketpair_trip(_: int) -> None:
        ours.sendall(b"x" * 64)
        ours.recv(4096)

    results.append(_measure("unix socketpair, 64 bytes", args.count, socketpair_trip))
    ours.close()
    echo.terminate()

    with tempfile.TemporaryDirectory() as folder:
        raw_endpoint = f"ipc://{folder}/raw.sock"
        echo = mp.Process(target=_echo_router, args=(raw_endpoint, False), daemon=True)
        echo.start()
        dealer = zmq.Context().socket(zmq.DEALER)
        dealer.connect(raw_endpoint)
        dealer.send(b"x")  # the connection is up once this comes back
        dealer.recv()

        def zmq_trip(_: int) -> None:
            dealer.send(b"x" * 64)
            dealer.recv()

        results.append(_measure("ZeroMQ DEALER/ROUTER over ipc, 64 bytes", args.count,
                                zmq_trip))
        echo.terminate()

        endpoint = f"ipc://{folder}/broker.sock"
        echo = mp.Process(target=_echo_router, args=(endpoint, True), daemon=True)
        echo.start()
        client = BrokerClient(endpoint)
        arrays = {"data": np.ones((1, 4), np.float32)}

        def client_trip(i: int) -> None:
            client.predict("noop", f"{os.getpid():x}-{i:x}", arrays, 5.0, 7.0)

        results.append(_measure("BrokerClient.predict against an echo ROUTER", args.count,
                                client_trip))
        echo.terminate()

    floor = results[0]
    for result in results[1:]:
        cpu = result["user_us"] + result["system_us"]
        print(f"{result['label']}: {floor['round_trips_per_s'] / result['round_trips_per_s']:.1f}x "
              f"the socketpair's time per round trip, "
              f"{cpu / (floor['user_us'] + floor['system_us']):.1f}x its client CPU")


if __name__ == "__main__":
    main()
