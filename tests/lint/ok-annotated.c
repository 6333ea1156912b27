/*
 * MUST COMPILE under clang -Wthread-safety: the control case.  The same
 * three things done right: I/O code calls only I/O code, a graph change
 * holds the write lock, a vtable call holds the read lock.
 */
#include "block-gs.h"
#include "block-io.h"
#include "driver.h"

int coroutine_fn lint_io_function(BlockChild *child, void *buf) GRAPH_RDLOCK;
int lint_gs_function(BlockChild *c, BlockNode *new_bs, Error **errp) GS;
int coroutine_fn lint_locked_call(BlockNode *bs, IOVector *qiov);

int coroutine_fn lint_io_function(BlockChild *child, void *buf)
{
    IO_CODE();
    return bdrv_co_pread(child, 0, 512, buf, 0);
}

int lint_gs_function(BlockChild *c, BlockNode *new_bs, Error **errp)
{
    GS_CODE();
    bdrv_graph_wrlock();
    int ret = bdrv_replace_child_node(c, new_bs, errp);
    bdrv_graph_wrunlock();
    return ret;
}

int coroutine_fn lint_locked_call(BlockNode *bs, IOVector *qiov)
{
    bdrv_graph_co_rdlock();
    int ret = bs->drv->co_preadv(bs, 0, 512, qiov, 0, 0);
    bdrv_graph_co_rdunlock();
    return ret;
}
