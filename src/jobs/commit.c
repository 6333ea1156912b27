/*
 * commit.c — the intermediate commit job (QMP block-commit with a top
 * that is not the active layer).
 *
 * The chain is  overlay -> top -> ... -> base.  The job reopens base
 * read-write (if it was read-only) and holds it through a backend that
 * writes; for each chunk allocated somewhere from top down to base
 * (exclusive) it reads the chunk through top (the chain's view above
 * base) and writes it into base.  Nobody else writes top..base: they are
 * backing files, and the job's backends on them share no write
 * permission, so no race needs serialising.  Reads of the overlay do not
 * change: the committed regions are still allocated above base.
 *
 * Then, in prepare, one quiesced section makes base the overlay's backing
 * and its header records it; top and the nodes below it down to base are
 * released when the job's backends go.  In clean (success or not) base
 * goes back to read-only if the job opened it read-write.
 *
 * Threading: commit_start and the finalization callbacks are GS (main
 * thread, coroutines on the main loop); run is the job's coroutine.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block-io.h"
#include "driver.h"
#include "jobs/stream.h"

#define COMMIT_CHUNK (512 * 1024)   /* QEMU's COMMIT_BUFFER_SIZE */

typedef struct CommitJob {
    BlockJob common;
    /* Constant while the job exists (the job's backends hold the nodes). */
    BlockNode *overlay, *top, *base;
    BlockBackend *top_blk;       /* read */
    BlockBackend *base_blk;      /* write (and resize when base is shorter) */
    BlockdevOnError on_error;
    bool base_was_ro;            /* GS: reopen base read-only in clean */
    ChainFreeze frozen;          /* GS: the overlay's backing edges to base */
    char *backing_file;
} CommitJob;

/* ------------------------------------------------------------ the copy */

/* I/O: copies [off, off+bytes) from top's view into base; *is_read says
 * which half failed. */
static int coroutine_fn commit_copy(CommitJob *s, int64_t off, int64_t bytes,
                                    void *buf, bool *is_read)
{
    IOVector v;

    iov_init_buf(&v, buf, bytes);
    *is_read = true;
    int ret = blk_co_preadv(s->top_blk, off, bytes, &v, 0);
    if (ret < 0) {
        return ret;
    }
    *is_read = false;
    return blk_co_pwritev(s->base_blk, off, bytes, &v, 0);
}

/* I/O: one chunk from off: *n bytes handled, *copied if data moved. */
static int coroutine_fn commit_chunk(CommitJob *s, int64_t off, int64_t bytes,
                                     void *buf, int64_t *n, bool *copied,
                                     bool *is_read)
{
    *copied = false;
    *is_read = true;
    bdrv_graph_co_rdlock();
    int ret = chain_is_allocated_above(s->top, s->base, off, bytes, n);
    bdrv_graph_co_rdunlock();
    if (ret > 0) {
        ret = commit_copy(s, off, *n, buf, is_read);
        *copied = ret == 0;
    }
    return ret < 0 ? ret : 0;
}

/* I/O: base at least as long as top (QEMU grows it the same way). */
static int coroutine_fn commit_grow_base(CommitJob *s, int64_t len,
                                         Error **errp)
{
    if (blk_getlength(s->base_blk) >= len) {
        return 0;
    }
    return blk_co_truncate(s->base_blk, len, false, errp);
}

/*
 * run — lock: none; in flight: the job's own requests only; threads: the
 * job's coroutine.  QEMU's commit_run: on an error, report fails the job,
 * stop and ignore retry the chunk (stop after the pause).
 */
static int coroutine_fn commit_run(Job *job, Error **errp)
{
    CommitJob *s = (CommitJob *)job;
    int64_t len = blk_getlength(s->top_blk), n = 0, delay = 0;
    void *buf = NULL;

    int ret = commit_grow_base(s, len, errp);
    if (ret < 0 || posix_memalign(&buf, 4096, COMMIT_CHUNK)) {
        return ret < 0 ? ret : -ENOMEM;
    }
    job_progress_set_remaining(job, len);
    for (int64_t off = 0; off < len; off += n) {
        bool copied, is_read;
        n = 0;
        if (job_sleep_ns(job, delay)) {
            break;
        }
        delay = 0;
        ret = commit_chunk(s, off, MIN(COMMIT_CHUNK, len - off), buf, &n,
                           &copied, &is_read);
        if (ret < 0) {
            BlockErrorAction a = job_error_action(job, s->on_error, is_read, ret);
            n = 0;
            if (a == BLOCK_ERROR_ACTION_REPORT) {
                break;
            }
            ret = 0;
            continue;
        }
        job_progress_update(job, n);
        if (copied) {
            delay = job_ratelimit_delay_ns(job, n);
        }
    }
    free(buf);
    return ret;
}

/* ------------------------------------------------------------ finalization */

/* prepare — lock: GS, coroutine on the main loop; in flight: none of the
 * job's; threads: main.  base becomes the overlay's backing. */
static int coroutine_fn commit_prepare(Job *job) GS
{
    CommitJob *s = (CommitJob *)job;
    Error *err = NULL;

    chain_thaw(&s->frozen);
    int ret = chain_replace_backing(s->overlay, s->base, s->backing_file, &err);
    if (ret < 0) {
        error_propagate(&job->err, err);
    }
    return ret;
}

/* clean — lock: GS, coroutine on the main loop; in flight: none of the
 * job's; threads: main.  Success or not. */
static void coroutine_fn commit_clean(Job *job) GS
{
    CommitJob *s = (CommitJob *)job;

    chain_thaw(&s->frozen);
    chain_restore_ro(&s->common, s->base, &s->base_was_ro);
    bdrv_co_unref(s->base);
    bdrv_co_unref(s->overlay);
}

/* free — lock: GS; in flight: none; threads: main. */
static void commit_free(Job *job) GS
{
    free(((CommitJob *)job)->backing_file);
}

static const JobDriver commit_driver = {
    .type = "commit",
    .instance_size = sizeof(CommitJob),
    .run = commit_run,
    .prepare = commit_prepare,
    .clean = commit_clean,
    .free = commit_free,
};

/* ------------------------------------------------------------ start */

/* No other writer below the overlay while the job reads and writes. */
#define CHAIN_SHARED (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED)

/* GS, coroutine: backends on the nodes below top down to base, and base
 * (written).  The overlay is only referenced (commit_start): it is not
 * part of what the job changes, other jobs may use it. */
static int coroutine_fn commit_hold_nodes(CommitJob *s, Error **errp) GS
{
    BlockJob *bjob = &s->common;
    uint64_t resize = bdrv_getlength(s->base) < bdrv_getlength(s->top) ?
                      BLK_PERM_RESIZE : 0;

    for (BlockNode *bs = chain_next(s->top); bs && bs != s->base;
         bs = chain_next(bs)) {
        if (!block_job_add_node(bjob, bjob->job.id, bs, 0, CHAIN_SHARED,
                                errp)) {
            return -EBUSY;
        }
    }
    s->base_blk = block_job_add_node(bjob, bjob->job.id, s->base,
                                     BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                                     resize, CHAIN_SHARED, errp);
    return s->base_blk ? 0 : -EBUSY;
}

/* GS, coroutine: everything the job needs before it starts; on error the
 * caller undoes it with commit_undo_setup(). */
static int coroutine_fn commit_setup(CommitJob *s, Error **errp) GS
{
    int ret = chain_open_rw(s->base, &s->base_was_ro, errp);

    ret = ret < 0 ? ret : commit_hold_nodes(s, errp);
    if (ret == 0 && chain_freeze(&s->frozen, s->overlay, s->base) < 0) {
        error_setg(errp, "Out of memory");
        ret = -ENOMEM;
    }
    return ret;
}

static void coroutine_fn commit_undo_setup(CommitJob *s) GS
{
    chain_thaw(&s->frozen);
    chain_restore_ro(&s->common, s->base, &s->base_was_ro);
    bdrv_co_unref(s->base);
    bdrv_co_unref(s->overlay);
    block_job_early_fail(&s->common);
}

int coroutine_fn commit_start(const ChainJobParams *p, BlockNode *overlay,
                              BlockNode *top, BlockNode *base, Error **errp)
{
    GS_CODE();
    if (chain_check_not_busy(top, chain_next(base), errp) < 0) {
        return -EBUSY;
    }
    CommitJob *s = block_job_create(p->job_id, &commit_driver, top,
                                    BLK_PERM_CONSISTENT_READ, CHAIN_SHARED,
                                    p->speed, p->auto_finalize,
                                    p->auto_dismiss, NULL, errp);
    if (!s) {
        return -EINVAL;
    }
    s->overlay = overlay;
    s->top = top;
    s->base = base;
    bdrv_ref(base);              /* for commit_clean's reopen */
    bdrv_ref(overlay);           /* for prepare's graph change */
    s->top_blk = block_job_blk(&s->common);
    s->on_error = p->on_error;
    s->backing_file = p->backing_file ? strdup(p->backing_file) : NULL;
    int ret = commit_setup(s, errp);
    if (ret < 0) {
        commit_undo_setup(s);
        return ret;
    }
    job_start(&s->common.job);
    return 0;
}
