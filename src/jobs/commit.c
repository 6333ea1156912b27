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
 * The filter.  For the job's life a pass-through commit_top node
 * (commit-top.c, QEMU's) sits between the overlay and top: the overlay's
 * backing edge reaches top through it.  It is named by filter-node-name
 * (else "#blockNNN") and leaves the graph before prepare changes the
 * chain, or in clean whatever the outcome.
 *
 * Threading: commit_start and the finalization callbacks are GS (main
 * thread, coroutines on the main loop); run is the job's coroutine on the
 * first IOThread (the main loop without one): it takes the graph read
 * lock itself and calls no GS helper.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block-io.h"
#include "driver.h"
#include "jobs/stream.h"

typedef struct CommitJob {
    BlockJob common;
    /* Constant while the job exists (the job's backends hold the nodes). */
    BlockNode *overlay, *top, *base;
    BlockBackend *top_blk;       /* read */
    BlockBackend *base_blk;      /* write (and resize when base is shorter) */
    BlockdevOnError on_error;
    bool base_was_ro;            /* GS: reopen base read-only in clean */
    ChainFreeze frozen;          /* GS: the overlay's chain edges to base */
    BlockNode *filter;           /* GS: commit_top above top (a reference);
                                  * NULL once it left the graph */
    char *backing_file;
} CommitJob;

/* ------------------------------------------------------------ the copy */

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
 * run — lock: none (the chunks take the graph read lock); in flight: the
 * job's own requests only; threads: the job's coroutine on its IOThread.
 * QEMU's commit_run: on an error, report fails the job, stop and ignore
 * retry the chunk (stop after the pause).
 */
static int coroutine_fn commit_run(Job *job, Error **errp)
{
    CommitJob *s = (CommitJob *)job;
    ChainCopy c = {
        .src = s->top_blk, .dst = s->base_blk, .write_flags = 0,
        .top = s->top, .base = s->base,
        .needs_copy = chain_is_allocated_above,
        .on_error = s->on_error, .ignore_skips = false,
    };

    int ret = commit_grow_base(s, blk_getlength(s->top_blk), errp);
    return ret < 0 ? ret : chain_copy_loop(job, &c);
}

/* ------------------------------------------------------------ finalization */

/* prepare — lock: GS, coroutine on the main loop; in flight: none of the
 * job's; threads: main.  The filter goes, then base becomes the overlay's
 * backing. */
static int coroutine_fn commit_prepare(Job *job) GS
{
    CommitJob *s = (CommitJob *)job;
    Error *err = NULL;

    chain_thaw(&s->frozen);
    chain_drop_filter(&s->filter, s->top);
    int ret = chain_replace_backing(s->overlay, s->base, s->backing_file, &err);
    if (ret < 0) {
        error_propagate(&job->err, err);
    }
    return ret;
}

/* clean — lock: GS, coroutine on the main loop; in flight: none of the
 * job's; threads: main.  Success or not; also undoes a failed start. */
static void coroutine_fn commit_clean(Job *job) GS
{
    CommitJob *s = (CommitJob *)job;

    chain_thaw(&s->frozen);
    chain_drop_filter(&s->filter, s->top);
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

/* GS, coroutine: everything the job needs before it starts, commit_top
 * inserted; on error the caller undoes it with commit_undo_setup(). */
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
    commit_clean(&s->common.job);
    block_job_early_fail(&s->common);
}

/* GS, coroutine: commit_top named name (NULL: automatic) above top; NULL
 * with *errp set and nothing changed. */
static BlockNode *coroutine_fn commit_insert_filter(BlockNode *top,
                                                    const char *name,
                                                    Error **errp) GS
{
    BlockNode *filter = bdrv_co_open_internal(&bdrv_commit_top, name, errp);

    if (filter && bdrv_co_insert_filter(filter, top, errp) < 0) {
        bdrv_co_unref(filter);
        return NULL;
    }
    return filter;
}

int coroutine_fn commit_start(const ChainJobParams *p, BlockNode *overlay,
                              BlockNode *top, BlockNode *base, Error **errp)
{
    GS_CODE();
    if (chain_check_not_busy(top, chain_next(base), errp) < 0) {
        return -EBUSY;
    }
    BlockNode *filter = commit_insert_filter(top, p->filter_node_name, errp);
    if (!filter) {
        return -EINVAL;
    }
    CommitJob *s = block_job_create(p->job_id, &commit_driver, top,
                                    BLK_PERM_CONSISTENT_READ, CHAIN_SHARED,
                                    p->speed, p->auto_finalize,
                                    p->auto_dismiss,
                                    block_job_default_iothread(), errp);
    if (!s) {
        if (bdrv_co_remove_filter(filter, top, NULL) == 0) {
            bdrv_co_unref(filter);
        }
        return -EINVAL;
    }
    s->overlay = overlay;
    s->top = top;
    s->base = base;
    s->filter = filter;
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
