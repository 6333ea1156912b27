/*
 * check.c — consistency check and repair of a qcow2 image (`diskstack img
 * check`), counting like qemu-img check.
 *
 * How it works: every structure that owns host clusters is walked and each
 * reference is counted in an in-memory array, one counter per host cluster:
 * the header cluster, the active L1 table and its L2 tables and data
 * clusters, every snapshot's L1 table with its L2 tables and data, the
 * snapshot table, the refcount table and the refcount blocks.  That array is
 * the refcount every cluster should have.  Comparing it with the refcount
 * stored on disk gives:
 *
 *   stored > expected   a leak: space is wasted, no data is at risk;
 *   stored < expected   a corruption: a later allocation could hand out a
 *                       cluster still in use and overwrite data.
 *
 * Structural faults (an L2 or data cluster not aligned, an L2 entry with the
 * COPIED flag disagreeing with its refcount) are counted as corruptions too.
 *
 * Repair (QCOW2_CHECK_FIX_LEAKS / _ERRORS) adds the difference to the stored
 * refcount, flushes, and the caller checks again: the repair itself may have
 * allocated a refcount block, so the second pass is the truth.
 *
 * Threading: qcow2_co_check() is GS (coroutine on the main loop); it
 * quiesces the node and holds s->lock for the whole walk, so no request can
 * change the metadata underneath.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

typedef struct CheckState {
    Qcow2State *s;
    uint64_t *refs;          /* expected refcount per host cluster */
    uint64_t nb_refs;        /* entries in refs */
    Qcow2CheckResult *res;
    uint64_t next_host;      /* fragmentation: where contiguous data would go */
    bool quiet;
} CheckState;

/* Grows the expected-refcount array to cover cluster index c. */
static int cover_cluster(CheckState *cs, uint64_t c)
{
    uint64_t n = cs->nb_refs;
    uint64_t *nr;

    if (c < n) {
        return 0;
    }
    while (n <= c) {
        n = n ? n * 2 : 1024;
    }
    nr = realloc(cs->refs, n * sizeof(*nr));
    if (!nr) {
        return -ENOMEM;
    }
    memset(nr + cs->nb_refs, 0, (n - cs->nb_refs) * sizeof(*nr));
    cs->refs = nr;
    cs->nb_refs = n;
    return 0;
}

/* Counts one reference to every host cluster in [off, off + len). */
static int count_refs(CheckState *cs, uint64_t off, uint64_t len)
{
    Qcow2State *s = cs->s;
    uint64_t first, last;

    if (len == 0) {
        return 0;
    }
    first = off >> s->cluster_bits;
    last = (off + len - 1) >> s->cluster_bits;
    if (cover_cluster(cs, last) < 0) {
        return -ENOMEM;
    }
    for (uint64_t c = first; c <= last; c++) {
        cs->refs[c]++;
    }
    return 0;
}

/* A structure that must start on a cluster boundary does not. */
static bool misaligned(CheckState *cs, uint64_t off, const char *what)
{
    if (qcow2_offset_in_cluster(cs->s, off) == 0) {
        return false;
    }
    if (!cs->quiet) {
        fprintf(stderr, "ERROR %s at offset 0x%llx is not cluster aligned; "
                "L2 entry corrupted\n", what, (unsigned long long)off);
    }
    cs->res->corruptions++;
    return true;
}

/* Fragmentation and allocation statistics of the active image. */
static void count_data_cluster(CheckState *cs, uint64_t host_off, bool compressed)
{
    Qcow2CheckResult *r = cs->res;

    r->allocated_clusters++;
    if (compressed) {
        r->compressed_clusters++;
        /* as qemu-img: compressed clusters are fragmented by nature */
        r->fragmented_clusters++;
        return;
    }
    if (cs->next_host && host_off != cs->next_host) {
        r->fragmented_clusters++;
    }
    cs->next_host = host_off + cs->s->cluster_size;
}

/* Counts the references of one L2 entry. */
static int check_l2_entry(CheckState *cs, uint64_t l2e, bool active)
{
    Qcow2State *s = cs->s;
    uint64_t off, len;

    switch (qcow2_l2_entry_type(s, l2e)) {
    case QCOW2_CLUSTER_COMPRESSED:
        qcow2_compressed_range(s, l2e, &off, &len);
        if (active) {
            count_data_cluster(cs, off, true);
        }
        return count_refs(cs, off, len);
    case QCOW2_CLUSTER_NORMAL:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        off = l2e & L2E_OFFSET_MASK;
        if (misaligned(cs, off, "data cluster")) {
            return 0;
        }
        if (active) {
            count_data_cluster(cs, off, false);
        }
        return count_refs(cs, off, s->cluster_size);
    default:
        return 0;
    }
}

/* Counts one L2 table and everything it references. */
static int coroutine_fn GRAPH_RDLOCK check_l2(CheckState *cs, uint64_t l2_off,
                                              bool active)
{
    Qcow2State *s = cs->s;
    uint8_t *t;
    int ret;

    if (misaligned(cs, l2_off, "L2 table")) {
        return 0;
    }
    ret = count_refs(cs, l2_off, s->cluster_size);
    if (ret < 0) {
        return ret;
    }
    /* as qemu-img: contiguity is judged within one L2 table */
    cs->next_host = 0;
    ret = qcow2_cache_get(s->l2_cache, l2_off, true, &t);
    if (ret < 0) {
        cs->res->check_errors++;
        return 0;
    }
    for (uint64_t i = 0; i < s->l2_entries && ret == 0; i++) {
        ret = check_l2_entry(cs, ld_be64(t + i * 8), active);
    }
    qcow2_cache_put(s->l2_cache, t);
    return ret;
}

/* Counts an L1 table (host endian entries) and its L2 tables. */
static int coroutine_fn GRAPH_RDLOCK check_l1(CheckState *cs, uint64_t l1_off,
                                              const uint64_t *l1, uint32_t l1_size,
                                              bool active)
{
    Qcow2State *s = cs->s;
    int ret = count_refs(cs, l1_off, (uint64_t)l1_size * 8);

    for (uint32_t i = 0; i < l1_size && ret == 0; i++) {
        uint64_t l2_off = l1[i] & L1E_OFFSET_MASK;
        if (l2_off) {
            ret = check_l2(cs, l2_off, active);
        }
    }
    (void)s;
    return ret;
}

/* Reads a snapshot's L1 table from disk and counts it. */
static int coroutine_fn GRAPH_RDLOCK check_snapshot(CheckState *cs,
                                                    const Qcow2Snapshot *sn)
{
    Qcow2State *s = cs->s;
    uint64_t *l1;
    int ret;

    if (sn->l1_size == 0) {
        return 0;
    }
    l1 = malloc((size_t)sn->l1_size * 8);
    if (!l1) {
        return -ENOMEM;
    }
    ret = bdrv_co_pread(s->bs->file, sn->l1_offset, (int64_t)sn->l1_size * 8, l1, 0);
    if (ret < 0) {
        if (!cs->quiet) {
            fprintf(stderr, "ERROR cannot read the L1 table of snapshot '%s'\n",
                    sn->name);
        }
        cs->res->check_errors++;
        free(l1);
        return 0;
    }
    for (uint32_t i = 0; i < sn->l1_size; i++) {
        l1[i] = ld_be64(&l1[i]);
    }
    ret = check_l1(cs, sn->l1_offset, l1, sn->l1_size, false);
    free(l1);
    return ret;
}

/* Counts the refcount table and blocks. */
static int check_refcount_structures(CheckState *cs)
{
    Qcow2State *s = cs->s;
    int ret = count_refs(cs, s->rt_offset, (uint64_t)s->rt_clusters * s->cluster_size);

    for (uint64_t i = 0; i < s->rt_size && ret == 0; i++) {
        uint64_t rb = s->rt[i] & REFT_OFFSET_MASK;
        if (!rb) {
            continue;
        }
        if (qcow2_offset_in_cluster(s, rb)) {
            if (!cs->quiet) {
                fprintf(stderr, "ERROR refcount block %llu is not cluster aligned; "
                        "refcount table entry corrupted\n", (unsigned long long)i);
            }
            cs->res->corruptions++;
            continue;
        }
        ret = count_refs(cs, rb, s->cluster_size);
    }
    return ret;
}

/* Builds the expected refcounts from every structure. */
static int coroutine_fn GRAPH_RDLOCK count_all_refs(CheckState *cs)
{
    Qcow2State *s = cs->s;
    int ret = count_refs(cs, 0, s->cluster_size);       /* the header */

    if (ret == 0) {
        ret = check_l1(cs, s->l1_offset, s->l1, s->l1_size, true);
    }
    for (int i = 0; i < s->nb_snap && ret == 0; i++) {
        ret = check_snapshot(cs, &s->snaps[i]);
    }
    if (ret == 0 && s->nb_snap) {
        ret = count_refs(cs, s->snapshots_offset, s->snap_table_bytes);
    }
    if (ret == 0) {
        ret = check_refcount_structures(cs);
    }
    return ret;
}

/* Adjusts a stored refcount to the expected one when asked to. */
static int coroutine_fn GRAPH_RDLOCK fix_refcount(CheckState *cs, uint64_t c,
                                                  uint64_t stored, uint64_t expected)
{
    Qcow2State *s = cs->s;
    int64_t delta = (int64_t)expected - (int64_t)stored;
    int ret = 0;

    /* one step at a time: update_refcount takes an int */
    while (delta != 0 && ret == 0) {
        int step = delta > 0 ? 1 : -1;
        ret = qcow2_update_refcount(s, c << s->cluster_bits, s->cluster_size, step);
        delta -= step;
    }
    return ret;
}

/* Compares stored with expected refcounts; repairs what `fix` allows. */
static int coroutine_fn GRAPH_RDLOCK compare_refcounts(CheckState *cs, int fix,
                                                       uint64_t nb_clusters)
{
    Qcow2State *s = cs->s;
    Qcow2CheckResult *r = cs->res;
    int64_t highest = -1;

    for (uint64_t c = 0; c < nb_clusters; c++) {
        uint64_t expected = c < cs->nb_refs ? cs->refs[c] : 0;
        uint64_t stored;
        bool is_leak;

        if (qcow2_get_refcount(s, c, &stored) < 0) {
            if (!cs->quiet) {
                fprintf(stderr, "ERROR cannot get refcount of cluster %llu\n",
                        (unsigned long long)c);
            }
            r->check_errors++;
            continue;
        }
        if (stored || expected) {
            highest = (int64_t)c;
        }
        if (stored == expected) {
            continue;
        }
        is_leak = stored > expected;
        if (!cs->quiet) {
            fprintf(stderr, "%s cluster %llu refcount=%llu reference=%llu\n",
                    is_leak ? "Leaked" : "ERROR", (unsigned long long)c,
                    (unsigned long long)stored, (unsigned long long)expected);
        }
        if (fix & (is_leak ? QCOW2_CHECK_FIX_LEAKS : QCOW2_CHECK_FIX_ERRORS)) {
            if (fix_refcount(cs, c, stored, expected) == 0) {
                if (!cs->quiet) {
                    fprintf(stderr, "Repairing cluster %llu refcount=%llu "
                            "reference=%llu\n", (unsigned long long)c,
                            (unsigned long long)stored, (unsigned long long)expected);
                }
                *(is_leak ? &r->leaks_fixed : &r->corruptions_fixed) += 1;
                continue;
            }
            r->check_errors++;
        }
        *(is_leak ? &r->leaks : &r->corruptions) += 1;
    }
    r->image_end_offset = (uint64_t)(highest + 1) << s->cluster_bits;
    return 0;
}

/* Active L2 entries: the COPIED flag must say "refcount is exactly 1". */
static int coroutine_fn GRAPH_RDLOCK check_copied_flags(CheckState *cs)
{
    Qcow2State *s = cs->s;

    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2_off = s->l1[i] & L1E_OFFSET_MASK;
        uint64_t rc;
        uint8_t *t;

        if (!l2_off || qcow2_offset_in_cluster(s, l2_off) ||
            qcow2_get_refcount(s, l2_off >> s->cluster_bits, &rc) < 0) {
            continue;
        }
        if ((rc == 1) != !!(s->l1[i] & QCOW_OFLAG_COPIED)) {
            if (!cs->quiet) {
                fprintf(stderr, "ERROR OFLAG_COPIED L2 cluster: l1_index=%u "
                        "l1_entry=%llx refcount=%llu\n", i,
                        (unsigned long long)s->l1[i], (unsigned long long)rc);
            }
            cs->res->corruptions++;
        }
        if (qcow2_cache_get(s->l2_cache, l2_off, true, &t) < 0) {
            continue;
        }
        for (uint64_t j = 0; j < s->l2_entries; j++) {
            uint64_t e = ld_be64(t + j * 8);
            Qcow2ClusterType ty = qcow2_l2_entry_type(s, e);
            uint64_t off = e & L2E_OFFSET_MASK;
            if ((ty != QCOW2_CLUSTER_NORMAL && ty != QCOW2_CLUSTER_ZERO_ALLOC) ||
                qcow2_offset_in_cluster(s, off) ||
                qcow2_get_refcount(s, off >> s->cluster_bits, &rc) < 0) {
                continue;
            }
            if ((rc == 1) != !!(e & QCOW_OFLAG_COPIED)) {
                if (!cs->quiet) {
                    fprintf(stderr, "ERROR OFLAG_COPIED data cluster: "
                            "l2_entry=%llx refcount=%llu\n",
                            (unsigned long long)e, (unsigned long long)rc);
                }
                cs->res->corruptions++;
            }
        }
        qcow2_cache_put(s->l2_cache, t);
    }
    return 0;
}

/* One pass: count, compare (repairing if asked), flags. */
static int coroutine_fn GRAPH_RDLOCK check_pass(Qcow2State *s, int fix, bool quiet,
                                                Qcow2CheckResult *res)
{
    CheckState cs = { .s = s, .res = res, .quiet = quiet };
    int64_t file_len = bdrv_getlength(s->bs->file->node);
    uint64_t nb_clusters;
    int ret;

    memset(res, 0, sizeof(*res));
    res->total_clusters = (s->size + s->cluster_size - 1) >> s->cluster_bits;
    ret = count_all_refs(&cs);
    if (ret == 0) {
        nb_clusters = ((uint64_t)file_len + s->cluster_size - 1) >> s->cluster_bits;
        nb_clusters = MAX(nb_clusters, cs.nb_refs);
        ret = compare_refcounts(&cs, fix, nb_clusters);
    }
    if (ret == 0 && (res->leaks_fixed || res->corruptions_fixed)) {
        ret = qcow2_flush_refcounts(s);
    }
    if (ret == 0) {
        ret = check_copied_flags(&cs);
    }
    free(cs.refs);
    return ret;
}

int coroutine_fn qcow2_co_check(BlockNode *bs, int fix, Qcow2CheckResult *res,
                                Error **errp)
{
    Qcow2State *s = bs->opaque;
    Qcow2CheckResult fixed;
    int ret;

    GS_CODE();
    if (bs->drv != &bdrv_qcow2) {
        error_setg(errp, "'%s' is not a qcow2 image", bs->filename);
        return -ENOTSUP;
    }
    bdrv_co_quiesce_begin(bs);
    bdrv_graph_rdlock_main_loop();
    co_mutex_lock(&s->lock);
    ret = check_pass(s, fix, false, res);
    if (ret == 0 && (res->leaks_fixed || res->corruptions_fixed)) {
        /* the repair may itself have allocated: the second pass is the truth */
        fixed = *res;
        ret = check_pass(s, 0, true, res);
        res->leaks_fixed = fixed.leaks_fixed;
        res->corruptions_fixed = fixed.corruptions_fixed;
    }
    co_mutex_unlock(&s->lock);
    bdrv_graph_rdunlock_main_loop();
    bdrv_quiesce_end(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot check '%s'", bs->filename);
    }
    return ret;
}
