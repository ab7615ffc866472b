"""Prometheus metrics of one ingest service, in a registry of its own (several services can share a
process, as in tests), served over HTTP when a port is given."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ingest.writer import GroupResult


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.readings = Counter(
            "coldchain_ingest_readings", "Readings committed to the database", registry=r
        )
        self.batches = Counter("coldchain_ingest_batches", "New batches committed", registry=r)
        self.messages = Counter(
            "coldchain_ingest_messages", "MQTT messages received", ["kind"], registry=r
        )
        self.duplicates = Counter(
            "coldchain_ingest_redeliveries_skipped",
            "Batches already stored (same device and seq), skipped", registry=r,
        )
        self.dead_letters = Counter(
            "coldchain_ingest_dead_letters", "Dead letters stored, by reason", ["reason"], registry=r
        )
        self.quarantined = Counter(
            "coldchain_ingest_quarantined", "Batches held for unregistered devices", registry=r
        )
        self.released = Counter(
            "coldchain_ingest_released", "Held batches released after registration", registry=r
        )
        self.gaps = Counter(
            "coldchain_ingest_seq_gaps", "Data-loss events (gaps in a device's seq)", registry=r
        )
        self.late = Counter("coldchain_ingest_late_batches", "Late (back-filled) batches", registry=r)
        self.group_size = Histogram(
            "coldchain_ingest_group_messages", "Messages per committed group",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000), registry=r,
        )
        self.commit_seconds = Histogram(
            "coldchain_ingest_commit_seconds", "Time to write and commit one group",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r,
        )
        self.lag_seconds = Gauge(
            "coldchain_ingest_lag_seconds",
            "Receive-to-commit time of the oldest message of the last group", registry=r,
        )
        self.queue_depth = Gauge(
            "coldchain_ingest_queue_depth", "Messages received and not yet committed", registry=r
        )
        self.db_errors = Counter(
            "coldchain_ingest_db_errors", "Database errors (the group is retried)", registry=r
        )
        self.first_receive = Gauge(
            "coldchain_ingest_first_receive_timestamp_seconds",
            "Wall time the first message was received", registry=r,
        )
        self.last_commit = Gauge(
            "coldchain_ingest_last_commit_timestamp_seconds",
            "Wall time of the last commit that stored readings", registry=r,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def observe(self, result: GroupResult, *, seconds: float, lag_s: float) -> None:
        self.readings.inc(result.readings)
        self.batches.inc(result.batches)
        self.duplicates.inc(result.duplicates)
        for reason, n in result.reasons.items():
            self.dead_letters.labels(reason).inc(n)
        self.quarantined.inc(result.quarantined)
        self.released.inc(result.released)
        self.gaps.inc(result.gaps)
        self.late.inc(result.late_batches)
        self.group_size.observe(result.messages)
        self.commit_seconds.observe(seconds)
        self.lag_seconds.set(lag_s)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
