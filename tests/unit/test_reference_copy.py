"""The vendored MMS 0.4 recordings (tests/data/mms04) are the recorded bytes: each file
hashes to its line in SHA256SUMS, written from the original recordings with
`sha256sum $(find . -type f | sort)`; beside ../shared/reference, the original must still
hash the same."""
from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import SHARED_REFERENCE, VENDORED_REFERENCE

NOT_RECORDED = {"REFERENCE_README.md", "SHA256SUMS"}


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in NOT_RECORDED}


def recorded() -> dict[str, str]:
    lines = (VENDORED_REFERENCE / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split(None, 1) for line in lines)}


def test_the_vendored_recordings_are_the_recorded_bytes():
    manifest = recorded()
    assert "digits.model" in manifest and len(manifest) >= 15
    assert digests(VENDORED_REFERENCE) == manifest
    if SHARED_REFERENCE.is_dir():  # the original, where this clone sits beside it
        assert digests(SHARED_REFERENCE) == manifest
