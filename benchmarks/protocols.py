"""The same model answered through each protocol, on one server, taking turns: MMS 0.4's
/predict (a multipart form, under wrk), MMS 1.x's /predictions (the JPEG as the raw body,
under wrk), the same weights in a `.mar` whose handler is shaped as MMS 1.x's
model_service_template's vision service (tests/data/mms_template) on /predictions with the
same batch size (and the same handler through /<model>/predict's form, so the route alone is
compared too), KServe v2 REST with the binary tensor data
extension (the JPEG as a BYTES tensor, under wrk) and KServe v2 gRPC (the same tensor as
raw_input_contents, from a grpc.aio client keeping the same number of calls in flight).
Ratios are each protocol / predict per round, and their median; each round starts with the
next protocol in turn, so none always runs first.

    python benchmarks/protocols.py [--rounds 3] [--duration 10] [--connections 32]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import mms11_cases  # noqa: E402
from served import LUA, ROOT, Stack, free_port, run_wrk  # noqa: E402

from mxserve.common.proctree import cpu_seconds  # noqa: E402

V2_LUA = ROOT / "benchmarks" / "v2_binary.lua"
MAX_BATCH_SIZE = 8  # the template .mar's batch: the default one of the 0.4 archive beside it
RAW_LUA = ROOT / "benchmarks" / "raw_body.lua"


def v2_body(image: bytes, folder: Path) -> tuple[Path, int]:
    """A v2 request for one encoded image, as tritonclient sends it: (file, JSON length)."""
    tensor = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(tensor)}}],
                         "outputs": [{"name": "softmax",
                                      "parameters": {"binary_data": True}}]}).encode()
    path = folder / "v2_request.bin"
    path.write_bytes(header + tensor)
    return path, len(header)


def grpc_request(image: bytes) -> bytes:
    """A serialized ModelInferRequest for one encoded image, as tritonclient builds it."""
    from mxserve.frontend.grpc_service import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name="resnet18")
    request.inputs.add(name="data", datatype="BYTES", shape=[1])
    request.outputs.add(name="softmax")
    request.raw_input_contents.append(struct.pack("<I", len(image)) + image)
    return request.SerializeToString()


def run_grpc(stack: Stack, address: str, body: bytes, connections: int,
             duration: float) -> dict:
    """`connections` calls always in flight for `duration` seconds: throughput, latency,
    errors and the server's CPU per call, as run_wrk reports them."""
    import asyncio

    import grpc

    latencies: list[float] = []
    errors = 0

    async def caller(call: Any, until: float) -> None:
        nonlocal errors
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                await call(body, timeout=30)
                latencies.append(time.monotonic() - started)
            except grpc.RpcError:
                errors += 1

    async def load() -> float:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                       request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            started = time.monotonic()
            await asyncio.gather(*(caller(call, started + duration)
                                   for _ in range(connections)))
            return time.monotonic() - started

    pids = stack.pids()
    cpu_before = cpu_seconds(pids)
    elapsed = asyncio.run(load())
    cpu_used = cpu_seconds(pids) - cpu_before
    ordered = sorted(latencies) or [0.0]
    return {"connections": connections, "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50": round(ordered[len(ordered) // 2] * 1000, 2),
            "p99": round(ordered[int(len(ordered) * 0.99) - 1 if len(ordered) > 1 else 0]
                         * 1000, 2),
            "requests": len(latencies), "non_2xx": errors,
            "server_cpu_ms_per_request": round(cpu_used * 1000 / max(len(latencies), 1), 3)}


def compare(models_dir: Path, rounds: int, duration: float, connections: int) -> dict:
    cores = str(os.cpu_count() or 1)
    image = (models_dir / "examples" / "china.jpg").read_bytes()
    with tempfile.TemporaryDirectory(prefix="mxserve-protocols-") as folder:
        body, header_length = v2_body(image, Path(folder))
        v2 = ("/v2/models/resnet18/infer", V2_LUA,
              {"BENCH_FILE": str(body), "BENCH_HEADER_LENGTH": str(header_length)})
        predictions = ("/predictions/resnet18", RAW_LUA, {
            "BENCH_FILE": str(models_dir / "examples" / "china.jpg"),
            "BENCH_CONTENT_TYPE": "image/jpeg"})
        template = ("/predictions/resnet18-template", RAW_LUA, predictions[2])
        template_form = ("/resnet18-template/predict", LUA, {
            "BENCH_FILE": str(models_dir / "examples" / "china.jpg"), "BENCH_FIELD": "data",
            "BENCH_FILENAME": "china.jpg"})
        grpc_port = free_port()
        store = Path(folder) / "store"
        mar = mms11_cases.build_template_mar("resnet18", models_dir / "resnet18.model", store,
                                             Path(sys.executable).parent / "model-archiver")
        stack = Stack("resnet18", models_dir / "resnet18.model", "--workers-per-model", cores,
                      "--grpc-port", str(grpc_port), "--batching",
                      f"resnet18-template={MAX_BATCH_SIZE}",
                      others=(f"resnet18-template={mar}",))
        call = grpc_request(image)
        try:
            measure = {
                "predict": lambda: run_wrk(stack, "resnet18", models_dir, connections,
                                           duration),
                "predictions": lambda: run_wrk(stack, "resnet18", models_dir, connections,
                                               duration, predictions),
                "template predict": lambda: run_wrk(stack, "resnet18", models_dir,
                                                    connections, duration, template_form),
                "template predictions": lambda: run_wrk(stack, "resnet18", models_dir,
                                                        connections, duration, template),
                "v2-rest binary": lambda: run_wrk(stack, "resnet18", models_dir, connections,
                                                  duration, v2),
                "v2-grpc": lambda: run_grpc(stack, f"127.0.0.1:{grpc_port}", call,
                                            connections, duration)}
            runs: dict[str, list[dict]] = {protocol: [] for protocol in measure}
            order = list(measure)
            for round_number in range(rounds):
                # Each round starts with the next protocol: none always runs first.
                shift = round_number % len(order)
                for protocol in order[shift:] + order[:shift]:
                    runs[protocol].append(measure[protocol]())
        finally:
            stack.stop()
    result: dict[str, Any] = {"connections": connections, "runs": runs}
    pairs = [(protocol, "predict") for protocol in
             ("predictions", "template predict", "template predictions", "v2-rest binary",
              "v2-grpc")]
    # the route alone: the same template handler through /predictions and through /predict
    pairs.append(("template predictions", "template predict"))
    for protocol, baseline in pairs:
        ratios = [v["requests_per_s"] / p["requests_per_s"]
                  for p, v in zip(runs[baseline], runs[protocol])]
        label = f"{protocol} / {baseline}"
        result[f"{label} throughput per round"] = [round(r, 3) for r in ratios]
        result[f"{label} throughput, median"] = round(statistics.median(ratios), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "sample-models")
    args = parser.parse_args()
    result = compare(args.models_dir, args.rounds, args.duration, args.connections)
    for label, each in result["runs"].items():
        print(label, [(r["requests_per_s"], r["non_2xx"], r["server_cpu_ms_per_request"])
                      for r in each])
    for key, value in result.items():
        if "throughput" in key:
            print(key, value)


if __name__ == "__main__":
    main()
