"""The one path every HTTP request takes through a frontend process.

Installed as the Flask app's `wsgi_app` (Flask's documented middleware hook), it gives each
request its Exchange (ids, timing, access-log line, metrics) and its one error answer, the
JSON body {"code", "type", "message", "request_id"}, whatever raised it: a direct route,
a Flask view, werkzeug's routing or our own fault (logged with the request id, never sent).

Routing is Flask's URL map, one table for every route. Rules registered as direct routes
are answered here, as plain WSGI, without Flask's request context and Response objects,
which cost more CPU than the rest of a prediction's frontend work; every other rule goes
through Flask, which raises its errors back out to this path instead of answering them.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable, Iterable, Mapping

from flask import Flask
from werkzeug.exceptions import HTTPException

from mxserve.common.errors import (
    InternalServerError,
    InvalidInput,
    MethodNotAllowed,
    MXServeError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from mxserve.frontend.exchange import (
    Exchange,
    error_answer,
    log_access,
    next_wire_id,
    record_prediction,
    request_id_for,
)
from mxserve.frontend.request_context import waited_s

log = logging.getLogger("frontend")

JSON = ("Content-Type", "application/json")
MATCHES_CACHED = 4096  # (path, method) pairs: every model's routes, and room for strays

# werkzeug's own HTTP errors, expressed in our error table.
HTTP_ERRORS: dict[int, type[MXServeError]] = {
    400: InvalidInput, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
    415: UnsupportedMediaType}

Headers = list[tuple[str, str]]
# An error's (status, body, extra headers), given the request id.
ErrorAnswer = Callable[[MXServeError, "str | None"], tuple[int, bytes, Headers]]
# A direct route's handler: (environ, exchange, response headers to add to, URL values)
# -> the response body; it raises MXServeError for anything but success.
Handler = Callable[..., bytes]


@dataclass(frozen=True)
class DirectRoute:
    """A route answered without Flask: its rule in Flask's URL map, and its handler."""

    endpoint: str
    rule: str  # werkzeug rule syntax, e.g. /<model>/predict
    methods: tuple[str, ...]
    handler: Handler
    is_prediction: bool = True  # counted in the prediction metrics; shed when late
    protocol: str = "predict"  # its label in those metrics and the access log


class RequestPath:
    """WSGI: Exchange in, answer out; direct routes here, the rest through Flask."""

    def __init__(self, app: Flask, routes: Iterable[DirectRoute], queue_timeout_s: float,
                 access_log: bool, error_answers: Mapping[str, ErrorAnswer] | None = None
                 ) -> None:
        """`error_answers`: a protocol's own error body for every path under a prefix
        (e.g. "/v2/"); the rest get ours."""
        self.flask_wsgi = app.wsgi_app
        self.routes = {route.endpoint: route for route in routes}
        for route in self.routes.values():
            app.add_url_rule(route.rule, route.endpoint, methods=list(route.methods))
        # Flask raises every error out to this path rather than answering it itself.
        app.config["PROPAGATE_EXCEPTIONS"] = True
        app.config["TRAP_HTTP_EXCEPTIONS"] = True
        self.url_map = app.url_map.bind("localhost")  # matches paths only: no host rules
        # werkzeug's matcher costs a sixth of a small model's frontend CPU; the rules are
        # fixed once the app is built, and handlers never change the values they get.
        self._match = functools.lru_cache(maxsize=MATCHES_CACHED)(self._match_uncached)
        self.queue_timeout_s = queue_timeout_s
        self.access_log = access_log
        self.error_answers = tuple((error_answers or {}).items())

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        wire_id = next_wire_id()
        exchange = Exchange(request_id_for(environ.get("HTTP_X_REQUEST_ID", ""), wire_id),
                            wire_id, environ.get("REQUEST_METHOD", ""),
                            _wsgi_text(environ.get("PATH_INFO", "")), waited_s=waited_s())
        headers: Headers = [("X-Request-Id", exchange.request_id)]
        route = None
        try:
            route, values = self._direct_route(exchange)
            if route is None:
                return self._through_flask(environ, start_response, exchange, headers)
            if route.is_prediction:
                exchange.protocol = route.protocol
            if route.is_prediction and exchange.waited_s > self.queue_timeout_s:
                raise ServiceUnavailable(
                    f"the server is overloaded (this request waited {exchange.waited_s:.1f}s "
                    "for a frontend thread); retry", retry_after_s=1)
            body = route.handler(environ, exchange, headers, **values)
            status = exchange.status
            if not any(name == "Content-Type" for name, _ in headers):
                headers.append(JSON)
        except Exception as error:  # every failure, ours or the client's, answered alike
            redirect = _redirect(error)
            if redirect is not None:
                return redirect(environ, start_response)
            del headers[1:]  # an error answer keeps only X-Request-Id of what was set
            status, body = self._error_answer(error, exchange, headers)
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {_phrase(status)}", headers)
        if route is not None and route.is_prediction:
            record_prediction(exchange, status)
        log_access(exchange, status, len(body), self.access_log)
        return [body]

    def _direct_route(self, exchange: Exchange) -> tuple[DirectRoute | None, dict[str, Any]]:
        return self._match(exchange.path, exchange.method)

    def _match_uncached(self, path: str, method: str
                        ) -> tuple[DirectRoute | None, dict[str, Any]]:
        try:
            endpoint, values = self.url_map.match(path, method)
        except HTTPException:  # Flask raises it again, to the same answer
            return None, {}
        route = self.routes.get(endpoint)
        if route is None or method not in route.methods:  # OPTIONS is Flask's
            return None, {}
        return route, values

    def _through_flask(self, environ: dict[str, Any], start_response: Callable[..., Any],
                       exchange: Exchange, headers: Headers) -> Iterable[bytes]:
        answered: dict[str, Any] = {}

        def tagged_start_response(status: str, flask_headers: Headers, *exc_info: Any) -> Any:
            answered["status"] = int(status.split(" ", 1)[0])
            answered["bytes"] = next((int(value) for name, value in flask_headers
                                      if name.lower() == "content-length"), 0)
            return start_response(status, flask_headers + headers, *exc_info)

        body = self.flask_wsgi(environ, tagged_start_response)
        log_access(exchange, answered.get("status", 0), answered.get("bytes", 0),
                   self.access_log)
        return body

    def _error_answer(self, error: Exception, exchange: Exchange, headers: Headers
                      ) -> tuple[int, bytes]:
        if isinstance(error, HTTPException):
            error = HTTP_ERRORS.get(error.code or 500, InternalServerError)(
                error.description or error.name)
        elif not isinstance(error, MXServeError):
            log.exception("request %s failed", exchange.request_id)
            error = InternalServerError("internal error; see the server log for request "
                                        f"{exchange.request_id}")
        answer = next((render for prefix, render in self.error_answers
                       if exchange.path.startswith(prefix) or exchange.path == prefix.rstrip("/")),
                      error_answer)
        status, body, extra = answer(error, exchange.request_id)
        headers += extra
        headers.append(JSON)
        return status, body


def _redirect(error: Exception) -> Any:
    """werkzeug's redirect to a rule's canonical URL (a missing trailing slash) as a response."""
    if isinstance(error, HTTPException) and error.code is not None and error.code < 400:
        return error.get_response()
    return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status a handler set that has no registered name
        return "Unknown"


def _wsgi_text(path: str) -> str:
    """PATH_INFO is the path's bytes as latin-1 (PEP 3333); names are UTF-8."""
    try:
        return path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return path
