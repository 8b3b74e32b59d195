"""What the gunicorn worker knows about the request this thread is handling: how long it
waited for the thread, and which listener it arrived on.

The gunicorn worker (frontend/gunicorn_worker.py) times each request from the moment it
queues it for a thread and knows the listening socket of each connection; the Flask app,
later on that thread, reads both: a prediction that waited too long is shed (503,
frontend/request_path.py), and the wait is taken off its deadline. The listener
decides whether management routes exist for a request (a Host header could be forged, the
accepting socket cannot). Outside gunicorn (the Flask test client, other WSGI servers)
no wait and no listener are known.
"""
from __future__ import annotations

import threading
from typing import Any, NamedTuple

# The Flask app's config key through which the gunicorn worker learns how long and how
# many client connections may take.
CLIENT_LIMITS_KEY = "MXSERVE_CLIENT_LIMITS"


class ClientLimits(NamedTuple):
    """What the gunicorn worker allows a client connection (settings of the same names);
    the defaults are the settings' defaults."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    min_body_rate: int = 65536
    max_connections: int = 1000
    max_body_bytes: int = 6553600

_current = threading.local()


def set_context(waited_s: float, listener: Any) -> None:
    _current.waited_s = waited_s
    _current.listener = listener


def waited_s() -> float:
    """Seconds the request waited for a frontend thread."""
    return getattr(_current, "waited_s", 0.0)


def listener() -> Any:
    """The accepting socket's address: (host, port) for TCP, a path for unix sockets."""
    return getattr(_current, "listener", None)
