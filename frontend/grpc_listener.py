"""The KServe v2 gRPC listener: `inference.GRPCInferenceService` as a process of its own
beside the gunicorn frontends (`python -m mxserve.frontend.grpc_listener`, started by
`mxserve start` when grpc_port is set, or by supervisord).

It shares the frontends' whole inference path: the same broker client, catalog and
frontend/v2_inference.py, so a gRPC request is checked, limited, batched and answered as
a REST one is, and counted and logged with protocol "v2-grpc". Errors map to gRPC status
codes (INVALID_ARGUMENT for the client's mistakes, NOT_FOUND, UNAVAILABLE, ...) with our
message as the details.
"""
from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable

import grpc

from mxserve.common.config import Config, broker_endpoints, load_config, max_reply_frame_bytes
from mxserve.common.errors import EXIT_BAD_CONFIG, EXIT_OK, InvalidInput, MXServeError
from mxserve.common.images import warm_up
from mxserve.common.logs import setup_logging
from mxserve.common.version import installed_version
from mxserve.frontend.broker_client import BrokerClient
from mxserve.frontend.catalog import Catalog
from mxserve.frontend.decode import Limits
from mxserve.frontend.exchange import (
    Exchange,
    error_answer,
    log_access,
    next_wire_id,
    record_prediction,
    request_id_for,
    server_timing,
)
from mxserve.frontend.grpc_service import inference_pb2 as pb
from mxserve.frontend.grpc_service import inference_pb2_grpc as pb_grpc
from mxserve.frontend.protocol_errors import grpc_code_name
from mxserve.frontend.v2_inference import (
    InferenceRequest,
    RequestedOutput,
    V2Inference,
    server_metadata,
)
from mxserve.frontend.v2_tensors import (
    BYTES,
    DATATYPES,
    Tensor,
    checked_shape,
    from_json,
    from_raw,
    raw_of,
)

log = logging.getLogger("grpc")

# Typed contents fields by datatype, for inputs sent without raw_input_contents.
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
            BYTES: "bytes_contents"}
METHOD = "/inference.GRPCInferenceService/"


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, config: Config, inference: V2Inference, catalog: Catalog) -> None:
        self.config = config
        self.inference = inference
        self.catalog = catalog
        self.version = installed_version()

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._answer(
            context, "ServerReady", lambda: self.catalog.fetch().serving))

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=self._answer(
            context, "ModelReady",
            lambda: self.inference.model_ready(request.name, request.version or None)))

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**server_metadata(self.version))

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def metadata() -> Any:
            answer = self.inference.metadata(request.name, request.version or None)
            return pb.ModelMetadataResponse(
                name=answer["name"], versions=answer["versions"], platform=answer["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in answer["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t)
                         for t in answer["outputs"]])
        return self._answer(context, "ModelMetadata", metadata)

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        wire_id = next_wire_id()
        exchange = Exchange(request_id_for(request.id, wire_id), wire_id, "gRPC",
                            METHOD + "ModelInfer", protocol="v2-grpc")
        status = 200
        try:
            inference_request = self._request(request)
            parsed = time.monotonic()
            answer = self.inference.infer(inference_request, exchange)
            # Where the time went, as REST's Server-Timing header says it, in the trailers.
            context.set_trailing_metadata((("server-timing", server_timing(
                exchange, parsed, answer.decoded, answer.timing)),))
            response = pb.ModelInferResponse(model_name=request.model_name,
                                             model_version=answer.model_version or "1",
                                             id=request.id)
            for tensor in answer.outputs:
                response.outputs.add(name=tensor.name, datatype=tensor.datatype,
                                     shape=list(tensor.shape))
                response.raw_output_contents.append(raw_of(tensor))
            return response
        except Exception as error:  # every failure answered alike, as the REST path does
            status = self._abort(context, error, exchange)
        finally:
            record_prediction(exchange, status)
            log_access(exchange, status, 0, self.config.access_log)

    def _request(self, request: Any) -> InferenceRequest:
        max_elements = self.config.max_json_elements
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} "
                               "inputs")
        inputs = []
        for index, tensor in enumerate(request.inputs):
            if tensor.datatype not in DATATYPES:
                raise InvalidInput(f"input {tensor.name!r}: datatype must be one of "
                                   f"{list(DATATYPES)}, got {tensor.datatype!r}")
            shape = checked_shape(tensor.name, list(tensor.shape), max_elements)
            if raw:
                inputs.append(from_raw(tensor.name, tensor.datatype, shape, raw[index]))
            else:
                inputs.append(_from_contents(tensor, shape))
        outputs = []
        for output in request.outputs:
            count = output.parameters["classification"].int64_param if (
                "classification" in output.parameters) else 0
            if count < 0:
                raise InvalidInput(f"output {output.name!r}: classification must be a "
                                   "non-negative integer")
            outputs.append(RequestedOutput(output.name, True, count))
        if not inputs:
            raise InvalidInput("the request has no inputs")
        return InferenceRequest(request.model_name, tuple(inputs), tuple(outputs),
                                request.id or None, version=request.model_version or None)

    def _answer(self, context: grpc.ServicerContext, what: str, call: Callable[[], Any]
                ) -> Any:
        try:
            return call()
        except Exception as error:
            exchange = Exchange("-", next_wire_id(), "gRPC", METHOD + what)
            self._abort(context, error, exchange)

    def _abort(self, context: grpc.ServicerContext, error: Exception,
               exchange: Exchange) -> int:
        if not isinstance(error, MXServeError):
            log.exception("gRPC call %s failed", exchange.wire_id)
            error = MXServeError(f"internal error; see the server log for request "
                                 f"{exchange.wire_id}")
        status, _, _ = error_answer(error, exchange.request_id)
        context.abort(getattr(grpc.StatusCode, grpc_code_name(status)), error.message)
        return status  # not reached: abort raises


def _from_contents(tensor: Any, shape: tuple[int, ...]) -> Tensor:
    """An input sent as typed contents: numbers through the JSON path's element checks."""
    values = list(getattr(tensor.contents, CONTENTS[tensor.datatype]))
    if tensor.datatype != BYTES:
        return from_json(tensor.name, tensor.datatype, shape, values)
    if len(values) != math.prod(shape):
        raise InvalidInput(f"input {tensor.name!r}: {len(values)} BYTES elements for shape "
                           f"{list(shape)}")
    return Tensor(tensor.name, BYTES, shape, elements=tuple(values))


def serve(config: Config) -> grpc.Server:
    """The started server (its threads serve until `stop`)."""
    client = BrokerClient(config.broker_frontend, max_reply_frame_bytes(config))
    catalog = Catalog(client)
    limits = Limits.of(config)
    warm_up()
    server = grpc.server(
        futures.ThreadPoolExecutor(config.frontend_threads, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", config.max_body_bytes),
                 ("grpc.max_send_message_length", max_reply_frame_bytes(config) or -1),
                 ("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceService(config, V2Inference(config, client, catalog, limits), catalog), server)
    address = f"[{config.host}]:{config.grpc_port}" if ":" in config.host else (
        f"{config.host}:{config.grpc_port}")
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    log.info("KServe v2 gRPC on %s", address)
    return server


def main() -> int:
    try:
        config = load_config()
    except MXServeError as exc:
        print(f"grpc: bad configuration: {exc.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    setup_logging(config.log_level, config.log_file, "grpc")
    if not config.grpc_port:
        log.error("grpc_port is 0: no gRPC listener is configured")
        return EXIT_BAD_CONFIG
    if not config.broker_frontend:  # under supervisord: the broker's socket in the run dir
        if not config.run_dir:
            log.error("MXSERVE_RUN_DIR or MXSERVE_BROKER_FRONTEND must be set")
            return EXIT_BAD_CONFIG
        config = config.replace(broker_frontend=broker_endpoints(config,
                                                                 Path(config.run_dir))[0])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server = serve(config)
    except (OSError, RuntimeError) as exc:
        log.error("grpc_port: %s", exc)
        return EXIT_BAD_CONFIG
    stop.wait()
    # In-flight calls finish (up to the drain timeout); new ones are refused meanwhile.
    server.stop(config.drain_timeout_s).wait()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
