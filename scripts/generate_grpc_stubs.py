"""Regenerate frontend/grpc_service/inference_pb2*.py from inference.proto with grpcio-tools.

    python scripts/generate_grpc_stubs.py [--out DIR]

The modules are committed beside their .proto, so installing mxserve needs no protoc; a
test regenerates them and fails if the committed ones differ. The proto is compiled from a
tree that names it mxserve/frontend/grpc_service/, so the generated service module imports
its messages by their package path, not as a top-level module.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path("mxserve") / "frontend" / "grpc_service"
SOURCE = ROOT / "frontend" / "grpc_service" / "inference.proto"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tree:
        (Path(tree) / PACKAGE).mkdir(parents=True)
        shutil.copy(SOURCE, Path(tree) / PACKAGE / SOURCE.name)
        code = protoc.main(["grpc_tools.protoc", f"-I{tree}", f"--python_out={tree}",
                            f"--grpc_python_out={tree}", str(PACKAGE / SOURCE.name)])
        if code != 0:
            raise SystemExit(f"protoc failed with {code}")
        written = []
        for name in ("inference_pb2.py", "inference_pb2_grpc.py"):
            shutil.copy(Path(tree) / PACKAGE / name, out / name)
            written.append(out / name)
        return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=SOURCE.parent)
    for path in generate(parser.parse_args().out):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
