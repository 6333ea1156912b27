/*
 * MUST NOT COMPILE under clang -Wthread-safety: a graph change
 * (bdrv_replace_child_node) without the graph write lock.
 */
#include "block-gs.h"

int lint_gs_function(BlockChild *c, BlockNode *new_bs, Error **errp) GS;

int lint_gs_function(BlockChild *c, BlockNode *new_bs, Error **errp)
{
    /* GS code, but bdrv_graph_wrlock() was never taken. */
    return bdrv_replace_child_node(c, new_bs, errp);
}
