"""POST /<model>/predict: MMS 0.4's prediction route, a direct route of the request path.

The form's fields are read and checked against the model's signature, decoded into arrays
(or, where workers decode images, checked and passed on encoded), sent to the broker with
the request's remaining deadline, and the worker's JSON answer is wrapped without being
parsed again. An MMS 1.x model (a `.mar` handler) on this route gets the form's fields as
/predictions/<model> gives them.
"""
from __future__ import annotations

import time
from typing import Any

from mxserve.common.config import FRONTEND_WAIT_MARGIN_S, Config
from mxserve.common.signature import Signature
from mxserve.frontend.broker_client import BrokerClient
from mxserve.frontend.catalog import Catalog
from mxserve.frontend.decode import Field, Limits, decode_inputs
from mxserve.frontend.exchange import Exchange, server_timing
from mxserve.frontend.form import FormLimits, read_fields, read_parts
from mxserve.frontend.handler_request import HandlerPredictor
from mxserve.frontend.request_path import DirectRoute, Headers


class TensorPredictor:
    """One request to an MMS 0.4 model: its fields checked and decoded, its JSON answer."""

    def __init__(self, config: Config, client: BrokerClient, limits: Limits) -> None:
        self.config = config
        self.client = client
        self.limits = limits
        self.form_limits = FormLimits.of(config)
        # Where CPU workers decode images, they get them checked but encoded (setting
        # image_decode), and decode them within their own limits.
        self.workers_decode_images = config.images_decoded_by_workers

    def __call__(self, environ: dict[str, Any], exchange: Exchange, headers: Headers,
                 model: str, signature: Signature, fields: list[Field] | None) -> bytes:
        """`fields`: the request's, already read; None to read its form."""
        if fields is None:
            fields = read_fields(environ, self.form_limits, [s.name for s in signature.inputs])
        parsed = time.monotonic()
        encoded = signature.is_image and self.workers_decode_images
        arrays = decode_inputs(signature, fields, self.limits, decode_images=not encoded)
        decoded = time.monotonic()
        # The deadline started when the request was queued for a thread, not now.
        budget_s = max(0.001, self.config.request_timeout_s - exchange.waited_s)
        answer, timing = self.client.predict(model, exchange.wire_id, arrays, budget_s,
                                             budget_s + FRONTEND_WAIT_MARGIN_S, encoded)
        exchange.timing = timing
        headers.append(("Server-Timing", server_timing(exchange, parsed, decoded, timing)))
        return b'{"prediction":' + answer + b"}\n"  # json_bytes' shape, answer not re-encoded


def predict_route(config: Config, catalog: Catalog, tensors: TensorPredictor,
                  handlers: HandlerPredictor) -> DirectRoute:
    form_limits = FormLimits.of(config)

    def predict(environ: dict[str, Any], exchange: Exchange, headers: Headers,
                model: str) -> bytes:
        snapshot, key = catalog.served(model)  # its default version
        exchange.model = key
        signature = snapshot.signatures.get(key)
        if signature is not None:
            return tensors(environ, exchange, headers, key, signature, None)
        return handlers(environ, exchange, headers, key, read_parts(environ, form_limits))

    return DirectRoute("predict", "/<model>/predict", ("POST",), predict)
