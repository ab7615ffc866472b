"""Logging set-up, done once in main(): plain or JSON lines, with structured fields and no secrets."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime

import orjson

_STRUCTURED = ("device", "shipment", "lot", "alert", "seq", "reason", "count")
# Credentials inside URLs (mqtt://user:secret@host) never reach a log line.
_URL_SECRET = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.I)


def redact(text: str) -> str:
    """Hide the password part of any URL in `text`."""
    return _URL_SECRET.sub(r"\g<scheme>***@", text)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in _STRUCTURED:
            value = record.__dict__.get(key)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(doc, default=str).decode()


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(
            f"{k}={record.__dict__[k]}" for k in _STRUCTURED if record.__dict__.get(k) is not None
        )
        return redact(f"{text} {fields}" if fields else text)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Install one stderr handler on the root logger; calling it again replaces it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter()
        if json_lines
        else _PlainFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "apscheduler", "twilio.http_client", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
