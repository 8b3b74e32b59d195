"""The vendored MMS 0.4 recordings must stay byte-identical to shared/reference."""
from __future__ import annotations

import pytest

from tests.conftest import SHARED_REFERENCE, VENDORED_REFERENCE


def test_vendored_reference_equals_shared():
    if not SHARED_REFERENCE.is_dir():
        pytest.skip("shared/reference is not beside this clone; nothing to compare against")
    shared = {p.relative_to(SHARED_REFERENCE): p.read_bytes()
              for p in SHARED_REFERENCE.rglob("*") if p.is_file()}
    vendored = {p.relative_to(VENDORED_REFERENCE): p.read_bytes()
                for p in VENDORED_REFERENCE.rglob("*") if p.is_file()
                and p.name != "REFERENCE_README.md"}
    assert vendored == shared
