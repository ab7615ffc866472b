"""Private PostgreSQL and Mosquitto servers, for `coldchain up` with no configuration and for the tests."""

from embedded.mosquitto import MosquittoServer
from embedded.postgres import PostgresServer
from embedded.process import free_port, wait_for_port

__all__ = ["MosquittoServer", "PostgresServer", "free_port", "wait_for_port"]
