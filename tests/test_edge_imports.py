"""The edge agent never imports numpy: numpy alone would cost the agent ~15 MB of its 40 MB budget."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter, so modules other tests imported cannot hide (or cause) an import.
_EDGE_RUN = textwrap.dedent(
    """
    import sys
    import tempfile
    from pathlib import Path

    import gateway_agent.agent, gateway_agent.cli, gateway_agent.outbox, gateway_agent.publisher
    from coldchain.wire import DeviceConfig
    from gateway_agent.agent import Agent
    from gateway_agent.clock import ManualClock
    from gateway_agent.config import AgentSettings, DeviceSettings

    assert "numpy" not in sys.modules, "importing the agent imported numpy"
    with tempfile.TemporaryDirectory() as tmp:
        settings = AgentSettings(
            data_dir=Path(tmp),
            console_alarm=False,
            devices=(DeviceSettings(id="D1", driver="simulated", profile="2-8C", batch_size=2),),
        )
        clock = ManualClock(1_795_000_000_000)
        with Agent(settings, clock=clock) as agent:
            agent.apply_config("D1", DeviceConfig(version=1, batch_size=2))
            for _ in range(4):
                agent.sample_once()
                clock.advance(60)
            agent.refresh_snapshot()
            batches = agent.outbox.pending("D1")
            assert len(batches) == 2, batches
            for batch in batches:
                assert batch.payload(clock.now_ms())[:3] == b"CCB"
                assert batch.payload(clock.now_ms(), form="json").startswith(b"{")
    assert "numpy" not in sys.modules, "the agent's sampling, sealing or encoding imported numpy"
    """
)


def test_edge_agent_runs_without_importing_numpy() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _EDGE_RUN],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_kernel_imports_without_numpy() -> None:
    code = (
        "import sys, coldchain.domain, coldchain.wire, coldchain.alarm_profile\n"
        "assert 'numpy' not in sys.modules\n"
        "from coldchain.domain import TimeArray\n"  # the typing alias still resolves, lazily
        "assert 'numpy' in sys.modules and TimeArray is not None\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
