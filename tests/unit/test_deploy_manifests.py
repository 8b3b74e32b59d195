"""The container images and Kubernetes manifests, checked offline: every rendered manifest
against the Kubernetes API schemas (kubernetes-validate, strict), the KServe runtime against
KServe's vendored schema, the Dockerfiles' structure, and every port, probe, grace period,
GPU count and metric name against mxserve's own settings, with the drifts that must fail."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import referencing
import referencing.jsonschema
import yaml

from mxserve.common.config import load_config
from mxserve.instance.launcher import build_parser
from mxserve.instance.manifest_check import check
from tests import deploy_files
from tests.deploy_files import KSERVE, KUBERNETES, adapter_rules, edited, one, render, stages

KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests are written for
# Kinds of operators the cluster may not have: checked against the operator's own CRD
# schema, from npm's @kubernetes-models/prometheus-operator (`make node-deps`).
OPERATOR_KINDS = {"ServiceMonitor"}
NPM = deploy_files.ROOT / "build" / "npm"
SERVICE_MONITOR_CHECK = """\
import { readFileSync } from "node:fs";
import { ServiceMonitor } from
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
try {
  new ServiceMonitor(JSON.parse(readFileSync(0, "utf8"))).validate();
} catch (error) {
  console.log(error.message);
  process.exit(1);
}
"""


def operator_schema_errors(document: dict) -> str:
    """What prometheus-operator's CRD schema says of a ServiceMonitor ("" when valid)."""
    assert (NPM / "node_modules" / "@kubernetes-models").is_dir(), "run make node-deps"
    script = NPM / "check_service_monitor.mjs"  # beside node_modules: ESM resolves from here
    if not script.exists() or script.read_text() != SERVICE_MONITOR_CHECK:
        script.write_text(SERVICE_MONITOR_CHECK)
    done = subprocess.run(["node", str(script)], input=json.dumps(document), text=True,
                          capture_output=True, timeout=60)
    return "" if done.returncode == 0 else (done.stdout + done.stderr).strip() or "invalid"


@pytest.fixture(scope="module", params=deploy_files.OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(KUBERNETES / "overlays" / request.param)


def test_every_manifest_is_valid_against_the_kubernetes_api_schemas(overlay):
    name, documents = overlay
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy",
            "HorizontalPodAutoscaler", "ServiceMonitor"} <= kinds, name
    for document in documents:
        if document["kind"] in OPERATOR_KINDS:
            assert operator_schema_errors(document) == "", document["kind"]
        else:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_operator_schema_refuses_a_bad_service_monitor():
    monitor = edited([one(render(KUBERNETES / "overlays" / "cpu"), "ServiceMonitor")])[0]
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert "interval" in operator_schema_errors(monitor)
    del monitor["spec"]["selector"]
    assert operator_schema_errors(monitor)


def test_strict_validation_refuses_a_misspelled_field(overlay):
    deployment = edited([one(overlay[1], "Deployment")])[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_manifests_agree_with_mxserve_settings(overlay):
    assert check(overlay[1], adapter_rules()) == []


def _container(documents: list[dict]) -> dict:
    return one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _settings(documents: list[dict]) -> dict:
    return one(documents, "ConfigMap")["data"]


DRIFTS = {
    "mxserve's port is 8090": lambda d: _settings(d).__setitem__("MXSERVE_PORT", "8090"),
    "readinessProbe must GET /readyz": lambda d: _container(d)["readinessProbe"][
        "httpGet"].__setitem__("path", "/ping"),
    "livenessProbe must GET /livez": lambda d: _container(d)["livenessProbe"][
        "httpGet"].__setitem__("port", "management"),
    "terminationGracePeriodSeconds 25": lambda d: one(d, "Deployment")["spec"]["template"][
        "spec"].__setitem__("terminationGracePeriodSeconds", 25),
    "under preStop + drain_timeout_s": lambda d: _settings(d).__setitem__(
        "MXSERVE_DRAIN_TIMEOUT_S", "60"),
    "nvidia.com/gpu limit 2": lambda d: _container(d).setdefault("resources", {}).setdefault(
        "limits", {}).__setitem__("nvidia.com/gpu", 2),
    "must be a read-only volume mount": lambda d: _container(d)["volumeMounts"][0].pop(
        "readOnly"),
    "served by no adapter rule": lambda d: one(d, "HorizontalPodAutoscaler")["spec"][
        "metrics"][0]["pods"]["metric"].__setitem__("name", "mxserve_queue"),
    "would not start": lambda d: _settings(d).__setitem__("MXSERVE_MAX_QUEUE_SIZE", "-1"),
}


@pytest.mark.parametrize("problem", DRIFTS)
def test_a_drift_from_the_settings_is_reported(problem):
    documents = edited(render(KUBERNETES / "overlays" / "cpu"))
    DRIFTS[problem](documents)
    problems = check(documents, adapter_rules())
    assert any(problem in line for line in problems), problems


def test_an_adapter_rule_on_a_metric_mxserve_does_not_export_is_reported():
    rules = adapter_rules()
    rules["rules"][0]["metricsQuery"] += " / sum(mxserve_queue_length{x})"
    problems = check(render(KUBERNETES / "overlays" / "cpu"), rules)
    assert any("mxserve_queue_length" in line for line in problems), problems


def test_the_gpu_overlay_runs_one_worker_per_gpu_on_gpu_nodes():
    container = _container(render(KUBERNETES / "overlays" / "gpu"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "MXSERVE_GPUS", "value": "1"} in container["env"]
    assert container["image"].endswith("-gpu")


def test_the_network_policy_exposes_inference_and_keeps_management_to_prometheus():
    documents = render(KUBERNETES / "overlays" / "cpu")
    ingress = one(documents, "NetworkPolicy")["spec"]["ingress"]
    open_rules = [rule for rule in ingress if "from" not in rule]
    assert [p["port"] for rule in open_rules for p in rule["ports"]] == ["http", "grpc"]
    [restricted] = [rule for rule in ingress if "from" in rule]
    assert [p["port"] for p in restricted["ports"]] == ["management"]
    assert restricted["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]
    container = _container(documents)
    token = {e["name"]: e.get("value") for e in container["env"]}
    assert token["MXSERVE_MANAGEMENT_TOKEN_FILE"].startswith("/var/run/secrets/mxserve/")
    assert load_config({}, env={"MXSERVE_MANAGEMENT_HOST": "0.0.0.0"}).management_auth


def test_the_service_monitor_scrapes_metrics_with_the_token_secret():
    documents = render(KUBERNETES / "overlays" / "cpu")
    monitor = one(documents, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    [endpoint] = monitor["spec"]["endpoints"]
    service_ports = {p["name"] for p in one(documents, "Service")["spec"]["ports"]}
    assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
    secret = one(documents, "Deployment")["spec"]["template"]["spec"]["volumes"][2]["secret"]
    assert endpoint["authorization"]["credentials"]["name"] == secret["secretName"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= one(
        documents, "Service")["spec"]["selector"].items()


# --- KServe -------------------------------------------------------------------------------

def _kserve_validator(kind: str) -> jsonschema.protocols.Validator:
    [vendored] = (KSERVE / "schema").glob("kserve-*.schema.json")
    schema = json.loads(vendored.read_text())
    version = schema["kubernetes_version"]
    definitions = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / (
        f"v{version}-local-strict") / "_definitions.json"
    kubernetes = referencing.Resource.from_contents(json.loads(definitions.read_text()))
    registry = referencing.Registry().with_resources([
        ("https://kubernetes.io/api/_definitions.json", kubernetes)])
    root = {**schema, **schema["kinds"][kind]}
    return jsonschema.Draft202012Validator(root, registry=registry)


def _kserve(name: str) -> dict:
    return yaml.safe_load((KSERVE / name).read_text())


@pytest.mark.parametrize("name, kind", [("cluster-serving-runtime.yaml", "ClusterServingRuntime"),
                                        ("inference-service.yaml", "InferenceService")])
def test_the_kserve_files_are_valid_against_kserves_schema(name, kind):
    document = _kserve(name)
    assert document["kind"] == kind
    errors = list(_kserve_validator(kind).iter_errors(document))
    assert errors == [], [e.message for e in errors]


def test_kserves_schema_refuses_what_kserve_would():
    validator = _kserve_validator("ClusterServingRuntime")
    runtime = _kserve("cluster-serving-runtime.yaml")
    runtime["spec"]["supportedModelFormat"] = runtime["spec"].pop("supportedModelFormats")
    assert not validator.is_valid(runtime)
    runtime = _kserve("cluster-serving-runtime.yaml")
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert not validator.is_valid(runtime)  # Kubernetes' own Container schema applies too
    runtime = _kserve("cluster-serving-runtime.yaml")
    del runtime["spec"]["containers"]
    assert not validator.is_valid(runtime)


def test_the_kserve_runtime_serves_v2_on_the_image_port_with_truthful_probes():
    runtime = _kserve("cluster-serving-runtime.yaml")
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert {"name": "mxnet", "version": "1", "autoSelect": True, "priority": 1} in runtime[
        "spec"]["supportedModelFormats"]
    [container] = runtime["spec"]["containers"]
    environment = {**deploy_files.image_env("Dockerfile"), **{e["name"]: e["value"]
                                                 for e in container["env"]}}
    args = [a.replace("{{.Name}}", "digits") for a in container["args"]]
    assert container["command"] == ["mxserve"] and args[0] == "start"
    flags = vars(build_parser().parse_args(args[1:]))
    config = load_config(flags, env=environment)
    assert config.models == ["digits=/mnt/models"] and config.grpc_port == 0
    assert config.management_host == "127.0.0.1"  # management stays inside the pod
    assert [p["containerPort"] for p in container["ports"]] == [config.port]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": config.port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": config.port}
    # as locked down as the base Deployment's container, with /tmp the one writable place
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["runAsNonRoot"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in runtime["spec"]["volumes"]
    # no scrape annotation pointing at a route that needs a token it cannot send
    assert not any(key.startswith("prometheus") for key in
                   runtime["spec"].get("annotations", {}))
    predictor = _kserve("inference-service.yaml")["spec"]["predictor"]
    assert predictor["automountServiceAccountToken"] is False
    service = predictor["model"]
    assert service["runtime"] == runtime["metadata"]["name"]
    assert service["modelFormat"]["name"] == "mxnet" and service["protocolVersion"] == "v2"


# --- Dockerfiles ----------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", deploy_files.DOCKERFILES)
def test_the_dockerfile_builds_in_stages_and_runs_unprivileged(dockerfile):
    found = stages(dockerfile)
    assert len(found) >= 2, "multi-stage: the build tools stay out of the runtime image"
    runtime = found[-1]
    instructions = [i["instruction"] for i in runtime]
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", (
        "a numeric non-root USER (runAsNonRoot can only verify a number)")
    for stage in found:
        base = stage[0]["value"].split()[0]
        for name, value in deploy_files.build_args(dockerfile).items():
            base = base.replace("${" + name + "}", value)
        image, _, tag = base.rpartition(":")
        assert "@sha256:" in base or (image and tag and tag != "latest"), base
    every = [i for stage in found for i in stage]
    assert not [i for i in every if i["instruction"] == "ADD"], "COPY only: no ADD of URLs"
    assert "STOPSIGNAL" in instructions and "HEALTHCHECK" in instructions
    health = next(i["value"] for i in runtime if i["instruction"] == "HEALTHCHECK")
    assert '"mxserve", "probe", "livez"' in health
    # Installs happen only through the script CI runs on the host.
    runs = [i["value"] for i in every if i["instruction"] == "RUN"]
    assert runs and all("install_image.sh" in run for run in runs), runs
    assert not any(re.search(r"\bpip\b|apt-get", run) for run in runs)


@pytest.mark.parametrize("dockerfile", deploy_files.DOCKERFILES)
def test_the_image_ports_and_settings_are_the_manifests(dockerfile):
    environment = deploy_files.image_env(dockerfile)
    settings = dict(line.split("=", 1) for line in (
        KUBERNETES / "base" / "settings.env").read_text().split())
    for key in ("MXSERVE_HOST", "MXSERVE_PORT", "MXSERVE_GRPC_PORT", "MXSERVE_MANAGEMENT_PORT",
                "MXSERVE_MODEL_STORE"):
        assert environment[key] == settings[key], key
    exposed = next(i["value"] for i in stages(dockerfile)[-1] if i["instruction"] == "EXPOSE")
    assert sorted(exposed.split()) == sorted(settings[key] for key in (
        "MXSERVE_PORT", "MXSERVE_GRPC_PORT", "MXSERVE_MANAGEMENT_PORT"))
    load_config({}, env={k: v for k, v in environment.items() if k != "MXSERVE_MODEL_STORE"
                         and k != "MXSERVE_MODELS"})


def test_the_gpu_image_pairs_the_cuda_wheel_with_its_cuda_base():
    base = deploy_files.build_args("Dockerfile.gpu")["CUDA_IMAGE"]
    wheel = image_env_of_build_stage("Dockerfile.gpu")["MXNET_PACKAGE"]
    cuda = re.search(r"cuda:(\d+)\.(\d+)", base)
    assert cuda and wheel == f"mxnet-cu{cuda[1]}{cuda[2]}==1.9.1"
    assert "mxnet_cu117-1.9.1-py3-none-manylinux2014_x86_64.whl" in (
        deploy_files.ROOT / "Dockerfile.gpu").read_text()


def image_env_of_build_stage(dockerfile: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in stages(dockerfile)[0]:
        if instruction["instruction"] == "ENV":
            for pair in re.findall(r'(\w+)=("[^"]*"|\S+)', instruction["value"]):
                values[pair[0]] = pair[1].strip('"')
    return values


def test_the_adapter_rules_file_is_the_one_the_component_documents():
    text = (KUBERNETES / "components" / "queue-autoscaling" / "kustomization.yaml").read_text()
    assert deploy_files.ADAPTER_RULES.name in text
