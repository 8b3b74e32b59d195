"""Archive reading: the reference archive loads; every unsafe or broken archive is refused
with a clear message and nothing is written outside the extraction folder."""
from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from mxserve.common.archive import ExtractionLimits, load_archive
from mxserve.common.errors import ArchiveError


def reference_entries(reference: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(reference / "digits.model") as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def write_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]],
              compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


@pytest.fixture
def sandbox(tmp_path):
    """tmp/extract is the only place extraction may write; the rest is watched."""
    (tmp_path / "extract").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path


def snapshot_outside(sandbox: Path) -> set[str]:
    return {str(p.relative_to(sandbox)) for p in sandbox.rglob("*")
            if "extract" not in p.relative_to(sandbox).parts[:1]}


DEFAULT_LIMITS = ExtractionLimits()


def assert_refused(sandbox: Path, archive: Path, match: str, limits=DEFAULT_LIMITS):
    before = snapshot_outside(sandbox)
    with pytest.raises(ArchiveError, match=match):
        load_archive(archive, sandbox / "extract", limits=limits)
    assert snapshot_outside(sandbox) == before, "something was written outside extract/"
    leftovers = [p.name for p in (sandbox / "extract").iterdir()]
    assert not leftovers, "a refused archive left its extraction behind"


def test_reference_archive_loads_and_reuses_its_extraction(reference, sandbox):
    first = load_archive(reference / "digits.model", sandbox / "extract")
    assert first.name == "digits" and first.synset == tuple(str(d) for d in range(10))
    assert first.params_path.is_file() and first.symbol_path.is_file()
    assert first.root.parent == sandbox / "extract"
    second = load_archive(reference / "digits.model", sandbox / "extract", name="renamed")
    assert second.root == first.root and second.name == "renamed"


def test_unpacked_folder_loads(reference, tmp_path):
    for name, data in reference_entries(reference).items():
        (tmp_path / name).write_bytes(data)
    assert load_archive(tmp_path).signature.inputs[0].shape == (1, 3, 32, 32)


def test_archive_zipped_inside_one_folder_loads(reference, sandbox):
    entries = [(f"digits/{n}", d) for n, d in reference_entries(reference).items()]
    archive = write_zip(sandbox / "outside" / "nested.model", entries)
    assert load_archive(archive, sandbox / "extract").manifest.model_name == "digits"


@pytest.mark.parametrize("evil_name", ["../evil.txt", "../../outside/evil.txt", "a/../../evil.txt"])
def test_path_escape_is_refused(reference, sandbox, evil_name):
    entries = list(reference_entries(reference).items()) + [(evil_name, b"pwned")]
    archive = write_zip(sandbox / "outside" / "escape.model", entries)
    assert_refused(sandbox, archive, "escapes the extraction folder")


@pytest.mark.parametrize("evil_name", ["/tmp/evil.txt", "..\\evil.txt", "C:/evil.txt"])
def test_absolute_or_windows_paths_are_refused(reference, sandbox, evil_name):
    entries = list(reference_entries(reference).items()) + [(evil_name, b"pwned")]
    archive = write_zip(sandbox / "outside" / "abs.model", entries)
    assert_refused(sandbox, archive, "absolute or non-POSIX path")


def test_symlink_entry_is_refused(reference, sandbox):
    link = zipfile.ZipInfo("synset.txt")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    entries = [(n, d) for n, d in reference_entries(reference).items() if n != "synset.txt"]
    archive = write_zip(sandbox / "outside" / "link.model", entries + [(link, b"/etc/passwd")])
    assert_refused(sandbox, archive, "is a symbolic link")


@pytest.mark.parametrize("duplicate", ["MANIFEST.json", "manifest.JSON", "./MANIFEST.json"])
def test_duplicate_names_are_refused(reference, sandbox, duplicate):
    entries = list(reference_entries(reference).items()) + [(duplicate, b"{}")]
    with pytest.warns(UserWarning) if duplicate == "MANIFEST.json" else _no_warning():
        archive = write_zip(sandbox / "outside" / "dup.model", entries)
    assert_refused(sandbox, archive, "duplicate entry name")


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_too_many_entries_is_refused(reference, sandbox):
    entries = list(reference_entries(reference).items())
    entries += [(f"extra/{i}.txt", b"x") for i in range(20)]
    archive = write_zip(sandbox / "outside" / "many.model", entries)
    assert_refused(sandbox, archive, "26 entries, more than the limit of 10",
                   ExtractionLimits(max_entries=10))


def test_100000_entries_are_refused_from_the_directory_without_extracting(reference, sandbox):
    import time

    entries = list(reference_entries(reference).items())
    entries += [(f"extra/{i}.txt", b"") for i in range(100_000)]
    archive = write_zip(sandbox / "outside" / "many.model", entries)
    started = time.monotonic()
    assert_refused(sandbox, archive, "100006 entries, more than the limit of 1000")
    assert time.monotonic() - started < 5.0


def test_total_size_cap_is_enforced(reference, sandbox):
    archive = write_zip(sandbox / "outside" / "big.model",
                        list(reference_entries(reference).items()))
    assert_refused(sandbox, archive, "expands past the limit",
                   ExtractionLimits(max_total_bytes=100_000))


def test_zip_bomb_compression_ratio_is_refused(reference, sandbox):
    entries = list(reference_entries(reference).items()) + [("bomb.bin", b"\0" * 50_000_000)]
    archive = write_zip(sandbox / "outside" / "bomb.model", entries, zipfile.ZIP_DEFLATED)
    assert archive.stat().st_size < 1_000_000
    assert_refused(sandbox, archive, "compression ratio over 200:1")


def test_encrypted_entry_is_refused(reference, sandbox):
    entries = list(reference_entries(reference).items()) + [("secret.txt", b"data")]
    archive = write_zip(sandbox / "outside" / "enc.model", entries)
    # zipfile cannot write encrypted entries: set the "encrypted" bit in the central directory.
    raw = bytearray(archive.read_bytes())
    central = raw.rindex(b"PK\x01\x02")  # the last central-directory entry: secret.txt
    assert raw[central + 46:central + 56] == b"secret.txt"
    raw[central + 8] |= 0x1
    archive.write_bytes(bytes(raw))
    assert_refused(sandbox, archive, "is encrypted")


def test_not_a_zip_is_refused(sandbox):
    archive = sandbox / "outside" / "junk.model"
    archive.write_bytes(b"PK\x03\x04 but not really a zip")
    assert_refused(sandbox, archive, "not a valid zip archive")


def test_missing_archive_is_refused(sandbox):
    with pytest.raises(ArchiveError, match="not found"):
        load_archive(sandbox / "nope.model", sandbox / "extract")


def test_archive_without_manifest_is_refused(reference, sandbox):
    entries = [(n, d) for n, d in reference_entries(reference).items() if n != "MANIFEST.json"]
    archive = write_zip(sandbox / "outside" / "nomanifest.model", entries)
    assert_refused(sandbox, archive, "has no MANIFEST.json")


def test_manifest_naming_a_missing_file_is_refused(reference, sandbox):
    entries = [(n, d) for n, d in reference_entries(reference).items()
               if n != "digits-0000.params"]
    archive = write_zip(sandbox / "outside" / "noparams.model", entries)
    assert_refused(sandbox, archive, "'digits-0000.params' named in MANIFEST.json is not in")


def test_manifest_missing_keys_is_refused_by_name(reference, sandbox):
    entries = reference_entries(reference)
    manifest = json.loads(entries["MANIFEST.json"])
    del manifest["Model"]["Symbol"]
    entries["MANIFEST.json"] = json.dumps(manifest).encode()
    archive = write_zip(sandbox / "outside" / "badmanifest.model", list(entries.items()))
    assert_refused(sandbox, archive, "missing required key 'Model.Symbol'")


def test_invalid_json_manifest_is_refused(reference, sandbox):
    entries = reference_entries(reference)
    entries["MANIFEST.json"] = b"{not json"
    archive = write_zip(sandbox / "outside" / "badjson.model", list(entries.items()))
    assert_refused(sandbox, archive, "MANIFEST.json is not valid JSON")


def test_bad_signature_is_refused(reference, sandbox):
    entries = reference_entries(reference)
    entries["signature.json"] = json.dumps({"inputs": [], "input_type": "image/jpeg"}).encode()
    archive = write_zip(sandbox / "outside" / "badsig.model", list(entries.items()))
    assert_refused(sandbox, archive, "'inputs' must be a non-empty list")


def test_symlink_in_unpacked_folder_is_refused(reference, tmp_path):
    for name, data in reference_entries(reference).items():
        (tmp_path / name).write_bytes(data)
    secret = tmp_path.parent / f"{tmp_path.name}-secret.params"
    os.replace(tmp_path / "digits-0000.params", secret)
    (tmp_path / "digits-0000.params").symlink_to(secret)
    with pytest.raises(ArchiveError, match="is a symbolic link"):
        load_archive(tmp_path)


def test_many_entries_just_under_the_ratio_floor_are_refused_in_total(sandbox):
    """200 x 1 MiB of zeros: each entry at the per-entry floor, 200 MB in all."""
    entries = [(f"pad/{i}.bin", bytes(1024 * 1024)) for i in range(200)]
    bomb = write_zip(sandbox / "bomb.model", [("MANIFEST.json", b"{}"), *entries],
                     zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1024 * 1024
    assert_refused(sandbox, bomb, "in all")


@pytest.mark.parametrize("entries, match", [
    ([("x", b"1"), ("x/y", b"2")], "both a file and a folder"),
    ([(".", b"1")], "folder itself"),
    ([("./", b"")], "folder itself"),
])
def test_entries_that_cannot_be_extracted_are_archive_errors(reference, sandbox, entries,
                                                             match):
    good = list(reference_entries(reference).items())
    archive = write_zip(sandbox / "odd.model", [*good, *entries])
    assert_refused(sandbox, archive, match)


@pytest.mark.parametrize("manifest, match", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
    (b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}', "over the limit"),
])
def test_hostile_manifests_are_refused_before_or_while_parsing(reference, sandbox, manifest,
                                                               match):
    entries = reference_entries(reference)
    entries["MANIFEST.json"] = manifest
    archive = write_zip(sandbox / "m.model", list(entries.items()))
    assert_refused(sandbox, archive, match)


def test_a_rejected_archive_leaves_nothing_behind(reference, sandbox):
    entries = reference_entries(reference)
    entries["MANIFEST.json"] = b'{"Model-Archive-Version": 0.1}'
    archive = write_zip(sandbox / "bad.model", list(entries.items()))
    assert_refused(sandbox, archive, "MANIFEST")


def test_an_unreadable_archive_is_an_archive_error(reference, sandbox):
    archive = sandbox / "locked.model"
    archive.write_bytes((reference / "digits.model").read_bytes())
    archive.chmod(0)
    try:
        if os.access(archive, os.R_OK):  # root reads anything: make it a folder instead
            archive.chmod(0o644)
            archive.unlink()
            archive.mkdir()
            (archive / "MANIFEST.json").mkdir()
        with pytest.raises(ArchiveError):
            load_archive(archive, sandbox / "extract")
    finally:
        if archive.is_file():
            archive.chmod(0o644)
