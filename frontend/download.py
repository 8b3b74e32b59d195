"""Archive downloads for POST /models: allow-listed URLs only, every hop re-checked, one
deadline for the whole download and a size cap.

Redirects are followed (up to MAX_REDIRECTS) only to URLs the allow-list also allows. Each
socket read waits at most the time left, so a server that trickles bytes cannot hold the
request past `model_download_timeout_s`. Errors say what went wrong without naming hosts,
addresses or files, so a download cannot be used to map the server's network.
"""
from __future__ import annotations

import http.client
import logging
import os
import socket
import tempfile
import time
from urllib.parse import urljoin

from mxserve.common.errors import InvalidInput, PayloadTooLarge
from mxserve.common.url_allowlist import AllowedPrefix, Target, check_url, without_query

log = logging.getLogger("frontend")

MAX_REDIRECTS = 3
CHUNK = 1 << 20
REDIRECTS = (301, 302, 303, 307, 308)


def download(url: str, allowlist: tuple[AllowedPrefix, ...], cap: int,
             timeout_s: float) -> str:
    """Download `url` into a temporary file and return its path (the caller removes it)."""
    deadline = time.monotonic() + timeout_s
    target = check_url(url, allowlist)
    for _ in range(MAX_REDIRECTS + 1):
        connection = _connect(target, deadline)
        sock = connection.sock  # kept: getresponse() drops it from a closing connection
        try:
            response = _get(connection, sock, target, deadline)
            if response.status in REDIRECTS:
                location = response.getheader("Location") or ""
                response.close()
                url = urljoin(url, location)
                try:
                    target = check_url(url, allowlist)
                except InvalidInput as exc:
                    raise InvalidInput("the archive URL redirects outside "
                                       "model_url_allowlist") from exc
                continue
            if response.status != 200:
                raise InvalidInput(f"the archive could not be downloaded (HTTP "
                                   f"{response.status})")
            return _save(response, sock, cap, deadline, url)
        finally:
            connection.close()
    raise InvalidInput(f"the archive URL redirects more than {MAX_REDIRECTS} times")


def _connect(target: Target, deadline: float) -> http.client.HTTPConnection:
    cls = (http.client.HTTPSConnection if target.scheme == "https"
           else http.client.HTTPConnection)
    connection = cls(target.host, target.port)
    try:
        connection.timeout = _left(deadline)
        connection.connect()
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise InvalidInput("the archive server could not be reached") from exc
    return connection


def _get(connection: http.client.HTTPConnection, sock: socket.socket, target: Target,
         deadline: float) -> http.client.HTTPResponse:
    try:
        connection.request("GET", target.path_and_query,
                           headers={"User-Agent": "mxserve", "Accept-Encoding": "identity"})
        sock.settimeout(_left(deadline))
        return connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        raise InvalidInput("the archive server did not answer in time or properly") from exc


def _save(response: http.client.HTTPResponse, sock: socket.socket, cap: int,
          deadline: float, url: str) -> str:
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"the archive is {declared} bytes; the limit is {cap}")
    handle, path = tempfile.mkstemp(suffix=".model")
    try:
        with os.fdopen(handle, "wb") as out:
            total = 0
            while True:
                sock.settimeout(_left(deadline))
                chunk = response.read1(CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    raise PayloadTooLarge(f"the archive is over {cap} bytes")
                out.write(chunk)
    except (OSError, http.client.HTTPException) as exc:
        os.unlink(path)
        log.info("download of %s failed: %s", without_query(url), exc)
        raise InvalidInput("the archive download did not finish in time or was cut "
                           "short") from exc
    except BaseException:
        os.unlink(path)
        raise
    return path


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the download's deadline passed")
    return left

