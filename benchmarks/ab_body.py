#!/usr/bin/env python
"""Write a multipart/form-data body for ApacheBench and print the matching `ab` command.

    python benchmarks/ab_body.py sample-models/examples/china.jpg /tmp/body.bin \
        http://127.0.0.1:8080/resnet18/predict [--field data] [--text]

ab cannot build multipart bodies itself; this writes the same request wrk's
benchmarks/multipart.lua sends (a file part, or a text field with --text for JSON inputs).
"""
from __future__ import annotations

import argparse
from pathlib import Path

BOUNDARY = "mxservebenchboundary7MA4YWxkTrZu0gW"  # the one multipart.lua uses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("body", type=Path)
    parser.add_argument("url")
    parser.add_argument("--field", default="data")
    parser.add_argument("--text", action="store_true", help="send as a text field (JSON)")
    parser.add_argument("-n", type=int, default=2000, help="requests")
    parser.add_argument("-c", type=int, default=32, help="concurrency")
    args = parser.parse_args()
    disposition = f'Content-Disposition: form-data; name="{args.field}"'
    if not args.text:
        disposition += (f'; filename="{args.input.name}"\r\n'
                        "Content-Type: application/octet-stream")
    args.body.write_bytes(f"--{BOUNDARY}\r\n{disposition}\r\n\r\n".encode()
                          + args.input.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode())
    print(f"ab -k -n {args.n} -c {args.c} -p {args.body} "
          f"-T 'multipart/form-data; boundary={BOUNDARY}' {args.url}")


if __name__ == "__main__":
    main()
