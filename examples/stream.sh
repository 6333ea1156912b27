#!/usr/bin/env bash
# examples/stream.sh — shorten a backing chain under a mounted, written
# disk: base <- mid <- top becomes base <- top (block-stream).
#
# Run from the repository as root (FUSE); builds diskstack in build/ if it
# is not there yet (examples/lib.sh).  Everything happens in a temporary
# directory that is removed at the end; every step prints the command it
# runs.  Takes about 10 seconds: the copy is slowed down so that it can be
# paused and written meanwhile.  qemu-img checks the results.  See
# diskstack-stream(7).
. "$(dirname "$0")/lib.sh"
# shellcheck source=lib-jobs.sh
. "$root/examples/lib-jobs.sh"

make_chain
make_data 1 2

# Copy into top what it reads from mid (not from base), at 1 MiB/s, in the
# background (--detach prints the job id and returns).
run "$ds" stream top --base base --speed 1M --detach
run "$ds" jobs
run "$ds" graph
run "$ds" job pause top
write_both d2.bin 10        # a region of mid the job has yet to copy
run "$ds" jobs
run "$ds" job resume top
write_both d1.bin 20        # the mount's writes win over the job's copy
# Follow the job until it concludes (a line per state change).
run "$ds" job wait top

# top's backing is base now; mid left the chain and the graph (mid.qcow2
# stays on disk, unchanged).
run "$ds" graph
run cmp disk.img expected.raw
kill -TERM "$pid"; wait "$pid"; pid=

run qemu-img info --backing-chain top.qcow2
run qemu-img check top.qcow2
run qemu-img compare expected.raw top.qcow2
