"""Models registered through the management API, kept on disk so a restarted broker
serves them again.

`<run_dir>/registered.json` (mode 0600, replaced atomically) maps each model registered at
run time to its extracted folder and its settings. A broker that starts reads it after the
`--models` of its configuration and registers each entry again; one whose folder is gone,
or whose name a configured model now takes, is skipped with a warning.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mxserve.common.private_files import write_private

log = logging.getLogger("broker")

FILE_NAME = "registered.json"
MAX_BYTES = 1024 * 1024


class SavedModels:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / FILE_NAME
        self.entries: dict[str, dict[str, Any]] = {}

    def load(self) -> dict[str, dict[str, Any]]:
        """The entries a previous broker saved (none if the file is missing or unusable)."""
        try:
            if self.path.is_symlink() or self.path.stat().st_size > MAX_BYTES:
                raise ValueError("not a small regular file")
            raw = json.loads(self.path.read_text())
            if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
                raise ValueError("not a map of models")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return {}
        self.entries = {str(name): entry for name, entry in raw.items()}
        return dict(self.entries)

    def put(self, name: str, entry: dict[str, Any]) -> None:
        self.entries[name] = entry
        self._save()

    def drop(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        try:
            write_private(self.path, json.dumps(self.entries, indent=1, sort_keys=True))
        except OSError as exc:  # the run directory is gone: we are being stopped
            log.warning("cannot save %s: %s", self.path, exc)
