/*
 * prealloc.c — preallocation of a new qcow2 image (`diskstack img create
 * -o preallocation=metadata|falloc|full`).
 *
 * Every guest cluster gets a host cluster and an L2 entry pointing to it.
 * All L2 tables are made first (so the data that follows is one contiguous
 * run, as qemu-img lays it out); then, one L2 table at a time, the table's
 * clusters are allocated as one run (refcounts written and flushed) and the
 * entries are set — the usual crash order, so an
 * interrupted preallocation only leaks.  The host clusters are fresh space
 * at the end of the file, which reads as zeroes:
 *
 *   metadata  the file is only extended (sparse);
 *   falloc    the data clusters are also allocated in the file system
 *             (write-zeroes without unmap: fallocate on the file);
 *   full      the data clusters are written with zeroes.
 *
 * Threading: GS (coroutine on the main loop); the node is quiesced and
 * s->lock held for the whole run.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

/* Makes the data of a freshly allocated run real on disk (falloc/full). */
static int coroutine_fn GRAPH_RDLOCK fill_run(Qcow2State *s, uint64_t host,
                                              uint64_t len, int mode)
{
    if (mode == QCOW2_PREALLOC_FALLOC) {
        return bdrv_co_pwrite_zeroes(s->bs->file, host, len, 0);
    }
    if (mode == QCOW2_PREALLOC_FULL) {
        uint64_t chunk = MIN(len, (uint64_t)1 << 20);
        void *zero = calloc(1, chunk);
        int ret = zero ? 0 : -ENOMEM;
        for (uint64_t done = 0; done < len && ret == 0; done += chunk) {
            uint64_t n = MIN(chunk, len - done);
            ret = bdrv_co_pwrite(s->bs->file, host + done, n, zero, 0);
        }
        free(zero);
        return ret;
    }
    return 0;
}

/* Preallocates the guest clusters of one L2 table from guest offset off. */
static int coroutine_fn GRAPH_RDLOCK prealloc_l2(Qcow2State *s, uint64_t off,
                                                 uint64_t n, int mode)
{
    uint64_t *entries;
    int64_t host;
    int ret;

    host = qcow2_alloc_clusters(s, n);
    if (host < 0) {
        return (int)host;
    }
    ret = fill_run(s, (uint64_t)host, n << s->cluster_bits, mode);
    if (ret == 0) {
        ret = qcow2_flush_refcounts(s);    /* refcounts before the L2 entries */
    }
    if (ret < 0) {
        return ret;
    }
    entries = malloc(n * sizeof(*entries));
    if (!entries) {
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++) {
        entries[i] = ((uint64_t)host + (i << s->cluster_bits)) | QCOW_OFLAG_COPIED;
    }
    ret = qcow2_set_l2_entries(s, off, n, entries);
    free(entries);
    return ret;
}

int coroutine_fn qcow2_co_preallocate(BlockNode *bs, int mode, Error **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t off, clusters_per_l2;
    int ret = 0;

    GS_CODE();
    if (bs->drv != &bdrv_qcow2) {
        error_setg(errp, "'%s' is not a qcow2 image", bs->filename);
        return -ENOTSUP;
    }
    if (mode == QCOW2_PREALLOC_OFF) {
        return 0;
    }
    clusters_per_l2 = s->l2_entries;
    bdrv_co_quiesce_begin(bs);
    bdrv_graph_rdlock_main_loop();
    co_mutex_lock(&s->lock);
    /* every L2 table first, so the data runs are contiguous (as qemu-img) */
    for (off = 0; off < s->size && ret == 0; off += clusters_per_l2 << s->cluster_bits) {
        int64_t l2 = qcow2_ensure_l2(s, off);
        ret = l2 < 0 ? (int)l2 : 0;
    }
    for (off = 0; off < s->size && ret == 0; ) {
        uint64_t first = off >> s->cluster_bits;
        uint64_t in_table = clusters_per_l2 - (first & (clusters_per_l2 - 1));
        uint64_t left = (s->size - off + s->cluster_size - 1) >> s->cluster_bits;
        uint64_t n = MIN(in_table, left);
        ret = prealloc_l2(s, off, n, mode);
        off += n << s->cluster_bits;
    }
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    co_mutex_unlock(&s->lock);
    bdrv_graph_rdunlock_main_loop();
    bdrv_quiesce_end(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot preallocate '%s'", bs->filename);
    }
    return ret;
}
