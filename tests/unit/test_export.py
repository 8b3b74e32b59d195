"""`mxserve export`: MMS 0.4's flags, archives our reader (and 0.4's layout) accept."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mxserve.common.archive import load_archive
from mxserve.common.errors import ArchiveError
from mxserve.instance.export import export_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_dir(reference, tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    with zipfile.ZipFile(reference / "digits.model") as zf:
        for name in ("digits-symbol.json", "digits-0000.params", "signature.json", "synset.txt"):
            (folder / name).write_bytes(zf.read(name))
    return folder


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mxserve.instance.cli", "export", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_with_mms04_flags_builds_a_loadable_flat_stored_archive(model_dir, tmp_path):
    out = tmp_path / "out"
    done = run_cli("--model-name", "digits", "--model-path", str(model_dir),
                   "--export-path", str(out))
    assert done.returncode == 0, done.stderr
    archive = out / "digits.model"
    assert done.stdout.strip() == str(archive)
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted([
            "MANIFEST.json", "digits-0000.params", "digits-symbol.json", "mxnet_vision_service.py",
            "signature.json", "synset.txt"])
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        manifest = json.loads(zf.read("MANIFEST.json"))
    assert manifest["Model"]["Service"] == "mxnet_vision_service.py"
    assert manifest["Model-Server"] == 0.4
    loaded = load_archive(archive, tmp_path / "extract")
    assert loaded.name == "digits" and loaded.synset is not None


def test_existing_archive_needs_force(model_dir, tmp_path):
    export_model("digits", model_dir, export_path=tmp_path)
    with pytest.raises(ArchiveError, match="already exists; pass --force"):
        export_model("digits", model_dir, export_path=tmp_path)
    done = run_cli("--model-name", "digits", "--model-path", str(model_dir),
                   "--export-path", str(tmp_path))
    assert done.returncode == 2 and "--force" in done.stderr
    assert "Traceback" not in done.stderr
    assert export_model("digits", model_dir, export_path=tmp_path, force=True).is_file()


def test_custom_service_file_is_packaged_and_named(model_dir, tmp_path):
    service = tmp_path / "my_service.py"
    service.write_text("# custom\n")
    archive = export_model("digits", model_dir, service_file_path=service,
                           export_path=tmp_path / "out")
    with zipfile.ZipFile(archive) as zf:
        assert json.loads(zf.read("MANIFEST.json"))["Model"]["Service"] == "my_service.py"
        assert zf.read("my_service.py") == b"# custom\n"


def test_json_model_gets_the_stock_base_service(model_dir, tmp_path):
    signature = json.loads((model_dir / "signature.json").read_text())
    signature["input_type"] = "application/json"
    (model_dir / "signature.json").write_text(json.dumps(signature))
    archive = export_model("tensor", model_dir, export_path=tmp_path)
    with zipfile.ZipFile(archive) as zf:
        assert json.loads(zf.read("MANIFEST.json"))["Model"]["Service"] == "mxnet_model_service.py"


@pytest.mark.parametrize("remove, match", [
    ("digits-symbol.json", r"exactly one \*-symbol.json"),
    ("digits-0000.params", r"exactly one \*.params"),
    ("signature.json", "has no signature.json"),
])
def test_incomplete_model_folder_is_refused(model_dir, tmp_path, remove, match):
    (model_dir / remove).unlink()
    with pytest.raises(ArchiveError, match=match):
        export_model("digits", model_dir, export_path=tmp_path)
    assert not (tmp_path / "digits.model").exists()


def test_two_params_files_are_ambiguous(model_dir, tmp_path):
    (model_dir / "digits-0001.params").write_bytes(b"x")
    with pytest.raises(ArchiveError, match=r"found \['digits-0000.params', 'digits-0001.params'\]"):
        export_model("digits", model_dir, export_path=tmp_path)


def test_bad_model_name_is_refused(model_dir, tmp_path):
    with pytest.raises(ArchiveError, match="invalid model name"):
        export_model("../digits", model_dir, export_path=tmp_path)
