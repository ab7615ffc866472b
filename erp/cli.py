"""`coldchain import FILE --kind ...`: a bulk import from the command line, with a progress bar."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

KINDS = ("products", "lots", "sites", "shipments", "assignments")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser("import", help="bulk-import master data (CSV or JSON lines), all or nothing")
    parser.add_argument("file", type=Path, help="a CSV (with a header row) or JSON-lines file; - for stdin")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--dry-run", action="store_true", help="check and count, commit nothing")
    parser.add_argument("--organization", default="default")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--no-progress", action="store_true")
    return parser


class ProgressBar:
    """A one-line bar on a terminal (stderr), redrawn at most ten times a second."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        fraction = done / total if total else 1.0
        filled = int(fraction * 30)
        self.stream.write(f"\r{phase:<9} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        if phase == "writing" and done >= total:
            self.stream.write("\n")
        self.stream.flush()


def run(args: argparse.Namespace, database_url: str) -> int:
    """Exit 0 when committed (or a clean dry run), 1 when rows failed, 2 for unusable input."""
    from erp.imports import run_import
    from storage import auth
    from storage.db import connect

    data = sys.stdin.buffer.read() if str(args.file) == "-" else args.file.read_bytes()
    bar = ProgressBar(sys.stderr, enabled=not args.no_progress and sys.stderr.isatty())
    with connect(database_url, autocommit=True) as conn:
        org = auth.org_id(conn, args.organization)
        report = run_import(
            conn, org=org, kind=args.kind, data=data, actor="cli", dry_run=args.dry_run, progress=bar
        )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        state = (
            "committed"
            if report.committed
            else ("dry run, nothing committed" if args.dry_run else "nothing committed")
        )
        print(
            f"{report.kind.value}: {report.rows} rows, {report.inserted} inserted, {report.updated} updated,"
            f" {report.unchanged} unchanged; {state}"
        )
        for error in report.errors[:50]:
            where = f" {error.field}" if error.field else ""
            print(f"  row {error.row}{where}: {error.reason}")
        if report.error_count > 50:
            print(f"  ... {report.error_count - 50} more errors (use --json for all)")
    return 1 if report.error_count else 0
