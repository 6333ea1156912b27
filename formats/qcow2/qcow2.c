/*
 * qcow2.c — the qcow2 driver table: open/close, permissions, limits, and the
 * I/O callbacks (read, write with copy-on-write, write-zeroes, discard,
 * block-status, flush, truncate).
 *
 * Locking is described at the top of qcow2.h: metadata under s->lock (a
 * CoMutex), data I/O to owned clusters outside it, counted so frees wait.
 */
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "qcow2.h"
#include "block-gs.h"
#include "driver.h"

#define DEFAULT_L2_CACHE_MIN (1u << 20)    /* QEMU's default: 8 GiB at 64 KiB */
#define DEFAULT_L2_CACHE_MAX (32u << 20)
#define ZERO_CHUNK           (1u << 20)

static const BlockOptionDesc qcow2_options[] = {
    { "file", OPT_CHILD, true, NULL, "the node holding the image" },
    { "backing", OPT_CHILD_OR_NULL, false, NULL,
      "backing node (name or definition); null for none; default: from the header" },
    { "cache-size", OPT_SIZE, false, NULL, "metadata cache size (L2 + refcounts)" },
    { "l2-cache-size", OPT_SIZE, false, NULL, "L2 table cache size" },
    { "refcount-cache-size", OPT_SIZE, false, NULL, "refcount block cache size" },
    { NULL },
};

/* probe — pure function. */
static int qcow2_probe(const uint8_t *buf, int len, const char *filename)
{
    if (len >= 8 && ld_be32(buf) == QCOW2_MAGIC &&
        (ld_be32(buf + 4) == 2 || ld_be32(buf + 4) == 3)) {
        return 100;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Lockless data I/O accounting (see qcow2.h).  Any thread.
 */

static void coroutine_fn data_begin(Qcow2State *s)
{
    co_mutex_lock(&s->inflight_lock);
    s->data_inflight++;
    co_mutex_unlock(&s->inflight_lock);
}

static void coroutine_fn data_end(Qcow2State *s)
{
    co_mutex_lock(&s->inflight_lock);
    if (--s->data_inflight == 0) {
        co_queue_restart_all(&s->inflight_waiters);
    }
    co_mutex_unlock(&s->inflight_lock);
}

/* In-flight allocations: s->lock held. */
static bool overlaps_alloc(Qcow2State *s, uint64_t first, uint64_t n)
{
    for (Qcow2Alloc *a = s->allocs; a; a = a->next) {
        if (first < a->first_cluster + a->nb_clusters && a->first_cluster < first + n) {
            return true;
        }
    }
    return false;
}

static void coroutine_fn wait_for_allocs(Qcow2State *s, uint64_t first, uint64_t n)
{
    while (overlaps_alloc(s, first, n)) {
        co_queue_wait(&s->alloc_waiters, &s->lock);
    }
}

static void remove_alloc(Qcow2State *s, Qcow2Alloc *a)
{
    Qcow2Alloc **p = &s->allocs;
    while (*p != a) {
        p = &(*p)->next;
    }
    *p = a->next;
    co_queue_restart_all(&s->alloc_waiters);
}

/* ------------------------------------------------------------------------
 * Reading helpers (I/O, no lock needed: they touch data, not metadata)
 */

/* Reads from the file, zero-filling what lies past its end (the last
 * compressed cluster of an image usually ends inside a partial sector). */
static int coroutine_fn GRAPH_RDLOCK read_host(BlockNode *bs, uint64_t host,
                                               uint64_t len, IOVector *qiov,
                                               size_t qoff)
{
    uint64_t flen = bdrv_getlength(bs->file->node);
    uint64_t part = host >= flen ? 0 : MIN(len, flen - host);
    if (part) {
        int ret = bdrv_co_preadv(bs->file, host, part, qiov, qoff, 0);
        if (ret < 0) {
            return ret;
        }
    }
    iov_memset(qiov, qoff + part, 0, len - part);
    return 0;
}

/* Unallocated clusters: the backing file, zeroes past its end or without. */
static int coroutine_fn GRAPH_RDLOCK read_backing(BlockNode *bs, uint64_t off,
                                                  uint64_t len, IOVector *qiov,
                                                  size_t qoff)
{
    uint64_t part = 0;
    if (bs->backing) {
        uint64_t blen = bdrv_getlength(bs->backing->node);
        part = off >= blen ? 0 : MIN(len, blen - off);
        if (part) {
            int ret = bdrv_co_preadv(bs->backing, off, part, qiov, qoff, 0);
            if (ret < 0) {
                return ret;
            }
        }
    }
    iov_memset(qiov, qoff + part, 0, len - part);
    return 0;
}

/* Decompresses the cluster of entry l2e into buf (cluster_size bytes). */
static int coroutine_fn GRAPH_RDLOCK read_compressed(BlockNode *bs, uint64_t l2e,
                                                     uint8_t *buf)
{
    Qcow2State *s = bs->opaque;
    uint64_t coff, clen;
    qcow2_compressed_range(s, l2e, &coff, &clen);
    uint8_t *cbuf = malloc(clen);
    if (!cbuf) {
        return -ENOMEM;
    }
    IOVector v;
    iov_init_buf(&v, cbuf, clen);
    int ret = read_host(bs, coff, clen, &v, 0);
    if (ret == 0) {
        ret = qcow2_decompress(s->compression_type, cbuf, clen, buf, s->cluster_size);
        if (ret < 0) {
            ret = qcow2_signal_corruption(s, (int64_t)coff, (int64_t)clen,
                                          "compressed cluster at host offset "
                                          "0x%llx does not decompress",
                                          (unsigned long long)coff);
        }
    }
    free(cbuf);
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK read_compressed_part(BlockNode *bs, uint64_t l2e,
                                                          uint64_t in_cluster,
                                                          uint64_t len, IOVector *qiov,
                                                          size_t qoff)
{
    Qcow2State *s = bs->opaque;
    uint8_t *buf = malloc(s->cluster_size);
    if (!buf) {
        return -ENOMEM;
    }
    int ret = read_compressed(bs, l2e, buf);
    if (ret == 0) {
        iov_from_buf(qiov, qoff, buf + in_cluster, len);
    }
    free(buf);
    return ret;
}

/* Reads `len` bytes of guest offset `off` described by entry l2e. */
static int coroutine_fn GRAPH_RDLOCK read_by_entry(BlockNode *bs, uint64_t l2e,
                                                   uint64_t off, uint64_t len,
                                                   IOVector *qiov, size_t qoff)
{
    Qcow2State *s = bs->opaque;
    uint64_t in_cluster = qcow2_offset_in_cluster(s, off);
    switch (qcow2_l2_entry_type(s, l2e)) {
    case QCOW2_CLUSTER_UNALLOCATED:
        return read_backing(bs, off, len, qiov, qoff);
    case QCOW2_CLUSTER_ZERO_PLAIN:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        iov_memset(qiov, qoff, 0, len);
        return 0;
    case QCOW2_CLUSTER_NORMAL:
        return read_host(bs, (l2e & L2E_OFFSET_MASK) + in_cluster, len, qiov, qoff);
    case QCOW2_CLUSTER_COMPRESSED:
        return read_compressed_part(bs, l2e, in_cluster, len, qiov, qoff);
    }
    return -EIO;
}

/* Whether the data of this entry lives in host clusters we must not free
 * while reading them without the lock. */
static bool needs_host(const Qcow2State *s, uint64_t l2e)
{
    Qcow2ClusterType t = qcow2_l2_entry_type(s, l2e);
    return t == QCOW2_CLUSTER_NORMAL || t == QCOW2_CLUSTER_COMPRESSED;
}

/*
 * co_preadv — lock: graph read lock; in flight: any; threads: any
 * (metadata lookups under s->lock, the data read outside it).
 */
static int coroutine_fn qcow2_co_preadv(BlockNode *bs, int64_t offset, int64_t bytes,
                                        IOVector *qiov, size_t qoff,
                                        BdrvRequestFlags flags) GRAPH_RDLOCK
{
    IO_CODE();
    Qcow2State *s = bs->opaque;
    while (bytes > 0) {
        uint64_t l2e, n;
        co_mutex_lock(&s->lock);
        int ret = qcow2_get_mapping(s, offset, bytes, &l2e, &n);
        bool counted = ret == 0 && needs_host(s, l2e);
        if (counted) {
            data_begin(s);
        }
        co_mutex_unlock(&s->lock);
        if (ret == 0) {
            ret = read_by_entry(bs, l2e, offset, n, qiov, qoff);
        }
        if (counted) {
            data_end(s);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += n;
        bytes -= n;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Writing
 */

static int coroutine_fn GRAPH_RDLOCK check_writable(Qcow2State *s)
{
    if (atomic_load(&s->corrupt)) {
        return -EIO;
    }
    if (s->writes_refused) {
        return -EACCES;
    }
    return s->autoclear_cleared ? 0 : qcow2_clear_autoclear(s);
}

/* Fills buf with [a, a+len) of the old content of guest cluster g. */
static int coroutine_fn GRAPH_RDLOCK cow_read(BlockNode *bs, uint64_t old, uint64_t g,
                                              uint64_t a, uint64_t len, uint8_t *buf)
{
    IOVector v;
    iov_init_buf(&v, buf, len);
    if (needs_host(bs->opaque, old)) {
        /* only when the old data is read from the file: an event arms the
         * next request this coroutine sends there */
        bdrv_co_debug_event(bs->file, BLKDBG_COW_READ);
    }
    return read_by_entry(bs, old, g + a, len, &v, 0);
}

typedef struct AllocWrite {
    uint64_t offset;          /* guest offset of the request part */
    uint64_t bytes;
    uint64_t host;            /* first allocated host cluster */
    uint64_t k;               /* clusters allocated */
    uint64_t *old;            /* their previous L2 entries */
} AllocWrite;

/* Writes head COW + data + tail COW into the new clusters in one request;
 * only the parts the request does not cover are read. */
static int coroutine_fn GRAPH_RDLOCK write_new_clusters(BlockNode *bs, AllocWrite *w,
                                                        IOVector *qiov, size_t qoff)
{
    Qcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t g0 = w->offset - qcow2_offset_in_cluster(s, w->offset);
    uint64_t head = w->offset - g0;
    uint64_t end = head + w->bytes;                  /* relative to g0 */
    uint64_t tail = w->k * cs - end;
    uint8_t *hbuf = head ? malloc(head) : NULL, *tbuf = tail ? malloc(tail) : NULL;
    int ret = ((head && !hbuf) || (tail && !tbuf)) ? -ENOMEM : 0;

    if (ret == 0 && head) {
        ret = cow_read(bs, w->old[0], g0, 0, head, hbuf);
    }
    if (ret == 0 && tail) {
        uint64_t last = (w->k - 1) * cs;
        ret = cow_read(bs, w->old[w->k - 1], g0 + last, end - last, tail, tbuf);
    }
    if (ret == 0) {
        IOVector v;
        iov_init(&v, qiov->niov + 2);
        if (head) {
            iov_add(&v, hbuf, head);
        }
        iov_concat(&v, qiov, qoff, w->bytes);
        if (tail) {
            iov_add(&v, tbuf, tail);
        }
        if (head || tail) {
            bdrv_co_debug_event(bs->file, BLKDBG_COW_WRITE);
        }
        ret = bdrv_co_pwritev(bs->file, w->host, w->k * cs, &v, 0, 0);
        iov_destroy(&v);
    }
    free(hbuf);
    free(tbuf);
    return ret;
}

/* Links the new clusters into the L2 table and drops the old ones. */
static int coroutine_fn GRAPH_RDLOCK link_new_clusters(Qcow2State *s, AllocWrite *w)
{
    uint64_t *e = malloc(w->k * 8);
    if (!e) {
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < w->k; i++) {
        e[i] = (w->host + i * s->cluster_size) | QCOW_OFLAG_COPIED;
    }
    int64_t l2 = qcow2_ensure_l2(s, w->offset);
    int ret = l2 < 0 ? (int)l2 : qcow2_set_l2_entries(s, w->offset, w->k, e);
    free(e);
    if (ret == 0) {
        ret = qcow2_free_l2_entries(s, w->old, w->k);
    }
    return ret;
}

static bool owned_data(const Qcow2State *s, uint64_t l2e)
{
    return qcow2_l2_entry_type(s, l2e) == QCOW2_CLUSTER_NORMAL &&
           (l2e & QCOW_OFLAG_COPIED);
}

/*
 * Plans an allocating write starting at w->offset: the clusters up to the
 * request's end (within one L2 table) that are not owned data.  s->lock held.
 */
static int coroutine_fn GRAPH_RDLOCK plan_alloc(Qcow2State *s, AllocWrite *w,
                                                uint64_t bytes)
{
    uint64_t in_cluster = qcow2_offset_in_cluster(s, w->offset);
    uint64_t l2_idx = (w->offset >> s->cluster_bits) & (s->l2_entries - 1);
    uint64_t nclu = MIN(DIV_ROUND_UP(in_cluster + bytes, s->cluster_size),
                        s->l2_entries - l2_idx);
    nclu = MIN(nclu, 4096);   /* bounds the entry arrays */
    w->old = malloc(nclu * 8);
    if (!w->old) {
        return -ENOMEM;
    }
    int ret = qcow2_get_l2_entries(s, w->offset, nclu, w->old);
    if (ret < 0) {
        return ret;
    }
    w->k = 1;
    while (w->k < nclu && !owned_data(s, w->old[w->k])) {
        w->k++;
    }
    w->bytes = MIN(bytes, w->k * s->cluster_size - in_cluster);
    return 0;
}

/* One step of a write: [offset, offset+*done) handled.  Takes s->lock.
 * BDRV_REQ_IF_UNALLOCATED: clusters with any L2 entry are skipped, decided
 * under s->lock after wait_for_allocs(), so a guest write allocating the
 * same clusters either finished first (we skip) or waits for our link and
 * then overwrites in place (it wins). */
static int coroutine_fn GRAPH_RDLOCK write_step(BlockNode *bs, uint64_t offset,
                                                uint64_t bytes, IOVector *qiov,
                                                size_t qoff, BdrvRequestFlags flags,
                                                uint64_t *done)
{
    Qcow2State *s = bs->opaque;
    uint64_t first = offset >> s->cluster_bits;
    uint64_t l2e, n;
    AllocWrite w = { .offset = offset };
    Qcow2Alloc rec;
    int ret;

    co_mutex_lock(&s->lock);
    ret = check_writable(s);
    if (ret == 0) {
        wait_for_allocs(s, first, DIV_ROUND_UP(qcow2_offset_in_cluster(s, offset) + bytes,
                                               s->cluster_size));
        ret = qcow2_get_mapping(s, offset, bytes, &l2e, &n);
    }
    if (ret == 0 && (flags & BDRV_REQ_IF_UNALLOCATED)) {
        if (qcow2_l2_entry_type(s, l2e) != QCOW2_CLUSTER_UNALLOCATED) {
            co_mutex_unlock(&s->lock);
            *done = n;
            return 0;
        }
        bytes = MIN(bytes, n);      /* allocate the unallocated run only */
    }
    if (ret == 0 && owned_data(s, l2e)) {
        /* Fast path: overwrite in place, without the lock. */
        data_begin(s);
        co_mutex_unlock(&s->lock);
        ret = bdrv_co_pwritev(bs->file, (l2e & L2E_OFFSET_MASK) +
                              qcow2_offset_in_cluster(s, offset), n, qiov, qoff, 0);
        data_end(s);
        *done = n;
        return ret;
    }
    int64_t l2 = ret < 0 ? ret : qcow2_ensure_l2(s, offset);
    ret = l2 < 0 ? (int)l2 : plan_alloc(s, &w, bytes);
    int64_t host = ret < 0 ? ret : qcow2_alloc_clusters(s, w.k);
    if (host < 0) {
        free(w.old);
        co_mutex_unlock(&s->lock);
        return (int)host;
    }
    w.host = host;
    rec = (Qcow2Alloc){ .first_cluster = first, .nb_clusters = w.k, .next = s->allocs };
    s->allocs = &rec;
    data_begin(s);            /* COW may read old host clusters */
    co_mutex_unlock(&s->lock);

    ret = write_new_clusters(bs, &w, qiov, qoff);
    data_end(s);

    co_mutex_lock(&s->lock);
    remove_alloc(s, &rec);
    if (ret == 0) {
        ret = link_new_clusters(s, &w);
    } else {
        qcow2_free_clusters(s, w.host, w.k * s->cluster_size);
    }
    co_mutex_unlock(&s->lock);
    free(w.old);
    *done = w.bytes;
    return ret;
}

/*
 * co_pwritev — lock: graph read lock; in flight: any; threads: any.
 * Overwrites of owned clusters run in parallel; allocations hold s->lock
 * only to plan and to link, not while the data is written.
 */
static int coroutine_fn qcow2_co_pwritev(BlockNode *bs, int64_t offset, int64_t bytes,
                                         IOVector *qiov, size_t qoff,
                                         BdrvRequestFlags flags) GRAPH_RDLOCK
{
    IO_CODE();
    Qcow2State *s = bs->opaque;
    if (flags & BDRV_REQ_COMPRESS) {
        int ret = qcow2_co_write_compressed(bs, offset, bytes, qiov, qoff);
        if (ret < 0 || !(flags & BDRV_REQ_FUA)) {
            return ret;
        }
        bytes = 0;
    }
    while (bytes > 0) {
        uint64_t done = 0;
        int ret = write_step(bs, offset, bytes, qiov, qoff, flags, &done);
        if (ret < 0) {
            return ret;
        }
        offset += done;
        qoff += done;
        bytes -= done;
    }
    if (flags & BDRV_REQ_FUA) {
        co_mutex_lock(&s->lock);
        int ret = qcow2_flush_metadata(s);
        co_mutex_unlock(&s->lock);
        return ret;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Zeroes and discard
 */

/* The entry a cluster gets when zeroed (unmap: deallocate if possible). */
static uint64_t GRAPH_RDLOCK zeroed_entry(BlockNode *bs, uint64_t old, bool unmap)
{
    Qcow2State *s = bs->opaque;
    if (!unmap && owned_data(s, old)) {
        return old | QCOW_OFLAG_ZERO;        /* keep the preallocation */
    }
    if (!unmap && qcow2_l2_entry_type(s, old) == QCOW2_CLUSTER_ZERO_ALLOC &&
        (old & QCOW_OFLAG_COPIED)) {
        return old;
    }
    if (s->version < 3) {
        return 0;
    }
    return bs->backing ? QCOW_OFLAG_ZERO : 0;
}

/* Do the entries already read as zero, so nothing needs changing? */
static bool GRAPH_RDLOCK all_zero_already(BlockNode *bs, const uint64_t *e, uint64_t n)
{
    Qcow2State *s = bs->opaque;
    for (uint64_t i = 0; i < n; i++) {
        Qcow2ClusterType t = qcow2_l2_entry_type(s, e[i]);
        bool z = t == QCOW2_CLUSTER_ZERO_PLAIN || t == QCOW2_CLUSTER_ZERO_ALLOC ||
                 (t == QCOW2_CLUSTER_UNALLOCATED && !bs->backing);
        if (!z) {
            return false;
        }
    }
    return true;
}

/* Zeroes (or discards) whole clusters [offset, offset+n*cs) in one L2 table.
 * s->lock held. */
static int coroutine_fn GRAPH_RDLOCK zero_clusters_in_l2(BlockNode *bs, uint64_t offset,
                                                         uint64_t n, bool unmap)
{
    Qcow2State *s = bs->opaque;
    uint64_t *old = malloc(n * 8), *new = malloc(n * 8), *freed = malloc(n * 8);
    uint64_t nfreed = 0;
    int ret = (!old || !new || !freed) ? -ENOMEM : 0;

    if (ret == 0) {
        wait_for_allocs(s, offset >> s->cluster_bits, n);
        ret = qcow2_get_l2_entries(s, offset, n, old);
    }
    if (ret == 0 && !all_zero_already(bs, old, n)) {
        for (uint64_t i = 0; i < n; i++) {
            new[i] = zeroed_entry(bs, old[i], unmap);
            if ((new[i] & L2E_OFFSET_MASK) != (old[i] & L2E_OFFSET_MASK) ||
                (old[i] & QCOW_OFLAG_COMPRESSED)) {
                freed[nfreed++] = old[i];
            }
        }
        int64_t l2 = qcow2_ensure_l2(s, offset);
        ret = l2 < 0 ? (int)l2 : qcow2_set_l2_entries(s, offset, n, new);
        if (ret == 0) {
            ret = qcow2_free_l2_entries(s, freed, nfreed);
        }
    }
    free(old);
    free(new);
    free(freed);
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK zero_clusters(BlockNode *bs, uint64_t offset,
                                                   uint64_t bytes, bool unmap)
{
    Qcow2State *s = bs->opaque;
    int ret = 0;
    co_mutex_lock(&s->lock);
    ret = check_writable(s);
    while (ret == 0 && bytes > 0) {
        uint64_t l2_idx = (offset >> s->cluster_bits) & (s->l2_entries - 1);
        uint64_t n = MIN(bytes >> s->cluster_bits, s->l2_entries - l2_idx);
        ret = zero_clusters_in_l2(bs, offset, n, unmap);
        offset += n << s->cluster_bits;
        bytes -= n << s->cluster_bits;
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

/* Writes explicit zeroes (unaligned edges, v2 images). */
static int coroutine_fn GRAPH_RDLOCK write_zero_buffers(BlockNode *bs, uint64_t offset,
                                                       uint64_t bytes)
{
    uint64_t chunk = MIN(bytes, ZERO_CHUNK);
    uint8_t *buf = calloc(1, chunk ? chunk : 1);
    int ret = buf ? 0 : -ENOMEM;
    while (ret == 0 && bytes > 0) {
        uint64_t n = MIN(bytes, chunk);
        IOVector v;
        iov_init_buf(&v, buf, n);
        ret = qcow2_co_pwritev(bs, offset, n, &v, 0, 0);
        offset += n;
        bytes -= n;
    }
    free(buf);
    return ret;
}

/* Splits [offset, offset+bytes) into an unaligned head, whole clusters and
 * an unaligned tail (clamped at the image end, where a partial last cluster
 * counts as whole). */
static void split_clusters(Qcow2State *s, uint64_t offset, uint64_t bytes,
                           uint64_t *head, uint64_t *mid, uint64_t *tail)
{
    uint64_t end = offset + bytes;
    uint64_t astart = ROUND_UP(offset, s->cluster_size);
    uint64_t aend = end == s->size ? ROUND_UP(end, s->cluster_size)
                                   : ROUND_DOWN(end, s->cluster_size);
    if (astart >= aend) {
        *head = bytes;
        *mid = *tail = 0;
        return;
    }
    *head = astart - offset;
    *mid = aend - astart;
    *tail = end > aend ? end - aend : 0;
}

/*
 * co_pwrite_zeroes — lock: graph read lock; in flight: any; threads: any.
 * v3: whole clusters get the zero flag (or are deallocated with MAY_UNMAP);
 * unaligned edges and v2 images are written as zero buffers.
 */
static int coroutine_fn qcow2_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                               int64_t bytes,
                                               BdrvRequestFlags flags) GRAPH_RDLOCK
{
    IO_CODE();
    Qcow2State *s = bs->opaque;
    uint64_t head, mid, tail;
    if (s->version < 3) {
        return (flags & BDRV_REQ_NO_FALLBACK) ? -ENOTSUP
                                              : write_zero_buffers(bs, offset, bytes);
    }
    split_clusters(s, offset, bytes, &head, &mid, &tail);
    if ((head || tail) && (flags & BDRV_REQ_NO_FALLBACK)) {
        return -ENOTSUP;
    }
    int ret = head ? write_zero_buffers(bs, offset, head) : 0;
    if (ret == 0 && mid) {
        ret = zero_clusters(bs, offset + head, mid, flags & BDRV_REQ_MAY_UNMAP);
    }
    if (ret == 0 && tail) {
        ret = write_zero_buffers(bs, offset + head + mid, tail);
    }
    return ret;
}

/*
 * co_pdiscard — lock: graph read lock; in flight: any; threads: any.
 * Whole clusters only (discard is advisory): freed, and their entries
 * cleared, or set to zero when a backing file would show through.
 */
static int coroutine_fn qcow2_co_pdiscard(BlockNode *bs, int64_t offset,
                                          int64_t bytes) GRAPH_RDLOCK
{
    IO_CODE();
    Qcow2State *s = bs->opaque;
    uint64_t head, mid, tail;
    if (s->version < 3 && bs->backing) {
        return 0;         /* without a zero flag the backing would show through */
    }
    split_clusters(s, offset, bytes, &head, &mid, &tail);
    return mid ? zero_clusters(bs, offset + head, mid, true) : 0;
}

/* ------------------------------------------------------------------------
 * Status, flush, truncate
 */

/*
 * co_block_status — lock: graph read lock; in flight: any; threads: any.
 * Unallocated clusters are reported without ALLOCATED so io.c looks in the
 * backing chain.
 */
static int coroutine_fn qcow2_co_block_status(BlockNode *bs, int64_t offset,
                                              int64_t bytes, int64_t *pnum,
                                              int64_t *map, BlockNode **file)
    GRAPH_RDLOCK
{
    IO_CODE();
    Qcow2State *s = bs->opaque;
    uint64_t l2e, n;
    co_mutex_lock(&s->lock);
    int ret = qcow2_get_mapping(s, offset, bytes, &l2e, &n);
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    *pnum = n;
    switch (qcow2_l2_entry_type(s, l2e)) {
    case QCOW2_CLUSTER_UNALLOCATED:
        return 0;
    case QCOW2_CLUSTER_ZERO_PLAIN:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        return BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
    case QCOW2_CLUSTER_COMPRESSED:
        return BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
    case QCOW2_CLUSTER_NORMAL:
        *map = (l2e & L2E_OFFSET_MASK) + qcow2_offset_in_cluster(s, offset);
        *file = bs->file->node;
        return BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
    }
    return -EIO;
}

/*
 * co_flush — lock: graph read lock; in flight: any; threads: any.
 * Writes the caches back in dependency order; io.c then flushes the file.
 */
static int coroutine_fn qcow2_co_flush(BlockNode *bs) GRAPH_RDLOCK
{
    IO_CODE();
    Qcow2State *s = bs->opaque;
    co_mutex_lock(&s->lock);
    int ret = qcow2_flush_metadata(s);
    co_mutex_unlock(&s->lock);
    return ret;
}

/* Is any cluster at or past guest offset `from` allocated?  s->lock held. */
static int coroutine_fn GRAPH_RDLOCK tail_in_use(Qcow2State *s, uint64_t from, bool *used)
{
    *used = false;
    for (uint64_t off = from; off < s->size && !*used;) {
        uint64_t l2e, n;
        int ret = qcow2_get_mapping(s, off, s->size - off, &l2e, &n);
        if (ret < 0) {
            return ret;
        }
        *used = qcow2_l2_entry_type(s, l2e) != QCOW2_CLUSTER_UNALLOCATED;
        off += n;
    }
    return 0;
}

static int coroutine_fn GRAPH_RDLOCK set_size(BlockNode *bs, uint64_t size)
{
    Qcow2State *s = bs->opaque;
    uint8_t buf[8];
    st_be64(buf, size);
    bool written = false;
    int ret = qcow2_header_switch(s, QH_SIZE_OFF, buf, 8, &written);
    if (written) {           /* even if the flush failed: the file says so */
        s->size = size;
        atomic_store(&bs->length, (int64_t)size);
    }
    return ret;
}

/* Shrinking: nothing past the new end may be allocated.  s->lock held. */
static int coroutine_fn GRAPH_RDLOCK check_shrink(BlockNode *bs, uint64_t size,
                                                  Error **errp)
{
    Qcow2State *s = bs->opaque;
    bool used = false;
    int ret = tail_in_use(s, ROUND_UP(size, s->cluster_size), &used);
    if (ret == 0 && used) {
        error_setg(errp, "qcow2: cannot shrink '%s' to %llu bytes: clusters past "
                   "the new end are in use", bs->filename, (unsigned long long)size);
        ret = -ENOTSUP;
    }
    return ret;
}

/*
 * co_truncate — lock: graph read lock; in flight: yes; threads: one resize
 * at a time (io.c), I/O continues; metadata under s->lock.
 * Grows freely; shrinks only when nothing past the new end is allocated.
 * Bytes that become visible again must read as zeroes: the tail of a kept
 * partial cluster is zeroed on shrink, and on growth the range a backing
 * file would otherwise show through is zeroed.
 */
static int coroutine_fn qcow2_co_truncate(BlockNode *bs, int64_t offset, bool exact,
                                          Error **errp) GRAPH_RDLOCK
{
    IO_CODE();
    Qcow2State *s = bs->opaque;
    uint64_t l2_span = s->cluster_size << s->l2_bits, new_size = offset;
    int ret;

    co_mutex_lock(&s->lock);
    uint64_t old_size = s->size;
    ret = check_writable(s);
    if (ret == 0 && new_size < old_size) {
        ret = check_shrink(bs, new_size, errp);
    } else if (ret == 0) {
        ret = qcow2_grow_l1(s, DIV_ROUND_UP(new_size, l2_span));
    }
    co_mutex_unlock(&s->lock);

    uint64_t kept_end = MIN(ROUND_UP(new_size, s->cluster_size), old_size);
    if (ret == 0 && new_size < old_size && kept_end > new_size) {
        ret = write_zero_buffers(bs, new_size, kept_end - new_size);
    }
    if (ret == 0) {
        co_mutex_lock(&s->lock);
        ret = set_size(bs, new_size);
        co_mutex_unlock(&s->lock);
    }
    uint64_t blen = bs->backing ? (uint64_t)bdrv_getlength(bs->backing->node) : 0;
    if (ret == 0 && new_size > old_size && blen > old_size) {
        ret = qcow2_co_pwrite_zeroes(bs, old_size, MIN(new_size, blen) - old_size, 0);
    }
    if (ret < 0 && errp && !*errp) {
        error_setg_errno(errp, ret, "qcow2: cannot resize '%s'", bs->filename);
    }
    return ret;
}

/* ------------------------------------------------------------------------
 * Open / close (GS)
 */

static void cache_sizes(Qcow2State *s, json_t *options, int *l2_n, int *rb_n)
{
    uint64_t cs = s->cluster_size;
    uint64_t l2_span = cs << s->l2_bits;
    uint64_t whole = DIV_ROUND_UP(s->size, l2_span) * cs;
    uint64_t l2 = MIN(MAX(whole, DEFAULT_L2_CACHE_MIN), DEFAULT_L2_CACHE_MAX);
    int64_t total = opt_int(options, "cache-size", -1);
    int64_t l2_opt = opt_int(options, "l2-cache-size", -1);
    int64_t rb_opt = opt_int(options, "refcount-cache-size", -1);
    uint64_t rb;

    if (total >= 0 && l2_opt < 0 && rb_opt < 0) {
        l2 = (uint64_t)total * 3 / 4;
        rb = (uint64_t)total - l2;
    } else {
        l2 = l2_opt >= 0 ? (uint64_t)l2_opt : l2;
        rb = rb_opt >= 0 ? (uint64_t)rb_opt
                         : (total >= 0 && (uint64_t)total > l2 ? (uint64_t)total - l2
                                                               : l2 / 4);
    }
    *l2_n = (int)MIN(l2 / cs, 1u << 20);
    *rb_n = (int)MIN(rb / cs, 1u << 20);
}

static int coroutine_fn GRAPH_RDLOCK check_open_state(BlockNode *bs, Error **errp)
{
    Qcow2State *s = bs->opaque;
    if ((s->incompat & QCOW2_INCOMPAT_CORRUPT) && !bs->read_only) {
        error_setg(errp, "qcow2: image '%s' is marked corrupt (corrupt bit, header "
                   "offset 72); it can only be opened read-only", bs->filename);
        return -EACCES;
    }
    if ((s->incompat & QCOW2_INCOMPAT_DIRTY) && !bs->read_only) {
        Error *local = NULL;
        if (qcow2_rebuild_refcounts(s, &local) < 0) {
            warn_report("qcow2: image '%s' is dirty and its refcounts could not be "
                        "repaired (%s); writes are refused", bs->filename,
                        local ? error_get_pretty(local) : "error");
            error_free(local);
            s->writes_refused = true;
        }
    }
    return 0;
}

static int coroutine_fn GRAPH_RDLOCK load_metadata(BlockNode *bs, json_t *options,
                                                   Error **errp)
{
    Qcow2State *s = bs->opaque;
    int l2_n, rb_n;
    int ret = qcow2_read_header(s, bs->file, errp);
    if (ret == 0) {
        ret = qcow2_load_refcount_table(s, errp);
    }
    if (ret == 0) {
        ret = qcow2_load_l1(s, errp);
    }
    if (ret == 0) {
        ret = qcow2_load_snapshots(s, errp);
    }
    if (ret < 0) {
        return ret;
    }
    cache_sizes(s, options, &l2_n, &rb_n);
    s->l2_cache = qcow2_cache_new(s, l2_n, "L2");
    s->rb_cache = qcow2_cache_new(s, rb_n, "refcount");
    if (!s->l2_cache || !s->rb_cache) {
        return -ENOMEM;
    }
    qcow2_cache_set_dependency(s->l2_cache, s->rb_cache);
    s->free_hint = 1;
    return check_open_state(bs, errp);
}

static bool is_absolute_or_protocol(const char *name)
{
    return name[0] == '/' || strstr(name, "://") != NULL;
}

/* GS: the path of bs's backing file, relative names taken from bs's
 * directory. */
static void backing_path(BlockNode *bs, char *path, size_t len) GS
{
    Qcow2State *s = bs->opaque;

    GS_CODE();
    if (is_absolute_or_protocol(s->backing_file)) {
        snprintf(path, len, "%s", s->backing_file);
    } else {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s", bs->filename);
        snprintf(path, len, "%s/%s", dirname(dir), s->backing_file);
    }
}

/* {"driver": fmt, "file": {"driver": "file", "filename": path,
 *  "x-regular-only": true}, "read-only": true} */
static json_t *backing_definition(BlockNode *bs, const char *path) GS
{
    Qcow2State *s = bs->opaque;

    GS_CODE();
    const char *fmt = s->backing_format;
    if (!fmt) {
        warn_report("qcow2: '%s' names no backing format for '%s'; opening it as "
                    "raw (never probed)", bs->filename, s->backing_file);
        fmt = "raw";
    }
    /* x-regular-only: a name from the image may not reach a device or a
     * directory (see src/protocols/file.c) */
    return json_pack("{s:s, s:{s:s, s:s, s:b}, s:b}", "driver", fmt, "file",
                     "driver", "file", "filename", path, "x-regular-only", 1,
                     "read-only", 1);
}

/* GS: the identity of the file under n's image (through filters). */
static int image_identity(BlockNode *n, uint64_t *dev, uint64_t *ino)
    GRAPH_RDLOCK GS
{
    GS_CODE();
    BlockNode *m = n->file ? n->file->node : NULL;

    while (m && m->drv->is_filter && m->file) {
        m = m->file->node;
    }
    return bdrv_file_identity(m, dev, ino);
}

/*
 * GS: the qcow2 image, bs or one above it in the chain being opened (bs's
 * opening parents), whose file is the file at path; NULL if none (or path
 * cannot be looked up: the open will say why).  A backing chain is opened
 * top-down, each image opening its backing file from its own open, so an
 * image that names itself or one above it would recurse until the depth
 * limit; comparing (st_dev, st_ino) catches every spelling of the name
 * (relative, absolute, through a symlink or a hard link).
 */
static BlockNode *backing_loop(BlockNode *bs, const char *path) GS
{
    BlockNode *found = NULL;
    struct stat st;

    GS_CODE();
    if (stat(path, &st) < 0) {
        return NULL;
    }
    bdrv_graph_rdlock_main_loop();
    for (BlockNode *n = bs; n && !found; n = bdrv_opening_parent(n)) {
        uint64_t dev, ino;
        if (n->drv == bs->drv && image_identity(n, &dev, &ino) == 0 &&
            dev == (uint64_t)st.st_dev && ino == (uint64_t)st.st_ino) {
            found = n;
        }
    }
    bdrv_graph_rdunlock_main_loop();
    return found;
}

/*
 * The two messages open_backing writes.  Every image of a chain opens the
 * next one, and every level would add its prefixes (the core's "Node 'x',
 * child 'backing': ", then ours): 25 KB at the depth limit.  An error that
 * contains one of these already comes from an image further down; it is
 * cut back to that message, so only the innermost image's words are kept.
 */
#define BACKING_OPEN_ERR "qcow2: cannot open backing file '"
#define BACKING_LOOP_ERR "qcow2: backing file '"

/* Cuts err back to the innermost image's message; false if it has none. */
static bool keep_innermost(Error *err)
{
    char *open_err = err ? strstr(err->msg, BACKING_OPEN_ERR) : NULL;
    char *loop_err = err ? strstr(err->msg, BACKING_LOOP_ERR) : NULL;
    char *m = !loop_err || (open_err && open_err < loop_err) ? open_err : loop_err;

    if (!m) {
        return false;
    }
    memmove(err->msg, m, strlen(m) + 1);
    return true;
}

/*
 * GS: {"backing": definition} for the backing file the metadata names, or
 * NULL with *errp when it loops back.  Not inlined into the open below: its
 * path buffers must not stay on the coroutine stack while the backing file
 * opens (the recursion runs one level per image of the chain).
 */
static __attribute__((noinline)) json_t *metadata_backing(BlockNode *bs,
                                                          Error **errp) GS
{
    Qcow2State *s = bs->opaque;
    char path[8192];
    BlockNode *loop;

    GS_CODE();
    backing_path(bs, path, sizeof(path));
    if ((loop = backing_loop(bs, path))) {
        error_setg(errp, BACKING_LOOP_ERR "%s' of '%s' loops back to '%s'",
                   s->backing_file, bs->filename, loop->filename);
        return NULL;
    }
    json_t *tmp = json_object();
    json_object_set_new(tmp, "backing", backing_definition(bs, path));
    return tmp;
}

/* GS: opens the backing file the metadata names, refusing a loop. */
static int coroutine_fn open_backing_from_metadata(BlockNode *bs, Error **errp)
    GS
{
    Qcow2State *s = bs->opaque;
    json_t *tmp = metadata_backing(bs, errp);
    Error *err = NULL;

    GS_CODE();
    if (!tmp) {
        return -ELOOP;
    }
    BlockChild *c = bdrv_co_open_child(bs, tmp, "backing", BDRV_CHILD_COW,
                                       false, &err);
    json_decref(tmp);
    if (!c) {
        if (!keep_innermost(err)) {
            error_prepend(&err, BACKING_OPEN_ERR "%s' of '%s': ",
                          s->backing_file, bs->filename);
        }
        error_propagate(errp, err);
        return -EINVAL;
    }
    return 0;
}

static int coroutine_fn open_backing(BlockNode *bs, json_t *options, Error **errp) GS
{
    Qcow2State *s = bs->opaque;
    json_t *b = json_object_get(options, "backing");
    BlockChild *c;
    if (b && json_is_null(b)) {
        return 0;
    }
    if (b) {
        c = bdrv_co_open_child(bs, options, "backing", BDRV_CHILD_COW, false, errp);
        return c ? 0 : -EINVAL;
    }
    return s->backing_file ? open_backing_from_metadata(bs, errp) : 0;
}

static void free_state(Qcow2State *s)
{
    qcow2_cache_free(s->l2_cache);
    qcow2_cache_free(s->rb_cache);
    free(s->l1);
    free(s->rt);
    qcow2_free_snapshots(s);
    qcow2_free_header(s);
    s->l2_cache = s->rb_cache = NULL;
    s->l1 = s->rt = NULL;
}

/*
 * open — lock: GS, in a coroutine on the main loop; in flight: none (the
 * node is not reachable yet); threads: main only.
 */
static int coroutine_fn qcow2_open(BlockNode *bs, json_t *options, Error **errp) GS
{
    GS_CODE();
    Qcow2State *s = bs->opaque;
    int ret;

    s->bs = bs;
    co_mutex_init(&s->lock);
    co_mutex_init(&s->inflight_lock);
    co_queue_init(&s->alloc_waiters);
    co_queue_init(&s->inflight_waiters);
    if (!bdrv_co_open_child(bs, options, "file",
                            BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, false, errp)) {
        return -EINVAL;
    }
    bdrv_graph_rdlock_main_loop();
    snprintf(bs->filename, sizeof(bs->filename), "%s", bs->file->node->filename);
    ret = load_metadata(bs, options, errp);
    if (ret == 0) {
        atomic_store(&bs->length, (int64_t)s->size);
        bs->supported_write_flags = BDRV_REQ_FUA | BDRV_REQ_COMPRESS |
                                   BDRV_REQ_IF_UNALLOCATED;
        bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK;
    }
    bdrv_graph_rdunlock_main_loop();
    if (ret == 0) {
        ret = open_backing(bs, options, errp);
    }
    if (ret < 0) {
        if (errp && !*errp) {
            error_setg_errno(errp, ret, "qcow2: cannot open '%s'", bs->filename);
        }
        free_state(s);
    }
    return ret;
}

/*
 * close — lock: GS; in flight: none (drained); threads: main only.
 * Writes the metadata caches back; the core detaches the children.
 */
static void coroutine_fn qcow2_close(BlockNode *bs) GS
{
    GS_CODE();
    Qcow2State *s = bs->opaque;
    bdrv_graph_rdlock_main_loop();
    if (!bs->read_only && bs->file) {
        co_mutex_lock(&s->lock);
        int ret = qcow2_flush_metadata(s);
        co_mutex_unlock(&s->lock);
        if (ret < 0) {
            error_report("qcow2: '%s': writing metadata back at close failed: %s",
                         bs->filename, strerror(-ret));
        }
    }
    bdrv_graph_rdunlock_main_loop();
    free_state(s);
}

/*
 * child_perm — lock: GS; in flight: may be; threads: main only.
 * The image file: we read it, and write and resize it unless read-only;
 * nobody else may change it under our cached metadata.  The backing file:
 * consistent reads only, everything shared (a commit job may write it
 * through its own edge).
 */
static void qcow2_child_perm(BlockNode *bs, BlockChild *c, BdrvChildRole role,
                             uint64_t perm, uint64_t shared,
                             uint64_t *nperm, uint64_t *nshared) GS
{
    GS_CODE();
    if (role & BDRV_CHILD_COW) {
        *nperm = BLK_PERM_CONSISTENT_READ;
        *nshared = BLK_PERM_ALL;
        return;
    }
    *nperm = BLK_PERM_CONSISTENT_READ;
    if (!bs->read_only) {
        *nperm |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
    }
    *nshared = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
}

/*
 * refresh_limits — lock: GS; in flight: none; threads: main only.
 * Byte-granular requests (partial clusters are handled with COW);
 * zeroes and discards work on whole clusters.
 */
static void qcow2_refresh_limits(BlockNode *bs) GS
{
    GS_CODE();
    Qcow2State *s = bs->opaque;
    uint32_t mem_align = 1;
    bdrv_graph_rdlock_main_loop();
    if (bs->file) {
        mem_align = bs->file->node->bl.min_mem_alignment;
    }
    bdrv_graph_rdunlock_main_loop();
    memset(&bs->bl, 0, sizeof(bs->bl));
    bs->bl.request_alignment = 1;
    bs->bl.min_mem_alignment = mem_align ? mem_align : 1;
    bs->bl.opt_transfer = s->cluster_size ? s->cluster_size : 65536;
    bs->bl.pdiscard_alignment = s->cluster_size;
    bs->bl.pwrite_zeroes_alignment = s->cluster_size;
}

/* ------------------------------------------------------------------------
 * Reopen (GS; blockdev-reopen, see src/reopen.c)
 *
 * Going read-only writes the metadata caches back (and flushes the file)
 * while the file is still writable; this driver never sets the dirty bit
 * itself (no lazy refcounts), so there is no bit to clear.  Going
 * read-write needs nothing but the node's flag, which the core sets — and,
 * for an image opened read-only with the dirty bit set, the refcount repair
 * open would have done.  New cache sizes (options left out: the defaults,
 * as at open) get new, empty caches: the old ones are written back in
 * prepare and nothing can dirty them again while the node is quiesced.
 */

typedef struct Qcow2Reopen {
    bool to_rw;
    Qcow2Cache *l2_cache, *rb_cache;   /* new caches, or NULL: keep */
} Qcow2Reopen;

static void qcow2_reopen_abort(BlockReopenState *rs) GS;

/* GS helper of prepare: new caches if the new options ask for other sizes. */
static int new_caches(BlockReopenState *rs, Qcow2Reopen *r, bool *resize,
                      Error **errp) GS
{
    GS_CODE();
    Qcow2State *s = rs->bs->opaque;
    int l2_n, rb_n;

    cache_sizes(s, rs->options, &l2_n, &rb_n);
    *resize = MAX(l2_n, 4) != qcow2_cache_entries(s->l2_cache) ||
              MAX(rb_n, 4) != qcow2_cache_entries(s->rb_cache);
    if (!*resize) {
        return 0;
    }
    r->l2_cache = qcow2_cache_new(s, l2_n, "L2");
    r->rb_cache = qcow2_cache_new(s, rb_n, "refcount");
    if (!r->l2_cache || !r->rb_cache) {
        qcow2_cache_free(r->l2_cache);
        qcow2_cache_free(r->rb_cache);
        error_setg(errp, "qcow2: cannot allocate the metadata caches of '%s'",
                   rs->bs->filename);
        return -ENOMEM;
    }
    qcow2_cache_set_dependency(r->l2_cache, r->rb_cache);
    return 0;
}

static int coroutine_fn flush_for_reopen(BlockNode *bs, Error **errp) GS
{
    GS_CODE();
    Qcow2State *s = bs->opaque;
    int ret;

    bdrv_graph_rdlock_main_loop();
    co_mutex_lock(&s->lock);
    ret = qcow2_flush_metadata(s);
    co_mutex_unlock(&s->lock);
    bdrv_graph_rdunlock_main_loop();
    if (ret < 0) {
        error_setg_errno(errp, -ret, "qcow2: cannot write the metadata of '%s' "
                         "back", bs->filename);
    }
    return ret;
}

/*
 * reopen_prepare — lock: GS (a coroutine on the main loop); in flight: none
 * (quiesced); threads: main only.
 */
static int coroutine_fn qcow2_reopen_prepare(BlockReopenState *rs, Error **errp) GS
{
    GS_CODE();
    BlockNode *bs = rs->bs;
    Qcow2State *s = bs->opaque;
    bool to_ro = !bs->read_only && rs->read_only;
    bool resize;
    Qcow2Reopen *r;

    r = calloc(1, sizeof(*r));
    if (!r) {
        error_setg(errp, "Out of memory");
        return -ENOMEM;
    }
    r->to_rw = bs->read_only && !rs->read_only;
    if (r->to_rw && (s->incompat & QCOW2_INCOMPAT_CORRUPT)) {
        error_setg(errp, "qcow2: image '%s' is marked corrupt (corrupt bit, "
                   "header offset 72); it can only be opened read-only",
                   bs->filename);
        free(r);
        return -EACCES;
    }
    if (new_caches(rs, r, &resize, errp) < 0) {
        free(r);
        return -ENOMEM;
    }
    rs->opaque = r;
    /* Nothing dirty may stay behind in the caches of a read-only node, in
     * caches about to be dropped, or go to another file node than the one
     * it was read from. */
    if ((to_ro || resize || bdrv_reopen_option_changed(rs, "file")) &&
        flush_for_reopen(bs, errp) < 0) {
        qcow2_reopen_abort(rs);
        return -EIO;
    }
    return 0;
}

/*
 * reopen_commit — lock: GS, in the reopen's coroutine on the main loop
 * (the repair below does I/O); in flight: none (quiesced); threads: main
 * only.  Cannot fail: a repair that fails refuses writes, as at open.
 */
static void qcow2_reopen_commit(BlockReopenState *rs) GS
{
    GS_CODE();
    Qcow2State *s = rs->bs->opaque;
    Qcow2Reopen *r = rs->opaque;

    if (r->l2_cache) {
        /* the old caches are clean: written back in prepare */
        qcow2_cache_free(s->l2_cache);
        qcow2_cache_free(s->rb_cache);
        s->l2_cache = r->l2_cache;
        s->rb_cache = r->rb_cache;
    }
    if (r->to_rw && (s->incompat & QCOW2_INCOMPAT_DIRTY) && !s->writes_refused) {
        Error *local = NULL;
        bdrv_graph_rdlock_main_loop();
        if (qcow2_rebuild_refcounts(s, &local) < 0) {
            warn_report("qcow2: image '%s' is dirty and its refcounts could "
                        "not be repaired (%s); writes are refused",
                        rs->bs->filename, local ? error_get_pretty(local) : "error");
            error_free(local);
            s->writes_refused = true;
        }
        bdrv_graph_rdunlock_main_loop();
    }
    free(r);
    rs->opaque = NULL;
}

/*
 * reopen_abort — lock: GS; in flight: none; threads: main only.  A flush
 * done by prepare stays done (harmless).
 */
static void qcow2_reopen_abort(BlockReopenState *rs) GS
{
    GS_CODE();
    Qcow2Reopen *r = rs->opaque;

    if (r) {
        qcow2_cache_free(r->l2_cache);
        qcow2_cache_free(r->rb_cache);
    }
    free(r);
    rs->opaque = NULL;
}

const BlockDriver bdrv_qcow2 = {
    .format_name = "qcow2",
    .instance_size = sizeof(Qcow2State),
    .is_format = true,
    .options = qcow2_options,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .child_perm = qcow2_child_perm,
    .refresh_limits = qcow2_refresh_limits,
    .co_preadv = qcow2_co_preadv,
    .co_pwritev = qcow2_co_pwritev,
    .co_pwrite_zeroes = qcow2_co_pwrite_zeroes,
    .co_pdiscard = qcow2_co_pdiscard,
    .co_flush = qcow2_co_flush,
    .co_block_status = qcow2_co_block_status,
    .co_truncate = qcow2_co_truncate,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_delete = qcow2_snapshot_delete,
    .snapshot_list = qcow2_snapshot_list,
    .change_backing_file = qcow2_change_backing,
    .reopen_prepare = qcow2_reopen_prepare,
    .reopen_commit = qcow2_reopen_commit,
    .reopen_abort = qcow2_reopen_abort,
};
