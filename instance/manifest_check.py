"""Kubernetes manifests checked against mxserve's own settings, so the two cannot drift:

    kubectl kustomize deploy/kubernetes/overlays/cpu | mxserve check-manifests -

The container's settings are what mxserve would run with inside it: its ConfigMaps
(envFrom), its env and its args, read as `mxserve start` reads them. Against those:
- the named ports (http, grpc, management) are the settings' ports;
- readiness probes /readyz and liveness probes /livez, on the http port;
- terminationGracePeriodSeconds covers preStop, the drain and the stop margin;
- MXSERVE_GPUS equals the nvidia.com/gpu limit, one worker per GPU;
- the model store is a read-only mount;
- the HPA's metric is one the Prometheus adapter rules serve, from metrics mxserve exports.
"""
from __future__ import annotations

import re
import tempfile
from typing import Any, Iterable

from mxserve.common.config import Config, load_config
from mxserve.common.errors import ConfigError
from mxserve.common.metrics import QUEUE_DEPTH, WORKERS_READY
from mxserve.instance.launcher import STOP_MARGIN_S, build_parser

EXPORTED_METRICS = frozenset(family.name for gauge in (QUEUE_DEPTH, WORKERS_READY)
                             for family in gauge.describe())
GUNICORN_STOP_S = 5  # gunicorn's own stop, with nothing left in flight
PORT_SETTINGS = {"http": "port", "grpc": "grpc_port", "management": "management_port"}
PROBE_PATHS = {"readinessProbe": "/readyz", "livenessProbe": "/livez", "startupProbe": "/livez"}


def by_kind(documents: Iterable[dict], kind: str) -> list[dict]:
    return [d for d in documents if d and d.get("kind") == kind]


def expand(value: str, environment: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined variable is replaced, $$ escapes a $."""
    def one(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        return environment.get(match[1], match[0])

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, value)


def container_environment(container: dict, config_maps: dict[str, dict[str, str]],
                          field_values: dict[str, str]) -> dict[str, str]:
    """The variables a container gets, as the kubelet builds them: envFrom ConfigMaps
    first, then env in order (valueFrom fieldRef from `field_values`, e.g. status.podIP),
    each value expanded against those before it."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        reference = source.get("configMapRef", {}).get("name")
        if reference is not None:
            environment.update(config_maps[reference])
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = expand(str(variable["value"]), environment)
        elif "fieldRef" in variable.get("valueFrom", {}):
            path = variable["valueFrom"]["fieldRef"]["fieldPath"]
            environment[variable["name"]] = field_values.get(path, "")
    return environment


def config_maps_of(documents: Iterable[dict]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: {k: str(v) for k, v in d.get("data", {}).items()}
            for d in by_kind(documents, "ConfigMap")}


def container_config(container: dict, config_maps: dict[str, dict[str, str]]
                     ) -> tuple[Config, str]:
    """The settings mxserve would start with in this container (`mxserve start` args), and
    its model store: a path inside the container, so kept out of the host-side validation."""
    environment = container_environment(container, config_maps,
                                        {"status.podIP": "10.0.0.10"})
    args = [*container.get("command", []), *container.get("args", [])]
    if args[:2] != ["mxserve", "start"]:
        raise ConfigError(f"the container runs {args[:2]}, not `mxserve start`")
    flags = {k: v for k, v in vars(build_parser().parse_args(args[2:])).items()
             if k != "config"}
    model_store = flags.pop("model_store", environment.pop("MXSERVE_MODEL_STORE", ""))
    with tempfile.TemporaryDirectory() as stand_in:  # the store exists in the container only
        if model_store:
            environment["MXSERVE_MODEL_STORE"] = stand_in
        return load_config(flags, env=environment), model_store


def _prestop_seconds(container: dict) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get(
        "command", [])
    return float(command[1]) if command[:1] == ["sleep"] and len(command) == 2 else 0.0


def check_pod(name: str, pod: dict, container: dict, config: Config,
              model_store: str) -> list[str]:
    problems = []
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    for port_name, setting in PORT_SETTINGS.items():
        wanted = getattr(config, setting)
        if ports.get(port_name, 0) != wanted and (wanted or port_name in ports):
            problems.append(f"{name}: port {port_name} is {ports.get(port_name)}, but "
                            f"mxserve's {setting} is {wanted}")
    for probe, path in PROBE_PATHS.items():
        spec = container.get(probe)
        if spec is None:
            if probe != "startupProbe":
                problems.append(f"{name}: no {probe}")
            continue
        get = spec.get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("http", config.port):
            problems.append(f"{name}: {probe} must GET {path} on the http port "
                            f"({config.port}), not {get.get('path')} on {get.get('port')}")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    needed = (_prestop_seconds(container) + config.drain_timeout_s + STOP_MARGIN_S
              + GUNICORN_STOP_S)
    if grace < needed:
        problems.append(f"{name}: terminationGracePeriodSeconds {grace} is under preStop + "
                        f"drain_timeout_s + stop margins ({needed:.0f}): SIGKILL would cut "
                        f"the drain short")
    gpus = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
    if gpus != config.gpus:
        problems.append(f"{name}: nvidia.com/gpu limit {gpus} but MXSERVE_GPUS "
                        f"{config.gpus} (one worker per GPU)")
    if model_store:
        mounts = {m["mountPath"].rstrip("/"): m for m in container.get("volumeMounts", [])}
        mount = mounts.get(model_store.rstrip("/"))
        if mount is None or not mount.get("readOnly"):
            problems.append(f"{name}: the model store {model_store} must be a read-only "
                            f"volume mount")
    return problems


def check_autoscaling(documents: list[dict], adapter_rules: dict) -> list[str]:
    served = {}
    for rule in adapter_rules.get("rules", []):
        used = set(re.findall(r"\b(mxserve_[a-z_]+)\{", rule["metricsQuery"] + " "
                              + rule["seriesQuery"]))
        served[rule["name"]["as"]] = used
    problems = [f"adapter rule {name} queries {sorted(used - EXPORTED_METRICS)}, which "
                f"mxserve does not export" for name, used in served.items()
                if used - EXPORTED_METRICS]
    for hpa in by_kind(documents, "HorizontalPodAutoscaler"):
        for metric in hpa["spec"].get("metrics", []):
            if metric["type"] == "Pods" and metric["pods"]["metric"]["name"] not in served:
                problems.append(f"HPA {hpa['metadata']['name']}: metric "
                                f"{metric['pods']['metric']['name']} is served by no adapter "
                                f"rule")
    return problems


def check(documents: list[dict], adapter_rules: dict | None = None) -> list[str]:
    """Every drift between the rendered manifests and mxserve's settings, as sentences."""
    problems: list[str] = []
    config_maps = config_maps_of(documents)
    for deployment in by_kind(documents, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            name = f"{deployment['metadata']['name']}/{container['name']}"
            try:
                config, model_store = container_config(container, config_maps)
            except (ConfigError, SystemExit) as exc:
                problems.append(f"{name}: mxserve would not start: "
                                f"{getattr(exc, 'message', exc)}")
                continue
            problems += check_pod(name, pod, container, config, model_store)
    if adapter_rules is not None:
        problems += check_autoscaling(documents, adapter_rules)
    return problems


def load_documents(text: str) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(text) if d]
