/*
 * stream.h — the stream and commit jobs (QMP block-stream, block-commit).
 *
 * stream: copies into `top` every region it does not allocate itself but
 * some node between it and `base` does, then makes `base` top's backing
 * (none when base is NULL) and drops the nodes in between.  top stays
 * exported and writable throughout.
 *
 * commit (intermediate): copies every region allocated between `top` and
 * `base` into base (opened read-write for the job only), then makes base
 * the backing of top's overlay and drops top and the nodes below it.
 *
 * Both: GS to start (a coroutine on the main loop, QMP), the copy runs as
 * the job's coroutine; finalization swaps the graph in one quiesced
 * section and rewrites the overlay's image header.
 */
#ifndef DISKSTACK_JOBS_STREAM_H
#define DISKSTACK_JOBS_STREAM_H

#include "block-gs.h"
#include "jobs/block-job.h"

/* What both jobs take from QMP besides their nodes. */
typedef struct ChainJobParams {
    const char *job_id;
    const char *backing_file;     /* for the header; NULL: base's filename */
    int64_t speed;
    BlockdevOnError on_error;
    bool auto_finalize, auto_dismiss;
} ChainJobParams;

/* GS.  Starts a stream of top's chain down to base (exclusive; NULL: the
 * whole chain).  The caller checked that base is below top. */
int coroutine_fn stream_start(const ChainJobParams *p, BlockNode *top,
                              BlockNode *base, Error **errp) GS;

/* GS.  Starts an intermediate commit of top..base (base exclusive) into
 * base; overlay is the node whose backing is top.  The caller checked the
 * chain (overlay -> top -> ... -> base). */
int coroutine_fn commit_start(const ChainJobParams *p, BlockNode *overlay,
                              BlockNode *top, BlockNode *base,
                              Error **errp) GS;

/* I/O, graph read lock: is [offset, offset+bytes) allocated in a node from
 * top down to base (exclusive; NULL: the end of the chain)?  1 or 0 for a
 * run of *pnum bytes from offset, or -errno.  Beyond the end of a layer
 * shorter than the range, reads return zeroes defined by that layer:
 * allocated, as QEMU's bdrv_is_allocated_above() says. */
int coroutine_fn chain_is_allocated_above(BlockNode *top, BlockNode *base,
                                          int64_t offset, int64_t bytes,
                                          int64_t *pnum) GRAPH_RDLOCK;

/* GS: top's backing chain reaches node (top itself excluded). */
bool chain_contains(BlockNode *top, BlockNode *node) GS;
/* GS: the node below bs in its chain (backing, or a filter's child). */
BlockNode *chain_next(BlockNode *bs) GS;

/* GS: refuses (QEMU's "Node 'x' is busy: block device is in use by block
 * job: TYPE") each node from top down to end (exclusive; NULL: the whole
 * chain) that a block job holds already: two jobs must not change the same
 * chain. */
int chain_check_not_busy(BlockNode *top, BlockNode *end, Error **errp) GS;

/* GS, coroutine: bs writable for a job (QEMU reopens a read-only stream
 * top or commit base the same way); *was_ro says whether it was reopened.
 * -errno with *errp set. */
int coroutine_fn chain_open_rw(BlockNode *bs, bool *was_ro, Error **errp) GS;
/* GS, coroutine: drops the job's backends (their write permissions), then
 * reopens bs read-only again if *was_ro, which it clears. */
void coroutine_fn chain_restore_ro(BlockJob *bjob, BlockNode *bs,
                                   bool *was_ro) GS;

/* The backing edges a job relies on, frozen (BlockChild.frozen) so that
 * no graph change (blockdev-reopen) moves them while the job runs. */
typedef struct ChainFreeze {
    BlockChild **edges;
    int n;
} ChainFreeze;
/* GS: freezes the backing edges of the nodes from top down to end
 * (exclusive). */
int chain_freeze(ChainFreeze *f, BlockNode *top, BlockNode *end) GS;
/* GS: thaws them (before the job changes them itself, and at the end);
 * again is a no-op. */
void chain_thaw(ChainFreeze *f) GS;

/* GS, coroutine: in one quiesced section of overlay, its old backing and
 * base: base becomes overlay's backing, and overlay's image header records
 * it (backing_file, or base's filename; none when base is NULL).  On error
 * the graph is as before. */
int coroutine_fn chain_replace_backing(BlockNode *overlay, BlockNode *base,
                                       const char *backing_file,
                                       Error **errp) GS;

#endif
