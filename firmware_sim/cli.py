"""The simulator's command line (`coldchain sim ...` hands its arguments to `main`).

    list                                  the built-in scenarios and shipped TOML files
    device   --scenario S [--hours H]     one logger: CSV to stdout, or publish with --mqtt-url
    fleet    --mqtt-url URL --count N     a load generator: N loggers from one process
    agent    --mqtt-url URL --scenario S  drive the real gateway agent through its simulated driver

A scenario is a preset name or a path to a TOML file (see firmware_sim/scenarios/).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import tempfile
import threading
import time
from pathlib import Path

from coldchain.errors import ColdchainError
from coldchain.wire import Topics, format_time_ms
from firmware_sim.fleet import Fleet, LoggerSpec, progress_line
from firmware_sim.scenarios import SimLogger, get_scenario, list_scenarios

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coldchain sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list scenarios")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--mqtt-url", default=None)
        p.add_argument("--topic-prefix", default="")
        p.add_argument("--interval-s", type=int, default=60)
        p.add_argument("--batch-size", type=int, default=10)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--hours", type=float, default=24.0, help="simulated hours")
        p.add_argument("--start-ms", type=int, default=None, help="simulated start (epoch ms)")

    device = sub.add_parser("device", help="one simulated logger")
    common(device)
    device.add_argument("--scenario", required=True)
    device.add_argument("--device-id", default="SIM-0001")
    device.add_argument("--payload", choices=("binary", "json"), default="binary")

    fleet = sub.add_parser("fleet", help="many loggers from one process (load generator)")
    common(fleet)
    fleet.add_argument("--count", type=int, default=100)
    fleet.add_argument("--scenario", action="append", default=None,
                       help="scenario[=weight]; repeat to mix (default reefer-ok)")
    fleet.add_argument("--id-prefix", default="SIM-")
    fleet.add_argument("--payload", choices=("binary", "json"), default="binary")
    fleet.add_argument("--time-scale", type=float, default=None,
                       help="paced run: simulated seconds per wall second (default: unpaced)")
    fleet.add_argument("--duration", type=float, default=60.0,
                       help="wall seconds of a paced run")
    fleet.add_argument("--max-inflight", type=int, default=1000)
    fleet.add_argument("--state-file", type=Path, default=None,
                       help="keeps each device's next seq across runs")

    agent = sub.add_parser("agent", help="drive the real gateway agent with a scenario")
    common(agent)
    agent.add_argument("--scenario", required=True)
    agent.add_argument("--device-id", default="SIM-GW-0001")
    agent.add_argument("--data-dir", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "list":
            for name, scenario in sorted(list_scenarios().items()):
                print(f"{name:28} {scenario.kind:10} {scenario.description}")
            return 0
        if args.command == "device":
            return _device(args)
        if args.command == "fleet":
            return _fleet(args)
        return _agent(args)
    except ColdchainError as exc:
        print(f"coldchain sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _start_ms(args: argparse.Namespace) -> int:
    return args.start_ms if args.start_ms is not None else int(time.time() * 1000)


def _device(args: argparse.Namespace) -> int:
    scenario = get_scenario(args.scenario)
    if args.mqtt_url is None:
        logger = SimLogger(scenario, device_id=args.device_id, interval_s=args.interval_s,
                           seed=args.seed, start_ms=_start_ms(args))
        n = int(args.hours * 3600 // args.interval_s)
        stretch = logger.readings(0, n)
        print("t,c,rh")
        for t, c, rh in zip(stretch.t_ms, stretch.celsius, stretch.rh, strict=True):
            print(f"{format_time_ms(int(t))},{c:.3f},{'' if math.isnan(rh) else f'{rh:.2f}'}")
        return 0
    spec = LoggerSpec(device_id=args.device_id, scenario=args.scenario,
                      interval_s=args.interval_s, batch_size=args.batch_size, seed=args.seed)
    fleet = Fleet(mqtt_url=args.mqtt_url, topics=Topics(prefix=args.topic_prefix),
                  loggers=[spec], start_ms=_start_ms(args), payload=args.payload)
    try:
        sent = fleet.run_for(args.hours * 3600)
    finally:
        fleet.stop()
    print(f"{sent} batches sent, {fleet.published} acknowledged", file=sys.stderr)
    return 0 if fleet.published >= sent else 1


def _mix(entries: list[str] | None) -> list[tuple[str, float]]:
    mix = []
    for entry in entries or ["reefer-ok"]:
        name, _, weight = entry.partition("=")
        mix.append((name, float(weight or 1.0)))
    return mix


def fleet_specs(args: argparse.Namespace) -> list[LoggerSpec]:
    mix = _mix(args.scenario)
    total = sum(w for _, w in mix)
    specs: list[LoggerSpec] = []
    width = max(4, len(str(args.count)))
    for name, weight in mix:
        share = round(args.count * weight / total)
        for _ in range(share):
            if len(specs) >= args.count:
                break
            i = len(specs)
            specs.append(LoggerSpec(device_id=f"{args.id_prefix}{i:0{width}d}", scenario=name,
                                    interval_s=args.interval_s, batch_size=args.batch_size,
                                    seed=args.seed * 1_000_003 + i))
    while len(specs) < args.count:  # rounding leftovers go to the first scenario
        i = len(specs)
        specs.append(LoggerSpec(device_id=f"{args.id_prefix}{i:0{width}d}", scenario=mix[0][0],
                                interval_s=args.interval_s, batch_size=args.batch_size,
                                seed=args.seed * 1_000_003 + i))
    return specs


def _fleet(args: argparse.Namespace) -> int:
    if args.mqtt_url is None:
        print("coldchain sim fleet: --mqtt-url is required", file=sys.stderr)
        return 2
    specs = fleet_specs(args)
    fleet = Fleet(mqtt_url=args.mqtt_url, topics=Topics(prefix=args.topic_prefix), loggers=specs,
                  time_scale=args.time_scale or 1.0, start_ms=_start_ms(args),
                  payload=args.payload, max_inflight=args.max_inflight,
                  state_file=args.state_file)
    started = time.monotonic()
    stop = threading.Event()
    expected = None
    if args.time_scale is None:
        expected = sum(int(args.hours * 3600 // (s.interval_s * s.batch_size)) for s in specs)

    def report() -> None:
        while not stop.wait(0.5):
            print("\r" + progress_line(fleet, started, expected), end="", file=sys.stderr)

    reporter = threading.Thread(target=report, name="sim-progress", daemon=True)
    reporter.start()
    try:
        if args.time_scale is None:
            fleet.run_for(args.hours * 3600, drain_timeout=600)
        else:
            fleet.start()
            time.sleep(args.duration)
    finally:
        fleet.stop()
        stop.set()
        reporter.join()
    print("\r" + progress_line(fleet, started, expected), file=sys.stderr)
    return 0 if fleet.rejected == 0 else 1


def _agent(args: argparse.Namespace) -> int:
    from firmware_sim.bridge import run_agent

    if args.mqtt_url is None:
        print("coldchain sim agent: --mqtt-url is required", file=sys.stderr)
        return 2
    scenario = get_scenario(args.scenario)
    with tempfile.TemporaryDirectory(prefix="coldchain-sim-agent-") as tmp:
        data_dir = args.data_dir or Path(tmp)

        def progress(step: int, steps: int) -> None:
            print(f"\r{step}/{steps} readings", end="", file=sys.stderr)

        taken = asyncio.run(run_agent(
            scenario, device_id=args.device_id, mqtt_url=args.mqtt_url,
            topics=Topics(prefix=args.topic_prefix), data_dir=data_dir, hours=args.hours,
            interval_s=args.interval_s, batch_size=args.batch_size, seed=args.seed,
            start_ms=_start_ms(args), progress=progress,
        ))
    print(f"\r{taken} readings sampled and delivered through the gateway agent", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
