"""Which kind of export a file is, and its parse: Berlinger text exports are recognised by their
first line; anything else needs a column mapping (the generic CSV importer)."""

from __future__ import annotations

from coldchain.logger_file import LoggerFile, LoggerFileError
from ingest.files.berlinger import looks_like_berlinger, parse_berlinger
from ingest.files.generic_csv import ColumnMapping, parse_csv

__all__ = ["read_logger_file"]


def _text(raw: bytes) -> str:
    """Berlinger exports are ASCII; a stray byte from an edited file is read as Windows-1252."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def read_logger_file(
    raw: bytes, *, mapping: ColumnMapping | None = None, filename: str | None = None
) -> LoggerFile:
    """Parse an export; LoggerFileError (a ValidationError naming the line) when it cannot be read."""
    if not raw or (len(raw) < 4096 and not raw.strip()):
        raise LoggerFileError("the file is empty", line=1)
    if mapping is not None:
        return parse_csv(raw, mapping, model=filename or "CSV export")
    if raw.startswith(b"%PDF"):
        raise LoggerFileError(
            "this is the device's PDF report; upload its text export (.txt) instead", line=1
        )
    text = _text(raw[:4096])
    if looks_like_berlinger(text):
        return parse_berlinger(_text(raw))
    raise LoggerFileError(
        "not a known logger export (Berlinger Fridge-tag or Q-tag text file); for a CSV export "
        "give a column mapping",
        line=1,
    )
