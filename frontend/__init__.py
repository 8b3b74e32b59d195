"""The HTTP side of mxserve (gunicorn + Flask); `ServingFrontend` is the embedding API.

`ServingFrontend` is imported on first use (PEP 562), so gunicorn workers importing
`frontend.app` do not load the embedding machinery.
"""
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "ServingFrontend":
        from frontend.serving_frontend import ServingFrontend

        return ServingFrontend
    raise AttributeError(f"module 'frontend' has no attribute {name!r}")
