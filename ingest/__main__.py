"""`python -m ingest`: one ingest worker as its own process (also how the fault tests run it)."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from coldchain.log import configure_logging
from coldchain.settings import load_settings
from coldchain.wire import Topics
from ingest.service import IngestService


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL URL (default: DATABASE_URL)")
    parser.add_argument("--mqtt-url", help="broker URL (default: MQTT_URL)")
    parser.add_argument("--topic-prefix", default=None, help="topic prefix ending in '/'")
    parser.add_argument("--client-id", default=None, help="stable MQTT client id of this worker")
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--group-max-batches", type=int, default=None)
    parser.add_argument("--group-max-wait-ms", type=int, default=None)
    parser.add_argument("--log-level", default=None)
    args = parser.parse_args(argv)
    settings = load_settings(
        database_url=args.dsn,
        mqtt_url=args.mqtt_url,
        topic_prefix=args.topic_prefix,
        ingest_metrics_port=args.metrics_port,
        ingest_group_max_batches=args.group_max_batches,
        ingest_group_max_wait_ms=args.group_max_wait_ms,
        log_level=args.log_level,
    )
    configure_logging(settings.log_level, json_lines=settings.log_json)
    if not settings.database_url or not settings.mqtt_url:
        parser.error("--dsn/DATABASE_URL and --mqtt-url/MQTT_URL are required")
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    service = IngestService(
        dsn=settings.database_url,
        mqtt_url=settings.mqtt_url,
        topics=Topics(prefix=settings.topic_prefix),
        settings=settings,
        client_id=args.client_id,
        metrics_port=settings.ingest_metrics_port,
    )
    with service:
        if service.wait_ready(60):
            print("ingest ready", flush=True)  # the line fault tests and benchmarks wait for
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
