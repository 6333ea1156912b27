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
 * In write-blocking mode (copy-mode, block-job-change) a data write,
 * write-zeroes or discard goes to the source and the target at the same
 * time and completes when both have it (mirror_co_guest_request); its
 * range stays clean.  When that cannot be done safely (a background copy
 * of an overlapping range is in flight) or a side fails, the range is
 * marked dirty as in background mode.
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
    _Atomic uint64_t guest_writes;   /* mirror_top_guest_writes() */
    _Atomic uint64_t guest_done;
} MirrorTopState;

uint64_t mirror_top_guest_writes(BlockNode *filter, uint64_t *in_flight)
{
    MirrorTopState *s = filter->opaque;
    uint64_t done = atomic_load_explicit(&s->guest_done, memory_order_relaxed);
    uint64_t started = atomic_load_explicit(&s->guest_writes, memory_order_relaxed);

    *in_flight = started - done;
    return started;
}

/* I/O: a guest write enters the filter (begin) or leaves it. */
static void note_guest_write(BlockNode *bs, bool begin)
{
    MirrorTopState *s = bs->opaque;

    atomic_fetch_add_explicit(begin ? &s->guest_writes : &s->guest_done, 1,
                              memory_order_relaxed);
}

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

/* I/O, graph read lock: a guest request through the filter (write-blocking:
 * to the target too), its range marked dirty unless the target has it. */
static int coroutine_fn guest_request(BlockNode *bs, const MirrorGuestReq *req)
    GRAPH_RDLOCK
{
    MirrorTopState *s = bs->opaque;
    bool clean = false;

    note_guest_write(bs, true);
    int ret = mirror_co_guest_request(atomic_load(&s->active), bs->file, req,
                                      &clean);
    if (!clean) {
        mark_dirty(bs, req->offset, req->bytes);
    }
    note_guest_write(bs, false);
    return ret;
}

/*
 * co_pwritev, co_pwrite_zeroes, co_pdiscard — lock: graph read lock; in
 * flight: yes, any number; threads: any, at once.  Pass through (in
 * write-blocking mode to the target at the same time), then mark the
 * range dirty unless the target has it.  Write-unchanged writes just pass.
 */
static int coroutine_fn mirror_top_co_pwritev(BlockNode *bs, int64_t offset,
                                              int64_t bytes, IOVector *qiov,
                                              size_t qiov_offset,
                                              BdrvRequestFlags flags) GRAPH_RDLOCK
{
    IO_CODE();
    if (flags & BDRV_REQ_WRITE_UNCHANGED) {
        return bdrv_co_pwritev(bs->file, offset, bytes, qiov, qiov_offset, flags);
    }
    MirrorGuestReq req = { MIRROR_REQ_WRITE, offset, bytes, qiov, qiov_offset,
                           flags };
    return guest_request(bs, &req);
}

static int coroutine_fn mirror_top_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                                    int64_t bytes,
                                                    BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    IO_CODE();
    MirrorGuestReq req = { MIRROR_REQ_ZERO, offset, bytes, NULL, 0, flags };
    return guest_request(bs, &req);
}

static int coroutine_fn mirror_top_co_pdiscard(BlockNode *bs, int64_t offset,
                                               int64_t bytes) GRAPH_RDLOCK
{
    IO_CODE();
    MirrorGuestReq req = { MIRROR_REQ_DISCARD, offset, bytes, NULL, 0, 0 };
    return guest_request(bs, &req);
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

    .co_preadv = filter_co_preadv,     /* reads pass through */
    .co_pwritev = mirror_top_co_pwritev,
    .co_pwrite_zeroes = mirror_top_co_pwrite_zeroes,
    .co_pdiscard = mirror_top_co_pdiscard,
    .co_flush = filter_co_flush,
    .co_block_status = filter_co_block_status,
    .co_truncate = mirror_top_co_truncate,
};
