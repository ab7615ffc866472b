"""A small PNG line chart of an excursion (time, °C, limit lines), drawn with numpy and zlib.

E-mail clients show an inline PNG everywhere, and a chart this simple does not justify a
plotting library on the server: the canvas is a numpy array, lines are rasterised in one
vectorised pass, labels use a 3x5 pixel font, and the PNG encoder is the few chunks the format
needs (IHDR, IDAT, IEND, each with its CRC-32).
"""

from __future__ import annotations

import struct
import zlib
from datetime import UTC, datetime, tzinfo
from typing import Final

import numpy as np
import numpy.typing as npt

from coldchain.errors import ValidationError

__all__ = ["encode_png", "png_dimensions", "render_excursion_png"]

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

Canvas = npt.NDArray[np.uint8]

_WHITE = (255, 255, 255)
_AXIS = (90, 90, 90)
_GRID = (225, 225, 225)
_LIMIT = (200, 30, 30)
_LINE = (20, 90, 200)
_OUT = (255, 222, 222)
_TEXT = (60, 60, 60)

# 3x5 glyphs, one string per row, '#' for ink.
_GLYPHS: Final[dict[str, tuple[str, ...]]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
    ".": ("...", "...", "...", "...", ".#."),
    "-": ("...", "...", "###", "...", "..."),
    ":": ("...", ".#.", "...", ".#.", "..."),
    "C": ("###", "#..", "#..", "#..", "###"),
    " ": ("...", "...", "...", "...", "..."),
}


def encode_png(rgb: Canvas) -> bytes:
    """Encode an (height, width, 3) uint8 array as an 8-bit RGB PNG."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValidationError("encode_png needs a (height, width, 3) uint8 array")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    if height == 0 or width == 0:
        raise ValidationError("encode_png needs a non-empty image")
    # Each scanline starts with its filter type; 0 (none) keeps the encoder trivial, and the
    # flat-coloured chart compresses well anyway.
    raw = np.empty((height, 1 + width * 3), dtype=np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = rgb.reshape(height, width * 3)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", ihdr),
            _chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_dimensions(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; raises ValidationError if it is not a PNG."""
    if len(png) < 24 or not png.startswith(PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValidationError("not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def _draw_points(
    canvas: Canvas, xs: npt.NDArray[np.int64], ys: npt.NDArray[np.int64], color: tuple[int, ...]
) -> None:
    height, width = canvas.shape[0], canvas.shape[1]
    keep = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    canvas[ys[keep], xs[keep]] = color


def _rasterise(
    x0: npt.NDArray[np.float64],
    y0: npt.NDArray[np.float64],
    x1: npt.NDArray[np.float64],
    y1: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pixels of many segments at once: each is sampled once per pixel of its longer side."""
    steps = np.maximum(np.abs(x1 - x0), np.abs(y1 - y0)).astype(np.int64) + 1
    seg = np.repeat(np.arange(len(steps)), steps)
    starts = np.cumsum(steps) - steps
    offset = np.arange(int(steps.sum())) - np.repeat(starts, steps)
    frac = offset / np.maximum(steps[seg] - 1, 1)
    xs = np.rint(x0[seg] + (x1[seg] - x0[seg]) * frac).astype(np.int64)
    ys = np.rint(y0[seg] + (y1[seg] - y0[seg]) * frac).astype(np.int64)
    return xs, ys


def _text(canvas: Canvas, text: str, x: int, y: int, color: tuple[int, ...], scale: int) -> None:
    """Draw `text` with its top-left corner at (x, y); unknown characters print as blanks."""
    for i, char in enumerate(text):
        glyph = _GLYPHS.get(char, _GLYPHS[" "])
        for row, line in enumerate(glyph):
            for col, ink in enumerate(line):
                if ink == "#":
                    top = y + row * scale
                    left = x + (i * 4 + col) * scale
                    canvas[max(top, 0) : max(top + scale, 0), max(left, 0) : max(left + scale, 0)] = color


def _label(value: float) -> str:
    return f"{value:.1f}C"


def render_excursion_png(
    t_s: npt.ArrayLike,
    celsius: npt.ArrayLike,
    *,
    low_c: float | None = None,
    high_c: float | None = None,
    width: int = 480,
    height: int = 180,
    tz: tzinfo = UTC,
) -> bytes:
    """A PNG line chart of temperature over time with the alarm limits as red lines.

    `t_s` are epoch seconds, `celsius` the readings (NaN leaves a gap). Readings beyond a limit
    are shaded; the y axis is labelled with the limits and the extremes, the x axis with the
    first and last time (HH:MM in `tz`).
    """
    t = np.asarray(t_s, dtype=np.float64).ravel()
    c = np.asarray(celsius, dtype=np.float64).ravel()
    if t.shape != c.shape:
        raise ValidationError("times and temperatures differ in length")
    if not 160 <= width <= 2000 or not 80 <= height <= 1000:
        raise ValidationError("chart size out of range (160-2000 x 80-1000 pixels)")
    order = np.argsort(t, kind="stable")
    t, c = t[order], c[order]
    finite = np.isfinite(t) & np.isfinite(c)
    scale = 2
    left, right, top, bottom = 52, 10, 10, 22
    plot_w, plot_h = width - left - right, height - top - bottom

    canvas: Canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = _WHITE

    values = [v for v in (low_c, high_c) if v is not None]
    if finite.any():
        values += [float(c[finite].min()), float(c[finite].max())]
    lo, hi = (min(values), max(values)) if values else (0.0, 10.0)
    pad = max((hi - lo) * 0.1, 0.5)
    lo, hi = lo - pad, hi + pad
    t_lo = float(t[finite].min()) if finite.any() else 0.0
    t_hi = float(t[finite].max()) if finite.any() else 1.0
    t_span = max(t_hi - t_lo, 1e-9)

    def to_y(v: npt.NDArray[np.float64] | float) -> npt.NDArray[np.float64]:
        return np.asarray(top + (hi - np.asarray(v, dtype=np.float64)) / (hi - lo) * (plot_h - 1))

    def to_x(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return left + (v - t_lo) / t_span * (plot_w - 1)

    # Out-of-range bands, grid, frame.
    if high_c is not None:
        y = int(to_y(high_c))
        canvas[top : max(top, y), left : left + plot_w] = _OUT
    if low_c is not None:
        y = int(to_y(low_c))
        canvas[min(y + 1, top + plot_h) : top + plot_h, left : left + plot_w] = _OUT
    for i in range(1, 4):
        canvas[top + i * plot_h // 4, left : left + plot_w] = _GRID
    canvas[top : top + plot_h, left] = _AXIS
    canvas[top + plot_h - 1, left : left + plot_w] = _AXIS

    # Limit lines, dashed.
    for limit in (low_c, high_c):
        if limit is None:
            continue
        y = int(np.rint(to_y(limit)))
        dash = np.arange(left, left + plot_w)
        dash = dash[(dash - left) % 8 < 5]
        canvas[y, dash] = _LIMIT

    # The readings: many points collapse to a min/max envelope per pixel column first.
    if finite.any():
        xs_f = to_x(t)
        ys_f = to_y(c)
        if len(t) > 4 * plot_w:
            col = np.where(finite, np.clip(xs_f, left, left + plot_w - 1), -1).astype(np.int64)
            valid = col >= 0
            cols = np.unique(col[valid])
            y_min = np.full(width, np.inf)
            y_max = np.full(width, -np.inf)
            np.minimum.at(y_min, col[valid], ys_f[valid])
            np.maximum.at(y_max, col[valid], ys_f[valid])
            xs_f = np.repeat(cols.astype(np.float64), 2)
            ys_f = np.column_stack((y_min[cols], y_max[cols])).ravel()
            finite = np.ones(len(xs_f), dtype=bool)
        ok = finite[:-1] & finite[1:]
        if ok.any():
            px, py = _rasterise(xs_f[:-1][ok], ys_f[:-1][ok], xs_f[1:][ok], ys_f[1:][ok])
        else:
            px = np.rint(xs_f[finite]).astype(np.int64)
            py = np.rint(ys_f[finite]).astype(np.int64)
        for dx, dy in ((0, 0), (1, 0), (0, 1)):
            _draw_points(canvas, px + dx, py + dy, _LINE)

    # Labels: the limits in red, the extremes in grey; the first and last time below.
    labelled: list[tuple[float, tuple[int, ...]]] = []
    for limit in (low_c, high_c):
        if limit is not None:
            labelled.append((limit, _LIMIT))
    if finite.any():
        for v in (float(np.nanmin(c[np.isfinite(c)])), float(np.nanmax(c[np.isfinite(c)]))):
            if all(abs(float(to_y(v)) - float(to_y(u))) > 12 for u, _ in labelled):
                labelled.append((v, _TEXT))
    for value, color in labelled:
        y = int(np.rint(to_y(value))) - 5
        _text(canvas, _label(value), 2, min(max(y, 0), height - 10), color, scale)
    if finite.any():
        start = datetime.fromtimestamp(t_lo, tz).strftime("%H:%M")
        end = datetime.fromtimestamp(t_hi, tz).strftime("%H:%M")
        _text(canvas, start, left, height - 12, _TEXT, scale)
        _text(canvas, end, width - right - len(end) * 4 * scale, height - 12, _TEXT, scale)
    return encode_png(canvas)
