"""The instance layer: what starts and wires a whole mxserve (CLI, launcher, gunicorn,
embedding, export, nginx). It imports frontend, worker and common; nothing imports it.

`ServingFrontend` is imported on first use (PEP 562), so `mxserve --version` and the CLI's
other light commands do not load the embedding machinery.
"""
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "ServingFrontend":
        from mxserve.instance.serving_frontend import ServingFrontend

        return ServingFrontend
    raise AttributeError(f"module 'mxserve.instance' has no attribute {name!r}")
