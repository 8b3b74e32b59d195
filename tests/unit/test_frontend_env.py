"""gunicorn's environment (two malloc arenas unless the operator chose) and its hooks."""
import sys

from gunicorn.app.wsgiapp import WSGIApplication

from mxserve.common.config import load_config
from mxserve.frontend import gunicorn_hooks
from mxserve.instance.gunicorn_wiring import embedded_options, frontend_env, gunicorn_argv


def _parsed_by_gunicorn(argv, monkeypatch):
    """gunicorn's own parser reading the command line the launcher builds."""
    monkeypatch.setattr(sys, "argv", ["gunicorn", *argv[3:]])  # past `python -m gunicorn`
    return WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg


def test_frontends_get_two_malloc_arenas_unless_set():
    assert frontend_env({"PATH": "/bin"}) == {"PATH": "/bin", "MALLOC_ARENA_MAX": "2"}
    assert frontend_env({"MALLOC_ARENA_MAX": "8"})["MALLOC_ARENA_MAX"] == "8"


def test_gunicorn_settles_the_preloaded_app_before_forking_through_its_hook(monkeypatch):
    """The app is preloaded and `when_ready` (before any frontend is forked) is ours."""
    cfg = _parsed_by_gunicorn(gunicorn_argv(load_config({"run_dir": "/tmp"}, env={})),
                              monkeypatch)
    assert cfg.preload_app and cfg.when_ready is gunicorn_hooks.when_ready
    settled = []
    monkeypatch.setattr(gunicorn_hooks, "settle_before_forking", lambda: settled.append(1))
    gunicorn_hooks.when_ready(None)
    assert settled == [1]


def test_the_command_line_and_the_embedded_gunicorn_get_the_same_settings(monkeypatch):
    config = load_config({"run_dir": "/tmp", "management_port": 8081, "log_level": "DEBUG",
                          "frontend_threads": 7}, env={})
    cfg = _parsed_by_gunicorn(gunicorn_argv(config), monkeypatch)
    options = embedded_options(config)
    assert options["bind"] == ["127.0.0.1:8080", "127.0.0.1:8081"]
    for name, value in options.items():
        assert cfg.settings[name].get() == value, name
