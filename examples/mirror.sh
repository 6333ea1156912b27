#!/usr/bin/env bash
# examples/mirror.sh — copy a mounted, written disk to a new image and
# switch the mount to the copy without unmounting.
#
# Run from the repository as root (FUSE); builds diskstack in build/ if it
# is not there yet (examples/lib.sh).  Everything happens in a temporary
# directory that is removed at the end; every step prints the command it
# runs.  Takes about 10 seconds: the copy is slowed down so that the writes
# land while it runs.  qemu-img checks the results.  See diskstack-mirror(7).
. "$(dirname "$0")/lib.sh"
# shellcheck source=lib-jobs.sh
. "$root/examples/lib-jobs.sh"

# A 64 MiB qcow2 disk served writable through FUSE at disk.img, with 24 MiB
# of data in it.
run "$ds" img create -f qcow2 disk.qcow2 64M
serve_disk disk driver=qcow2,node-name=disk,file.driver=file,file.filename=disk.qcow2
make_data 24 4 2
write_both d24.bin 0

# Mirror the node "disk" to a new file at 8 MiB/s.  The file does not exist,
# so diskstack creates it (drive-mirror, qcow2 like the source).  The
# command follows the job (a line per state change) and, with --complete,
# moves the export to new.qcow2 once the copy is in sync.
printf '\n$ %s\n' "$ds mirror disk new.qcow2 --speed 8M --complete &"
"$ds" mirror disk new.qcow2 --speed 8M --complete &
bg=$!
until "$ds" jobs | grep '^disk ' >/dev/null; do
    kill -0 "$bg" || { echo "mirror failed"; exit 1; }
    sleep 0.1   # waiting for the job to appear, bounded by the kill -0 check
done
run "$ds" jobs
# While the copy runs, a mirror_top filter sits above the source and
# records what the mount's user writes; those regions are copied again.
run "$ds" graph
write_both d4.bin 2         # over data the job may have copied already
write_both d2.bin 40        # beyond the data: a region that was zeroes
run "$ds" jobs
printf '\n$ wait %s    # the mirror command: ready, then completed\n' "$bg"
wait "$bg"; bg=

# The export now serves new.qcow2.  The old node "disk" stays open, used by
# no one, until it is deleted (it was defined with --blockdev).
run "$ds" graph
run cmp disk.img expected.raw
run "$ds" qmp blockdev-del '{"node-name": "disk"}'
write_both d2.bin 60        # this write goes to new.qcow2 only
kill -TERM "$pid"; wait "$pid"; pid=

run qemu-img info --backing-chain new.qcow2
run qemu-img check new.qcow2
run qemu-img compare expected.raw new.qcow2
