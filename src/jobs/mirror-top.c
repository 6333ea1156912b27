/*
 * mirror-top.c — the mirror job's filter node, above the source while the
 * job runs.  Not user-creatable: it is not in the driver registry, so
 * blockdev-add refuses driver=mirror_top; the job opens it with
 * bdrv_co_open_internal() and inserts it with bdrv_insert_filter_locked().
 *
 * Reads, flushes and block status pass through to the "file" child (the
 * source).  Writes, write-zeroes and discards pass through too, and when
 * they complete — successfully or not: a failed write may have changed
 * part of the range — they mark their range dirty in the job's bitmap.
 * Marking after completion is what makes the copy loop safe without a
 * lock: the loop clears a chunk (dirty_bitmap_take) before it reads it, so
 * a write that completes after the read began marks the chunk again and
 * it is copied once more; a write that completed before the take is
 * covered by the read.
 *
 * In write-blocking mode (copy-mode, block-job-change) a data write that
 * succeeded on the source is written to the target too before it
 * completes (mirror_co_active_write), and its range stays clean; when that
 * cannot be done safely (a background copy of an overlapping range is in
 * flight) or fails, the range is marked dirty as in background mode.
 * Write-zeroes and discards are always left to the background copy.
 *
 * Resizing the source while it is mirrored is refused (-ENOTSUP), as QEMU
 * refuses it through its permissions.
 *
 * Thread-safety: the only state is the bitmap pointer, written GS while no
 * request can reach the node (before insertion, after removal); the bitmap
 * itself is thread-safe.
 */
#include <errno.h>
#include <stdatomic.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "filters/filter-util.h"
#include "jobs/mirror.h"

typedef struct MirrorTopState {
    DirtyBitmap *_Atomic bitmap;
    void *_Atomic active;        /* the job, in write-blocking mode */
} MirrorTopState;

void mirror_top_set_active(BlockNode *filter, void *job)
{
    MirrorTopState *s = filter->opaque;

    atomic_store(&s->active, job);
}

void mirror_top_set_bitmap(BlockNode *filter, DirtyBitmap *bitmap)
{
    GS_CODE();
    MirrorTopState *s = filter->opaque;

    atomic_store(&s->bitmap, bitmap);
}

/* I/O: a request on [offset, offset + bytes) completed. */
static void mark_dirty(BlockNode *bs, int64_t offset, int64_t bytes)
{
    MirrorTopState *s = bs->opaque;
    DirtyBitmap *b = atomic_load(&s->bitmap);

    if (b) {
        dirty_bitmap_set(b, offset, bytes);
    }
}

/*
 * co_preadv — lock: graph read lock (I/O); in flight: yes, any number;
 * threads: any, at once.  Passes through.
 */
static int coroutine_fn mirror_top_co_preadv(BlockNode *bs, int64_t offset,
                                             int64_t bytes, IOVector *qiov,
                                             size_t qiov_offset,
                                             BdrvRequestFlags flags) GRAPH_RDLOCK
{
    IO_CODE();
    return bdrv_co_preadv(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

/*
 * co_pwritev, co_pwrite_zeroes, co_pdiscard — lock: graph read lock; in
 * flight: yes, any number; threads: any, at once.  Pass through, then mark
 * the range dirty.
 */
static int coroutine_fn mirror_top_co_pwritev(BlockNode *bs, int64_t offset,
                                              int64_t bytes, IOVector *qiov,
                                              size_t qiov_offset,
                                              BdrvRequestFlags flags) GRAPH_RDLOCK
{
    IO_CODE();
    MirrorTopState *s = bs->opaque;
    int ret = bdrv_co_pwritev(bs->file, offset, bytes, qiov, qiov_offset, flags);
    void *job = atomic_load(&s->active);

    if (flags & BDRV_REQ_WRITE_UNCHANGED) {
        return ret;
    }
    /* write-blocking: the target gets it before the guest hears back */
    if (ret < 0 || !job ||
        !mirror_co_active_write(job, offset, bytes, qiov, qiov_offset)) {
        mark_dirty(bs, offset, bytes);
    }
    return ret;
}

static int coroutine_fn mirror_top_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                                    int64_t bytes,
                                                    BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    IO_CODE();
    int ret = bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);

    mark_dirty(bs, offset, bytes);
    return ret;
}

static int coroutine_fn mirror_top_co_pdiscard(BlockNode *bs, int64_t offset,
                                               int64_t bytes) GRAPH_RDLOCK
{
    IO_CODE();
    int ret = bdrv_co_pdiscard(bs->file, offset, bytes);

    mark_dirty(bs, offset, bytes);
    return ret;
}

/*
 * co_truncate — lock: graph read lock; in flight: yes; threads: one resize
 * at a time (io.c).  The bitmap and the target have the source's length.
 */
static int coroutine_fn mirror_top_co_truncate(BlockNode *bs, int64_t offset,
                                               bool exact, Error **errp)
    GRAPH_RDLOCK
{
    error_setg(errp, "Cannot resize node '%s' while it is mirrored",
               bs->file->node->node_name);
    return -ENOTSUP;
}

const BlockDriver bdrv_mirror_top = {
    .format_name = "mirror_top",
    .instance_size = sizeof(MirrorTopState),
    .is_filter = true,

    .co_preadv = mirror_top_co_preadv,
    .co_pwritev = mirror_top_co_pwritev,
    .co_pwrite_zeroes = mirror_top_co_pwrite_zeroes,
    .co_pdiscard = mirror_top_co_pdiscard,
    .co_flush = filter_co_flush,
    .co_block_status = filter_co_block_status,
    .co_truncate = mirror_top_co_truncate,
};
