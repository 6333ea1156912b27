#!/usr/bin/env python3
"""make.py OUTDIR — the corrupt qcow2 image suite.

Each case starts from a small valid image that qemu-img writes (so the
damage is the only thing wrong with it) and changes a few bytes of one
structure.  The result is OUTDIR/<name>.qcow2 plus OUTDIR/cases.json, which
lists for every case what was broken and the words diskstack's refusal must
contain: the structure at fault and where it is.  The images are generated,
not committed, so every one of them can be reviewed here as code.

tests/func/test_qcow2_corrupt.py mounts each image and checks the refusal.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

CLUSTER = 65536
SIZE = 16 * 1024 * 1024


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def be64(img, off):
    return struct.unpack('>Q', img[off:off + 8])[0]


def be32(img, off):
    return struct.unpack('>I', img[off:off + 4])[0]


def put64(img, off, v):
    img[off:off + 8] = struct.pack('>Q', v)


def put32(img, off, v):
    img[off:off + 4] = struct.pack('>I', v)


def base_image(tmp, name, snapshot=False):
    """A 16 MiB, 64 KiB-cluster v3 image with data in two L2 ranges (and an
    internal snapshot if asked)."""
    path = os.path.join(tmp, name)
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
        'cluster_size=%d' % CLUSTER, path, str(SIZE))
    run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 0 128k',
        '-c', 'write -P 0xa5 8M 64k', path)
    if snapshot:
        run('qemu-img', 'snapshot', '-c', 'snap1', path)
    with open(path, 'rb') as f:
        return bytearray(f.read())


# Header fields (qcow2 spec, docs/interop/qcow2.txt)
MAGIC, VERSION, BACKING_OFF, BACKING_LEN, CLUSTER_BITS = 0, 4, 8, 16, 20
CRYPT, L1_SIZE, L1_OFF, RT_OFF, RT_CLUSTERS = 32, 36, 40, 48, 56
NB_SNAPS, SNAPS_OFF, INCOMPAT, REFCOUNT_ORDER, HEADER_LEN = 60, 64, 72, 96, 100
COMPRESSION = 104


def case_l1_entry_past_eof(img):
    l1 = be64(img, L1_OFF)
    put64(img, l1, (1 << 63) | 0x7ff0000)
    return ['L2 table offset 0x7ff0000', 'L1 entry 0 at offset 0x%x' % l1]


def case_l1_entry_misaligned(img):
    l1 = be64(img, L1_OFF)
    e = be64(img, l1 + 8 * 0)
    put64(img, l1, e | 0x200)
    return ['L2 table offset 0x%x' % ((e | 0x200) & 0x00fffffffffffe00),
            'L1 entry 0 at offset 0x%x' % l1]


def case_l1_entry_in_header(img):
    l1 = be64(img, L1_OFF)
    put64(img, l1, 1 << 63)     # offset 0 with COPIED: unallocated, harmless
    put64(img, l1, (1 << 63) | 0x200)
    return ['L2 table offset 0x200', 'L1 entry 0 at offset 0x%x' % l1]


def case_refblock_past_eof(img):
    rt = be64(img, RT_OFF)
    put64(img, rt, 0x40000000)
    return ['refcount block offset 0x40000000',
            'refcount table entry 0 at offset 0x%x' % rt]


def case_snapshot_l1_past_eof(img):
    off = be64(img, SNAPS_OFF)
    put64(img, off, 0x7ff0000)
    return ["snapshot 0 ('snap1') has an invalid L1 table", 'offset 0x7ff0000',
            'snapshot table at 0x%x' % off]


def case_snapshot_entry_truncated(img):
    off = be64(img, SNAPS_OFF)
    put32(img, off + 36, 0xfffffff0)        # extra_data_size past the file
    return ['snapshot table entry 0 at offset 0x%x' % off, 'truncated or invalid']


def case_v3_header_truncated(img):
    # found by tests/fuzz: a version 3 header cut at 88 bytes
    del img[88:]
    return ['too small for a version 3 header', 'header offset 72']


# name: (what is broken, image kind, patch) where patch is either a function
# returning the expected words, or (field offset, width, value, words).
CASES = {
    'bad-magic': ('magic is not QFI\\xfb', 'plain',
                  (MAGIC, 4, 0x514649fa, ['bad magic', 'header offset 0'])),
    'version-4': ('unknown version', 'plain',
                  (VERSION, 4, 4, ['unsupported version 4', 'header offset 4'])),
    'cluster-bits-8': ('cluster size 256 B', 'plain',
                       (CLUSTER_BITS, 4, 8, ['cluster_bits 8', 'header offset 20'])),
    'cluster-bits-30': ('cluster size 1 GiB', 'plain',
                        (CLUSTER_BITS, 4, 30, ['cluster_bits 30', 'header offset 20'])),
    'encrypted': ('AES encryption', 'plain',
                  (CRYPT, 4, 1, ['encrypted', 'header offset 32'])),
    'l1-size-too-small': ('L1 table cannot map the virtual size', 'plain',
                          (L1_SIZE, 4, 0, ['L1 table size 0 entries', 'header offset 36'])),
    'l1-size-huge': ('L1 table of 256 Mi entries', 'plain',
                     (L1_SIZE, 4, 0x10000000, ['L1 table size 268435456 entries is too big',
                                               'header offset 36'])),
    'l1-offset-misaligned': ('L1 table not on a cluster boundary', 'plain',
                             (L1_OFF, 8, 0x30200, ['L1 table offset 0x30200',
                                                   'header offset 40'])),
    'l1-offset-past-eof': ('L1 table beyond the file', 'plain',
                           (L1_OFF, 8, 0x7ff0000, ['L1 table at offset 0x7ff0000',
                                                   'header offset 40'])),
    'rt-offset-zero': ('refcount table on the header', 'plain',
                       (RT_OFF, 8, 0, ['refcount table offset 0x0 overlaps the header',
                                       'header offset 48'])),
    'rt-clusters-zero': ('empty refcount table', 'plain',
                         (RT_CLUSTERS, 4, 0, ['refcount table of 0 clusters',
                                              'header offset 56'])),
    'rt-over-l1': ('refcount table and L1 table overlap', 'plain', None),
    'refcount-order-7': ('128-bit refcounts', 'plain',
                         (REFCOUNT_ORDER, 4, 7, ['refcount_order 7', 'header offset 96'])),
    'header-length-99': ('header length not a multiple of 8', 'plain',
                         (HEADER_LEN, 4, 99, ['header length 99', 'header offset 100'])),
    'incompat-bit-20': ('unknown incompatible feature', 'plain',
                        (INCOMPAT, 8, 1 << 20, ['incompatible_features bit 20',
                                                'header offset 72'])),
    'compression-type-7': ('unknown compression type', 'plain', None),
    'too-many-snapshots': ('snapshot count beyond the file', 'snapshot',
                           None),
    'backing-name-outside': ('backing file name past the header cluster', 'plain',
                             None),
    'ext-length-overflow': ('header extension longer than the header area',
                            'plain', None),
    'l1-entry-past-eof': ('L2 table beyond the file', 'plain', case_l1_entry_past_eof),
    'l1-entry-misaligned': ('L2 table not on a cluster boundary', 'plain',
                            case_l1_entry_misaligned),
    'l1-entry-in-header': ('L2 table inside the header cluster', 'plain',
                           case_l1_entry_in_header),
    'refblock-past-eof': ('refcount block beyond the file', 'plain',
                          case_refblock_past_eof),
    'snapshot-l1-past-eof': ('snapshot L1 table beyond the file', 'snapshot',
                             case_snapshot_l1_past_eof),
    'snapshot-entry-truncated': ('snapshot entry longer than the file', 'snapshot',
                                 case_snapshot_entry_truncated),
    'v3-header-truncated': ('file ends inside the version 3 header', 'plain',
                            case_v3_header_truncated),
}


def patch_special(name, img):
    if name == 'rt-over-l1':
        put64(img, RT_OFF, be64(img, L1_OFF))
        return ['overlaps the refcount table', 'header offset 40']
    if name == 'compression-type-7':
        put64(img, INCOMPAT, be64(img, INCOMPAT) | 8)
        img[COMPRESSION] = 7
        return ['compression type 7', 'header offset 104']
    if name == 'too-many-snapshots':
        put32(img, NB_SNAPS, 0x7fffffff)
        return ['snapshot table at offset 0x%x' % be64(img, SNAPS_OFF),
                'past the end of the file', 'header offset 64']
    if name == 'backing-name-outside':
        put64(img, BACKING_OFF, CLUSTER - 8)
        put32(img, BACKING_LEN, 64)
        return ['backing file name at offset %d' % (CLUSTER - 8), 'header offset 8']
    if name == 'ext-length-overflow':
        hl = be32(img, HEADER_LEN)
        # the first extension qemu-img writes follows the header
        put32(img, hl + 4, 0x00ffffff)
        return ['header extension', 'at offset %d' % hl, 'past the end']
    raise KeyError(name)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__)
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp()
    try:
        bases = {'plain': base_image(tmp, 'plain.qcow2'),
                 'snapshot': base_image(tmp, 'snap.qcow2', snapshot=True)}
    finally:
        shutil.rmtree(tmp)
    manifest = {}
    for name, (what, kind, patch) in CASES.items():
        img = bytearray(bases[kind])
        if patch is None:
            words = patch_special(name, img)
        elif callable(patch):
            words = patch(img)
        else:
            off, width, value, words = patch
            img[off:off + width] = value.to_bytes(width, 'big')
        with open(os.path.join(out, name + '.qcow2'), 'wb') as f:
            f.write(img)
        manifest[name] = {'broken': what, 'expect': words}
    with open(os.path.join(out, 'cases.json'), 'w') as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


if __name__ == '__main__':
    main()
