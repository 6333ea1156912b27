/*
 * filter-util.h — what every filter driver (throttle, inject, the mirror
 * job's mirror_top) does the same way with its one "file" child.
 */
#ifndef DISKSTACK_FILTER_UTIL_H
#define DISKSTACK_FILTER_UTIL_H

#include "block-common.h"

/*
 * GS (from a filter's open, after its "file" child is attached): the node
 * shows the child's filename and length and supports the child's write and
 * zero flags.
 */
void filter_inherit_from_child(BlockNode *bs) GS;

/*
 * co_truncate of a filter — lock: graph read lock; in flight: yes;
 * threads: one resize per node at a time (io.c serialises).  Resizes the
 * child and takes its new length.
 */
int coroutine_fn filter_co_truncate(BlockNode *bs, int64_t offset, bool exact,
                                    Error **errp) GRAPH_RDLOCK;

/*
 * co_preadv, co_pwritev, co_pwrite_zeroes, co_pdiscard of a filter that
 * passes them through unchanged — lock: graph read lock; in flight: yes,
 * any number; threads: any, at once.
 */
int coroutine_fn filter_co_preadv(BlockNode *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset,
                                  BdrvRequestFlags flags) GRAPH_RDLOCK;
int coroutine_fn filter_co_pwritev(BlockNode *bs, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset,
                                   BdrvRequestFlags flags) GRAPH_RDLOCK;
int coroutine_fn filter_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                         int64_t bytes, BdrvRequestFlags flags)
    GRAPH_RDLOCK;
int coroutine_fn filter_co_pdiscard(BlockNode *bs, int64_t offset,
                                    int64_t bytes) GRAPH_RDLOCK;

/*
 * co_flush of a filter — lock: graph read lock; in flight: yes; threads:
 * any.  Nothing is cached in a filter; io.c flushes the child.
 */
int coroutine_fn filter_co_flush(BlockNode *bs) GRAPH_RDLOCK;

/*
 * co_block_status of a filter — lock: graph read lock; in flight: yes;
 * threads: any.  The child's whole answer, backing chain included: a filter
 * adds nothing of its own.
 */
int coroutine_fn filter_co_block_status(BlockNode *bs, int64_t offset,
                                        int64_t bytes, int64_t *pnum,
                                        int64_t *map, BlockNode **file)
    GRAPH_RDLOCK;

#endif
