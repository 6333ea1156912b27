/*
 * filter-util.c — the parts of a filter driver that do not depend on the
 * filter (see filter-util.h).
 */
#include <stdio.h>

#include "block-gs.h"
#include "block-io.h"
#include "filters/filter-util.h"

void filter_inherit_from_child(BlockNode *bs) GS
{
    GS_CODE();
    BlockNode *file;

    bdrv_graph_rdlock_main_loop();
    file = bs->file->node;
    snprintf(bs->filename, sizeof(bs->filename), "%s", file->filename);
    atomic_store(&bs->length, bdrv_getlength(file));
    bs->supported_write_flags = file->supported_write_flags;
    bs->supported_zero_flags = file->supported_zero_flags;
    bdrv_graph_rdunlock_main_loop();
}

int coroutine_fn filter_co_truncate(BlockNode *bs, int64_t offset, bool exact,
                                    Error **errp) GRAPH_RDLOCK
{
    IO_CODE();
    int ret = bdrv_co_truncate(bs->file, offset, exact, errp);

    if (ret == 0) {
        atomic_store_explicit(&bs->length, bdrv_getlength(bs->file->node),
                              memory_order_release);
    }
    return ret;
}

int coroutine_fn filter_co_preadv(BlockNode *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset,
                                  BdrvRequestFlags flags) GRAPH_RDLOCK
{
    IO_CODE();
    return bdrv_co_preadv(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

int coroutine_fn filter_co_pwritev(BlockNode *bs, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset,
                                   BdrvRequestFlags flags) GRAPH_RDLOCK
{
    IO_CODE();
    return bdrv_co_pwritev(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

int coroutine_fn filter_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                         int64_t bytes, BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    IO_CODE();
    return bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

int coroutine_fn filter_co_pdiscard(BlockNode *bs, int64_t offset,
                                    int64_t bytes) GRAPH_RDLOCK
{
    IO_CODE();
    return bdrv_co_pdiscard(bs->file, offset, bytes);
}

int coroutine_fn filter_co_flush(BlockNode *bs) GRAPH_RDLOCK
{
    return 0;
}

int coroutine_fn filter_co_block_status(BlockNode *bs, int64_t offset,
                                        int64_t bytes, int64_t *pnum,
                                        int64_t *map, BlockNode **file)
    GRAPH_RDLOCK
{
    IO_CODE();
    return bdrv_co_block_status(bs->file->node, true, offset, bytes, pnum,
                                map, file);
}
