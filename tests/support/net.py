"""Ports for the servers a test starts (the same helper `coldchain up` uses)."""

from embedded.process import free_port

__all__ = ["free_port"]
