"""Structured logs: one JSON object per line and per event.

Callers log an event name plus a few scalar fields (`log_event(logger, "request",
route=..., status=...)`). Nothing here ever receives a request body, an API key or
a header value, so none can leak into the logs: caller identities are logged only as
the hashed id from `app.deps.caller_id`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

# LogRecord attributes that are not extra fields of the event
# (color_message: uvicorn's ANSI-coloured duplicate of the message)
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # default=str: a stray non-JSON value must cost a quoted repr, not the log line
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Route the service's and uvicorn's loggers through one JSON handler on stderr.

    Idempotent, so that every `create_app` (tests build many) can call it.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("taesar", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    # our request middleware writes one line per request; uvicorn's access log would double it
    logging.getLogger("uvicorn.access").disabled = True


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"taesar.{name}")


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with scalar fields; `exc_info` may be passed to attach a traceback."""
    exc_info = fields.pop("exc_info", None)
    logger.log(level, event, extra=fields, exc_info=exc_info)
