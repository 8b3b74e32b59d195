"""The overhead baseline of the noop benchmark: the least a Flask app under gunicorn gthread
does for a predict-shaped request (read the multipart form, answer a small JSON), with no
broker, no worker and no model. Served noop throughput is compared with it in one run, so
the ratio survives a machine that is faster or slower on the day.

    gunicorn -k gthread --workers 2 --threads 32 benchmarks.hello_app:app
"""
from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

app = Flask("hello")


@app.post("/<model>/predict")
def predict(model: str) -> Any:
    fields = {name: part.read() for name, part in request.files.items()}
    fields.update(request.form.items())
    return jsonify(prediction=sorted(fields))


@app.get("/ping")
def ping() -> Any:
    return jsonify(health="healthy!")
