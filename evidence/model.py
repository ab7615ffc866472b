"""The evidence of a lot, a shipment or an excursion: what it covers and every number in it.

Every figure comes from one evaluation by the rules (`rules.lot_figures`): per logger the
engine's time beyond each limit and its excursions, MKT over the trip and the USP <1079.2>
windows; per lot the worst-logger sums and the stability budget. The formats (JSON, CSV, EPCIS,
PDF) only render this object; none of them computes a figure of its own.

Readings stay numpy arrays (about 30 bytes a reading), so a lot of a million readings is held
once, and every format streams its text from them chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import psycopg

from coldchain import __version__
from coldchain.alarm_profile import AlarmProfile
from coldchain.calibration import CalibrationStatus, periods_over, worst
from coldchain.disposition import CBV_DISPOSITION, LotState
from coldchain.domain import Alert
from coldchain.errors import NotFoundError
from coldchain.gs1 import digital_link, normalize_gtin
from rules.lot_figures import (
    Leg,
    LoggerFigures,
    LoggerSeries,
    LotFigures,
    labelled_range,
    lot_figures,
)
from storage import alerts, calibrations, lot_budget, lot_dispositions, profiles, registry, signatures
from storage import evidence as store
from storage.readings import FLAG_DOOR_OPEN

SubjectKind = Literal["lot", "shipment", "excursion"]
CONTEXT_MS = 2 * 3600 * 1000  # an excursion's report lists readings from 2 h before to 2 h after


@dataclass(frozen=True, slots=True)
class LoggerEvidence:
    """One logger on one leg: its registry facts, its readings and the engine's figures."""

    device: store.LoggerOnLeg
    series: store.SeriesArrays
    figures: LoggerFigures | None  # None when the logger sent nothing on this leg
    listed: slice  # the readings the report lists (all, or an excursion's window)
    calibration: dict[str, Any] | None = None  # the certificates in force during the listed readings


@dataclass(frozen=True, slots=True)
class LegEvidence:
    leg: store.LegRow
    profile: AlarmProfile
    loggers: tuple[LoggerEvidence, ...]
    excursions: tuple[dict[str, Any], ...]
    worst_logger: str | None


@dataclass(frozen=True, slots=True)
class Evidence:
    kind: SubjectKind
    subject: dict[str, Any]
    legs: tuple[LegEvidence, ...]
    figures: dict[str, Any]
    profiles: dict[str, dict[str, Any]]  # "id vN" -> the body as frozen
    generated_at: datetime
    platform_version: str = __version__
    signatures: tuple[dict[str, Any], ...] = ()
    disposition: dict[str, Any] | None = None
    org_id: int = 1
    alert_id: int | None = None
    shipment_keys: tuple[int, ...] = field(default=())

    @property
    def readings(self) -> int:
        return sum(lg.listed.stop - lg.listed.start for leg in self.legs for lg in leg.loggers)

    @property
    def title(self) -> str:
        s = self.subject
        if self.kind == "lot":
            return f"Lot {s['lot']} (GTIN {s['gtin']})"
        if self.kind == "shipment":
            return f"Shipment {s['shipment']}"
        return f"Excursion {s['alert']} on shipment {s['shipment']}"

    @property
    def file_stem(self) -> str:
        s = self.subject
        raw = {
            "lot": f"lot-{s.get('gtin')}-{s.get('lot')}",
            "shipment": f"shipment-{s.get('shipment')}",
            "excursion": f"excursion-{s.get('alert')}",
        }[self.kind]
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in raw)


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def _alert_doc(a: Alert, events: list[dict[str, Any]], sent: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "severity": a.severity.value,
        "state": a.state.value,
        "device": a.device_id,
        "shipment": a.shipment_id,
        "limit": a.limit_id,
        "profile": None if a.profile_id is None else f"{a.profile_id} v{a.profile_version}",
        "message": a.message,
        "started_at": _iso(a.started_at),
        "ended_at": _iso(a.ended_at),
        "peak_c": a.peak_c,
        "opened_at": _iso(a.opened_at),
        "acknowledged_at": _iso(a.acknowledged_at),
        "acknowledged_by": a.acknowledged_by,
        "resolved_at": _iso(a.resolved_at),
        "closed_at": _iso(a.closed_at),
        "disposition": a.disposition.value if a.disposition else None,
        "lifecycle": [{k: _iso(v) for k, v in e.items()} for e in events],
        "notifications": [{k: _iso(v) for k, v in n.items()} for n in sent],
        "signatures": [],
    }


def _logger_series(series: store.SeriesArrays, device_id: str) -> LoggerSeries:
    rh = series.rh.astype(np.float64)
    return LoggerSeries(
        device_id,
        series.t_ms,
        series.c.astype(np.float64),
        rh if bool(np.isfinite(rh).any()) else None,
        (series.flags & FLAG_DOOR_OPEN) != 0,
        series.judged,
        series.logger_started_ms,
    )


def _profile_doc(profile: AlarmProfile) -> dict[str, Any]:
    high, low = labelled_range(profile)
    return {**profile.to_dict(), "labelled_range": {"high_limit": high, "low_limit": low}}


_Loaded = tuple[store.LegRow, AlarmProfile, list[tuple[store.LoggerOnLeg, store.SeriesArrays]]]


def _load_legs(
    conn: psycopg.Connection, *, org: int, shipment_keys: list[int]
) -> tuple[list[_Loaded], list[Leg]]:
    """Each leg with its profile and loggers' readings (door data included), and the same as
    the rules' `Leg`s."""
    loaded: list[_Loaded] = []
    rule_legs: list[Leg] = []
    for row in store.legs(conn, org=org, shipment_keys=shipment_keys):
        profile = profiles.resolve_version(
            conn, org=org, profile_id=row.profile_id, version=row.profile_version
        )
        seen: dict[str, tuple[store.LoggerOnLeg, store.SeriesArrays]] = {}
        for dev in row.loggers:
            if dev.device_id not in seen:  # a logger assigned twice to one shipment: one series
                seen[dev.device_id] = (
                    dev, store.series(conn, shipment_key=row.shipment_key, device_key=dev.device_key)
                )
        series = list(seen.values())
        loaded.append((row, profile, series))
        rule_legs.append(
            Leg(row.shipment_id, profile, tuple(_logger_series(s, d.device_id) for d, s in series))
        )
    return loaded, rule_legs


def lot_figures_of(conn: psycopg.Connection, *, org: int, rec: registry.LotRecord) -> LotFigures:
    """A lot's figures from the readings as the rules see them (door data included), for the
    lot page and the budget credit: the same numbers as the evidence and `lot_budget_state`."""
    _, rule_legs = _load_legs(conn, org=org, shipment_keys=list(rec.shipment_keys))
    return lot_figures(rule_legs, stability_budget_s=rec.stability_budget_s)


_DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)


def _signed(
    conn: psycopg.Connection, org: int, entity: str, key: str, rec: dict[str, Any]
) -> list[dict[str, Any]]:
    """A signed record's signatures as evidence prints them, each checked against the record now."""
    return [
        {k: _iso(v) for k, v in sig.public().items()}
        for sig in signatures.for_record(conn, org=org, entity=entity, key=key, current_record=rec)
    ]


def _calibration_doc(
    conn: psycopg.Connection,
    org: int,
    records: list[calibrations.CalibrationRecord],
    t_ms: np.ndarray,
    rode_from: datetime,
    override: calibrations.OverrideRow | None,
) -> dict[str, Any]:
    """Per logger: each certificate in force over the listed readings' days, the status it gave
    on those days (calibrated, due soon, overdue, never), and QA's override of the assignment."""
    if t_ms.size:
        day_numbers, counts = np.unique(t_ms // _DAY_MS, return_counts=True)
        days = [(_EPOCH + timedelta(days=int(d)), int(n)) for d, n in zip(day_numbers, counts, strict=True)]
    else:
        days = [(rode_from.astimezone(UTC).date(), 0)]
    by_cert = {id(r.certificate): r for r in records}
    periods = periods_over([r.certificate for r in records], days)
    status = worst([p.status for p in periods])
    doc_periods = []
    for p in periods:
        rec = None if p.certificate is None else by_cert[id(p.certificate)]
        doc_periods.append({
            "from": p.first_day.isoformat(),
            "to": p.last_day.isoformat(),
            "readings": p.readings,
            "status": p.status.value,
            "certificate": None if rec is None else {
                "id": rec.id,
                "certificate_number": rec.certificate.certificate_number,
                "laboratory": rec.certificate.laboratory,
                "performed_on": rec.certificate.performed_on.isoformat(),
                "due_on": rec.certificate.due_on.isoformat(),
            },
        })
    return {
        "status": None if status is None else status.value,
        "readings_out_of_calibration": sum(
            p.readings for p in periods if p.status is CalibrationStatus.OVERDUE
        ),
        "periods": doc_periods,
        "override": None if override is None else {
            **{k: _iso(v) for k, v in override.public().items()},
            "signatures": _signed(
                conn, org, "calibration_override", str(override.id), override.signed_record()
            ),
        },
    }


def disposition_doc(conn: psycopg.Connection, *, org: int, gtin: str, lot: str) -> dict[str, Any]:
    """A lot's disposition as evidence shows it: the state (and its CBV 2.0 disposition) and every
    decision with its signatures, checked against the stored decision."""
    decisions = lot_dispositions.history(conn, org=org, gtin=gtin, lot=lot)
    state = LotState(decisions[-1].state) if decisions else LotState.PENDING
    return {
        "state": state.value,
        "cbv_disposition": CBV_DISPOSITION.get(state),
        "history": [
            {
                "id": d.id,
                "state": d.state,
                "previous": d.previous,
                "cbv_disposition": CBV_DISPOSITION[LotState(d.state)],
                "comment": d.comment,
                "decided_by": d.decided_by,
                "decided_at": _iso(d.decided_at),
                "signatures": _signed(conn, org, "lot_disposition", str(d.id), d.signed_record()),
            }
            for d in decisions
        ],
    }


def _build(
    conn: psycopg.Connection,
    *,
    org: int,
    shipment_keys: list[int],
    stability_budget_s: float | None,
    window: tuple[int, int] | None = None,
    only_alert: int | None = None,
    partner: bool = False,
) -> tuple[list[LegEvidence], LotFigures, dict[str, dict[str, Any]]]:
    loaded, rule_legs = _load_legs(conn, org=org, shipment_keys=shipment_keys)
    in_force = {f"{p.id} v{p.version}": _profile_doc(p) for _, p, _ in loaded}
    figures = lot_figures(rule_legs, stability_budget_s=stability_budget_s)

    alert_rows = alerts.list_alerts(conn, org=org, shipment_keys=shipment_keys, limit=10_000)
    if only_alert is not None:
        alert_rows = [a for a in alert_rows if a.id == only_alert]
    ids = [a.id for a in alert_rows]
    events = store.alert_events(conn, alert_ids=ids)
    # Who of the owner's staff was told, and at which number, is the owner's: not a partner's.
    sent = {} if partner else store.notifications_sent(conn, alert_ids=ids)
    for a in alert_rows:  # the profile as frozen with each excursion
        if a.profile_id is not None and a.profile_version is not None:
            key = f"{a.profile_id} v{a.profile_version}"
            if key not in in_force:
                try:
                    in_force[key] = _profile_doc(profiles.resolve_version(
                        conn, org=org, profile_id=a.profile_id, version=a.profile_version))
                except NotFoundError:
                    in_force[key] = {"id": a.profile_id, "version": a.profile_version, "missing": True}

    overrides = {
        (o.shipment_key, o.device_key, o.rode_from): o
        for o in calibrations.overrides_for(conn, org=org, shipment_keys=shipment_keys)
    }
    certificates: dict[int, list[calibrations.CalibrationRecord]] = {}
    legs: list[LegEvidence] = []
    for row, profile, series in loaded:
        loggers = []
        for dev, s in series:
            listed = slice(0, len(s))
            if window is not None:
                lo, hi = np.searchsorted(s.t_ms, [window[0], window[1]], side="left")
                listed = slice(int(lo), int(hi))
            if dev.device_key not in certificates:
                certificates[dev.device_key] = calibrations.records_of(conn, dev.device_key)
            calibration = _calibration_doc(
                conn, org, certificates[dev.device_key], s.t_ms[listed], dev.rode_from,
                overrides.get((row.shipment_key, dev.device_key, dev.rode_from)),
            )
            loggers.append(
                LoggerEvidence(
                    dev, s, figures.loggers.get((row.shipment_id, dev.device_id)), listed, calibration
                )
            )
        leg_alerts = sorted(
            (a for a in alert_rows if a.shipment_id == row.shipment_id),
            key=lambda a: (a.started_at or a.opened_at, a.id),
        )
        legs.append(
            LegEvidence(
                leg=row,
                profile=profile,
                loggers=tuple(loggers),
                excursions=tuple(_alert_doc(a, events.get(a.id, []), sent.get(a.id, [])) for a in leg_alerts),
                worst_logger=figures.worst_logger.get(row.shipment_id),
            )
        )
    return legs, figures, in_force


def _lot_figures_doc(figures: LotFigures, credits: list[dict[str, Any]]) -> dict[str, Any]:
    credited = float(sum(c["seconds"] for c in credits))
    remaining = figures.stability_budget_remaining_s
    return {
        "mkt_c": figures.mkt_c,
        "time_out_of_range_s": figures.time_out_of_range_s,
        "outside_labelled_range_s": figures.outside_labelled_range_s,
        "stability_budget_s": figures.stability_budget_s,
        "stability_budget_credited_s": credited,
        "stability_budget_remaining_s": None if remaining is None else remaining + credited,
        "stability_budget_credits": [{k: _iso(v) for k, v in c.items()} for c in credits],
        "worst_logger_per_shipment": figures.worst_logger,
        "freeze_thaw_cycles": figures.freeze_thaw_cycles,
        "readings": figures.readings,
    }


def lot_evidence(
    conn: psycopg.Connection, *, org: int, gtin: str, lot: str, shared: registry.LotRecord | None = None
) -> Evidence:
    """A lot across every leg it travelled; for a partner (`shared`: the lot restricted to the
    legs shared with it) across those legs only, without QA's credits or the owner's
    notifications, and with the figures over those legs (as the partner's lot page shows them)."""
    rec = shared or registry.get_lot(conn, org=org, gtin=normalize_gtin(gtin), lot=lot)
    subject = {
        "kind": "lot",
        "gtin": rec.lot.gtin,
        "lot": rec.lot.lot,
        "expiry": None if rec.lot.expiry is None else rec.lot.expiry.isoformat(),
        "digital_link": digital_link(rec.lot.gtin, rec.lot.lot),
        "shipments": list(rec.shipments),
    }
    legs, figures, in_force = _build(
        conn, org=org, shipment_keys=list(rec.shipment_keys),
        stability_budget_s=rec.stability_budget_s, partner=shared is not None,
    )
    credits = [] if shared else lot_budget.credits(conn, org=org, gtin=rec.lot.gtin, lot=rec.lot.lot)
    return Evidence(
        kind="lot", subject=subject, legs=tuple(legs), figures=_lot_figures_doc(figures, credits),
        profiles=in_force, generated_at=datetime.now(UTC), org_id=org,
        shipment_keys=rec.shipment_keys,
        disposition=disposition_doc(conn, org=org, gtin=rec.lot.gtin, lot=rec.lot.lot),
    )


def _lots_on(
    conn: psycopg.Connection, org: int, legs: list[LegEvidence], partner: bool = False
) -> list[dict[str, Any]]:
    """Each lot carried, with its stability budget as the rules keep it for the whole journey and
    QA's disposition; for a partner without the journey's spend and credits (they add up other
    customers' legs) and without the disposition (QA's decision is the owner's)."""
    out: list[dict[str, Any]] = []
    carried = sorted({x for leg in legs for x in leg.leg.lots})
    decided = {} if partner else lot_dispositions.states(conn, org=org, lots=[(g, n) for g, n, _ in carried])
    for gtin, lot, quantity in carried:
        rec = registry.get_lot(conn, org=org, gtin=gtin, lot=lot)
        if partner:
            out.append({
                "gtin": gtin, "lot": lot, "quantity": quantity,
                "expiry": None if rec.lot.expiry is None else rec.lot.expiry.isoformat(),
                "digital_link": digital_link(gtin, lot), "stability_budget_s": rec.stability_budget_s,
                "stability_budget_spent_s": None, "stability_budget_credited_s": None,
                "stability_budget_remaining_s": None,
            })
            continue
        credits = lot_budget.credits(conn, org=org, gtin=gtin, lot=lot)
        credited = float(sum(c["seconds"] for c in credits))
        spent = store.lot_spent_s(conn, org=org, gtin=gtin, lot=lot)
        budget = rec.stability_budget_s
        out.append({
            "gtin": gtin,
            "lot": lot,
            "quantity": quantity,
            "expiry": None if rec.lot.expiry is None else rec.lot.expiry.isoformat(),
            "digital_link": digital_link(gtin, lot),
            "stability_budget_s": budget,
            "stability_budget_spent_s": spent,
            "stability_budget_credited_s": credited,
            "stability_budget_remaining_s": None if budget is None else budget + credited - (spent or 0.0),
            "disposition": decided.get((gtin, lot), LotState.PENDING.value),
        })
    return out


def shipment_evidence(
    conn: psycopg.Connection, *, org: int, shipment_id: str, partner: bool = False
) -> Evidence:
    """One shipment: its loggers, readings, excursions and the lots it carried (for a partner
    it is shared with: without the owner's notifications and the lots' journey-wide budget)."""
    key = store.shipment_key(conn, org=org, shipment_id=shipment_id)
    subject: dict[str, Any] = {"kind": "shipment", "shipment": shipment_id}
    legs, figures, in_force = _build(
        conn, org=org, shipment_keys=[key], stability_budget_s=None, partner=partner
    )
    subject["lots"] = _lots_on(conn, org, legs, partner)
    doc = _lot_figures_doc(figures, [])
    return Evidence(
        kind="shipment", subject=subject, legs=tuple(legs), figures=doc, profiles=in_force,
        generated_at=datetime.now(UTC), org_id=org, shipment_keys=(key,),
    )


def excursion_evidence(
    conn: psycopg.Connection, *, org: int, alert_id: int, partner: bool = False
) -> Evidence:
    """One excursion: its shipment's loggers judged over the whole leg (as the alert was), the
    readings from two hours before it started to two hours after it ended, its lifecycle (for a
    partner: as `shipment_evidence` leaves out)."""
    key = store.alert_shipment(conn, org=org, alert_id=alert_id)
    alert = alerts.get_alert(conn, org=org, alert_id=alert_id)
    if key is None:
        raise NotFoundError("excursion evidence (the alert has no shipment)", str(alert_id))
    start = alert.started_at or alert.opened_at
    end = alert.ended_at or alert.resolved_at or alert.closed_at
    lo = int(start.timestamp() * 1000) - CONTEXT_MS
    hi = (int(end.timestamp() * 1000) + CONTEXT_MS + 1) if end is not None else 1 << 62
    subject: dict[str, Any] = {
        "kind": "excursion", "alert": alert_id, "shipment": alert.shipment_id,
        "device": alert.device_id, "state": alert.state.value,
        "window": {"from": _iso(datetime.fromtimestamp(lo / 1000, UTC)),
                   "to": None if end is None else _iso(datetime.fromtimestamp((hi - 1) / 1000, UTC))},
    }
    legs, figures, in_force = _build(
        conn, org=org, shipment_keys=[key],
        stability_budget_s=None, window=(lo, hi), only_alert=alert_id, partner=partner,
    )
    subject["lots"] = _lots_on(conn, org, legs, partner)
    return Evidence(
        kind="excursion", subject=subject, legs=tuple(legs), figures=_lot_figures_doc(figures, []),
        profiles=in_force, generated_at=datetime.now(UTC), org_id=org, alert_id=alert_id,
        shipment_keys=(key,),
    )
