"""The QA report as PDF (reportlab): header, a chart per leg with the profile's limits drawn and
excursions shaded, statistics, each logger's calibration over its readings, the alarm table, a
lot's disposition, the signature block; page numbers, embedded
fonts, a footer with the record hash and where to verify it, and an Ed25519 seal in the
document's metadata (`evidence.signing`).

Charts are decimated without losing extremes: each logger's readings are cut into at most
`CHART_BUCKETS` time buckets and each bucket draws its minimum and its maximum, in time order.
"""

from __future__ import annotations

import io
from datetime import datetime
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from evidence.model import Evidence, LegEvidence
from evidence.signing import BLANK_SEAL, SigningKey, seal
from evidence.tabular import iso_ms, leg_stats

CHART_BUCKETS = 600
FONT, FONT_BOLD = "CCVera", "CCVeraBd"
_PALETTE = [colors.HexColor(c) for c in ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
                                         "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e", "#393b79")]


def _fonts() -> None:
    """Bitstream Vera (shipped with reportlab) as TrueType, so the fonts are embedded."""
    if FONT in pdfmetrics.getRegisteredFontNames():
        return
    folder = resources.files("reportlab") / "fonts"
    pdfmetrics.registerFont(TTFont(FONT, str(folder / "Vera.ttf")))
    pdfmetrics.registerFont(TTFont(FONT_BOLD, str(folder / "VeraBd.ttf")))


def decimate(t: npt.NDArray[np.int64], v: npt.NDArray[np.float64],
             buckets: int = CHART_BUCKETS) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """At most 2 points per time bucket: the bucket's minimum and maximum, in time order, so
    every extreme of the series is still drawn."""
    if t.size <= 2 * buckets:
        return t, v
    edges = np.linspace(int(t[0]), int(t[-1]) + 1, buckets + 1)
    starts = np.unique(np.searchsorted(t, edges[:-1], side="left"))
    starts = starts[starts < t.size]
    ends = np.concatenate((starts[1:], [t.size]))
    idx_min = np.empty(starts.size, dtype=np.int64)
    idx_max = np.empty(starts.size, dtype=np.int64)
    # argmin/argmax per bucket: offsets of the reduceat extremes within each bucket
    mins = np.minimum.reduceat(v, starts)
    maxs = np.maximum.reduceat(v, starts)
    bucket_of = np.repeat(np.arange(starts.size), ends - starts)
    is_min = v == mins[bucket_of]
    is_max = v == maxs[bucket_of]
    pos = np.arange(t.size)
    first_min = np.full(starts.size, t.size)
    np.minimum.at(first_min, bucket_of[is_min], pos[is_min])
    first_max = np.full(starts.size, t.size)
    np.minimum.at(first_max, bucket_of[is_max], pos[is_max])
    idx_min[:], idx_max[:] = first_min, first_max
    keep = np.unique(np.concatenate((idx_min, idx_max, [0, t.size - 1])))
    return t[keep], v[keep]


class LegChart(Flowable):  # type: ignore[misc]
    """Temperatures of a leg's loggers, the profile's limits as dashed lines, excursions shaded."""

    def __init__(self, leg: LegEvidence, width: float, height: float = 70 * mm) -> None:
        super().__init__()
        self.leg, self.width, self.height = leg, width, height
        self.series = []
        for lg in leg.loggers:
            s, sl = lg.series, lg.listed
            if sl.stop > sl.start:
                self.series.append((lg.device.device_id, *decimate(s.t_ms[sl], s.c[sl].astype(np.float64))))

    def wrap(self, aw: float, ah: float) -> tuple[float, float]:
        return self.width, self.height

    def draw(self) -> None:
        c = self.canv
        left, bottom, right, top = 14 * mm, 10 * mm, self.width - 2 * mm, self.height - 8 * mm
        c.setFont(FONT, 7)
        if not self.series:
            c.drawString(left, bottom + 10, "No readings on this leg.")
            return
        t0 = min(int(t[0]) for _, t, _ in self.series)
        t1 = max(int(t[-1]) for _, t, _ in self.series)
        lims = [lim.threshold_c for lim in self.leg.profile.limits]
        lo = min([float(v.min()) for _, _, v in self.series] + lims)
        hi = max([float(v.max()) for _, _, v in self.series] + lims)
        pad = max((hi - lo) * 0.08, 0.5)
        lo, hi = lo - pad, hi + pad
        span_t = max(t1 - t0, 1)

        def x(ms: float) -> float:
            return float(left + (ms - t0) / span_t * (right - left))

        def y(val: float) -> float:
            return float(bottom + (val - lo) / (hi - lo) * (top - bottom))

        # excursions shaded
        c.setFillColor(colors.Color(1, 0.6, 0.6, alpha=0.35))
        for ex in self.leg.excursions:
            if not ex.get("started_at"):
                continue
            a = _ms(ex["started_at"])
            b = _ms(ex["ended_at"]) if ex.get("ended_at") else t1
            a, b = max(a, t0), min(b, t1)
            if b > a:
                c.rect(x(a), bottom, max(x(b) - x(a), 0.8), top - bottom, stroke=0, fill=1)
        # axes and grid
        c.setStrokeColor(colors.black)
        c.setLineWidth(0.5)
        c.rect(left, bottom, right - left, top - bottom, stroke=1, fill=0)
        c.setFillColor(colors.black)
        for k in range(6):
            val = lo + (hi - lo) * k / 5
            c.drawRightString(left - 2, y(val) - 2, f"{val:.1f}")
        for k in range(5):
            ms = t0 + span_t * k / 4
            c.drawCentredString(x(ms), bottom - 8, iso_ms(int(ms))[:16].replace("T", " "))
        c.drawString(left, top + 2, "°C  (UTC)")
        # limits
        c.setDash(3, 2)
        for lim in self.leg.profile.limits:
            c.setStrokeColor(colors.red if lim.tier.value != "warning" else colors.orange)
            c.line(left, y(lim.threshold_c), right, y(lim.threshold_c))
            c.setFillColor(colors.red)
            c.drawRightString(right - 1, y(lim.threshold_c) + 1.5, f"{lim.id} {lim.threshold_c:g} °C")
        c.setDash()
        # readings
        for i, (name, t, v) in enumerate(self.series):
            colour = _PALETTE[i % len(_PALETTE)]
            c.setStrokeColor(colour)
            c.setLineWidth(0.6)
            path = c.beginPath()
            path.moveTo(x(float(t[0])), y(float(v[0])))
            for tt, vv in zip(t[1:].tolist(), v[1:].tolist(), strict=True):
                path.lineTo(x(tt), y(vv))
            c.drawPath(path, stroke=1, fill=0)
            if i < 8:  # a legend for the first eight loggers; more would not fit
                c.setFillColor(colour)
                c.drawString(left + 4 + 60 * i, top - 7, name)


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes = round(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d} h"


# the unit of an alert's peak by its kind (°C unless named here)
_PEAK_UNITS = {"humidity": " %RH", "rate": " °C/min", "shock": " g"}


def _num(value: float | None, unit: str = " °C") -> str:
    return "–" if value is None else f"{value:.2f}{unit}"


class _NumberedCanvas(Canvas):  # type: ignore[misc]
    """Defers each page so the footer can say "page i of n"."""

    footer_text = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []

    def showPage(self) -> None:
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            self._footer(total)
            super().showPage()
        super().save()

    def _footer(self, total: int) -> None:
        self.setFont(FONT, 6.5)
        self.setFillColor(colors.black)
        w, _ = A4
        self.drawString(15 * mm, 10 * mm, self.footer_text)
        self.drawRightString(w - 15 * mm, 10 * mm, f"Page {self._pageNumber} of {total}")


def pdf_bytes(ev: Evidence, *, record_sha256: str, verify_url: str, key: SigningKey) -> bytes:
    """The report, sealed: its metadata holds the record hash and the Ed25519 seal."""
    _fonts()
    styles = {
        "h1": ParagraphStyle("h1", fontName=FONT_BOLD, fontSize=15, leading=18, spaceAfter=4),
        "h2": ParagraphStyle("h2", fontName=FONT_BOLD, fontSize=11, leading=14, spaceBefore=8, spaceAfter=4),
        "body": ParagraphStyle("body", fontName=FONT, fontSize=8, leading=10.5),
        "small": ParagraphStyle("small", fontName=FONT, fontSize=7, leading=9),
    }
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer, pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm, topMargin=15 * mm,
        bottomMargin=18 * mm, title=f"Temperature evidence: {ev.title}",
        author="coldchain", subject=f"record sha256:{record_sha256}",
        creator=f"coldchain {ev.platform_version}", keywords=BLANK_SEAL.decode("ascii"),
        initialFontName=FONT,  # else the canvas starts in Helvetica, a font PDFs never embed
    )
    width = A4[0] - 30 * mm
    story: list[Flowable] = [Paragraph(f"Temperature evidence — {_esc(ev.title)}", styles["h1"])]
    story.append(Paragraph(_esc(_subject_line(ev)), styles["body"]))
    story.append(Paragraph(
        f"Generated {iso_ms(int(ev.generated_at.timestamp() * 1000))} by coldchain "
        f"{_esc(ev.platform_version)} · record SHA-256 {record_sha256}", styles["small"]))
    story.append(Spacer(1, 4 * mm))
    story.append(Paragraph("Figures", styles["h2"]))
    story.append(_figures_table(ev, width))
    for leg in ev.legs:
        row = leg.leg
        story.append(Paragraph(
            f"Leg {_esc(row.shipment_id)}: from {_esc(row.origin or '?')} to {_esc(row.destination or '?')}"
            f" · profile {_esc(leg.profile.id)} v{leg.profile.version}", styles["h2"]))
        story.append(LegChart(leg, width))
        story.append(Spacer(1, 2 * mm))
        story.append(_stats_table(leg, width))
        story.append(Spacer(1, 2 * mm))
        story.append(_calibration_table(leg, width, styles["small"]))
    story.append(Paragraph("Alarms", styles["h2"]))
    story.append(_alarm_table(ev, width, styles["small"]))
    if ev.disposition is not None:
        story.append(Paragraph("Disposition", styles["h2"]))
        story.append(_disposition_table(ev.disposition, width, styles["small"]))
    story.append(Paragraph("Signatures", styles["h2"]))
    story.append(_signature_block(ev, width, styles["body"]))

    class Footer(_NumberedCanvas):
        footer_text = f"Record SHA-256 {record_sha256} · verify at {verify_url}"

    doc.build(story, canvasmaker=Footer)
    content = bytearray(buffer.getvalue())
    seal(content, key)
    return bytes(content)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _subject_line(ev: Evidence) -> str:
    s = ev.subject
    if ev.kind == "lot":
        return (f"GTIN {s['gtin']} · lot {s['lot']} · expiry {s['expiry'] or '–'} · "
                f"{s['digital_link']} · shipments: {', '.join(s['shipments']) or '–'}")
    lots = ", ".join(f"{x['gtin']}/{x['lot']}" for x in s.get("lots", []))
    extra = f" · excursion {s['alert']} ({s['state']})" if ev.kind == "excursion" else ""
    return f"Shipment {s['shipment']}{extra} · lots: {lots or '–'}"


_GRID = TableStyle([
    ("FONT", (0, 0), (-1, -1), FONT, 7),
    ("FONT", (0, 0), (-1, 0), FONT_BOLD, 7),
    ("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
    ("BACKGROUND", (0, 0), (-1, 0), colors.Color(0.92, 0.92, 0.92)),
    ("VALIGN", (0, 0), (-1, -1), "TOP"),
])


def _figures_table(ev: Evidence, width: float) -> Table:
    f = ev.figures
    rows = [
        ["Figure", "Value"],
        ["MKT (worst logger of each leg, whole journey)", _num(f.get("mkt_c"))],
        ["Time outside the labelled range", _hours(f.get("outside_labelled_range_s"))],
    ]
    if f.get("freeze_thaw_cycles") is not None:
        rows.append(["Freeze–thaw cycles", str(f["freeze_thaw_cycles"])])
    for limit, seconds in sorted(f.get("time_out_of_range_s", {}).items()):
        rows.append([f"Time beyond limit {limit}", _hours(seconds)])
    if ev.kind == "lot":
        rows += [
            ["Stability budget", _hours(f.get("stability_budget_s"))],
            ["Credited back by QA", _hours(f.get("stability_budget_credited_s"))],
            ["Stability budget remaining", _hours(f.get("stability_budget_remaining_s"))],
        ]
        for credit in f.get("stability_budget_credits", []):
            rows.append([f"Credit {credit.get('id')}: {credit.get('reason')}", _hours(credit.get("seconds"))])
    for lot in ev.subject.get("lots", []):
        rows.append([f"Lot {lot['gtin']}/{lot['lot']} budget remaining (whole journey)",
                     _hours(lot.get("stability_budget_remaining_s"))])
    table = Table(rows, colWidths=[width * 0.7, width * 0.3])
    table.setStyle(_GRID)
    return table


def _stats_table(leg: LegEvidence, width: float) -> Table:
    limits = [lim.id for lim in leg.profile.limits]
    head = ["Logger", "Readings", "Min", "Max", "Mean", "MKT trip", "MKT 24 h max", "MKT 30 d max",
            *[f">{x}" for x in limits]]
    rows: list[list[str]] = [head]
    for lg in leg.loggers:
        f = lg.figures
        if f is None:
            rows.append([lg.device.device_id, "0", *["–"] * (len(head) - 2)])
            continue
        w24, w30 = f.mkt_windows["24h"], f.mkt_windows["30d"]
        rows.append([
            lg.device.device_id + (" (worst)" if lg.device.device_id == leg.worst_logger else ""),
            str(f.readings), _num(f.min_c), _num(f.max_c), _num(f.mean_c), _num(f.mkt_c),
            _num(w24.max_c) + ("" if w24.covered else "*"), _num(w30.max_c) + ("" if w30.covered else "*"),
            *[_hours(f.time_beyond_s.get(x)) for x in limits],
        ])
    stats = leg_stats(leg)
    if stats is not None:
        rows.append(["Leg (extremes of all; rest of worst)", str(stats["readings"]), _num(stats["min_c"]),
                     _num(stats["max_c"]), _num(stats["mean_c"]), _num(stats["mkt_c"]),
                     _num(stats["mkt_windows"]["24h"]["max_c"]), _num(stats["mkt_windows"]["30d"]["max_c"]),
                     *[_hours(stats["time_beyond_s"].get(x)) for x in limits]])
    table = Table(rows, repeatRows=1)
    table.setStyle(_GRID)
    return table


def _calibration_table(leg: LegEvidence, width: float, style: ParagraphStyle) -> Table:
    """Each logger's certificates in force over its readings, the status they gave, and QA's
    override when the logger rode out of calibration."""
    rows: list[list[Any]] = [["Logger", "Certificate (laboratory)", "Performed", "Due", "Readings on",
                              "Readings", "Status then", "Override"]]
    for lg in leg.loggers:
        cal = lg.calibration or {}
        override = cal.get("override")
        note = "–" if override is None else Paragraph(_esc(
            f"{override['reason']} — by {override['overridden_by']} {str(override['overridden_at'])[:16]}"
        ), style)
        for p in cal.get("periods", []):
            cert = p["certificate"]
            rows.append([
                lg.device.device_id,
                "none recorded" if cert is None else Paragraph(
                    _esc(f"{cert['certificate_number']} ({cert['laboratory']})"), style),
                "–" if cert is None else cert["performed_on"], "–" if cert is None else cert["due_on"],
                p["from"] if p["from"] == p["to"] else f"{p['from']} – {p['to']}",
                str(p["readings"]), p["status"].replace("_", " "), note,
            ])
    if len(rows) == 1:
        rows.append(["–", "no loggers", "", "", "", "", "", ""])
    table = Table(rows, colWidths=[width * w for w in (0.12, 0.18, 0.1, 0.1, 0.17, 0.08, 0.1, 0.15)],
                  repeatRows=1, splitInRow=1)
    table.setStyle(_GRID)
    return table


def _disposition_table(disposition: dict[str, Any], width: float, style: ParagraphStyle) -> Table:
    """QA's decisions on the lot, the current state first."""
    rows: list[list[Any]] = [
        ["State", f"{disposition['state']} (CBV: {disposition.get('cbv_disposition') or '–'})", "", ""],
        ["Decision", "Decided by, at (UTC)", "Comment", "Signature"],
    ]
    for d in disposition.get("history", []):
        signed = "; ".join(
            f"{s.get('signer')} <{s.get('user')}>, {s.get('meaning')}, {s.get('status', 'unchecked')}"
            for s in d.get("signatures", [])
        ) or "not signed"
        rows.append([
            f"{d['previous'] or 'pending'} -> {d['state']}",  # the embedded font has no arrow
            Paragraph(_esc(f"{d['decided_by']} {str(d['decided_at'])[:19]}"), style),
            Paragraph(_esc(d["comment"]), style),
            Paragraph(_esc(signed), style),
        ])
    if not disposition.get("history"):
        rows.append(["–", "no QA decision yet", "", ""])
    table = Table(rows, colWidths=[width * w for w in (0.2, 0.25, 0.3, 0.25)], splitInRow=1)
    table.setStyle(_GRID)
    return table


def _alarm_table(ev: Evidence, width: float, style: ParagraphStyle) -> Flowable:
    rows: list[list[Any]] = [["Id", "Kind / limit", "Logger", "Start – end (UTC)", "Peak", "State",
                              "Lifecycle"]]
    for leg in ev.legs:
        for x in leg.excursions:
            life = "; ".join(
                f"{e['action']} by {e['actor']} {str(e['at'])[:16]}"
                + (f" ({e['comment']})" if e.get("comment") else "")
                for e in x["lifecycle"]
            )
            sent = len(x["notifications"])
            rows.append([
                str(x["id"]), f"{x['kind']} {x['limit'] or ''}", x["device"] or "–",
                Paragraph(_esc(f"{(x['started_at'] or '–')[:16]} – {(x['ended_at'] or 'open')[:16]}"), style),
                _num(x["peak_c"], _PEAK_UNITS.get(x["kind"], " °C")),
                x["state"] + (f" / {x['disposition']}" if x["disposition"] else ""),
                Paragraph(_esc(life + (f"; {sent} notification(s) sent" if sent else "")), style),
            ])
    if len(rows) == 1:
        rows.append(["–", "no alarms", "", "", "", "", ""])
    # A lifecycle can outgrow a page (a long history, long comments): its row splits across pages.
    table = Table(
        rows, colWidths=[width * w for w in (0.06, 0.14, 0.11, 0.2, 0.08, 0.11, 0.3)], repeatRows=1,
        splitInRow=1,
    )
    table.setStyle(_GRID)
    return table


def _signature_block(ev: Evidence, width: float, style: ParagraphStyle) -> Flowable:
    """Electronic signatures when the record has them; otherwise lines for signing."""
    sigs = list(ev.signatures) + [s for leg in ev.legs for x in leg.excursions for s in x["signatures"]]
    if ev.disposition is not None:  # the lot's disposition decisions
        sigs += [s for d in ev.disposition.get("history", []) for s in d.get("signatures", [])]
    sigs += [  # QA's overrides of a logger's calibration
        s for leg in ev.legs for lg in leg.loggers
        if lg.calibration is not None and lg.calibration.get("override") is not None
        for s in lg.calibration["override"]["signatures"]
    ]
    rows: list[list[str]] = [["Signer", "Meaning", "Signed at (UTC)", "Record hash"]]
    for s in sigs:
        broken = " (BROKEN)" if s.get("status") == "broken" else ""  # the record changed after signing
        rows.append([f"{s.get('signer')} <{s.get('user')}>", str(s.get("meaning")) + broken,
                     str(s.get("signed_at")), str(s.get("record_hash"))[:24] + "…"])
    if not sigs:
        rows.append(["No electronic signature recorded for this record.", "", "", ""])
        for meaning in ("Reviewed by (QA)", "Approved / released by"):
            rows.append([f"{meaning}: ____________________", "Meaning: ________", "Date: __________", ""])
    table = Table(rows, colWidths=[width * w for w in (0.38, 0.17, 0.2, 0.25)], splitInRow=1)
    table.setStyle(_GRID)
    return table
