"""Writes deploy/kserve/schema/kserve-<version>.schema.json: the JSON Schema of KServe's
ClusterServingRuntime and InferenceService, from the API models of KServe's own Python SDK
(PyPI `kserve`, generated from the same OpenAPI types as its CRDs), so CI can validate our
runtime offline. Kubernetes' own types (Container, ObjectMeta, ...) are left as references
into kubernetes-validate's strict schemas of the same definitions.

    python scripts/vendor_kserve_schema.py [--version 0.21.0]

It downloads the wheel (no dependencies) into a temporary folder and never imports the
package itself, whose __init__ starts a model server's worth of imports.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOTS = {"ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
         "InferenceService": "V1beta1InferenceService"}
PRIMITIVES = {"str": {"type": "string"}, "int": {"type": "integer"},
              "bool": {"type": "boolean"}, "float": {"type": "number"},
              "object": {}, "datetime": {"type": "string"}, "date": {"type": "string"}}
# SDK names of Kubernetes types whose definition lives outside core/v1.
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
KUBERNETES_NAMES = {"V1ObjectMeta": META + "ObjectMeta", "V1ListMeta": META + "ListMeta",
                    "V1Condition": META + "Condition", "V1LabelSelector": META + "LabelSelector",
                    "V1Time": META + "Time",
                    "ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
                    "K8sIoApiAppsV1DeploymentStrategy": "io.k8s.api.apps.v1.DeploymentStrategy",
                    "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior":
                        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior"}
# kubernetes-validate's definitions file, as its own $id names it, of the Kubernetes release
# the manifests are validated against (tests/unit/test_deploy_manifests.py).
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
K8S_VERSION = "1.32.0"


def kubernetes_definitions() -> dict:
    import kubernetes_validate

    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    path = folder / f"v{K8S_VERSION}-local-strict" / "_definitions.json"
    return json.loads(path.read_text())["$defs"]


KNOWN_KUBERNETES = kubernetes_definitions()


def load_models(wheel: Path, into: Path) -> types.ModuleType:
    """kserve.models, without running kserve/__init__.py."""
    zipfile.ZipFile(wheel).extractall(into)
    package = types.ModuleType("kserve")
    package.__path__ = [str(into / "kserve")]
    sys.modules["kserve"] = package
    spec = importlib.util.spec_from_file_location(
        "kserve.models", into / "kserve" / "models" / "__init__.py",
        submodule_search_locations=[str(into / "kserve" / "models")])
    assert spec is not None and spec.loader is not None
    models = importlib.util.module_from_spec(spec)
    sys.modules["kserve.models"] = models
    spec.loader.exec_module(models)
    return models


def required_fields(model: type) -> list[str]:
    """Fields whose setter refuses None: the generator writes that check for required ones."""
    from kserve.configuration import Configuration  # type: ignore[import-not-found]

    instance = model.__new__(model)
    instance.local_vars_configuration = Configuration()
    required = []
    for attribute, key in model.attribute_map.items():
        try:
            setattr(instance, attribute, None)
        except ValueError:
            required.append(key)
    return sorted(required)


def schema_of(type_name: str, models: types.ModuleType, definitions: dict) -> dict:
    if type_name in PRIMITIVES:
        return dict(PRIMITIVES[type_name])
    if match := re.fullmatch(r"list\[(.+)\]", type_name):
        return {"type": "array", "items": schema_of(match[1], models, definitions)}
    if match := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        return {"type": "object",
                "additionalProperties": schema_of(match[1], models, definitions)}
    model = getattr(models, type_name, None)
    if model is None:
        if type_name in KUBERNETES_NAMES or re.fullmatch(r"V1[A-Z]\w+", type_name):
            name = KUBERNETES_NAMES.get(type_name, "io.k8s.api.core.v1." + type_name[2:])
            if name in KNOWN_KUBERNETES:
                return {"$ref": f"{K8S_DEFINITIONS}#/$defs/{name}"}
        # Knative's status types, types the SDK names but does not ship, and Kubernetes types
        # newer than K8S_VERSION: none is a field our runtime or InferenceService sets.
        return {"type": "object", "description": f"{type_name}: not in the SDK, unchecked"}
    if type_name not in definitions:
        definitions[type_name] = {}  # a placeholder first: the types are recursive
        definitions[type_name] = {
            "type": "object",
            "additionalProperties": False,
            "required": required_fields(model),
            "properties": {model.attribute_map[attribute]: schema_of(kind, models, definitions)
                           for attribute, kind in sorted(model.openapi_types.items())},
        }
    return {"$ref": "#/$defs/" + type_name}


def build(version: str) -> dict:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        f"kserve=={version}", "-d", str(folder)], check=True)
        [wheel] = folder.glob("kserve-*.whl")
        models = load_models(wheel, folder / "site")
        definitions: dict = {}
        kinds = {kind: schema_of(root, models, definitions) for kind, root in ROOTS.items()}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": f"KServe {version} API types, generated by "
                           "scripts/vendor_kserve_schema.py from the kserve SDK's models",
            "kserve_version": version, "kubernetes_version": K8S_VERSION, "kinds": kinds,
            "$defs": definitions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="0.21.0", help="the kserve release")
    args = parser.parse_args()
    out = ROOT / "deploy" / "kserve" / "schema" / f"kserve-{args.version}.schema.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(build(args.version), indent=1, sort_keys=True) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
