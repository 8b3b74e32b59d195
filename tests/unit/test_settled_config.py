"""A frontend process reads gunicorn's settings through SettledConfig: the same values as
gunicorn's Config (settings and properties alike), each resolved once."""
from __future__ import annotations

import pytest
from gunicorn.config import Config

from mxserve.frontend.gunicorn_worker import SettledConfig


def test_settled_config_answers_as_gunicorns_config_and_resolves_each_setting_once():
    cfg = Config()
    cfg.set("limit_request_line", 2048)
    cfg.set("keepalive", 7)
    settled = SettledConfig(cfg)
    for name in ("limit_request_line", "keepalive", "threads", "is_ssl", "sendfile",
                 "pre_request", "proxy_allow_ips"):
        assert getattr(settled, name) == getattr(cfg, name)
    assert "keepalive" in vars(settled)  # a plain attribute from now on
    cfg.set("keepalive", 9)  # a forked worker's settings never change; if they did, not seen
    assert settled.keepalive == 7
    with pytest.raises(AttributeError):
        settled.no_such_setting  # noqa: B018
