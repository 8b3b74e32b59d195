"""gunicorn server hooks for the frontends (`--config python:mxserve.frontend.gunicorn_hooks`,
or set one by one for an embedded arbiter)."""
from __future__ import annotations

from typing import Any

from mxserve.common.import_pages import settle_before_forking


def when_ready(server: Any) -> None:
    """The app is built in the arbiter (--preload) and no frontend is forked yet: settle its
    memory now, so every frontend shares it; tests and embedding programs that only build
    the app do not pay for it."""
    settle_before_forking()
