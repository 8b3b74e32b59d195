"""A kubelet, an endpoints controller and a Service, simulated with real processes, for the
rendered Deployment (tests/integration/test_kubernetes_simulation.py).

What is read from the manifests and never retyped: the container's command, args, env
(envFrom ConfigMaps, fieldRef status.podIP, $(VAR) expansion), volume mounts, named ports,
the three probes with their periods, thresholds and timeouts, preStop, and
terminationGracePeriodSeconds; the image's ENV comes from the Dockerfile.

What a node gives a pod and a test host cannot, stood in for:
- the pod's own network namespace: each pod gets its own loopback address (127.0.0.x),
  which replaces the wildcard listen address, and keeps the manifest's ports;
- volumes: each mount path is a host folder, substituted in env values; /tmp sets TMPDIR;
- the image's /opt/mxserve/bin: this environment's bin folder;
- kube-proxy: a real nginx whose upstreams are the ready pods (reloaded when they change).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from mxserve.instance.manifest_check import config_maps_of, container_environment
from tests.deploy_files import image_env, one

WILDCARDS = ("0.0.0.0", "::", "")


def host_path(value: str, mounts: dict[str, Path]) -> str:
    """A container path under a mount, as the host folder behind it; anything else as is."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(mounts[mount_path]) + value[len(mount_path):]
    return value


@dataclass
class ProbeState:
    successes: int = 0
    failures: int = 0
    passed: bool = False


@dataclass
class Pod:
    name: str
    ip: str
    spec: dict
    process: subprocess.Popen
    log_path: Path
    started: ProbeState = field(default_factory=ProbeState)
    ready: ProbeState = field(default_factory=ProbeState)
    live: ProbeState = field(default_factory=ProbeState)
    liveness_failures: int = 0  # probes that failed failureThreshold times in a row
    terminating: bool = False

    @property
    def container(self) -> dict:
        return self.spec["containers"][0]

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        return next(p["containerPort"] for p in self.container["ports"]
                    if p["name"] == name_or_number)

    def url(self, port_name: str = "http") -> str:
        return f"http://{self.ip}:{self.port(port_name)}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Kubelet:
    """Runs pods of one Deployment and keeps a Service (nginx) pointed at the ready ones."""

    def __init__(self, workdir: Path, volumes: dict[str, Path], nginx: str) -> None:
        self.workdir = workdir
        self.volumes = volumes  # volume name -> host folder
        self.nginx = nginx
        self.store: Path | None = None
        self.pods: list[Pod] = []
        self._started = 0
        self.events: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._octets = random.sample(range(2, 250), 40)
        self.service_port = 0
        self._service: subprocess.Popen | None = None
        self._endpoints: tuple[str, ...] = ()
        self._threads: list[threading.Thread] = []

    # --- pods ---------------------------------------------------------------------------

    def start_pod(self, documents: list[dict]) -> Pod:
        deployment = one(documents, "Deployment")
        spec = deployment["spec"]["template"]["spec"]
        [container] = spec["containers"]
        ip = f"127.0.{self._octets.pop()}.{random.randint(2, 250)}"
        self._started += 1
        name = f"{deployment['metadata']['name']}-{self._started}"
        environment = {key: value for key, value in image_env("Dockerfile").items()
                       if key != "PATH"}
        environment.update(container_environment(container, config_maps_of(documents),
                                                 {"status.podIP": ip}))
        for key in ("MXSERVE_HOST", "MXSERVE_MANAGEMENT_HOST"):
            if environment.get(key) in WILDCARDS:
                environment[key] = ip  # the pod's only address is its own
        pod_dir = self.workdir / name
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            host = self.volumes[mount["name"]]
            if host == "emptyDir":
                host = pod_dir / mount["name"]
                host.mkdir(parents=True)
            mounts[mount["mountPath"].rstrip("/")] = Path(host)
        for key, value in environment.items():
            environment[key] = host_path(value, mounts)
        if "/tmp" in mounts:
            environment["TMPDIR"] = str(mounts["/tmp"])
        bin_dir = Path(sys.executable).parent
        command = [*container.get("command", []), *container.get("args", [])]
        command[0] = str(bin_dir / command[0])
        environment.update(PATH=f"{bin_dir}:/usr/bin:/bin", HOME=str(pod_dir),
                           LANG="C.UTF-8")
        pod_dir.mkdir(parents=True, exist_ok=True)
        log_path = pod_dir / "container.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, env=environment, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=pod_dir)
        pod = Pod(name, ip, spec, process, log_path)
        with self._lock:
            self.pods.append(pod)
        self.event(f"{name} started at {ip}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            thread = threading.Thread(target=self._probe_loop, args=(pod, probe), daemon=True)
            thread.start()
            self._threads.append(thread)
        return pod

    def wait_ready(self, pod: Pod, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not pod.ready.passed:
            assert pod.process.poll() is None, f"{pod.name} exited:\n{pod.log()[-3000:]}"
            assert time.monotonic() < deadline, f"{pod.name} not ready:\n{pod.log()[-3000:]}"
            time.sleep(0.1)

    def delete_pod(self, pod: Pod) -> int:
        """Kubernetes' pod deletion: out of the endpoints and preStop at once, then SIGTERM,
        then SIGKILL when terminationGracePeriodSeconds (counted from the deletion) ends.
        Returns the container's exit code."""
        started = time.monotonic()
        grace = pod.spec.get("terminationGracePeriodSeconds", 30)
        pod.terminating = True
        self.event(f"{pod.name} deleted")
        self.sync_endpoints()
        hook = pod.container.get("lifecycle", {}).get("preStop", {}).get("exec")
        if hook:
            subprocess.run(hook["command"], timeout=grace, check=True)
            self.event(f"{pod.name} preStop done")
        pod.process.send_signal(signal.SIGTERM)
        try:
            code = pod.process.wait(max(0.0, grace - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            self.event(f"{pod.name} killed at the end of its grace period")
            pod.process.kill()
            code = pod.process.wait()
        self.event(f"{pod.name} exited {code} after {time.monotonic() - started:.1f}s")
        with self._lock:
            self.pods.remove(pod)
        return code

    def _probe_loop(self, pod: Pod, kind: str) -> None:
        spec = pod.container.get(kind)
        if spec is None:
            if kind == "startupProbe":
                pod.started.passed = True
            return
        period = spec.get("periodSeconds", 10)
        timeout = spec.get("timeoutSeconds", 1)
        success_needed = spec.get("successThreshold", 1)
        failure_limit = spec.get("failureThreshold", 3)
        state = {"startupProbe": pod.started, "readinessProbe": pod.ready,
                 "livenessProbe": pod.live}[kind]
        time.sleep(spec.get("initialDelaySeconds", 0))
        while not self._stop.is_set() and pod.process.poll() is None:
            if kind != "startupProbe" and not pod.started.passed:
                time.sleep(0.05)  # the other probes start once the startup probe passed
                continue
            if kind == "startupProbe" and pod.started.passed:
                return
            get = spec["httpGet"]
            try:
                answer = requests.get(f"http://{pod.ip}:{pod.port(get['port'])}{get['path']}",
                                      timeout=timeout)
                good = 200 <= answer.status_code < 400
            except requests.RequestException:
                good = False
            was = state.passed
            if good:
                state.successes, state.failures = state.successes + 1, 0
                if state.successes >= success_needed:
                    state.passed = True
            else:
                state.successes, state.failures = 0, state.failures + 1
                if state.failures >= failure_limit:
                    state.passed = False
                    if kind == "livenessProbe":
                        pod.liveness_failures += 1
                        self.event(f"{pod.name} liveness failed: the kubelet would restart it")
                    if kind == "startupProbe":
                        self.event(f"{pod.name} never started")
                        return
            if state.passed != was:
                self.event(f"{pod.name} {kind} -> {state.passed}")
                if kind == "readinessProbe":
                    self.sync_endpoints()
            self._stop.wait(period)

    # --- the Service ----------------------------------------------------------------------

    def sync_endpoints(self) -> None:
        """The endpoints controller: ready pods not terminating, into the Service."""
        with self._lock:
            endpoints = tuple(sorted(pod.url("http")[len("http://"):] for pod in self.pods
                                     if pod.ready.passed and not pod.terminating))
            if endpoints == self._endpoints or self._service is None:
                self._endpoints = endpoints
                return
            self._endpoints = endpoints
            self._write_service_conf()
            # A reload: new connections go to the new upstreams, running requests finish.
            self._service.send_signal(signal.SIGHUP)
        self.event(f"endpoints: {', '.join(endpoints) or 'none'}")

    def start_service(self, port: int) -> str:
        """nginx on 127.0.0.1:port as the Service: clients open a connection per request, as
        through kube-proxy a new connection goes to the current endpoints."""
        self.service_port = port
        (self.workdir / "service" / "tmp").mkdir(parents=True)
        with self._lock:
            self._write_service_conf()
            user = ["-g", "daemon off; user root;"] if os.geteuid() == 0 else [
                "-g", "daemon off;"]
            self._service = subprocess.Popen(
                [self.nginx, "-p", str(self.workdir / "service"), "-c", "nginx.conf", *user],
                stdout=subprocess.DEVNULL, stderr=open(self.workdir / "service.log", "wb"))
        return f"http://127.0.0.1:{port}"

    def _write_service_conf(self) -> None:
        servers = "\n".join(f"        server {e};" for e in self._endpoints) or (
            "        server 127.0.0.1:9 down;")
        (self.workdir / "service" / "nginx.conf").write_text(f"""\
worker_processes 1;
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    upstream pods {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{self.service_port};
        keepalive_timeout 0;
        location / {{
            proxy_pass http://pods;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream off;
            proxy_read_timeout 60s;
        }}
    }}
}}
""")

    def event(self, text: str) -> None:
        self.events.append(f"{time.monotonic():.1f} {text}")

    def shutdown(self) -> None:
        self._stop.set()
        for pod in list(self.pods):
            if pod.process.poll() is None:
                pod.process.kill()
                pod.process.wait(10)
        if self._service is not None:
            self._service.terminate()
            self._service.wait(10)
