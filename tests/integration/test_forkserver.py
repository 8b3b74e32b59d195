"""CPU workers forked from the fork server (worker/forkserver.py): they serve, they are
managed like any worker, and the server's own death is survived."""
from __future__ import annotations

import os
import signal
import time

import requests

from common.proctree import alive, parent
from tests.server_harness import Server


def predict_digit(server: Server, image: bytes) -> int:
    return requests.post(f"{server.url}/digits/predict", files={"data": image},
                         timeout=30).status_code


def test_workers_are_forked_and_the_fork_servers_death_is_survived(sample_models):
    server = Server([f"digits={sample_models['digits']}"], "--workers-per-model", "2")
    try:
        server.wait_ready()
        image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
        [fork_server] = server.processes("worker.forkserver")
        workers = server.processes("-m worker --archive")  # setproctitle: their own argv
        assert len(workers) == 2 and all(parent(pid) == fork_server for pid in workers)
        assert all(predict_digit(server, image) == 200 for _ in range(8))

        os.kill(fork_server, signal.SIGKILL)  # its workers die with it (PDEATHSIG)
        killed = time.monotonic()
        while True:
            assert time.monotonic() - killed < 90, "no new fork server and workers in 90 s"
            servers = server.processes("worker.forkserver")
            new = set(server.processes("-m worker --archive")) - set(workers)
            if (len(servers) == 1 and servers[0] != fork_server and len(new) == 2
                    and all(parent(pid) == servers[0] for pid in new)
                    and server.catalog()["models"]["digits"]["ready"] == 2):
                break
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers)
        assert all(predict_digit(server, image) == 200 for _ in range(8))
        assert "fork server is gone" in server.log_text()
        print(f"fork server killed: new server and 2 forked workers ready after "
              f"{time.monotonic() - killed:.1f}s")
    finally:
        assert server.stop() == 0


def test_without_fork_workers_each_worker_is_a_fresh_process(sample_models):
    server = Server([f"digits={sample_models['digits']}"], "--workers-per-model", "2",
                    "--no-fork-workers")
    try:
        server.wait_ready()
        [broker] = server.processes("worker.broker")
        assert server.processes("worker.forkserver") == []
        workers = server.processes("-m worker --archive")
        assert len(workers) == 2 and all(parent(pid) == broker for pid in workers)
        image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
        assert predict_digit(server, image) == 200
    finally:
        assert server.stop() == 0
