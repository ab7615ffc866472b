"""The `gateway-agent` command: run the agent, show its status, list sensors it can see."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldchain.errors import ColdchainError
from gateway_agent.config import AgentSettings

if TYPE_CHECKING:
    from gateway_agent.agent import Agent

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/coldchain-gateway/agent.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway-agent", description=__doc__)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent TOML file")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="sample, store and publish until stopped")
    run.add_argument(
        "--no-sample", action="store_true", help="only drain the outbox (no sensor reads)"
    )
    status = sub.add_parser("status", help="current readings, alarms, queue, last contact")
    status.add_argument("--json", action="store_true")
    sub.add_parser("sensors", help="list the 1-Wire sensors the kernel sees")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "sensors":
            from gateway_agent.drivers.onewire import list_sensors

            for name in list_sensors():
                print(name)
            return 0
        settings = AgentSettings.load(args.config)
        if args.command == "status":
            return _status(settings, as_json=args.json)
        return asyncio.run(_run(settings, sample=not args.no_sample, config_path=args.config))
    except ColdchainError as exc:
        print(f"gateway-agent: {exc}", file=sys.stderr)
        return 2


async def _run(settings: AgentSettings, *, sample: bool, config_path: Path) -> int:
    from gateway_agent.agent import Agent

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with Agent(settings) as agent:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        loop.add_signal_handler(signal.SIGHUP, _reload, agent, config_path)
        log.info("gateway agent running with %d device(s)", len(settings.devices))
        await agent.run(sample=sample)
    return 0


def _reload(agent: Agent, path: Path) -> None:
    """SIGHUP: re-read the config file; a bad file is reported and the running config kept."""
    try:
        restart = agent.reload(AgentSettings.load(path))
    except ColdchainError as exc:
        log.error("config reload refused, keeping the running config: %s", exc)
        return
    agent.write_state()
    if restart:
        log.warning("config reloaded; these changes take a restart: %s", ", ".join(restart))
    else:
        log.info("config reloaded")


def _status(settings: AgentSettings, *, as_json: bool) -> int:
    from gateway_agent.outbox import Outbox
    from gateway_agent.status import render_text

    snapshot: dict[str, Any] = {}
    if settings.state_path.exists():
        snapshot = json.loads(settings.state_path.read_text())
    if settings.outbox_path.exists():
        # The database is the truth for the queue, even when the agent is not running.
        with Outbox(settings.outbox_path, read_only=True) as outbox:
            for device_id, dev in snapshot.setdefault("devices", {}).items():
                depth = outbox.depth(device_id)
                dev["queue_readings"], dev["queue_batches"] = depth.readings, depth.batches
            contact = outbox.meta("last_contact_ms")
            snapshot["last_contact_ms"] = int(contact) if contact else None
    if not snapshot:
        print("no state yet: the agent has not run with this configuration", file=sys.stderr)
        return 1
    print(json.dumps(snapshot, indent=1) if as_json else render_text(snapshot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
