#!/bin/sh
# make-seeds.sh OUTDIR — the seed corpus of the qcow2 fuzzers: small real
# images written by qemu-img / qemu-io (cluster sizes, refcount widths, v2,
# compression, snapshots, zero clusters, lazy refcounts with the dirty bit,
# a backing file name).  Generated, not committed.
set -eu
out=${1:?usage: make-seeds.sh OUTDIR}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

io() { qemu-io -f qcow2 "$@" >/dev/null; }

# name  create-options  virtual-size
seed() {
    qemu-img create -q -f qcow2 -o "$2" "$tmp/$1" "$3"
}

seed empty-64k   cluster_size=65536 1M
seed c512-r16    cluster_size=512 256K
io -c 'write -P 0x11 0 3k' -c 'write -P 0x22 100k 1k' -c 'write -z 8k 4k' "$tmp/c512-r16"
seed c4k-r1      cluster_size=4096,refcount_bits=1 1M
io -c 'write -P 0x33 0 12k' -c 'write -P 0x44 512k 4k' "$tmp/c4k-r1"
seed c4k-r64     cluster_size=4096,refcount_bits=64 1M
io -c 'write -P 0x55 4k 8k' -c 'discard 4k 4k' "$tmp/c4k-r64"
seed c1k-v2   cluster_size=1024,refcount_bits=16,compat=0.10 128K
io -c 'write -P 0x66 0 5k' "$tmp/c1k-v2"
seed c4k-snap    cluster_size=4096 256K
io -c 'write -P 0x77 0 8k' "$tmp/c4k-snap"
qemu-img snapshot -c s1 "$tmp/c4k-snap"
io -c 'write -P 0x78 4k 8k' "$tmp/c4k-snap"
qemu-img snapshot -c s2 "$tmp/c4k-snap"
seed c4k-lazy    cluster_size=4096,lazy_refcounts=on 256K
io -c 'write -P 0x79 0 8k' "$tmp/c4k-lazy"
# the dirty bit (incompatible feature bit 0, byte 79) as a killed writer leaves it
printf '\001' | dd of="$tmp/c4k-lazy" bs=1 seek=79 conv=notrunc status=none
qemu-img create -q -f qcow2 -u -o cluster_size=512 -b base.qcow2 -F qcow2 "$tmp/c512-backing" 64K
for t in zlib zstd; do
    head -c 32768 /dev/zero | tr '\0' 'a' > "$tmp/raw"
    qemu-img convert -q -c -O qcow2 -o cluster_size=4096,compression_type=$t \
        "$tmp/raw" "$tmp/comp-$t"
done
cp "$tmp"/empty-64k "$tmp"/c* "$out"/
