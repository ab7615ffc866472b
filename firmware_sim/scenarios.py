"""Physical scenarios and faults of simulated loggers, deterministic from a seed and vectorised over time.

Every model is a closed-form function of the time since the scenario started, so any stretch of
readings can be produced on its own (a fleet generates each batch when it falls due) and the same
seed always gives the same readings. Random events (door openings, noise, spikes) come from a
counter-based hash or from a generator seeded by (seed, slot), never from a shared stream.

Kinds:
    reefer     refrigerated truck: setpoint, compressor cycling, door openings that pull the air
               towards the ambient, optional compressor failure, ambient day/night swing
    passive    insulated shipper: gel packs hold the load cold until they are spent, then the
               load warms towards the ambient
    cold-room  a walk-in cold room: setpoint, defrost cycles, short door openings
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from coldchain.errors import ValidationError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

KINDS = ("reefer", "passive", "cold-room")

_DEFAULTS: dict[str, dict[str, float]] = {
    "reefer": {
        "setpoint_c": 5.0,
        "band_c": 1.2,  # compressor hysteresis, peak to peak
        "cycle_min": 24.0,  # one compressor on/off cycle
        "ambient_mean_c": 20.0,
        "ambient_swing_c": 7.0,  # day/night amplitude, warmest at 15:00 UTC
        "door_every_h": 4.0,  # mean time between routine door openings (0: none)
        "door_open_min": 3.0,  # typical routine opening
        "door_tau_min": 10.0,  # warming time constant with the door open
        "recover_tau_min": 6.0,  # cooling time constant after the door closes
        "excursion_door_at_min": -1.0,  # a long opening at this minute (-1: none)
        "excursion_door_min": 45.0,
        "excursion_every_h": 0.0,  # repeat the long opening every N hours (0: once)
        "failure_at_h": -1.0,  # compressor fails at this hour (-1: never)
        "failure_tau_h": 1.5,  # warming time constant once the compressor is dead
        "noise_c": 0.08,
        "rh_mean": 82.0,
    },
    "passive": {
        "pack_c": 3.5,  # load temperature while the gel packs work
        "spent_h": 4.0,  # gel packs spent after this many hours
        "tau_h": 6.0,  # warming time constant afterwards
        "ambient_mean_c": 25.0,
        "ambient_swing_c": 4.0,
        "coupling": 0.05,  # share of the ambient swing felt through the insulation
        "noise_c": 0.05,
    },
    "cold-room": {
        "setpoint_c": 4.0,
        "defrost_every_h": 6.0,
        "defrost_min": 20.0,
        "defrost_rise_c": 2.5,
        "door_every_min": 45.0,
        "door_rise_c": 1.2,
        "noise_c": 0.12,
        "rh_mean": 65.0,
    },
}


# --------------------------------------------------------------------------- faults


def _windows(value: object, name: str) -> tuple[tuple[float, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, Iterable):
        raise ValidationError(f"{name} must be a list of [start_h, hours] pairs", field=name)
    out = []
    for item in value:
        pair = tuple(float(x) for x in item)
        if len(pair) != 2 or pair[0] < 0 or pair[1] <= 0:
            raise ValidationError(f"{name} entries are [start_h >= 0, hours > 0]", field=name)
        out.append((pair[0], pair[1]))
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """What goes wrong with a logger; windows are [start hour, duration in hours]."""

    power_loss: tuple[tuple[float, float], ...] = ()  # no sampling at all
    network_loss: tuple[tuple[float, float], ...] = ()  # sampled, sent when the link is back
    clock_drift_ppm: float = 0.0  # device clock gains (or loses) this much
    stuck_at_h: float | None = None  # sensor repeats its last value from this hour on
    spike_rate: float = 0.0  # chance per reading of a spike
    spike_c: float = 15.0
    battery_h: float | None = None  # battery empty after this many hours (None: mains power)
    duplicate_rate: float = 0.0  # chance per batch of being sent twice (same seq)

    def __post_init__(self) -> None:
        object.__setattr__(self, "power_loss", _windows(self.power_loss, "power_loss"))
        object.__setattr__(self, "network_loss", _windows(self.network_loss, "network_loss"))
        for name in ("spike_rate", "duplicate_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValidationError(f"{name} must be between 0 and 1", field=name)
        if self.battery_h is not None and self.battery_h <= 0:
            raise ValidationError("battery_h must be positive", field="battery_h")
        if abs(self.clock_drift_ppm) > 1e5:
            raise ValidationError("clock_drift_ppm is out of range", field="clock_drift_ppm")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Faults:
        known = set(cls.__dataclass_fields__)
        unknown = set(doc) - known
        if unknown:
            raise ValidationError(f"unknown faults {sorted(unknown)}", field="faults")
        return cls(**dict(doc))


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A named physical model (`kind` with `params` over its defaults) plus its faults."""

    name: str
    kind: str
    params: Mapping[str, float] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValidationError(f"scenario kind must be one of {KINDS}", field="kind")
        unknown = set(self.params) - set(_DEFAULTS[self.kind])
        if unknown:
            raise ValidationError(
                f"unknown {self.kind} params {sorted(unknown)}", field="params"
            )
        merged = dict(_DEFAULTS[self.kind])
        for key, value in self.params.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValidationError(f"param {key} must be a number", field="params")
            merged[key] = float(value)
        object.__setattr__(self, "params", MappingProxyType(merged))

    def with_overrides(self, overrides: Mapping[str, Any]) -> Scenario:
        """This scenario with some params (and, under the key "faults", some faults) changed."""
        if not overrides:
            return self
        params = {k: v for k, v in overrides.items() if k != "faults"}
        faults = self.faults
        if "faults" in overrides:
            merged = {
                k: getattr(self.faults, k) for k in Faults.__dataclass_fields__
            } | dict(overrides["faults"])
            faults = Faults.from_dict(merged)
        return replace(self, params={**self.params, **params}, faults=faults)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, name: str | None = None) -> Scenario:
        unknown = set(doc) - {"name", "kind", "params", "faults", "description"}
        if unknown:
            raise ValidationError(f"unknown scenario keys {sorted(unknown)}", field="scenario")
        return cls(
            name=str(doc.get("name") or name or "custom"),
            kind=str(doc.get("kind", "")),
            params=dict(doc.get("params", {})),
            faults=Faults.from_dict(doc.get("faults", {})),
            description=str(doc.get("description", "")),
        )

    @classmethod
    def load(cls, path: Path) -> Scenario:
        """A scenario from a TOML file (see firmware_sim/scenarios/*.toml)."""
        with path.open("rb") as fh:
            return cls.from_dict(tomllib.load(fh), name=path.stem)


def _builtin_files() -> dict[str, Scenario]:
    found: dict[str, Scenario] = {}
    folder = resources.files("firmware_sim") / "scenarios"
    if not folder.is_dir():
        return found
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            scenario = Scenario.from_dict(tomllib.loads(entry.read_text()), name=entry.name[:-5])
            found[scenario.name] = scenario
    return found


def _presets() -> dict[str, Scenario]:
    presets = [
        Scenario(
            name="reefer-ok",
            kind="reefer",
            description="A reefer holding 5 °C with compressor cycling and short deliveries.",
        ),
        Scenario(
            name="reefer-door-open",
            kind="reefer",
            params={"excursion_door_at_min": 11.0, "excursion_door_min": 45.0,
                    "excursion_every_h": 6.0},
            description=(
                "A reefer whose rear door stays open 45 min from minute 11 (and every 6 h): "
                "above 8 °C for about 50 min."
            ),
        ),
        Scenario(
            name="reefer-compressor-failure",
            kind="reefer",
            params={"failure_at_h": 0.25, "ambient_mean_c": 24.0},
            description="A reefer whose compressor dies after 15 min; the load warms to ambient.",
        ),
        Scenario(
            name="passive-shipper",
            kind="passive",
            description="An insulated shipper; gel packs spent after 4 h, then it warms up.",
        ),
        Scenario(
            name="cold-room",
            kind="cold-room",
            description="A 4 °C cold room with defrost cycles every 6 h.",
        ),
        Scenario(
            name="reefer-flaky",
            kind="reefer",
            faults=Faults(
                network_loss=((1.0, 3.0),),
                clock_drift_ppm=200.0,
                spike_rate=0.002,
                duplicate_rate=0.01,
                battery_h=72.0,
            ),
            description="A reefer with network loss, clock drift, spikes and duplicate sends.",
        ),
    ]
    found = {p.name: p for p in presets}
    found.update(_builtin_files())
    return found


def list_scenarios() -> dict[str, Scenario]:
    """Built-in presets and the TOML files shipped in firmware_sim/scenarios/."""
    return _presets()


def get_scenario(name_or_path: str) -> Scenario:
    """A preset by name, or a scenario TOML file by path."""
    presets = _presets()
    if name_or_path in presets:
        return presets[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return Scenario.load(path)
    raise ValidationError(
        f"unknown scenario {name_or_path!r}; presets: {', '.join(sorted(presets))}",
        field="scenario",
    )


# --------------------------------------------------------------------------- randomness


_MASK64 = (1 << 64) - 1


def hash01(seed: int, index: npt.ArrayLike, channel: int = 0) -> FloatArray:
    """Uniform [0, 1) numbers keyed by (seed, index, channel): splitmix64 over the index."""
    key = (seed * 0x9E3779B97F4A7C15 + channel * 0xD1B54A32D192ED03) & _MASK64
    x = np.asarray(index, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(key)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _noise(seed: int, index: IntArray, channel: int, sigma: float) -> FloatArray:
    """Roughly normal noise (sum of three uniforms), deterministic per reading."""
    total = hash01(seed, index, channel) + hash01(seed, index, channel + 1)
    total += hash01(seed, index, channel + 2)
    return (total - 1.5) * 2.0 * sigma


# --------------------------------------------------------------------------- models


def _ambient(p: Mapping[str, float], t_s: FloatArray, start_hour: float) -> FloatArray:
    hours = t_s / 3600.0 + start_hour
    return p["ambient_mean_c"] + p["ambient_swing_c"] * np.sin(2 * math.pi * (hours - 9.0) / 24.0)


def _door_events(
    p: Mapping[str, float], seed: int, t0: float, t1: float
) -> list[tuple[float, float]]:
    """Door openings (start_s, duration_s) that can still be felt inside [t0, t1]."""
    events: list[tuple[float, float]] = []
    tail = 8 * p["recover_tau_min"] * 60
    every = p["door_every_h"] * 3600
    if every > 0:
        first = max(0, int((t0 - tail - 3 * every) // every))
        for slot in range(first, int(t1 // every) + 1):
            u = hash01(seed, np.array([slot]), 40)
            v = hash01(seed, np.array([slot]), 41)
            start = slot * every + float(u[0]) * every * 0.7
            events.append((start, p["door_open_min"] * 60 * (0.5 + float(v[0]))))
    at = p["excursion_door_at_min"]
    if at >= 0:
        duration = p["excursion_door_min"] * 60
        repeat = p["excursion_every_h"] * 3600
        if repeat > 0:
            first = max(0, int((t0 - tail - duration - at * 60) // repeat))
            for k in range(first, int(max(0.0, t1 - at * 60) // repeat) + 1):
                events.append((at * 60 + k * repeat, duration))
        else:
            events.append((at * 60, duration))
    return [e for e in events if e[0] <= t1 and e[0] + e[1] + tail >= t0]


def _reefer(
    p: Mapping[str, float], seed: int, idx: IntArray, t_s: FloatArray, start_hour: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    ambient = _ambient(p, t_s, start_hour)
    setpoint = p["setpoint_c"]
    # Compressor cycling: a triangle wave around the setpoint, its phase fixed by the seed.
    phase = float(hash01(seed, np.array([0]), 10)[0])
    cycle = t_s / (p["cycle_min"] * 60.0) + phase
    tri = 2.0 * np.abs(2.0 * (cycle - np.floor(cycle + 0.5))) - 1.0
    air = setpoint + 0.5 * p["band_c"] * tri
    failure_s = p["failure_at_h"] * 3600
    if failure_s >= 0:
        after = t_s >= failure_s
        if after.any():
            elapsed = t_s[after] - failure_s
            warm = 1.0 - np.exp(-elapsed / (p["failure_tau_h"] * 3600))
            air[after] = setpoint + (ambient[after] - setpoint) * warm
    door = np.zeros_like(t_s)
    if len(t_s):
        tau_open = p["door_tau_min"] * 60
        tau_rec = p["recover_tau_min"] * 60
        for start, duration in _door_events(p, seed, float(t_s[0]), float(t_s[-1])):
            inside = (t_s >= start) & (t_s < start + duration)
            # The after-effect is cut at the same tail _door_events uses, so a stretch of
            # readings never depends on which window it was generated in.
            tail = 8 * p["recover_tau_min"] * 60
            later = (t_s >= start + duration) & (t_s <= start + duration + tail)
            gap = np.maximum(ambient - air, 0.0)
            rise_open = gap * (1.0 - np.exp(-(t_s - start) / tau_open))
            peak = gap * (1.0 - math.exp(-duration / tau_open))
            rise = np.where(inside, rise_open, 0.0)
            rise = np.where(later, peak * np.exp(-(t_s - start - duration) / tau_rec), rise)
            air = air + rise
            door = np.maximum(door, inside.astype(np.float64))
    celsius = air + _noise(seed, idx, 1, p["noise_c"])
    rh = np.clip(p["rh_mean"] - 1.5 * (celsius - setpoint) + _noise(seed, idx, 5, 1.5), 5, 100)
    return celsius, rh, door


def _passive(
    p: Mapping[str, float], seed: int, idx: IntArray, t_s: FloatArray, start_hour: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    ambient = _ambient(p, t_s, start_hour)
    spent = p["spent_h"] * 3600
    # While the packs work the load creeps up by about 1.5 °C and feels a little of the ambient.
    creep = 1.5 * np.clip(t_s / max(spent, 1.0), 0.0, 1.0)
    held = p["pack_c"] + creep + p["coupling"] * (ambient - p["ambient_mean_c"])
    start_c = p["pack_c"] + 1.5
    elapsed = np.maximum(t_s - spent, 0.0)
    warm = start_c + (ambient - start_c) * (1.0 - np.exp(-elapsed / (p["tau_h"] * 3600)))
    celsius = np.where(t_s < spent, held, warm) + _noise(seed, idx, 1, p["noise_c"])
    return celsius, np.full_like(t_s, np.nan), np.zeros_like(t_s)


def _cold_room(
    p: Mapping[str, float], seed: int, idx: IntArray, t_s: FloatArray, start_hour: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    del start_hour
    every = p["defrost_every_h"] * 3600
    length = p["defrost_min"] * 60
    into = np.mod(t_s, every) if every > 0 else np.full_like(t_s, np.inf)
    bump = np.where(into < length, np.sin(math.pi * into / max(length, 1.0)), 0.0)
    celsius = p["setpoint_c"] + p["defrost_rise_c"] * bump
    door_every = p["door_every_min"] * 60
    door = np.zeros_like(t_s)
    if door_every > 0:
        slot = np.floor(t_s / door_every).astype(np.int64)
        offset = hash01(seed, slot, 20) * door_every * 0.8
        since = t_s - slot * door_every - offset
        felt = (since >= 0) & (since < 600)
        celsius = celsius + np.where(felt, p["door_rise_c"] * np.exp(-since / 180.0), 0.0)
        door = ((since >= 0) & (since < 90)).astype(np.float64)
    celsius = celsius + _noise(seed, idx, 1, p["noise_c"])
    rh = np.clip(p["rh_mean"] + _noise(seed, idx, 5, 2.0), 5, 100)
    return celsius, rh, door


_MODELS = {"reefer": _reefer, "passive": _passive, "cold-room": _cold_room}


# --------------------------------------------------------------------------- a logger


@dataclass(frozen=True, slots=True)
class ReadingStretch:
    """Readings a simulated logger took, on its own (possibly drifting) clock."""

    t_ms: IntArray
    celsius: FloatArray
    rh: FloatArray
    extras: tuple[dict[str, Any] | None, ...] | None

    def __len__(self) -> int:
        return len(self.t_ms)


class SimLogger:
    """One simulated logger: a scenario sampled every `interval_s` from `start_ms`, with faults.

    Reading i is taken at true time start_ms + i * interval_s; `readings(i0, i1)` returns the
    readings i0 <= i < i1 that the device actually took (power loss and a flat battery skip some).
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        device_id: str,
        interval_s: int = 60,
        seed: int = 0,
        start_ms: int = 0,
    ) -> None:
        if interval_s < 1:
            raise ValidationError("interval_s must be >= 1", field="interval_s")
        self.scenario = scenario
        self.device_id = device_id
        self.interval_s = interval_s
        self.seed = seed
        self.start_ms = start_ms
        self._start_hour = (start_ms / 3_600_000.0) % 24.0
        self._model = _MODELS[scenario.kind]

    def true_celsius(self, t_s: npt.ArrayLike) -> FloatArray:
        """The model's temperature (noise included, faults excluded) at seconds since start."""
        t = np.asarray(t_s, dtype=np.float64)
        idx = np.floor(t / self.interval_s).astype(np.int64)
        return self._model(self.scenario.params, self.seed, idx, t, self._start_hour)[0]

    def battery(self, t_s: float) -> float:
        hours = self.scenario.faults.battery_h
        if hours is None:
            return 1.0
        return max(0.0, 1.0 - t_s / (hours * 3600.0))

    def network_down(self, t_s: float) -> bool:
        hour = t_s / 3600.0
        return any(a <= hour < a + d for a, d in self.scenario.faults.network_loss)

    def network_back_s(self, t_s: float) -> float:
        """When the current network loss ends (seconds since start)."""
        hour = t_s / 3600.0
        ends = [a + d for a, d in self.scenario.faults.network_loss if a <= hour < a + d]
        return max(ends) * 3600.0 if ends else t_s

    def duplicate(self, seq: int) -> bool:
        rate = self.scenario.faults.duplicate_rate
        return rate > 0 and float(hash01(self.seed, np.array([seq]), 60)[0]) < rate

    def device_ms(self, t_s: npt.ArrayLike) -> IntArray:
        """True seconds since start to the device's clock, drift included."""
        t = np.asarray(t_s, dtype=np.float64)
        drift = 1.0 + self.scenario.faults.clock_drift_ppm * 1e-6
        return (self.start_ms + np.round(t * drift * 1000.0)).astype(np.int64)

    def readings(self, i0: int, i1: int) -> ReadingStretch:
        faults = self.scenario.faults
        idx = np.arange(i0, i1, dtype=np.int64)
        t_s = idx.astype(np.float64) * self.interval_s
        celsius, rh, door = self._model(self.scenario.params, self.seed, idx, t_s, self._start_hour)
        if faults.stuck_at_h is not None:
            stuck_s = faults.stuck_at_h * 3600.0
            stuck_idx = math.ceil(stuck_s / self.interval_s)
            if (idx >= stuck_idx).any():
                frozen = self.readings_raw_at(stuck_idx)
                celsius = np.where(idx >= stuck_idx, frozen, celsius)
        if faults.spike_rate > 0:
            u = hash01(self.seed, idx, 30)
            sign = np.where(hash01(self.seed, idx, 31) < 0.5, -1.0, 1.0)
            celsius = np.where(u < faults.spike_rate, celsius + sign * faults.spike_c, celsius)
        keep = np.ones(len(idx), dtype=bool)
        for start_h, hours in faults.power_loss:
            keep &= ~((t_s >= start_h * 3600) & (t_s < (start_h + hours) * 3600))
        if faults.battery_h is not None:
            keep &= t_s < faults.battery_h * 3600
        extras: tuple[dict[str, Any] | None, ...] | None = None
        if door.any():
            extras = tuple({"door": 1} if d else None for d in door[keep])
        return ReadingStretch(
            t_ms=self.device_ms(t_s[keep]),
            celsius=np.round(celsius[keep], 3),
            rh=np.round(rh[keep], 2),
            extras=extras,
        )

    def readings_raw_at(self, index: int) -> float:
        idx = np.array([index], dtype=np.int64)
        t = idx.astype(np.float64) * self.interval_s
        return float(self._model(self.scenario.params, self.seed, idx, t, self._start_hour)[0][0])
