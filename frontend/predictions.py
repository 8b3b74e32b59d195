"""POST /predictions/<model>[/<version>]: MMS 1.x's (and TorchServe's) inference route, a
direct route of the request path, for every model on the server.

An MMS 1.x model (a `.mar` handler) gets the request as MMS 1.1 hands it over: a form's
fields by their names, any other body whole as "body" with its media type (a GET: an empty
body), and the request's headers, but not the query string, which MMS 1.1 passes to no
handler; its answer goes back with the media type, status and headers it set. An MMS 0.4
model gets a form as /<model>/predict does, or a raw body as its one
input (a JPEG or PNG for an image model, JSON for a tensor model), and answers as there.
"""
from __future__ import annotations

from typing import Any

from mxserve.common.config import Config
from mxserve.common.errors import InvalidInput, MethodNotAllowed, UnsupportedMediaType
from mxserve.frontend.catalog import Catalog
from mxserve.frontend.decode import Field
from mxserve.frontend.exchange import Exchange
from mxserve.frontend.form import FORM_TYPES, FormLimits, media_type, read_body, read_parts
from mxserve.frontend.handler_request import HandlerPredictor
from mxserve.frontend.predict import TensorPredictor
from mxserve.frontend.request_path import DirectRoute, Headers


def predictions_routes(config: Config, catalog: Catalog, tensors: TensorPredictor,
                       handlers: HandlerPredictor) -> list[DirectRoute]:
    """/predictions/<model> (its default version) and /predictions/<model>/<version>."""
    form_limits = FormLimits.of(config)

    def predictions(environ: dict[str, Any], exchange: Exchange, headers: Headers,
                    model: str, version: str | None = None) -> bytes:
        snapshot, key = catalog.served(model, version)
        exchange.model = key
        if key in snapshot.handlers:
            return handlers(environ, exchange, headers, key, read_parts(environ, form_limits))
        if exchange.method == "GET":
            raise MethodNotAllowed(f"model {model!r} takes its input in a POST")
        signature = snapshot.signatures[key]
        model = key
        mimetype, _ = media_type(environ)
        if mimetype in FORM_TYPES:
            return tensors(environ, exchange, headers, model, signature, None)
        if len(signature.inputs) != 1:
            raise UnsupportedMediaType(
                f"model {model!r} takes {len(signature.inputs)} inputs: send them as a "
                f"multipart/form-data form with fields {[s.name for s in signature.inputs]}")
        body = read_body(environ, config.max_body_bytes)
        name = signature.inputs[0].name
        if signature.is_image:
            field = Field(name, body, True)
        else:
            try:
                field = Field(name, body.decode("utf-8"), False)
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"the body of a request to {model!r} must be JSON (UTF-8) "
                                   "or a form") from exc
        return tensors(environ, exchange, headers, model, signature, [field])

    return [DirectRoute("predictions", "/predictions/<model>", ("GET", "POST"), predictions,
                        protocol="predictions"),
            DirectRoute("predictions_version", "/predictions/<model>/<version>",
                        ("GET", "POST"), predictions, protocol="predictions")]

