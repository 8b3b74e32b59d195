"""Logging set-up shared by every mxserve process: one format, the process named in it."""
from __future__ import annotations

import logging
import sys


def setup_logging(level: str, log_file: str = "", process: str = "mxserve") -> None:
    handler: logging.Handler = (logging.FileHandler(log_file) if log_file
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s [{process} %(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
