#!/usr/bin/env bash
# examples/commit.sh — shorten a backing chain under a mounted, written
# disk the other way: mid's data goes down into base, and base <- mid <- top
# becomes base <- top (block-commit of an intermediate image).
#
# Run from the repository as root (FUSE); builds diskstack in build/ if it
# is not there yet (examples/lib.sh).  Everything happens in a temporary
# directory that is removed at the end; every step prints the command it
# runs.  Takes about 10 seconds: the copy is slowed down so that the writes
# land while it runs.  qemu-img checks the results.  See diskstack-stream(7).
. "$(dirname "$0")/lib.sh"
# shellcheck source=lib-jobs.sh
. "$root/examples/lib-jobs.sh"

make_chain
make_data 1 2

# Commit mid into base at 2 MiB/s; the command follows the job in the
# background while the mount is written (top is written, mid and base are
# the job's: no one else may write them meanwhile).
printf '\n$ %s\n' "$ds commit top --top mid --base base --speed 2M --job-id c0 &"
"$ds" commit top --top mid --base base --speed 2M --job-id c0 &
bg=$!
until "$ds" jobs | grep '^c0 ' >/dev/null; do
    kill -0 "$bg" || { echo "commit failed"; exit 1; }
    sleep 0.1   # waiting for the job to appear, bounded by the kill -0 check
done
run "$ds" jobs
write_both d2.bin 10
write_both d1.bin 30
# base is read-write for the job only: read-only again once it ends.
run "$ds" graph
run "$ds" jobs
printf '\n$ wait %s    # the commit command\n' "$bg"
wait "$bg"; bg=

# top's backing is base now, and base holds what mid held; mid left the
# chain and the graph.
run "$ds" graph
run cmp disk.img expected.raw
kill -TERM "$pid"; wait "$pid"; pid=

run qemu-img info --backing-chain top.qcow2
run qemu-img check top.qcow2
run qemu-img check base.qcow2
run qemu-img compare expected.raw top.qcow2
# mid.qcow2 itself is unchanged: over the new base it reads what it did.
run qemu-img compare mid.qcow2 base.qcow2
