"""The fork server: a process that has imported MXNet and every worker module once, and
forks CPU workers from that state, so they share those pages instead of each importing its
own copy (docs/design.md, "Fork server"; the memory saved is in docs/benchmarks.md).

    python -m mxserve.worker.forkserver FD   (started by the broker's pool; FD: a listening
                                             unix socket at <run_dir>/forkserver.sock)

One broker at a time connects and sends JSON lines: first its environment, then one
`{"argv", "env", "title"}` per worker to fork; the server answers `{"ready": pid}`, each
fork's `{"pid"}`, and each child's `{"exited", "code"}`. It outlives a broker that crashed,
because importing MXNet is most of a worker's start-up: a restarted broker attaches to it.
When its broker's connection drops it SIGKILLs that broker's workers and waits
BROKER_RETURN_S for the next one; it exits when none comes, when its socket path is gone or
taken over, on SIGTERM, or when a broker's environment differs from its own (OpenMP and
MXNet read theirs once, at import). The broker's side is worker/broker/forkserver_client.py.

Forking after `import mxnet` is safe here: the server runs no operator, so no engine or
OpenMP thread exists to be lost in a fork; MXNet's own fork handlers cover the rest.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import Any

from mxserve.common.import_pages import settle_before_forking

log = logging.getLogger("worker.forkserver")

READY = "ready"  # the server's first line: {"ready": its pid}
BROKER_RETURN_S = 30.0  # the launcher restarts a crashed broker within 10 s (its backoff cap)


# -- the server ------------------------------------------------------------------------------

class _Server:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.path = listener.getsockname()
        self.inode = os.stat(self.path).st_ino
        self.env = dict(os.environ)  # what it was started with: what forked workers inherit
        self.children: set[int] = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    def run(self) -> None:
        _import_worker_code()
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        while True:  # (the broker that started it connected before it even ran)
            sock = self._accept(BROKER_RETURN_S)
            if sock is None:
                return
            try:
                if not self._serve(sock):
                    return
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                sock.close()
                self._kill_children()

    def _accept(self, wait_s: float) -> socket.socket | None:
        """The next broker's connection; None after `wait_s`, or once the socket path no
        longer names this server."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.listener], [], [], 1.0)
            if readable:
                return self.listener.accept()[0]
            if not self._still_at_path():
                log.info("its socket %s is gone or taken over; fork server exiting", self.path)
                return None
        log.info("no broker came back within %.0fs; fork server exiting", wait_s)
        return None

    def _still_at_path(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _serve(self, sock: socket.socket) -> bool:
        """Fork workers for one broker until it is gone; False when this server must exit
        (the broker runs with another environment: it starts its own server)."""
        reader = sock.makefile("r", encoding="utf-8")
        hello = reader.readline()
        if not hello:
            return True  # the broker died before it said anything
        if json.loads(hello).get("env") != self.env:
            why = "the broker's worker environment differs from this fork server's"
            log.info("%s; fork server exiting (the broker starts its own)", why)
            _send(sock, {"refused": why})
            return False
        _send(sock, {READY: os.getpid()})
        while True:
            watched: list[Any] = [sock, self.wake_r]
            readable, _, _ = select.select(watched, [], [])
            if self.wake_r in readable:
                os.read(self.wake_r, 4096)
            self._report_exits(sock)
            if sock in readable:
                line = reader.readline()
                if not line:
                    log.warning("its broker is gone: killing that broker's %d worker(s); "
                                "waiting %.0fs for a new broker", len(self.children),
                                BROKER_RETURN_S)
                    return True
                pid = os.fork()
                if pid == 0:
                    for closing in (reader, sock, self.listener):
                        closing.close()
                    os.close(self.wake_r)
                    os.close(self.wake_w)
                    _run_worker(json.loads(line))  # never returns
                self.children.add(pid)
                _send(sock, {"pid": pid})

    def _report_exits(self, sock: socket.socket) -> None:
        for pid, code in _reap(os.WNOHANG):
            self.children.discard(pid)
            _send(sock, {"exited": pid, "code": code})

    def _kill_children(self) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid, _ in _reap(0):
            self.children.discard(pid)


def _import_worker_code() -> None:
    """Everything a worker imports, imported once here; then frozen out of the collector."""
    import mxnet  # noqa: F401
    import numpy  # noqa: F401
    import zmq  # noqa: F401  (the module only: no context exists before a fork)

    import mxserve.common.images  # noqa: F401  (Pillow and OpenCV: CPU workers decode images)
    import mxserve.worker.main  # noqa: F401
    import mxserve.worker.services.loader  # noqa: F401

    try:  # imported (and so set up) before any fork, while argv and environ are pristine
        import setproctitle  # noqa: F401
    except ImportError:
        pass

    settle_before_forking()


def _reap(options: int) -> list[tuple[int, int]]:
    """(pid, exit code) of exited children: those exited so far (WNOHANG), or all (0)."""
    exited: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, options)
        except ChildProcessError:
            return exited
        if pid == 0:
            return exited
        exited.append((pid, -os.WTERMSIG(status) if os.WIFSIGNALED(status)
                       else os.WEXITSTATUS(status)))


def _run_worker(request: dict[str, Any]) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        for key, value in request["env"].items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        setproctitle = sys.modules.get("setproctitle")
        if setproctitle is not None:
            # What `ps` and /proc/<pid>/cmdline show: the worker's own command line.
            setproctitle.setproctitle(request["title"])
        from mxserve.worker.main import main

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




def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall((json.dumps(message) + "\n").encode())


def main() -> int:
    from mxserve.common.logs import setup_logging

    setup_logging(os.environ.get("MXSERVE_LOG_LEVEL", "INFO"),
                  os.environ.get("MXSERVE_LOG_FILE", ""), "forkserver")
    _Server(socket.socket(fileno=int(sys.argv[1]))).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
