"""Faults injected for real (signals to real processes) while clients keep asking."""
from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from common.proctree import cmdline, descendants
from tests.server_harness import Server


def test_sigkill_of_a_busy_worker_loses_no_request(sample_models):
    """Its in-flight batch is re-queued once and answered by the other worker."""
    server = Server([f"resnet18={sample_models['resnet18']}"], "--workers-per-model", "2")
    try:
        server.wait_ready()
        image = (sample_models["resnet18"].parent / "examples" / "china.jpg").read_bytes()
        statuses: list[int] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                response = requests.post(f"{server.url}/resnet18/predict",
                                         files={"data": image}, timeout=60)
                statuses.append(response.status_code)

        with ThreadPoolExecutor(16) as pool:
            for _ in range(16):
                pool.submit(client)
            time.sleep(3)  # both workers busy with full batches
            workers = [pid for pid in descendants(server.process.pid)
                       if "-m worker --archive" in cmdline(pid)]
            assert len(workers) == 2
            os.kill(workers[0], signal.SIGKILL)
            time.sleep(4)
            stop.set()
        assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in statuses}
        log = server.log_text()
        assert "lost with" in log  # it really died with requests in flight
        assert f"(pid {workers[0]}) exited with -9; restarting" in log
    finally:
        assert server.stop() == 0
