"""Logger export parsers against real read-outs: every file parses to what its device printed in
its own PDF report (tests/data/loggers), bad files name their line, and the platform's evaluation
agrees with the device's within sampling and printing resolution."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldchain.logger_file import LoggerFile, LoggerFileError
from ingest.files import ColumnMapping, read_logger_file
from ingest.files.generic_csv import parse_csv
from rules.device_comparison import GAS_CONSTANT_KJ, compare_with_device
from rules.mkt import mean_kinetic_temperature

DATA = Path(__file__).parent / "data" / "loggers"
FT2 = "FridgeTag_2__130400191544_202304201514.txt"
FT2L = "FridgeTag_2L__130500109088_202206081014.txt"
FT2L_CUT = "FridgeTag_2L__test.txt"
FTUL = "FridgeTag_UL__100800001215_202304201410.txt"
QTAG2 = "QTag_CLm_doc_LR__RCPJ00010_02_202211090128.txt"
QTAG3 = "QTag_CLm_doc_LR__RCPJ00010_03_202304201359.txt"


def _read(name: str) -> LoggerFile:
    return read_logger_file((DATA / name).read_bytes())


def _ms(text: str) -> int:
    return int(datetime.strptime(text, "%d.%m.%Y %H:%M").replace(tzinfo=UTC).timestamp() * 1000)


def _truncated(value: float) -> float:
    return math.trunc(value * 10) / 10


def test_fridge_tag_2_is_kept_as_daily_summaries_not_readings() -> None:
    lf = _read(FT2)
    assert lf.format == "fridge-tag-2" and lf.serial == "130400191544"
    assert len(lf) == 0 and lf.summary_only
    # The PDF: 4 days; 17.04.2023 +4.4 avg, +2.3 min, +20.8 max, 8 min above the upper limit.
    assert [d.day for d in lf.days] == [date(2023, 4, 17 + i) for i in range(4)]
    first = lf.days[0]
    assert (first.mean_c, first.min_c, first.max_c) == (4.4, 2.3, 20.8)
    assert [a["accumulated_min"] for a in first.alarms] == [0, 8]
    # The two ALARM cells of the PDF are sensor-connection errors (2h 58min, 21min), not alarms.
    assert [d.sensor_timeout_min for d in lf.days] == [178, 0, 0, 21]
    assert lf.events == ()
    limits = [(a.side, a.threshold_c, a.delay_s) for a in lf.alarms]
    assert limits == [("low", -0.5, 3600), ("high", 8.0, 36000)]
    assert lf.results.start_ms == _ms("17.04.2023 16:43")
    assert lf.signature["Sig"].startswith("83847cd9") and lf.signature["Cert Issuer"] == "Berlinger & Co. AG"
    report = compare_with_device(lf).platform_report
    assert report["readings"] == 0 and report["mkt_c"] is None and report["excursions"] == []


def test_fridge_tag_2l_full_read_out_matches_its_pdf() -> None:
    lf = _read(FT2L)
    assert lf.format == "fridge-tag-2l" and lf.serial == "130500109088" and lf.interval_s == 300
    assert len(lf) == 10_653 and lf.missing == 0
    assert len(lf.days) == 38
    by_day = {d.day: d for d in lf.days}
    d = by_day[date(2022, 6, 7)]
    assert (d.mean_c, d.min_c, d.max_c) == (9.9, 4.1, 30.3)
    assert d.alarms[1]["accumulated_min"] == 5 * 60 + 12 and d.alarms[1]["triggered_local"] == "14:55"
    # Alarms the PDF marks ALARM!: the first ones 03.05 10:32h, 05.05 11:00h, 12.05 13:27h (upper).
    triggers = [e.triggered_ms for e in lf.events if e.side == "high"][:3]
    assert triggers == [_ms("03.05.2022 10:32"), _ms("05.05.2022 11:00"), _ms("12.05.2022 13:27")]
    # An alarm still on at midnight continues (the PDF prints 00:00h the next days): one event.
    lows = [e for e in lf.events if e.side == "low"]
    assert lows[0].triggered_ms == _ms("27.05.2022 18:28")
    assert lf.results.min_c == -8.4 and lf.results.max_c == 30.3
    comparison = compare_with_device(lf)
    assert comparison.discrepancies == []
    assert len(comparison.platform_report["days"]) >= 30  # days the series covers are compared


def test_cut_down_fridge_tag_2l_compares_only_what_it_covers() -> None:
    lf = _read(FT2L_CUT)
    assert len(lf) == 53
    full = _read(FT2L)
    assert np.isin(lf.times_ms, full.times_ms).all()
    comparison = compare_with_device(lf)
    assert comparison.discrepancies == []
    assert any(n["check"] == "day" for n in comparison.platform_report["not_compared"])


def test_fridge_tag_ultra_low_skips_and_counts_missing_values() -> None:
    lf = _read(FTUL)
    assert lf.format == "fridge-tag-ul" and lf.serial == "100800001215"
    assert len(lf) + lf.missing == 841 and lf.missing == 6
    assert not np.isnan(lf.celsius).any()
    first = lf.days[0]
    assert (first.day, first.mean_c, first.min_c, first.max_c) == (date(2023, 4, 17), -14.3, -17.0, 21.5)
    assert lf.events[0].triggered_ms == _ms("17.04.2023 17:06")
    assert compare_with_device(lf).discrepancies == []


@pytest.mark.parametrize(
    ("name", "count", "mkt", "mean", "lowest", "highest"),
    [
        (QTAG2, 124, 10.5, 5.4, (0.9, "08.11.2022 12:49"), (24.3, "09.11.2022 00:19")),
        (QTAG3, 424, 10.4, 10.4, (9.7, "18.04.2023 03:53"), (12.7, "17.04.2023 15:23")),
    ],
)
def test_q_tag_matches_its_read_out_document(
    name: str, count: int, mkt: float, mean: float, lowest: tuple[float, str], highest: tuple[float, str]
) -> None:
    lf = _read(name)
    assert lf.format == "qtag-clm" and lf.serial == "RCPJ00010" and lf.interval_s == 600
    assert len(lf) == count  # "Total number of measurements"
    r = lf.results
    assert (r.mkt_c, r.mean_c) == (mkt, mean)
    assert (r.min_c, r.min_ms) == (lowest[0], _ms(lowest[1]))
    assert (r.max_c, r.max_ms) == (highest[0], _ms(highest[1]))
    assert float(lf.celsius.min()) == lowest[0] and float(lf.celsius.max()) == highest[0]
    # Our MKT with the file's activation energy (83.0 kJ/mol), truncated as the device prints it.
    assert r.mkt_delta_h_kj_mol == 83.0
    ours = mean_kinetic_temperature(lf.times_ms, lf.celsius, delta_h_over_r_k=83.0 / GAS_CONSTANT_KJ)
    assert _truncated(ours) == mkt
    assert _truncated(float(lf.celsius.mean())) == mean
    comparison = compare_with_device(lf)
    assert comparison.platform_report["mkt_c"] == pytest.approx(ours, abs=1e-3)
    assert comparison.discrepancies == []


def test_q_tag_alarm_events_as_printed() -> None:
    lf = _read(QTAG2)
    got = {(e.alarm, e.triggered_ms, e.duration_s) for e in lf.events}
    assert got == {
        (1, _ms("08.11.2022 22:20"), (3 * 60 + 39) * 60),
        (2, _ms("08.11.2022 22:50"), (3 * 60 + 39) * 60),
        (4, _ms("08.11.2022 07:34"), (9 * 60 + 58) * 60),
        (5, _ms("08.11.2022 12:46"), (2 * 60 + 25) * 60),
        (5, _ms("08.11.2022 15:22"), 32 * 60),
        (5, _ms("08.11.2022 16:09"), 31 * 60),
    }
    modes = {a.number: (a.side, a.mode, a.threshold_c, a.delay_s) for a in lf.alarms}
    assert modes == {
        1: ("high", "single", 8.0, 1800), 2: ("high", "cumulative", 8.0, 3600),
        4: ("low", "cumulative", 2.0, 3600), 5: ("low", "single", 2.0, 1800),
    }
    raised = {x["limit_id"] for x in compare_with_device(lf).platform_report["excursions"]}
    assert raised == {"alarm-1", "alarm-2", "alarm-4", "alarm-5"}


def test_a_device_report_that_its_readings_contradict_is_a_discrepancy() -> None:
    text = (DATA / QTAG2).read_bytes().decode()
    tampered = text.replace(" MKT: 10.5\r\n", " MKT: 12.5\r\n").replace(
        "   TS S: 2022-11-08 21:50, t A: 219, TS A: 2022-11-08 22:20, TS E:, T M: 24.5,"
        " TS M: 2022-11-09 01:28\r\n",
        "",
    )
    assert tampered != text
    lf = read_logger_file(tampered.encode())
    checks = {d["check"] for d in compare_with_device(lf).discrepancies}
    assert "mkt_c" in checks
    assert "alarm" in checks  # the platform finds alarm 1; the tampered report has none


@pytest.mark.parametrize(
    ("mutate", "line"),
    [
        (lambda t: "", 1),
        (lambda t: t[: t.index("Cert:")], None),  # cut before the signature
        (lambda t: t.replace("\t2022-11-08 12:49\t0.9\tx", "\t2022-11-08 12:49\tabc\tx"), 120),
        (lambda t: t.replace("\t2022-11-08 12:49\t0.9\tx", "\t2022-11-08 12:4\t0.9\tx"), 120),
        (lambda t: t.replace("Device: Q-tag CLm doc LR", "Device: Q-tag Unknown 9"), 1),
        (lambda t: "hello, world\nnot a logger\n", 1),
    ],
)
def test_bad_files_name_their_line(mutate: object, line: int | None) -> None:
    text = (DATA / QTAG2).read_bytes().decode()
    bad = mutate(text)  # type: ignore[operator]
    with pytest.raises(LoggerFileError) as err:
        read_logger_file(bad.encode())
    if line is None:
        line = len(bad.splitlines())
    assert err.value.line == line
    assert str(err.value).startswith(f"line {line}: ")


def test_the_pdf_report_is_refused_with_a_hint() -> None:
    with pytest.raises(LoggerFileError, match="text export"):
        read_logger_file((DATA / QTAG2.replace(".txt", ".pdf")).read_bytes())


def test_generic_csv_with_decimal_comma_windows_1252_fahrenheit_and_a_zone() -> None:
    mapping = ColumnMapping(
        time_column="Datum/Zeit", value_column="Temperatur °F", time_format="%d.%m.%Y %H:%M",
        timezone="Europe/Berlin", delimiter=";", decimal=",", unit="F", encoding="cp1252",
    )
    raw = (
        "Datum/Zeit;Temperatur °F;Bemerkung\r\n"
        "01.07.2024 12:00;41,0;Rampe Süd\r\n"
        "01.07.2024 12:05;--.-;\r\n"
        "01.07.2024 12:10;46,4;\r\n"
        "15.01.2024 08:00;32,0;Winter\r\n"
    ).encode("cp1252")
    lf = parse_csv(raw, mapping)
    assert lf.missing == 1 and len(lf) == 3
    winter = int(datetime(2024, 1, 15, 7, 0, tzinfo=UTC).timestamp() * 1000)  # CET = UTC+1
    summer = int(datetime(2024, 7, 1, 10, 0, tzinfo=UTC).timestamp() * 1000)  # CEST = UTC+2
    assert lf.times_ms.tolist() == [winter, summer, summer + 600_000]
    assert lf.celsius.tolist() == pytest.approx([0.0, 5.0, 8.0])
    assert lf.interval_s is not None


def test_generic_csv_iso_times_with_offsets_and_utf8() -> None:
    mapping = ColumnMapping(time_column="time", value_column="temp")
    raw = "time,temp,note\n2024-03-01T10:00:00+01:00,4.5,ü\n2024-03-01T09:05:00Z,4.75,\n".encode()
    with pytest.raises(LoggerFileError, match="line 3"):
        parse_csv(raw, mapping)  # a mix of offset styles is refused at the row that differs
    raw = "\ufefftime,temp\n2024-03-01T10:00:00+01:00,4.5\n2024-03-01T10:05:00+01:00,4.75\n".encode()
    lf = parse_csv(raw, mapping)
    assert lf.times_ms.tolist()[0] == int(datetime(2024, 3, 1, 9, 0, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (b"", 1),
        (b"time,temp\n", 2),
        (b"time,temp\n2024-01-01T00:00:00Z,5.0\n2024-01-01T00:01:00Z,abc\n", 3),
        (b"time,temp\n2024-01-01T00:00:00Z,5.0\n2024-01-01T00:01:00Z\n", 3),
        (b"time,temp\n2024-01-01T00:00:00Z,5.0\n\n2024-01-01T00:02:00Z,5.1\n", 3),
        (b"time,temp\n2024-01-01T00:00:00Z,5.0\n2024-13-01T00:01:00Z,5.1\n", 3),
        (b"time,temp\n2024-01-01T00:00:00Z,5.0\n2024-01-01T00:00:00Z,5.1\n", 3),
        (b"time,temp\n2024-01-01T00:00:00Z,5.0\n2024-01-01T00:01:00Z,\xff\n", 3),
    ],
)
def test_generic_csv_bad_rows_name_their_line(raw: bytes, line: int) -> None:
    with pytest.raises(LoggerFileError) as err:
        parse_csv(raw, ColumnMapping(time_column="time", value_column="temp"))
    assert err.value.line == line


def test_generic_csv_parses_a_large_export_as_columns() -> None:
    n = 50_000
    t0 = 1_700_000_000_000
    stamps = np.datetime_as_string((t0 + np.arange(n) * 60_000).astype("datetime64[ms]"), unit="s")
    values = np.round(np.linspace(2.0, 8.0, n), 2)
    rows = (f"{s};{str(v).replace('.', ',')}" for s, v in zip(stamps, values, strict=True))
    raw = ("t;c\n" + "\n".join(rows)).encode()
    lf = parse_csv(raw, ColumnMapping(time_column="t", value_column="c", delimiter=";", decimal=","))
    assert len(lf) == n and lf.interval_s == 60
    assert (lf.times_ms == t0 + np.arange(n) * 60_000).all()
    assert np.allclose(lf.celsius, values)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10**6),  # minutes since 2020-01-01
            st.one_of(st.none(), st.decimals(min_value=-80, max_value=60, places=2)),
            st.text(alphabet="abcäöü xyz.-", max_size=8),
        ),
        min_size=1, max_size=40, unique_by=lambda r: r[0],
    ),
    local=st.booleans(),
    crlf=st.booleans(),
)
def test_generic_csv_equals_a_row_by_row_reading(
    rows: list[tuple[int, Decimal | None, str]], local: bool, crlf: bool
) -> None:
    """The vectorised parser against the plain reading of the same rows with the csv module."""
    base = datetime(2020, 1, 1, tzinfo=UTC)
    if local:
        mapping = ColumnMapping(
            time_column="Zeit", value_column="T", time_format="%d.%m.%Y %H:%M",
            timezone="+02:00", delimiter=";", decimal=",", encoding="cp1252",
        )
    else:
        mapping = ColumnMapping(time_column="Zeit", value_column="T")
    lines = ["Zeit" + mapping.delimiter + "T" + mapping.delimiter + "Notiz"]
    for minute, value, note in rows:
        at = base + timedelta(minutes=minute)
        stamp = (
            (at + timedelta(hours=2)).strftime("%d.%m.%Y %H:%M") if local
            else at.strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        text = "--.-" if value is None else str(value).replace(".", mapping.decimal)
        lines.append(mapping.delimiter.join((stamp, text, note)))
    raw = ("\r\n" if crlf else "\n").join(lines).encode(mapping.encoding)
    reference = sorted(
        (int((base + timedelta(minutes=m)).timestamp() * 1000), float(v))
        for m, v, _ in rows if v is not None
    )
    decoded = list(csv.reader(io.StringIO(raw.decode(mapping.encoding)), delimiter=mapping.delimiter))
    assert len(decoded) == len(rows) + 1
    if not reference:
        return
    lf = parse_csv(raw, mapping)
    assert lf.times_ms.tolist() == [t for t, _ in reference]
    assert lf.celsius.tolist() == pytest.approx([v for _, v in reference])
    assert lf.missing == sum(v is None for _, v, _ in rows)
