"""Log lines about one job: `[namespace/name] message`, with both as structured fields."""

from __future__ import annotations

import logging
from typing import Any


class JobLog(logging.LoggerAdapter):
    """A logger adapter that prefixes and tags every line with its job."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{extra.get('namespace')}/{extra.get('job')}] {msg}", kwargs


def job_log(namespace: str, name: str, logger: logging.Logger) -> JobLog:
    return JobLog(logger, {"job": name, "namespace": namespace})
