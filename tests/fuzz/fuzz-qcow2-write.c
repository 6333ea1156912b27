/*
 * fuzz-qcow2-write.c — libFuzzer harness: the write path on a fuzzed image.
 *
 * The input is a qcow2 image file.  It is opened read-write (qcow2 over a
 * file node, no backing file) and given a few writes, zero writes,
 * discards and compressed writes (and, one time in four, an internal
 * snapshot created, written over and reverted to) chosen by a PRNG seeded
 * from a hash of the input (so the seeds stay plain images and a crash
 * reproduces from the input alone), then closed.
 *
 * The check afterwards: every host cluster whose bytes changed must be owned
 * by the image's metadata — before or after (header, L1/L2 tables, data
 * clusters, refcount table and blocks, snapshot table and snapshot L1/L2
 * tables), found by an independent walk of the file written here — or be
 * free afterwards (refcount 0: a cluster written and then discarded during
 * the run), or have had its refcount changed by the run (allocated, then
 * leaked: once the driver finds corruption it stops updating refcounts,
 * so clusters it was freeing leak, which is the safe answer).  A write to
 * any other cluster is a write through a bad pointer and aborts.  An image that
 * is refused at open must come out byte for byte unchanged.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz-common.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

#define MAX_OPS        8
#define GUEST_WINDOW   (4 * 1024 * 1024)   /* ops stay in the first 4 MiB */
#define MAX_OP_BYTES   (256 * 1024)
#define MAX_WALK_CLUSTERS (1u << 20)       /* bound on L2 / refblock walks */

/* ------------------------------------------------------------------------
 * The ownership walk: pure functions over a copy of the file.
 */

typedef struct Owned {
    const uint8_t *img;
    size_t len;
    int cluster_bits;
    int refcount_order;
    uint8_t *map;              /* one byte per host cluster of the file */
    size_t nb_clusters;
} Owned;

static uint64_t be64_at(const Owned *o, uint64_t off)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | (off + i < o->len ? o->img[off + i] : 0);
    }
    return v;
}

static uint32_t be32_at(const Owned *o, uint64_t off)
{
    return (uint32_t)(be64_at(o, off) >> 32);
}

/* Marks the clusters of [off, off+len) (clamped to the file). */
static void mark(Owned *o, uint64_t off, uint64_t len)
{
    if (len == 0 || off >= o->len) {
        return;
    }
    uint64_t end = MIN(o->len, off + len);
    for (uint64_t c = off >> o->cluster_bits; c <= (end - 1) >> o->cluster_bits; c++) {
        o->map[c] = 1;
    }
}

static void mark_l2_entry(Owned *o, uint64_t l2e)
{
    uint64_t csize = 1ull << o->cluster_bits;
    if (l2e & (1ull << 62)) {                      /* compressed */
        int x = 62 - (o->cluster_bits - 8);
        uint64_t off = l2e & ((1ull << x) - 1);
        uint64_t sectors = ((l2e >> x) & ((1ull << (o->cluster_bits - 8)) - 1)) + 1;
        mark(o, off, sectors * 512 - (off & 511));
        return;
    }
    uint64_t host = l2e & 0x00fffffffffffe00ull;
    if (host) {
        mark(o, host, csize);
    }
}

/* Marks an L1 table, its L2 tables and their clusters. */
static void mark_l1(Owned *o, uint64_t l1_off, uint64_t l1_size, size_t *budget)
{
    uint64_t csize = 1ull << o->cluster_bits;
    mark(o, l1_off, l1_size * 8);
    for (uint64_t i = 0; i < l1_size && l1_off + i * 8 < o->len; i++) {
        uint64_t l2 = be64_at(o, l1_off + i * 8) & 0x00fffffffffffe00ull;
        if (!l2 || l2 >= o->len || *budget == 0) {
            continue;
        }
        (*budget)--;
        mark(o, l2, csize);
        for (uint64_t j = 0; j < csize / 8 && l2 + j * 8 < o->len; j++) {
            mark_l2_entry(o, be64_at(o, l2 + j * 8));
        }
    }
}

static void mark_refcounts(Owned *o, uint64_t rt_off, uint64_t rt_clusters,
                           size_t *budget)
{
    uint64_t csize = 1ull << o->cluster_bits;
    mark(o, rt_off, rt_clusters * csize);
    for (uint64_t i = 0; i < rt_clusters * csize / 8 && rt_off + i * 8 < o->len; i++) {
        uint64_t rb = be64_at(o, rt_off + i * 8) & ~511ull;
        if (rb && rb < o->len && *budget > 0) {
            (*budget)--;
            mark(o, rb, csize);
        }
    }
}

static void mark_snapshots(Owned *o, uint64_t off, uint32_t n, size_t *budget)
{
    uint64_t start = off;
    for (uint32_t i = 0; i < n && off + 40 <= o->len; i++) {
        uint64_t l1_off = be64_at(o, off);
        uint32_t l1_size = be32_at(o, off + 8);
        uint16_t id_len = be32_at(o, off + 12) >> 16;
        uint16_t name_len = be32_at(o, off + 12) & 0xffff;
        uint32_t extra = be32_at(o, off + 36);
        mark_l1(o, l1_off, l1_size, budget);
        off += 40 + (uint64_t)extra + id_len + name_len;
        off = ROUND_UP(off, 8);
    }
    mark(o, start, off - start);
}

/* Builds the map of clusters the metadata of img references. */
static Owned walk_owned(const uint8_t *img, size_t len)
{
    Owned o = { .img = img, .len = len };
    uint32_t bits = len >= 24 ? be32_at(&o, 20) : 16;
    o.cluster_bits = bits >= 9 && bits <= 21 ? (int)bits : 16;
    uint32_t version = be32_at(&o, 4), order = be32_at(&o, 96);
    o.refcount_order = version >= 3 && order <= 6 ? (int)order : 4;
    o.nb_clusters = (len >> o.cluster_bits) + 1;
    o.map = calloc(o.nb_clusters, 1);
    if (!o.map) {
        abort();
    }
    size_t budget = MAX_WALK_CLUSTERS;
    mark(&o, 0, 1);                                     /* the header */
    mark_l1(&o, be64_at(&o, 40), be32_at(&o, 36), &budget);
    mark_refcounts(&o, be64_at(&o, 48), be32_at(&o, 56), &budget);
    mark_snapshots(&o, be64_at(&o, 64), be32_at(&o, 60), &budget);
    return o;
}

/* The refcount of host cluster c as the refcount structures say (0 where
 * they say nothing). */
static uint64_t refcount_of(const Owned *o, uint64_t c)
{
    uint64_t rt_off = be64_at(o, 48), rt_clusters = be32_at(o, 56);
    int bits_per = 1 << o->refcount_order;
    uint64_t per_block = (8ull << o->cluster_bits) / bits_per;
    uint64_t idx = c / per_block;
    if (idx >= (rt_clusters << o->cluster_bits) / 8) {
        return 0;
    }
    uint64_t rb = be64_at(o, rt_off + idx * 8) & ~511ull;
    if (!rb) {
        return 0;
    }
    uint64_t bit = (c % per_block) * bits_per;
    uint64_t v = 0;
    if (bits_per >= 8) {
        for (int i = 0; i < bits_per / 8; i++) {
            uint64_t p = rb + bit / 8 + i;
            v = (v << 8) | (p < o->len ? o->img[p] : 0);
        }
        return v;
    }
    uint64_t p = rb + bit / 8;
    uint8_t byte = p < o->len ? o->img[p] : 0;
    /* sub-byte widths: lowest bits first within a byte (qcow2 spec) */
    return (byte >> (bit % 8)) & ((1u << bits_per) - 1);
}

/* Aborts if a cluster of the original file changed without being owned. */
static void check_changes(const uint8_t *before, size_t blen,
                          const uint8_t *after, size_t alen)
{
    Owned ob = walk_owned(before, blen), oa = walk_owned(after, alen);
    int bits = oa.cluster_bits;
    size_t common = MIN(blen, alen);

    for (size_t off = 0; off < common; off++) {
        if (before[off] == after[off]) {
            continue;
        }
        size_t c = off >> bits;
        bool same_geometry = ob.cluster_bits == bits;
        uint64_t ref_after = refcount_of(&oa, c);
        bool owned = oa.map[c] || (same_geometry && ob.map[c]) || ref_after == 0 ||
                     (same_geometry && refcount_of(&ob, c) != ref_after);
        if (!owned) {
            fprintf(stderr, "write outside metadata-owned clusters: file offset "
                    "%zu (host cluster %zu) changed\n", off, c);
            abort();
        }
        off = ((c + 1) << bits) - 1;        /* next cluster */
    }
    free(ob.map);
    free(oa.map);
}

/* ------------------------------------------------------------------------
 * The writes.
 */

static uint64_t hash_input(const uint8_t *data, size_t size)
{
    uint64_t h = 1469598103934665603ull;        /* FNV-1a */
    for (size_t i = 0; i < size; i++) {
        h = (h ^ data[i]) * 1099511628211ull;
    }
    return h;
}

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

typedef struct WriteRun {
    const char *path;
    uint64_t seed;
    bool opened;
} WriteRun;

static uint8_t op_buf[MAX_OP_BYTES];

/* I/O, coroutine: one random request inside the guest window. */
static void coroutine_fn random_op(BlockBackend *blk, uint64_t *rng)
{
    int64_t size = MIN(blk_getlength(blk), GUEST_WINDOW);
    if (size <= 0) {
        return;
    }
    int64_t off = next_rand(rng) % size;
    int64_t len = 1 + next_rand(rng) % MIN(MAX_OP_BYTES, size - off);
    if (next_rand(rng) & 1) {       /* sector-aligned half the time */
        off &= ~511ll;
        len = MAX(512, len & ~511ll);
        len = MIN(len, size - off);
    }
    IOVector v;
    int kind = next_rand(rng) % 5;
    if (kind == 4) {
        /* compressed writes take whole clusters: 64 KiB-aligned ranges are
         * that for every cluster size up to 64 KiB (larger ones refuse) */
        off &= ~(int64_t)0xffff;
        len = MIN(64 * 1024, size - off);
    }
    if (getenv("FUZZ_TRACE")) {     /* reproducing a crash by hand */
        fprintf(stderr, "op %s off %lld len %lld\n",
                kind < 2 ? "write" : kind == 2 ? "zero" :
                kind == 3 ? "discard" : "compressed write",
                (long long)off, (long long)len);
    }
    switch (kind) {
    case 0:
    case 1:
        memset(op_buf, (int)(next_rand(rng) | 1), len);
        iov_init_buf(&v, op_buf, len);
        (void)blk_co_pwritev(blk, off, len, &v, 0);
        break;
    case 2:
        (void)blk_co_pwrite_zeroes(blk, off, len,
                                   (next_rand(rng) & 1) ? BDRV_REQ_MAY_UNMAP : 0);
        break;
    case 3:
        (void)blk_co_pdiscard(blk, off, len);
        break;
    default:
        for (int64_t i = 0; i < len; i++) {     /* compressible */
            op_buf[i] = (uint8_t)(i / 97);
        }
        iov_init_buf(&v, op_buf, len);
        (void)blk_co_pwritev(blk, off, len, &v, BDRV_REQ_COMPRESS);
        break;
    }
}

/* GS, coroutine: internal snapshots on the fuzzed image — create one, write
 * over clusters it now shares, then revert to it or to one the image already
 * had, and maybe delete it (errors are fine). */
static void coroutine_fn snapshot_ops(FuzzImage *img, uint64_t *rng) GS
{
    Error *err = NULL;
    Qcow2SnapshotInfo *info = NULL;

    GS_CODE();
    if (qcow2_snapshot_create(img->bs, "fuzz", &err) < 0) {
        error_free(err);
        return;
    }
    random_op(img->blk, rng);
    int n = qcow2_snapshot_list(img->bs, &info);
    const char *target = "fuzz";
    if (n > 1 && (next_rand(rng) & 1)) {
        target = info[next_rand(rng) % n].id;
    }
    if (getenv("FUZZ_TRACE")) {
        fprintf(stderr, "snapshot fuzz created, applying '%s'\n", target);
    }
    err = NULL;
    if (qcow2_snapshot_apply(img->bs, target, &err) < 0) {
        error_free(err);
    }
    free(info);
    if (next_rand(rng) & 1) {
        err = NULL;
        if (qcow2_snapshot_delete(img->bs, "fuzz", &err) < 0) {
            error_free(err);
        }
    }
}

static void coroutine_fn one_input(void *opaque)
{
    WriteRun *r = opaque;
    FuzzImage img;

    global_lock_assert_held();
    r->opened = fuzz_open(r->path, true, &img);
    if (!r->opened) {
        return;
    }
    uint64_t rng = r->seed | 1;
    int n = 1 + next_rand(&rng) % MAX_OPS;
    for (int i = 0; i < n; i++) {
        random_op(img.blk, &rng);
    }
    if (next_rand(&rng) % 4 == 0) {
        snapshot_ops(&img, &rng);
    }
    (void)blk_co_flush(img.blk);
    fuzz_close(&img);
}

/* A few writes in a 4 MiB window on an image of at most 1 MiB cannot need
 * a file this big: more is allocation gone wild. */
#define MAX_FILE_AFTER (256ll * 1024 * 1024)

static uint8_t *read_file(const char *path, size_t *len)
{
    struct stat st;
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fstat(fd, &st) < 0) {
        abort();
    }
    if (st.st_size > MAX_FILE_AFTER) {
        fprintf(stderr, "the image file grew to %lld bytes\n", (long long)st.st_size);
        abort();
    }
    uint8_t *buf = malloc(st.st_size + 1);
    if (!buf || pread(fd, buf, st.st_size, 0) != st.st_size) {
        abort();
    }
    close(fd);
    *len = st.st_size;
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT) {
        return -1;
    }
    fuzz_runtime_init();
    WriteRun r = { fuzz_write_image(data, size), hash_input(data, size), false };
    fuzz_run(one_input, &r);

    size_t alen;
    uint8_t *after = read_file(r.path, &alen);
    if (!r.opened) {
        /* refused: not a single byte may have changed */
        if (alen != size || memcmp(after, data, size) != 0) {
            fprintf(stderr, "an image refused at open was modified\n");
            abort();
        }
    } else {
        check_changes(data, size, after, alen);
    }
    free(after);
    return 0;
}
