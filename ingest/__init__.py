"""Ingest: MQTT reading batches in, validated and linked to shipments and lots, binary COPY out."""

from ingest.service import IngestService, IngestStats, run

__all__ = ["IngestService", "IngestStats", "run"]
