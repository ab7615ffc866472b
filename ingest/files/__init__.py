"""Logger export files (Berlinger Fridge-tag and Q-tag text exports, CSV with a column mapping)
turned into reading batches that go through the same writer as MQTT."""

from ingest.files.detect import read_logger_file
from ingest.files.generic_csv import ColumnMapping

__all__ = ["ColumnMapping", "read_logger_file"]
