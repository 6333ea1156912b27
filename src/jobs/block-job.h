/*
 * block-job.h — a job that works on nodes of the graph (mirror, stream,
 * commit): the job core (job.h) plus the backends through which the job
 * holds its nodes.
 *
 * Each node a block job holds is a BlockBackend of its own, with the
 * permissions the job needs on it and shares with others; so permission
 * conflicts (a second writer on a mirror target, blockdev-del of a node in
 * a job's chain) are refused by the graph core with the job named ("job
 * 'ID'").  A quiesced section that reaches one of these backends pauses the
 * job (job_pause_internal) until the section ends: the job parks at its
 * next pause point, its requests in flight complete, and new ones it might
 * send before that are held by the backend like anyone's.
 *
 * The backends go away in the clean step of finalization (after the job
 * type's own clean), or earlier when the job type drops them itself before
 * a graph change they would block (block_job_remove_all_nodes).
 *
 * "device" in events and query-block-jobs is the job id, as in QEMU.
 * Everything here is GS.
 */
#ifndef DISKSTACK_JOBS_BLOCK_JOB_H
#define DISKSTACK_JOBS_BLOCK_JOB_H

#include "block-gs.h"
#include "jobs/job.h"

typedef struct BlockJobNode BlockJobNode;

typedef struct BlockJob {
    Job job;                     /* first: a BlockJob is a Job */
    BlockBackend *blk;           /* the main node's backend */
    BlockJobNode *nodes;         /* every backend the job holds, blk too */
} BlockJob;

/*
 * job_create() plus a backend on bs (perm / shared on it).  The job type's
 * state embeds BlockJob first (driver->instance_size).  On error nothing
 * is left (the job is gone).  Coroutine: a failed backend is unreffed.
 */
void *coroutine_fn block_job_create(const char *job_id, const JobDriver *driver,
                                    BlockNode *bs, uint64_t perm, uint64_t shared,
                                    int64_t speed, bool auto_finalize,
                                    bool auto_dismiss, IOThread *iothread,
                                    Error **errp) GS;
/* The main backend. */
BlockBackend *block_job_blk(BlockJob *bjob) GS;
/* Another node the job holds, through a backend named name (shown in
 * messages as "job 'ID'"); returns it (owned by the job) or NULL. */
BlockBackend *coroutine_fn block_job_add_node(BlockJob *bjob, const char *name,
                                              BlockNode *bs, uint64_t perm,
                                              uint64_t shared, Error **errp) GS;
/* Drops every backend of the job (blk included: block_job_blk() is NULL
 * after).  Safe to call twice. */
void coroutine_fn block_job_remove_all_nodes(BlockJob *bjob) GS;
/* A job created by block_job_create that will not be started: drops the
 * backends and the job. */
void coroutine_fn block_job_early_fail(BlockJob *bjob) GS;
/* True if the job holds bs through one of its backends. */
bool block_job_holds_node(BlockJob *bjob, BlockNode *bs) GS;
/* The block job holding bs, or NULL. */
BlockJob *block_job_holding(BlockNode *bs) GS;
/* 0, or -EBUSY with QEMU's op blocker message ("Node 'x' is busy: block
 * device is in use by block job: TYPE") when a block job holds bs. */
int block_job_check_not_busy(BlockNode *bs, Error **errp) GS;
/* The IOThread a block job's coroutine runs on: the first one (QEMU runs
 * a job in its node's AioContext; here every node serves any thread), or
 * NULL (the main loop) when the daemon has none. */
IOThread *block_job_default_iothread(void) GS;

#endif
