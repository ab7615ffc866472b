"""Rules: alarm engine, alert lifecycle, notifications and escalation."""
