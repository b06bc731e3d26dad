"""The one place logging is configured, as text or JSON lines.

Lines logged while serving an RPC carry its request id and, when tracing is on, the trace and
span ids, so a log line can be found from a trace and the other way round.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

from nachbar.server.tracing import current_trace_ids

# A request's one id: the caller's `x-request-id`, else made when first needed (a failure, a
# trace). Set by the server interceptor for the duration of each RPC; nachbar-ai sends it on
# to nachbar-db, so one id finds the request in both logs.
REQUEST_ID: ContextVar[str | None] = ContextVar("nachbar_request_id", default=None)
REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_PATTERN = "[A-Za-z0-9._:-]{1,64}"
_VALID_REQUEST_ID = re.compile(f"^{REQUEST_ID_PATTERN}$")


def new_request_id() -> str:
    return secrets.token_hex(6)


def valid_request_id(value: object) -> str | None:
    """`value` if it can serve as a request id (a caller's header), else None."""
    return value if isinstance(value, str) and _VALID_REQUEST_ID.match(value) else None


class RequestContextFilter(logging.Filter):
    """Adds `request_id`, `trace_id` and `span_id` (None when absent) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        ids = current_trace_ids()
        record.trace_id, record.span_id = ids if ids is not None else (None, None)
        return True


def _context(record: logging.LogRecord) -> dict[str, str]:
    return {
        name: value
        for name in ("request_id", "trace_id", "span_id")
        if (value := getattr(record, name, None))
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        context = _context(record)
        if context:
            line += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return line


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
