"""Log lines on stderr: one JSON object per line (the default, for machines) or readable console lines.

:func:`configure_logging` sets up the root logger and uvicorn's loggers once per process; the access
log line of each request is written by :class:`service.middleware.RequestTelemetryMiddleware`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from models.log_noise import quiet_third_party_logs

__all__ = ["JsonFormatter", "ConsoleFormatter", "configure_logging"]


class JsonFormatter(logging.Formatter):
    """One JSON object per log line; ``extra={"fields": {...}}`` adds fields.

    Hand-written (a dozen lines) rather than adding python-json-logger as a dependency.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,  # tells the workers apart when workers > 1
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """A readable line per record for a person at a terminal: time, level, logger, message, then the
    ``fields`` as ``key=value`` (``DELTAGATE_LOG_FORMAT=console``; JSON stays the default for machines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None) or {}
        extra = " ".join(f"{k}={json.dumps(v, default=str, ensure_ascii=False) if not isinstance(v, str) else v}"
                         for k, v in fields.items())
        return f"{line} {extra}" if extra else line


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Log lines on stderr for the root logger and uvicorn's loggers (access log off: ours replaces it).

    Args:
        level: debug, info, warning or error; third-party noise is quiet below debug
            (:func:`models.log_noise.quiet_third_party_logs`).
        fmt: ``json`` (one JSON object per line, the default) or ``console`` (readable lines).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(ConsoleFormatter() if fmt == "console" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    quiet_third_party_logs(level)
