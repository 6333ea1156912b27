#!/bin/bash
# tests/bench/mirror.sh — blockdev-mirror of an allocated qcow2 image:
# diskstack against qemu-storage-daemon 7.2, idle and under a write load.
# Not a test: it prints numbers and never fails on them.
#
#   tests/bench/mirror.sh [--quick] [--build DIR] [--out DIR] [--size SIZE]
#                         [--jobs N] [--timeout S]
#
# Environment: BENCH_SIZE (image size, default 2G), BENCH_QUICK=1 (512M and
# 2 s baseline fio runs instead of 5 s) — the options win over them.
# --build: where diskstack was built (default: build); --out: results dir
# (default: BUILD/bench-results); --jobs: fio jobs of the write load
# (default 1); --timeout: how long to wait for BLOCK_JOB_READY (default 300).
#
# Each run starts a daemon on the same source (qcow2 full of random data,
# cache.direct=on) and a fresh empty qcow2 target, then a helper on the QMP
# socket starts blockdev-mirror sync=full and waits for BLOCK_JOB_READY:
#   idle   no I/O on the source during the copy
#   load   fio 4k random write (psync, direct=1, --jobs jobs) on the FUSE
#          export of the source, started before the mirror and stopped at
#          READY; the export's IOPS during the mirror are fio's write
#          syscalls between the start of the job and READY
# in both copy modes (background, write-blocking).  The baseline IOPS is the
# same fio load for the baseline runtime on the same daemon without a job.
# qemu-storage-daemon's writable FUSE export holds RESIZE, which mirror
# does not share: its idle runs export the source read-only, its load runs
# try a non-growable writable export and show "refused" if the mirror is.
# Output: a table with the ratios, and OUT/mirror-results.json.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$HERE/lib.sh"    # also ROOT, and the defaults of BUILD, OUT, RUNTIME
SIZE=${BENCH_SIZE:-2G}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    SIZE=${BENCH_SIZE:-512M}
    RUNTIME=2
fi
LOAD_JOBS=1
READY_TIMEOUT=300

usage() { bench_usage 28; }
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) RUNTIME=2; SIZE=512M ;;
    --build) BUILD=$(cd "$2" && pwd); shift ;;
    --out) OUT="$2"; shift ;;
    --size) SIZE="$2"; shift ;;
    --jobs) LOAD_JOBS="$2"; shift ;;
    --timeout) READY_TIMEOUT="$2"; shift ;;
    -h|--help) usage ;;
    *) echo "mirror.sh: unknown argument $1" >&2; usage ;;
    esac
    shift
done
OUT=$(bench_out_dir "$OUT")
DISKSTACK="$BUILD/diskstack"
bench_need fio qemu-img qemu-storage-daemon python3
bench_need_fuse
[ -x "$DISKSTACK" ] || { echo "mirror.sh: $DISKSTACK not built" >&2; exit 1; }

WORK=$(mktemp -d "$BUILD/bench-mirror.XXXXXX")
SRC="$WORK/src.qcow2"
TGT="$WORK/tgt.qcow2"
MP="$WORK/export.img"
SOCK="$WORK/qmp.sock"
HELPER="$WORK/mirror-job.py"
MANIFEST="$OUT/mirror-manifest.tsv"     # bench_fio: the baseline runs
RESULTS="$OUT/mirror-runs.tsv"          # the helper: one line per mirror
DAEMON_PID=""

bench_trap_cleanup

stop_daemon() {
    bench_kill_daemon
    bench_unmount "$MP"
    rm -f "$SOCK"
}

# The QMP side of a run: start the mirror, wait for READY, cancel.  With a
# fio command after "--", runs it as the load and counts its writes.
cat > "$HELPER" <<'PY'
import os, signal, socket, subprocess, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], 'tests', 'func'))
from qmp import QmpClient                      # tests/func/qmp.py

root, sock, daemon_pid, name, load, mode, timeout = sys.argv[1:8]
fio_cmd = sys.argv[9:] if len(sys.argv) > 8 and sys.argv[8] == '--' else []
timeout = float(timeout)


def until(cond, seconds, what):
    """Polls cond (bounded): the daemon's socket, fio's first writes."""
    deadline = time.monotonic() + seconds
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit('mirror-job: timed out waiting for ' + what)
        time.sleep(0.01)


def connect():
    try:
        os.kill(int(daemon_pid), 0)
    except ProcessLookupError:
        raise SystemExit('mirror-job: the daemon exited')
    try:
        return QmpClient(sock)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


def syscw(pid):
    """Write syscalls of a process (fio --thread: all its jobs)."""
    try:
        with open('/proc/%d/io' % pid) as f:
            return int([l for l in f if l.startswith('syscw:')][0].split()[1])
    except (OSError, IndexError):
        return 0


def wait_event(c, names, seconds):
    """The first event among names, or None after seconds."""
    deadline = time.monotonic() + seconds
    while True:
        for e in c.events:
            if e['event'] in names:
                c.events.remove(e)
                return e
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        c.sock.settimeout(left)
        try:
            c.events.append(c.recv())
        except socket.timeout:
            return None


def row(status, t=0.0, offset=0, length=0, iops=0.0, note=''):
    print('\t'.join([name, load, mode, status, '%.3f' % t, str(offset),
                     str(length), '%.1f' % iops, note]))


c = until(connect, 30, 'the QMP socket')
c.negotiate()
fio = subprocess.Popen(fio_cmd, stdout=subprocess.DEVNULL) if fio_cmd else None
try:
    if fio:
        until(lambda: fio.poll() is not None or syscw(fio.pid) >= 100, 30,
              'fio to write')
        if fio.poll() is not None:
            raise SystemExit('mirror-job: fio exited with %d' % fio.returncode)
    w0, t0 = syscw(fio.pid) if fio else 0, time.monotonic()
    r = c.cmd('blockdev-mirror', {'job-id': 'm0', 'device': 'src', 'target': 'tgt',
                                  'sync': 'full', 'copy-mode': mode})
    if 'error' in r:
        row('refused', note=r['error']['desc'])
        sys.exit(0)
    e = wait_event(c, ('BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED',
                       'BLOCK_JOB_CANCELLED'), timeout)
    t1 = time.monotonic()
    w1 = syscw(fio.pid) if fio else 0
    jobs = [j for j in c.cmd('query-block-jobs')['return'] if j['device'] == 'm0']
    job = jobs[0] if jobs else {'offset': 0, 'len': 0}
    iops = (w1 - w0) / (t1 - t0) if fio else 0.0
    if e is None:
        row('no-ready', t1 - t0, job['offset'], job['len'], iops,
            'no READY in %gs' % timeout)
    elif e['event'] != 'BLOCK_JOB_READY':
        row('failed', t1 - t0, job['offset'], job['len'], iops,
            e['data'].get('error', e['event']))
    else:
        row('ready', t1 - t0, job['offset'], job['len'], iops)
finally:
    if fio:
        fio.send_signal(signal.SIGTERM)
        fio.wait()
# After READY a cancel leaves the target a consistent copy and ends the job.
c.cmd('block-job-cancel', {'device': 'm0', 'force': True})
wait_event(c, ('BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'), 60)
c.close()
PY

# The same --blockdev/--export arguments for both daemons; $1: the export's
# writable=on|off, or "none".
defs() {
    DEFS=(--blockdev "driver=file,node-name=src-f,filename=$SRC,cache.direct=on"
          --blockdev "driver=qcow2,node-name=src,file=src-f"
          --blockdev "driver=file,node-name=tgt-f,filename=$TGT,cache.direct=on"
          --blockdev "driver=qcow2,node-name=tgt,file=tgt-f")
    [ "$1" = none ] ||
        DEFS+=(--export "type=fuse,id=e0,node-name=src,mountpoint=$MP,writable=$1,growable=off")
}

# start_daemon NAME EXPORT: a fresh target, the daemon, the mount.
start_daemon() {
    local name=$1 export=$2
    rm -f "$TGT"
    qemu-img create -q -f qcow2 "$TGT" "$SIZE"
    defs "$export"
    : > "$MP"
    if [ "$name" = qsd ]; then
        qemu-storage-daemon "${DEFS[@]}" \
            --chardev "socket,id=qmp0,path=$SOCK,server=on,wait=off" \
            --monitor chardev=qmp0 >> "$OUT/mirror-$name.log" 2>&1 &
    else
        "$DISKSTACK" serve "${DEFS[@]}" --qmp "$SOCK" \
            >> "$OUT/mirror-$name.log" 2>&1 &
    fi
    DAEMON_PID=$!
    [ "$export" = none ] ||
        bench_wait_mounted "$name" "$OUT/mirror-$name.log" 30 is_mounted "$MP"
}

FIO_LOAD=(--name=load --filename="$MP" --ioengine=psync --rw=randwrite
          --bs=4k --numjobs="$LOAD_JOBS" --size="$SIZE" --fallocate=none)

# run NAME LOAD MODE EXPORT: one mirror, a line in RESULTS.
run() {
    local name=$1 load=$2 mode=$3 export=$4
    local -a fio=()
    echo "mirror.sh: $name $load $mode (export: $export)" >&2
    start_daemon "$name" "$export" || return 0
    if [ "$load" = load ]; then
        bench_fio "$name" "$mode" "$OUT/mirror-$name-$mode-baseline.json" \
            "${FIO_LOAD[@]}" || true
        fio=(-- fio --direct=1 --iodepth=1 --time_based
             --runtime=$((READY_TIMEOUT + 60)) --thread --eta=never
             --output-format=json --output="$OUT/mirror-$name-$mode-load.json"
             "${FIO_LOAD[@]}")
    fi
    python3 "$HELPER" "$ROOT" "$SOCK" "$DAEMON_PID" "$name" "$load" "$mode" \
        "$READY_TIMEOUT" "${fio[@]}" >> "$RESULTS" ||
        echo "mirror.sh: $name $load $mode: no result" >&2
    stop_daemon
}

: > "$MANIFEST"
: > "$RESULTS"
echo "mirror.sh: preparing a $SIZE qcow2 source full of random data" >&2
qemu-img create -q -f raw "$WORK/data.raw" "$SIZE"
fio --name=fill --filename="$WORK/data.raw" --rw=write --bs=1M --direct=1 \
    --ioengine=psync --size="$SIZE" --refill_buffers --output=/dev/null
qemu-img convert -f raw -O qcow2 "$WORK/data.raw" "$SRC"
rm -f "$WORK/data.raw"
# the first run must not compete with the writeback of the new source
sync

for mode in background write-blocking; do
    run diskstack idle "$mode" on
    run diskstack load "$mode" on
done
# qsd: idle with a read-only export (its writable one holds RESIZE); under
# load through a writable, non-growable export if it accepts the mirror.
for mode in background write-blocking; do
    run qsd idle "$mode" off
    run qsd load "$mode" on
done

python3 - "$HERE" "$RESULTS" "$MANIFEST" "$OUT/mirror-results.json" "$SIZE" \
    "$RUNTIME" "$LOAD_JOBS" <<'PY'
import json, os, sys
sys.path.insert(0, sys.argv[1])
import report                     # report.py: one fio JSON -> one summary

results_file, manifest, out_json, size, runtime, jobs = sys.argv[2:8]
baseline = report.load(manifest, os.sysconf('SC_CLK_TCK'))
MiB = 1024 * 1024
runs = []
with open(results_file) as f:
    for line in f:
        name, load, mode, status, t, offset, length, iops, note = \
            line.rstrip('\n').split('\t')
        r = {'daemon': name, 'load': load, 'copy_mode': mode, 'status': status,
             'ready_s': float(t), 'copied_bytes': int(offset),
             'len_bytes': int(length), 'export_iops': float(iops), 'note': note}
        b = baseline.get((name, mode))
        r['baseline_iops'] = b['iops'] if b else None
        if status == 'ready' and r['ready_s'] > 0:
            r['copied_bytes_s'] = r['copied_bytes'] / r['ready_s']
        runs.append(r)

print('\nmirror sync=full of a %s qcow2 full of data to an empty qcow2 '
      '(cache.direct=on); load: fio 4k randwrite psync direct=1, %s job(s) '
      'on the export; baseline: the same load for %s s without a job'
      % (size, jobs, runtime))
hdr = '%-10s %-5s %-15s %9s %10s %10s %12s %12s %7s' % (
    'daemon', 'load', 'copy-mode', 'READY s', 'MiB/s', 'copied MiB',
    'IOPS mirror', 'IOPS base', 'ratio')
print(hdr)
print('-' * len(hdr))
for r in runs:
    if r['status'] != 'ready':
        print('%-10s %-5s %-15s %s: %s' % (r['daemon'], r['load'], r['copy_mode'],
                                          r['status'], r['note']))
        continue
    loaded = r['load'] == 'load'
    ratio = report.ratio(r['export_iops'], r['baseline_iops']) if loaded else None
    print('%-10s %-5s %-15s %9.2f %10.1f %10.0f %12s %12s %7s' % (
        r['daemon'], r['load'], r['copy_mode'], r['ready_s'],
        r['copied_bytes_s'] / MiB, r['copied_bytes'] / MiB,
        report.fmt(r['export_iops'] if loaded else None, '12.0f', 12),
        report.fmt(r['baseline_iops'] if loaded else None, '12.0f', 12),
        report.fmt(ratio, '7.2f', 7)))


def find(name, load, mode):
    return next((r for r in runs if (r['daemon'], r['load'], r['copy_mode']) ==
                 (name, load, mode) and r['status'] == 'ready'), None)


print()
ds, q = find('diskstack', 'idle', 'background'), find('qsd', 'idle', 'background')
if ds and q:
    print('idle, background: diskstack/qsd copy rate %.2fx, time to READY %.2fx'
          % (ds['copied_bytes_s'] / q['copied_bytes_s'], ds['ready_s'] / q['ready_s']))
bg, wb = find('diskstack', 'load', 'background'), find('diskstack', 'load', 'write-blocking')
if bg and wb:
    print('diskstack under load, write-blocking/background: time to READY %.2fx, '
          'export IOPS %.2fx' % (wb['ready_s'] / bg['ready_s'],
                                 report.ratio(wb['export_iops'], bg['export_iops']) or 0))
ids = find('diskstack', 'idle', 'background')
if ids and bg:
    print('diskstack background, load/idle: time to READY %.2fx'
          % (bg['ready_s'] / ids['ready_s']))
with open(out_json, 'w') as f:
    json.dump({'size': size, 'load_jobs': int(jobs), 'baseline_runtime_s': int(runtime),
               'runs': runs}, f, indent=2)
PY
echo "mirror.sh: results in $OUT/mirror-results.json" >&2
