#!/usr/bin/env bash
# examples/throttle.sh — an image mounted with I/O limits, changed live.
#
# Run from the repository as root (FUSE); builds diskstack in build/ if it
# is not there yet (examples/lib.sh).  Everything
# happens in a temporary directory that is removed at the end; every step
# prints the command it runs.  Takes about 10 seconds: the limits are real.
# See diskstack-throttle(7).
. "$(dirname "$0")/lib.sh"
# The client verbs talk to this mount's QMP socket (also: --socket).
export DISKSTACK_SOCKET=$dir/qmp.sock

run "$ds" img create -f qcow2 disk.qcow2 64M

# Mount it capped at 1 MiB/s and 50 operations per second: diskstack puts a
# throttle node ("throttle", group "mount-throttle") above the image.
touch disk.img
printf '\n$ %s\n' "$ds mount --qmp $DISKSTACK_SOCKET --throttle bps-total=1M,iops-total=50 disk.qcow2 disk.img &"
"$ds" mount --qmp "$DISKSTACK_SOCKET" --throttle bps-total=1M,iops-total=50 \
    disk.qcow2 disk.img &
pid=$!
until grep -q " $dir/disk.img " /proc/self/mountinfo && [ -S "$DISKSTACK_SOCKET" ]; do
    kill -0 "$pid" || { echo "mount failed"; exit 1; }
    sleep 0.1   # waiting for the mount to appear, bounded by the kill -0 check
done
run "$ds" throttle show throttle

# 2 MiB in 64 KiB reads at 1 MiB/s: about 2 seconds (the bucket lets the
# first tenth of a second's worth through at once).
run dd if=disk.img of=/dev/null bs=64k count=32 iflag=direct
# 100 small reads at 50 per second: about 2 seconds too.
run dd if=disk.img of=/dev/null bs=4k count=100 iflag=direct

# Live change: a reader is under way at 1 MiB/s when the limit goes up to
# 8 MiB/s; it finishes its 8 MiB in about 2 seconds instead of 8.
printf '\n$ %s\n' "dd if=disk.img of=/dev/null bs=64k count=128 iflag=direct &"
dd if=disk.img of=/dev/null bs=64k count=128 iflag=direct &
bg=$!
sleep 1     # let the reader run a second at the old rate (a demo pause)
run "$ds" throttle set throttle --bps-total 8M --iops-total 0
wait "$bg"; bg=

# A burst: 20 operations per second on average, but an idle disk may do 200
# per second for about 2 seconds.  440 reads go in about 2 s at the burst
# rate; then the bucket is full and 40 more take 2 s at 20 per second.
run "$ds" throttle set throttle --bps-total 0 --iops-total 20 \
    --iops-total-max 200 --iops-total-max-length 2
run dd if=disk.img of=/dev/null bs=4k count=440 iflag=direct
run dd if=disk.img of=/dev/null bs=4k count=40 iflag=direct
run "$ds" throttle show throttle

# Writes count against the same limits (16 writes at 20 per second).
run dd if=/dev/zero of=disk.img bs=64k count=16 oflag=direct conv=notrunc
kill -TERM "$pid"; wait "$pid"; pid=
run "$ds" img check disk.qcow2
