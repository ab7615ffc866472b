"""The thin runner around the pure engine: queued work in, alerts and carried state out.

Each series (one logger on one shipment) is evaluated in one transaction under an advisory lock:
the engine continues from the carried state when the new readings all come after it, and starts
over from the first reading when late data lands inside what was already evaluated — so the
result always equals one pass over the whole series (the engine's own guarantee).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import UTC, datetime

import psycopg

from coldchain.alarm_profile import AlarmProfile
from coldchain.domain import AlertState, Severity
from coldchain.excursion import Excursion, ExcursionKind
from rules.engine import RELEASE, EngineState, SensorSeries, evaluate
from rules.lot_figures import delta_h_over_r, labelled_range
from rules.mkt import MktAccumulator
from storage import alerts, device_state, lot_budget, profiles, rule_queue, series_state
from storage.alerts import NewAlert
from storage.rule_queue import SeriesWork

log = logging.getLogger(__name__)
RULES_ACTOR = "rules"


@dataclass(slots=True)
class RunStats:
    """What evaluations did: one drain's counts, or a service's running totals (`merge`)."""

    series: int = 0
    readings: int = 0
    reevaluated: int = 0
    alerts_opened: int = 0
    alerts_resolved: int = 0
    alerts_withdrawn: int = 0
    lots_refreshed: int = 0

    def merge(self, other: RunStats) -> None:
        """Add `other`'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _utc(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def series_prefix(shipment_key: int, device_key: int) -> str:
    """The start every excursion episode key of one series shares."""
    return f"x:{shipment_key}:{device_key}:"


def episode_key(shipment_key: int, device_key: int, excursion: Excursion) -> str:
    kind, limit, start = excursion.key
    return f"{series_prefix(shipment_key, device_key)}{kind}:{limit}:{start}"


def describe(excursion: Excursion, profile: AlarmProfile, device_id: str | None) -> str:
    """A sentence a dispatcher understands at 3 a.m."""
    limit = next((x for x in profile.limits if x.id == excursion.limit_id), None)
    since = _utc(excursion.start_ms)
    when = since.strftime("%Y-%m-%d %H:%M UTC") if since else "?"
    who = f"{device_id}: " if device_id else ""
    minutes = round(excursion.duration_s / 60)
    if excursion.kind is ExcursionKind.SINGLE and limit is not None:
        word = "above" if limit.side == "high" else "below"
        return (
            f"{who}{word} {limit.threshold_c:g} °C ({limit.id}) for {minutes} min since {when},"
            f" peak {excursion.peak_value:.1f} °C"
        )
    if excursion.kind is ExcursionKind.CUMULATIVE:
        return f"{who}cumulative time beyond {excursion.limit_id} reached {minutes} min (budget spent)"
    if excursion.kind is ExcursionKind.MKT:
        return f"{who}mean kinetic temperature {excursion.peak_value:.2f} °C over {excursion.limit_id}"
    if excursion.kind is ExcursionKind.RATE:
        return f"{who}temperature changing {excursion.peak_value:.2f} °C/min since {when}"
    if excursion.kind is ExcursionKind.DOOR:
        return f"{who}door open for {minutes} min since {when} (allowed {profile.door_open_max_min} min)"
    if excursion.kind is ExcursionKind.LIGHT:
        return f"{who}light inside the box outside its allowed hours since {when}: the box was opened"
    if excursion.kind is ExcursionKind.SHOCK:
        return f"{who}shock of {excursion.peak_value:.1f} g at {when} (limit {profile.shock_max_g:g} g)"
    if excursion.kind is ExcursionKind.HUMIDITY:
        return f"{who}humidity {excursion.peak_value:.0f} % beyond {excursion.limit_id} since {when}"
    return f"{who}{excursion.kind.value} excursion {excursion.limit_id} since {when}"


def _apply(
    conn: psycopg.Connection,
    work: SeriesWork,
    profile: AlarmProfile,
    excursions: list[Excursion],
    stats: RunStats,
) -> None:
    if not excursions:
        return
    device_id = device_state.device_id(conn, work.device_key)
    for excursion in excursions:
        key = episode_key(work.shipment_key, work.device_key, excursion)
        alert_id, opened = alerts.raise_alert(
            conn,
            NewAlert(
                org_id=work.org_id,
                episode_key=key,
                kind=excursion.kind.value,
                severity=excursion.tier,
                message=describe(excursion, profile, device_id),
                device_key=work.device_key,
                shipment_key=work.shipment_key,
                limit_id=excursion.limit_id,
                profile_id=profile.id,
                profile_version=profile.version,
                started_at=_utc(excursion.start_ms),
                ended_at=_utc(excursion.end_ms),
                peak_c=excursion.peak_value,
            ),
        )
        if opened:
            stats.alerts_opened += 1
            log.info("alert %d opened: %s", alert_id, key, extra={"device": device_id, "alert": alert_id})
        else:
            state = alerts.update_episode(
                conn, alert_id, ended_at=_utc(excursion.end_ms), peak_c=excursion.peak_value
            )
            # A withdrawn episode the readings show again: after a pass over the whole series, or
            # an ordinary pass over readings that came back (a corrected assignment undone joins
            # them after the series' last reading, so the series is not evaluated from its start).
            if state is AlertState.WITHDRAWN:
                alerts.transition(
                    conn, org=work.org_id, alert_id=alert_id, action="reinstate", actor=RULES_ACTOR,
                    comment="supported again by the readings after a re-evaluation",
                )
                stats.alerts_opened += 1
        if excursion.resolved_ms is not None:
            current = alerts.get_alert(conn, org=work.org_id, alert_id=alert_id)
            if current.state in (AlertState.OPEN, AlertState.ACKNOWLEDGED):
                back = _utc(excursion.resolved_ms)
                alerts.transition(
                    conn,
                    org=work.org_id,
                    alert_id=alert_id,
                    action="resolve",
                    actor=RULES_ACTOR,
                    comment=f"back within limits (hysteresis held) at {back:%Y-%m-%d %H:%M UTC}"
                    if back
                    else "back within limits",
                )
                stats.alerts_resolved += 1


def withdraw_unsupported(
    conn: psycopg.Connection, work: SeriesWork, excursions: list[Excursion], stats: RunStats
) -> None:
    """After a pass over the whole series (late data landed inside what was evaluated, or a
    corrected assignment moved readings in or out), withdraw the alerts of episodes the readings
    no longer show.

    Back-filled readings can fill a gap that looked like a warm hour, or move an episode's start
    (a new key: the new episode is raised, the old one withdrawn). A series whose readings all
    left is called with no excursions: every alert it had is withdrawn. A closed alert carries
    QA's signature and stays closed; its history records that the readings no longer support it.
    """
    supported = {episode_key(work.shipment_key, work.device_key, x) for x in excursions}
    prefix = series_prefix(work.shipment_key, work.device_key)
    for key, (alert_id, state) in alerts.series_alerts(conn, org_id=work.org_id, prefix=prefix).items():
        if key in supported or state is AlertState.WITHDRAWN:
            continue
        reason = (
            "superseded by late data or corrected readings:"
            " a re-evaluation of the series no longer finds this excursion"
        )
        if state is AlertState.CLOSED:
            alerts.note(conn, org=work.org_id, alert_id=alert_id, actor=RULES_ACTOR, action="unsupported",
                        comment=reason)
            continue
        alerts.transition(
            conn, org=work.org_id, alert_id=alert_id, action="withdraw", actor=RULES_ACTOR, comment=reason
        )
        stats.alerts_withdrawn += 1
        log.info("alert %d withdrawn: %s", alert_id, key, extra={"alert": alert_id})


def at_rest(profile: AlarmProfile, state: EngineState) -> bool:
    """Every rule back inside its limits with no episode open: only a reading near a limit (or
    late data) can change an alert for this series now."""
    if profile.rate_of_change_c_per_min is not None:
        return False  # a steep change anywhere in the range matters
    return all(sig.open is None and sig.last_class == RELEASE for sig in state.signals.values())


def hot_thresholds(profile: AlarmProfile) -> tuple[float | None, float | None, float | None, float | None]:
    """(°C high, °C low, %RH high, %RH low): a reading at or beyond one needs the engine at once.

    They are the innermost limits moved inwards by the hysteresis, so a reading in the release
    band of any limit still counts as near it.
    """
    highs = [x.threshold_c for x in profile.limits if x.side == "high"]
    lows = [x.threshold_c for x in profile.limits if x.side == "low"]
    rh_highs = [x.threshold_pct for x in profile.humidity_limits if x.side == "high"]
    rh_lows = [x.threshold_pct for x in profile.humidity_limits if x.side == "low"]
    h, hh = profile.hysteresis_c, profile.humidity_hysteresis_pct
    return (
        min(highs) - h if highs else None,
        max(lows) + h if lows else None,
        min(rh_highs) - hh if rh_highs else None,
        max(rh_lows) + hh if rh_lows else None,
    )


def evaluate_many(conn: psycopg.Connection, work: list[SeriesWork], stats: RunStats) -> None:
    """Evaluate many series with a fixed number of queries: lock all, read all states and all new
    readings at once, run the engine per series, store all states at once."""
    by_key = {(w.shipment_key, w.device_key): w for w in work}
    contexts = series_state.lock_and_load(conn, list(by_key))
    after: dict[tuple[int, int], int | None] = {}
    until: dict[tuple[int, int], int] = {}
    states: dict[tuple[int, int], EngineState | None] = {}
    restarted: set[tuple[int, int]] = set()  # series evaluated again from their first reading
    fresh: set[tuple[int, int]] = set()  # series evaluated from their first reading (new or again)
    mkts: dict[tuple[int, int], MktAccumulator | None] = {}
    for key, item in by_key.items():
        ctx = contexts[key]
        state = EngineState.from_dict(ctx.state) if ctx.state is not None else None
        restart = state is None or (state.last_ms is not None and item.from_ms <= state.last_ms)
        if restart and state is not None:
            stats.reevaluated += 1
            restarted.add(key)
        states[key] = fresh_state(state, ctx.logger_started_ms) if restart else state
        if restart:
            fresh.add(key)
        # The running MKT continues with the engine state, and starts over with it.
        mkts[key] = None if restart or ctx.mkt_acc is None else MktAccumulator.from_dict(ctx.mkt_acc)
        after[key] = None if restart or state is None else state.last_ms
        # Up to the claimed work's end, and over everything evaluated before when starting over.
        done = state.last_ms if state is not None and state.last_ms is not None else item.to_ms
        until[key] = max(item.to_ms, done)
    fetched = series_state.readings_of_many(conn, after, until)
    saved: list[series_state.SeriesStateRow] = []
    spending: set[int] = set()  # shipments whose lots' budgets moved
    for key, (a, b) in fetched.ranges().items():
        item, ctx = by_key[key], contexts[key]
        profile = profiles.resolve_version(
            conn, org=item.org_id, profile_id=ctx.profile_id, version=ctx.profile_version
        )
        series = SensorSeries(
            times_ms=fetched.times_ms[a:b],
            temps_c=fetched.temps_c[a:b],
            rh_pct=fetched.rh_pct[a:b],
            door_open=fetched.door_open[a:b],
            light=fetched.light[a:b],
            shock_g=fetched.shock_g[a:b],
            low_c=None if fetched.judged is None else fetched.judged[0][a:b],
            high_c=None if fetched.judged is None else fetched.judged[1][a:b],
        )
        result = evaluate(series, profile, states[key])
        stats.readings += b - a
        _apply(conn, item, profile, result.excursions, stats)
        if key in restarted:
            withdraw_unsupported(conn, item, result.excursions, stats)
        high_c, low_c, high_rh, low_rh = hot_thresholds(profile)
        outside = outside_labelled_range_s(profile, result.state)
        mkt = running_mkt(mkts[key], key in fresh, profile, series)
        if outside != ctx.outside_s:
            spending.add(item.shipment_key)
        saved.append(
            series_state.SeriesStateRow(
                org_id=item.org_id,
                shipment_key=item.shipment_key,
                device_key=item.device_key,
                profile_id=profile.id,
                profile_version=profile.version,
                state=result.state.to_dict(),
                last_ms=result.state.last_ms,
                at_rest=at_rest(profile, result.state),
                hot_high_c=high_c,
                hot_low_c=low_c,
                hot_high_rh=high_rh,
                hot_low_rh=low_rh,
                outside_s=outside,
                mkt_acc=None if mkt is None else mkt.to_dict(),
                mkt_log_mean=None if mkt is None else mkt.log_mean()[0],
                mkt_w_ms=None if mkt is None else mkt.log_mean()[1],
                mkt_dhr_k=None if mkt is None else mkt.delta_h_over_r_k,
            )
        )
    # A series judged before whose readings are all gone (re-linked to another shipment): its
    # alerts are no longer backed by any reading, and its state goes, so it starts afresh.
    emptied = sorted(restarted - set(fetched.ranges()))
    for key in emptied:
        withdraw_unsupported(conn, by_key[key], [], stats)
        spending.add(key[0])
    series_state.forget(conn, emptied)
    stats.series += len(saved)
    series_state.save_states(conn, saved)
    if spending:
        check_lot_budgets(conn, sorted(spending), stats)


def fresh_state(previous: EngineState | None, reported_start_ms: int | None) -> EngineState:
    """The state a pass from a series' first reading starts from: empty, but anchored where the
    logger started, so the profile's start delay counts from the logger's start (kept from the
    first pass when the series is evaluated again, whatever the logger reports by then)."""
    started = previous.logger_started_ms if previous is not None else None
    return EngineState(logger_started_ms=started if started is not None else reported_start_ms)


def running_mkt(
    carried: MktAccumulator | None, fresh: bool, profile: AlarmProfile, series: SensorSeries
) -> MktAccumulator | None:
    """The series' MKT so far under the profile's ΔH/R (as the lot figures take it). None when
    it is unknown: a series evaluated before MKT was kept, or whose profile changed its ΔH/R,
    until it is next evaluated from the start."""
    dhr = delta_h_over_r(profile)
    if fresh:
        carried = MktAccumulator(delta_h_over_r_k=dhr)
    if carried is None or carried.delta_h_over_r_k != dhr or series.times_ms.size == 0:
        return None if carried is None or carried.delta_h_over_r_k != dhr else carried
    return carried.extend(series.times_ms, series.temps_c)


def outside_labelled_range_s(profile: AlarmProfile, state: EngineState) -> float:
    """Seconds beyond the innermost high and low limits: what a lot's stability budget pays."""
    return sum(state.time_beyond_s(i) for i in labelled_range(profile) if i is not None)


def check_lot_budgets(conn: psycopg.Connection, shipment_keys: list[int], stats: RunStats) -> None:
    """Store the spend of the lots on these shipments; a lot whose budget is gone raises one
    critical alert (per credit: time QA credits back lets a later exhaustion alert again)."""
    for spend in lot_budget.refresh(conn, shipment_keys):
        stats.lots_refreshed += 1
        remaining = spend.remaining_s
        if remaining is None or remaining > 0:
            continue
        hours = spend.spent_s / 3600
        budget_h = (spend.budget_s or 0) / 3600
        credited = f", {spend.credited_s / 3600:.1f} h credited back" if spend.credited_s else ""
        alert_id, opened = alerts.raise_alert(
            conn,
            alerts.NewAlert(
                org_id=spend.org_id,
                episode_key=f"{lot_budget.budget_episode_prefix(spend.gtin, spend.lot)}{spend.credits}",
                kind="stability_budget",
                severity=Severity.CRITICAL,
                message=f"lot {spend.gtin}/{spend.lot}: stability budget spent, {hours:.1f} h outside the"
                f" labelled range across its shipments (budget {budget_h:.1f} h{credited})",
                device_key=spend.device_key,
                shipment_key=spend.shipment_key,
                started_at=_utc(spend.last_ms),
            ),
        )
        if opened:
            stats.alerts_opened += 1
            log.info("alert %d opened: lot %s/%s stability budget spent", alert_id, spend.gtin, spend.lot)


def drain(conn: psycopg.Connection, *, batch: int = 500, fast_lane: bool = False) -> RunStats:
    """Evaluate what is queued now; returns what was done. Safe to run on several workers.

    Claimed work and its results commit together, so a crash returns the work to the queue. If the
    batch as a whole fails, each series is tried on its own, so one bad series cannot hold up the rest.
    A pass takes only the work queued when it started, so a steady stream of new work cannot keep
    it from returning. The fast lane takes only work that could change an alert now (see
    `rule_queue.take_work`); the rest waits, untouched, for the next full pass.
    """
    stats = RunStats()
    head = rule_queue.queue_head(conn)
    conn.commit()
    while True:
        with conn.transaction():
            work = rule_queue.take_work(conn, limit=batch, up_to=head, fast_lane=fast_lane)
            if not work:
                return stats
            try:
                with conn.transaction():
                    evaluate_many(conn, work, stats)
            except Exception:
                log.exception("batch evaluation failed; evaluating %d series one by one", len(work))
                for item in work:
                    try:
                        with conn.transaction():
                            evaluate_many(conn, [item], stats)
                    except Exception:
                        # Its state was not saved, so the series' next batch re-covers these readings.
                        log.exception(
                            "evaluation failed for shipment key %d device key %d",
                            item.shipment_key,
                            item.device_key,
                        )
