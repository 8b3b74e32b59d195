"""CPU workers forked from a process that has already imported MXNet, so they share it.

`import mxnet` costs every process ~200 MB resident, 74 MB of it Python objects (the
generated operator wrappers) that no worker ever writes to. A worker started as a fresh
`python -m worker` holds its own copy; forked from a server that imported everything and
froze its objects out of the cyclic collector (`gc.freeze`), the workers share those pages.
Measured, `mxserve start` with resnet18 and two CPU workers, PSS of every process at idle:
701 MiB with fresh workers (`--no-fork-workers`), 642 MiB forked (the server's own share
included).

    python -m worker.forkserver FD     (started by the broker's WorkerPool; FD: its socket)

The broker's side is `ForkServer`: `spawn(argv, env, title)` asks for a worker over a unix
socket and gets back a `ForkedProcess`, which answers like `subprocess.Popen` (pid, poll,
wait, send_signal, kill), so the pool manages both kinds alike. The server reaps its
children and reports each exit code. Only workers whose environment matches the server's
are forked (OpenMP and MXNet read theirs once, at import); others, GPU workers included,
are started as fresh processes, and so is every worker while the server is not ready (at
start-up, or after it died; it is restarted in the background).

Safety of forking after `import mxnet`: the server runs no operator, so no engine or OpenMP
threads exist to be lost in the fork; MXNet's own fork handlers cover the rest. Children
get SIGKILL if the server dies (prctl), and the server exits when the broker does.
"""
from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Any

log = logging.getLogger("worker.forkserver")

READY = "ready"
PR_SET_PDEATHSIG = 1
SPAWN_TIMEOUT_S = 5.0  # a fork answers in milliseconds; a server this slow is stuck


# -- the server ------------------------------------------------------------------------------

def serve(sock: socket.socket) -> None:
    # Everything a worker imports, imported once here.
    import mxnet  # noqa: F401
    import numpy  # noqa: F401
    import zmq  # noqa: F401  (the module only: no context exists before a fork)

    import worker.main  # noqa: F401
    import worker.services.loader  # noqa: F401

    try:  # imported (and so set up) before any fork, while argv and environ are pristine
        import setproctitle  # noqa: F401
    except ImportError:
        pass

    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    _send(sock, {READY: os.getpid()})
    reader = sock.makefile("r", encoding="utf-8")
    while True:
        readable, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        _report_exits(sock)
        if sock in readable:
            line = reader.readline()
            if not line:
                return  # the broker is gone
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                reader.close()
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                _run_worker(request)  # never returns
            _send(sock, {"pid": pid})


def _run_worker(request: dict[str, Any]) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the server died between fork and prctl
            os._exit(code)
        for key, value in request["env"].items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        setproctitle = sys.modules.get("setproctitle")
        if setproctitle is not None:
            # What `ps` and /proc/<pid>/cmdline show: the worker's own command line.
            setproctitle.setproctitle(request["title"])
        from worker.main import main

        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _send(sock, {"exited": pid, "code": code})


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall((json.dumps(message) + "\n").encode())


def main() -> int:
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


# -- the broker's side -----------------------------------------------------------------------

class ForkedProcess:
    """A worker forked by the server, managed like a subprocess.Popen."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server.pump()
            self.returncode = self.server.exits.pop(self.pid, None)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The broker's handle on its fork server (started, and restarted, in the background)."""

    def __init__(self, env: dict[str, str], start: Any) -> None:
        """`env`: the environment forked workers must have; `start(argv, env, pass_fds)`:
        how to start the server process (worker.pool.spawn)."""
        self.env = env
        self._start = start
        self.exits: dict[int, int] = {}
        self._children: set[int] = set()
        self._sock: socket.socket | None = None
        self._process: Any = None
        self._buffer = b""
        self.ready = False
        self.started_at = 0.0

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        self._process = self._start([sys.executable, "-m", "worker.forkserver",
                                     str(theirs.fileno())], self.env,
                                    pass_fds=(theirs.fileno(),))
        theirs.close()
        ours.setblocking(False)
        self._sock, self._buffer, self.ready = ours, b"", False
        self.started_at = time.monotonic()

    def can_fork(self, env: dict[str, str]) -> bool:
        self.pump()
        if self._sock is None:
            self.start()  # died: restart it; workers are spawned fresh until it is ready
            return False
        return self.ready and env == self.env

    def spawn(self, argv: list[str], env: dict[str, str], title: str) -> ForkedProcess:
        """Fork a worker; OSError if the server failed (it is then stopped, its workers
        with it, and restarted later: the caller starts this worker fresh instead)."""
        assert self._sock is not None
        self._sock.settimeout(SPAWN_TIMEOUT_S)
        try:
            self._sock.sendall((json.dumps({"argv": argv, "env": env, "title": title})
                                + "\n").encode())
            pid = None
            while pid is None:
                message = self._read_message(blocking=True)
                if message is None:
                    raise OSError("the fork server closed its socket")
                pid = message.get("pid")
        finally:
            if self._sock is not None:
                self._sock.setblocking(False)
        self._children.add(pid)
        return ForkedProcess(self, pid)

    def pump(self) -> None:
        """Read every message waiting; notice the server's death."""
        while self._sock is not None and self._read_message(blocking=False) is not None:
            pass

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def _read_message(self, blocking: bool) -> dict[str, Any] | None:
        while b"\n" not in self._buffer:
            assert self._sock is not None
            try:
                chunk = self._sock.recv(65536)
            except BlockingIOError:
                return None
            except OSError:  # a timeout (a stuck server) or a reset
                chunk = b""
            if not chunk:
                self._server_gone()
                return None
            self._buffer += chunk
            if not blocking:
                break
        if b"\n" not in self._buffer:
            return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if READY in message:
            self.ready = True
        elif "exited" in message:
            self._children.discard(message["exited"])
            self.exits[message["exited"]] = message["code"]
        return message

    def _server_gone(self) -> None:
        """Make sure it is gone (a stuck one is killed); its children die with it
        (PDEATHSIG): report them killed."""
        log.warning("the worker fork server is gone; its %d worker(s) with it",
                    len(self._children))
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        for pid in self._children:
            self.exits[pid] = -signal.SIGKILL
        self._children.clear()
        if self._sock is not None:
            self._sock.close()
        self._sock, self.ready = None, False


if __name__ == "__main__":
    sys.exit(main())
