"""Images decoded by the frontends or by the CPU workers (setting image_decode): the same
pixels, so the same answers, and the same errors."""
from __future__ import annotations

import re

import requests

from tests.server_harness import Server


def decode_ms(response: requests.Response) -> float:
    return float(re.search(r"decode;dur=([\d.]+)", response.headers["Server-Timing"]).group(1))


def test_frontend_and_worker_decoding_give_the_same_answers(server, sample_models):
    examples = sample_models["resnet18"].parent / "examples"
    cases = [("resnet18", "china.jpg"), ("resnet18", "flower.jpg"), ("digits", "digit_0.jpg")]
    with Server([f"digits={sample_models['digits']}", f"resnet18={sample_models['resnet18']}"],
                "--image-decode", "frontend") as by_frontend:
        assert "images decoded by the frontends" in by_frontend.log_text()
        assert "images decoded by the workers" in server.log_text()  # the default, on CPU
        for model, name in cases:
            image = (examples / name).read_bytes()
            answers = []
            for stack in (server, by_frontend):
                response = requests.post(f"{stack.url}/{model}/predict",
                                         files={"data": image}, timeout=60)
                assert response.status_code == 200, response.text
                assert decode_ms(response) > 0  # the decode is counted wherever it ran
                answers.append(response.json())
            assert answers[0] == answers[1], (model, name)
        truncated = (examples / "china.jpg").read_bytes()[:20000]
        response = requests.post(f"{by_frontend.url}/resnet18/predict",
                                 files={"data": truncated}, timeout=60)
        assert response.status_code == 400 and response.json()["type"] == "InvalidInput"
