/*
 * stream.h — the stream and commit jobs (QMP block-stream, block-commit).
 *
 * stream: copies into `top` every region it does not allocate itself but
 * some node between it and `base` does, then makes `base` top's backing
 * (none when base is NULL) and drops the nodes in between.  top stays
 * exported and writable throughout.  While the job runs a copy-on-read
 * filter (copy-on-read.c) sits above top, bounded by base: what a guest
 * reads of the chain above base is copied into top as it passes.
 *
 * commit (intermediate): copies every region allocated between `top` and
 * `base` into base (opened read-write for the job only), then makes base
 * the backing of top's overlay and drops top and the nodes below it.
 * While the job runs a pass-through commit_top filter (commit-top.c) sits
 * between the overlay and top.
 *
 * Either filter is named by QMP's filter-node-name, or gets an automatic
 * "#blockNNN" name; it leaves the graph at the end whatever the outcome.
 *
 * Both: GS to start (a coroutine on the main loop, QMP); the copy runs as
 * the job's coroutine on the first IOThread (block_job_default_iothread);
 * finalization swaps the graph in one quiesced section and rewrites the
 * overlay's image header.
 */
#ifndef DISKSTACK_JOBS_STREAM_H
#define DISKSTACK_JOBS_STREAM_H

#include "block-gs.h"
#include "jobs/block-job.h"

/* What both jobs take from QMP besides their nodes. */
typedef struct ChainJobParams {
    const char *job_id;
    const char *filter_node_name; /* NULL: an automatic hidden name */
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

/* I/O, graph read lock: does [offset, offset+bytes) need copying into top
 * for a chain cut at base (exclusive; NULL: none)?  1 / 0 for a run of
 * *pnum bytes from offset, or -errno: not allocated in top itself but
 * allocated in a node of its backing chain above base.  The stream job's
 * and the copy-on-read filter's test. */
int coroutine_fn chain_needs_copy(BlockNode *top, BlockNode *base,
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
/* GS: freezes the edges from top down to end (exclusive): each node's
 * backing, or a filter's file child (a job's filter in the chain). */
int chain_freeze(ChainFreeze *f, BlockNode *top, BlockNode *end) GS;
/* GS: thaws them (before the job changes them itself, and at the end);
 * again is a no-op. */
void chain_thaw(ChainFreeze *f) GS;

/* GS, coroutine: a job's filter leaves the graph (its parents move to to,
 * the node below it) and the job's reference on it goes; *filter becomes
 * NULL.  Again (NULL) is a no-op. */
void coroutine_fn chain_drop_filter(BlockNode **filter, BlockNode *to) GS;

/* GS, coroutine: in one quiesced section of overlay, its old backing and
 * base: base becomes overlay's backing, and overlay's image header records
 * it (backing_file, or base's filename; none when base is NULL).  On error
 * the graph is as before. */
int coroutine_fn chain_replace_backing(BlockNode *overlay, BlockNode *base,
                                       const char *backing_file,
                                       Error **errp) GS;

/*
 * The copy loop both jobs run (QEMU's stream_run and commit_run): chunk by
 * chunk from 0 to the length of src, each run that needs_copy() says 1 for
 * is read from src and written to dst with write_flags; progress counts
 * every byte passed, the speed limit the bytes copied.  On an I/O error
 * the on_error policy: report fails the job now; stop pauses it and the
 * chunk is retried after job-resume; ignore retries the chunk (commit, as
 * QEMU) or, with ignore_skips, skips it and fails the job at the end so
 * that the chain is not cut short of data (stream, as QEMU).
 */
typedef struct ChainCopy {
    BlockBackend *src, *dst;
    BdrvRequestFlags write_flags;
    /* I/O, called with the graph read lock held: does [offset,
     * offset+bytes) of the chain from top to base (exclusive) need a copy?
     * 1 / 0 for *pnum bytes, or -errno: chain_needs_copy (stream: not in
     * top, above base) or chain_is_allocated_above (commit). */
    BlockNode *top, *base;
    int coroutine_fn (*needs_copy)(BlockNode *top, BlockNode *base,
                                   int64_t offset, int64_t bytes,
                                   int64_t *pnum) GRAPH_RDLOCK_PTR;
    BlockdevOnError on_error;
    bool ignore_skips;
} ChainCopy;

/* I/O, the job's coroutine (JobDriver.run): 0, or the first error. */
int coroutine_fn chain_copy_loop(Job *job, const ChainCopy *c);

/* ---- the filters the jobs insert ---- */

/* copy-on-read.c: user-creatable (blockdev-add driver=copy-on-read
 * file=NODE bottom=NODE?) and the stream job's filter. */
extern const BlockDriver bdrv_copy_on_read;
/* GS: the lowest node whose data a copy-on-read node opened by a job
 * copies up (NULL: the whole chain); set before the filter is inserted. */
void copy_on_read_set_bottom(BlockNode *filter, BlockNode *bottom) GS;

/* commit-top.c: the intermediate commit's pass-through filter. */
extern const BlockDriver bdrv_commit_top;

#endif
