#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine: the servers the platform and its tests
# run (PostgreSQL, Mosquitto) from apt when their binaries are missing, TimescaleDB built from the
# source archive that TIMESCALEDB_SOURCE names (once; skipped when installed), then .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "bootstrap: need root (or sudo) to install: $*" >&2; exit 1; fi
}

packages=()
have_initdb() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; }
have_initdb || packages+=(postgresql postgresql-contrib)
{ command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } || packages+=(mosquitto)
command -v mosquitto_passwd >/dev/null || command -v mosquitto_pub >/dev/null || packages+=(mosquitto-clients)

python_ok() {
    command -v python3 >/dev/null &&
        python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}
python_ok || packages+=(python3 python3-venv python3-dev)

if [ ${#packages[@]} -gt 0 ]; then
    echo "bootstrap: installing ${packages[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
python_ok || { echo "bootstrap: Python >= 3.11 with venv is required" >&2; exit 1; }

if [ -n "${TIMESCALEDB_SOURCE:-}" ]; then
    bash scripts/timescaledb.sh "$TIMESCALEDB_SOURCE"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=".venv/.coldchain-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    rm -f .venv/.coldchain-*
    touch "$stamp"
fi
