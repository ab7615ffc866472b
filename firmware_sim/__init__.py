"""Simulated loggers: physical scenarios, fault injection and a fleet load generator."""

from firmware_sim.fleet import Fleet, LoggerSpec
from firmware_sim.scenarios import Faults, Scenario, SimLogger, get_scenario, list_scenarios

__all__ = [
    "Faults",
    "Fleet",
    "LoggerSpec",
    "Scenario",
    "SimLogger",
    "get_scenario",
    "list_scenarios",
]
