/*
 * cluster.c — guest-to-host mapping: the L1 table (in memory), L2 tables (in
 * the metadata cache), L2 allocation and copy-on-write of shared L2 tables,
 * entry updates, and the write-back ordering of metadata.
 *
 * Every function: I/O, s->lock held (qcow2_load_l1: at open).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "qcow2.h"

#define L2E_RESERVED_STD 0x3f000000000001feull   /* bits 1-8 and 56-61 */

Qcow2ClusterType qcow2_l2_entry_type(const Qcow2State *s, uint64_t l2e)
{
    if (l2e & QCOW_OFLAG_COMPRESSED) {
        return QCOW2_CLUSTER_COMPRESSED;
    }
    bool has_host = (l2e & L2E_OFFSET_MASK) != 0;
    if ((l2e & QCOW_OFLAG_ZERO) && s->version >= 3) {
        return has_host ? QCOW2_CLUSTER_ZERO_ALLOC : QCOW2_CLUSTER_ZERO_PLAIN;
    }
    return has_host ? QCOW2_CLUSTER_NORMAL : QCOW2_CLUSTER_UNALLOCATED;
}

void qcow2_compressed_range(const Qcow2State *s, uint64_t l2e, uint64_t *off,
                            uint64_t *len)
{
    int x = 62 - (s->cluster_bits - 8);
    uint64_t desc = l2e & ~(QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_COPIED);
    uint64_t nsec = desc >> x;
    *off = desc & ((1ull << x) - 1);
    *len = (nsec + 1) * 512 - (*off & 511);
}

int coroutine_fn qcow2_load_l1(Qcow2State *s, Error **errp)
{
    IO_CODE();
    int64_t file_len = bdrv_getlength(s->bs->file->node);
    uint64_t bytes = (uint64_t)s->l1_size * 8;
    uint8_t *buf = malloc(bytes ? bytes : 8);
    s->l1 = calloc(s->l1_size ? s->l1_size : 1, 8);
    if (!buf || !s->l1) {
        free(buf);
        return -ENOMEM;
    }
    int ret = bytes ? bdrv_co_pread(s->bs->file, s->l1_offset, bytes, buf, 0) : 0;
    if (ret < 0) {
        error_setg_errno(errp, ret, "qcow2: cannot read the L1 table");
    }
    for (uint32_t i = 0; ret == 0 && i < s->l1_size; i++) {
        s->l1[i] = ld_be64(buf + i * 8);
        uint64_t off = s->l1[i] & L1E_OFFSET_MASK;
        if (off && (!IS_ALIGNED(off, s->cluster_size) || off < s->cluster_size ||
                    off + s->cluster_size > (uint64_t)file_len)) {
            error_setg(errp, "qcow2: L2 table offset 0x%llx (L1 entry %u at offset "
                       "0x%llx) is misaligned, overlaps the header or is past the "
                       "end of the file", (unsigned long long)off, i,
                       (unsigned long long)(s->l1_offset + i * 8ull));
            ret = -EINVAL;
        }
    }
    free(buf);
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK check_l2_offset(Qcow2State *s, uint32_t l1i,
                                                     uint64_t l2_off)
{
    if (!IS_ALIGNED(l2_off, s->cluster_size) || l2_off < s->cluster_size) {
        return qcow2_signal_corruption(s, (int64_t)l2_off, (int64_t)s->cluster_size,
                                       "L2 table offset 0x%llx (L1 entry %u) is "
                                       "invalid", (unsigned long long)l2_off, l1i);
    }
    return 0;
}

static int coroutine_fn GRAPH_RDLOCK check_l2_entry(Qcow2State *s, uint64_t guest,
                                                    uint64_t l2e)
{
    Qcow2ClusterType t = qcow2_l2_entry_type(s, l2e);
    uint64_t host = l2e & L2E_OFFSET_MASK;
    if (t != QCOW2_CLUSTER_NORMAL && t != QCOW2_CLUSTER_ZERO_ALLOC) {
        return 0;
    }
    uint64_t cs = s->cluster_size;
    bool over_l1 = host < s->l1_offset + s->l1_size * 8ull && s->l1_offset < host + cs;
    bool over_rt = host < s->rt_offset + s->rt_clusters * cs && s->rt_offset < host + cs;
    if (!IS_ALIGNED(host, cs) || host < cs || over_l1 || over_rt) {
        /* never let a data write land on the header, L1 or refcount table */
        return qcow2_signal_corruption(s, (int64_t)host, (int64_t)cs,
                                       "data cluster offset 0x%llx for guest "
                                       "offset 0x%llx is misaligned or overlaps "
                                       "the header, L1 table or refcount table",
                                       (unsigned long long)host,
                                       (unsigned long long)guest);
    }
    return 0;
}

/* Same type and, for data clusters, the next host cluster? */
static bool continues_run(const Qcow2State *s, uint64_t first, uint64_t e, uint64_t k)
{
    Qcow2ClusterType t = qcow2_l2_entry_type(s, first);
    if (qcow2_l2_entry_type(s, e) != t || t == QCOW2_CLUSTER_COMPRESSED) {
        return false;
    }
    if (t == QCOW2_CLUSTER_NORMAL) {
        return (e & L2E_OFFSET_MASK) == (first & L2E_OFFSET_MASK) + k * s->cluster_size &&
               (e & QCOW_OFLAG_COPIED) == (first & QCOW_OFLAG_COPIED);
    }
    return true;
}

int coroutine_fn qcow2_get_mapping(Qcow2State *s, uint64_t off, uint64_t bytes,
                                   uint64_t *l2e, uint64_t *nb)
{
    IO_CODE();
    uint64_t in_cluster = qcow2_offset_in_cluster(s, off);
    uint64_t l2_idx = (off >> s->cluster_bits) & (s->l2_entries - 1);
    uint64_t l1_idx = off >> (s->cluster_bits + s->l2_bits);
    uint64_t max_clusters = MIN(s->l2_entries - l2_idx,
                                DIV_ROUND_UP(in_cluster + bytes, s->cluster_size));
    uint64_t l2_off = l1_idx < s->l1_size ? s->l1[l1_idx] & L1E_OFFSET_MASK : 0;
    uint8_t *t;
    uint64_t n = 1;

    *l2e = 0;
    if (!l2_off) {
        n = max_clusters;
    } else {
        int ret = check_l2_offset(s, l1_idx, l2_off);
        if (ret == 0) {
            ret = qcow2_cache_get(s->l2_cache, l2_off, true, &t);
        }
        if (ret < 0) {
            return ret;
        }
        *l2e = ld_be64(t + l2_idx * 8);
        while (n < max_clusters && continues_run(s, *l2e, ld_be64(t + (l2_idx + n) * 8), n)) {
            n++;
        }
        qcow2_cache_put(s->l2_cache, t);
        ret = check_l2_entry(s, off, *l2e);
        if (ret < 0) {
            return ret;
        }
    }
    *nb = MIN(bytes, n * s->cluster_size - in_cluster);
    return 0;
}

static int coroutine_fn GRAPH_RDLOCK write_l1_entry(Qcow2State *s, uint64_t idx)
{
    uint8_t buf[8];
    st_be64(buf, s->l1[idx]);
    bdrv_co_debug_event(s->bs->file, BLKDBG_L2_UPDATE);
    return bdrv_co_pwrite(s->bs->file, s->l1_offset + idx * 8, 8, buf, 0);
}

/* Fills a new L2 table: zeroes, or a copy of a shared one without COPIED
 * flags (its clusters stay shared with the other owner). */
static int coroutine_fn GRAPH_RDLOCK fill_new_l2(Qcow2State *s, uint64_t old_off,
                                                 uint8_t *new_t)
{
    uint8_t *old_t;
    if (!old_off) {
        return 0;
    }
    int ret = qcow2_cache_get(s->l2_cache, old_off, true, &old_t);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < s->l2_entries; i++) {
        st_be64(new_t + i * 8, ld_be64(old_t + i * 8) & ~QCOW_OFLAG_COPIED);
    }
    qcow2_cache_put(s->l2_cache, old_t);
    return 0;
}

int64_t coroutine_fn qcow2_ensure_l2(Qcow2State *s, uint64_t off)
{
    IO_CODE();
    uint64_t l1_idx = off >> (s->cluster_bits + s->l2_bits);
    if (l1_idx >= s->l1_size) {
        return -EINVAL;
    }
    uint64_t old = s->l1[l1_idx], old_off = old & L1E_OFFSET_MASK;
    if (old_off && (old & QCOW_OFLAG_COPIED)) {
        int ret = check_l2_offset(s, l1_idx, old_off);
        return ret < 0 ? ret : (int64_t)old_off;
    }
    int64_t new_off = qcow2_alloc_clusters(s, 1);
    if (new_off < 0) {
        return new_off;
    }
    uint8_t *t;
    int ret = qcow2_cache_get(s->l2_cache, new_off, false, &t);
    if (ret < 0) {
        return ret;
    }
    ret = fill_new_l2(s, old_off, t);
    /* Order: refcount of the new table, the table itself, then the L1 entry. */
    if (ret == 0) {
        ret = qcow2_cache_writeback(s->rb_cache);
    }
    if (ret == 0) {
        bdrv_co_debug_event(s->bs->file, BLKDBG_L2_UPDATE);
        ret = bdrv_co_pwrite(s->bs->file, new_off, s->cluster_size, t, 0);
    }
    qcow2_cache_put(s->l2_cache, t);
    if (ret == 0) {
        ret = bdrv_co_flush(s->bs->file->node);
    }
    if (ret < 0) {
        return ret;
    }
    s->l1[l1_idx] = (uint64_t)new_off | QCOW_OFLAG_COPIED;
    ret = write_l1_entry(s, l1_idx);
    if (ret < 0) {
        /* The L1 entry on disk still names the old table: so must ours, or
         * later L2 updates would go to a table the image never links (lost
         * on reopen).  The new table's cluster leaks (refcount 1). */
        s->l1[l1_idx] = old;
        return ret;
    }
    if (old_off) {
        /* the L1 entry must be stable before the old table's refcount drops */
        ret = bdrv_co_flush(s->bs->file->node);
        if (ret == 0) {
            ret = qcow2_free_clusters(s, old_off, s->cluster_size);
        }
    }
    return ret < 0 ? ret : new_off;
}

static int coroutine_fn GRAPH_RDLOCK get_l2_table(Qcow2State *s, uint64_t off,
                                                  uint8_t **t, uint64_t *idx)
{
    uint64_t l1_idx = off >> (s->cluster_bits + s->l2_bits);
    uint64_t l2_off = l1_idx < s->l1_size ? s->l1[l1_idx] & L1E_OFFSET_MASK : 0;
    *idx = (off >> s->cluster_bits) & (s->l2_entries - 1);
    if (!l2_off) {
        *t = NULL;
        return 0;
    }
    int ret = check_l2_offset(s, l1_idx, l2_off);
    return ret < 0 ? ret : qcow2_cache_get(s->l2_cache, l2_off, true, t);
}

int coroutine_fn qcow2_get_l2_entries(Qcow2State *s, uint64_t off, uint64_t n,
                                      uint64_t *out)
{
    IO_CODE();
    uint8_t *t;
    uint64_t idx;
    int ret = get_l2_table(s, off, &t, &idx);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < n; i++) {
        out[i] = t ? ld_be64(t + (idx + i) * 8) : 0;
    }
    if (t) {
        qcow2_cache_put(s->l2_cache, t);
    }
    return 0;
}

int coroutine_fn qcow2_set_l2_entries(Qcow2State *s, uint64_t off, uint64_t n,
                                      const uint64_t *entries)
{
    IO_CODE();
    uint8_t *t;
    uint64_t idx;
    int ret = get_l2_table(s, off, &t, &idx);
    if (ret < 0) {
        return ret;
    }
    if (!t) {
        return -EIO;     /* caller did not ensure the table: a bug */
    }
    for (uint64_t i = 0; i < n; i++) {
        st_be64(t + (idx + i) * 8, entries[i]);
    }
    qcow2_cache_mark_dirty(s->l2_cache, t);
    qcow2_cache_put(s->l2_cache, t);
    return 0;
}

int coroutine_fn qcow2_write_l1(Qcow2State *s)
{
    IO_CODE();
    uint8_t *buf = malloc(s->l1_size * 8ull + 8);
    if (!buf) {
        s->l1_stale = true;
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        st_be64(buf + i * 8ull, s->l1[i]);
    }
    bdrv_co_debug_event(s->bs->file, BLKDBG_L2_UPDATE);
    int ret = bdrv_co_pwrite(s->bs->file, s->l1_offset, s->l1_size * 8ull, buf, 0);
    free(buf);
    /* Memory stays authoritative (its COPIED flags match the refcounts
     * already changed in the cache): the disk copy is rewritten later. */
    s->l1_stale = ret < 0;
    return ret;
}

int coroutine_fn qcow2_flush_metadata(Qcow2State *s)
{
    IO_CODE();
    int ret = qcow2_cache_writeback(s->l2_cache);  /* refcounts first, inside */
    if (ret == 0) {
        ret = qcow2_cache_writeback(s->rb_cache);
    }
    if (ret == 0 && s->l1_stale) {
        ret = qcow2_write_l1(s);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(s->bs->file->node);
    }
    return ret;
}

static bool entry_holds_clusters(const Qcow2State *s, uint64_t e)
{
    Qcow2ClusterType t = qcow2_l2_entry_type(s, e);
    return t == QCOW2_CLUSTER_NORMAL || t == QCOW2_CLUSTER_ZERO_ALLOC ||
           t == QCOW2_CLUSTER_COMPRESSED;
}

int coroutine_fn qcow2_free_l2_entries(Qcow2State *s, const uint64_t *old, uint64_t n)
{
    IO_CODE();
    bool any = false;
    for (uint64_t i = 0; i < n && !any; i++) {
        any = entry_holds_clusters(s, old[i]);
    }
    if (!any) {
        return 0;
    }
    /* The L2 tables that no longer point to these clusters must be stable
     * before their refcounts drop. */
    int ret = qcow2_flush_metadata(s);
    for (uint64_t i = 0; i < n && ret == 0; i++) {
        if (!entry_holds_clusters(s, old[i])) {
            continue;
        }
        uint64_t off = old[i] & L2E_OFFSET_MASK, len = s->cluster_size;
        if (qcow2_l2_entry_type(s, old[i]) == QCOW2_CLUSTER_COMPRESSED) {
            qcow2_compressed_range(s, old[i], &off, &len);
        }
        ret = qcow2_free_clusters(s, off, len);
    }
    return ret;
}

int coroutine_fn qcow2_grow_l1(Qcow2State *s, uint64_t min_size)
{
    IO_CODE();
    if (min_size <= s->l1_size) {
        return 0;
    }
    if (min_size * 8 > QCOW2_MAX_L1_BYTES) {
        return -EFBIG;
    }
    uint64_t clusters = DIV_ROUND_UP(min_size * 8, s->cluster_size);
    uint64_t new_size = MIN(clusters * s->cluster_size / 8, QCOW2_MAX_L1_BYTES / 8);
    uint64_t *new_l1 = calloc(new_size, 8);
    uint8_t *buf = calloc(clusters, s->cluster_size);
    int64_t new_off = (!new_l1 || !buf) ? -ENOMEM : qcow2_alloc_clusters(s, clusters);
    int ret = new_off < 0 ? (int)new_off : 0;

    if (ret == 0) {
        memcpy(new_l1, s->l1, s->l1_size * 8ull);
        for (uint64_t i = 0; i < s->l1_size; i++) {
            st_be64(buf + i * 8, s->l1[i]);
        }
        ret = qcow2_cache_writeback(s->rb_cache);
    }
    if (ret == 0) {
        ret = bdrv_co_pwrite(s->bs->file, new_off, clusters * s->cluster_size, buf, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(s->bs->file->node);
    }
    bool switched = false;
    if (ret == 0) {
        uint8_t hdr[12];
        st_be32(hdr, new_size);
        st_be64(hdr + 4, new_off);
        ret = qcow2_header_switch(s, QH_L1_SIZE_OFF, hdr, 12, &switched);
    }
    free(buf);
    if (ret < 0 && !switched) {
        free(new_l1);
        return ret;
    }
    uint64_t old_off = s->l1_offset, old_bytes = s->l1_size * 8ull;
    free(s->l1);
    s->l1 = new_l1;
    s->l1_size = new_size;
    s->l1_offset = new_off;
    if (ret < 0) {
        return ret;     /* written, flush failed: keep the old table (leak) */
    }
    return old_bytes ? qcow2_free_clusters(s, old_off, old_bytes) : 0;
}
