"""`mxserve start`: the embedded default — broker, workers and gunicorn on one host.

    mxserve start --models digits=digits.model resnet18=resnet18.model [--port 8080] ...

Lifecycle:
  1. Merge the configuration (CLI > MXSERVE_* > --config file > defaults) and validate it;
     a bad one exits 2 before anything starts.
  2. Make the instance's run directory (ipc sockets, extracted archives) under $TMPDIR, so
     two instances on one host never collide.
  3. Start the broker (`python -m mxserve.worker.broker`), which starts the workers, and gunicorn
     (`sys.executable -m gunicorn`, the gthread frontends). Both are our children, in our
     process tree, and get SIGTERM if we die.
  4. Poll GET /ping until every model is ready (or has failed to load), then print where we
     listen. Stay in the foreground; if the broker or gunicorn dies, stop everything.
  5. A broker that crashes is restarted (backoff from 0.2 s, doubling to 10 s); frontends
     reconnect to the same ipc endpoint by themselves. A broker exiting 2 or 3, or a dead
     gunicorn, stops everything.
  6. On SIGINT/SIGTERM: SIGTERM the broker first: readiness goes false at once (/ping
     503, so a load balancer stops sending), new predictions get 503 + Retry-After, queued
     and running ones finish within drain_timeout_s and are delivered by the still-running
     frontends; then the broker stops its workers and exits, and gunicorn is stopped with
     nothing left in flight. SIGKILL whatever outlives its bound.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mxserve.common import management_token
from mxserve.common.child_processes import spawn
from mxserve.common.config import (
    Config,
    broker_endpoints,
    load_config,
    model_entries,
    without_secrets,
)
from mxserve.common.errors import (
    EXIT_BAD_CONFIG,
    EXIT_CRASH,
    EXIT_MODEL_LOAD,
    EXIT_OK,
    ConfigError,
    MXServeError,
)
from mxserve.common.logs import LogRotator, setup_logging
from mxserve.common.private_files import check_socket_room, new_run_dir, private_dir
from mxserve.common.settings import add_arguments
from mxserve.instance.gunicorn_wiring import (
    ForkedGunicorn,
    address,
    embedded_options,
    frontend_env,
    gunicorn_argv,
)

log = logging.getLogger("mxserve")

STARTUP_MARGIN_S = 30.0  # beyond model_load_timeout_s, after which the broker gives up
STOP_MARGIN_S = 5.0
BROKER_BACKOFF_START_S = 0.2
BROKER_BACKOFF_MAX_S = 10.0
GRPC_LISTENER = [sys.executable, "-m", "mxserve.frontend.grpc_listener"]
BROKER_STABLE_S = 60.0  # a broker up this long has its restart backoff reset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mxserve start", description="Serve models: broker, workers and gunicorn.",
        argument_default=argparse.SUPPRESS)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config", None)
    try:
        config = load_config(args, config_file)
        entries = model_entries(config)
        if not entries:
            raise ConfigError("no models: pass --models name=archive ... (or all, with "
                              "--model-store holding .mar or .model archives)")
        for _, path in entries:
            if not Path(path).exists():
                raise ConfigError(f"model archive not found: {path}")
        check_ports_free(config)
    except ConfigError as exc:
        print(f"mxserve start: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    setup_logging(config.log_level, config.log_file, "mxserve")
    try:
        launcher = Launcher(config)
    except MXServeError as exc:
        print(f"mxserve start: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return launcher.run()


def check_ports_free(config: Config) -> None:
    """Refuse a port another process holds now, before any model loads (gunicorn would
    only fail after the broker had loaded every model)."""
    listeners = [("port", config.host, config.port)]
    if config.grpc_port:
        listeners.append(("grpc_port", config.host, config.grpc_port))
    if config.management_port:
        listeners.append(("management_port", config.management_host, config.management_port))
    for setting, host, port in listeners:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ConfigError(f"{setting}: cannot listen on {address(host, port)}: "
                                  f"{exc.strerror}") from exc


def metrics_dir(run_dir: str) -> str:
    """An empty folder for this instance's prometheus_client files (common/metrics.py):
    emptied at every start, since counters of an earlier run must not add up. One already
    set in our environment is used as it is: this process (embedded mode) imported
    prometheus_client with it, and its forked frontends write there."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return os.environ["PROMETHEUS_MULTIPROC_DIR"]
    path = Path(run_dir) / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return str(path)


class Launcher:
    def __init__(self, config: Config, app: Any = None) -> None:
        """`app`: a Flask app to serve in a forked gunicorn (embedding); by default gunicorn
        runs as `python -m gunicorn 'mxserve.frontend.app:create_app()'`."""
        self.app = app
        self.owns_run_dir = not config.run_dir
        run_dir = private_dir(config.run_dir) if config.run_dir else new_run_dir()
        try:
            check_socket_room(run_dir)
            config = management_token.resolve(config, run_dir)
        except MXServeError:
            if self.owns_run_dir:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        frontend, workers, management = broker_endpoints(config, run_dir)
        self.config = config.replace(run_dir=str(run_dir), broker_frontend=frontend,
                                     broker_workers=workers, broker_management=management)
        self.stop_requested = False
        self.rotator = (LogRotator(config.log_file, config.log_rotation_time)
                        if config.log_file and config.log_rotation_time else None)
        self.broker: subprocess.Popen | None = None
        self.grpc: subprocess.Popen | None = None
        self.gunicorn: subprocess.Popen | ForkedGunicorn | None = None

    @property
    def url(self) -> str:
        return f"http://{address(self.config.host, self.config.port)}"

    def run(self) -> int:
        def on_signal(signum: int, _frame: Any) -> None:
            self.stop_requested = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        env = {**without_secrets(os.environ), **self.config.to_env(),
               "PROMETHEUS_MULTIPROC_DIR": metrics_dir(self.config.run_dir)}
        env.pop("MXSERVE_CONFIG", None)  # children get the merged result, not the file again
        self.child_env = env
        try:
            self.broker = spawn([sys.executable, "-m", "mxserve.worker.broker"], env)
            if self.config.grpc_port:
                self.grpc = spawn(GRPC_LISTENER, env)
            if self.app is None:
                self.gunicorn = spawn(gunicorn_argv(self.config), frontend_env(env))
            else:
                self.gunicorn = ForkedGunicorn(self.app, embedded_options(self.config))
            code = self._wait_until_ready()
            if code is None:
                code = self._serve()
        finally:
            self._stop()
            if self.owns_run_dir:
                shutil.rmtree(self.config.run_dir, ignore_errors=True)
        return code

    def _children_alive(self, watch_broker: bool = True) -> int | None:
        """None while the children run; else an exit code for us. `watch_broker=False`
        when the caller restarts a crashed broker itself."""
        children = [("broker", self.broker)] if watch_broker else []
        for name, child in [*children, ("gunicorn", self.gunicorn)]:
            if child is not None and child.poll() is not None:
                log.error("%s exited with code %s", name, child.returncode)
                ours = child is self.broker and child.returncode in (EXIT_BAD_CONFIG,
                                                                      EXIT_MODEL_LOAD)
                return child.returncode if ours else EXIT_CRASH
        return None

    def _wait_until_ready(self) -> int | None:
        startup_timeout_s = self.config.model_load_timeout_s + STARTUP_MARGIN_S
        deadline = time.monotonic() + startup_timeout_s
        while not self.stop_requested:
            code = self._children_alive()
            if code is not None:
                return code
            status, body = self._ping()
            if status == 200:
                names = ", ".join(self._model_names())
                log.info("serving %s on %s", names, self.url)
                print(f"mxserve listening on {self.url} (models: {names}){self._management()}",
                      flush=True)
                return None
            statuses = body.get("models", {}) if isinstance(body, dict) else {}
            if statuses and "loading" not in statuses.values():
                failed = sorted(n for n, s in statuses.items() if s == "failed")
                if len(failed) == len(statuses):
                    log.error("no model could be loaded: %s", failed)
                    return EXIT_MODEL_LOAD
                log.error("model(s) %s failed to load; serving the others", failed)
                print(f"mxserve listening on {self.url} (failed to load: {', '.join(failed)})"
                      f"{self._management()}", flush=True)
                return None
            if time.monotonic() > deadline:
                log.error("models not ready after %.0fs: %s", startup_timeout_s, body)
                return EXIT_MODEL_LOAD
            time.sleep(0.2)
        return EXIT_OK

    def _management(self) -> str:
        """Where the management API is and where its token is, for the start-up line."""
        c = self.config
        if not c.management_port:
            return ""
        url = f"http://{address(c.management_host, c.management_port)}"
        token = f", token in {c.management_token_file}" if c.management_auth else ""
        return f"; management API on {url}{token}"

    def _model_names(self) -> list[str]:
        status, body = self._get("/api-description")
        if status != 200:
            return [e.partition("=")[0] for e in self.config.models]
        paths = body["description"]["paths"]
        return sorted(p.split("/")[1] for p in paths if p.endswith("/predict"))

    def _ping(self) -> tuple[int, Any]:
        return self._get("/ping")

    def _get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read())
            except ValueError:
                return exc.code, None
        except (OSError, ValueError):
            return 0, None

    def _serve(self) -> int:
        """Watch the children until asked to stop. A broker that crashes is restarted with
        backoff (frontends reconnect by themselves; the new broker starts new workers); one
        that exits with "bad config" or "model cannot load", or a dead gunicorn, ends it."""
        backoff_s = BROKER_BACKOFF_START_S
        stable_since = time.monotonic()
        while not self.stop_requested:
            broker = self.broker
            if broker is not None and broker.poll() in (EXIT_BAD_CONFIG, EXIT_MODEL_LOAD):
                log.error("broker exited with code %s", broker.returncode)
                return broker.returncode
            if broker is not None and broker.returncode is not None:
                log.error("broker exited with code %s; restarting it in %.1fs",
                          broker.returncode, backoff_s)
                if self._sleep_unless_stopped(backoff_s):
                    break
                stable_since = time.monotonic()
                self.broker = spawn([sys.executable, "-m", "mxserve.worker.broker"], self.child_env)
                backoff_s = min(backoff_s * 2, BROKER_BACKOFF_MAX_S)
                continue
            if self.grpc is not None and self.grpc.poll() is not None:
                if self.grpc.returncode == EXIT_BAD_CONFIG:
                    log.error("the gRPC listener cannot start")
                    return EXIT_BAD_CONFIG
                log.error("the gRPC listener exited with code %s; restarting it",
                          self.grpc.returncode)  # its clients reconnect
                self.grpc = spawn(GRPC_LISTENER, self.child_env)
            if self.rotator is not None and self.rotator.tick():
                log.info("log file rotated")
                if self.gunicorn is not None:  # gunicorn's own log reopens on SIGUSR1
                    self.gunicorn.send_signal(signal.SIGUSR1)
            if time.monotonic() - stable_since > BROKER_STABLE_S:
                backoff_s = BROKER_BACKOFF_START_S
            code = self._children_alive(watch_broker=False)
            if code is not None:
                return code
            time.sleep(0.2)  # signals interrupt the sleep; children are checked 5x a second
        log.info("stopping: draining in-flight requests (up to %.0fs)",
                 self.config.drain_timeout_s)
        return EXIT_OK

    def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleep; True if a stop was requested meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))
        return self.stop_requested

    def _stop(self) -> None:
        bound = self.config.drain_timeout_s + STOP_MARGIN_S
        # The broker first: draining, it reports unready (/ping 503) and answers new
        # requests 503 + Retry-After at once while queued and running ones finish; the
        # frontends, still up, deliver those answers. Then gunicorn, with nothing in flight.
        # The gRPC listener stops with the broker: it refuses new calls at once and lets
        # the running ones finish within the same drain.
        if self.grpc is not None and self.grpc.poll() is None:
            self.grpc.send_signal(signal.SIGTERM)
        for child in (self.broker, self.grpc, self.gunicorn):
            if child is None or child.poll() is not None:
                continue
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(bound)
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %.0fs; killing it", child.pid, bound)
                child.kill()
                child.wait()


if __name__ == "__main__":
    sys.exit(main())
