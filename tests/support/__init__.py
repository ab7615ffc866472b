"""Helpers the tests share: HTTP clients, ports, waiting, devices, the contract example."""
