/*
 * MUST NOT COMPILE under clang -Wthread-safety: a call through a guarded
 * driver vtable member (co_preadv needs the graph read lock) from a function
 * that does not hold it.
 */
#include "driver.h"

int coroutine_fn lint_unlocked_call(BlockNode *bs, IOVector *qiov);

int coroutine_fn lint_unlocked_call(BlockNode *bs, IOVector *qiov)
{
    return bs->drv->co_preadv(bs, 0, 512, qiov, 0, 0);
}
