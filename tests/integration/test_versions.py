"""Several versions of one model at once (MMS 1.x / TorchServe's model versions): each with
its own workers, reached by version on every protocol, the default one by the routes
without a version, switched by set-default."""
from __future__ import annotations

import concurrent.futures

import requests

from tests.integration.test_mms1 import image
from tests.server_harness import eventually


def top_class(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    answer = response.json()
    return (answer["prediction"][0] if isinstance(answer, dict) else answer)[0]["class"]


def test_two_versions_serve_side_by_side_and_the_default_switches(mms1, sample_models):
    api, admin = mms1.api, mms1.admin
    digit = image(sample_models, "digit_0.jpg")
    jpeg = {"Content-Type": "image/jpeg"}
    for url, status in (("digits.mar", "Workers scaled"), ("digits-v2.mar", "Workers scaled")):
        registered = api.post(f"{admin}/models", params={
            "url": url, "model_name": "vdigits", "synchronous": "true"}, timeout=120)
        assert registered.status_code == 200 and registered.json() == {"status": status}
    again = api.post(f"{admin}/models", params={"url": "digits-v2.mar",
                                                "model_name": "vdigits"}, timeout=60)
    assert again.status_code == 409 and "version 2.0" in again.json()["message"]
    try:
        every = api.get(f"{admin}/models/vdigits/all", timeout=10).json()
        assert [(m["modelVersion"], m["isDefault"]) for m in every] == [("1.0", True),
                                                                         ("2.0", False)]
        assert api.get(f"{admin}/models/vdigits/2.0", timeout=10).json()[
            "modelVersion"] == "2.0"
        listing = api.get(f"{admin}/models", timeout=10).json()["models"]
        assert [m["modelName"] for m in listing].count("vdigits") == 1

        # 32 at once, mixing routes and versions: each gets its own version's answer.
        calls = [("/predictions/vdigits", "0"), ("/predictions/vdigits/1.0", "0"),
                 ("/predictions/vdigits/2.0", "v2-0"), ("/digits/predict", "0")] * 8

        def call(path: str) -> str:
            if path.endswith("/predict"):
                return top_class(requests.post(mms1.url + path, files={"data": digit},
                                               timeout=60))
            return top_class(requests.post(mms1.url + path, data=digit, headers=jpeg,
                                           timeout=60))

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(call, [path for path, _ in calls]))
        assert answers == [want for _, want in calls]

        # KServe v2's version routes reach a tensor model's versions the same way.
        v2 = requests.get(f"{mms1.url}/v2/models/digits/versions/1.0", timeout=10)
        assert v2.status_code == 200 and v2.json()["versions"] == ["1.0"]
        assert requests.get(f"{mms1.url}/v2/models/digits/versions/1.0/ready",
                            timeout=10).json() == {"name": "digits", "ready": True}
        assert requests.get(f"{mms1.url}/v2/models/digits/versions/2.0",
                            timeout=10).status_code == 404
        missing = requests.post(f"{mms1.url}/predictions/vdigits/3.0", data=digit,
                                headers=jpeg, timeout=10)
        assert missing.status_code == 404 and "1.0, 2.0" in missing.json()["message"]
        refused = api.delete(f"{admin}/models/vdigits/1.0", timeout=30)
        assert refused.status_code == 409 and "default" in refused.json()["message"]

        switched = api.put(f"{admin}/models/vdigits/2.0/set-default", timeout=30)
        assert switched.json() == {"status": 'Default version of model "vdigits" set to 2.0'}
        # Every frontend process routes by its catalog, refreshed within 2 s.
        eventually(lambda: call("/predictions/vdigits") == "v2-0", 10, "the new default")
        eventually(lambda: call("/vdigits/predict") == "v2-0", 10, "every frontend")
        scaled = api.put(f"{admin}/models/vdigits/1.0", params={
            "min_worker": "2", "synchronous": "true"}, timeout=120)
        assert scaled.json() == {"status": "Workers scaled"}
        # Metrics per version, refreshed at the broker's next housekeeping tick.
        eventually(lambda: {'mxserve_workers_ready{model="vdigits@2.0"} 1.0',
                            'mxserve_workers_ready{model="vdigits"} 2.0'} <= set(
            api.get(f"{admin}/metrics", timeout=10).text.splitlines()), 10,
            "the gauges of both versions")

        removed = api.delete(f"{admin}/models/vdigits/1.0", timeout=60)
        assert removed.json() == {"status": 'Model "vdigits" unregistered'}
        assert call("/predictions/vdigits/2.0") == "v2-0"
        gone = requests.post(f"{mms1.url}/predictions/vdigits/1.0", data=digit,
                             headers=jpeg, timeout=10)
        assert gone.status_code == 404
    finally:
        for version in ("2.0", "1.0", "2.0"):  # the default goes last, whichever it is
            api.delete(f"{admin}/models/vdigits/{version}", timeout=60)
    eventually(lambda: requests.post(f"{mms1.url}/predictions/vdigits", data=digit,
                                     headers=jpeg, timeout=10).status_code == 404, 10,
               "vdigits gone")


def test_version_routes_keep_the_guard_and_refuse_what_is_not_there(mms1):
    admin = mms1.admin
    for method, path in (("PUT", "/models/digits-mar/1.0/set-default"),
                         ("PUT", "/models/digits-mar/1.0?min_worker=2"),
                         ("DELETE", "/models/digits-mar/1.0"),
                         ("GET", "/models/digits-mar/all")):
        assert requests.request(method, admin + path, timeout=10).status_code == 401, path
        assert requests.request(method, mms1.url + path, timeout=10).status_code in (
            404, 405), path  # never on the inference listener
    for method, path in (("PUT", "/models/digits-mar/9.9/set-default"),
                         ("DELETE", "/models/digits-mar/9.9"),
                         ("GET", "/models/nothing/all"),
                         ("GET", "/models/digits-mar/..%2F..%2Fetc")):
        refused = mms1.api.request(method, admin + path, timeout=10)
        assert refused.status_code == 404, (path, refused.text)
        assert "Traceback" not in refused.text
    assert mms1.api.get(f"{admin}/models/digits-mar/all", timeout=10).json()[0][
        "modelVersion"] == "1.0"
