"""The edge agent: sensor drivers, a SQLite outbox, an MQTT publisher, local alarms and status."""

__all__ = ["__version__"]

__version__ = "0.1.0"
