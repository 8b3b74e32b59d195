"""One shared server for the read-only HTTP tests (starting one costs seconds)."""
from __future__ import annotations

import pytest

from tests.server_harness import Server


@pytest.fixture(scope="session")
def server(sample_models, reference):
    instance = Server([f"digits={sample_models['digits']}",
                       f"resnet18={sample_models['resnet18']}",
                       f"digits_mlp={sample_models['digits_mlp']}",
                       f"mms04_digits={reference / 'digits.model'}"])
    try:
        yield instance.wait_ready()
    finally:
        if instance.stop() != 0:
            print(instance.log_text()[-5000:])
