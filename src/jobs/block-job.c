/*
 * block-job.c — the nodes a block job holds (see block-job.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "jobs/block-job.h"
#include "loop/loop.h"

struct BlockJobNode {
    BlockJob *bjob;
    BlockBackend *blk;
    int pauses;                  /* GS: job pauses this backend's sections hold */
    BlockJobNode *next;
};

/* BlockBackendOps — GS, main thread: a quiesced section reached one of the
 * job's backends; the job parks at its next pause point meanwhile. */
static void job_node_quiesce_begin(void *opaque) GS
{
    BlockJobNode *n = opaque;

    GS_CODE();
    n->pauses++;
    job_pause_internal(&n->bjob->job);
}

static void job_node_quiesce_end(void *opaque) GS
{
    BlockJobNode *n = opaque;

    GS_CODE();
    /* A section that began before the ops were set paused nothing. */
    if (n->pauses > 0) {
        n->pauses--;
        job_resume_internal(&n->bjob->job);
    }
}

static const BlockBackendOps job_node_ops = {
    .user_kind = "job",
    .stay_at_node = true,
    .quiesce_begin = job_node_quiesce_begin,
    .quiesce_end = job_node_quiesce_end,
};

BlockBackend *coroutine_fn block_job_add_node(BlockJob *bjob, const char *name,
                                 BlockNode *bs, uint64_t perm, uint64_t shared,
                                 Error **errp)
{
    BlockJobNode *n;

    GS_CODE();
    n = calloc(1, sizeof(*n));
    if (!n) {
        error_setg(errp, "Out of memory");
        return NULL;
    }
    n->bjob = bjob;
    n->blk = blk_new(name, perm, shared);
    blk_set_ops(n->blk, &job_node_ops, n);
    if (blk_insert_node(n->blk, bs, errp) < 0) {
        blk_co_unref(n->blk);    /* never attached: nothing to drain */
        free(n);
        return NULL;
    }
    n->next = bjob->nodes;
    bjob->nodes = n;
    return n->blk;
}

void coroutine_fn block_job_remove_all_nodes(BlockJob *bjob)
{
    GS_CODE();
    while (bjob->nodes) {
        BlockJobNode *n = bjob->nodes;

        bjob->nodes = n->next;
        /* A section still covering this backend will end without us:
         * give back the pauses it holds on the job. */
        blk_set_ops(n->blk, NULL, NULL);
        for (; n->pauses > 0; n->pauses--) {
            job_resume_internal(&bjob->job);
        }
        blk_co_unref(n->blk);
        free(n);
    }
    bjob->blk = NULL;
}

/* Job.layer_clean — GS, coroutine on the main loop, after the type's clean. */
static void coroutine_fn block_job_clean(Job *job) GS
{
    block_job_remove_all_nodes((BlockJob *)job);
}

void *coroutine_fn block_job_create(const char *job_id, const JobDriver *driver,
                                    BlockNode *bs, uint64_t perm, uint64_t shared,
                                    int64_t speed, bool auto_finalize,
                                    bool auto_dismiss, IOThread *iothread,
                                    Error **errp)
{
    BlockJob *bjob;

    GS_CODE();
    if (driver->instance_size < sizeof(BlockJob)) {
        abort();                 /* a block job type embeds BlockJob */
    }
    bjob = (BlockJob *)job_create(job_id, driver, iothread, speed,
                                  auto_finalize, auto_dismiss, errp);
    if (!bjob) {
        return NULL;
    }
    bjob->job.layer_clean = block_job_clean;
    bjob->blk = block_job_add_node(bjob, job_id, bs, perm, shared, errp);
    if (!bjob->blk) {
        job_early_fail(&bjob->job);
        return NULL;
    }
    return bjob;
}

BlockBackend *block_job_blk(BlockJob *bjob)
{
    GS_CODE();
    return bjob->blk;
}

void coroutine_fn block_job_early_fail(BlockJob *bjob)
{
    GS_CODE();
    block_job_remove_all_nodes(bjob);
    job_early_fail(&bjob->job);
}

bool block_job_holds_node(BlockJob *bjob, BlockNode *bs)
{
    GS_CODE();
    for (BlockJobNode *n = bjob->nodes; n; n = n->next) {
        if (blk_node(n->blk) == bs) {
            return true;
        }
    }
    return false;
}

BlockJob *block_job_holding(BlockNode *bs)
{
    GS_CODE();
    for (Job *job = job_next(NULL); job; job = job_next(job)) {
        if (job->layer_clean == block_job_clean &&
            block_job_holds_node((BlockJob *)job, bs)) {
            return (BlockJob *)job;
        }
    }
    return NULL;
}

int block_job_check_not_busy(BlockNode *bs, Error **errp)
{
    GS_CODE();
    BlockJob *bjob = block_job_holding(bs);

    if (bjob) {
        error_setg(errp, "Node '%s' is busy: block device is in use by "
                   "block job: %s", bs->node_name, bjob->job.driver->type);
        return -EBUSY;
    }
    return 0;
}

IOThread *block_job_default_iothread(void)
{
    GS_CODE();
    return iothread_count() > 0 ? iothread_nth(0) : NULL;
}
