"""The identity commands of `coldchain` (users, orgs, api-keys, audit), which coldchain/cli.py
mounts; heavy imports stay inside the commands so `coldchain --help` stays quick."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coldchain.settings import Settings

COMMANDS = frozenset({"users", "orgs", "api-keys", "audit"})
_ROLES = ["admin", "qa", "logistics", "driver", "erp", "viewer"]


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the identity subcommands to the `coldchain` parser."""

    def leaf(parent: Any, name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=text)
        common(parser)  # --config and --data-dir (the installation, when DATABASE_URL is not set)
        return parser

    users = sub.add_parser("users", help="people who sign in (and sign)")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    create = leaf(users_sub, "create", "create a user; the password is read from standard input")
    create.add_argument("--email", required=True)
    create.add_argument("--name", required=True, help="printed name, shown on every signature")
    create.add_argument("--role", required=True, action="append", choices=_ROLES, help="repeat for several")
    create.add_argument("--organization", default="default")
    create.add_argument("--password-stdin", action="store_true", required=True)
    listing = leaf(users_sub, "list", "list the users of an organization")
    listing.add_argument("--organization", default="default")

    orgs = sub.add_parser("orgs", help="organizations (tenants and partners)")
    orgs_sub = orgs.add_subparsers(dest="orgs_command", required=True)
    org = leaf(orgs_sub, "create", "create an organization")
    org.add_argument("id")
    org.add_argument("--name", required=True)
    org.add_argument(
        "--kind",
        default="manufacturer",
        choices=["manufacturer", "3pl", "carrier", "customer", "hospital", "partner"],
    )

    keys = sub.add_parser("api-keys", help="API keys for machines")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    kc = leaf(keys_sub, "create", "create a key and print it once")
    kc.add_argument("--name", required=True)
    kc.add_argument("--role", required=True, choices=_ROLES)
    kc.add_argument("--expires-in-days", type=int, default=365)
    kc.add_argument("--organization", default="default")
    kl = leaf(keys_sub, "list", "list keys (never their values)")
    kl.add_argument("--organization", default="default")
    kl.add_argument("--include-revoked", action="store_true")
    kr = leaf(keys_sub, "revoke", "revoke a key by id")
    kr.add_argument("id", type=int)
    kr.add_argument("--organization", default="default")

    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = leaf(
        audit_sub,
        "verify",
        "check every link, the recorded head and the signed checkpoints (exit 0 when intact)",
    )
    verify.add_argument(
        "--public-key",
        type=Path,
        help="the platform's public key (PEM, from GET /evidence/public-key) to check the signed"
        " checkpoints with; default: the key in the data folder, when there is one",
    )
    leaf(audit_sub, "checkpoint", "sign the current head of every organization's trail with the platform key")


def dispatch(args: argparse.Namespace, settings: Settings, dsn: str) -> int:
    """Run an identity command against `dsn` (DATABASE_URL, or the installation's owner role)."""
    from storage.db import connect

    with connect(dsn, autocommit=True) as conn:
        if args.command == "users":
            return _users(conn, args, settings)
        if args.command == "orgs":
            from storage import organizations

            print(
                json.dumps(
                    organizations.create(conn, slug=args.id, name=args.name, kind=args.kind, actor="cli"),
                    default=str,
                )
            )
            return 0
        if args.command == "api-keys":
            return _keys(conn, args)
        return _audit(conn, args, settings)


def checkpoint_key(args: argparse.Namespace | None, settings: Settings) -> bytes | None:
    """The HMAC key of checkpoints made before the platform's Ed25519 key signed them (from
    SECRET_KEY, or the embedded install's): only to verify those older checkpoints."""
    from coldchain.access_tokens import derive_key

    secret = "" if settings.secret_key_generated else settings.secret_key.get_secret_value()
    data_dir = getattr(args, "data_dir", None) if args is not None else None
    if not secret and data_dir is not None and (data_dir / "secrets" / "secret-key").exists():
        secret = (data_dir / "secrets" / "secret-key").read_text().strip()
    return derive_key(secret, "audit-checkpoint") if secret else None


def platform_signer(settings: Settings) -> tuple[Callable[[bytes], bytes], str]:
    """The platform's Ed25519 key (the evidence signing key in the data folder, made on first
    use) as the audit checkpoints' signing function, and its key id."""
    from evidence.signing import signing_key

    key = signing_key(settings.data_dir)
    return key.sign, key.key_id


def platform_verifier(
    settings: Settings, public_key: Path | None = None
) -> tuple[Callable[[bytes, bytes], bool], str] | None:
    """What checks the signed checkpoints: the public key given (an auditor's copy), else the
    data folder's key if there is one (verifying never makes a key); None without either."""
    from evidence.signing import existing_public_key, key_id, load_public_key, verify_signature

    public = existing_public_key(settings.data_dir) if public_key is None else None
    if public_key is not None:
        public = load_public_key(public_key.read_bytes())
    if public is None:
        return None
    return (lambda signature, message: verify_signature(public, signature, message)), key_id(public)


class Checkpoints:
    """Signs the audit heads every `interval_s` in a thread of its own (and once more at stop)."""

    def __init__(self, dsn: str, sign: Callable[[bytes], bytes], key_id: str, interval_s: float) -> None:
        import threading

        self._dsn, self._sign, self._key_id, self._interval = dsn, sign, key_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-checkpoints", daemon=True)

    def _once(self) -> None:
        from storage import audit
        from storage.db import connect

        try:
            with connect(self._dsn, autocommit=True) as conn:
                audit.checkpoint(conn, sign=self._sign, key_id=self._key_id)
        except Exception:  # a failed checkpoint is retried at the next interval
            import logging

            logging.getLogger(__name__).exception("audit checkpoint failed")

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._once()

    def start(self) -> Checkpoints:
        self._once()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._once()


def _users(conn: Any, args: argparse.Namespace, settings: Settings) -> int:
    from api import identity
    from coldchain.access import parse_roles
    from storage import auth, users

    org = auth.org_id(conn, args.organization)
    if args.users_command == "list":
        for user in users.list_users(conn, org=org):
            print(json.dumps(user.public(), default=str))
        return 0
    password = sys.stdin.readline().rstrip("\r\n")
    user = users.create_user(
        conn,
        org=org,
        email=args.email,
        printed_name=args.name,
        roles=parse_roles(args.role),
        password=password,
        actor="cli",
        policy=identity.policy(settings),
        hashing=identity.hashing(settings),
    )
    print(json.dumps(user.public(), default=str))
    return 0


def _keys(conn: Any, args: argparse.Namespace) -> int:
    from coldchain.access import Role
    from storage import api_keys, auth

    org = auth.org_id(conn, args.organization)
    if args.keys_command == "create":
        row, key = api_keys.create_key(
            conn,
            org=org,
            name=args.name,
            role=Role(args.role),
            expires_in_days=args.expires_in_days,
            actor="cli",
        )
        print(json.dumps({**row.public(), "key": key}, default=str))
    elif args.keys_command == "list":
        for row in api_keys.list_keys(conn, org=org, include_revoked=args.include_revoked):
            print(json.dumps(row.public(), default=str))
    else:
        row = api_keys.revoke_key(conn, org=org, key_id=args.id, actor="cli")
        print(json.dumps(row.public(), default=str))
    return 0


def _audit(conn: Any, args: argparse.Namespace, settings: Settings) -> int:
    from storage import audit

    if args.audit_command == "checkpoint":
        sign, signer_id = platform_signer(settings)
        print(f"signed {audit.checkpoint(conn, sign=sign, key_id=signer_id)} checkpoint(s) with {signer_id}")
        return 0
    verifier = platform_verifier(settings, args.public_key)
    verify = None if verifier is None else verifier[0]
    key_id = None if verifier is None else verifier[1]
    verdict = audit.verify_trail(
        conn, checkpoint_key=checkpoint_key(args, settings), verify=verify, key_id=key_id
    )
    if verdict.intact:
        checked = f"{verdict.signed_checkpoints} signed checkpoints checked"
        if key_id is not None:
            checked += f" with {key_id}"
        if verdict.unchecked_checkpoints:
            checked += (
                f", {verdict.unchecked_checkpoints} not checked (no public key, or no SECRET_KEY"
                " for checkpoints older than the platform key's)"
            )
        print(
            f"audit trail intact: {verdict.rows} rows in {verdict.organizations} organization(s), {checked}"
        )
        return 0
    print(
        f"audit trail BROKEN at row {verdict.row_id} (organization {verdict.org_id}): {verdict.reason}",
        file=sys.stderr,
    )
    return 3
