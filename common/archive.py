"""Reading model archives, safely: MMS 0.4's (`.model`: MANIFEST.json, signature.json,
symbol and params) and MMS 1.x's (`.mar`: MAR-INF/MANIFEST.json naming a handler), as a zip
or an unpacked folder.

Lifecycle: `load_archive(path, extract_root)` checks every zip entry before writing a byte
(path escapes, symlinks, duplicates, encryption, entry count, total size, compression
ratio), extracts into a private temporary folder, counts the bytes actually written (the
sizes in a zip header are claims, not facts), then renames the folder into place under a
name derived from the archive's content hash, so several workers of one model share one
extraction. The result is a frozen `ModelArchive` with the parsed manifest and signature.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from mxserve.common.errors import ArchiveError
from mxserve.common.manifest import Manifest, parse_manifest, validate_model_name
from mxserve.common.mar_manifest import MAR_MANIFEST, MarManifest, parse_mar_manifest
from mxserve.common.signature import Signature, parse_signature

MANIFEST_NAME = "MANIFEST.json"
SYNSET_NAME = "synset.txt"
MAX_JSON_BYTES = 1024 * 1024  # MANIFEST.json and signature.json are a few hundred bytes


@dataclass(frozen=True)
class ExtractionLimits:
    max_entries: int = 1000
    max_total_bytes: int = 4 * 1024**3  # resnet-152 params are ~230 MB; 4 GiB leaves room
    max_ratio: int = 200  # zip bombs compress 1000:1 and more; real weights barely compress
    ratio_floor_bytes: int = 1024**2  # small text files may compress well; judge only big ones


DEFAULT_VERSION = "1.0"


@dataclass(frozen=True)
class ModelArchive:
    """An MMS 0.4 archive has `manifest` and `signature`; an MMS 1.x one has `mar` instead
    (its handler takes raw request bodies, so there is no signature to check them by)."""

    name: str
    root: Path
    manifest: Manifest | None
    signature: Signature | None
    synset: tuple[str, ...] | None = field(default=None, repr=False)
    mar: MarManifest | None = None

    @property
    def version(self) -> str:
        """A `.mar`'s model.modelVersion; MMS 0.4 archives have none and are "1.0"."""
        return self.mar.version if self.mar is not None else DEFAULT_VERSION

    @property
    def is_handler(self) -> bool:
        """Served through an MMS 1.x `handle(data, context)`."""
        return self.mar is not None

    @property
    def symbol_path(self) -> Path:
        assert self.manifest is not None, "an MMS 1.x archive names no symbol file"
        return self.root / self.manifest.symbol_file

    @property
    def params_path(self) -> Path:
        assert self.manifest is not None, "an MMS 1.x archive names no params file"
        return self.root / self.manifest.params_file

    @property
    def service_path(self) -> Path:
        assert self.manifest is not None, "an MMS 1.x archive's service is its handler"
        return self.root / self.manifest.service_file


def load_archive(path: str | os.PathLike[str], extract_root: str | os.PathLike[str] | None = None,
                 name: str | None = None,
                 limits: ExtractionLimits = ExtractionLimits()) -> ModelArchive:
    """Open an archive (zip or folder), validate it, and return the parsed ModelArchive.

    `name` overrides the manifest's Model-Name (as `--models name=path` does in MMS 0.4).
    """
    source = Path(path)
    try:
        if source.is_dir():
            return read_folder(source, name)
        if not source.is_file():
            raise ArchiveError(f"model archive not found: {source}")
        root, created = extract_zip(source, Path(extract_root or tempfile.gettempdir()),
                                    limits)
    except OSError as exc:  # unreadable, or a file where a folder must be
        raise ArchiveError(f"cannot read the archive: {exc.strerror or exc}") from exc
    try:
        return read_folder(root, name)
    except BaseException:
        if created:  # a rejected archive leaves nothing on disk
            shutil.rmtree(root, ignore_errors=True)
        raise


def read_folder(root: Path, name: str | None = None) -> ModelArchive:
    """Parse an unpacked archive folder; every file the manifest names must be in it."""
    if (root / MAR_MANIFEST).exists():
        return read_mar_folder(root, name)
    manifest = parse_manifest(_read_json(root, MANIFEST_NAME))
    for key, file_name in (("Symbol", manifest.symbol_file), ("Parameters", manifest.params_file),
                           ("Signature", manifest.signature_file)):
        _require_plain_file(root, file_name, f"Model.{key}")
    signature = parse_signature(_read_json(root, manifest.signature_file),
                                source=manifest.signature_file)
    synset = None
    if (root / SYNSET_NAME).exists():
        _require_plain_file(root, SYNSET_NAME, "synset")
        # MMS 0.4 strips every line and keeps blank ones, so indices match the model's outputs.
        lines = (root / SYNSET_NAME).read_text(encoding="utf-8").splitlines()
        synset = tuple(line.strip() for line in lines)
    return ModelArchive(name=validate_model_name(name or manifest.model_name), root=root,
                        manifest=manifest, signature=signature, synset=synset)


def read_mar_folder(root: Path, name: str | None = None) -> ModelArchive:
    """An unpacked `.mar`: its manifest, and the handler's module file at the top."""
    mar = parse_mar_manifest(_read_json(root, MAR_MANIFEST))
    top_module = mar.module.split(".")[0]
    if not ((root / f"{top_module}.py").is_file() or (root / top_module).is_dir()):
        raise ArchiveError(f"the handler module {mar.module!r} named in {MAR_MANIFEST} is not "
                           "in the archive")
    for path in (root / f"{top_module}.py", root / top_module):
        if path.is_symlink():
            raise ArchiveError(f"the handler module {path.name!r} is a symbolic link")
    return ModelArchive(name=validate_model_name(name or mar.model_name), root=root,
                        manifest=None, signature=None, mar=mar)


def extract_zip(archive: Path, extract_root: Path,
                limits: ExtractionLimits) -> tuple[Path, bool]:
    """Safely extract `archive` under `extract_root`; return the folder holding
    MANIFEST.json and whether this call created it (an identical archive's is reused)."""
    digest = _file_digest(archive)
    target = extract_root / f"{archive.stem}-{digest[:16]}"
    created = False
    if not _has_manifest(target):
        extract_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=extract_root))
        try:
            try:
                _extract_checked(archive, staging, limits)
            except OSError as exc:  # e.g. a file `x` and an entry `x/y`
                raise ArchiveError(f"{archive.name} cannot be extracted: "
                                   f"{exc.strerror or exc}") from exc
            try:
                os.rename(staging, target)
                created = True
            except OSError:
                # Another process extracted the same archive first: theirs is identical.
                if not _has_manifest(target):
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target, created


def _extract_checked(archive: Path, dest: Path, limits: ExtractionLimits) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{archive.name} is not a valid zip archive: {exc}") from exc
    with zf:
        members = zf.infolist()
        if len(members) > limits.max_entries:
            raise ArchiveError(f"{archive.name} has {len(members)} entries, more than the "
                               f"limit of {limits.max_entries}")
        files = _checked_members(archive.name, members, limits)
        if MANIFEST_NAME not in {posixpath.basename(n) for n, _ in files}:
            raise ArchiveError(f"{archive.name} has no {MANIFEST_NAME}")
        written = 0
        for clean_name, info in files:
            out_path = dest.joinpath(*clean_name.split("/"))
            out_path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out_path, "xb") as out:
                while chunk := src.read(1024 * 1024):
                    written += len(chunk)
                    if written > limits.max_total_bytes:
                        raise ArchiveError(f"{archive.name} expands past the limit of "
                                           f"{limits.max_total_bytes} bytes")
                    out.write(chunk)
    _hoist_single_folder(dest)


def _checked_members(archive_name: str, members: list[zipfile.ZipInfo],
                     limits: ExtractionLimits) -> list[tuple[str, zipfile.ZipInfo]]:
    """Refuse anything unsafe before extracting; return (normalised name, info) for files."""
    seen: set[str] = set()
    folders: set[str] = set()  # every folder some entry lies in
    files = []
    declared_total = compressed_total = 0
    for info in members:
        raw = info.filename
        if "\\" in raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
            raise ArchiveError(f"{archive_name}: entry {raw!r} has an absolute or "
                               "non-POSIX path")
        clean = posixpath.normpath(raw)
        if clean == ".." or clean.startswith("../") or "/../" in f"/{clean}/":
            raise ArchiveError(f"{archive_name}: entry {raw!r} escapes the extraction folder")
        if clean == "." or not raw.strip("/"):
            raise ArchiveError(f"{archive_name}: entry {raw!r} names the folder itself")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError(f"{archive_name}: entry {raw!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{archive_name}: entry {raw!r} is encrypted")
        key = clean.lower()  # case-insensitive filesystems would merge these
        if key in seen:
            raise ArchiveError(f"{archive_name}: duplicate entry name {raw!r}")
        seen.add(key)
        parts = key.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if info.is_dir():
            continue
        if (info.file_size > limits.ratio_floor_bytes
                and info.file_size > limits.max_ratio * max(info.compress_size, 1)):
            raise ArchiveError(f"{archive_name}: entry {raw!r} has a compression ratio over "
                               f"{limits.max_ratio}:1 (a zip bomb?)")
        declared_total += info.file_size
        compressed_total += info.compress_size
        if declared_total > limits.max_total_bytes:
            raise ArchiveError(f"{archive_name} expands past the limit of "
                               f"{limits.max_total_bytes} bytes")
        files.append((clean, info))
    # Many entries just under the per-entry floor add up to a bomb as well.
    if (declared_total > limits.ratio_floor_bytes
            and declared_total > limits.max_ratio * max(compressed_total, 1)):
        raise ArchiveError(f"{archive_name} expands over {limits.max_ratio}:1 in all "
                           "(a zip bomb?)")
    clashing = sorted(name for name, _ in files if name.lower() in folders)
    if clashing:
        raise ArchiveError(f"{archive_name}: entry {clashing[0]!r} is both a file and a "
                           "folder")
    return files


def _has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST_NAME).is_file() or (folder / MAR_MANIFEST).is_file()


def _hoist_single_folder(dest: Path) -> None:
    """Archives zipped as `name/...` instead of flat: move the one folder's content up."""
    if (dest / MANIFEST_NAME).exists() or (dest / MAR_MANIFEST).exists():
        return
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and _has_manifest(entries[0]):
        inner = entries[0]
        for child in inner.iterdir():
            child.rename(dest / child.name)
        inner.rmdir()
        return
    raise ArchiveError(f"{MANIFEST_NAME} (MMS 0.4) or {MAR_MANIFEST} (MMS 1.x) must be at "
                       "the top of the archive")


def _require_plain_file(root: Path, file_name: str, what: str) -> Path:
    path = root / file_name
    if path.is_symlink():
        raise ArchiveError(f"{what} file {file_name!r} is a symbolic link")
    if not path.is_file():
        if file_name == MANIFEST_NAME:
            raise ArchiveError(f"{root} has no {MANIFEST_NAME}")
        raise ArchiveError(f"{what} file {file_name!r} named in {MANIFEST_NAME} is not in "
                           "the archive")
    return path


def _read_json(root: Path, file_name: str) -> object:
    """A small JSON file, size checked before it is read and parsed."""
    path = _require_plain_file(root, file_name, file_name)
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ArchiveError(f"{file_name} is {size} bytes, over the limit of {MAX_JSON_BYTES}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"{file_name} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ArchiveError(f"{file_name} is nested too deeply") from exc


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
