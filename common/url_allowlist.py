"""Which URLs POST /models may download archives from: `model_url_allowlist`, parsed once.

An entry is `scheme://host[:port]/path/`. A URL is allowed when its scheme, host and port
equal an entry's exactly and its path lies under the entry's path on a segment boundary
(`/models/` allows `/models/x.model`, never `/models-evil/x.model`). URLs with user
information, dot segments (`..`, `%2e%2e`), encoded slashes, backslashes, control
characters or whitespace are refused outright, whatever the list says: they exist to make
one URL look like another. String prefixes are not used anywhere.
"""
from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from mxserve.common.errors import InvalidInput

DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


class AllowedPrefix(NamedTuple):
    scheme: str
    host: str
    port: int
    path: str  # normalised, ending in "/"


class Target(NamedTuple):
    """A URL that passed the checks, in the pieces a download needs."""

    scheme: str
    host: str
    port: int
    path_and_query: str


def parse_url(url: str) -> Target:
    """Split an http(s) URL, refusing every form that could disguise its target."""
    if not isinstance(url, str) or not url or len(url) > 4096 or _UNSAFE.search(url):
        raise InvalidInput("url must be a plain http(s) URL without spaces, control "
                           "characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput("url is not a valid URL") from exc
    if parts.scheme not in DEFAULT_PORTS:
        raise InvalidInput("url must be http(s)")
    if "@" in parts.netloc or parts.username is not None:
        raise InvalidInput("url must not carry user information (user:password@)")
    if not parts.hostname:
        raise InvalidInput("url has no host")
    raw_path = parts.path or "/"
    if "%2f" in raw_path.lower() or "%5c" in raw_path.lower():
        raise InvalidInput("url must not contain encoded slashes")
    segments = unquote(raw_path).split("/")
    if any(segment in (".", "..") for segment in segments):
        raise InvalidInput("url must not contain dot segments (. or ..)")
    query = f"?{parts.query}" if parts.query else ""
    return Target(parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme],
                  raw_path + query)


def parse_allowlist(entries: list[str]) -> tuple[AllowedPrefix, ...]:
    """The allow-list's entries, checked; InvalidInput names a bad one."""
    prefixes = []
    for entry in entries:
        try:
            target = parse_url(entry)
        except InvalidInput as exc:
            raise InvalidInput(f"model_url_allowlist entry {entry!r}: {exc.message}") from exc
        if "?" in target.path_and_query or "#" in entry:
            raise InvalidInput(f"model_url_allowlist entry {entry!r}: no query or fragment")
        path = target.path_and_query
        prefixes.append(AllowedPrefix(target.scheme, target.host, target.port,
                                      path if path.endswith("/") else path + "/"))
    return tuple(prefixes)


def check_url(url: str, allowlist: tuple[AllowedPrefix, ...]) -> Target:
    """The URL's target if an entry allows it; InvalidInput (naming no host) otherwise."""
    target = parse_url(url)
    path = target.path_and_query.partition("?")[0]
    for prefix in allowlist:
        if ((target.scheme, target.host, target.port) == prefix[:3]
                and path.startswith(prefix.path) and len(path) > len(prefix.path)):
            return target
    raise InvalidInput("url is not under an entry of model_url_allowlist")


def without_query(url: str) -> str:
    """A URL fit for a log line: presigned URLs carry their credentials in the query."""
    return url.partition("?")[0].partition("#")[0]
