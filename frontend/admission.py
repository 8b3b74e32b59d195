"""Whether the request this thread is handling was admitted or must be shed (503).

The gunicorn worker (frontend/gunicorn_worker.py) decides when it queues a request for a
thread, which is the only moment the size of its backlog is known; the Flask app, later
on that thread, answers a shed request 503 + Retry-After before doing any work for it.
Outside gunicorn (the Flask test client, other WSGI servers) nothing is ever shed.
"""
from __future__ import annotations

import threading

_current = threading.local()


def set_shed(shed: bool) -> None:
    _current.shed = shed


def is_shed() -> bool:
    return getattr(_current, "shed", False)
