#!/usr/bin/env bash
# examples/inject.sh — a disk that fails on purpose: an EIO on a chosen
# range, cleared live; then a slow disk.
#
# Run from the repository as root (FUSE).  Builds diskstack in build/ if
# it is not there yet.  Everything happens in a temporary directory that is
# removed at the end; every step prints the command it runs.  Takes a few
# seconds.  DISKSTACK=path/to/diskstack uses another binary.  See
# diskstack-inject(7).
. "$(dirname "$0")/lib.sh"
# Like run, but a failure is the point: print it and go on.
expect_fail() { printf '\n$ %s\n' "$*"; if "$@"; then echo "(unexpected success)"; else echo "(failed, as it should)"; fi; }
qmp() { printf "\n\$ %s --socket qmp.sock qmp '%s'\n" "$ds" "$1"; "$ds" --socket qmp.sock qmp "$1"; }

run truncate -s 64M disk.raw

# One rule: reads that touch the second MiB fail with EIO.  On the command
# line the rules come from a file (rules-file=); over QMP they are JSON.
cat > rules.json <<'EOF'
[{"id": "bad-mib", "op": "read", "offset": 1048576, "length": 1048576}]
EOF
run cat rules.json
touch disk.img
printf '\n$ %s\n' "$ds serve --qmp qmp.sock --blockdev driver=file,node-name=f,filename=disk.raw --blockdev driver=inject,node-name=inj,file=f,rules-file=rules.json --export type=fuse,id=e,node-name=inj,mountpoint=disk.img,writable=on &"
"$ds" serve --qmp qmp.sock \
    --blockdev driver=file,node-name=f,filename=disk.raw \
    --blockdev driver=inject,node-name=inj,file=f,rules-file=rules.json \
    --export type=fuse,id=e,node-name=inj,mountpoint=disk.img,writable=on &
pid=$!
until grep -q " $dir/disk.img " /proc/self/mountinfo && [ -S qmp.sock ]; do
    kill -0 "$pid" || { echo "serve failed"; exit 1; }
    sleep 0.1   # waiting for the mount to appear, bounded by the kill -0 check
done

# The first MiB reads fine, the second fails with "Input/output error".
run dd if=disk.img of=/dev/null bs=64k count=16 iflag=direct
expect_fail dd if=disk.img of=/dev/null bs=64k count=1 skip=16 iflag=direct
qmp '{"execute": "x-diskstack-inject-query", "arguments": {"node-name": "inj"}}'

# Clear the rule while the disk stays mounted: the range reads again.
qmp '{"execute": "x-diskstack-inject-clear", "arguments": {"node-name": "inj", "id": "bad-mib"}}'
run dd if=disk.img of=/dev/null bs=64k count=1 skip=16 iflag=direct

# A full disk for writes from 8 MiB on, and one failure only, once.
qmp '{"execute": "x-diskstack-inject-set", "arguments": {"node-name": "inj", "rules": [{"id": "full", "op": "write", "offset": 8388608, "errno": "ENOSPC"}, {"id": "blip", "op": "read", "offset": 0, "length": 4096, "once": true}]}}'
expect_fail dd if=/dev/zero of=disk.img bs=4k count=1 seek=2048 oflag=direct conv=notrunc
expect_fail dd if=disk.img of=/dev/null bs=4k count=1 iflag=direct
run dd if=disk.img of=/dev/null bs=4k count=1 iflag=direct

# A slow disk: every request waits 200 ms (the daemon keeps serving other
# requests and the control socket meanwhile).  5 reads take about a second.
qmp '{"execute": "x-diskstack-inject-set", "arguments": {"node-name": "inj", "replace": true, "rules": [{"id": "slow", "action": "delay", "delay-ms": 200}]}}'
run dd if=disk.img of=/dev/null bs=4k count=5 iflag=direct
qmp '{"execute": "x-diskstack-inject-query", "arguments": {"node-name": "inj"}}'
qmp '{"execute": "x-diskstack-inject-clear", "arguments": {"node-name": "inj"}}'
run dd if=disk.img of=/dev/null bs=4k count=5 iflag=direct

kill -TERM "$pid"; wait "$pid"; pid=
