"""One logger file imported and judged in one transaction: the original kept, the readings through
the ingest writer, the device's report beside the platform's, the discrepancies. The HTTP route
and `coldchain logger-file import` both call this."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from coldchain.settings import Settings
from ingest.core import AcceptanceBounds
from ingest.files.generic_csv import ColumnMapping
from ingest.files.importer import FileImport, device_report, file_writer, import_logger_file
from rules.device_comparison import compare_with_device
from storage import calibrations, profiles
from storage import logger_files as store

__all__ = ["import_and_compare", "mapping_for", "stored_response"]


def mapping_for(
    conn: psycopg.Connection, *, org: int, mapping: dict[str, Any] | None, mapping_name: str | None
) -> ColumnMapping | None:
    """The CSV column mapping named (saved before) or given inline; None for vendor formats."""
    if mapping_name:
        return ColumnMapping.from_dict(store.get_mapping(conn, org=org, name=mapping_name))
    if mapping is not None:
        return ColumnMapping.from_dict(mapping)
    return None


def stored_response(
    kept: store.StoredFile, *, stored: int, duplicates: int, repeated: bool
) -> dict[str, Any]:
    return {
        "id": kept.id,
        "sha256": kept.sha256,
        "filename": kept.filename,
        "size_bytes": kept.size_bytes,
        "format": kept.format,
        "device": kept.device_id,
        "shipment": kept.shipment_id,
        "readings": kept.readings,
        "stored": stored,
        "duplicates": duplicates,
        "missing": kept.missing,
        "repeated": repeated,
        "summary_only": bool(kept.device_report.get("summary_only")),
        "uploaded_at": kept.uploaded_at.isoformat(),
        "device_report": kept.device_report,
        "platform_report": kept.platform_report,
        "discrepancies": kept.discrepancies,
    }


def _calibration(conn: psycopg.Connection, imp: FileImport) -> dict[str, Any]:
    """The logger's calibration status on the first and the last day of the file's readings."""
    lf = imp.logger_file
    assert lf is not None
    first = lf.times_ms[0] if len(lf) else lf.results.start_ms
    last = lf.times_ms[-1] if len(lf) else lf.results.stop_ms
    out: dict[str, Any] = {}
    for name, ms in (("first_reading", first), ("last_reading", last)):
        if ms is None:
            continue
        day = datetime.fromtimestamp(int(ms) / 1000, UTC).date()
        state, rec = calibrations.status_of(conn, imp.device_key, day)
        out[name] = {
            "date": day.isoformat(), "status": state.value,
            "certificate": rec.certificate.certificate_number if rec else None,
            "due_on": rec.certificate.due_on.isoformat() if rec else None,
        }
    return out


def import_and_compare(
    conn: psycopg.Connection,
    raw: bytes,
    *,
    org: int,
    organization: str,
    actor: str,
    settings: Settings,
    filename: str | None = None,
    device_id: str | None = None,
    shipment_id: str | None = None,
    mapping: ColumnMapping | None = None,
) -> dict[str, Any]:
    """Import, evaluate and keep one file; the response of POST /logger-files."""
    writer = file_writer(AcceptanceBounds.from_settings(settings))
    with conn.transaction():
        imp = import_logger_file(
            conn, raw, org=org, organization=organization, actor=actor, writer=writer,
            filename=filename, device_id=device_id, shipment_id=shipment_id, mapping=mapping,
        )
        if imp.repeated:
            assert imp.stored_file is not None
            return stored_response(imp.stored_file, stored=0, duplicates=imp.readings, repeated=True)
        assert imp.logger_file is not None
        shipment_profile = None
        if shipment_id is not None:
            _, profile_id, version = store.shipment_of(conn, org=org, shipment_id=shipment_id)
            shipment_profile = profiles.resolve(conn, org=org, profile_id=profile_id, version=version)
        comparison = compare_with_device(imp.logger_file, shipment_profile=shipment_profile)
        report = {**comparison.platform_report, "calibration": _calibration(conn, imp)}
        store.update_outcome(
            conn, imp.file_id, stored=imp.stored, duplicates=imp.duplicates,
            platform_report=report, discrepancies=comparison.discrepancies,
        )
    kept = store.StoredFile(  # what was just written, without reading it back
        id=imp.file_id, sha256=imp.sha256, format=imp.logger_file.format, device_id=imp.device_id,
        shipment_id=shipment_id, readings=imp.readings, stored=imp.stored,
        duplicates=imp.duplicates, missing=imp.missing, device_report=device_report(imp.logger_file),
        platform_report=report, discrepancies=comparison.discrepancies,
        uploaded_at=datetime.now(UTC), filename=filename, size_bytes=len(raw),
    )
    body = stored_response(kept, stored=imp.stored, duplicates=imp.duplicates, repeated=False)
    body["refused"] = imp.refused
    return body


def import_command(args: Any, settings: Settings) -> int:
    """`coldchain logger-file import FILE`: the same import as the upload, printed for a clerk."""
    import orjson

    from coldchain.errors import ConfigurationError
    from storage import auth
    from storage.db import connect

    if settings.database_url is None:
        raise ConfigurationError("DATABASE_URL is required")
    raw = args.file.read_bytes()
    inline = orjson.loads(args.mapping.read_bytes()) if args.mapping else None
    with connect(settings.database_url, autocommit=True) as conn:
        org = auth.org_id(conn, args.organization)
        mapping = mapping_for(conn, org=org, mapping=inline, mapping_name=args.mapping_name)
        body = import_and_compare(
            conn, raw, org=org, organization=args.organization, actor="cli", settings=settings,
            filename=args.file.name, device_id=args.device, shipment_id=args.shipment,
            mapping=mapping,
        )
    if args.json:
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return 0
    dev, ours = body["device_report"], body["platform_report"] or {}
    print(f"{body['format']} {body['device']}: {body['readings']} readings, {body['stored']} stored, "
          f"{body['duplicates']} already there, {body['missing']} missing"
          + (" (same file as before: nothing stored)" if body["repeated"] else ""))
    for name in ("mkt_c", "min_c", "max_c", "mean_c"):
        print(f"  {name:7} device {dev.get(name)!s:>8}   platform {ours.get(name)!s:>8}")
    print(f"  device alarms: {len(dev.get('alarms', []))}, platform excursions: "
          f"{len(ours.get('excursions', []))}, daily records: {len(dev.get('days', []))}")
    for d in body["discrepancies"]:
        print(f"  DISCREPANCY {d['check']} {d.get('subject', '')}: {d['detail']}")
    return 0
