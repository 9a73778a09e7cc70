"""Structured logs: one logfmt line per event, carrying job, rank, stage and step.

Library code logs with `extra={...}` fields; this module adds the run context and renders
`key=value` pairs that both people and log pipelines (Loki, Cloud Logging) read.
Only global rank 0 logs below WARNING, so N processes do not print N copies.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_context: dict[str, Any] = {}


def set_log_context(**fields: Any) -> None:
    """Fields added to every later line (e.g. stage=..., step=...); None removes one."""
    for key, value in fields.items():
        if value is None:
            _context.pop(key, None)
        else:
            _context[key] = value


def _quote(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.6g}"
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    """`time=... level=... job=... rank=... stage=... step=... msg="..." key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            **_context,
            "msg": record.getMessage(),
        }
        fields.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.levelno >= logging.WARNING:
            fields["logger"] = record.name
        line = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(*, job: str, rank: int, debug: bool = False) -> None:
    """Route all logs to stderr in logfmt; rank 0 at INFO (or DEBUG), others at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if rank else (logging.DEBUG if debug else logging.INFO))
    set_log_context(job=job, rank=rank)
