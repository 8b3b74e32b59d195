"""model_url_allowlist: exact scheme, host and port, paths on segment boundaries, disguised
URLs refused; downloads re-check every redirect, keep one deadline and a size cap, and say
nothing about the hosts they could not reach."""
from __future__ import annotations

import http.server
import threading
import time

import pytest

from mxserve.common.config import load_config
from mxserve.common.errors import ConfigError, InvalidInput, PayloadTooLarge
from mxserve.common.url_allowlist import check_url, parse_allowlist, without_query
from mxserve.frontend.download import download

ALLOW = parse_allowlist(["http://127.0.0.1:1919/models"])


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:1919/models/x.model",
    "http://127.0.0.1:1919/models/sub/x.model?sig=abc",
])
def test_allowed(url):
    assert check_url(url, ALLOW).port == 1919


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:19191/models/x.model",  # a port with the same prefix
    "http://127.0.0.1/models/x.model",  # default port is another port
    "https://127.0.0.1:1919/models/x.model",  # another scheme
    "http://127.0.0.1:1919/models-evil/x.model",  # not on a segment boundary
    "http://127.0.0.1:1919/models/../evil/x.model",
    "http://127.0.0.1:1919/models/%2e%2e/evil/x.model",
    "http://127.0.0.1:1919/models/%2E%2e/evil/x.model",
    "http://127.0.0.1:1919/models/..%2fevil/x.model",
    "http://127.0.0.1:1919/models\\..\\evil",
    "http://user:pw@127.0.0.1:1919/models/x.model",
    "http://127.0.0.1:1919@evil.example/models/x.model",
    "http://127.0.0.1:1919/models/x.model\r\nHost: evil",
    "http://127.0.0.1:1919/models/x model",
    "http://127.0.0.1:1919/models/",
    "file:///etc/passwd",
    "ftp://127.0.0.1:1919/models/x.model",
    "http://127.0.0.1:99999/models/x.model",
    "",
])
def test_refused(url):
    with pytest.raises(InvalidInput):
        check_url(url, ALLOW)


def test_bad_entries_are_configuration_errors():
    for entry in ("127.0.0.1/models", "http://a/../b/", "http://u@a/", "http://a/?x=1"):
        with pytest.raises(ConfigError):
            load_config({"model_url_allowlist": [entry]}, env={})
    assert parse_allowlist(["https://h.example/m"])[0].path == "/m/"
    assert without_query("https://h/x.model?X-Amz-Signature=s#f") == "https://h/x.model"


class Files(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.routes[self.path](self)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def files():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def body(data):
        def send(handler):
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        return send

    def redirect(location):
        def send(handler):
            handler.send_response(302)
            handler.send_header("Location", location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        return send

    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        try:
            for _ in range(1000):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up at its deadline, as the test wants

    Files.routes = {
        "/ok/a.model": body(b"archive"), "/ok/to-b": redirect("/ok/b.model"),
        "/ok/b.model": body(b"bee"), "/ok/away": redirect("http://10.255.255.1:8081/models"),
        "/ok/out": redirect(f"{base}/private/secret"), "/ok/loop": redirect("/ok/loop"),
        "/ok/big": body(b"x" * 5000), "/ok/slow": trickle,
    }
    yield base, parse_allowlist([f"{base}/ok/"])
    server.shutdown()


def fetch(files, path, cap=1 << 20, timeout_s=5.0):
    base, allow = files
    return open(download(f"{base}{path}", allow, cap, timeout_s), "rb").read()


def test_downloads_follow_allowed_redirects_only(files):
    assert fetch(files, "/ok/a.model") == b"archive"
    assert fetch(files, "/ok/to-b") == b"bee"
    for path in ("/ok/away", "/ok/out"):
        with pytest.raises(InvalidInput) as refused:
            fetch(files, path)
        assert "outside" in refused.value.message and "10.255" not in refused.value.message
    with pytest.raises(InvalidInput, match="more than"):
        fetch(files, "/ok/loop")
    with pytest.raises(PayloadTooLarge):
        fetch(files, "/ok/big", cap=100)


def test_a_trickling_server_cannot_outlast_the_deadline(files):
    started = time.monotonic()
    with pytest.raises(InvalidInput):
        fetch(files, "/ok/slow", timeout_s=1.0)
    assert time.monotonic() - started < 3.0


def test_unreachable_hosts_are_not_named():
    allow = parse_allowlist(["http://127.0.0.1:1/m/"])
    with pytest.raises(InvalidInput) as refused:
        download("http://127.0.0.1:1/m/x.model", allow, 100, 2.0)
    assert "127.0.0.1" not in refused.value.message
