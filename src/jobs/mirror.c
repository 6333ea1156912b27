/*
 * mirror.c — the mirror job: copies a live node to a target and, on
 * job-complete, switches every user of the source to the target.
 *
 * The shape (see mirror.h for the filter):
 *
 *   start (GS)   checks, the bitmap, mirror-top opened and inserted above
 *                the source in one quiesced section, the job's backends:
 *                the source read (CONSISTENT_READ; everything shared but
 *                RESIZE) and the target written (WRITE; only reads and
 *                WRITE_UNCHANGED shared: a mirror target refuses other
 *                writers).  Neither may be resized while the bitmap covers
 *                them, as in QEMU.
 *   run (job's loop, coroutine)
 *                initial bitmap from block status (full: everything — the
 *                copy step writes zero regions as zeroes, or skips them
 *                with target-is-zero; top: what the top layer allocates;
 *                none: nothing), then the copy loop: take dirty chunks (up
 *                to MAX_IO_BYTES each) and copy them in coroutines of their
 *                own, up to buf-size bytes in flight, and start the next
 *                as each completes (a full pipeline; while the guest
 *                writes, a small window: guest_busy()).  When the bitmap
 *                is clean, the rate limit says wait, a copy failed or a
 *                pause, cancel or completion is asked for: wait for all of
 *                them, then a pause point (or the rate limit's sleep,
 *                which is one), so the job never parks with a request in
 *                flight.  A clean
 *                bitmap with nothing in flight makes the job ready; it goes
 *                on copying what the guest dirties until job-complete or a
 *                cancel.
 *   prepare (GS) quiesce the source (and so everything above it), copy the
 *                last dirty chunks, drop the job's backends, then in the
 *                same section move every parent of mirror-top to the target
 *                (complete) or back to the source (soft cancel after ready:
 *                the target is a point-in-time copy) and take mirror-top
 *                out; with replaces (a node below the source through
 *                filters), mirror-top's parents go back to the source and
 *                then, still in the source's section, every parent of the
 *                replaced node moves to the target.
 *   abort (GS)   failure or forced cancel: mirror-top out, parents back to
 *                the source.
 *
 * Active commit (mirror_start_commit, QMP block-commit of the active
 * layer): the same job with type "commit", source = top, target = base
 * (in top's chain): base reopened read-write and grown to top's length
 * first, the nodes between held and top's backing edges down to base
 * frozen; the initial bitmap is what is allocated above base; the pivot
 * moves top's parents to base (which stays read-write); without a pivot
 * (cancel, failure) clean reopens base read-only.
 *
 * Errors: a failed read (source) or write (target) puts the chunk back in
 * the bitmap; once the batch has drained, job_error_action() applies
 * on-source-error / on-target-error: report fails the job, ignore retries,
 * stop pauses it (job-resume retries).
 *
 * Threading: MirrorJob fields marked "job loop" are touched only by the
 * job's coroutine and its copy coroutines, which all run on the job's loop
 * (one thread, cooperative), so they need no lock.  GS fields are set
 * before the job starts or after run returned.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "jobs/block-job.h"
#include "jobs/mirror.h"
#include "jobs/stream.h"

#define MIRROR_DEFAULT_BUF_SIZE   (16 * 1024 * 1024)
#define MIRROR_DEFAULT_GRANULARITY (64 * 1024)
#define MIRROR_MAX_IO_BYTES       (1024 * 1024)
#define MIRROR_IDLE_NS            (100 * 1000 * 1000)   /* ready, nothing dirty */
#define MIRROR_BLOCKED_NS         (1000 * 1000)     /* dirty, but all busy */
#define MIRROR_RETRY_NS           (10 * 1000 * 1000)    /* after an ignored error */
#define MIRROR_BUF_ALIGN          4096
#define MIRROR_BUSY_WINDOW        (256 * 1024)  /* see guest_busy() */
#define MIRROR_BUSY_WINDOW_WB     (128 * 1024)
#define MIRROR_BUSY_HOLD_NS       (20 * 1000 * 1000)

/* A range being written to the target: a background copy, or a guest
 * write in write-blocking mode.  Two never overlap (see mirror-top.c). */
typedef struct MirrorRange {
    int64_t offset, bytes;
    struct MirrorRange *next;
} MirrorRange;

typedef struct MirrorJob {
    BlockJob common;

    /* Constant once started. */
    BlockNode *source, *target, *filter;     /* each with a reference of ours */
    BlockBackend *src_blk, *tgt_blk;
    DirtyBitmap *bitmap;
    MirrorSyncMode sync;
    BlockdevOnError on_source_error, on_target_error;
    bool target_is_zero;
    bool unmap;                   /* zero regions as MAY_UNMAP write-zeroes */
    int64_t length, buf_size, max_io;
    /* replaces: the node the target takes the place of (the source or
     * below it through filters), with a reference; NULL: the source. */
    BlockNode *to_replace;

    _Atomic bool should_complete;            /* job-complete asked */

    /* Any thread: the ranges in flight to the target. */
    pthread_mutex_t ranges_lock;
    MirrorRange *ranges;

    /* Job loop. */
    Coroutine *main_co;
    bool waiting;                 /* main_co waits for the batch */
    int in_flight;
    int64_t bytes_in_flight;
    int64_t cursor;               /* where the next dirty chunk is looked for */
    int err;                      /* first error of the batch, -errno */
    bool err_is_read;
    bool ready;
    bool blocked;                 /* a dirty chunk overlapped a guest write */

    uint64_t guest_writes_seen;   /* mirror_top_guest_writes() at the last look */
    int64_t guest_seen_ns;        /* clock_ns() when a guest write was seen */

    /* GS (written; the job loop reads it: atomic). */
    _Atomic bool write_blocking;

    /* GS. */
    bool filter_removed;

    /* GS.  Active commit (mirror_start_commit): base is the target, NULL
     * for a mirror. */
    BlockNode *base;
    bool base_was_ro;             /* reopen base read-only unless pivoted */
    ChainFreeze frozen;           /* top's backing edges down to base */
} MirrorJob;

/* ------------------------------------------------------------ ranges */

static bool overlaps(const MirrorRange *a, const MirrorRange *b)
{
    return a->offset < b->offset + b->bytes && b->offset < a->offset + a->bytes;
}

/* Thread-safe: registers r unless it overlaps a range in flight. */
static bool ranges_try_add(MirrorJob *s, MirrorRange *r)
{
    bool ok = true;

    pthread_mutex_lock(&s->ranges_lock);
    for (MirrorRange *o = s->ranges; o && ok; o = o->next) {
        ok = !overlaps(o, r);
    }
    if (ok) {
        r->next = s->ranges;
        s->ranges = r;
    }
    pthread_mutex_unlock(&s->ranges_lock);
    return ok;
}

static void ranges_remove(MirrorJob *s, MirrorRange *r)
{
    pthread_mutex_lock(&s->ranges_lock);
    for (MirrorRange **p = &s->ranges; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            break;
        }
    }
    pthread_mutex_unlock(&s->ranges_lock);
}

/* I/O, graph read lock: the guest's request on the source. */
static int coroutine_fn source_request(BlockChild *src, const MirrorGuestReq *r)
    GRAPH_RDLOCK
{
    switch (r->kind) {
    case MIRROR_REQ_WRITE:
        return bdrv_co_pwritev(src, r->offset, r->bytes, r->qiov, r->qiov_offset,
                               r->flags);
    case MIRROR_REQ_ZERO:
        return bdrv_co_pwrite_zeroes(src, r->offset, r->bytes, r->flags);
    default:
        return bdrv_co_pdiscard(src, r->offset, r->bytes);
    }
}

typedef struct TargetReq {
    MirrorJob *s;
    const MirrorGuestReq *req;
    int ret;
    CoEvent done;
} TargetReq;

/* I/O, a coroutine of its own on the guest request's thread: the same
 * request on the target. */
static void coroutine_fn target_request_co(void *opaque)
{
    TargetReq *t = opaque;
    MirrorJob *s = t->s;
    const MirrorGuestReq *r = t->req;

    if (r->kind == MIRROR_REQ_WRITE) {
        IOVector part;
        iov_init(&part, r->qiov->niov);
        iov_concat(&part, r->qiov, r->qiov_offset, r->bytes);
        t->ret = blk_co_pwritev(s->tgt_blk, r->offset, r->bytes, &part, 0);
        iov_destroy(&part);
    } else if (r->kind == MIRROR_REQ_ZERO) {
        BdrvRequestFlags flags = r->flags & (s->unmap ? BDRV_REQ_MAY_UNMAP : 0);
        t->ret = blk_co_pwrite_zeroes(s->tgt_blk, r->offset, r->bytes, flags);
    } else {
        /* what a discarded range reads is undefined: QEMU discards the
         * target too and calls the range clean */
        t->ret = blk_co_pdiscard(s->tgt_blk, r->offset, r->bytes);
    }
    co_event_set(&t->done);
}

/*
 * The write-blocking path.  Why the ranges make it safe: the guest request
 * W registers its range before it goes anywhere.  If a background copy C
 * of an overlapping chunk is in flight, C may read the source before W
 * lands and write the old data to the target after W's: W goes to the
 * source only and the caller marks the range dirty (copied again later).
 * Once W is registered, a copy of an overlapping chunk cannot start until
 * W is done on both sides (start_one puts the chunk back), and two
 * overlapping guest requests never go to the target at once (the second
 * goes to the source only and marks dirty).  So W can go to the source and
 * the target at the same time: the guest waits for the slower of the two,
 * not for their sum.
 */
int coroutine_fn mirror_co_guest_request(void *job, BlockChild *src,
                                         const MirrorGuestReq *req, bool *clean)
{
    MirrorJob *s = job;
    MirrorRange r = { req->offset, req->bytes, NULL };

    if (!s || !ranges_try_add(s, &r)) {
        *clean = false;
        return source_request(src, req);
    }
    TargetReq t = { s, req, 0, { 0 } };
    co_event_init(&t.done);
    co_spawn(target_request_co, &t);
    int ret = source_request(src, req);
    co_event_wait(&t.done);
    ranges_remove(s, &r);
    *clean = ret == 0 && t.ret == 0;
    return ret;
}

/* ------------------------------------------------------------ copying */

/* How a copy reads the source: through the job's backend (the copy loop),
 * or through mirror-top's edge while the source is quiesced (prepare: the
 * backend would hold the request). */
typedef struct CopySource {
    MirrorJob *s;
    bool quiesced;
} CopySource;

/* I/O: the status of the run at offset (DATA/ZERO, backing chain
 * included), *pnum its length; -errno on error. */
static int coroutine_fn src_block_status(CopySource *cs, int64_t offset,
                                         int64_t bytes, int64_t *pnum)
{
    int ret;

    if (!cs->quiesced) {
        return blk_co_block_status(cs->s->src_blk, offset, bytes, pnum);
    }
    bdrv_graph_co_rdlock();
    ret = bdrv_co_block_status(cs->s->source, true, offset, bytes, pnum,
                               NULL, NULL);
    bdrv_graph_co_rdunlock();
    return ret;
}

static int coroutine_fn src_read(CopySource *cs, int64_t offset, int64_t bytes,
                                 IOVector *qiov)
{
    int ret;

    if (!cs->quiesced) {
        return blk_co_preadv(cs->s->src_blk, offset, bytes, qiov, 0);
    }
    bdrv_graph_co_rdlock();
    ret = bdrv_co_preadv(cs->s->filter->file, offset, bytes, qiov, 0, 0);
    bdrv_graph_co_rdunlock();
    return ret;
}

/* I/O: copies [offset, offset + bytes) source -> target, zero runs as
 * write-zeroes (sparse-aware).  0, or -errno with *is_read saying which
 * side failed. */
static int coroutine_fn copy_range(CopySource *cs, int64_t offset, int64_t bytes,
                                   bool *is_read)
{
    MirrorJob *s = cs->s;
    void *buf = NULL;
    int ret = 0;

    while (bytes > 0 && ret == 0) {
        int64_t n = bytes;
        int st = src_block_status(cs, offset, bytes, &n);
        bool zero = st >= 0 && ((st & BDRV_BLOCK_ZERO) || !(st & BDRV_BLOCK_DATA));

        if (st < 0 || n <= 0 || n > bytes) {
            n = bytes;          /* unknown: copy it as data */
        }
        if (zero) {
            *is_read = false;
            ret = blk_co_pwrite_zeroes(s->tgt_blk, offset, n,
                                       s->unmap ? BDRV_REQ_MAY_UNMAP : 0);
        } else {
            IOVector qiov;
            if (!buf && posix_memalign(&buf, MIRROR_BUF_ALIGN, s->max_io)) {
                return -ENOMEM;
            }
            n = n > s->max_io ? s->max_io : n;
            iov_init_buf(&qiov, buf, n);
            *is_read = true;
            ret = src_read(cs, offset, n, &qiov);
            if (ret == 0) {
                *is_read = false;
                ret = blk_co_pwritev(s->tgt_blk, offset, n, &qiov, 0);
            }
        }
        offset += n;
        bytes -= n;
    }
    free(buf);
    return ret;
}

typedef struct MirrorOp {
    MirrorJob *s;
    int64_t offset, bytes;
    MirrorRange range;
} MirrorOp;

/* Job loop, a coroutine of its own: one chunk of the batch. */
static void coroutine_fn mirror_op_co(void *opaque)
{
    MirrorOp *op = opaque;
    MirrorJob *s = op->s;
    CopySource cs = { s, false };
    bool is_read = false;
    int ret = copy_range(&cs, op->offset, op->bytes, &is_read);

    if (ret < 0) {
        dirty_bitmap_set(s->bitmap, op->offset, op->bytes);
        if (!s->err) {
            s->err = ret;
            s->err_is_read = is_read;
        }
    } else {
        job_progress_update(&s->common.job, op->bytes);
    }
    ranges_remove(s, &op->range);
    s->in_flight--;
    s->bytes_in_flight -= op->bytes;
    if (s->waiting) {           /* wait_one() or wait_batch() */
        s->waiting = false;
        co_wake(s->main_co);
    }
    free(op);
}

/* Job loop: takes the next dirty chunk (up to max bytes) after the cursor
 * (wrapping) and starts its copy.  Returns its length, 0 when nothing is
 * dirty. */
static int64_t coroutine_fn start_one(MirrorJob *s, int64_t max)
{
    int64_t len = 0;
    int64_t off = dirty_bitmap_next_dirty(s->bitmap, s->cursor, max, &len);

    if (off < 0) {
        off = dirty_bitmap_next_dirty(s->bitmap, 0, max, &len);
    }
    if (off < 0 || len <= 0 || !dirty_bitmap_take(s->bitmap, off, len)) {
        return 0;
    }
    MirrorOp *op = calloc(1, sizeof(*op));
    if (!op) {
        dirty_bitmap_set(s->bitmap, off, len);
        return 0;
    }
    *op = (MirrorOp){ s, off, len, { off, len, NULL } };
    if (!ranges_try_add(s, &op->range)) {
        /* a guest write of write-blocking mode is on its way there */
        dirty_bitmap_set(s->bitmap, off, len);
        s->blocked = true;
        free(op);
        return 0;
    }
    s->cursor = off + len;
    s->in_flight++;
    s->bytes_in_flight += len;
    co_spawn(mirror_op_co, op);
    return len;
}

/* Job loop: waits until the batch has completed. */
static void coroutine_fn wait_batch(MirrorJob *s)
{
    while (s->in_flight > 0) {
        s->waiting = true;
        co_yield();
    }
}

/* Job loop: waits until one copy in flight has completed. */
static void coroutine_fn wait_one(MirrorJob *s)
{
    if (s->in_flight > 0) {
        s->waiting = true;
        co_yield();
    }
}

/* Job loop: did the guest write through mirror-top in the last
 * MIRROR_BUSY_HOLD_NS (a write started since the last look, or one is in
 * there now)?  Then the copy yields the disks to it: a window of
 * MIRROR_BUSY_WINDOW (write-blocking: _WB) bytes in flight in two
 * requests, so that a guest request queues behind little copy I/O (in
 * write-blocking mode its target write waits behind the copy's target
 * writes).  Measured (tests/bench/mirror.sh): with 16 MiB of copy in
 * flight a 4k guest write waited 3-12 ms in the device queue. */
static bool guest_busy(MirrorJob *s)
{
    uint64_t in_flight = 0;
    uint64_t n = mirror_top_guest_writes(s->filter, &in_flight);
    int64_t now = clock_ns();
    if (n != s->guest_writes_seen || in_flight > 0) {
        s->guest_seen_ns = now;
    }
    s->guest_writes_seen = n;
    return s->guest_seen_ns && now - s->guest_seen_ns < MIRROR_BUSY_HOLD_NS;
}

/* Job loop: starts copies until buf-size bytes (or the busy window) are in
 * flight; returns the rate limit's delay before the next ones. */
static int64_t coroutine_fn start_batch(MirrorJob *s)
{
    Job *job = &s->common.job;
    bool busy = guest_busy(s);
    /* write-blocking: the guest's writes leave nothing dirty, the copy
     * converges however small its window; background: a larger one, as
     * the guest dirties what it writes */
    int64_t busy_window = s->write_blocking ? MIRROR_BUSY_WINDOW_WB
                                            : MIRROR_BUSY_WINDOW;
    int64_t window = busy ? MIN(s->buf_size, busy_window) : s->buf_size;
    int64_t chunk = busy ? MIN(s->max_io, busy_window / 2) : s->max_io;

    chunk = MAX(chunk, dirty_bitmap_granularity(s->bitmap));
    /* A copy may fail without yielding: stop at the first error. */
    while (!s->err && (s->bytes_in_flight + chunk <= window ||
                       s->in_flight == 0)) {
        int64_t len = start_one(s, chunk);
        if (!len) {
            bool blocked = s->blocked;
            s->blocked = false;
            return blocked && s->in_flight == 0 ? MIRROR_BLOCKED_NS : 0;
        }
        int64_t delay = job_ratelimit_delay_ns(job, len);
        if (delay > 0) {
            return delay;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ run */

/* Job loop: should the run of *n bytes at off be copied?  1/0, -errno.
 * Active commit: what a node above base allocates; a mirror: see below. */
static int coroutine_fn init_status(MirrorJob *s, bool want_chain, int64_t off,
                                    int64_t *n)
{
    int ret;

    bdrv_graph_co_rdlock();
    if (s->base) {
        ret = chain_is_allocated_above(s->source, s->base, off,
                                       s->length - off, n);
    } else {
        ret = bdrv_co_block_status(s->source, want_chain, off, s->length - off,
                                   n, NULL, NULL);
    }
    bdrv_graph_co_rdunlock();
    if (ret < 0 || s->base) {
        return ret;
    }
    return want_chain ? (ret & BDRV_BLOCK_DATA) && !(ret & BDRV_BLOCK_ZERO)
                      : (ret & BDRV_BLOCK_ALLOCATED) != 0;
}

/* Job loop: the initial bitmap of sync=top: what the top layer allocates
 * (the target has the same backing); of sync=full with target-is-zero:
 * everything that does not read as zeroes; of an active commit: what is
 * allocated above base. */
static int coroutine_fn dirty_init_by_status(MirrorJob *s, bool want_chain)
{
    int64_t off = 0;

    while (off < s->length) {
        int64_t n = 0;
        int ret;

        if (job_pause_point(&s->common.job)) {
            return 0;
        }
        ret = init_status(s, want_chain, off, &n);
        if (ret < 0) {
            return ret;
        }
        if (n <= 0) {
            n = s->length - off;
        }
        if (ret > 0) {
            dirty_bitmap_set(s->bitmap, off, n);
        }
        off += n;
    }
    return 0;
}

static int coroutine_fn mirror_dirty_init(MirrorJob *s)
{
    if (s->base) {
        return dirty_init_by_status(s, false);
    }
    switch (s->sync) {
    case MIRROR_SYNC_FULL:
        if (!s->target_is_zero) {
            dirty_bitmap_set_all(s->bitmap);
            return 0;
        }
        return dirty_init_by_status(s, true);
    case MIRROR_SYNC_TOP:
        return dirty_init_by_status(s, false);
    default:
        return 0;
    }
}

/* Thread-safe: does a pause, a cancel or job-complete wait for the job to
 * come to a pause point (with nothing in flight)? */
static bool stop_wanted(MirrorJob *s)
{
    Job *job = &s->common.job;
    bool stop;

    pthread_mutex_lock(&job->lock);
    stop = job->pause_count > 0 || job->cancelled;
    pthread_mutex_unlock(&job->lock);
    return stop || atomic_load(&s->should_complete);
}

/* Job loop: after a batch failed.  0: go on (retry), or the error. */
static int coroutine_fn handle_batch_error(MirrorJob *s)
{
    int err = s->err;
    BlockdevOnError policy = s->err_is_read ? s->on_source_error
                                            : s->on_target_error;

    s->err = 0;
    if (job_error_action(&s->common.job, policy, s->err_is_read, err) ==
        BLOCK_ERROR_ACTION_REPORT) {
        return err;
    }
    return 0;
}

/*
 * run — lock: none; in flight: the job's own copies; threads: the job's
 * loop only.  Returns 0 when completed or soft-cancelled after ready (the
 * rest happens in prepare), -errno on failure; a forced cancel returns at
 * once (the core makes it -ECANCELED).
 */
static int coroutine_fn mirror_run(Job *job, Error **errp)
{
    MirrorJob *s = (MirrorJob *)job;
    int ret;

    s->main_co = co_self();
    ret = mirror_dirty_init(s);
    if (ret < 0) {
        error_setg(errp, "Could not read the allocation status of '%s': %s",
                   s->source->node_name, strerror(-ret));
        return ret;
    }
    /* the length is known now, even if the first copy fails */
    job_progress_set_remaining(job, dirty_bitmap_count(s->bitmap));
    for (;;) {
        int64_t delay = start_batch(s);
        bool cancel;

        /* keep the pipeline full: refill as each copy completes, until
         * the bitmap is clean, the rate limit or an error says wait, or a
         * pause, cancel or completion wants the job at a pause point */
        if (!delay && !s->err && s->in_flight > 0 && !stop_wanted(s)) {
            job_progress_set_remaining(job, dirty_bitmap_count(s->bitmap) +
                                       s->bytes_in_flight);
            wait_one(s);
            continue;
        }
        wait_batch(s);
        if (s->err) {
            if ((ret = handle_batch_error(s)) < 0) {
                return ret;
            }
            /* stopped: park before the retry; ignored: retry soon (a
             * failing target must not spin the job's thread) */
            if (job_sleep_ns(job, MIRROR_RETRY_NS) && job_is_cancelled(job)) {
                return 0;
            }
            continue;
        }
        int64_t cnt = dirty_bitmap_count(s->bitmap);
        job_progress_set_remaining(job, cnt);
        if (cnt == 0 && !s->ready) {
            s->ready = true;
            job_transition_to_ready(job);
        }
        if (job_is_cancelled(job)) {
            return 0;
        }
        if (s->ready && (atomic_load(&s->should_complete) ||
                         job_cancel_requested(job))) {
            return 0;           /* prepare copies the rest, quiesced */
        }
        if (!delay && cnt == 0) {
            delay = MIRROR_IDLE_NS;
        }
        cancel = delay ? job_sleep_ns(job, delay) : job_pause_point(job);
        if (cancel && job_is_cancelled(job)) {
            return 0;
        }
    }
}

/* ------------------------------------------------------------ the end */

/* GS, graph read lock: is to_replace the source itself or below it
 * through filters only (QEMU's bdrv_recurse_can_replace)?  Then the
 * target, a copy of what the source shows, shows what to_replace showed. */
static bool can_replace(BlockNode *source, BlockNode *to_replace) GRAPH_RDLOCK
{
    for (BlockNode *bs = source; bs;
         bs = bs->drv->is_filter && bs->file ? bs->file->node : NULL) {
        if (bs == to_replace) {
            return true;
        }
    }
    return false;
}


/* GS, coroutine: copies every dirty chunk left, the source quiesced. */
static int coroutine_fn final_copy(MirrorJob *s) GS
{
    CopySource cs = { s, true };
    int64_t off = 0, len = 0;

    while ((off = dirty_bitmap_next_dirty(s->bitmap, 0, s->max_io, &len)) >= 0) {
        bool is_read = false;
        dirty_bitmap_reset(s->bitmap, off, len);
        int ret = copy_range(&cs, off, len, &is_read);
        if (ret < 0) {
            return ret;
        }
        job_progress_update(&s->common.job, len);
    }
    /* in sync: the counts agree however the guest raced the count */
    job_progress_set_remaining(&s->common.job, 0);
    return blk_co_flush(s->tgt_blk);
}

/* GS, graph write lock, from and to quiesced: every parent of from moves
 * to to (QEMU's bdrv_replace_node), except the parents to reaches (to's
 * own backing chain through from would become a loop).  On error the
 * edges moved so far move back. */
static int replace_node_locked(BlockNode *from, BlockNode *to, Error **errp)
    GRAPH_WRLOCK GS
{
    int n = 0, moved = 0, ret = 0;

    for (BlockChild *c = from->parents; c; c = c->next_parent) {
        n++;
    }
    BlockChild **edges = calloc(n ? n : 1, sizeof(*edges));
    if (!edges) {
        error_setg(errp, "Out of memory");
        return -ENOMEM;
    }
    n = 0;
    for (BlockChild *c = from->parents; c; c = c->next_parent) {
        if (!c->parent_node || !bdrv_node_reaches(to, c->parent_node)) {
            edges[n++] = c;
        }
    }
    while (moved < n && (ret = bdrv_replace_child_node(edges[moved], to, errp)) == 0) {
        moved++;
    }
    if (ret < 0) {
        while (moved-- > 0) {
            bdrv_replace_child_node(edges[moved], from, NULL);
        }
    }
    free(edges);
    return ret;
}

/* GS, graph write lock, source, target and to_replace quiesced: with
 * replaces, the pivot moves to_replace's parents to the target (QEMU's
 * mirror_exit_common), if it is still the source or below it through
 * filters. */
static int replace_locked(MirrorJob *s, Error **errp) GRAPH_WRLOCK GS
{
    if (can_replace(s->source, s->to_replace)) {
        return replace_node_locked(s->to_replace, s->target, errp);
    }
    error_setg(errp, "Can no longer replace '%s' by '%s', because it can "
               "no longer be guaranteed that doing so would not lead to an "
               "abrupt change of visible data", s->to_replace->node_name,
               s->target->node_name);
    return -EPERM;
}

/* GS, coroutine: inside one section of source and mirror-top: the last
 * chunks, the job's backends go.  Then the nodes that gain parents are
 * quiesced too (the target on a pivot, to_replace with replaces: only
 * now, since final_copy reads through any filter between source and
 * to_replace), and in one write-locked step mirror-top leaves the graph,
 * its parents moving to the target (a pivot) or back to the source (no
 * pivot, or a pivot with replaces, which then moves to_replace's parents
 * to the target). */
static int coroutine_fn finish_in_section(MirrorJob *s, bool pivot) GS
{
    BlockNode *nodes[] = { s->source, s->filter, s->target, s->to_replace };
    bool replace = pivot && s->to_replace;
    BlockNode *to = pivot && !replace ? s->target : s->source;
    BlockNode *gaining[] = { replace ? s->to_replace : NULL,
                             pivot ? s->target : NULL };
    Error *err = NULL;
    int ret;

    for (int i = 0; i < 4; i++) {
        if (nodes[i]) {
            bdrv_ref(nodes[i]);
        }
    }
    bdrv_co_quiesce_begin(s->source);
    bdrv_co_quiesce_begin(s->filter);
    mirror_top_set_active(s->filter, NULL);     /* nothing in flight there */
    ret = final_copy(s);
    block_job_remove_all_nodes(&s->common);
    bdrv_co_quiesce_nodes_begin(gaining, 2);
    if (ret == 0) {
        bdrv_graph_wrlock();
        ret = bdrv_remove_filter_locked(s->filter, to, &err);
        s->filter_removed = ret == 0;
        if (ret == 0 && replace) {
            ret = replace_locked(s, &err);
        }
        bdrv_graph_wrunlock();
    }
    if (ret < 0) {
        error_report_err(err);
    }
    bdrv_co_quiesce_nodes_end(gaining, 2);
    bdrv_quiesce_end(s->filter);
    bdrv_quiesce_end(s->source);
    for (int i = 3; i >= 0; i--) {
        if (nodes[i]) {
            bdrv_co_unref(nodes[i]);
        }
    }
    return ret;
}

/* prepare — lock: GS, coroutine on the main loop; in flight: none of the
 * job's; threads: main.  Complete (pivot) or soft cancel (no pivot). */
static int coroutine_fn mirror_prepare(Job *job) GS
{
    MirrorJob *s = (MirrorJob *)job;

    GS_CODE();
    bool pivot = !job_cancel_requested(job);
    chain_thaw(&s->frozen);      /* the pivot takes top out of base's way */
    int ret = finish_in_section(s, pivot);
    if (ret == 0 && pivot) {
        s->base_was_ro = false;  /* base is the active layer now: stays rw */
    }
    return ret;
}

/* abort — lock: GS, coroutine on the main loop; in flight: none of the
 * job's; threads: main.  Parents back to the source. */
static void coroutine_fn mirror_abort(Job *job) GS
{
    MirrorJob *s = (MirrorJob *)job;
    Error *err = NULL;

    GS_CODE();
    if (s->filter_removed) {
        return;
    }
    /* no guest write may be on its way to the target backend */
    bdrv_ref(s->filter);
    bdrv_co_quiesce_begin(s->filter);
    mirror_top_set_active(s->filter, NULL);
    bdrv_quiesce_end(s->filter);
    bdrv_co_unref(s->filter);
    block_job_remove_all_nodes(&s->common);
    if (bdrv_co_remove_filter(s->filter, s->source, &err) < 0) {
        error_report_err(err);      /* cannot happen: the old shape */
        return;
    }
    s->filter_removed = true;
}

/* clean — lock: GS, coroutine on the main loop; in flight: none; threads:
 * main.  The filter (out of the graph by now) and our references go. */
static void coroutine_fn mirror_clean(Job *job) GS
{
    MirrorJob *s = (MirrorJob *)job;

    GS_CODE();
    if (!s->filter_removed) {
        mirror_abort(job);
    }
    if (s->filter_removed) {
        mirror_top_set_bitmap(s->filter, NULL);
        bdrv_co_unref(s->filter);
        s->filter = NULL;
    }
    if (s->base) {
        chain_thaw(&s->frozen);
        chain_restore_ro(&s->common, s->base, &s->base_was_ro);
    }
    if (s->to_replace) {
        bdrv_co_unref(s->to_replace);
        s->to_replace = NULL;
    }
    bdrv_co_unref(s->target);
    bdrv_co_unref(s->source);
    s->target = s->source = NULL;
}

/* free — lock: GS; in flight: none; threads: main. */
static void mirror_free(Job *job) GS
{
    MirrorJob *s = (MirrorJob *)job;

    GS_CODE();
    if (!s->filter && s->bitmap) {  /* else the filter points at it: leak */
        dirty_bitmap_free(s->bitmap);
    }
    pthread_mutex_destroy(&s->ranges_lock);
}

/* cancel — lock: GS; in flight: yes; threads: main.  A soft cancel of a
 * ready mirror completes it without pivoting. */
static bool mirror_cancel(Job *job, bool force) GS
{
    GS_CODE();
    return force || !job_is_ready(job);
}

/* complete — lock: GS, coroutine on the main loop; in flight: yes; threads:
 * main.  The coroutine finishes at its next round. */
static void coroutine_fn mirror_complete(Job *job, Error **errp) GS
{
    MirrorJob *s = (MirrorJob *)job;

    GS_CODE();
    atomic_store(&s->should_complete, true);
    job_enter(job);
}

/* Both job types below are this job. */
#define MIRROR_JOB_CALLBACKS                                            \
    .instance_size = sizeof(MirrorJob), .run = mirror_run,              \
    .cancel = mirror_cancel, .complete = mirror_complete,               \
    .prepare = mirror_prepare, .abort = mirror_abort,                   \
    .clean = mirror_clean, .free = mirror_free

static const JobDriver mirror_job_driver = {
    .type = "mirror", MIRROR_JOB_CALLBACKS,
};

/* Active commit: QEMU's type "commit". */
static const JobDriver commit_active_job_driver = {
    .type = "commit", MIRROR_JOB_CALLBACKS,
};

bool job_is_mirror(Job *job)
{
    GS_CODE();
    return job->driver == &mirror_job_driver;
}

int mirror_change_copy_mode(Job *job, bool write_blocking, Error **errp)
{
    MirrorJob *s = (MirrorJob *)job;

    GS_CODE();
    if (job_apply_verb(job, JOB_VERB_CHANGE, errp) < 0) {
        return -EPERM;
    }
    if (s->write_blocking && !write_blocking) {
        error_setg(errp, "Change of copy mode from 'write-blocking' to "
                   "'background' is not supported");
        return -ENOTSUP;
    }
    if (write_blocking && !s->write_blocking && s->filter && !s->filter_removed) {
        s->write_blocking = true;
        mirror_top_set_active(s->filter, s);
    }
    return 0;
}

bool mirror_actively_synced(Job *job)
{
    MirrorJob *s = (MirrorJob *)job;

    GS_CODE();
    return s->write_blocking && job_is_ready(job) && s->bitmap &&
           dirty_bitmap_count(s->bitmap) == 0;
}

/* ------------------------------------------------------------ start */

/* GS: QEMU's op blocker message for a node a job holds (a mirror, an
 * active commit, a stream or commit job's chain). */
static int refuse_busy(BlockNode *bs, Error **errp) GS
{
    BlockJob *holder = block_job_holding(bs);

    if (holder) {
        error_setg(errp, "Node '%s' is busy: block device is in use by block "
                   "job: %s", bs->node_name, holder->job.driver->type);
        return -EBUSY;
    }
    return 0;
}

/* GS: the node named by replaces, with QEMU's checks (check_to_replace_
 * node); the source when there is none.  NULL with *errp set. */
static BlockNode *check_replaces(const MirrorParams *p, Error **errp) GS
{
    if (!p->replaces) {
        return p->source;
    }
    BlockNode *bs = bdrv_find_node(p->replaces);
    if (!bs) {
        error_setg(errp, "Failed to find node with node-name='%s'", p->replaces);
        return NULL;
    }
    if (bs != p->source && refuse_busy(bs, errp) < 0) {
        return NULL;
    }
    bdrv_graph_rdlock_main_loop();
    bool ok = can_replace(p->source, bs);
    bdrv_graph_rdunlock_main_loop();
    if (!ok) {
        error_setg(errp, "Cannot replace '%s' by a node mirrored from '%s', "
                   "because it cannot be guaranteed that doing so would not "
                   "lead to an abrupt change of visible data",
                   bs->node_name, p->source->node_name);
        return NULL;
    }
    return bs;
}

/* GS: QEMU's argument checks. */
static int check_params(const MirrorParams *p, bool commit, Error **errp) GS
{
    uint32_t g = p->granularity;

    if (g && (g < 512 || g > 64 * 1024 * 1024)) {
        error_setg(errp, "Parameter 'granularity' expects a value in range "
                   "[512B, 64MB]");
        return -EINVAL;
    }
    if (g & (g - 1)) {
        error_setg(errp, "Parameter 'granularity' expects a power of 2");
        return -EINVAL;
    }
    if (p->buf_size < 0) {
        error_setg(errp, "Invalid parameter 'buf-size'");
        return -EINVAL;
    }
    if (p->source == p->target) {
        error_setg(errp, "Can't mirror node into itself");
        return -EINVAL;
    }
    bdrv_graph_rdlock_main_loop();
    bool below = bdrv_node_reaches(p->source, p->target);
    bool above = bdrv_node_reaches(p->target, p->source);
    bdrv_graph_rdunlock_main_loop();
    if (refuse_busy(p->source, errp) < 0) {
        return -EBUSY;
    }
    if (commit) {
        return 0;   /* target below source (the caller checked); any length */
    }
    if (below || above) {
        error_setg(errp, "Cannot mirror '%s' to '%s': one is in the other's "
                   "chain", p->source->node_name, p->target->node_name);
        return -EINVAL;
    }
    if (bdrv_getlength(p->source) != bdrv_getlength(p->target)) {
        error_setg(errp, "Source and target image have different sizes");
        return -EINVAL;
    }
    return 0;
}

/* GS: an IOThread for the job (the first one; the main loop if none). */
static IOThread *job_iothread(void) GS
{
    return iothread_count() > 0 ? iothread_nth(0) : NULL;
}

/* GS, coroutine: the job and its backends, mirror-top above the source. */
static MirrorJob *coroutine_fn create_job(const MirrorParams *p, BlockNode *filter,
                                          const JobDriver *drv, uint64_t tgt_perm,
                                          Error **errp) GS
{
    MirrorJob *s;

    if (bdrv_co_insert_filter(filter, p->source, errp) < 0) {
        return NULL;
    }
    /* neither node may change its length under the bitmap (QEMU's perms) */
    s = block_job_create(p->job_id, drv, p->source,
                         BLK_PERM_CONSISTENT_READ,
                         BLK_PERM_ALL & ~(uint64_t)BLK_PERM_RESIZE, p->speed,
                         p->auto_finalize, p->auto_dismiss, job_iothread(), errp);
    if (!s) {
        bdrv_co_remove_filter(filter, p->source, NULL);
        return NULL;
    }
    s->tgt_blk = block_job_add_node(&s->common, p->job_id, p->target,
                                    tgt_perm, BLK_PERM_CONSISTENT_READ |
                                    BLK_PERM_WRITE_UNCHANGED, errp);
    if (!s->tgt_blk) {
        block_job_early_fail(&s->common);
        bdrv_co_remove_filter(filter, p->source, NULL);
        return NULL;
    }
    return s;
}

/* The chain between an active commit's top and base: read by the job,
 * nobody writes it (QEMU's commit perms). */
#define COMMIT_CHAIN_SHARED (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED)

/* GS, coroutine: active commit, after create_job: the job holds the nodes
 * between top and base, freezes top's backing edges down to base and grows
 * base to top's length.  On error, undoes the freeze; the caller drops the
 * job (and the backends). */
static int coroutine_fn commit_setup(MirrorJob *s, const MirrorParams *p,
                                     BlockNode *base, int64_t len,
                                     Error **errp) GS
{
    BlockJob *bjob = &s->common;
    BlockBackend *tgt_blk = s->tgt_blk;

    for (BlockNode *bs = chain_next(p->source); bs && bs != base;
         bs = chain_next(bs)) {
        if (!block_job_add_node(bjob, p->job_id, bs, 0, COMMIT_CHAIN_SHARED,
                                errp)) {
            return -EBUSY;
        }
    }
    if (chain_freeze(&s->frozen, p->source, base) < 0) {
        chain_thaw(&s->frozen);
        error_setg(errp, "Out of memory");
        return -ENOMEM;
    }
    if (blk_getlength(tgt_blk) < len &&
        blk_co_truncate(tgt_blk, len, false, errp) < 0) {
        chain_thaw(&s->frozen);
        return -EIO;
    }
    return 0;
}

/* GS, coroutine: mirror_start and mirror_start_commit (base: the target,
 * already writable, base_was_ro: reopen it read-only at the end unless
 * pivoted; NULL for a mirror). */
static int coroutine_fn mirror_start_common(const MirrorParams *p,
                                            const JobDriver *drv,
                                            BlockNode *base, bool base_was_ro,
                                            Error **errp) GS
{
    uint32_t g = p->granularity ? p->granularity : MIRROR_DEFAULT_GRANULARITY;
    int64_t len = bdrv_getlength(p->source);
    /* an active commit grows a shorter base (QEMU does) */
    uint64_t tgt_perm = BLK_PERM_WRITE |
        (base && bdrv_getlength(base) < len ? BLK_PERM_RESIZE : 0);

    if (check_params(p, base != NULL, errp) < 0) {
        return -EINVAL;
    }
    BlockNode *to_replace = check_replaces(p, errp);
    if (!to_replace) {
        return -EINVAL;
    }
    if (p->filter_node_name && bdrv_find_node(p->filter_node_name)) {
        error_setg(errp, "Duplicate nodes with node-name='%s'", p->filter_node_name);
        return -EEXIST;
    }
    DirtyBitmap *bitmap = dirty_bitmap_new(len, g);
    if (!bitmap) {
        error_setg(errp, "Cannot create a dirty bitmap of %" PRId64 " bytes", len);
        return -ENOMEM;
    }
    BlockNode *filter = bdrv_co_open_internal(&bdrv_mirror_top,
                                              p->filter_node_name, errp);
    if (!filter) {
        dirty_bitmap_free(bitmap);
        return -EINVAL;
    }
    mirror_top_set_bitmap(filter, bitmap);
    MirrorJob *s = create_job(p, filter, drv, tgt_perm, errp);
    if (s && base && commit_setup(s, p, base, len, errp) < 0) {
        block_job_early_fail(&s->common);
        bdrv_co_remove_filter(filter, p->source, NULL);
        s = NULL;
    }
    if (!s) {
        mirror_top_set_bitmap(filter, NULL);
        bdrv_co_unref(filter);
        dirty_bitmap_free(bitmap);
        return -EINVAL;
    }
    bdrv_ref(p->source);
    bdrv_ref(p->target);
    s->source = p->source;
    s->target = p->target;
    s->filter = filter;
    s->base = base;
    s->base_was_ro = base_was_ro;
    s->src_blk = block_job_blk(&s->common);
    s->bitmap = bitmap;
    s->sync = p->sync;
    s->on_source_error = p->on_source_error;
    s->on_target_error = p->on_target_error;
    s->target_is_zero = p->target_is_zero;
    s->unmap = !p->no_unmap;
    if (to_replace != p->source) {
        bdrv_ref(to_replace);
        s->to_replace = to_replace;
    }
    s->length = len;
    s->buf_size = p->buf_size ? p->buf_size : MIRROR_DEFAULT_BUF_SIZE;
    s->max_io = MIRROR_MAX_IO_BYTES > g ? MIRROR_MAX_IO_BYTES : g;
    if (s->buf_size < s->max_io) {
        s->buf_size = s->max_io;
    }
    pthread_mutex_init(&s->ranges_lock, NULL);
    if (p->write_blocking) {
        s->write_blocking = true;
        mirror_top_set_active(filter, s);
    }
    job_progress_set_remaining(&s->common.job, 0);
    job_start(&s->common.job);
    return 0;
}

int coroutine_fn mirror_start(const MirrorParams *p, Error **errp)
{
    GS_CODE();
    return mirror_start_common(p, &mirror_job_driver, NULL, false, errp);
}

int coroutine_fn mirror_start_commit(const MirrorParams *p, Error **errp)
{
    BlockNode *base = p->target;
    bool was_ro = false;

    GS_CODE();
    if (chain_check_not_busy(p->source, chain_next(base), errp) < 0) {
        return -EBUSY;
    }
    if (chain_open_rw(base, &was_ro, errp) < 0) {
        return -EACCES;
    }
    int ret = mirror_start_common(p, &commit_active_job_driver, base, was_ro,
                                  errp);
    if (ret < 0) {
        chain_restore_ro(NULL, base, &was_ro);
    }
    return ret;
}
