"""A real nginx, configured by `mxserve nginx-conf`, in front of the real stack on a unix
socket: answers, our JSON errors passing through (413, 503, 504), nginx's own errors as
JSON, and slow clients (slowloris) that do not starve the others."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from mxserve.common.config import load_config
from mxserve.instance.nginx import render
from tests.conftest import DATA
from tests.integration.test_server_http import assert_error
from tests.server_harness import Server, eventually, free_port

TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def stack(sample_models, tmp_path_factory):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(nginx), "nginx is not installed (make test installs it)"
    prefix = tmp_path_factory.mktemp("nginx")
    (prefix / "tmp").mkdir()
    sock = prefix / "gunicorn.sock"
    port = free_port()
    config = load_config({"unix_socket": str(sock), "request_timeout_s": TIMEOUT_S}, env={})
    (prefix / "nginx.conf").write_text(render(config, f"127.0.0.1:{port}"))
    # As root, nginx's workers would drop to "nobody", who cannot reach a socket in a
    # private temp folder; production runs nginx as its own user with a shared folder.
    user = ["-g", "daemon off; user root;"] if os.geteuid() == 0 else ["-g", "daemon off;"]
    with Server([f"digits={sample_models['digits']}", f"faulty={sample_models['noop']}"],
                "--services", f"faulty={DATA / 'services' / 'faulty.py'}",
                "--workers-per-model", "2", "--max-batch-size", "1",
                "--request-timeout-s", str(TIMEOUT_S), "--max-queue-size", "4",
                "--unix-socket", str(sock)) as server:
        proxy = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                  *user], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        server.proxy_url = f"http://127.0.0.1:{port}"
        try:
            def proxied() -> bool:
                assert proxy.poll() is None, proxy.stdout.read().decode()
                return requests.get(server.proxy_url + "/ping", timeout=2).status_code == 200

            eventually(proxied, 20, "/ping through nginx")
            yield server
        finally:
            proxy.terminate()
            proxy.wait(10)


def through(stack, model, timeout=30, **kwargs):
    started = time.monotonic()
    response = requests.post(f"{stack.proxy_url}/{model}/predict", timeout=timeout, **kwargs)
    response.seconds = time.monotonic() - started
    return response


def test_a_prediction_through_nginx(stack, sample_models):
    image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
    response = through(stack, "digits", files={"data": image},
                       headers={"X-Request-Id": "abc-123"})
    assert response.status_code == 200
    assert response.json()["prediction"][0][0]["class"] == "0"
    assert response.headers["X-Request-Id"] == "abc-123"
    assert requests.get(stack.proxy_url + "/metrics", timeout=5).status_code == 404


def test_our_413_wins_over_nginx_and_nginx_own_413_is_json(stack):
    ours = through(stack, "digits", files={"data": b"\xff\xd8\xff" + b"\0" * 6_800_000})
    assert_error(ours, 413, "PayloadTooLarge")  # the app's, with its request id
    far_over = through(stack, "digits", files={"data": b"\0" * 9_000_000})
    assert far_over.status_code == 413
    assert far_over.json()["type"] == "PayloadTooLarge" and "bytes" in far_over.json()["message"]


def test_our_504_and_503_pass_through_with_retry_after(stack):
    with ThreadPoolExecutor(12) as pool:
        hung = pool.submit(through, stack, "faulty", data={"data": json.dumps([[30, 0, 0, 0]])})
        time.sleep(0.1)
        busy = [pool.submit(through, stack, "faulty", data={"data": json.dumps([[0.4, 0, 0, 0]])})
                for _ in range(5)]
        time.sleep(0.3)
        refused = [pool.submit(through, stack, "faulty",
                               data={"data": json.dumps([[0, 0, 0, 0]])}) for _ in range(4)]
        refused = [f.result() for f in refused]
        assert_error(hung.result(), 504, "DeadlineExceeded")
        assert hung.result().seconds < TIMEOUT_S + 2.5
        assert [f.result().status_code for f in busy] == [200] * 5
    for response in refused:
        assert_error(response, 503, "ServiceUnavailable", "queue is full")
        assert response.headers["Retry-After"]


def test_slowloris_clients_do_not_starve_the_others(stack, sample_models):
    image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
    host, port = stack.proxy_url.rsplit("/", 1)[1].split(":")
    slow = []
    for _ in range(300):  # far more than gunicorn's 2 x 32 threads
        conn = socket.create_connection((host, int(port)), timeout=5)
        conn.sendall(b"POST /digits/predict HTTP/1.1\r\nHost: x\r\n")  # ... and never finish
        slow.append(conn)
    try:
        started = time.monotonic()
        for _ in range(3):  # trickle a header byte now and then, as slowloris does
            for conn in slow:
                conn.sendall(b"X")
            time.sleep(0.3)
        with ThreadPoolExecutor(4) as pool:  # 2 workers + a queue of 4: no 503
            answers = list(pool.map(lambda _: through(stack, "digits", files={"data": image}),
                                    range(24)))
        elapsed = time.monotonic() - started
    finally:
        for conn in slow:
            conn.close()
    failed = [(a.status_code, a.text) for a in answers if a.status_code != 200]
    assert not failed, failed[:3]
    slowest = max(a.seconds for a in answers)
    print(f"24 predictions beside 300 slowloris connections: slowest {slowest * 1000:.0f} ms, "
          f"all done {elapsed:.1f}s after the slow clients connected")
    assert slowest < 2.0


def test_nginx_answers_json_503_when_mxserve_is_down(stack):
    assert stack.stop() == 0
    response = requests.get(stack.proxy_url + "/ping", timeout=10)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["type"] == "ServiceUnavailable"
