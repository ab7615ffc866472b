"""Drive the real gateway agent with a simulated logger: a scenario becomes the source of the
agent's simulated driver, and a manual clock lets hours pass in seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from coldchain.wire import Topics
from firmware_sim.scenarios import Scenario, SimLogger
from gateway_agent.agent import Agent
from gateway_agent.clock import ManualClock
from gateway_agent.config import AgentSettings, DeviceSettings

log = logging.getLogger(__name__)


class ScenarioSource:
    """The gateway agent's SampleSource, backed by a simulated logger's physics."""

    def __init__(self, logger: SimLogger) -> None:
        self.logger = logger

    def sample(self, t_ms: int) -> tuple[float, float | None]:
        t_s = (t_ms - self.logger.start_ms) / 1000.0
        index = max(0, int(t_s // self.logger.interval_s))
        stretch = self.logger.readings(index, index + 1)
        if not len(stretch):  # the logger was off (power loss): report the model's value
            return float(self.logger.true_celsius([t_s])[0]), None
        rh = float(stretch.rh[0])
        return float(stretch.celsius[0]), None if rh != rh else rh


async def run_agent(
    scenario: Scenario,
    *,
    device_id: str,
    mqtt_url: str,
    topics: Topics,
    data_dir: Path,
    hours: float,
    interval_s: int = 60,
    batch_size: int = 10,
    seed: int = 0,
    start_ms: int = 1_795_000_000_000,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Sample `hours` of the scenario through the agent (as fast as it goes), wait until the
    outbox is drained, and return the number of readings taken."""
    logger = SimLogger(
        scenario, device_id=device_id, interval_s=interval_s, seed=seed, start_ms=start_ms
    )
    settings = AgentSettings(
        data_dir=data_dir,
        mqtt_url=mqtt_url,
        topic_prefix=topics.prefix,
        console_alarm=False,
        reconnect_min_s=0.1,
        reconnect_max_s=2.0,
        devices=(
            DeviceSettings(
                id=device_id, driver="simulated", interval_s=interval_s, batch_size=batch_size
            ),
        ),
    )
    clock = ManualClock(start_ms)
    steps = int(hours * 3600 // interval_s)
    with Agent(settings, clock=clock, sources={device_id: ScenarioSource(logger)}) as agent:
        runner = asyncio.create_task(agent.run(sample=False))
        taken = 0
        for step in range(steps):
            taken += len(agent.sample_once())
            clock.advance(interval_s)
            if step % 50 == 0:
                await asyncio.sleep(0)
                if progress:
                    progress(step, steps)
        agent.seal(now_ms=clock.now_ms(), force=True)
        while agent.outbox.depth(device_id).batches:
            await asyncio.sleep(0.05)
        agent.stop()
        await runner
    return taken
