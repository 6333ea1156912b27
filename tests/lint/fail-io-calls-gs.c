/*
 * MUST NOT COMPILE under clang -Wthread-safety: an I/O function (graph read
 * lock, any thread) calls GS code (main thread + global lock).
 */
#include "block-gs.h"
#include "block-io.h"

int coroutine_fn lint_io_function(BlockChild *child) GRAPH_RDLOCK;

int coroutine_fn lint_io_function(BlockChild *child)
{
    /* I/O code opening a node: needs the global lock it does not have. */
    return bdrv_find_node("disk") != NULL;
}
