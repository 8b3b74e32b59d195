"""config/nginx.conf is what `mxserve nginx-conf` writes for the default settings, and the
values it derives keep the timeout ladder and our JSON 413 ahead of nginx's."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mxserve.common.config import load_config
from mxserve.common.errors import ConfigError
from mxserve.instance.nginx import render

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_shipped_nginx_conf_is_the_rendered_default():
    assert (ROOT / "config" / "nginx.conf").read_text() == render(load_config({}, env={}))


def test_body_limit_and_timeouts_follow_the_settings():
    config = load_config({"max_body_bytes": 1000, "gunicorn_timeout_s": 100.0,
                          "request_timeout_s": 50.0, "proxy_read_timeout_s": 120.0,
                          "unix_socket": "/tmp/x.sock"}, env={})
    text = render(config, "127.0.0.1:9000")
    assert f"client_max_body_size {1000 + 1024 * 1024};" in text
    assert "proxy_read_timeout 120s;" in text and "server unix:/tmp/x.sock;" in text
    assert "listen 127.0.0.1:9000;" in text
    nginx_timeout = int(re.search(r"proxy_read_timeout (\d+)s", text).group(1))
    assert nginx_timeout > config.gunicorn_timeout_s


def test_a_proxy_timeout_under_gunicorns_is_refused():
    with pytest.raises(ConfigError, match="proxy_read_timeout_s"):
        load_config({"proxy_read_timeout_s": 30.0}, env={})
