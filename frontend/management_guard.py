"""Who may use the management listener: the checks every management route runs first.

1. The listener: management routes exist only on connections gunicorn accepted on the
   management socket (a header can be forged, the accepting socket cannot); elsewhere 404.
2. Host and Origin: a browser page can reach a loopback port by DNS rebinding (its own
   name resolving to 127.0.0.1) and send requests with its name in Host. Host must be a
   loopback address, `localhost`, the configured management_host or one of
   management_allowed_hosts; an Origin, when sent, must be the same origin. Else 403.
3. The bearer token (`Authorization: Bearer <token>`, scheme case-insensitive, compared in
   constant time, never logged); else 401 with WWW-Authenticate.
"""
from __future__ import annotations

import hmac
import ipaddress
from typing import Any, Iterable
from urllib.parse import urlsplit

from mxserve.common.errors import Forbidden, Unauthorized

WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def allowed_host_names(management_host: str, extra: Iterable[str]) -> frozenset[str]:
    """The Host names (besides loopback addresses) the management listener answers."""
    names = {"localhost", *(name.lower().rstrip(".") for name in extra)}
    if management_host not in WILDCARD_HOSTS:
        names.add(management_host.lower())
    return frozenset(names)


def host_name(value: str) -> str:
    """The name in a Host header value: no port, no brackets, no trailing dot, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _is_allowed(name: str, allowed: frozenset[str]) -> bool:
    if name in allowed:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_host_and_origin(environ: dict[str, Any], allowed: frozenset[str]) -> None:
    host = environ.get("HTTP_HOST")
    if host is not None and not _is_allowed(host_name(host), allowed):
        raise Forbidden("the management API does not answer this Host name (add it to "
                        "management_allowed_hosts)")
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None:
        parts = urlsplit(origin.strip().lower())
        if (parts.scheme not in ("http", "https") or host is None
                or parts.netloc != host.strip().lower()):
            raise Forbidden("cross-origin requests to the management API are refused")


def bearer_token(header: str) -> str:
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def check_token(authorization: str, token: str) -> None:
    given = bearer_token(authorization)
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("the management API needs its token: Authorization: Bearer "
                           "<token> (the server logs the path of its token file)")
