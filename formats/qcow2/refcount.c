/*
 * refcount.c — two-level refcounts of any width (1..64 bits) and cluster
 * allocation.
 *
 * Refcount blocks live in the metadata cache (cache.c); the refcount table
 * is kept in memory (it is at most 8 MiB) and written entry by entry.
 *
 * Where new refcount blocks go: the block for range bi (the E clusters it
 * describes) is always placed at the first cluster of that range, so it
 * describes itself.  To make that always possible the allocator never hands
 * out the first cluster of a range whose block does not exist yet.  Growing
 * the refcount table puts the new blocks and the new table in fresh ranges
 * past everything in use, the blocks describing themselves and the table.
 *
 * Every function here: I/O, s->lock held.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "qcow2.h"

/* Host offset of the refcount block for range bi, 0 if none. */
static uint64_t rt_block(const Qcow2State *s, uint64_t bi)
{
    return bi < s->rt_size ? s->rt[bi] & REFT_OFFSET_MASK : 0;
}

/* Writes past the end of the file child fail (io.c): grow it first.  The
 * new clusters are referenced by nothing yet, so a crash right after only
 * leaves unused space at the end. */
int coroutine_fn qcow2_grow_file(Qcow2State *s, uint64_t end)
{
    IO_CODE();
    if (end <= (uint64_t)bdrv_getlength(s->bs->file->node)) {
        return 0;
    }
    return bdrv_co_truncate(s->bs->file, end, false, NULL);
}

static uint64_t rc_read(const Qcow2State *s, const uint8_t *rb, uint64_t i)
{
    int bits = s->refcount_bits;
    if (bits >= 8) {
        const uint8_t *p = rb + i * (bits / 8);
        uint64_t v = 0;
        for (int k = 0; k < bits / 8; k++) {
            v = (v << 8) | p[k];
        }
        return v;
    }
    uint64_t bit = i * bits;
    return (rb[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
}

static void rc_write(const Qcow2State *s, uint8_t *rb, uint64_t i, uint64_t v)
{
    int bits = s->refcount_bits;
    if (bits >= 8) {
        uint8_t *p = rb + i * (bits / 8);
        for (int k = bits / 8 - 1; k >= 0; k--) {
            p[k] = v & 0xff;
            v >>= 8;
        }
        return;
    }
    uint64_t bit = i * bits;
    uint8_t mask = ((1u << bits) - 1) << (bit % 8);
    rb[bit / 8] = (rb[bit / 8] & ~mask) | ((v << (bit % 8)) & mask);
}

static int coroutine_fn GRAPH_RDLOCK check_block_offset(Qcow2State *s, uint64_t bi,
                                                        uint64_t off)
{
    if (!IS_ALIGNED(off, s->cluster_size) || off < s->cluster_size) {
        return qcow2_signal_corruption(s, (int64_t)off, (int64_t)s->cluster_size,
                                       "refcount block offset 0x%llx (refcount "
                                       "table entry %llu) is invalid",
                                       (unsigned long long)off,
                                       (unsigned long long)bi);
    }
    return 0;
}

int coroutine_fn qcow2_get_refcount(Qcow2State *s, uint64_t cluster, uint64_t *refcount)
{
    IO_CODE();
    uint64_t bi = cluster >> s->rb_bits, off = rt_block(s, bi);
    uint8_t *rb;
    *refcount = 0;
    if (!off) {
        return 0;
    }
    int ret = check_block_offset(s, bi, off);
    if (ret == 0) {
        ret = qcow2_cache_get(s->rb_cache, off, true, &rb);
    }
    if (ret < 0) {
        return ret;
    }
    *refcount = rc_read(s, rb, cluster & (s->rb_entries - 1));
    qcow2_cache_put(s->rb_cache, rb);
    return 0;
}

static int coroutine_fn GRAPH_RDLOCK write_rt_entries(Qcow2State *s, uint64_t first,
                                                      uint64_t n)
{
    uint8_t buf[64];
    while (n) {
        uint64_t k = MIN(n, 8);
        for (uint64_t i = 0; i < k; i++) {
            st_be64(buf + i * 8, s->rt[first + i]);
        }
        int ret = bdrv_co_pwrite(s->bs->file, s->rt_offset + first * 8, k * 8, buf, 0);
        if (ret < 0) {
            return ret;
        }
        first += k;
        n -= k;
    }
    return 0;
}

/* Points refcount table entry bi at `off`, in memory and on disk.  If the
 * disk write fails the entry is reset, so memory keeps agreeing with the
 * image: otherwise refcounts would go to a block the image never links,
 * and the clusters they protect would read as free after a reopen. */
static int coroutine_fn GRAPH_RDLOCK set_rt_entry(Qcow2State *s, uint64_t bi,
                                                  uint64_t off)
{
    uint64_t old = s->rt[bi];
    s->rt[bi] = off;
    bdrv_co_debug_event(s->bs->file, BLKDBG_REFBLOCK_ALLOC);   /* the hookup */
    int ret = write_rt_entries(s, bi, 1);
    if (ret < 0) {
        s->rt[bi] = old;
    }
    return ret;
}

typedef struct GrowPlan {
    uint64_t first_range;       /* k: range of the first new block */
    uint64_t nb_blocks, table_clusters, table_entries;
} GrowPlan;

static int GRAPH_RDLOCK plan_growth(Qcow2State *s, uint64_t min_entries, uint64_t pending_end,
                       GrowPlan *g)
{
    uint64_t E = s->rb_entries;
    uint64_t file_clusters = DIV_ROUND_UP((uint64_t)bdrv_getlength(s->bs->file->node),
                                          s->cluster_size);
    g->first_range = MAX(s->rt_size, DIV_ROUND_UP(MAX(file_clusters, pending_end), E));
    g->first_range = MAX(g->first_range, min_entries);
    g->table_entries = MAX(min_entries, s->rt_size * 2);
    g->nb_blocks = 1;
    for (;;) {
        uint64_t T = MAX(g->table_entries, g->first_range + g->nb_blocks);
        uint64_t tc = DIV_ROUND_UP(T * 8, s->cluster_size);
        uint64_t nb = DIV_ROUND_UP(g->nb_blocks + tc, E);
        if (nb == g->nb_blocks && T == g->table_entries) {
            g->table_clusters = tc;
            break;
        }
        g->nb_blocks = nb;
        g->table_entries = T;
    }
    /* The table occupies whole clusters: use every entry they hold. */
    g->table_entries = g->table_clusters * s->cluster_size / 8;
    return g->table_clusters * s->cluster_size > QCOW2_MAX_RT_BYTES ? -EFBIG : 0;
}

/* Builds the new blocks + table in one buffer: [blocks][table]. */
static uint8_t *build_growth(Qcow2State *s, const GrowPlan *g, uint64_t P)
{
    uint64_t cs = s->cluster_size, total = g->nb_blocks + g->table_clusters;
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, total * cs)) {
        return NULL;
    }
    memset(buf, 0, total * cs);
    for (uint64_t j = 0; j < total; j++) {
        /* cluster P+j is in the block j / E (relative), entry j % E */
        rc_write(s, buf + (j >> s->rb_bits) * cs, j & (s->rb_entries - 1), 1);
    }
    uint8_t *table = buf + g->nb_blocks * cs;
    for (uint64_t i = 0; i < s->rt_size; i++) {
        st_be64(table + i * 8, s->rt[i]);
    }
    for (uint64_t i = 0; i < g->nb_blocks; i++) {
        st_be64(table + (g->first_range + i) * 8, (P + i) * cs);
    }
    return buf;
}

static int coroutine_fn GRAPH_RDLOCK grow_table(Qcow2State *s, uint64_t min_entries,
                                                uint64_t pending_end)
{
    GrowPlan g;
    int ret = plan_growth(s, min_entries, pending_end, &g);
    if (ret < 0) {
        return ret;
    }
    uint64_t cs = s->cluster_size, P = g.first_range << s->rb_bits;
    uint64_t total = g.nb_blocks + g.table_clusters;
    uint8_t *buf = build_growth(s, &g, P);
    uint64_t *new_rt = calloc(g.table_entries, 8);
    if (!buf || !new_rt) {
        free(buf);
        free(new_rt);
        return -ENOMEM;
    }
    ret = qcow2_grow_file(s, (P + total) * cs);
    for (uint64_t i = 0; i < g.nb_blocks; i++) {
        qcow2_cache_discard(s->rb_cache, (P + i) * cs);   /* written directly */
    }
    if (ret == 0) {
        bdrv_co_debug_event(s->bs->file, BLKDBG_REFBLOCK_ALLOC);
        ret = bdrv_co_pwrite(s->bs->file, P * cs, total * cs, buf, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(s->bs->file->node);
    }
    bool switched = false;
    if (ret == 0) {
        uint8_t hdr[12];
        st_be64(hdr, (P + g.nb_blocks) * cs);
        st_be32(hdr + 8, g.table_clusters);
        ret = qcow2_header_switch(s, QH_RT_OFFSET_OFF, hdr, 12, &switched);
    }
    if (ret < 0 && !switched) {
        free(buf);
        free(new_rt);
        return ret;
    }
    for (uint64_t i = 0; i < g.table_entries; i++) {
        new_rt[i] = ld_be64(buf + g.nb_blocks * cs + i * 8);
    }
    free(buf);
    uint64_t old_off = s->rt_offset, old_clusters = s->rt_clusters;
    free(s->rt);
    s->rt = new_rt;
    s->rt_size = g.table_entries;
    s->rt_offset = (P + g.nb_blocks) * cs;
    s->rt_clusters = g.table_clusters;
    if (ret < 0) {
        return ret;     /* written, flush failed: keep the old table (leak) */
    }
    return qcow2_update_refcount(s, old_off, old_clusters * cs, -1);
}

/* Creates the refcount block for range bi at the range's first cluster. */
static int coroutine_fn GRAPH_RDLOCK create_block(Qcow2State *s, uint64_t bi,
                                                  uint64_t pending_end)
{
    int ret;
    if (bi >= s->rt_size) {
        ret = grow_table(s, bi + 1, pending_end);
        if (ret < 0 || rt_block(s, bi)) {
            return ret;
        }
    }
    uint64_t off = (bi << s->rb_bits) << s->cluster_bits;
    uint8_t *rb;
    ret = qcow2_cache_get(s->rb_cache, off, false, &rb);
    if (ret < 0) {
        return ret;
    }
    rc_write(s, rb, 0, 1);
    /* The block must be on disk before the table entry points to it. */
    ret = qcow2_grow_file(s, off + s->cluster_size);
    if (ret == 0) {
        bdrv_co_debug_event(s->bs->file, BLKDBG_REFBLOCK_ALLOC);
        ret = bdrv_co_pwrite(s->bs->file, off, s->cluster_size, rb, 0);
    }
    qcow2_cache_put(s->rb_cache, rb);
    if (ret == 0) {
        ret = bdrv_co_flush(s->bs->file->node);
    }
    if (ret == 0) {
        ret = set_rt_entry(s, bi, off);
    }
    if (ret < 0) {
        /* Not linked: the cached copy must not outlive the attempt (the
         * cluster may later become data, or a block written directly). */
        qcow2_cache_discard(s->rb_cache, off);
    }
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK update_one(Qcow2State *s, uint64_t cluster,
                                                int delta, uint64_t pending_end)
{
    uint64_t bi = cluster >> s->rb_bits, off = rt_block(s, bi);
    uint8_t *rb;
    int ret;

    if (!off) {
        if (delta < 0) {
            return qcow2_signal_corruption(s, (int64_t)(cluster << s->cluster_bits),
                (int64_t)s->cluster_size, "freeing cluster 0x%llx that has "
                "no refcount block", (unsigned long long)(cluster << s->cluster_bits));
        }
        ret = create_block(s, bi, pending_end);
        if (ret < 0) {
            return ret;
        }
        off = rt_block(s, bi);
    }
    ret = check_block_offset(s, bi, off);
    if (ret == 0) {
        ret = qcow2_cache_get(s->rb_cache, off, true, &rb);
    }
    if (ret < 0) {
        return ret;
    }
    uint64_t idx = cluster & (s->rb_entries - 1), v = rc_read(s, rb, idx);
    if ((delta < 0 && v < (uint64_t)-delta) ||
        (delta > 0 && s->refcount_max - v < (uint64_t)delta)) {
        qcow2_cache_put(s->rb_cache, rb);
        if (delta > 0) {
            return -ERANGE;
        }
        return qcow2_signal_corruption(s, (int64_t)(cluster << s->cluster_bits),
            (int64_t)s->cluster_size, "refcount of cluster 0x%llx would drop "
            "below zero", (unsigned long long)(cluster << s->cluster_bits));
    }
    v += delta;
    rc_write(s, rb, idx, v);
    qcow2_cache_mark_dirty(s->rb_cache, rb);
    qcow2_cache_put(s->rb_cache, rb);
    if (v == 0) {
        uint64_t host = cluster << s->cluster_bits;
        qcow2_cache_discard(s->l2_cache, host);
        qcow2_cache_discard(s->rb_cache, host);
        qcow2_compress_tail_freed(s, host);
        s->free_hint = MIN(s->free_hint, cluster);
    }
    return 0;
}

static int coroutine_fn GRAPH_RDLOCK update_range(Qcow2State *s, uint64_t off,
                                                  uint64_t len, int delta,
                                                  uint64_t pending_end)
{
    if (len == 0) {
        return 0;
    }
    uint64_t first = off >> s->cluster_bits;
    uint64_t last = (off + len - 1) >> s->cluster_bits;
    for (uint64_t c = first; c <= last; c++) {
        int ret = update_one(s, c, delta, pending_end);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

int coroutine_fn qcow2_update_refcount(Qcow2State *s, uint64_t off, uint64_t len,
                                       int delta)
{
    IO_CODE();
    return update_range(s, off, len, delta, 0);
}

/* May the allocator hand out host cluster c? */
static int coroutine_fn GRAPH_RDLOCK cluster_is_free(Qcow2State *s, uint64_t c,
                                                     bool *is_free)
{
    uint64_t bi = c >> s->rb_bits;
    if (c == 0) {
        *is_free = false;
        return 0;
    }
    if (!rt_block(s, bi)) {
        /* reserved for the block that will describe this range */
        *is_free = (c & (s->rb_entries - 1)) != 0;
        return 0;
    }
    uint64_t rc;
    int ret = qcow2_get_refcount(s, c, &rc);
    *is_free = rc == 0;
    return ret;
}

/* First cluster >= start from which n clusters have refcount 0 in ranges
 * that have a block (clusters past the end of the file normally do). */
static int64_t coroutine_fn GRAPH_RDLOCK free_run_from(Qcow2State *s, uint64_t start,
                                                       uint64_t n)
{
    for (uint64_t c = start; c < start + n; c++) {
        uint64_t rc = 0;
        if (rt_block(s, c >> s->rb_bits)) {
            int ret = qcow2_get_refcount(s, c, &rc);
            if (ret < 0) {
                return ret;
            }
        }
        if (rc) {
            start = c + 1;
        }
    }
    return (int64_t)start;
}

static uint64_t count_missing_ranges(Qcow2State *s, uint64_t first, uint64_t end)
{
    uint64_t m = 0;
    for (uint64_t r = first >> s->rb_bits; r <= (end - 1) >> s->rb_bits; r++) {
        m += !rt_block(s, r);
    }
    return m;
}

/*
 * Points the table entries of ranges[0..m) (ascending) at the blocks
 * first_off, first_off + cs, ... with ONE write of the table span they
 * cover, so a failed write leaves none of them linked.  Linking some but
 * not all would be unsafe: the block of one range may sit in another of
 * them, and a range left without a block reads as free, so the allocator
 * would hand out a live refcount block as data.  (A torn write of the span
 * by the device itself is not covered.)
 */
static int coroutine_fn GRAPH_RDLOCK hook_up_ranges(Qcow2State *s, const uint64_t *ranges,
                                                    uint64_t m, uint64_t first_off)
{
    if (m == 0) {
        return 0;
    }
    uint64_t lo = ranges[0], span = ranges[m - 1] - lo + 1;
    uint8_t *buf = malloc(span * 8);
    if (!buf) {
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < m; i++) {
        s->rt[ranges[i]] = first_off + i * s->cluster_size;
    }
    for (uint64_t j = 0; j < span; j++) {
        st_be64(buf + j * 8, s->rt[lo + j]);
    }
    bdrv_co_debug_event(s->bs->file, BLKDBG_REFBLOCK_ALLOC);   /* the hookup */
    int ret = bdrv_co_pwrite(s->bs->file, s->rt_offset + lo * 8, span * 8, buf, 0);
    for (uint64_t i = 0; ret < 0 && i < m; i++) {
        s->rt[ranges[i]] = 0;
    }
    free(buf);
    return ret;
}

/* Writes blocks for the missing ranges touched by [start, end) at
 * start+n.., each describing the clusters of [start, end) in its range. */
static int coroutine_fn GRAPH_RDLOCK write_end_blocks(Qcow2State *s, uint64_t start,
                                                      uint64_t n, uint64_t end,
                                                      uint64_t *ranges, uint64_t m)
{
    uint64_t cs = s->cluster_size, E = s->rb_entries;
    uint8_t *buf = calloc(1, cs);
    int ret = buf ? qcow2_grow_file(s, end * cs) : -ENOMEM;
    for (uint64_t i = 0; ret == 0 && i < m; i++) {
        memset(buf, 0, cs);
        uint64_t lo = MAX(start, ranges[i] * E), hi = MIN(end, (ranges[i] + 1) * E);
        for (uint64_t c = lo; c < hi; c++) {
            rc_write(s, buf, c & (E - 1), 1);
        }
        /* written directly: no stale cached copy may shadow it */
        qcow2_cache_discard(s->rb_cache, (start + n + i) * cs);
        bdrv_co_debug_event(s->bs->file, BLKDBG_REFBLOCK_ALLOC);
        ret = bdrv_co_pwrite(s->bs->file, (start + n + i) * cs, cs, buf, 0);
    }
    free(buf);
    if (ret == 0) {
        ret = bdrv_co_flush(s->bs->file->node);
    }
    return ret < 0 ? ret : hook_up_ranges(s, ranges, m, (start + n) * cs);
}

/*
 * A run longer than half a block's range cannot count on the self-describing
 * placement (every range start may be taken by its block): put it past the
 * end of the file, and the blocks of the ranges it touches right after it.
 */
static int64_t coroutine_fn GRAPH_RDLOCK alloc_at_end(Qcow2State *s, uint64_t n)
{
    uint64_t cs = s->cluster_size;
    int64_t st = free_run_from(s, MAX(DIV_ROUND_UP((uint64_t)bdrv_getlength(
                                   s->bs->file->node), cs), 1), n);
    if (st < 0) {
        return st;
    }
    uint64_t start = st, m = 0, end;
    for (;;) {
        uint64_t m2 = count_missing_ranges(s, start, start + n + m);
        if (m2 == m) {
            break;
        }
        m = m2;
    }
    end = start + n + m;
    uint64_t last_range = (end - 1) >> s->rb_bits;
    int ret = last_range >= s->rt_size ? grow_table(s, last_range + 1, end) : 0;
    uint64_t *ranges = calloc(m + 1, 8), k = 0;
    for (uint64_t r = start >> s->rb_bits; ranges && r <= last_range; r++) {
        if (!rt_block(s, r)) {
            ranges[k++] = r;
        }
    }
    ret = ret < 0 ? ret : !ranges ? -ENOMEM : 0;
    /* Clusters in ranges that already had a block: the normal path, and
     * before the new blocks are linked — the new blocks may sit in these
     * ranges, so they must never be linked while counted free there.  A
     * failure from here on leaks these clusters at worst. */
    for (uint64_t c = start; ret == 0 && c < end; c++) {
        bool fresh = false;
        for (uint64_t i = 0; i < k; i++) {
            fresh |= ranges[i] == c >> s->rb_bits;
        }
        if (!fresh) {
            ret = update_one(s, c, 1, end);
        }
    }
    if (ret == 0) {
        ret = write_end_blocks(s, start, n, end, ranges, k);
    }
    free(ranges);
    return ret < 0 ? ret : (int64_t)(start * cs);
}

int64_t coroutine_fn qcow2_alloc_clusters(Qcow2State *s, uint64_t n)
{
    IO_CODE();
    if (n > s->rb_entries / 2) {
        return alloc_at_end(s, n);
    }
    uint64_t c = MAX(s->free_hint, 1), run = 0;
    bool first_free_seen = false;

    while (run < n) {
        bool is_free;
        int ret = cluster_is_free(s, c, &is_free);
        if (ret < 0) {
            return ret;
        }
        if (is_free && !first_free_seen) {
            s->free_hint = c;          /* nothing below c is free */
            first_free_seen = true;
        }
        run = is_free ? run + 1 : 0;
        c++;
    }
    uint64_t start = c - n;
    if (((c << s->cluster_bits) >> s->cluster_bits) != c ||
        (c << s->cluster_bits) > (1ull << 56)) {
        return -EFBIG;
    }
    int ret = update_range(s, start << s->cluster_bits, n << s->cluster_bits, 1, c);
    if (ret == 0) {
        ret = qcow2_grow_file(s, c << s->cluster_bits);
    }
    if (ret < 0) {
        return ret;
    }
    if (s->free_hint == start) {
        s->free_hint = c;
    }
    return (int64_t)(start << s->cluster_bits);
}

static void coroutine_fn wait_data_idle(Qcow2State *s)
{
    co_mutex_lock(&s->inflight_lock);
    while (s->data_inflight > 0) {
        co_queue_wait(&s->inflight_waiters, &s->inflight_lock);
    }
    co_mutex_unlock(&s->inflight_lock);
}

int coroutine_fn qcow2_free_clusters(Qcow2State *s, uint64_t off, uint64_t len)
{
    IO_CODE();
    wait_data_idle(s);
    return qcow2_update_refcount(s, off, len, -1);
}

int coroutine_fn qcow2_flush_refcounts(Qcow2State *s)
{
    IO_CODE();
    int ret = qcow2_cache_writeback(s->rb_cache);
    if (ret == 0) {
        ret = bdrv_co_flush(s->bs->file->node);
    }
    return ret;
}

int coroutine_fn qcow2_load_refcount_table(Qcow2State *s, Error **errp)
{
    IO_CODE();
    uint64_t bytes = (uint64_t)s->rt_clusters * s->cluster_size;
    int64_t file_len = bdrv_getlength(s->bs->file->node);
    uint8_t *buf = malloc(bytes);
    s->rt_size = bytes / 8;
    s->rt = calloc(s->rt_size, 8);
    if (!buf || !s->rt) {
        free(buf);
        return -ENOMEM;
    }
    int ret = bdrv_co_pread(s->bs->file, s->rt_offset, bytes, buf, 0);
    if (ret < 0) {
        error_setg_errno(errp, ret, "qcow2: cannot read the refcount table");
    }
    for (uint64_t i = 0; ret == 0 && i < s->rt_size; i++) {
        s->rt[i] = ld_be64(buf + i * 8);
        uint64_t off = s->rt[i] & REFT_OFFSET_MASK;
        if (off && (!IS_ALIGNED(off, s->cluster_size) || off + s->cluster_size >
                    (uint64_t)file_len)) {
            error_setg(errp, "qcow2: refcount block offset 0x%llx (refcount table "
                       "entry %llu at offset 0x%llx) is misaligned or past the end "
                       "of the file", (unsigned long long)off, (unsigned long long)i,
                       (unsigned long long)(s->rt_offset + i * 8));
            ret = -EINVAL;
        }
    }
    free(buf);
    return ret;
}

/*
 * Rebuilding refcounts (an image left dirty by lazy refcounts).
 *
 * Count every reference from scratch in memory — header, L1 tables (active
 * and snapshots), L2 tables, data and compressed clusters, the snapshot
 * table — then write a complete new refcount table and blocks past the end
 * of the file, describing everything including themselves, and switch the
 * header to them.  The old structures are simply not counted: they become
 * free space.  Runs at open, before the node is reachable.
 */

typedef struct Counts {
    uint64_t *c;
    uint64_t n;               /* clusters covered */
} Counts;

static int count_range(Qcow2State *s, Counts *k, uint64_t off, uint64_t len,
                       const char *what, Error **errp)
{
    if (len == 0) {
        return 0;
    }
    uint64_t first = off >> s->cluster_bits, last = (off + len - 1) >> s->cluster_bits;
    if (last >= k->n) {
        error_setg(errp, "qcow2: %s at 0x%llx is past the end of the file",
                   what, (unsigned long long)off);
        return -EINVAL;
    }
    for (uint64_t c = first; c <= last; c++) {
        k->c[c]++;
    }
    return 0;
}

static int coroutine_fn GRAPH_RDLOCK count_l2(Qcow2State *s, Counts *k, uint64_t l2_off,
                                              uint8_t *buf, Error **errp)
{
    int ret = bdrv_co_pread(s->bs->file, l2_off, s->cluster_size, buf, 0);
    for (uint64_t i = 0; ret == 0 && i < s->l2_entries; i++) {
        uint64_t e = ld_be64(buf + i * 8), off = e & L2E_OFFSET_MASK, len = s->cluster_size;
        switch (qcow2_l2_entry_type(s, e)) {
        case QCOW2_CLUSTER_COMPRESSED:
            qcow2_compressed_range(s, e, &off, &len);
            /* fall through */
        case QCOW2_CLUSTER_NORMAL:
        case QCOW2_CLUSTER_ZERO_ALLOC:
            ret = count_range(s, k, off, len, "data cluster", errp);
            break;
        default:
            break;
        }
    }
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK count_l1(Qcow2State *s, Counts *k, uint64_t l1_off,
                                              uint32_t l1_size, Error **errp)
{
    uint8_t *l1 = malloc((uint64_t)l1_size * 8 + 8), *buf = malloc(s->cluster_size);
    int ret = (!l1 || !buf) ? -ENOMEM : 0;
    if (ret == 0 && l1_size) {
        ret = count_range(s, k, l1_off, l1_size * 8ull, "L1 table", errp);
    }
    if (ret == 0 && l1_size) {
        ret = bdrv_co_pread(s->bs->file, l1_off, l1_size * 8ull, l1, 0);
    }
    for (uint32_t i = 0; ret == 0 && i < l1_size; i++) {
        uint64_t l2_off = ld_be64(l1 + i * 8ull) & L1E_OFFSET_MASK;
        if (l2_off) {
            ret = count_range(s, k, l2_off, s->cluster_size, "L2 table", errp);
            if (ret == 0) {
                ret = count_l2(s, k, l2_off, buf, errp);
            }
        }
    }
    free(l1);
    free(buf);
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK count_snapshots(Qcow2State *s, Counts *k,
                                                     Error **errp)
{
    uint64_t off = s->snapshots_offset;
    int ret = 0;
    for (uint32_t i = 0; ret == 0 && i < s->nb_snapshots; i++) {
        uint8_t h[40];
        ret = bdrv_co_pread(s->bs->file, off, 40, h, 0);
        if (ret < 0) {
            break;
        }
        uint64_t len = ROUND_UP(40ull + ld_be32(h + 36) + ld_be16(h + 12) +
                                ld_be16(h + 14), 8);
        ret = count_l1(s, k, ld_be64(h), ld_be32(h + 8), errp);
        if (ret == 0) {
            ret = count_range(s, k, off, len, "snapshot table entry", errp);
        }
        off += len;
    }
    return ret;
}

static void plan_new_refcounts(Qcow2State *s, uint64_t P, uint64_t *nb, uint64_t *tc)
{
    *nb = 1;
    *tc = 1;
    for (;;) {
        uint64_t nb2 = DIV_ROUND_UP(P + *nb + *tc, s->rb_entries);
        uint64_t tc2 = DIV_ROUND_UP(nb2 * 8, s->cluster_size);
        if (nb2 == *nb && tc2 == *tc) {
            return;
        }
        *nb = nb2;
        *tc = tc2;
    }
}

static int coroutine_fn GRAPH_RDLOCK write_new_refcounts(Qcow2State *s, Counts *k,
                                                         Error **errp)
{
    uint64_t cs = s->cluster_size, P = k->n, nb, tc;
    plan_new_refcounts(s, P, &nb, &tc);
    if (tc * cs > QCOW2_MAX_RT_BYTES) {
        error_setg(errp, "qcow2: rebuilt refcount table would exceed 8 MiB");
        return -EFBIG;
    }
    uint64_t total = P + nb + tc;
    uint8_t *buf = calloc(nb + tc, cs);
    uint64_t *c = realloc(k->c, total * 8);
    if (!buf || !c) {
        free(buf);
        return -ENOMEM;
    }
    k->c = c;
    for (uint64_t i = P; i < total; i++) {
        c[i] = 1;
    }
    for (uint64_t i = 0; i < total; i++) {
        if (c[i] > s->refcount_max) {
            free(buf);
            error_setg(errp, "qcow2: refcount %llu of cluster %llu does not fit in "
                       "%d bits", (unsigned long long)c[i], (unsigned long long)i,
                       s->refcount_bits);
            return -ERANGE;
        }
        rc_write(s, buf + (i >> s->rb_bits) * cs, i & (s->rb_entries - 1), c[i]);
    }
    for (uint64_t b = 0; b < nb; b++) {
        st_be64(buf + nb * cs + b * 8, (P + b) * cs);
    }
    int ret = qcow2_grow_file(s, total * cs);
    if (ret == 0) {
        ret = bdrv_co_pwrite(s->bs->file, P * cs, (nb + tc) * cs, buf, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(s->bs->file->node);
    }
    if (ret == 0) {
        uint8_t hdr[12];
        st_be64(hdr, (P + nb) * cs);
        st_be32(hdr + 8, tc);
        ret = qcow2_header_update(s, QH_RT_OFFSET_OFF, hdr, 12);
    }
    if (ret == 0) {
        free(s->rt);
        s->rt = calloc(tc * cs / 8, 8);
        s->rt_size = s->rt ? tc * cs / 8 : 0;
        for (uint64_t b = 0; s->rt && b < nb; b++) {
            s->rt[b] = (P + b) * cs;
        }
        s->rt_offset = (P + nb) * cs;
        s->rt_clusters = tc;
        ret = s->rt ? 0 : -ENOMEM;
    }
    free(buf);
    return ret;
}

int coroutine_fn qcow2_rebuild_refcounts(Qcow2State *s, Error **errp)
{
    IO_CODE();
    Counts k;
    /* one spare cluster: a compressed range may end past the file's end */
    k.n = DIV_ROUND_UP((uint64_t)bdrv_getlength(s->bs->file->node), s->cluster_size) + 1;
    k.c = calloc(k.n, 8);
    if (!k.c) {
        return -ENOMEM;
    }
    int ret = count_range(s, &k, 0, s->cluster_size, "header", errp);
    if (ret == 0) {
        ret = count_l1(s, &k, s->l1_offset, s->l1_size, errp);
    }
    if (ret == 0) {
        ret = count_snapshots(s, &k, errp);
    }
    if (ret == 0) {
        ret = write_new_refcounts(s, &k, errp);
    }
    if (ret == 0) {
        uint8_t b[8];
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        st_be64(b, s->incompat);
        ret = qcow2_header_update(s, QH_INCOMPAT_OFF, b, 8);
    }
    free(k.c);
    return ret;
}
