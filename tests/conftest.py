"""Shared fixtures: sample models (built once, cached) and the MMS 0.4 reference folder."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The MMS 0.4 recordings live in ../shared/reference/mms04 (the source of truth); a verbatim
# copy travels in tests/data/mms04 so a clone anywhere can run the suite.
SHARED_REFERENCE = ROOT.parent / "shared" / "reference" / "mms04"
VENDORED_REFERENCE = Path(__file__).resolve().parent / "data" / "mms04"
REFERENCE = SHARED_REFERENCE if SHARED_REFERENCE.is_dir() else VENDORED_REFERENCE
SAMPLE_MODELS = Path(os.environ.get("MXSERVE_SAMPLE_MODELS", ROOT / "sample-models"))
DATA = Path(__file__).resolve().parent / "data"

sys.path.insert(0, str(ROOT / "scripts"))
# Servers the tests start other than through tests/server_harness.Server (which gives each
# a free management port) get no management listener, so none of them fights over 8081.
os.environ.setdefault("MXSERVE_MANAGEMENT_PORT", "0")


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "digits.model").is_file():
        pytest.fail(f"MMS 0.4 reference recordings not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def sample_models() -> dict[str, Path]:
    """The sample archives, built by scripts/make_sample_models.py when missing."""
    import make_sample_models

    return make_sample_models.build(SAMPLE_MODELS)


MAR_SERVICES = DATA / "mar_services"
ARCHIVER = Path(sys.executable).parent / "model-archiver"  # MMS 1.x's, a test dependency


def build_mar(model_archive: Path, handler_file: Path, handler: str, name: str,
              export_dir: Path) -> Path:
    """A `.mar` made by the real `model-archiver` (MMS 1.x's tool): the weights, signature
    and synset of an MMS 0.4 sample archive (`model_archive`, or None for none) beside
    `handler_file`, with `handler` as the manifest's model.handler."""
    import shutil
    import tempfile

    import mms11_cases

    with tempfile.TemporaryDirectory() as work:
        source = Path(work)
        if model_archive is not None:
            mms11_cases.extract_weights(model_archive, source)
        shutil.copy(handler_file, source)
        return mms11_cases.archive_folder(name, handler, source, export_dir, ARCHIVER)


def rewritten(archive: Path, out: Path, entry_name: str, change) -> Path:
    """A copy of the zip `archive` at `out` with `change(bytes) -> bytes` applied to one
    entry: test archives that differ from a real one in a single file."""
    import zipfile

    with zipfile.ZipFile(archive) as source, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dest:
        for entry in source.namelist():
            data = source.read(entry)
            dest.writestr(entry, change(data) if entry == entry_name else data)
    return out


def with_version(mar: Path, version: str, out: Path) -> Path:
    """`mar` as torch-model-archiver's --version would have made it: model.modelVersion set
    in its manifest (model-archiver 1.0 writes none)."""
    import json

    def versioned(data: bytes) -> bytes:
        manifest = json.loads(data)
        manifest["model"]["modelVersion"] = version
        return json.dumps(manifest, indent=2).encode()

    return rewritten(mar, out, "MAR-INF/MANIFEST.json", versioned)


def relabelled(model_archive: Path, prefix: str, out: Path) -> Path:
    """An MMS 0.4 archive whose synset labels carry `prefix`: the same weights answering
    with labels that tell which copy answered."""
    return rewritten(model_archive, out, "synset.txt", lambda data: "\n".join(
        prefix + line for line in data.decode().splitlines()).encode())


def template_store(folder: Path) -> Path:
    """A model store holding the archives of tests/data/mms_template, built by the real
    model-archiver as scripts/record_mms11.py builds them for MMS 1.1: digits.mar (the
    template's vision service on the MMS 0.4 digits weights) and echo.mar."""
    import mms11_cases

    mms11_cases.build_store(folder, ARCHIVER)
    return folder
