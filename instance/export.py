"""Building `.model` archives the way MMS 0.4's `mxnet-model-export` does.

    mxserve export --model-name digits --model-path build/digits [--service-file-path svc.py]
                   [--export-path out/] [--force]

The folder must hold exactly one `*-symbol.json`, one `*.params` and a `signature.json`;
every other regular file in it (synset.txt, vocabularies, ...) goes into the archive too.
Without a service file the archive names 0.4's stock service for its input type, which
mxserve (and MMS 0.4) recognise by name. The zip is flat and stored (uncompressed), as 0.4
writes it, and is written to a temporary name first, then renamed into place.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

from mxserve.common.archive import MANIFEST_NAME
from mxserve.common.errors import ArchiveError
from mxserve.common.manifest import parse_manifest, validate_model_name
from mxserve.common.signature import IMAGE_JPEG, parse_signature

ARCHIVE_VERSION = 0.2  # what MMS 0.4 writes; readers check the keys, not this number
SERVER_VERSION = 0.4
SIGNATURE_NAME = "signature.json"
STOCK_SERVICE = {IMAGE_JPEG: "mxnet_vision_service.py"}
STOCK_SERVICE_DEFAULT = "mxnet_model_service.py"
_STOCK_PLACEHOLDER = ('"""Stock MMS 0.4 service placeholder: model servers use their built-in '
                      '{name}."""\n')


def export_model(model_name: str, model_path: str | os.PathLike[str],
                 service_file_path: str | os.PathLike[str] | None = None,
                 export_path: str | os.PathLike[str] = ".", force: bool = False,
                 mxnet_version: str = "1.9.1") -> Path:
    """Write `<export_path>/<model_name>.model`; return its path."""
    validate_model_name(model_name)
    folder = Path(model_path)
    if not folder.is_dir():
        raise ArchiveError(f"--model-path {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    symbol = _exactly_one(files, "*-symbol.json", folder)
    params = _exactly_one(files, "*.params", folder)
    if not (folder / SIGNATURE_NAME).is_file():
        raise ArchiveError(f"{folder} has no {SIGNATURE_NAME}")
    try:
        signature = parse_signature(json.loads((folder / SIGNATURE_NAME).read_text()))
    except json.JSONDecodeError as exc:
        raise ArchiveError(f"{SIGNATURE_NAME} is not valid JSON: {exc}") from exc

    entries: dict[str, bytes | Path] = {p.name: p for p in files if p.name != MANIFEST_NAME}
    if service_file_path:
        service = Path(service_file_path)
        if not service.is_file() or service.suffix != ".py":
            raise ArchiveError(f"--service-file-path {service} is not a Python file")
        service_name = service.name
        entries[service_name] = service
    else:
        service_name = STOCK_SERVICE.get(signature.input_type, STOCK_SERVICE_DEFAULT)
        entries.setdefault(service_name, _STOCK_PLACEHOLDER.format(name=service_name).encode())

    manifest = {
        "Model-Archive-Version": ARCHIVE_VERSION,
        "Model-Archive-Description": model_name,
        "Model-Server": SERVER_VERSION,
        "Model": {
            "Symbol": symbol.name, "Parameters": params.name, "Signature": SIGNATURE_NAME,
            "Service": service_name, "Description": model_name, "Model-Name": model_name,
            "Model-Format": "MXNet-Symbolic",
        },
        "Engine": {"MXNet": mxnet_version},
    }
    parse_manifest(manifest)  # what we write must pass our own reader
    entries[MANIFEST_NAME] = json.dumps(manifest, indent=4).encode()

    out_dir = Path(export_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{model_name}.model"
    if target.exists() and not force:
        raise ArchiveError(f"{target} already exists; pass --force to overwrite it")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model_name}-", suffix=".model", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as zf:
            for name, content in entries.items():
                if isinstance(content, Path):
                    zf.write(content, name)
                else:
                    zf.writestr(name, content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; archives are meant to be shared
        os.replace(tmp_name, target)
    except BaseException:
        os.unlink(tmp_name)
        raise
    return target


def _exactly_one(files: list[Path], pattern: str, folder: Path) -> Path:
    matches = [p for p in files if p.match(pattern)]
    if len(matches) != 1:
        raise ArchiveError(f"{folder} must hold exactly one {pattern} file, found "
                           f"{[p.name for p in matches]}")
    return matches[0]
