# shellcheck shell=bash
# examples/lib-jobs.sh — what the block-job examples (mirror.sh, stream.sh,
# commit.sh) share; sourced after lib.sh, not run.
#
# serve_disk NODE DEF...: `diskstack serve` with the --blockdev definitions
# DEF and NODE exported writable at disk.img; waits for the mount.
# write_both FILE MIB: FILE's bytes at MIB MiB, written through disk.img
# (O_DIRECT) and into expected.raw, the reference the disk must equal.
# make_chain: base <- mid <- top, each layer holding its own data, built
# live with external snapshots of the exported disk.

# The client verbs talk to the daemon's QMP socket (also: --socket).
export DISKSTACK_SOCKET=$dir/qmp.sock

serve_disk() {
    local node=$1 args=() d
    shift
    for d in "$@"; do args+=(--blockdev "$d"); done
    args+=(--export "type=fuse,id=e0,node-name=$node,mountpoint=disk.img,writable=on")
    touch disk.img
    truncate -s 64M expected.raw
    printf '\n$ %s\n' "$ds serve --qmp $DISKSTACK_SOCKET ${args[*]} &"
    "$ds" serve --qmp "$DISKSTACK_SOCKET" "${args[@]}" &
    pid=$!
    until grep -q " $dir/disk.img " /proc/self/mountinfo && [ -S "$DISKSTACK_SOCKET" ]; do
        kill -0 "$pid" || { echo "serve failed"; exit 1; }
        sleep 0.1   # waiting for the mount to appear, bounded by the kill -0 check
    done
}

write_both() {
    run dd if="$1" of=disk.img bs=64k seek=$(($2 * 16)) oflag=direct conv=notrunc status=none
    dd if="$1" of=expected.raw bs=64k seek=$(($2 * 16)) conv=notrunc status=none
}

# Random data files of 1 to 32 MiB: d1.bin, d2.bin, ...
make_data() {
    local n
    for n in "$@"; do head -c "${n}M" /dev/urandom > "d$n.bin"; done
}

# base.qcow2 holds 0-32 MiB, mid.qcow2 8-24 MiB, top.qcow2 16-20 MiB; the
# nodes are named base, mid and top, and the export serves top.
make_chain() {
    make_data 32 16 4
    run "$ds" img create -f qcow2 base.qcow2 64M
    serve_disk base driver=qcow2,node-name=base,file.driver=file,file.filename=base.qcow2
    write_both d32.bin 0
    run "$ds" snapshot create base --file mid.qcow2 --node-name mid
    write_both d16.bin 8
    run "$ds" snapshot create mid --file top.qcow2 --node-name top
    write_both d4.bin 16
    run "$ds" graph
}
