"""mxserve's installed version, as `mxserve --version` and the v2 server metadata say it."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed_version() -> str:
    try:
        return version("mxserve")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"
