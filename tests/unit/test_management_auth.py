"""The management listener: its routes exist only on it, and a token, when set, is required
(compared in constant time). The listener is what gunicorn accepted the connection on,
which a client cannot forge (a Host header could be)."""
from __future__ import annotations

import pytest

from common.config import ConfigError, load_config


@pytest.fixture
def app_on(monkeypatch):
    def make(listener, **settings):
        import frontend.app as app_module
        import frontend.management as management

        monkeypatch.setattr(management, "listener", lambda: listener)
        config = load_config({"broker_frontend": "ipc:///nonexistent", **settings}, env={})
        return app_module.create_app(config).test_client()

    return make


def test_metrics_exist_only_on_the_management_listener(app_on):
    assert app_on(("127.0.0.1", 8081)).get("/metrics").status_code == 200
    public = app_on(("127.0.0.1", 8080)).get("/metrics", headers={"Host": "x:8081"})
    assert public.status_code == 404 and public.json["type"] == "ModelNotFound"
    assert app_on("/run/mxserve/gunicorn.sock").get("/metrics").status_code == 404


def test_a_management_token_is_required_when_set(app_on):
    client = app_on(("127.0.0.1", 8081), management_token="s3cret")
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json["type"] == "Unauthorized"
    assert "s3cret" not in wrong.get_data(as_text=True)
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_a_non_loopback_management_listener_needs_a_token():
    with pytest.raises(ConfigError, match="management_token"):
        load_config({"management_host": "0.0.0.0"}, env={})
    assert load_config({"management_host": "0.0.0.0", "management_token": "t"}, env={})
    assert load_config({"management_host": "::1"}, env={})
    with pytest.raises(ConfigError, match="management_port and port"):
        load_config({"management_port": 8080}, env={})
