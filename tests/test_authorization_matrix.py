"""The authorization matrix: every route of the OpenAPI document, called by a person holding each
role, and by an admin of another organization. Each answer is checked against the table below:
allowed (anything but 401/403/404), 403 (known but not permitted), or 404 (not to be known).

The table is written out by hand, not derived from coldchain/access.py, so a change to the
permission code that changes who may do what fails here until the table says so too.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.field_data import import_and_compare
from coldchain.alarm_profile import AlarmProfile
from coldchain.calibration import CalibrationCertificate
from coldchain.domain import Device, Lot, Severity, Shipment, ShipmentLot
from coldchain.gs1 import gtin_check_digit
from coldchain.presets import get_preset
from coldchain.settings import Settings
from erp import credentials
from erp.epcis_capture import capture_document
from erp.recalls import RecallRequest, open_recall
from ingest.core import AcceptanceBounds
from ingest.files.generic_csv import ColumnMapping
from ingest.files.importer import file_writer
from storage import (
    alerts,
    assignments,
    auth,
    calibrations,
    erp_outbox,
    logger_files,
    products,
    profile_changes,
    profiles,
    registry,
    sites,
)
from storage.db import open_pool
from tests.support.identity import PASSWORD, login, make_user, signature

GTIN = "09506000134352"
GLN = "9520123000011"  # not the one the import row of the walk brings
LOGGERS = Path(__file__).parent / "data" / "loggers"
EPCIS = Path(__file__).parent / "data" / "epcis"
HOME_FILE = "QTag_CLm_doc_LR__RCPJ00010_02_202211090128.txt"  # kept in _home for device D1
WALK_FILE = "FridgeTag_2__130400191544_202304201514.txt"  # uploaded by the walk
PDF = b"%PDF-1.4\n% calibration certificate\n%%EOF\n"
MAPPING = {"time_column": "Zeit", "value_column": "Temperatur", "delimiter": ";", "decimal": ","}
ROLES = ("admin", "qa", "logistics", "driver", "erp", "viewer")
PRINCIPALS = (*ROLES, "tenant")  # tenant: an admin of another organization
ALL = frozenset(ROLES)
READ = ALL
REGISTER = frozenset({"admin", "logistics", "erp"})
ACK = frozenset({"admin", "qa", "logistics", "driver"})
RESOLVE = frozenset({"admin", "qa", "logistics"})
QA = frozenset({"qa"})
ADMIN = frozenset({"admin"})
PROVISION = frozenset({"admin", "logistics"})
AUDIT = frozenset({"admin", "qa"})
PUBLIC = "public"  # no token needed

# (method, path template) -> who of the home organization may; `record`: the path names a record
# of the home organization, so another tenant gets 404; otherwise the tenant is treated by role
# (an admin) and sees only its own, empty organization.
Expectation = tuple[frozenset[str] | str, bool]
MATRIX: dict[tuple[str, str], Expectation] = {
    ("GET", "/api/v1/health"): (PUBLIC, False),
    ("GET", "/api/v1/devices"): (READ, False),
    ("POST", "/api/v1/devices"): (REGISTER, False),
    ("GET", "/api/v1/devices/{device_id}"): (READ, True),
    # A device's broker password: those who install loggers (admin, logistics); not the ERP's
    # machine account, not drivers. No broker in this test: allowed callers get 503.
    ("POST", "/api/v1/devices/{device_id}/credentials"): (PROVISION, True),
    ("DELETE", "/api/v1/devices/{device_id}/credentials"): (PROVISION, True),
    ("GET", "/api/v1/shipments"): (READ, False),
    ("POST", "/api/v1/shipments"): (REGISTER, False),
    ("GET", "/api/v1/shipments/{shipment_id}"): (READ, True),
    # Adding a logger registers (an override of its calibration would be QA's: tested on its own).
    ("POST", "/api/v1/shipments/{shipment_id}/devices"): (REGISTER, True),
    ("POST", "/api/v1/shipments/{shipment_id}/shares"): (REGISTER, True),
    ("GET", "/api/v1/shipments/{shipment_id}/shares"): (REGISTER, True),
    ("DELETE", "/api/v1/shipments/{shipment_id}/shares/{organization}"): (REGISTER, True),
    ("GET", "/api/v1/profiles"): (READ, False),
    ("POST", "/api/v1/profiles"): (QA, False),  # alarm limits are QA's, not ERP's or logistics'
    ("GET", "/api/v1/profiles/{profile_id}"): (READ, False),  # built-in presets are everyone's
    ("GET", "/api/v1/profiles/{profile_id}/versions"): (READ, True),
    ("POST", "/api/v1/profiles/{profile_id}/versions/{version}/approve"): (QA, True),
    ("POST", "/api/v1/profiles/{profile_id}/versions/{version}/rollback"): (QA, True),
    ("PUT", "/api/v1/products/{gtin}/profile"): (QA, False),  # which limits apply: QA's
    ("GET", "/api/v1/lots/{gtin}/{lot}"): (READ, True),
    ("POST", "/api/v1/lots/{gtin}/{lot}/credits"): (QA, True),
    ("POST", "/api/v1/lots/{gtin}/{lot}/disposition"): (QA, True),  # admin alone may not
    ("GET", "/api/v1/lots/{gtin}/{lot}/readings"): (READ, True),
    ("GET", "/api/v1/alerts"): (READ, False),
    ("GET", "/api/v1/alerts/{alert_id}"): (READ, True),
    ("POST", "/api/v1/alerts/{alert_id}/ack"): (ACK, True),
    ("POST", "/api/v1/alerts/{alert_id}/resolve"): (RESOLVE, True),
    ("POST", "/api/v1/alerts/{alert_id}/reopen"): (RESOLVE, True),
    ("POST", "/api/v1/alerts/{alert_id}/close"): (QA, True),
    ("POST", "/api/v1/alerts/{alert_id}/assign"): (ACK, True),
    ("GET", "/api/v1/alerts/{alert_id}/notifications"): (READ, True),
    ("GET", "/api/v1/notify/contacts"): (ADMIN, False),
    ("GET", "/api/v1/notify/contacts/{contact_id}"): (ADMIN, True),
    ("PUT", "/api/v1/notify/contacts/{contact_id}"): (ADMIN, False),
    ("DELETE", "/api/v1/notify/contacts/{contact_id}"): (ADMIN, True),
    ("GET", "/api/v1/notify/policies"): (ADMIN, False),
    ("PUT", "/api/v1/notify/policies/{policy_id}"): (ADMIN, False),
    ("GET", "/api/v1/notify/routing-rules"): (ADMIN, False),
    ("PUT", "/api/v1/notify/routing-rules"): (ADMIN, False),
    ("POST", "/api/v1/auth/token"): (PUBLIC, False),
    ("POST", "/api/v1/auth/refresh"): (PUBLIC, False),
    ("POST", "/api/v1/auth/logout"): (PUBLIC, False),
    ("GET", "/api/v1/auth/me"): (ALL, False),
    ("GET", "/api/v1/users"): (ADMIN, False),
    ("POST", "/api/v1/users"): (ADMIN, False),
    ("GET", "/api/v1/users/{user_id}"): (ADMIN, True),  # another person's account
    ("PATCH", "/api/v1/users/{user_id}"): (ADMIN, True),
    ("POST", "/api/v1/users/me/totp"): (ALL, False),
    ("POST", "/api/v1/users/me/password"): (ALL, False),
    ("POST", "/api/v1/api-keys"): (ADMIN, False),
    ("GET", "/api/v1/api-keys"): (ADMIN, False),
    ("DELETE", "/api/v1/api-keys/{key_id}"): (ADMIN, True),
    ("GET", "/api/v1/audit"): (AUDIT, False),
    ("GET", "/api/v1/audit/report"): (AUDIT, True),
    ("GET", "/api/v1/audit/verify"): ("platform", False),  # the platform's own admins; 404 to others
    ("GET", "/api/v1/organizations"): ("platform", False),
    ("POST", "/api/v1/organizations"): ("platform", False),
    ("GET", "/api/v1/lots"): (READ, True),  # ?id= names the home lot by its Digital Link
    ("GET", "/api/v1/lots/{gtin}/{lot}/evidence"): (READ, True),
    ("GET", "/api/v1/shipments/{shipment_id}/evidence"): (READ, True),
    ("GET", "/api/v1/alerts/{alert_id}/evidence"): (READ, True),
    ("GET", "/api/v1/evidence/public-key"): (READ, False),
    ("POST", "/api/v1/evidence/verify"): (READ, False),
    ("POST", "/api/v1/gs1/parse"): (READ, False),
    ("POST", "/api/v1/imports"): (REGISTER, False),
    # Calibrations are recorded by those who register devices or by QA (REGISTER or DISPOSITION).
    ("POST", "/api/v1/devices/{device_id}/calibrations"): (REGISTER | QA, True),
    ("GET", "/api/v1/devices/{device_id}/calibrations"): (READ, True),
    ("PUT", "/api/v1/devices/{device_id}/config"): (REGISTER, True),
    ("GET", "/api/v1/devices/{device_id}/config"): (READ, True),
    ("GET", "/api/v1/devices/{device_id}/calibrations/{calibration_id}/certificate"): (READ, True),
    ("POST", "/api/v1/logger-files"): (REGISTER, False),
    ("GET", "/api/v1/logger-files"): (READ, False),
    ("GET", "/api/v1/logger-files/{file_id}"): (READ, True),
    ("GET", "/api/v1/logger-files/{file_id}/original"): (READ, True),
    ("PUT", "/api/v1/logger-files/mappings/{name}"): (REGISTER, False),
    ("GET", "/api/v1/logger-files/mappings/{name}"): (READ, True),
    ("POST", "/api/v1/recalls"): (QA, False),  # DISPOSITION
    ("GET", "/api/v1/recalls"): (READ, False),
    ("GET", "/api/v1/recalls/kpis"): (READ, False),
    ("GET", "/api/v1/recalls/{recall_id}"): (READ, True),
    ("POST", "/api/v1/recalls/{recall_id}/close"): (QA, True),  # DISPOSITION, signed
    ("POST", "/api/v1/recalls/{recall_id}/consignees/{consignee_id}/acknowledge"): (ACK, True),
    # Master data: registered and edited by REGISTER; the alarm-relevant fields are QA's
    # (tests/test_master_data.py checks those field by field).
    ("GET", "/api/v1/products"): (READ, False),
    ("POST", "/api/v1/products"): (REGISTER, False),
    ("GET", "/api/v1/products/{gtin}"): (READ, True),
    ("PATCH", "/api/v1/products/{gtin}"): (REGISTER, True),
    ("GET", "/api/v1/products/{gtin}/lots"): (READ, True),
    ("POST", "/api/v1/products/{gtin}/lots"): (REGISTER, True),
    ("GET", "/api/v1/products/{gtin}/lots/{lot}"): (READ, True),
    ("PATCH", "/api/v1/products/{gtin}/lots/{lot}"): (REGISTER, True),
    ("GET", "/api/v1/sites"): (READ, False),
    ("POST", "/api/v1/sites"): (REGISTER, False),
    ("GET", "/api/v1/sites/{gln}"): (READ, True),
    ("PATCH", "/api/v1/sites/{gln}"): (REGISTER, True),
    ("PATCH", "/api/v1/shipments/{shipment_id}"): (REGISTER, True),
    ("GET", "/api/v1/shipments/{shipment_id}/assignments"): (READ, True),
    ("POST", "/api/v1/shipments/{shipment_id}/assignments"): (REGISTER, True),
    ("GET", "/api/v1/assignments/{assignment_id}"): (READ, True),
    ("PATCH", "/api/v1/assignments/{assignment_id}"): (REGISTER, True),
    # ERP connections hold credentials: administrators only; what was pushed is everyone's to read.
    ("GET", "/api/v1/erp/connections"): (ADMIN, False),
    ("GET", "/api/v1/erp/connections/{connection_id}"): (ADMIN, True),
    ("PUT", "/api/v1/erp/connections/{connection_id}"): (ADMIN, False),
    ("DELETE", "/api/v1/erp/connections/{connection_id}"): (ADMIN, True),
    ("GET", "/api/v1/erp/deliveries"): (READ, False),
    ("POST", "/api/v1/erp/deliveries/{delivery_id}/retry"): (ADMIN, True),
    ("PUT", "/api/v1/erp/shipments/{shipment_id}/reference"): (REGISTER, True),
    ("POST", "/api/v1/epcis/capture"): (REGISTER, False),
    ("GET", "/api/v1/epcis/captures"): (READ, False),
    ("GET", "/api/v1/epcis/captures/{capture_id}"): (READ, True),
    ("GET", "/api/v1/epcis/captures/{capture_id}/document"): (READ, True),
    ("GET", "/api/v1/shipments/{shipment_id}/movements"): (READ, True),
}


def _home(db: psycopg.Connection, settings: Settings) -> dict[str, Any]:
    """The records the routes name: a device, a shipment with a lot (with a budget), an alert, a
    logger file of the device, a saved CSV mapping, a calibration certificate of the device, and a
    recall of the lot with one consignee (the shipment), and an EPCIS capture."""
    registry.create_device(db, org=1, device=Device(id="D1"), actor="t")
    lot = Lot(GTIN, "A1", None, 3600)
    shipment = Shipment(id="S1", lots=(ShipmentLot(lot, 10),), profile="2-8C")
    registry.create_shipment(db, org=1, shipment=shipment, profile_version=1, actor="t")
    ship_key = registry.get_shipment(db, org=1, shipment_id="S1").key
    products.create_product(db, org=1, gtin=GTIN, values={"name": "Home product"}, actor="t")
    sites.create_site(db, org=1, gln=GLN, name="Home site", address=None, actor="t")
    ride, _, _ = assignments.add_assignment(
        db, org=1, shipment_id="S1", device_id="D1", starts=datetime(2026, 11, 1, tzinfo=UTC),
        ends=datetime(2026, 11, 2, tzinfo=UTC), actor="t",
    )
    device_key = db.execute("SELECT key FROM devices WHERE id = 'D1'").fetchone()
    assert device_key is not None
    with db.transaction():
        alert_id, _ = alerts.raise_alert(
            db,
            alerts.NewAlert(
                org_id=1,
                episode_key="m1",
                kind="single",
                severity=Severity.ALARM,
                message="above 8 °C",
                started_at=datetime.now(UTC),
                shipment_key=ship_key,
                device_key=int(device_key[0]),
            ),
        )
    base = get_preset("2-8C").to_dict()
    profiles.save(
        db, org=1, profile=AlarmProfile.from_dict({**base, "id": "custom-home"}), actor="author@home.org"
    )
    changed = AlarmProfile.from_dict({**base, "id": "custom-home", "hysteresis_c": 0.3})
    profile_changes.save_draft(db, org=1, profile=changed, actor="author@home.org")
    slug = db.execute("SELECT slug FROM organizations WHERE id = 1").fetchone()
    assert slug is not None
    kept = import_and_compare(
        db, (LOGGERS / HOME_FILE).read_bytes(), org=1, organization=str(slug[0]), actor="t",
        settings=settings, filename=HOME_FILE, device_id="D1",
    )
    with db.transaction():
        logger_files.save_mapping(
            db, org=1, name="home-csv", mapping=ColumnMapping.from_dict(MAPPING).to_dict(), actor="t"
        )
        cert = CalibrationCertificate(
            performed_on=date(2026, 1, 5), due_on=date(2027, 1, 5), laboratory="Lab A",
            certificate_number="K-1",
        )
        calibration = calibrations.add_certificate(
            db, org=1, device_id="D1", certificate=cert, pdf=PDF, actor="t"
        )
    recall = open_recall(
        db, org=1, request=RecallRequest(reason="seal defect", gtin=GTIN, lots=("A1",)), actor="qa@home.org"
    )
    with db.transaction():
        captured = capture_document(
            db, (EPCIS / "SensorDataExample13.jsonld").read_bytes(), org=1, actor="t",
            writer=file_writer(AcceptanceBounds.from_settings(settings)),
        )
    return {
        "capture": captured.capture_id,
        "alert": alert_id,
        "file": kept["id"],
        "calibration": calibration.id,
        "recall": recall.id,
        "consignee": recall.consignees[0].id,
        "assignment": ride.id,
    }


def _erp_home(db: psycopg.Connection, settings: Settings) -> int:
    """An ERP connection of the home organization and a failed delivery to it (for the retry)."""
    sealed = credentials.seal(
        settings.require_secret_key(), org_id=1, connection_id="erp-home", secret="whsec-0123456789abcdef"
    )
    erp_outbox.put_connection(
        db, org=1, connection_id="erp-home", kind="webhook", url="https://93.184.215.14/hook", options={},
        sealed_secret=sealed, events=["alert.opened"], enabled=True, actor="t",
    )
    ship_key = registry.get_shipment(db, org=1, shipment_id="S1").key
    with db.transaction():
        alerts.raise_alert(
            db,
            alerts.NewAlert(
                org_id=1, episode_key="erp1", kind="single", severity=Severity.ALARM, message="above 8 °C",
                started_at=datetime.now(UTC), shipment_key=ship_key,
            ),
        )
    row = db.execute("UPDATE erp_deliveries SET state = 'failed' RETURNING id").fetchone()
    assert row is not None
    return int(row[0])


def _request(method: str, path: str, who: str, ids: dict[str, Any], tokens: dict[str, Any]) -> dict[str, Any]:
    """Path values and a valid body for one call (a body that fails validation would hide the
    permission check behind a 422)."""
    values = {
        "device_id": "D1",
        "shipment_id": "S1",
        "profile_id": "2-8C",
        "gtin": GTIN,
        "lot": "A1",
        "alert_id": ids["alert"],
        "contact_id": "c-home",
        "policy_id": f"p-{who}",
        "user_id": ids["other_user"],
        "key_id": ids["keys"][who],
        "organization": f"p-{who}",
        "file_id": ids["file"],
        "calibration_id": ids["calibration"],
        "recall_id": ids["recall"],
        "consignee_id": ids["consignee"],
        "capture_id": ids["capture"],
        "name": "home-csv",
        "gln": GLN,
        "assignment_id": ids["assignment"],
        "connection_id": "erp-home",
        "delivery_id": ids["erp_delivery"],
    }
    if "/versions" in path:  # a custom profile of the home organization: v1 approved, v2 a draft
        values.update(profile_id="custom-home", version=2 if path.endswith("/approve") else 1)
    url = path.format(**values)
    body: Any = None
    data: Any = None
    params: dict[str, str] = {}
    files: Any = None
    content: bytes | None = None
    headers: dict[str, str] = {}
    if (method, path) == ("GET", "/api/v1/lots"):
        params = {"id": f"https://id.gs1.org/01/{GTIN}/10/A1"}
    elif (method, path) == ("POST", "/api/v1/evidence/verify"):  # not genuine: 200, authentic false
        files = {"file": ("report.pdf", b"%PDF-1.4\n%%EOF\n", "application/pdf")}
    elif (method, path) == ("POST", "/api/v1/gs1/parse"):
        body = {"data": f"(01){GTIN}(10)A1"}
    elif (method, path) == ("POST", "/api/v1/epcis/capture"):  # no loggers in it: any organization's
        content = (EPCIS / "SensorDataExample14.jsonld").read_bytes()
        headers = {"Content-Type": "application/ld+json"}
    elif (method, path) == ("POST", "/api/v1/imports"):
        params = {"kind": "sites"}
        content = b"gln,name\n9520123456788,DC North\n"
        headers = {"Content-Type": "text/csv"}
    elif (method, path) == ("POST", "/api/v1/devices/{device_id}/calibrations"):
        data = {
            "performed_on": "2026-01-05", "due_on": "2027-01-05", "laboratory": "Lab A",
            "certificate_number": f"C-{who}",
        }
        files = {"certificate": ("cert.pdf", PDF, "application/pdf")}
    elif (method, path) == ("PUT", "/api/v1/devices/{device_id}/config"):
        body = {"interval_s": 120}
    elif (method, path) == ("POST", "/api/v1/logger-files"):
        data = {"device": f"F-{who}"}
        files = {"file": (WALK_FILE, (LOGGERS / WALK_FILE).read_bytes(), "text/plain")}
    elif (method, path) == ("PUT", "/api/v1/logger-files/mappings/{name}"):
        url = path.format(name=f"m-{who}")
        body = MAPPING
    elif (method, path) == ("POST", "/api/v1/recalls"):
        body = {"reason": f"seal defect ({who})", "classification": "II", "gtin": GTIN, "lots": ["A1"]}
    elif path.endswith("/acknowledge"):
        body = {"quarantined": 1}
    elif (method, path) == ("POST", "/api/v1/recalls/{recall_id}/close"):
        body = {"comment": "all units back", "signature": signature("approval")}
    elif (method, path) == ("POST", "/api/v1/devices"):
        body = {"id": f"M-{who}"}
    elif (method, path) == ("POST", "/api/v1/shipments"):
        body = {"id": f"S-{who}", "lots": [{"gtin": GTIN, "lot": f"L-{who}"}]}
    elif (method, path) == ("POST", "/api/v1/profiles"):
        body = {
            "id": f"custom-{who}",
            "name": "Custom 2-8",
            "limits": [{"id": "H1", "side": "high", "threshold_c": 8.0, "single_event_delay_s": 1800}],
        }
    elif (method, path) == ("POST", "/api/v1/shipments/{shipment_id}/shares"):
        body = {"organization": f"p-{who}", "scope": ["readings"]}
    elif path.endswith("/approve"):
        body = {"signature": signature("approval")}
    elif path.endswith("/rollback"):
        body = {"reason": f"restore v1 ({who})"}
    elif path.endswith("/profile"):
        body = {"profile": "15-25C"}
    elif (method, path) == ("POST", "/api/v1/shipments/{shipment_id}/devices"):
        hour = PRINCIPALS.index(who)
        body = {"id": "D1", "from": f"2026-06-01T{hour:02d}:00:00Z", "to": f"2026-06-01T{hour:02d}:30:00Z"}
    elif path.endswith("/disposition"):
        body = {
            "disposition": "quarantine", "comment": f"hold ({who})", "signature": signature("responsibility")
        }
    elif path.endswith("/credits"):
        body = {"seconds": 60, "reason": "study SR-1", "signature": signature("approval")}
    elif path.endswith(("/ack", "/resolve", "/reopen")):
        body = {"comment": who}
    elif path.endswith("/close"):
        body = {"disposition": "release", "comment": "ok", "signature": signature()}
    elif path.endswith("/assign"):
        body = {"assignee": who}
    elif (method, path) == ("PUT", "/api/v1/notify/contacts/{contact_id}"):
        url = path.format(contact_id=f"c-{who}")
        body = {"name": "Night desk", "email": "desk@example.com"}
    elif path.endswith("/policies/{policy_id}"):
        body = {"tiers": [{"delay_s": 0, "channels": ["email"], "roles": ["logistics"]}]}
    elif (method, path) == ("PUT", "/api/v1/notify/routing-rules"):
        body = {"rules": []}
    elif (method, path) == ("PUT", "/api/v1/erp/connections/{connection_id}"):
        url = path.format(connection_id=f"erp-{who}")
        body = {"kind": "webhook", "url": "https://93.184.215.14/hook", "secret": "whsec-0123456789abcdef"}
    elif path.endswith("/reference"):
        body = {"erp_ref": f"WH/OUT/{who}"}
    elif path.endswith("/auth/token"):
        data = {"username": "tenant@acme.org" if who == "tenant" else f"{who}@home.org", "password": PASSWORD}
    elif path.endswith(("/auth/refresh", "/auth/logout")):
        body = {"refresh_token": tokens[who]["refresh_token"] if who in tokens else "ccr_unknown"}
    elif (method, path) == ("POST", "/api/v1/users"):
        body = {"email": f"new-{who}@home.org", "name": "New", "roles": ["viewer"], "password": PASSWORD}
    elif (method, path) == ("POST", "/api/v1/products"):
        body = {"gtin": _numbered(f"0950601{PRINCIPALS.index(who):05d}"), "name": f"Product of {who}"}
    elif (method, path) == ("POST", "/api/v1/sites"):
        body = {"gln": _numbered(f"95201200{PRINCIPALS.index(who):04d}"), "name": f"Site of {who}"}
    elif (method, path) == ("POST", "/api/v1/products/{gtin}/lots"):
        body = {"lot": f"L2-{who}"}
    elif (method, path) == ("POST", "/api/v1/shipments/{shipment_id}/assignments"):
        day = PRINCIPALS.index(who) + 3
        body = {"device": "D1", "from": f"2026-11-{day:02d}T00:00:00Z", "to": f"2026-11-{day:02d}T12:00:00Z"}
    elif method == "PATCH":
        headers = {"If-Match": "*"}  # master-data edits need it; the others ignore it
        body = {
            "/api/v1/products/{gtin}/lots/{lot}": {"quantity": 11},
            "/api/v1/shipments/{shipment_id}": {"carrier": f"Carrier of {who}"},
            "/api/v1/assignments/{assignment_id}": {"reason": f"checked by {who}"},
        }.get(path, {"name": f"Renamed by {who}"})
    elif path.endswith("/me/password"):  # the same password again: refused by policy (422), not by role
        body = {"current_password": PASSWORD, "new_password": PASSWORD}
    elif path.endswith("/totp"):
        body = {"password": PASSWORD, "enable": False}
    elif (method, path) == ("POST", "/api/v1/api-keys"):
        body = {"name": f"k-{who}", "role": "viewer"}
    elif path.endswith("/audit/report"):
        params = {"entity": "alert", "id": str(ids["alert"])}
    elif (method, path) == ("POST", "/api/v1/organizations"):
        body = {"id": f"org-{who}", "name": "Org"}
    elif path.endswith("/readings"):
        params = {"bucket": "1h"}
    return {
        "method": method, "url": url, "json": body, "data": data, "params": params,
        "files": files, "content": content, "headers": headers,
    }


def _numbered(body: str) -> str:
    """A GTIN-14 or GLN: the digits and their check digit."""
    return body + str(gtin_check_digit(body))


def _send(client: TestClient, call: dict[str, Any], auth_headers: dict[str, str]) -> Any:
    return client.request(
        call["method"],
        call["url"],
        json=call["json"],
        data=call["data"],
        params=call["params"],
        files=call["files"],
        content=call["content"],
        headers={**call["headers"], **auth_headers},
    )


@pytest.fixture
def world(
    db_dsn: str, db: psycopg.Connection, tmp_path: Path
) -> Iterator[tuple[TestClient, dict[str, Any], dict[str, Any]]]:
    # The data folder (signing key, spooled uploads) in the test's own folder, not the checkout's.
    settings = Settings(database_url=db_dsn, data_dir=tmp_path / "data")
    ids = _home(db, settings)
    db.execute(
        "INSERT INTO notify_contacts (org_id, id, name, email) VALUES (1, 'c-home', 'Desk', 'd@example.com')"
    )
    ids["erp_delivery"] = _erp_home(db, settings)
    tenant = auth.create_organization(db, "acme", "Acme")
    for who in PRINCIPALS:  # a partner organization per caller, for sharing and unsharing
        auth.create_organization(db, f"p-{who}", f"Partner of {who}")
    for role in ROLES:
        make_user(db, f"{role}@home.org", [role])
    make_user(db, "tenant@acme.org", ["admin"], org=tenant)
    ids["other_user"] = make_user(db, "someone@home.org", ["viewer"]).id
    with (
        open_pool(db_dsn, max_size=4) as pool,
        TestClient(create_app(settings, pool=pool)) as client,
    ):
        tokens = {who: login(client, f"{who}@home.org") for who in ROLES}
        tokens["tenant"] = login(client, "tenant@acme.org")
        # One API key per principal, for the DELETE route (so one caller's revoke is not another's 404).
        admin = {"Authorization": f"Bearer {tokens['admin']['access_token']}"}
        ids["keys"] = {
            who: client.post(
                "/api/v1/api-keys", json={"name": f"del-{who}", "role": "viewer"}, headers=admin
            ).json()["id"]
            for who in PRINCIPALS
        }
        yield client, ids, tokens


def _expected(who: str, allowed: frozenset[str] | str, record: bool) -> str:
    if allowed == PUBLIC:
        return "allowed"
    if who == "tenant":
        if allowed == "platform":
            return "404"
        assert isinstance(allowed, frozenset)
        if "admin" not in allowed:
            return "403"  # the role may not do this anywhere: nothing about the record is revealed
        return "404" if record else "allowed"
    if allowed == "platform":
        return "allowed" if who == "admin" else "404"
    assert isinstance(allowed, frozenset)
    return "allowed" if who in allowed else "403"


def _outcome(status: int) -> str:
    if status in (401, 403, 404):
        return str(status)
    return "allowed"


def _document_routes() -> set[tuple[str, str]]:
    doc = create_app(Settings(database_url="postgresql://unused.invalid/schema-only")).openapi()
    return {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}


def test_every_route_of_the_document_has_a_row() -> None:
    """A route added to the API (by any branch) must get a row in MATRIX above: who may call it
    and whether it names a record. This fails naming each route without one."""
    routes = _document_routes()
    missing = sorted(routes - set(MATRIX), key=lambda r: (r[1], r[0]))
    stale = sorted(set(MATRIX) - routes, key=lambda r: (r[1], r[0]))
    problems = []
    if missing:
        problems.append(
            "routes in the OpenAPI document without a row in MATRIX (tests/test_authorization_matrix.py);"
            " add `(METHOD, PATH): (allowed roles, names a record?)` for each, and a request body in"
            " _request() if it takes one:\n"
            + "\n".join(f"    (\"{m}\", \"{p}\")" for m, p in missing)
        )
    if stale:
        problems.append(
            "rows in MATRIX for routes the document no longer has (remove them):\n"
            + "\n".join(f"    (\"{m}\", \"{p}\")" for m, p in stale)
        )
    assert not problems, "\n".join(problems)


def test_every_route_with_every_role(world: tuple[TestClient, dict[str, Any], dict[str, Any]]) -> None:
    client, ids, tokens = world
    schema = client.get("/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    missing = sorted(routes - set(MATRIX))
    assert not missing, f"routes without a row in MATRIX (see the test above): {missing}"
    mismatches: list[str] = []
    allowed_answers: list[str] = []
    answered = 0
    # Refresh, then logout, last: they retire the tokens the other calls use.
    # Alert actions in lifecycle order, so the signed close is reached in the resolved state.
    last = {"/api/v1/auth/refresh": 10, "/api/v1/auth/logout": 11}
    lifecycle = {"/ack": 1, "/assign": 2, "/resolve": 3, "/close": 4, "/reopen": 5}
    order = sorted(
        MATRIX,
        key=lambda r: (
            last.get(r[1], 9 if r[0] == "DELETE" else 0),  # deletions after the reads of the record
            next((v for k, v in lifecycle.items() if r[1].endswith(k)), 0),
            r[1],
            r[0],
        ),
    )
    for method, path in order:
        if (method, path) not in routes:
            continue  # a stale row: reported by test_every_route_of_the_document_has_a_row
        allowed, record = MATRIX[(method, path)]
        for who in PRINCIPALS:
            call = _request(method, path, who, ids, tokens)
            headers = {} if allowed == PUBLIC else {"Authorization": f"Bearer {tokens[who]['access_token']}"}
            res = _send(client, call, headers)
            answered += 1
            want, got = _expected(who, allowed, record), _outcome(res.status_code)
            if got == "allowed":
                allowed_answers.append(f"{res.status_code} {method} {path} {who}")
            if want != got:
                mismatches.append(
                    f"{method} {path} as {who}: expected {want}, got {res.status_code} {res.text[:120]}"
                )
    assert not mismatches, "\n".join(mismatches)
    assert answered == len(routes) * len(PRINCIPALS)
    # The bodies are valid, so an allowed call mostly succeeds (the rest are state conflicts such as
    # a second acknowledge, or a credit larger than the time spent).
    failed = [a for a in allowed_answers if not a.startswith("2")]
    assert len(failed) <= len(allowed_answers) // 5, failed


def test_every_route_but_the_public_ones_needs_a_token(
    world: tuple[TestClient, dict[str, Any], dict[str, Any]],
) -> None:
    client, ids, tokens = world
    for (method, path), (allowed, _) in MATRIX.items():
        if allowed == PUBLIC:
            continue
        call = _request(method, path, "admin", ids, tokens)
        res = _send(client, call, {})
        assert res.status_code == 401, f"{method} {path}: {res.status_code}"
