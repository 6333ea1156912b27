#!/usr/bin/env bash
# examples/qcow2.sh — a qcow2 backing chain, mounted, snapshotted, packed.
#
# Run from the repository as root (FUSE); builds diskstack in build/ if it
# is not there yet (examples/lib.sh).  Everything
# happens in a temporary directory that is removed at the end; every step
# prints the command it runs.  qemu-img, if installed, checks the results.
. "$(dirname "$0")/lib.sh"

# A base image with recognisable content, and a qcow2 overlay on top of it.
printf 'base image, sector 0\n' | dd of=base.raw conv=notrunc status=none
truncate -s 64M base.raw
run "$ds" img create -f qcow2 -b base.raw -F raw top.qcow2
run "$ds" img info top.qcow2

# Mount the overlay as a file: reads see the base, writes land in the overlay.
touch disk.img
"$ds" mount top.qcow2 disk.img &
pid=$!
until grep -q " $dir/disk.img " /proc/self/mountinfo; do
    kill -0 "$pid" || { echo "mount failed"; exit 1; }
    sleep 0.1   # waiting for the mount to appear, bounded by the kill -0 check
done
run head -c 21 disk.img
printf 'written through the mount\n' |
    dd of=disk.img bs=1M seek=1 conv=notrunc,fsync status=none
kill -TERM "$pid"; wait "$pid"; pid=
run "$ds" img map top.qcow2        # the overlay holds only what was written

# An internal snapshot of the overlay, listed the way qemu-img lists it.
run "$ds" img snapshot -c before top.qcow2
run "$ds" img snapshot -l top.qcow2

# The whole chain packed into one zstd-compressed image, then checked.
run "$ds" img convert -c -O qcow2 top.qcow2 packed.qcow2
run "$ds" img compare top.qcow2 packed.qcow2
run "$ds" img check packed.qcow2
if command -v qemu-img >/dev/null; then
    run qemu-img check packed.qcow2
    run qemu-img compare top.qcow2 packed.qcow2
fi
