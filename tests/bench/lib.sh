# tests/bench/lib.sh — helpers the bench scripts (run.sh, qcow2.sh,
# throttle.sh) share; sourced, not run.
#
# It sets BENCH (the script's name, for messages), ROOT (the source tree)
# and the defaults of the options every script has: BUILD (ROOT/build),
# OUT (empty: BUILD/bench-results, see bench_out_dir) and RUNTIME (5 s per
# fio run).  The sourcing script sets DAEMON_PID ("" or the daemon it
# started), WORK (its scratch directory) and MANIFEST (where bench_fio
# records runs), and defines stop_daemon (which may use bench_kill_daemon
# and bench_unmount).
# shellcheck shell=bash disable=SC2034  # the defaults are the scripts'

BENCH=${0##*/}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD="$ROOT/build"
OUT=""
RUNTIME=5

# Prints the script's header comment, lines 2 to $1, as its usage; exits 2.
bench_usage() {
    sed -n "2,$1p" "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# Creates the results directory $1 (default: BUILD/bench-results) and
# prints its absolute path.
bench_out_dir() {
    local out=${1:-$BUILD/bench-results}
    mkdir -p "$out"
    (cd "$out" && pwd)
}

# Exits unless every tool named is on PATH.
bench_need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$BENCH: needs $tool" >&2; exit 1; }
    done
}

# Exits unless FUSE mounts are possible (root, or a writable /dev/fuse).
bench_need_fuse() {
    if [ "$(id -u)" != 0 ] && [ ! -w /dev/fuse ]; then
        echo "$BENCH: needs root or access to /dev/fuse" >&2
        exit 1
    fi
}

# On exit, stop the daemon and remove WORK; INT/TERM exit (running that).
bench_cleanup() {
    stop_daemon || true
    rm -rf "$WORK"
}
bench_trap_cleanup() {
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

is_mounted() { awk -v p="$1" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# bench_wait_mounted NAME LOG SECONDS CHECK...: waits until the command
# CHECK succeeds (the daemon's mounts are there), polling, bounded by
# SECONDS and by the daemon's life; on failure stops the daemon, points at
# its LOG and returns 1.
bench_wait_mounted() {
    local name=$1 log=$2 deadline=$((SECONDS + $3))
    shift 3
    until "$@"; do
        if ! kill -0 "$DAEMON_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            echo "$BENCH: $name did not mount; see $log" >&2
            tail -3 "$log" >&2 || true
            stop_daemon
            return 1
        fi
        sleep 0.05   # polling for the mounts, bounded by the deadline above
    done
}

# Stops the daemon (SIGTERM) and waits for it.
bench_kill_daemon() {
    if [ -n "$DAEMON_PID" ]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
        DAEMON_PID=""
    fi
}

# Unmounts $1 if something is still mounted there (lazily if busy).
bench_unmount() {
    if is_mounted "$1"; then
        fusermount3 -u "$1" 2>/dev/null || fusermount3 -u -z "$1" || true
    fi
}

# utime+stime of a whole process (all threads), in clock ticks.
# 0 with no process (or a dead one: its fio run fails and is left out).
cpu_ticks() {
    if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then
        sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
    else
        echo 0
    fi
}

# bench_fio K1 K2 JSON FIO-ARGS...: one timed fio run (direct=1,
# iodepth=1, RUNTIME seconds, jobs reported as one) with its JSON report in
# JSON, and a MANIFEST line "K1 K2 JSON before after" with the daemon's CPU
# ticks around it.  A failed run is reported and left out: returns 1.
bench_fio() {
    local k1=$1 k2=$2 json=$3 before after
    shift 3
    before=$(cpu_ticks "$DAEMON_PID")
    if ! fio --direct=1 --iodepth=1 --time_based --runtime="$RUNTIME" \
            --group_reporting --output-format=json --output="$json" "$@" \
            >/dev/null 2>"$json.err"; then
        echo "$BENCH: fio $k1 $k2 failed: $(tail -1 "$json.err")" >&2
        return 1
    fi
    after=$(cpu_ticks "$DAEMON_PID")
    printf '%s\t%s\t%s\t%s\t%s\n' "$k1" "$k2" "$json" "$before" "$after" \
        >> "$MANIFEST"
}
