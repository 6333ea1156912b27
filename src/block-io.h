/*
 * block-io.h — the I/O half of the block layer.
 *
 * Everything here is I/O code: thread-safe, callable from any IOThread or
 * the main thread, always inside a coroutine.  Functions that walk the graph
 * require the graph read lock (GRAPH_RDLOCK); the blk_co_* entry points take
 * it themselves.  Nothing here changes the graph or calls block-gs.h: clang
 * rejects such a call at compile time (tests/lint/).
 *
 * Requests travel:  blk_co_*  (backend: counts, holds while quiesced)
 *                     -> bdrv_co_* (io.c: checks, splits, counts, calls the
 *                        driver's callback)  -> driver -> bdrv_co_* on its
 *                        child edge -> ...
 * io.c is the only place that calls a driver's I/O callbacks.
 */
#ifndef DISKSTACK_BLOCK_IO_H
#define DISKSTACK_BLOCK_IO_H

#include "block-common.h"

/*
 * The graph lock, read side.  Held by a request for its whole trip through
 * the graph.  Per coroutine, nests, never blocks (see graph-lock.c for why a
 * graph change never has to wait for readers on chains it does not touch).
 */
void coroutine_fn bdrv_graph_co_rdlock(void) ACQUIRE_SHARED(graph_lock);
void coroutine_fn bdrv_graph_co_rdunlock(void) RELEASE_SHARED(graph_lock);

/*
 * Node-level requests on an edge.  Used by drivers on their children and by
 * backends on their root.  Offsets and lengths are bytes.  Return 0 or
 * -errno.  io.c checks the range against the node's length (reads past the
 * end are an error: callers clamp), aligns to request_alignment (RMW for
 * writes), splits above max_transfer, and counts the request in the node's
 * in_flight.
 */
int coroutine_fn bdrv_co_preadv(BlockChild *child, int64_t offset, int64_t bytes,
                                IOVector *qiov, size_t qiov_offset,
                                BdrvRequestFlags flags) GRAPH_RDLOCK;
int coroutine_fn bdrv_co_pwritev(BlockChild *child, int64_t offset, int64_t bytes,
                                 IOVector *qiov, size_t qiov_offset,
                                 BdrvRequestFlags flags) GRAPH_RDLOCK;
int coroutine_fn bdrv_co_pread(BlockChild *child, int64_t offset, int64_t bytes,
                               void *buf, BdrvRequestFlags flags) GRAPH_RDLOCK;
int coroutine_fn bdrv_co_pwrite(BlockChild *child, int64_t offset, int64_t bytes,
                                const void *buf, BdrvRequestFlags flags) GRAPH_RDLOCK;
int coroutine_fn bdrv_co_pwrite_zeroes(BlockChild *child, int64_t offset,
                                       int64_t bytes, BdrvRequestFlags flags) GRAPH_RDLOCK;
int coroutine_fn bdrv_co_pdiscard(BlockChild *child, int64_t offset,
                                  int64_t bytes) GRAPH_RDLOCK;
/* Flushes the node and everything below it. */
int coroutine_fn bdrv_co_flush(BlockNode *bs) GRAPH_RDLOCK;
/*
 * Status of [offset, offset+bytes): returns BDRV_BLOCK_* flags or -errno,
 * *pnum = length (>0) of the run with that status.  For a format, DATA/ZERO
 * is resolved in its file when the driver sets BDRV_BLOCK_RECURSE;
 * unallocated ranges are looked up in the backing chain when want_chain.
 */
int coroutine_fn bdrv_co_block_status(BlockNode *bs, bool want_chain,
                                      int64_t offset, int64_t bytes,
                                      int64_t *pnum, int64_t *map,
                                      BlockNode **file) GRAPH_RDLOCK;
/* Changes the length; the edge must hold BLK_PERM_RESIZE. */
int coroutine_fn bdrv_co_truncate(BlockChild *child, int64_t offset, bool exact,
                                  Error **errp) GRAPH_RDLOCK;

/*
 * Raises a named event point (BlkDebugEvent) on child: the first node at or
 * below child->node (following "file" children) whose driver has
 * co_debug_event gets it; nothing happens when none has.  Cheap when no
 * inject node is there: a walk of the file chain.
 */
void coroutine_fn bdrv_co_debug_event(BlockChild *child, BlkDebugEvent ev) GRAPH_RDLOCK;

/*
 * Backend-level requests: the entry points for exports and jobs.
 * Each takes the graph read lock for the request's trip, counts itself in
 * the backend's in-flight counter, and waits while the backend is quiesced.
 * Reads past the end return -EINVAL (callers clamp); writes past the end
 * return -ENOSPC unless the caller grows the node first.
 */
int coroutine_fn blk_co_preadv(BlockBackend *blk, int64_t offset, int64_t bytes,
                               IOVector *qiov, BdrvRequestFlags flags);
int coroutine_fn blk_co_pwritev(BlockBackend *blk, int64_t offset, int64_t bytes,
                                IOVector *qiov, BdrvRequestFlags flags);
int coroutine_fn blk_co_pwrite_zeroes(BlockBackend *blk, int64_t offset,
                                      int64_t bytes, BdrvRequestFlags flags);
int coroutine_fn blk_co_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes);
int coroutine_fn blk_co_flush(BlockBackend *blk);
int coroutine_fn blk_co_block_status(BlockBackend *blk, int64_t offset,
                                     int64_t bytes, int64_t *pnum);
int coroutine_fn blk_co_truncate(BlockBackend *blk, int64_t offset, bool exact,
                                 Error **errp);
int64_t blk_getlength(BlockBackend *blk);         /* I/O or GS */
bool blk_is_read_only(BlockBackend *blk);         /* I/O or GS */
/* Limits of the root node, for exports sizing their buffers. */
const BlockLimits *blk_limits(BlockBackend *blk); /* I/O or GS */

/*
 * Backend drain (DESIGN rule 2, meaning 1): waits until every request issued
 * through this backend has completed, including requests queued in filters
 * below it.  Limits stay enforced while waiting.  Does not stop new requests.
 */
void coroutine_fn blk_co_drain(BlockBackend *blk);

#endif
