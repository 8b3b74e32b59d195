"""Logging set-up shared by every mxserve process: one format, the process named in it.

With a log file, many processes append to one file. Rotation (MMS 0.4's
`--log-rotation-time`, "interval when": "1 H", "30 M", "1 D", "midnight", "W0"-"W6") is
done by one process only, the launcher (`LogRotator`), by renaming the file with a time
suffix as TimedRotatingFileHandler does; every process writes through a WatchedFileHandler,
which notices the rename at its next line and reopens the path. (A TimedRotatingFileHandler
in each process would make every process rotate, and rename each other's files.)
"""
from __future__ import annotations

import logging
import logging.handlers
import sys

from mxserve.common.errors import ConfigError

WHEN = {"S", "M", "H", "D", "MIDNIGHT"} | {f"W{d}" for d in range(7)}


def setup_logging(level: str, log_file: str = "", process: str = "mxserve") -> None:
    handler: logging.Handler = (logging.handlers.WatchedFileHandler(log_file) if log_file
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s [{process} %(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def parse_rotation(text: str) -> tuple[int, str]:
    """'1 H' -> (1, 'H'); 'midnight' -> (1, 'MIDNIGHT'); 'W0' -> (1, 'W0')."""
    parts = text.split()
    if len(parts) == 1:
        interval, when = "1", parts[0]
    elif len(parts) == 2:
        interval, when = parts
    else:
        raise ConfigError(f"log rotation time {text!r}: expected 'interval when'")
    when = when.upper()
    if when not in WHEN or not interval.isdigit() or int(interval) < 1:
        raise ConfigError(f"log rotation time {text!r}: expected 'interval when' with "
                          "when one of S, M, H, D, midnight, W0-W6 (e.g. '1 H')")
    return int(interval), when


class LogRotator:
    """Renames the shared log file on schedule; call `tick()` often (the launcher's loop)."""

    def __init__(self, log_file: str, rotation: str) -> None:
        interval, when = parse_rotation(rotation)
        # Used only for its schedule and its rename; it never writes a line (delay=True).
        self._handler = logging.handlers.TimedRotatingFileHandler(
            log_file, when=when, interval=interval, delay=True)

    def tick(self) -> bool:
        """Rotate if due; True when it did."""
        record = logging.makeLogRecord({})
        if not self._handler.shouldRollover(record):
            return False
        self._handler.doRollover()
        if self._handler.stream is not None:  # doRollover reopens unless delayed
            self._handler.stream.close()
            self._handler.stream = None
        return True
