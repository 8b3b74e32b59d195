"""A worker's batch size capped by the activation memory its model's symbol implies."""
from __future__ import annotations

import pytest

from mxserve.common.archive import load_archive
from mxserve.worker.main import batch_size_within_memory


@pytest.mark.parametrize("model, budget_mb, expected", [
    ("resnet18", 144, 4),   # 32.6 MiB per sample at 224x224; the default budget
    ("resnet18", 288, 8),
    ("resnet18", 100, 3),
    ("resnet18", 1, 1),     # never below 1
    ("digits", 288, 32),    # 0.2 MiB per sample: the requested size
    ("noop", 288, 32),
    ("resnet18", 0, 32),    # 0: no cap
])
def test_the_cap_follows_the_models_activation_size(sample_models, tmp_path, model,
                                                    budget_mb, expected):
    archive = load_archive(sample_models[model], tmp_path)
    assert batch_size_within_memory(archive, 32, budget_mb) == expected


def test_a_symbol_that_cannot_be_read_leaves_the_size_alone(sample_models, tmp_path):
    archive = load_archive(sample_models["digits"], tmp_path)
    archive.symbol_path.write_text("not a symbol")
    assert batch_size_within_memory(archive, 16, 1) == 16
