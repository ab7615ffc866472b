"""People's passwords: the policy a new password must meet, and argon2id hashing.

Cost: argon2id with 19 MiB, 2 passes, 1 lane (the OWASP password-storage baseline). On the
2-core build machines under load a verify takes about 130 ms, so a login (one verify plus a few
queries) stays well under 300 ms at p95; RFC 9106's 64 MiB / 3 passes / 4 lanes took 550 ms
there. The parameters are settings, and a hash made with older ones is upgraded at the next
successful login (`needs_rehash`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from coldchain.errors import ValidationError

# A few passwords that pass length rules but are the first ones an attacker tries.
_COMMON = frozenset(
    {
        "password1234",
        "passwordpassword",
        "123456789012",
        "qwertyuiopas",
        "coldchain123",
        "changemechangeme",
        "letmeinletmein",
        "administrator",
    }
)


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """Length first (NIST SP 800-63B): at least 12 characters, at most 256; not the e-mail, not common."""

    min_length: int = 12
    max_length: int = 256

    def check(self, password: str, *, email: str | None = None) -> None:
        if len(password) < self.min_length:
            raise ValidationError(f"a password needs at least {self.min_length} characters", field="password")
        if len(password) > self.max_length:
            raise ValidationError(f"a password has at most {self.max_length} characters", field="password")
        lowered = password.lower()
        if lowered in _COMMON or len(set(password)) < 4:
            raise ValidationError("this password is too easy to guess", field="password")
        if email and (lowered == email.lower() or lowered == email.split("@")[0].lower()):
            raise ValidationError("a password may not be the e-mail address", field="password")


@dataclass(frozen=True, slots=True)
class PasswordHashing:
    """argon2id with the chosen cost; `verify` never raises for a wrong password, only answers."""

    memory_kib: int = 19_456
    passes: int = 2
    lanes: int = 1

    def _hasher(self) -> PasswordHasher:
        return _hasher(self.memory_kib, self.passes, self.lanes)

    def hash(self, password: str) -> str:
        return self._hasher().hash(password)

    def verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher().verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher().check_needs_rehash(stored)

    def burn(self, password: str) -> None:
        """Spend a verify's time for an unknown e-mail, so timing does not tell which e-mails exist."""
        self.verify(_DUMMY.get(self), password)


@cache
def _hasher(memory_kib: int, passes: int, lanes: int) -> PasswordHasher:
    """Building a PasswordHasher costs milliseconds; one per cost is enough (it holds no secret)."""
    return PasswordHasher(time_cost=passes, memory_cost=memory_kib, parallelism=lanes)


class _Dummy:
    """One hash per cost, made on first use (not at import)."""

    def __init__(self) -> None:
        self._by_cost: dict[PasswordHashing, str] = {}

    def get(self, hashing: PasswordHashing) -> str:
        if hashing not in self._by_cost:
            self._by_cost[hashing] = hashing.hash("not-a-real-password")
        return self._by_cost[hashing]


_DUMMY = _Dummy()
