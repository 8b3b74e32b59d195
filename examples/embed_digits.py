#!/usr/bin/env python
"""Embedding mxserve: a program that serves the sample digits model with its own service
module and its own endpoint, through mxserve's public API (docs/embedding.md).

    python examples/embed_digits.py [--port 8090] [--archive sample-models/digits.model]

Then:
    curl -F data=@sample-models/examples/digit_0.jpg http://127.0.0.1:8090/digits/predict
    curl http://127.0.0.1:8090/digits/labels
    curl 'http://127.0.0.1:8090/digits/labels?digit=3'
"""
import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mxserve.common.errors import InvalidInput  # noqa: E402
from mxserve.instance import ServingFrontend  # noqa: E402

LABELS_API = {
    "/digits/labels": {
        "get": {
            "operationId": "digits_labels",
            "description": "The digits model's classes (its synset.txt); ?digit=N for one",
            "produces": ["application/json"],
            "parameters": [{"in": "query", "name": "digit", "type": "integer",
                            "required": False}],
            "responses": {"200": {"description": "OK", "schema": {"type": "object"}}},
        }
    }
}


def labels(serving: ServingFrontend, model: str) -> dict:
    """Runs in a gunicorn process: reads the query string, answers JSON."""
    classes = serving.get_loaded_modelservices(model)[model].labels
    digit = serving.get_query_string("digit")
    if digit is not None:
        if not digit.isdigit() or int(digit) >= len(classes):
            raise InvalidInput(f"digit must be 0..{len(classes) - 1}")  # a JSON 400
        classes = [classes[int(digit)]]
    return {"model": model, "labels": classes, "served_by": os.getpid()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--archive", default=str(HERE.parent / "sample-models" / "digits.model"))
    args = parser.parse_args()

    serving = ServingFrontend("digits_example")
    [digit_service] = serving.register_module(HERE / "digit_service.py")
    serving.load_models({"digits": args.archive}, digit_service)
    serving.add_endpoint(LABELS_API, labels, serving=serving, model="digits")
    return serving.start_model_serving(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
