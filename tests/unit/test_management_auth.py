"""The management listener's guard: routes only on it, Host and Origin checked, the token
required by default, and model registration off unless enabled. The listener is what
gunicorn accepted the connection on, which a client cannot forge (a Host header could be)."""
from __future__ import annotations

import pytest

from mxserve.common import management_token
from mxserve.common.config import load_config
from mxserve.common.errors import ConfigError
from mxserve.frontend.management_guard import allowed_host_names, bearer_token, host_name

TOKEN = "0123456789abcdef-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app_on(monkeypatch):
    def make(listener, **settings):
        import mxserve.frontend.app as app_module
        import mxserve.frontend.management as management

        monkeypatch.setattr(management, "listener", lambda: listener)
        config = load_config({"broker_frontend": "ipc:///nonexistent",
                              "management_token": TOKEN, **settings}, env={})
        return app_module.create_app(config).test_client()

    return make


def test_metrics_exist_only_on_the_management_listener(app_on):
    assert app_on(("127.0.0.1", 8081)).get("/metrics", headers=AUTH).status_code == 200
    public = app_on(("127.0.0.1", 8080)).get("/metrics", headers={"Host": "x:8081", **AUTH})
    assert public.status_code == 404 and public.json["type"] == "NotFound"
    assert app_on("/run/mxserve/gunicorn.sock").get("/metrics").status_code == 404


def test_the_token_is_required_and_never_echoed(app_on):
    client = app_on(("127.0.0.1", 8081))
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing.json["type"] == "Unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and TOKEN not in wrong.get_data(as_text=True)
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert client.get("/metrics", headers={
            "Authorization": f"{scheme}  {TOKEN} "}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401


def test_auth_on_without_any_token_refuses_everything(app_on):
    client = app_on(("127.0.0.1", 8081), management_token="")
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_foreign_host_names_and_origins_are_refused(app_on):
    client = app_on(("127.0.0.1", 8081))
    for host in ("127.0.0.1:8081", "localhost:8081", "[::1]:8081", "127.3.4.5", "LOCALHOST."):
        assert client.get("/metrics", headers={"Host": host, **AUTH}).status_code == 200, host
    for host in ("evil.example:8081", "10.0.0.1:8081", "127.0.0.1.evil.example"):
        refused = client.get("/metrics", headers={"Host": host, **AUTH})
        assert refused.status_code == 403 and refused.json["type"] == "Forbidden", host
    cross = client.get("/metrics", headers={"Host": "127.0.0.1:8081", **AUTH,
                                            "Origin": "http://evil.example"})
    assert cross.status_code == 403
    same = client.get("/metrics", headers={"Host": "127.0.0.1:8081", **AUTH,
                                           "Origin": "http://127.0.0.1:8081"})
    assert same.status_code == 200
    assert client.get("/metrics", headers={"Host": "127.0.0.1:8081", "Origin": "null",
                                           **AUTH}).status_code == 403
    named = app_on(("127.0.0.1", 8081), management_allowed_hosts=["mxserve.internal"])
    assert named.get("/metrics", headers={"Host": "mxserve.internal:8081",
                                          **AUTH}).status_code == 200


def test_registering_and_removing_models_are_off_by_default(app_on):
    client = app_on(("127.0.0.1", 8081))
    for response in (client.post("/models", json={"path": "x.model"}, headers=AUTH),
                     client.delete("/models/digits", headers=AUTH)):
        assert response.status_code == 403 and "--enable-model-api" in response.json["message"]


def test_local_paths_stay_inside_the_model_store(app_on, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "outside.model").write_bytes(b"x")
    (store / "link.model").symlink_to(tmp_path / "outside.model")
    client = app_on(("127.0.0.1", 8081), enable_model_api=True, model_store=str(store))
    for path in ("../outside.model", str(tmp_path / "outside.model"), "link.model",
                 "/etc/passwd", "/nonexistent/x.model", ".", ""):
        refused = client.post("/models", json={"path": path}, headers=AUTH)
        assert refused.status_code == 400, path
        assert "outside" not in refused.json["message"] and "passwd" not in refused.json[
            "message"]
    # The same message whether the file outside exists or not: nothing to probe with.
    messages = {client.post("/models", json={"path": p}, headers=AUTH).json["message"]
                for p in ("/etc/passwd", "/nonexistent/x.model")}
    assert len(messages) == 1
    no_store = app_on(("127.0.0.1", 8081), enable_model_api=True)
    assert "model_store" in no_store.post("/models", json={"path": "x.model"},
                                          headers=AUTH).json["message"]


def test_host_names_and_bearer_tokens_parse():
    assert host_name("[::1]:8081") == "::1" and host_name("LocalHost.:80") == "localhost"
    assert bearer_token("bEaReR abc") == "abc" and bearer_token("Basic abc") == ""
    assert allowed_host_names("0.0.0.0", ["A.example."]) == {"localhost", "a.example"}


def test_a_non_loopback_listener_keeps_auth_and_tokens_are_long():
    with pytest.raises(ConfigError, match="management_auth"):
        load_config({"management_host": "0.0.0.0", "management_auth": False}, env={})
    assert load_config({"management_host": "0.0.0.0"}, env={})
    with pytest.raises(ConfigError, match="shorter"):
        load_config({"management_token": "s3cret"}, env={})
    with pytest.raises(ConfigError, match="management_port and port"):
        load_config({"management_port": 8080}, env={})


def test_a_generated_token_is_private_and_only_its_path_travels(tmp_path):
    config = management_token.resolve(load_config({}, env={}), tmp_path)
    path = tmp_path / management_token.TOKEN_FILE
    assert config.management_token_file == str(path) and config.management_token == ""
    assert (path.stat().st_mode & 0o777) == 0o600
    token = management_token.token_of(config)
    assert len(token) >= 32 and token not in str(config.to_env())
    again = management_token.resolve(load_config({}, env={}), tmp_path)
    assert management_token.token_of(again) == token  # a restart keeps its clients' token
    from_env = management_token.resolve(
        load_config({}, env={"MXSERVE_MANAGEMENT_TOKEN": TOKEN}), tmp_path)
    assert management_token.token_of(from_env) == TOKEN
    assert "MXSERVE_MANAGEMENT_TOKEN" not in from_env.to_env()
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="shorter"):
        management_token.resolve(load_config({"management_token_file": str(short)}, env={}),
                                 tmp_path)
