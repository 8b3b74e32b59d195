"""What an MMS 1.x handler records through `context.metrics` reaches /metrics, labelled by
model, and a handler cannot grow the registry without bound."""
from __future__ import annotations

import re

import pytest
import requests

from tests.conftest import MAR_SERVICES, build_mar, template_store
from tests.server_harness import Server, eventually


@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_models):
    store = template_store(tmp_path_factory.mktemp("store"))
    build_mar(None, MAR_SERVICES / "metric_flood.py", "metric_flood:handle", "flood", store)
    with Server(["digits=digits.mar", "echo=echo.mar", "flood=flood.mar"],
                "--model-store", str(store)) as instance:
        yield instance


def scrape(server) -> str:
    return requests.get(f"{server.admin}/metrics", headers=server.admin_headers,
                        timeout=10).text


def scrape_until(server, needle: str) -> str:
    """The scrape once it shows `needle`: the broker records a batch's metrics after the
    answer has gone."""
    return eventually(lambda: next((t for t in [scrape(server)] if needle in t), None), 10,
                      needle)


def test_the_template_s_preprocess_time_reaches_metrics(server, reference):
    image = (reference / "images" / "digit_0.jpg").read_bytes()
    for _ in range(3):
        r = requests.post(f"{server.url}/predictions/digits", data=image,
                          headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()[0]["class"] == "0"
    text = scrape_until(server, 'mxserve_handler_PreprocessTime_milliseconds_count'
                                '{model="digits"} 3.0')
    assert 'mxserve_handler_InferenceTime_milliseconds_sum{model="digits"}' in text
    assert "# TYPE mxserve_handler_PreprocessTime_milliseconds summary" in text


def test_every_kind_of_metric_keeps_its_unit_and_dimensions(server):
    r = requests.post(f"{server.url}/predictions/echo", files={"action": (None, "refuse"),
                                                               "code": (None, "422")},
                      timeout=30)
    assert r.status_code == 422
    r = requests.post(f"{server.url}/predictions/echo", data=b'{"x": 1}',
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200
    text = scrape_until(server, "EchoValues")
    assert 'mxserve_handler_EchoRequests_total{Route="echo",model="echo"} 2.0' in text
    assert 'mxserve_handler_EchoTime_milliseconds_count{model="echo"} 2.0' in text
    assert 'mxserve_handler_EchoSize_kilobytes_sum{model="echo"}' in text
    assert re.search(r'mxserve_handler_EchoShare_percent\{model="echo"\} 100\.0', text)
    assert re.search(r'mxserve_handler_EchoValues_values\{model="echo"\} 1\.0', text)
    assert 'mxserve_handler_EchoRefused_errors_total{model="echo"} 1.0' in text


def test_ten_thousand_names_leave_the_registry_bounded_and_the_server_answering(server):
    for offset in range(0, 50000, 10000):
        r = requests.post(f"{server.url}/predictions/flood",
                          files={"offset": (None, str(offset))}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.text == "ok"
    text = scrape_until(server, 'mxserve_dropped_handler_metrics_total{model="flood"}')
    series = {line.split(" ")[0].replace("_count", "").replace("_sum", "")
              for line in text.splitlines()
              if line.startswith("mxserve_handler_") and 'model="flood"' in line}
    assert 50 <= len(series) <= 100, len(series)
    dropped = float(re.search(r'mxserve_dropped_handler_metrics_total\{model="flood"\} (\S+)',
                              text).group(1))
    assert dropped >= 50000 - 100
    assert len(text) < 2_000_000
    # the others still answer, and their metrics still arrive
    assert requests.post(f"{server.url}/predictions/echo", data=b"{}",
                         headers={"Content-Type": "application/json"},
                         timeout=30).status_code == 200
