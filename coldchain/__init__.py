"""coldchain: cold-chain telemetry and excursion alerting — the shared kernel."""

__version__ = "0.1.0"
