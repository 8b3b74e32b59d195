"""CPU workers forked from the fork server (worker/forkserver.py): they serve, they are
managed like any worker, and the server's own death is survived."""
from __future__ import annotations

import os
import signal
import threading
import time

import requests

from mxserve.common.child_processes import spawn
from mxserve.common.proctree import alive, parent
from mxserve.worker.broker.forkserver_client import ForkServer
from tests.server_harness import Server, wait_gone


def predict_digit(server: Server, image: bytes) -> int:
    return requests.post(f"{server.url}/digits/predict", files={"data": image},
                         timeout=30).status_code


def test_workers_outlive_their_fork_server_and_lose_no_request(sample_models):
    """SIGKILL of the fork server under load: its workers are adopted by the broker and
    keep serving (0 failed requests), a new server forks later workers."""
    server = Server([f"digits={sample_models['digits']}"], "--workers-per-model", "2")
    try:
        server.wait_ready()
        image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
        [fork_server] = server.processes("worker.forkserver")
        [broker] = server.processes("worker.broker")
        workers = server.processes("worker --archive")  # setproctitle: their own argv
        assert len(workers) == 2 and all(parent(pid) == fork_server for pid in workers)

        stop, statuses = threading.Event(), []

        def load() -> None:
            while not stop.is_set():
                statuses.append(predict_digit(server, image))

        clients = [threading.Thread(target=load) for _ in range(4)]
        for client in clients:
            client.start()
        time.sleep(1.0)
        os.kill(fork_server, signal.SIGKILL)
        killed = time.monotonic()
        while True:
            assert time.monotonic() - killed < 60, "no new fork server in 60 s"
            servers = server.processes("worker.forkserver")
            if len(servers) == 1 and servers[0] != fork_server:
                break
            time.sleep(0.2)
        time.sleep(2.0)  # still under load with the new server up
        stop.set()
        for client in clients:
            client.join()
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert all(alive(pid) and parent(pid) == broker for pid in workers)
        assert "keep serving" in server.log_text()

        # A worker that dies now is replaced by a fork of the new server, and the adopted
        # one is reaped by the broker like any child.
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() - deadline < 0, "the killed worker was not replaced"
            new = set(server.processes("worker --archive")) - set(workers)
            if (len(new) == 1 and parent(new.pop()) == servers[0]
                    and server.catalog()["models"]["digits"]["ready"] == 2):
                break
            time.sleep(0.2)
        assert all(predict_digit(server, image) == 200 for _ in range(8))
        print(f"fork server killed under load: {len(statuses)} requests, all 200")
    finally:
        assert server.stop() == 0
    assert not any(alive(pid) for pid in workers)


def test_without_fork_workers_each_worker_is_a_fresh_process(sample_models):
    server = Server([f"digits={sample_models['digits']}"], "--workers-per-model", "2",
                    "--no-fork-workers")
    try:
        server.wait_ready()
        [broker] = server.processes("worker.broker")
        assert server.processes("worker.forkserver") == []
        workers = server.processes("worker --archive")
        assert len(workers) == 2 and all(parent(pid) == broker for pid in workers)
        image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
        assert predict_digit(server, image) == 200
    finally:
        assert server.stop() == 0


def started(fork_server: ForkServer, timeout_s: float = 60.0) -> ForkServer:
    deadline = time.monotonic() + timeout_s
    while not fork_server.can_fork(fork_server.env):
        assert time.monotonic() < deadline, "the fork server never said READY"
        time.sleep(0.05)
    return fork_server


def a_worker_argv(sample_models, run_dir) -> list[str]:
    """A real worker that loads digits and then waits for a broker that never answers."""
    return ["--archive", str(sample_models["digits"]), "--model-name", "digits",
            "--broker", f"ipc://{run_dir}/nobody.sock", "--max-batch-size", "8",
            "--worker-id", "digits-0-1"]


def test_a_fork_server_outlives_a_crashed_broker_for_the_next_one(sample_models, tmp_path):
    """A broker SIGKILLed drops its connection: the server kills that broker's workers and
    serves the next broker at once (no second `import mxnet`); it exits once its socket
    path is gone."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    path = tmp_path / "forkserver.sock"
    first = started(ForkServer(env, spawn, path))
    server_pid = first._process.pid
    worker = first.spawn(a_worker_argv(sample_models, tmp_path), env, "a worker")
    assert alive(worker.pid) and parent(worker.pid) == server_pid

    first._sock.close()  # the broker's end vanishes, as when it is SIGKILLed
    assert wait_gone({worker.pid}, 5) == set(), "the dead broker's worker was not killed"
    assert alive(server_pid)

    attached = time.monotonic()
    second = started(ForkServer(env, spawn, path), timeout_s=5)
    assert second._process is None and second._pid == server_pid
    print(f"the next broker attached in {time.monotonic() - attached:.2f}s")
    again = second.spawn(a_worker_argv(sample_models, tmp_path), env, "a worker")
    assert parent(again.pid) == server_pid

    second._sock.close()
    path.unlink()  # the run directory is gone: nobody can attach any more
    assert wait_gone({server_pid, again.pid}, 5) == set()
    first._process.wait(1)


def test_a_broker_with_another_environment_starts_its_own_fork_server(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    path = tmp_path / "forkserver.sock"
    first = started(ForkServer(env, spawn, path))
    old_pid = first._process.pid
    first._sock.close()

    other = started(ForkServer(dict(env, OMP_NUM_THREADS="2"), spawn, path))
    assert other._process is not None and other._process.pid != old_pid
    assert first._process.wait(5) == 0, "the refusing server did not exit"
    other.stop()
    assert other._process.poll() is not None
