"""A broker stand-in for worker tests: a real ROUTER socket speaking the real protocol to
real worker processes (`python -m mxserve.worker`). The real broker is tested in its own suite."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import zmq

from mxserve.common.protocol import Item, Kind, Message, from_frames, to_frames

ROOT = Path(__file__).resolve().parent.parent


class BrokerStub:
    def __init__(self, run_dir: Path) -> None:
        self.endpoint = f"ipc://{run_dir}/workers.sock"
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.endpoint)
        self.processes: list[subprocess.Popen] = []
        self.ids = itertools.count()
        self.extract_dir = run_dir / "extract"

    def start_worker(self, archive: Path, *extra: str, max_batch_size: int = 8,
                     stderr=subprocess.PIPE, **env_vars: str) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS="1", **env_vars)
        process = subprocess.Popen(
            [sys.executable, "-m", "mxserve.worker", "--archive", str(archive),
             "--broker", self.endpoint,
             "--max-batch-size", str(max_batch_size), "--extract-dir", str(self.extract_dir),
             "--heartbeat-interval", "0.2", *extra],
            cwd=ROOT, env=env, stderr=stderr)
        self.processes.append(process)
        return process

    def receive(self, timeout_s: float = 60.0, skip_heartbeats: bool = True
                ) -> tuple[bytes, Message]:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(remaining * 1000):
                raise TimeoutError("no message from any worker")
            identity, *frames = self.socket.recv_multipart(copy=False)
            message = from_frames(frames)
            if skip_heartbeats and message.kind == Kind.HEARTBEAT:
                continue
            return identity.bytes, message

    def wait_ready(self, timeout_s: float = 120.0) -> tuple[bytes, Message]:
        identity, message = self.receive(timeout_s)
        assert message.kind == Kind.READY, message
        return identity, message

    def send(self, identity: bytes, message: Message) -> None:
        self.socket.send_multipart([identity, *to_frames(message)], copy=False)

    def infer(self, identity: bytes, arrays_per_request: list[dict], budget_ms: float = 30000,
              timeout_s: float = 60.0, **fields) -> Message:
        items = [Item(id=f"r{next(self.ids)}", fields={"budget_ms": budget_ms}, arrays=arrays)
                 for arrays in arrays_per_request]
        self.send(identity, Message(Kind.REQUEST, {"model": "x", **fields}, items))
        _, reply = self.receive(timeout_s)
        assert reply.kind == Kind.REPLY, reply
        assert [item.id for item in reply.items] == [item.id for item in items]
        return reply

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        self.socket.close(0)
        self.context.term()
