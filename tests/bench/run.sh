#!/bin/bash
# tests/bench/run.sh — diskstack's FUSE export against its ceilings and
# against qemu-storage-daemon, side by side in one run.  Not a test: it
# prints numbers and never fails on them.
#
#   tests/bench/run.sh [--quick] [--build DIR] [--out DIR] [--iothreads N]
#
# --build: where diskstack was built (default: build); --out: results dir
# (default: BUILD/bench-results); --iothreads: diskstack IOThreads and
# null-fuse threads (default: diskstack's own default, nproc threads).
#
# Targets (the same 1 GiB preallocated raw image for all of them):
#   disk       the raw file itself, fio io_uring, direct=1   (disk ceiling)
#   null-fuse  a do-nothing FUSE file (null-fuse.c)          (FUSE ceiling)
#   qsd        qemu-storage-daemon's FUSE export of the image
#   diskstack  `diskstack serve` with the identical --blockdev/--export args
# Workloads (fio psync, direct=1 on the FUSE files; 5 s each, --quick 2 s):
#   4k random read / write / 70-30 mix with 4 jobs, 1M sequential read /
#   write with 1 job.
# Output: a table (report.py) and OUT/bench-results.json.  Daemon CPU per
# I/O is utime+stime of the daemon from /proc/PID/stat around each workload.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$HERE/lib.sh"    # also ROOT, and the defaults of BUILD, OUT, RUNTIME
IOTHREADS=""
QUICK=0

usage() { bench_usage 21; }
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) RUNTIME=2; QUICK=1 ;;
    --build) BUILD=$(cd "$2" && pwd); shift ;;
    --out) OUT="$2"; shift ;;
    --iothreads) IOTHREADS="$2"; shift ;;
    -h|--help) usage ;;
    *) echo "run.sh: unknown argument $1" >&2; usage ;;
    esac
    shift
done
OUT=$(bench_out_dir "$OUT")

need_apt=()
command -v fio >/dev/null || need_apt+=(fio)
command -v qemu-storage-daemon >/dev/null || need_apt+=(qemu-system-common)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "run.sh: installing ${need_apt[*]} from Debian" >&2
    apt-get install -y "${need_apt[@]}" >&2
fi
bench_need_fuse

# The image lives next to the build tree, so all targets use one filesystem.
WORK=$(mktemp -d "$BUILD/bench-work.XXXXXX")
IMG="$WORK/disk.raw"
MP="$WORK/export.img"
MANIFEST="$OUT/manifest.tsv"
DAEMON_PID=""

bench_trap_cleanup

# Starts "$@" in the background and waits (bounded) for the mount to appear.
start_daemon() {
    local name=$1; shift
    : > "$MP"
    "$@" > "$OUT/$name.log" 2>&1 &
    DAEMON_PID=$!
    bench_wait_mounted "$name" "$OUT/$name.log" 20 is_mounted "$MP"
}

stop_daemon() {
    bench_kill_daemon
    bench_unmount "$MP"
}

WORKLOADS=(
    "randread-4k  --rw=randread --bs=4k --numjobs=4"
    "randwrite-4k --rw=randwrite --bs=4k --numjobs=4"
    "randrw70-4k  --rw=randrw --rwmixread=70 --bs=4k --numjobs=4"
    "seqread-1m   --rw=read --bs=1M --numjobs=1"
    "seqwrite-1m  --rw=write --bs=1M --numjobs=1"
)

run_workloads() {
    local target=$1 file=$2 engine=$3
    for w in "${WORKLOADS[@]}"; do
        read -r wname wargs <<< "$w"
        # shellcheck disable=SC2086
        bench_fio "$target" "$wname" "$OUT/$target-$wname.json" \
            --name="$wname" --filename="$file" --ioengine="$engine" \
            --size=1G --fallocate=none $wargs || continue
        echo "  $target $wname done" >&2
    done
}

echo "run.sh: preparing a 1 GiB preallocated raw image in $WORK" >&2
# Real data, not unwritten extents: reads must reach the disk.
dd if=/dev/zero of="$IMG" bs=1M count=1024 oflag=direct status=none
sync "$IMG"
# shellcheck disable=SC2046  # pkg-config output is meant to be split
cc -O2 -o "$WORK/null-fuse" "$HERE/null-fuse.c" \
    $(pkg-config --cflags --libs fuse3) -lpthread

: > "$MANIFEST"
NPROC=$(nproc)
IOT=${IOTHREADS:-$NPROC}

echo "run.sh: disk ceiling (fio io_uring on the raw file)" >&2
run_workloads disk "$IMG" io_uring

echo "run.sh: null-fuse ($IOT threads)" >&2
if start_daemon null-fuse "$WORK/null-fuse" -t "$IOT" -s 1024 "$MP"; then
    run_workloads null-fuse "$MP" psync
    stop_daemon
fi

DEFS=(--blockdev "driver=file,node-name=f0,filename=$IMG,cache.direct=on"
      --blockdev "driver=raw,node-name=disk,file=f0"
      --export "type=fuse,id=e0,node-name=disk,mountpoint=$MP,writable=on")

echo "run.sh: qemu-storage-daemon" >&2
if start_daemon qsd qemu-storage-daemon "${DEFS[@]}"; then
    run_workloads qsd "$MP" psync
    stop_daemon
fi

DISKSTACK="$BUILD/diskstack"
# The same arguments as qemu-storage-daemon; --iothreads only if asked for
# (diskstack's default is one IOThread per core).
DS_EXTRA=()
[ -z "$IOTHREADS" ] || DS_EXTRA=(--iothreads "$IOTHREADS")
echo "run.sh: diskstack serve${DS_EXTRA[*]:+ ${DS_EXTRA[*]}}" >&2
if [ ! -x "$DISKSTACK" ]; then
    echo "run.sh: $DISKSTACK not built; skipping diskstack" >&2
elif start_daemon diskstack "$DISKSTACK" serve "${DEFS[@]}" "${DS_EXTRA[@]}"; then
    run_workloads diskstack "$MP" psync
    stop_daemon
fi

python3 "$HERE/report.py" --manifest "$MANIFEST" --runtime "$RUNTIME" \
    --quick "$QUICK" --iothreads "$IOT" --json "$OUT/bench-results.json"
echo "run.sh: raw results in $OUT/bench-results.json" >&2
