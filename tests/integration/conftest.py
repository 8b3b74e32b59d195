"""One shared server for the read-only HTTP tests (starting one costs seconds)."""
from __future__ import annotations

import pytest

from tests.server_harness import Server


@pytest.fixture(scope="session")
def server(sample_models, reference):
    with Server([f"digits={sample_models['digits']}",
                 f"resnet18={sample_models['resnet18']}",
                 f"digits_mlp={sample_models['digits_mlp']}",
                 f"mms04_digits={reference / 'digits.model'}"], grpc=True) as instance:
        yield instance
