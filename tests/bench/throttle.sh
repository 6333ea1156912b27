#!/bin/bash
# tests/bench/throttle.sh — what the throttle filter costs.  Not a test: it
# prints numbers and never fails on them.
#
#   tests/bench/throttle.sh [--quick] [--build DIR] [--out DIR]
#                           [--iothreads N] [--limit IOPS] [--qsd]
#
# --build: where diskstack was built (default: build); --out: results dir
# (default: BUILD/bench-results); --iothreads: diskstack IOThreads (default:
# diskstack's own); --limit: the limited group's iops-total (default 2000);
# --qsd: also run qemu-storage-daemon with the same arguments, for comparison.
#
# One daemon serves one preallocated raw image three ways at once:
#   direct     the raw node "disk" exported as it is
#   unlimited  a throttle node over "disk" in a group with no limits
#   limited    a throttle node over "disk" in a group with iops-total=LIMIT
# Workload: fio 4k random read, psync, 4 jobs, direct=1 (5 s per run,
# --quick 2 s).  direct and unlimited run alternately, twice each, and the
# ratio of their mean IOPS is the overhead of an idle throttle node (target:
# under 5%).  CPU per request is the daemon's utime+stime from /proc/PID/stat
# over a run divided by the requests fio completed, for direct and limited.
# Output: a table, and OUT/throttle-results.json.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$HERE/lib.sh"    # also ROOT, and the defaults of BUILD, OUT, RUNTIME
ROUNDS=2
IOTHREADS=""
LIMIT=2000
WITH_QSD=0

usage() { bench_usage 22; }
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) RUNTIME=2 ;;
    --build) BUILD=$(cd "$2" && pwd); shift ;;
    --out) OUT="$2"; shift ;;
    --iothreads) IOTHREADS="$2"; shift ;;
    --limit) LIMIT="$2"; shift ;;
    --qsd) WITH_QSD=1 ;;
    -h|--help) usage ;;
    *) echo "throttle.sh: unknown argument $1" >&2; usage ;;
    esac
    shift
done
OUT=$(bench_out_dir "$OUT")

bench_need fio
if [ $WITH_QSD = 1 ] && ! command -v qemu-storage-daemon >/dev/null; then
    echo "throttle.sh: --qsd needs qemu-storage-daemon" >&2
    exit 1
fi
bench_need_fuse
DISKSTACK="$BUILD/diskstack"
[ -x "$DISKSTACK" ] || { echo "throttle.sh: $DISKSTACK not built" >&2; exit 1; }

WORK=$(mktemp -d "$BUILD/bench-throttle.XXXXXX")
IMG="$WORK/disk.raw"
TARGETS=(direct unlimited limited)
MANIFEST="$OUT/throttle-manifest.tsv"
DAEMON_PID=""

mp() { echo "$WORK/$1.img"; }

bench_trap_cleanup

all_mounted() {
    for t in "${TARGETS[@]}"; do
        is_mounted "$(mp "$t")" || return 1
    done
}

# Starts "$@" in the background and waits (bounded) for the three mounts.
start_daemon() {
    local name=$1; shift
    for t in "${TARGETS[@]}"; do : > "$(mp "$t")"; done
    "$@" > "$OUT/throttle-$name.log" 2>&1 &
    DAEMON_PID=$!
    bench_wait_mounted "$name" "$OUT/throttle-$name.log" 20 all_mounted
}

stop_daemon() {
    bench_kill_daemon
    for t in "${TARGETS[@]}"; do
        bench_unmount "$(mp "$t")"
    done
}

# One fio run of 4k random reads on target; a manifest line per run.
run_fio() {
    local daemon=$1 target=$2 round=$3
    bench_fio "$daemon" "$target" "$OUT/throttle-$daemon-$target-$round.json" \
        --name="$target" --filename="$(mp "$target")" --ioengine=psync \
        --rw=randread --bs=4k --numjobs=4 --size=256M || return 0
    echo "  $daemon $target (round $round) done" >&2
}

run_daemon() {
    local name=$1; shift
    echo "throttle.sh: $name" >&2
    start_daemon "$name" "$@" || return 0
    for round in $(seq 1 $ROUNDS); do
        run_fio "$name" direct "$round"
        run_fio "$name" unlimited "$round"
    done
    run_fio "$name" limited 1
    stop_daemon
}

echo "throttle.sh: preparing a 256 MiB preallocated raw image in $WORK" >&2
# Real data, not unwritten extents: reads must reach the disk.
dd if=/dev/zero of="$IMG" bs=1M count=256 oflag=direct status=none
sync "$IMG"
: > "$MANIFEST"

# QEMU's syntax, so both daemons take the same arguments.
DEFS=(--object "throttle-group,id=gfree"
      --object "throttle-group,id=glimit,limits.iops-total=$LIMIT"
      --blockdev "driver=file,node-name=f0,filename=$IMG,cache.direct=on"
      --blockdev "driver=raw,node-name=disk,file=f0"
      --blockdev "driver=throttle,node-name=tfree,throttle-group=gfree,file=disk"
      --blockdev "driver=throttle,node-name=tlimit,throttle-group=glimit,file=disk"
      --export "type=fuse,id=e0,node-name=disk,mountpoint=$(mp direct)"
      --export "type=fuse,id=e1,node-name=tfree,mountpoint=$(mp unlimited)"
      --export "type=fuse,id=e2,node-name=tlimit,mountpoint=$(mp limited)")

DS_EXTRA=()
[ -z "$IOTHREADS" ] || DS_EXTRA=(--iothreads "$IOTHREADS")
run_daemon diskstack "$DISKSTACK" serve "${DEFS[@]}" "${DS_EXTRA[@]}"
[ $WITH_QSD = 0 ] || run_daemon qsd qemu-storage-daemon "${DEFS[@]}"

python3 - "$MANIFEST" "$OUT/throttle-results.json" "$LIMIT" "$RUNTIME" <<'EOF'
import json, os, sys
manifest, out, limit, runtime = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
hz = os.sysconf('SC_CLK_TCK')
runs = {}
for line in open(manifest):
    daemon, target, path, before, after = line.rstrip('\n').split('\t')
    read = json.load(open(path))['jobs'][0]['read']
    r = runs.setdefault(daemon, {}).setdefault(target, {'iops': [], 'ios': 0, 'ticks': 0})
    r['iops'].append(read['iops'])
    r['ios'] += read['total_ios']
    r['ticks'] += int(after) - int(before)

def mean(xs):
    return sum(xs) / len(xs) if xs else float('nan')

def cpu_us(r):
    return r['ticks'] / hz / r['ios'] * 1e6 if r and r['ios'] else float('nan')

results = {}
print(f"\nthrottle overhead (target: under 5%): fio 4k random read, psync, 4 jobs, direct=1, {runtime} s per run")
print(f"{'daemon':<10} {'direct IOPS':>12} {'unlimited IOPS':>15} {'ratio':>7} {'overhead':>9}")
for daemon, t in runs.items():
    d, u = mean(t.get('direct', {}).get('iops', [])), mean(t.get('unlimited', {}).get('iops', []))
    ratio = u / d if d else float('nan')
    print(f"{daemon:<10} {d:>12.0f} {u:>15.0f} {ratio:>7.3f} {(1 - ratio) * 100:>8.1f}%")
    results[daemon] = {'direct_iops': d, 'unlimited_iops': u, 'ratio': ratio}
print("\nCPU per request (daemon utime+stime over the run / requests)")
print(f"{'daemon':<10} {'direct':>10} {'limited':>10} {'limited IOPS':>13} {'limit':>7}")
for daemon, t in runs.items():
    d, l = t.get('direct'), t.get('limited')
    li = mean(l['iops']) if l else float('nan')
    print(f"{daemon:<10} {cpu_us(d):>8.1f}us {cpu_us(l):>8.1f}us {li:>13.0f} {limit:>7}")
    results[daemon].update({'cpu_us_per_req_direct': cpu_us(d),
                            'cpu_us_per_req_limited': cpu_us(l),
                            'limited_iops': li, 'limit': limit})
json.dump(results, open(out, 'w'), indent=2)
EOF
echo "throttle.sh: results in $OUT/throttle-results.json" >&2
