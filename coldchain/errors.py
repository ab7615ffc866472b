"""The exception tree every package raises; the API maps it to HTTP in one handler.

ColdchainError
├── ValidationError          input that breaks a rule of the domain (HTTP 422)
│   └── DecodeError          a wire payload that cannot be decoded (dead letter)
├── NotFoundError            a record that does not exist for this organization (HTTP 404)
├── ConflictError            a record that already exists or a state change not allowed (409)
├── PreconditionFailedError  an edit based on a version that is no longer current (412)
├── PreconditionRequiredError  an edit that does not say which version it is based on (428)
├── AuthError                missing or wrong credentials (401)
│   └── PermissionDeniedError  a valid identity without the role for the act (403)
└── ConfigurationError       settings that cannot work (refused at start-up)
"""

from __future__ import annotations


class ColdchainError(Exception):
    """Root of every error this project raises on purpose."""


class ValidationError(ColdchainError):
    """Input that breaks a rule of the domain; `field` names what was wrong when known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DecodeError(ValidationError):
    """A wire payload that cannot be decoded; `reason` is a short machine-readable code."""

    def __init__(self, message: str, *, reason: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.reason = reason


class NotFoundError(ColdchainError):
    """A record that does not exist (or is not visible to the caller's organization)."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found")
        self.kind = kind
        self.key = key


class ConflictError(ColdchainError):
    """A record that already exists, or a state transition the lifecycle does not allow."""


class PreconditionFailedError(ColdchainError):
    """An edit made against a version of the record that is no longer the current one: someone
    else changed it in between (optimistic concurrency, `If-Match`)."""

    def __init__(self, message: str, *, current: str | None = None) -> None:
        super().__init__(message)
        self.current = current


class PreconditionRequiredError(ColdchainError):
    """An edit that does not name the version it was based on, so it could overwrite another."""


class AuthError(ColdchainError):
    """Missing, unknown or revoked credentials."""


class PermissionDeniedError(AuthError):
    """A valid identity whose role does not allow the act."""


class ConfigurationError(ColdchainError):
    """Settings that cannot work; raised at start-up, never mid-flight."""


class BrokerUnavailableError(ColdchainError):
    """The MQTT broker could not be told about an account change (down, or no control account)."""
