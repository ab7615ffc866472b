"""`coldchain evidence ...`: verify a bundle or PDF offline, print the platform's public key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coldchain.errors import ColdchainError
from coldchain.settings import load_settings
from evidence import bundle, signing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coldchain evidence", description="Evidence bundles and reports.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check a bundle (zip) or PDF; exit 0 only when authentic")
    verify.add_argument("file", type=Path)
    verify.add_argument("--deep", action="store_true", help="also re-hash every file against the manifest")
    verify.add_argument("--public-key", type=Path, help="a PEM public key file (else the data folder's)")
    verify.add_argument("--data-dir", type=Path,
                        help="the platform's data folder, whose key signed the file (DATA_DIR, ./.coldchain)")
    key = sub.add_parser("public-key", help="print the platform's Ed25519 public key (made on first use)")
    key.add_argument("--data-dir", type=Path, help="the platform's data folder (DATA_DIR, ./.coldchain)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.data_dir is None:
            args.data_dir = load_settings().data_dir
        if args.command == "public-key":
            key = signing.signing_key(args.data_dir)
            print(f"# {key.key_id}")
            print(signing.public_pem(key.public), end="")
            return 0
        if args.public_key is not None:
            public = signing.load_public_key(args.public_key.read_bytes())
        else:
            found = signing.existing_public_key(args.data_dir)
            if found is None:
                where = args.data_dir
                print(f"coldchain evidence: no key in {where}; pass --public-key FILE", file=sys.stderr)
                return 2
            public = found
        if not args.file.is_file():
            print(f"coldchain evidence: {args.file} is not a file", file=sys.stderr)
            return 2
        verdict = bundle.verify_path(args.file, public, deep=args.deep)
    except (ColdchainError, OSError) as exc:
        print(f"coldchain evidence: {exc}", file=sys.stderr)
        return 2
    subject = verdict.subject or {}
    what = ", ".join(f"{k}={v}" for k, v in subject.items() if isinstance(v, str | int)) or "unknown subject"
    if verdict.authentic:
        print(f"authentic {verdict.kind}: {what}; record sha256 {verdict.record_sha256}")
        return 0
    print(f"NOT authentic: {verdict.reason}", file=sys.stderr)
    return 1
