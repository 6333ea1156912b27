#!/bin/bash
# tests/bench/qcow2.sh — qcow2 through FUSE: diskstack against
# qemu-storage-daemon, side by side.  Not a test: it prints numbers and never
# fails on them.
#
#   tests/bench/qcow2.sh [--quick] [--build DIR] [--out DIR] [--size SIZE]
#
# --build: where diskstack was built (default: build); --out: results dir
# (default: BUILD/bench-results); --size: image size for fio (default 1G;
# a smaller size is only for trying the script); --quick: 2 s per workload
# instead of 5.
#
# Both daemons get the same graph: qcow2 over file (cache.direct=on) on the
# same image, exported through FUSE.  Workloads, fio psync direct=1, 4 jobs:
#   randread-4k         4k random read,  fully allocated image
#   randwrite-4k-fresh  4k random write, fresh image (every write allocates)
#   randwrite-4k-alloc  4k random write, fully allocated image
#   seqwrite-1m-fresh   1M sequential write, fresh image
#   seqread-1m          1M sequential read, fully allocated image
# Also the peak RSS (VmHWM) of each daemon over its runs, and the ratios
# diskstack/qsd.  The table uses report.py's per-run summary (IOPS, MiB/s,
# p99, daemon CPU per I/O); results also go to OUT/qcow2-results.json.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$HERE/lib.sh"    # also ROOT, and the defaults of BUILD, OUT, RUNTIME
QUICK=0
SIZE=1G

usage() { bench_usage 24; }
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) RUNTIME=2; QUICK=1 ;;
    --build) BUILD=$(cd "$2" && pwd); shift ;;
    --out) OUT="$2"; shift ;;
    --size) SIZE="$2"; shift ;;
    -h|--help) usage ;;
    *) echo "qcow2.sh: unknown argument $1" >&2; usage ;;
    esac
    shift
done
OUT=$(bench_out_dir "$OUT")
DISKSTACK="$BUILD/diskstack"
bench_need fio qemu-img qemu-storage-daemon
[ -x "$DISKSTACK" ] || { echo "qcow2.sh: $DISKSTACK not built" >&2; exit 1; }

WORK=$(mktemp -d "$BUILD/bench-qcow2.XXXXXX")
FULL="$WORK/full.qcow2"       # fully allocated, made once
IMG="$WORK/disk.qcow2"        # what the daemon serves
MP="$WORK/export.img"
MANIFEST="$OUT/qcow2-manifest.tsv"
RSS="$OUT/qcow2-rss.tsv"
DAEMON_PID=""

bench_trap_cleanup

# Starts "$@" in the background; waits (bounded) for the mount to appear.
start_daemon() {
    local name=$1; shift
    : > "$MP"
    "$@" >> "$OUT/qcow2-$name.log" 2>&1 &
    DAEMON_PID=$!
    bench_wait_mounted "$name" "$OUT/qcow2-$name.log" 30 is_mounted "$MP"
}

# Records the daemon's peak RSS, then stops it and waits for the unmount.
stop_daemon() {
    if [ -n "$DAEMON_PID" ] && [ -r "/proc/$DAEMON_PID/status" ] &&
            [ -n "${CUR_TARGET:-}" ]; then
        awk -v t="$CUR_TARGET" '/^VmHWM:/ { printf "%s\t%s\n", t, $2 }' \
            "/proc/$DAEMON_PID/status" >> "$RSS"
    fi
    bench_kill_daemon
    bench_unmount "$MP"
}

# fio_run TARGET WORKLOAD FIO-ARGS...
fio_run() {
    local target=$1 wname=$2; shift 2
    bench_fio "$target" "$wname" "$OUT/qcow2-$target-$wname.json" \
        --name="$wname" --filename="$MP" --ioengine=psync --numjobs=4 \
        --size="$SIZE" --fallocate=none "$@" || return 0
    echo "  $target $wname done" >&2
}

fresh_image() {
    rm -f "$IMG"
    qemu-img create -q -f qcow2 "$IMG" "$SIZE"
}

# The same --blockdev/--export arguments for both daemons.
defs() {
    echo "--blockdev driver=file,node-name=f0,filename=$IMG,cache.direct=on"
    echo "--blockdev driver=qcow2,node-name=disk,file=f0"
    echo "--export type=fuse,id=e0,node-name=disk,mountpoint=$MP,writable=on"
}

# bench_target NAME COMMAND...: all five workloads against one daemon.
bench_target() {
    local name=$1; shift
    local -a args
    mapfile -t lines < <(defs)
    args=()
    for l in "${lines[@]}"; do read -r opt val <<< "$l"; args+=("$opt" "$val"); done
    CUR_TARGET=$name

    # Written with O_DIRECT like run.sh's raw image: a file copied with
    # `cp --sparse=never` takes 4k O_DIRECT random writes at about half the
    # speed here, whatever format or daemon sits on top (raw over such a
    # file: 16-20k IOPS; over a dd oflag=direct copy: 30-39k).
    rm -f "$IMG"
    dd if="$FULL" of="$IMG" bs=1M oflag=direct status=none
    if start_daemon "$name" "$@" "${args[@]}"; then
        fio_run "$name" randread-4k --rw=randread --bs=4k
        fio_run "$name" seqread-1m --rw=read --bs=1M
        fio_run "$name" randwrite-4k-alloc --rw=randwrite --bs=4k
        stop_daemon
    fi
    fresh_image
    if start_daemon "$name" "$@" "${args[@]}"; then
        fio_run "$name" randwrite-4k-fresh --rw=randwrite --bs=4k
        stop_daemon
    fi
    fresh_image
    if start_daemon "$name" "$@" "${args[@]}"; then
        # each job writes its own quarter of the file (the later --size wins)
        fio_run "$name" seqwrite-1m-fresh --rw=write --bs=1M --size=25% \
            --offset_increment=25%
        stop_daemon
    fi
    CUR_TARGET=""
}

: > "$MANIFEST"
: > "$RSS"
echo "qcow2.sh: preparing a fully allocated $SIZE qcow2 image" >&2
qemu-img create -q -f qcow2 -o preallocation=full "$FULL" "$SIZE"

echo "qcow2.sh: qemu-storage-daemon" >&2
bench_target qsd qemu-storage-daemon
echo "qcow2.sh: diskstack serve" >&2
bench_target diskstack "$DISKSTACK" serve

python3 - "$HERE" "$MANIFEST" "$RSS" "$OUT/qcow2-results.json" "$RUNTIME" "$SIZE" <<'PY'
import json, os, sys
sys.path.insert(0, sys.argv[1])
import report                     # report.py: one fio JSON -> one summary

manifest, rss_file, out_json, runtime, size = sys.argv[2:7]
WORKLOADS = ['randread-4k', 'randwrite-4k-fresh', 'randwrite-4k-alloc',
             'seqwrite-1m-fresh', 'seqread-1m']
TARGETS = ['qsd', 'diskstack']
results = report.load(manifest, os.sysconf('SC_CLK_TCK'))
# report.load counts CPU only for its own daemon names: qsd and diskstack are.
rss = {}
with open(rss_file) as f:
    for line in f:
        t, kb = line.split()
        rss[t] = max(rss.get(t, 0), int(kb))

print('\nqcow2 over file through FUSE, fio psync direct=1, 4 jobs, %ss each, '
      'image %s' % (runtime, size))
header = '%-19s %-10s %10s %9s %10s %11s' % ('workload', 'target', 'IOPS', 'MiB/s',
                                             'p99 us', 'CPU us/IO')
print(header)
print('-' * len(header))
ratios = []
for w in WORKLOADS:
    first = True
    for t in TARGETS:
        r = results.get((t, w))
        if r:
            print('%-19s %-10s %10s %9s %10s %11s' % (
                w if first else '', t, report.fmt(r['iops'], '10.0f', 10),
                report.fmt(r['mib_s'], '9.1f', 9), report.fmt(r['p99_us'], '10.0f', 10),
                report.fmt(r['cpu_us_per_io'], '11.1f', 11)))
            first = False
    ds, q = results.get(('diskstack', w)), results.get(('qsd', w))
    if ds and q:
        row = {'workload': w, 'iops_vs_qsd': report.ratio(ds['iops'], q['iops']),
               'cpu_vs_qsd': report.ratio(ds['cpu_us_per_io'], q['cpu_us_per_io'])}
        ratios.append(row)
        print('%-19s %-10s IOPS/qsd %s, CPU/qsd %s' % (
            '', 'diskstack', report.fmt(row['iops_vs_qsd'], '.2fx', 1),
            report.fmt(row['cpu_vs_qsd'], '.2fx', 1)))
    print()
print('peak RSS (VmHWM): ' + ', '.join('%s %.1f MiB' % (t, rss[t] / 1024)
                                        for t in TARGETS if t in rss))
if 'qsd' in rss and 'diskstack' in rss:
    print('RSS diskstack/qsd: %.2fx' % (rss['diskstack'] / rss['qsd']))
with open(out_json, 'w') as f:
    json.dump({'runtime_s': int(runtime), 'size': size, 'peak_rss_kib': rss,
               'results': [dict(target=t, workload=w, **results[(t, w)])
                           for w in WORKLOADS for t in TARGETS if (t, w) in results],
               'ratios': ratios}, f, indent=2)
PY
echo "qcow2.sh: raw results in $OUT/qcow2-results.json" >&2
