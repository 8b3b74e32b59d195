"""The Deployment of deploy/kubernetes/overlays/cpu, run as a kubelet would (tests/kubelet.py):
two replicas behind a Service (a real nginx), probes polled at the manifest's periods, and a
rolling update under 32 connections of load that fails no request. The new version adds a
model that fails to load, marked optional: its replicas still become ready and serve."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.conftest import MAR_SERVICES, build_mar
from tests.deploy_files import KUBERNETES, render
from tests.kubelet import Kubelet
from tests.server_harness import free_port

CONNECTIONS = 32
LOAD_LIMIT_S = 240  # the load stops by then even if the update hangs


@pytest.fixture
def cluster(tmp_path, sample_models):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is not installed (make test installs it)"
    store = tmp_path / "model-store"  # the PersistentVolume behind claim mxserve-models
    store.mkdir()
    shutil.copy(sample_models["digits"], store / "digits.model")
    token = tmp_path / "token-secret"  # the Secret mxserve-management-token
    token.mkdir()
    (token / "token").write_text("a-management-token-from-the-secret")
    (token / "token").chmod(0o440)
    # A node's emptyDir is /tmp inside the container: a short path, as unix sockets need.
    node = Path(tempfile.mkdtemp(prefix="node-"))
    kubelet = Kubelet(node, {"models": store, "tmp": "emptyDir", "management-token": token},
                      nginx)
    kubelet.store = store
    yield kubelet
    kubelet.shutdown()
    shutil.rmtree(node, ignore_errors=True)


def new_version(tmp_path: Path) -> list[dict]:
    """A new release as a user makes one: an overlay over ours that changes the settings
    ConfigMap (whose new hash rolls the Deployment out): the broken archive is added as an
    optional model, and digits stays the one readiness waits for."""
    overlay = tmp_path / "release-2"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {os.path.relpath(KUBERNETES / "overlays" / "cpu", overlay)}
configMapGenerator:
  - name: mxserve-settings
    behavior: merge
    literals:
      - MXSERVE_MODELS=digits=digits.model broken=broken.mar
      - MXSERVE_REQUIRED_MODELS=digits
""")
    return render(overlay)


class Load:
    """CONNECTIONS clients posting digits through the Service until stopped."""

    def __init__(self, url: str, image: bytes) -> None:
        self.url, self.image = url, image
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True)
                        for _ in range(CONNECTIONS)]
        self.deadline = time.monotonic() + LOAD_LIMIT_S

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _client(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                answer = requests.post(f"{self.url}/digits/predict",
                                       files={"data": self.image}, timeout=60)
                good = (answer.status_code == 200
                        and answer.json()["prediction"][0][0]["class"] == "0")
                outcome = "ok" if good else f"{answer.status_code}"
                if not good:
                    self.failures.append(f"{answer.status_code} {answer.text[:200]}")
            except (requests.RequestException, ValueError) as exc:
                outcome = type(exc).__name__
                self.failures.append(repr(exc)[:200])
            self.outcomes[outcome] += 1


def test_a_rolling_update_under_load_fails_no_request(cluster, tmp_path, sample_models):
    release_1 = render(KUBERNETES / "overlays" / "cpu")
    replicas = release_1[[d["kind"] for d in release_1].index("Deployment")]["spec"][
        "replicas"]
    old = [cluster.start_pod(release_1) for _ in range(replicas)]
    for pod in old:
        cluster.wait_ready(pod)
    service = cluster.start_service(free_port())
    cluster.sync_endpoints()
    image = (sample_models["digits"].parent / "examples" / "digit_0.jpg").read_bytes()
    # Release 2's archive joins the store (the volume) first; release 1 already loaded its own.
    build_mar(None, MAR_SERVICES / "fails_to_load.py", "fails_to_load:handle", "broken",
              cluster.store)
    release_2 = new_version(tmp_path)

    with Load(service, image) as load:
        while load.outcomes["ok"] < 200:  # the load reaches both old replicas first
            assert time.monotonic() < load.deadline and not load.failures, load.failures
            time.sleep(0.1)
        # maxSurge 1, maxUnavailable 0: one new pod ready, then one old pod out, and again.
        exits = []
        new = []
        for old_pod in old:
            pod = cluster.start_pod(release_2)
            cluster.wait_ready(pod)
            new.append(pod)
            exits.append(cluster.delete_pod(old_pod))
        served_after = load.outcomes["ok"]
        while load.outcomes["ok"] < served_after + 200:  # and the new ones serve
            assert time.monotonic() < load.deadline, load.outcomes
            time.sleep(0.1)

    events = "\n".join(cluster.events)
    print(f"\nrequests through the Service during the update: {dict(load.outcomes)}\n{events}")
    assert load.failures == [], f"{load.outcomes}\n{load.failures[:5]}\n{events}"
    assert exits == [0, 0], events  # each drained and stopped within its grace period
    assert all(pod.liveness_failures == 0 for pod in old + new), events

    # The new replicas are ready although their optional model failed for good, and say so.
    for pod in new:
        assert requests.get(pod.url() + "/readyz", timeout=5).json() == {"ready": True}
        assert requests.get(pod.url() + "/livez", timeout=5).status_code == 200
    broken = requests.post(f"{service}/predictions/broken", data=b"x", timeout=30)
    assert broken.status_code == 500 and broken.json()["type"] == "ModelFailed"
    assert "Retry-After" not in broken.headers
    # /metrics on the management port answers the pod-IP Host with the Secret's token only.
    metrics_url = new[0].url("management") + "/metrics"
    assert requests.get(metrics_url, timeout=5).status_code == 401
    scraped = requests.get(metrics_url, timeout=10, headers={
        "Authorization": "Bearer a-management-token-from-the-secret"})
    assert scraped.status_code == 200 and "mxserve_queue_depth" in scraped.text
