"""The same model answered through each protocol, on one server, taking turns under wrk:
MMS 0.4's /predict (a multipart form) against KServe v2 REST with the binary tensor data
extension (the JPEG as a BYTES tensor). Ratios are v2 / predict per round, and their median.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from served import ROOT, Stack, run_wrk  # noqa: E402

V2_LUA = ROOT / "benchmarks" / "v2_binary.lua"


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


def compare(models_dir: Path, rounds: int, duration: float, connections: int) -> dict:
    cores = str(os.cpu_count() or 1)
    image = (models_dir / "examples" / "china.jpg").read_bytes()
    with tempfile.TemporaryDirectory(prefix="mxserve-protocols-") as folder:
        body, header_length = v2_body(image, Path(folder))
        v2 = ("/v2/models/resnet18/infer", V2_LUA,
              {"BENCH_FILE": str(body), "BENCH_HEADER_LENGTH": str(header_length)})
        stack = Stack("resnet18", models_dir / "resnet18.model", "--workers-per-model", cores)
        try:
            runs: dict[str, list[dict]] = {"predict": [], "v2-rest binary": []}
            for _ in range(rounds):
                runs["predict"].append(run_wrk(stack, "resnet18", models_dir, connections,
                                               duration))
                runs["v2-rest binary"].append(run_wrk(stack, "resnet18", models_dir,
                                                      connections, duration, v2))
        finally:
            stack.stop()
    ratios = [v["requests_per_s"] / p["requests_per_s"]
              for p, v in zip(runs["predict"], runs["v2-rest binary"])]
    return {"connections": connections, "runs": runs,
            "v2 / predict throughput per round": [round(r, 3) for r in ratios],
            "v2 / predict throughput, median": round(statistics.median(ratios), 3)}


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
    print("v2 / predict throughput per round", result["v2 / predict throughput per round"],
          "median", result["v2 / predict throughput, median"])


if __name__ == "__main__":
    main()
