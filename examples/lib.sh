# examples/lib.sh — what every example does first (sourced, not run).
#
# Finds diskstack (DISKSTACK=path overrides; otherwise build/diskstack,
# built there first if missing), works in a temporary directory removed at
# exit, and on exit stops the daemon ($pid) and a background job ($bg) the
# example started.  run CMD... prints a command, then runs it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ds=${DISKSTACK:-$root/build/diskstack}
if [ ! -x "$ds" ]; then
    echo "building diskstack in build/"
    [ -f "$root/build/build.ninja" ] || meson setup "$root/build" "$root" >/dev/null
    ninja -C "$root/build"
fi
dir=$(mktemp -d)
pid=
bg=
cleanup() {
    [ -n "$bg" ] && kill "$bg" 2>/dev/null && wait "$bg" 2>/dev/null
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
run() { printf '\n$ %s\n' "$*"; "$@"; }
