/*
 * commit-top.c — the intermediate commit job's filter node (QEMU's
 * commit_top), between the overlay and top while the job runs: the
 * overlay's backing edge reaches top through it.  Not user-creatable: it
 * is not in the driver registry (blockdev-add refuses driver=commit_top);
 * commit.c opens it with bdrv_co_open_internal() and inserts it with
 * bdrv_co_insert_filter().
 *
 * Reads, flushes and block status pass through to the "file" child (top);
 * nothing else reaches it (a backing edge only reads), so the other I/O
 * members stay NULL (-ENOTSUP).  Permissions pass through (the core's
 * default for a FILTERED child): the overlay reads top as before.
 *
 * Thread-safety: no state.
 */
#include "block-io.h"
#include "driver.h"
#include "filters/filter-util.h"
#include "jobs/stream.h"

/*
 * co_preadv — lock: graph read lock (I/O); in flight: yes, any number;
 * threads: any, at once.  Passes through.
 */
static int coroutine_fn commit_top_co_preadv(BlockNode *bs, int64_t offset,
                                             int64_t bytes, IOVector *qiov,
                                             size_t qiov_offset,
                                             BdrvRequestFlags flags) GRAPH_RDLOCK
{
    IO_CODE();
    return bdrv_co_preadv(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

const BlockDriver bdrv_commit_top = {
    .format_name = "commit_top",
    .is_filter = true,

    .co_preadv = commit_top_co_preadv,
    .co_flush = filter_co_flush,
    .co_block_status = filter_co_block_status,
};
