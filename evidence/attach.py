"""Evidence recorded without anyone asking: an excursion's preliminary bundle when it opens, its
final bundle when it is closed, a shipment's bundle when the shipment completes.

Each bundle is a file under `<data dir>/evidence/YYYY/MM/<sha256>.zip` and a row in
`evidence_records` with its hashes, so the ERP push can attach it. The file is written to a
temporary name and renamed into place before the row commits; a crash in between leaves at
worst an orphan file, never a row without its file. Work is found by a query, not by events, so a
recorder that was down catches up on start.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from coldchain.errors import NotFoundError
from coldchain.settings import Settings
from evidence import bundle, model, signing
from storage import evidence as store
from storage.db import connect

log = logging.getLogger(__name__)


def verify_url(settings: Settings) -> str:
    """Where a reader of a report is told to verify it (printed in every PDF's footer)."""
    base = settings.public_url or f"http://{settings.http_host}:{settings.http_port}"
    return base.rstrip("/") + "/api/v1/evidence/verify"


def _evidence_for(conn: psycopg.Connection, item: store.DueEvidence) -> model.Evidence:
    if item.subject_kind == "excursion":
        assert item.alert_id is not None
        return model.excursion_evidence(conn, org=item.org_id, alert_id=item.alert_id)
    assert item.shipment_id is not None
    return model.shipment_evidence(conn, org=item.org_id, shipment_id=item.shipment_id)


def record_due(
    conn: psycopg.Connection, *, data_dir: Path, key: signing.SigningKey, verify_url: str, limit: int = 20
) -> list[store.EvidenceRecord]:
    """Make and record every bundle now owed (up to `limit`); returns the rows added."""
    added: list[store.EvidenceRecord] = []
    for item in store.due(conn, limit=limit):
        if not store.try_claim(conn, item=item):
            continue  # another recorder is making it
        try:
            row = _record(conn, item, data_dir=data_dir, key=key, verify_url=verify_url)
        finally:
            store.release_claim(conn, item=item)
        if row is not None:
            added.append(row)
    return added


def _record(
    conn: psycopg.Connection, item: store.DueEvidence, *, data_dir: Path, key: signing.SigningKey,
    verify_url: str,
) -> store.EvidenceRecord | None:
    try:
        ev = _evidence_for(conn, item)
    except NotFoundError:
        log.warning("evidence: %s %s vanished before its bundle was made", item.subject_kind,
                    item.alert_id or item.shipment_id)
        return None
    now = datetime.now(UTC)
    folder = data_dir / "evidence" / f"{now:%Y}" / f"{now:%m}"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=".zip")
    try:
        with os.fdopen(fd, "w+b") as out:
            manifest = bundle.write_bundle(ev, out, key=key, verify_url=verify_url)
        digest = bundle.file_sha256(Path(tmp))
        final = folder / f"{digest}.zip"
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    subject = str(item.alert_id) if item.subject_kind == "excursion" else str(item.shipment_id)
    with conn.transaction():
        row = store.add_record(
            conn, org=item.org_id, subject_kind=item.subject_kind, subject=subject, stage=item.stage,
            alert_id=item.alert_id,
            shipment_key=item.shipment_key or (ev.shipment_keys[0] if ev.shipment_keys else None),
            file_name=str(final.relative_to(data_dir)), size_bytes=final.stat().st_size,
            bundle_sha256=digest, record_sha256=manifest["record_sha256"], key_id=key.key_id,
            generated_at=ev.generated_at,
        )
    if row is None:  # recorded meanwhile by a recorder that did not hold the claim
        if not store.file_recorded(conn, file_name=str(final.relative_to(data_dir))):
            final.unlink(missing_ok=True)
        return None
    log.info("evidence recorded: %s %s %s (%s)", item.subject_kind, subject, item.stage, digest[:12])
    return row


class EvidenceRecorder:
    """A named thread that records owed evidence every `interval_s` until stopped."""

    def __init__(self, *, dsn: str, data_dir: Path, verify_url: str, interval_s: float = 2.0) -> None:
        self._dsn, self._data_dir, self._url, self._interval = dsn, data_dir, verify_url, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evidence-recorder", daemon=True)

    def start(self) -> None:
        signing.signing_key(self._data_dir)  # the key exists from the first start on
        self._thread.start()

    def _run(self) -> None:
        key = signing.signing_key(self._data_dir)
        while not self._stop.is_set():
            try:
                with connect(self._dsn, autocommit=True) as conn:
                    while not self._stop.is_set():
                        record_due(conn, data_dir=self._data_dir, key=key, verify_url=self._url)
                        self._stop.wait(self._interval)
            except psycopg.Error:
                log.exception("evidence recorder: database error; retrying")
                self._stop.wait(self._interval * 5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
