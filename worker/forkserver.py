"""CPU workers forked from a process that has already imported MXNet, so they share it.

`import mxnet` costs every process ~200 MB resident, 74 MB of it Python objects (the
generated operator wrappers) that no worker ever writes to. A worker started as a fresh
`python -m mxserve.worker` holds its own copy; forked from a server that imported everything and
froze its objects out of the cyclic collector (`gc.freeze`), the workers share those pages.
Measured, `mxserve start` with resnet18 and two CPU workers, PSS of every process at idle:
701 MiB with fresh workers (`--no-fork-workers`), 642 MiB forked (the server's own share
included).

    python -m mxserve.worker.forkserver FD     (started by the broker's WorkerPool; FD: a listening
                                        unix socket at <run_dir>/forkserver.sock)

The broker's side is `ForkServer`: `spawn(argv, env, title)` asks for a worker over the
socket and gets back a `ForkedProcess`, which answers like `subprocess.Popen` (pid, poll,
wait, send_signal, kill), so the pool manages both kinds alike. The server reaps its
children and reports each exit code. Only workers whose environment matches the server's
are forked (OpenMP and MXNet read theirs once, at import); others, GPU workers included,
are started as fresh processes.

The server outlives a broker that crashed. Importing MXNet is most of a worker's start-up
(3.6 s on an idle 2-core machine, 7 s while clients hammer the frontends with retries), so
a restarted broker attaches to the running server instead of starting another: a broker
SIGKILLed under load is serving again in ~2 s instead of 7-10. When its broker's
connection drops the server SIGKILLs that broker's workers (the new broker starts its own)
and waits BROKER_RETURN_S for the next broker; it exits when none comes, when its socket
path is gone or taken over (the run directory removed, a new server started), on SIGTERM
(a broker that stops cleanly stops it), or when a broker's environment differs from its
own.

Safety of forking after `import mxnet`: the server runs no operator, so no engine or OpenMP
threads exist to be lost in a fork; MXNet's own fork handlers cover the rest.

Workers outlive the server. The broker is a child subreaper (common/child_processes.py), so
when the server dies the kernel re-parents its workers to the broker: `ForkServer` then
marks them adopted and their `ForkedProcess` reaps them with waitpid, like any child. They
keep serving while a new server is started for later forks. A worker whose parent changes
ties its own death to its new parent (worker/main.py), and leaves if none adopted it.
"""
from __future__ import annotations

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
from pathlib import Path
from typing import Any, Callable

from mxserve.common.import_pages import settle_before_forking
from mxserve.common.proctree import alive

log = logging.getLogger("worker.forkserver")

READY = "ready"
SPAWN_TIMEOUT_S = 5.0  # a fork answers in milliseconds; a server this slow is stuck
BROKER_RETURN_S = 30.0  # the launcher restarts a crashed broker within 10 s (its backoff cap)
STOP_WAIT_S = 5.0
RESTART_AFTER_S = 1.0  # a server that dies at start-up is not restarted in a tight loop


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
            if self.pid in self.server.adopted:
                self.returncode = self._reap_adopted()
            else:
                self.returncode = self.server.exits.pop(self.pid, None)
        return self.returncode

    def _reap_adopted(self) -> int | None:
        """Our own child since its server died: waitpid it."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Not re-parented to us yet (the server's socket closes before its children
            # move), or gone: still running while it is alive.
            if alive(self.pid):
                return None
            self.server.adopted.discard(self.pid)
            return -signal.SIGKILL
        if pid == 0:
            return None
        self.server.adopted.discard(self.pid)
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

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
    """The broker's handle on its fork server: the one a crashed predecessor left running
    (attached), or one it starts; restarted in the background when it dies."""

    def __init__(self, env: dict[str, str], start: Callable[..., Any], path: Path) -> None:
        """`env`: the environment forked workers must have; `start(argv, env, pass_fds,
        dies_with_parent)`: how to start it (common.child_processes.spawn); `path`:
        its socket, in the run directory."""
        self.env = env
        self._start = start
        self.path = path
        self.exits: dict[int, int] = {}
        self.adopted: set[int] = set()  # workers of a dead server, now our children
        self._children: set[int] = set()
        self._sock: socket.socket | None = None
        self._process: Any = None  # ours when we started it; None when attached
        self._pid = 0  # the server's, from its READY
        self._attachable = True  # False once a running server refused us
        self._buffer = b""
        self.ready = False
        self.started_at = 0.0

    def start(self) -> None:
        sock = self._attach() if self._attachable else None
        if sock is None:
            sock = self._launch()
        sock.sendall((json.dumps({"env": self.env}) + "\n").encode())
        sock.setblocking(False)
        self._sock, self._buffer, self.ready = sock, b"", False
        self.started_at = time.monotonic()

    def _attach(self) -> socket.socket | None:
        """A connection to a server already listening at `path`, if there is one."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.connect(str(self.path))
        except OSError:  # none there (refused, or no such file), or one too stuck to listen
            sock.close()
            return None
        log.info("attaching to the running fork server at %s", self.path)
        return sock

    def _launch(self) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.unlink(missing_ok=True)  # a dead or refused server's
            listener.bind(str(self.path))
            listener.listen(4)
            # Not tied to the broker's life (no PDEATHSIG): it must outlive a crash.
            self._process = self._start([sys.executable, "-m", "mxserve.worker.forkserver",
                                         str(listener.fileno())], self.env,
                                        pass_fds=(listener.fileno(),), dies_with_parent=False)
        finally:
            listener.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.path))  # queued until the server has imported MXNet
        return sock

    def keep_running(self) -> None:
        """Start a new server if this one died, so the next fork does not wait for it."""
        self.pump()
        if self._sock is None and time.monotonic() - self.started_at > RESTART_AFTER_S:
            self.start()

    def can_fork(self, env: dict[str, str]) -> bool:
        self.pump()
        if self._sock is None:
            self.start()  # died: restart it (the pool waits for it, then spawns fresh)
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
        """SIGTERM the server, however it was started (the pool stops the workers)."""
        pid = self._process.pid if self._process is not None else self._pid
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._process is not None:
            try:
                self._process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        elif pid:  # attached: not our child, so watched through /proc
            deadline = time.monotonic() + STOP_WAIT_S
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

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
            self.ready, self._pid = True, message[READY]
        elif "exited" in message:
            self._children.discard(message["exited"])
            self.exits[message["exited"]] = message["code"]
        elif "refused" in message:
            log.warning("the running fork server refused this broker (%s); starting a new "
                        "one", message["refused"])
            self._attachable = False
        return message

    def _server_gone(self) -> None:
        """Make sure it is gone (a stuck one is killed); its workers live on as our
        children (we are a subreaper) and are reaped as such."""
        if self._attachable or self._children:
            log.warning("the worker fork server is gone; its %d worker(s) keep serving as "
                        "the broker's children, and a new server will fork later ones",
                        len(self._children))
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        elif self._process is None and self._pid and alive(self._pid):
            os.kill(self._pid, signal.SIGKILL)
        self.adopted |= self._children
        self._children.clear()
        if self._sock is not None:
            self._sock.close()
        self._sock, self.ready, self._process, self._pid = None, False, None, 0


if __name__ == "__main__":
    sys.exit(main())
