#!/usr/bin/env bash
# examples/mount.sh — from a fresh clone to a disk image mounted as a file.
#
# Run it from the repository as root on Debian 12:
#   ./examples/mount.sh
# It installs the Debian packages a fresh machine lacks, builds diskstack
# (build/), creates demo.raw (a 64 MiB raw disk image with some text in it),
# mounts it at demo.img with `diskstack mount` in the background, and prints
# what to try next.  It leaves the mount running; `fusermount3 -u demo.img`
# stops it.  Running it again reuses the build, the image and a live mount.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential meson ninja-build pkg-config libfuse3-dev fuse3
          liburing-dev libzstd-dev zlib1g-dev libjansson-dev libcriterion-dev
          qemu-utils)
IMAGE=demo.raw
FILE=demo.img
LOG=demo.log

say() { printf '==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_deps() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    say "installing ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

build() {
    say "building diskstack in build/"
    [ -f build/build.ninja ] || meson setup build >/dev/null
    ninja -C build
}

# Text at the start, a pattern at 1 MiB, a marker in the last sector; the
# rest is a hole, so the image takes almost no space.
make_image() {
    if [ -f "$IMAGE" ]; then
        say "reusing $IMAGE (delete it for a fresh one)"
        return
    fi
    say "creating $IMAGE (64 MiB raw image)"
    truncate -s 64M "$IMAGE"
    printf 'Hello from the diskstack demo disk!\nCreated %s.\n' "$(date -u)" |
        dd of="$IMAGE" conv=notrunc status=none
    local i
    for i in $(seq 128); do printf 'diskstack demo %016x\n' "$i"; done |
        dd of="$IMAGE" bs=1M seek=1 conv=notrunc status=none
    printf 'This is the last sector.\n' |
        dd of="$IMAGE" bs=512 seek=$((64 * 2048 - 1)) conv=notrunc status=none
}

is_mounted() { findmnt --mountpoint "$PWD/$FILE" >/dev/null 2>&1; }

mount_image() {
    if is_mounted && stat "$FILE" >/dev/null 2>&1; then
        say "$FILE is already mounted"
        return
    fi
    # A diskstack killed earlier leaves a dead mount: clear it.
    if is_mounted; then
        fusermount3 -u "$FILE" 2>/dev/null || umount -l "$FILE" || true
    fi
    say "mounting $IMAGE at $FILE (log: $LOG)"
    setsid ./build/diskstack mount --qmp demo.qmp "$IMAGE" "$FILE" </dev/null >"$LOG" 2>&1 &
    local pid=$! waited=0
    # Wait for the mount itself, or for diskstack to give up (10 s at most).
    until is_mounted; do
        if ! kill -0 "$pid" 2>/dev/null || [ $waited -ge 100 ]; then
            cat "$LOG" >&2
            echo "mount.sh: diskstack did not mount $FILE" >&2
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    cat "$LOG"
}

next_steps() {
    cat <<'EOF'

demo.img is the disk image's content as a plain file.  Try:

  hexdump -C demo.img | head                # the text at the start of the disk
  hexdump -C -s 1M -n 64 demo.img           # the pattern at 1 MiB
  dd if=/dev/urandom of=demo.img bs=1M count=4 seek=8 conv=notrunc,fsync
                                            # write through diskstack
  cmp demo.img demo.raw && echo same        # the writes are in the image
  fallocate --punch-hole -o 8M -l 4M demo.img   # a hole in demo.raw again
  qemu-io -c 'write 0 512' demo.raw         # refused: diskstack holds the lock
  build/diskstack --socket demo.qmp graph   # the live node graph, over QMP
  fusermount3 -u demo.img                   # unmount: diskstack flushes, exits

See 'man -l man/diskstack.1' and README.md for serve and the definitions.
EOF
}

install_deps
build
make_image
mount_image
next_steps
