"""One JSON object per log line on stdout, for journald and log shippers.

journald stores every line of a service's stdout at priority "info" unless the
line starts with a syslog priority, ``<3>`` for an error (sd-daemon(3)); it
strips the prefix. Without it ``journalctl -p warning`` never showed the app's
warnings and errors, and neither did anything that filters on priority. The
prefix is written only when stdout is the journal's stream (systemd names it in
JOURNAL_STREAM), so a terminal or a log shipper reading a file gets plain JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# Python's levels and the syslog priorities journald files them under, highest first.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a Python level (a custom level takes the next standard one below it)."""
    return next((priority for level, priority in _PRIORITIES if levelno >= level), 7)


def writes_to_journal(stream) -> bool:
    """Whether `stream` is the journal's: systemd sets JOURNAL_STREAM to its device:inode."""
    try:
        stat = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{stat.st_dev}:{stat.st_ino}"


class JsonFormatter(logging.Formatter):
    def __init__(self, *args, journal: bool | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The formatter of the stdout handler (settings.LOGGING); None: find out.
        self.journal = writes_to_journal(sys.stdout) if journal is None else journal

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = json.dumps(entry, ensure_ascii=False)
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journal else line
