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
from tests.server_harness import Server, eventually, wait_gone


def predict_digit(server: Server, image: bytes) -> int:
    return requests.post(f"{server.url}/digits/predict", files={"data": image},
                         timeout=30).status_code


def test_workers_outlive_their_fork_server_and_lose_no_request(sample_models):
    """SIGKILL of the fork server under load: its workers are adopted by the broker and
    keep serving (0 failed requests), a new server forks later workers."""
    with Server([f"digits={sample_models['digits']}"], "--workers-per-model", "2") as server:
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
        eventually(lambda: len(statuses) >= 16, 30, "answers under load")
        os.kill(fork_server, signal.SIGKILL)

        def replaced() -> list[int] | None:
            servers = server.processes("worker.forkserver")
            return servers if len(servers) == 1 and servers[0] != fork_server else None

        servers = eventually(replaced, 60, "new fork server")
        answered = len(statuses)  # still under load with the new server up:
        eventually(lambda: len(statuses) >= answered + 100, 30, "answers after the new server")
        stop.set()
        for client in clients:
            client.join()
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert all(alive(pid) and parent(pid) == broker for pid in workers)
        assert "keep serving" in server.log_text()

        # A worker that dies now is replaced by a fork of the new server, and the adopted
        # one is reaped by the broker like any child.
        os.kill(workers[0], signal.SIGKILL)

        def replaced_by_a_fork_of_the_new_server() -> bool:
            new = set(server.processes("worker --archive")) - set(workers)
            return (len(new) == 1 and parent(new.pop()) == servers[0]
                    and server.catalog()["models"]["digits"]["ready"] == 2)

        eventually(replaced_by_a_fork_of_the_new_server, 60, "replacement of the killed worker")
        assert all(predict_digit(server, image) == 200 for _ in range(8))
        print(f"fork server killed under load: {len(statuses)} requests, all 200")
    assert not any(alive(pid) for pid in workers)


def test_without_fork_workers_each_worker_is_a_fresh_process(sample_models):
    with Server([f"digits={sample_models['digits']}"], "--workers-per-model", "2",
                "--no-fork-workers") as server:
        [broker] = server.processes("worker.broker")
        assert server.processes("worker.forkserver") == []
        workers = server.processes("worker --archive")
        assert len(workers) == 2 and all(parent(pid) == broker for pid in workers)
        image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
        assert predict_digit(server, image) == 200


def started(fork_server: ForkServer, timeout_s: float = 60.0) -> ForkServer:
    eventually(lambda: fork_server.can_fork(fork_server.env), timeout_s, "READY from the fork "
               "server", every_s=0.05)
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
