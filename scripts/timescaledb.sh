#!/usr/bin/env bash
# Build and install TimescaleDB from a source archive into the machine's PostgreSQL, once.
#
# Usage: scripts/timescaledb.sh ARCHIVE   (or TIMESCALEDB_SOURCE=ARCHIVE scripts/timescaledb.sh)
# ARCHIVE is a release tarball (a `git archive` of a tag) of timescale/timescaledb. A relative
# path is taken from the repository root. Does nothing when timescaledb is already installed for
# the PostgreSQL found here: from Timescale's packages, or built here from the same archive and
# patches (a stamp beside the control file records which). Patches for the archive's version
# (scripts/timescaledb-patches/MAJOR.MINOR-*.patch) are applied before building. Build
# dependencies (cmake, postgresql-server-dev-N) come from apt. The build runs in a scratch folder
# under ${TMPDIR:-/var/tmp} that is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

archive="${1:-${TIMESCALEDB_SOURCE:-}}"
if [ -z "$archive" ]; then
    echo "timescaledb: no source archive given (set TIMESCALEDB_SOURCE)" >&2
    exit 2
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "timescaledb: need root (or sudo) to run: $*" >&2; exit 1; fi
}

# The newest PostgreSQL server installed, the one embedded/postgres.py starts.
pg_bindir=""
for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && pg_bindir="$dir"
done
if [ -z "$pg_bindir" ]; then
    echo "timescaledb: no PostgreSQL server found under /usr/lib/postgresql" >&2
    exit 1
fi
pg_major="$(basename "$(dirname "$pg_bindir")")"

case "$archive" in /*) ;; *) archive="$PWD/$archive" ;; esac
if [ ! -f "$archive" ]; then
    echo "timescaledb: source archive not found: $archive" >&2
    exit 1
fi
patches=()
version="$(basename "$archive" | sed -n 's/^timescaledb-\([0-9]*\.[0-9]*\)\..*/\1/p')"
for p in scripts/timescaledb-patches/"$version"-*.patch; do
    [ -f "$p" ] && patches+=("$PWD/$p")
done
build_id="$(cat "$archive" ${patches[@]+"${patches[@]}"} | sha256sum | cut -c1-16)"
extension_dir="/usr/share/postgresql/$pg_major/extension"
stamp="$extension_dir/timescaledb.coldchain-build"

installed() {
    [ -f "$extension_dir/timescaledb.control" ] &&
        ls "/usr/lib/postgresql/$pg_major/lib/"timescaledb*.so >/dev/null 2>&1 || return 1
    # installed by a package (no stamp), or built here from this very archive and patches
    [ ! -f "$stamp" ] || [ "$(cat "$stamp")" = "$build_id" ]
}
if installed; then
    exit 0
fi

# One build at a time on a machine; a second caller waits and then finds it installed.
exec 9>"${TMPDIR:-/var/tmp}/coldchain-timescaledb.lock"
flock 9
if installed; then
    exit 0
fi

needed=()
command -v cmake >/dev/null || needed+=(cmake)
dpkg -s "postgresql-server-dev-$pg_major" >/dev/null 2>&1 || needed+=("postgresql-server-dev-$pg_major")
command -v gcc >/dev/null || needed+=(gcc)
command -v make >/dev/null || needed+=(make)
command -v patch >/dev/null || needed+=(patch)
dpkg -s libssl-dev >/dev/null 2>&1 || needed+=(libssl-dev)
if [ ${#needed[@]} -gt 0 ]; then
    echo "timescaledb: installing build dependencies ${needed[*]}"
    apt_log="$(mktemp "${TMPDIR:-/var/tmp}/coldchain-timescaledb-apt.XXXXXX")"
    { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${needed[@]}"; } >"$apt_log" 2>&1 || { tail -n 40 "$apt_log" >&2; rm -f "$apt_log"; exit 1; }
    rm -f "$apt_log"
fi

scratch="$(mktemp -d "${TMPDIR:-/var/tmp}/coldchain-timescaledb.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
echo "timescaledb: building $(basename "$archive") for PostgreSQL $pg_major in $scratch"
started=$SECONDS
tar xzf "$archive" -C "$scratch"
src="$(find "$scratch" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
(
    cd "$src"
    for p in ${patches[@]+"${patches[@]}"}; do
        echo "timescaledb: applying $(basename "$p")"
        patch -p1 --quiet <"$p"
    done
    export PATH="$pg_bindir:$PATH"
    ./bootstrap -DPG_CONFIG="$pg_bindir/pg_config" -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
        -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF -DGENERATE_DOWNGRADE_SCRIPT=OFF \
        -DUSE_TELEMETRY=OFF >"$scratch/configure.log" 2>&1 ||
        { tail -n 40 "$scratch/configure.log" >&2; exit 1; }
    make -C build -j"$(nproc)" >"$scratch/build.log" 2>&1 ||
        { tail -n 40 "$scratch/build.log" >&2; exit 1; }
    as_root make -C build install >"$scratch/install.log" 2>&1 ||
        { tail -n 40 "$scratch/install.log" >&2; exit 1; }
)
echo "$build_id" | as_root tee "$stamp" >/dev/null
installed || { echo "timescaledb: install finished but the extension is not in place" >&2; exit 1; }
echo "timescaledb: installed for PostgreSQL $pg_major in $((SECONDS - started)) s"
