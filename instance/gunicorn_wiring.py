"""How gunicorn runs our frontends: its options, its command line, and the two ways to run it.

`mxserve start` runs `python -m gunicorn` (the app built by create_app in gunicorn's
arbiter and forked) or, when embedding, a forked arbiter serving an app object built in
this process (ForkedGunicorn). `mxserve frontend` is gunicorn alone, for supervisors.
Both ways take their options from one place, gunicorn_options().
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from mxserve.common import management_token
from mxserve.common.child_processes import prepare_child
from mxserve.common.config import Config, broker_endpoints, load_config, without_secrets
from mxserve.common.errors import EXIT_BAD_CONFIG, EXIT_CRASH, ConfigError, MXServeError
from mxserve.common.logs import setup_logging
from mxserve.common.private_files import private_dir
from mxserve.common.settings import add_arguments
from mxserve.frontend import gunicorn_hooks

APP = "mxserve.frontend.app:create_app()"
WORKER_CLASS = "mxserve.frontend.gunicorn_worker.ModelServerThreadWorker"
HOOKS = "mxserve.frontend.gunicorn_hooks"  # server hooks, e.g. settling memory before forks


def address(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def binds(c: Config) -> list[str]:
    """gunicorn's listeners: host:port, the unix socket nginx proxies to and the management
    listener, when set."""
    addresses = [address(c.host, c.port)]
    if c.unix_socket:
        addresses.append(f"unix:{c.unix_socket}")
    if c.management_port:
        addresses.append(address(c.management_host, c.management_port))
    return addresses


def gunicorn_options(c: Config) -> dict[str, Any]:
    """gunicorn's settings for a configuration (its run_dir must be set), by their names."""
    return {"bind": binds(c), "worker_class": WORKER_CLASS,
            "workers": c.frontend_workers, "threads": c.frontend_threads,
            # one over our own cap, so gthread keeps accepting and we refuse with a 503
            "worker_connections": c.max_connections + 1,
            "timeout": int(c.gunicorn_timeout_s), "graceful_timeout": int(c.drain_timeout_s),
            "keepalive": 5, "errorlog": c.log_file or "-", "loglevel": c.log_level.lower(),
            "control_socket": os.path.join(c.run_dir, "gunicorn.ctl")}


def embedded_options(c: Config) -> dict[str, Any]:
    """gunicorn_options plus the server hooks, for a gunicorn run from this process."""
    return {**gunicorn_options(c), "when_ready": gunicorn_hooks.when_ready}


def gunicorn_argv(c: Config) -> list[str]:
    """The gunicorn command line for a configuration: gunicorn_options as the flags gunicorn's
    own settings table names, and the hooks as a config module."""
    from gunicorn.config import KNOWN_SETTINGS

    flags = {s.name: next(f for f in s.cli if f.startswith("--"))
             for s in KNOWN_SETTINGS if s.cli}
    argv = [sys.executable, "-m", "gunicorn"]
    for name, value in gunicorn_options(c).items():
        for one in value if isinstance(value, list) else [value]:
            argv += [flags[name], str(one)]
    # The app (Flask, numpy, OpenCV, Pillow, ZeroMQ's module) is built once in the arbiter
    # and forked: the frontend processes share those pages instead of each importing its
    # own copy, and a crashed one is replaced in a fork's time.
    return argv + ["--config", f"python:{HOOKS}", "--preload", APP]


def frontend_env(env: dict[str, str]) -> dict[str, str]:
    """gunicorn's environment: glibc gives each of a frontend's threads its own malloc
    arena (up to 8 per core), and each keeps what its requests freed; two arenas halve a
    frontend's growth under load (`benchmarks/soak.py`). An operator's own setting wins."""
    return {**env, "MALLOC_ARENA_MAX": env.get("MALLOC_ARENA_MAX", "2")}


def frontend_main(argv: list[str] | None = None) -> int:
    """`mxserve frontend`: gunicorn alone, for supervisors that run the broker and the
    frontends as separate programs (supervisord.conf). Configured like `mxserve start`;
    MXSERVE_RUN_DIR must name the broker's run directory (its ipc sockets)."""
    parser = argparse.ArgumentParser(prog="mxserve frontend", description=frontend_main.__doc__,
                                     argument_default=argparse.SUPPRESS)
    add_arguments(parser)
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    try:
        config = load_config(args, config_file)
        if not config.run_dir:
            raise ConfigError("run_dir must be set (the broker's run directory)")
        run_dir = private_dir(config.run_dir)
        setup_logging(config.log_level, config.log_file, "mxserve")
        config = management_token.resolve(config, run_dir)
    except MXServeError as exc:
        print(f"mxserve frontend: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    frontend, workers, management = broker_endpoints(config, run_dir)
    config = config.replace(broker_frontend=frontend, broker_workers=workers,
                            broker_management=management)
    env = {**without_secrets(os.environ), **config.to_env()}
    env.pop("MXSERVE_CONFIG", None)
    argv_ = gunicorn_argv(config)
    os.execve(argv_[0], argv_, frontend_env(env))  # supervisord then signals gunicorn itself
    return EXIT_CRASH  # not reached: execve replaces this process or raises


class ForkedGunicorn:
    """gunicorn's arbiter in a forked child, serving an app object built in this process.

    For embedding (ServingFrontend): routes whose callbacks live in the user's program
    cannot be imported by a fresh `python -m gunicorn`; forked, every gunicorn worker has
    them. Offers the part of subprocess.Popen's interface the Launcher uses.
    """

    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        import multiprocessing

        self._process = multiprocessing.get_context("fork").Process(
            target=_run_gunicorn, args=(app, options), name="gunicorn", daemon=False)
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("gunicorn", timeout or 0)
        return self._process.exitcode

    def kill(self) -> None:
        self._process.kill()


def _run_gunicorn(app: Any, options: dict[str, Any]) -> None:
    from gunicorn.app.base import BaseApplication

    prepare_child()

    class EmbeddedApplication(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    EmbeddedApplication().run()


