/*
 * graph-change.c — live graph changes: putting an overlay on top of a node
 * (blockdev-snapshot), changing a node's backing edge (blockdev-reopen,
 * transaction), and inserting / removing a job's filter above a node (the
 * mirror job's mirror-top, and its pivot to the target).
 *
 * The shape of every change ("bind the new table before destroying the
 * old"):
 *
 *   1. quiesce exactly the nodes whose edges change (the backends above
 *      them hold new requests, requests in flight below them complete;
 *      other chains run on);
 *   2. under the graph write lock: check the new shape (cycles, roles),
 *      relink the edges, and check the permissions of the new shape in ONE
 *      perm transaction over every node that gained or lost a parent; if it
 *      fails, relink the old edges — the transaction has already restored
 *      every perm — and nothing is different;
 *   3. end the sections: the held requests go to the new shape;
 *   4. drop references last, so a node that left the graph is closed only
 *      when nothing can reach it any more.
 *
 * The _locked forms do step 2 for a caller that did steps 1, 3 and 4
 * itself (a transaction quiesces several disks first so that all of them
 * change at one instant).  Such a caller holds a reference on every node it
 * quiesced — it has to, to end those sections — so nothing is freed while
 * the write lock is held.
 *
 * All GS: main thread, global lock; the bdrv_co_ forms run in a coroutine
 * on the main loop because quiescing waits.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "graph-internal.h"

/* ---- checks ---- */

bool bdrv_node_reaches(BlockNode *bs, BlockNode *target)
{
    if (bs == target) {
        return true;
    }
    for (BlockChild *c = bs->children; c; c = c->next_child) {
        if (bdrv_node_reaches(c->node, target)) {
            return true;
        }
    }
    return false;
}

/* A driver supports a backing edge when its definition may name one. */
static bool driver_has_backing(const BlockDriver *drv)
{
    for (const BlockOptionDesc *o = drv->options; o && o->name; o++) {
        if (!strcmp(o->name, "backing")) {
            return true;
        }
    }
    return false;
}

static bool node_quiesced(BlockNode *bs)
{
    return atomic_load(&bs->quiesce_counter) > 0;
}

/* The _locked forms are called inside the caller's section: a missing
 * section or lock is a bug, not an error to report. */
static void assert_locked_and_quiesced(const char *func, BlockNode *a,
                                       BlockNode *b) GRAPH_WRLOCK
{
    if (!graph_wrlock_held() || (a && !node_quiesced(a)) ||
        (b && !node_quiesced(b))) {
        fprintf(stderr, "diskstack: %s needs the graph write lock and the "
                "nodes it changes quiesced\n", func);
        abort();
    }
}

static int check_overlay(BlockNode *overlay, BlockNode *top, Error **errp)
    GRAPH_RDLOCK GS
{
    if (overlay->parents) {
        error_setg(errp, "The overlay is already in use");
        return -EBUSY;
    }
    if (overlay->backing) {
        error_setg(errp, "The overlay already has a backing image");
        return -EEXIST;
    }
    if (!driver_has_backing(overlay->drv)) {
        error_setg(errp, "The overlay does not support backing images");
        return -ENOTSUP;
    }
    /* top below overlay: moving top's parents would make overlay its own
     * parent; overlay below top: a loop through the backing edge */
    if (bdrv_node_reaches(top, overlay) || bdrv_node_reaches(overlay, top)) {
        error_setg(errp, "Making '%s' a backing child of '%s' would create "
                   "a cycle", top->node_name, overlay->node_name);
        return -EINVAL;
    }
    return 0;
}

/* ---- blockdev-snapshot ---- */

int bdrv_append_overlay_locked(BlockNode *overlay, BlockNode *top,
                               Error **errp)
{
    GS_CODE();
    assert_locked_and_quiesced(__func__, overlay, top);
    int ret = check_overlay(overlay, top, errp);
    if (ret < 0) {
        return ret;
    }
    /* top's parents first, so that the backing edge is top's only parent */
    bdrv_move_parents_noperm(top, overlay);
    BlockChild *backing = bdrv_link_child_noperm(overlay, top, "backing",
                                                 BDRV_CHILD_COW);
    BlockNode *touched[] = { overlay, top };
    ret = perm_refresh_nodes(touched, ARRAY_SIZE(touched), errp);
    if (ret < 0) {
        bdrv_unlink_child_noperm(backing);
        bdrv_move_parents_noperm(overlay, top);
    }
    return ret;
}

void bdrv_remove_overlay_locked(BlockNode *overlay, BlockNode *top)
{
    GS_CODE();
    assert_locked_and_quiesced(__func__, overlay, top);
    if (!overlay->backing || overlay->backing->node != top) {
        abort();
    }
    bdrv_unlink_child_noperm(overlay->backing);
    bdrv_move_parents_noperm(overlay, top);
    /* Back to the shape that held before the append: cannot conflict. */
    BlockNode *touched[] = { top, overlay };
    perm_refresh_nodes(touched, ARRAY_SIZE(touched), NULL);
}

void coroutine_fn bdrv_co_quiesce_nodes_begin(BlockNode **nodes, int n)
{
    GS_CODE();
    for (int i = 0; i < n; i++) {
        if (nodes[i]) {
            bdrv_ref(nodes[i]);
            bdrv_co_quiesce_begin(nodes[i]);
        }
    }
}

void coroutine_fn bdrv_co_quiesce_nodes_end(BlockNode **nodes, int n)
{
    GS_CODE();
    for (int i = n - 1; i >= 0; i--) {
        if (nodes[i]) {
            bdrv_quiesce_end(nodes[i]);
        }
    }
    for (int i = n - 1; i >= 0; i--) {
        if (nodes[i]) {
            bdrv_co_unref(nodes[i]);
        }
    }
}

int coroutine_fn bdrv_co_append_overlay(BlockNode *overlay, BlockNode *top,
                                        Error **errp)
{
    GS_CODE();
    BlockNode *nodes[] = { top, overlay };
    bdrv_co_quiesce_nodes_begin(nodes, ARRAY_SIZE(nodes));
    bdrv_graph_wrlock();
    int ret = bdrv_append_overlay_locked(overlay, top, errp);
    bdrv_graph_wrunlock();
    bdrv_co_quiesce_nodes_end(nodes, ARRAY_SIZE(nodes));
    return ret;
}

/* ---- backing edges ---- */

static int check_backing(BlockNode *bs, BlockNode *backing, Error **errp)
    GRAPH_RDLOCK GS
{
    if (!backing) {
        return 0;
    }
    if (!driver_has_backing(bs->drv)) {
        error_setg(errp, "Driver '%s' of node '%s' does not support backing "
                   "files", bs->drv->format_name, bs->node_name);
        return -ENOTSUP;
    }
    if (bdrv_node_reaches(backing, bs)) {
        error_setg(errp, "Making '%s' a backing child of '%s' would create "
                   "a cycle", backing->node_name, bs->node_name);
        return -EINVAL;
    }
    return 0;
}

/* bs had no backing edge: adds one to backing. */
static int add_backing(BlockNode *bs, BlockNode *backing, Error **errp)
    GRAPH_WRLOCK GS
{
    BlockChild *c = bdrv_link_child_noperm(bs, backing, "backing",
                                           BDRV_CHILD_COW);
    int ret = perm_refresh_nodes(&backing, 1, errp);
    if (ret < 0) {
        bdrv_unlink_child_noperm(c);
    }
    return ret;
}

/* Removes bs's backing edge; the old backing gives up the perms it had for
 * bs (dropping perms cannot conflict). */
static void remove_backing(BlockNode *bs) GRAPH_WRLOCK GS
{
    BlockNode *old = bs->backing->node;
    bdrv_unlink_child_noperm(bs->backing);
    perm_refresh_nodes(&old, 1, NULL);
}

int bdrv_set_backing_locked(BlockNode *bs, BlockNode *backing, Error **errp)
{
    GS_CODE();
    BlockNode *old = bs->backing ? bs->backing->node : NULL;
    if (old == backing) {
        return 0;
    }
    if (old && bs->backing->frozen) {
        error_setg(errp, "Cannot change frozen 'backing' link from '%s' to "
                   "'%s'", bs->node_name, old->node_name);
        return -EPERM;
    }
    assert_locked_and_quiesced(__func__, old, backing);
    if (bs->parents && !node_quiesced(bs)) {
        assert_locked_and_quiesced(__func__, bs, NULL);
    }
    int ret = check_backing(bs, backing, errp);
    if (ret < 0) {
        return ret;
    }
    if (old && backing) {
        /* checks the new backing's perms first, then frees the old ones */
        return bdrv_replace_child_node(bs->backing, backing, errp);
    }
    if (backing) {
        return add_backing(bs, backing, errp);
    }
    remove_backing(bs);
    return 0;
}

/* The current backing node of bs (NULL: none), read under the lock. */
static BlockNode *backing_node(BlockNode *bs) GS
{
    bdrv_graph_rdlock_main_loop();
    BlockNode *b = bs->backing ? bs->backing->node : NULL;
    bdrv_graph_rdunlock_main_loop();
    return b;
}

int coroutine_fn bdrv_co_set_backing(BlockNode *bs, BlockNode *backing,
                                     Error **errp)
{
    GS_CODE();
    for (;;) {
        BlockNode *nodes[] = { bs, backing_node(bs), backing };
        bdrv_co_quiesce_nodes_begin(nodes, ARRAY_SIZE(nodes));
        /* Quiescing yields: another command may have changed the edge
         * meanwhile.  Then the section covers the wrong node: again. */
        if (backing_node(bs) != nodes[1]) {
            bdrv_co_quiesce_nodes_end(nodes, ARRAY_SIZE(nodes));
            continue;
        }
        bdrv_graph_wrlock();
        int ret = bdrv_set_backing_locked(bs, backing, errp);
        bdrv_graph_wrunlock();
        bdrv_co_quiesce_nodes_end(nodes, ARRAY_SIZE(nodes));
        return ret;
    }
}

/* ---- a job's filter above a node (mirror-top) ---- */

static int check_filter(BlockNode *filter, BlockNode *bs, Error **errp)
    GRAPH_RDLOCK GS
{
    if (filter->parents || filter->children) {
        error_setg(errp, "The filter node '%s' is already in use",
                   filter->node_name);
        return -EBUSY;
    }
    if (filter == bs) {
        error_setg(errp, "Cannot insert '%s' above itself", bs->node_name);
        return -EINVAL;
    }
    return 0;
}

int bdrv_insert_filter_locked(BlockNode *filter, BlockNode *bs, Error **errp)
{
    GS_CODE();
    assert_locked_and_quiesced(__func__, filter, bs);
    int ret = check_filter(filter, bs, errp);
    if (ret < 0) {
        return ret;
    }
    /* What a filter shows of its child, before any parent can see it: a
     * parent's getattr-style reads of the length do not wait for the
     * graph lock. */
    snprintf(filter->filename, sizeof(filter->filename), "%s", bs->filename);
    atomic_store(&filter->length, bdrv_getlength(bs));
    /* a filter sees write-unchanged (io.c masks it again below) */
    filter->supported_write_flags = bs->supported_write_flags |
                                    BDRV_REQ_WRITE_UNCHANGED;
    filter->supported_zero_flags = bs->supported_zero_flags;
    /* bs's parents first, so that the file edge is bs's only parent */
    bdrv_move_parents_noperm(bs, filter);
    BlockChild *file = bdrv_link_child_noperm(filter, bs, "file",
                                              BDRV_CHILD_FILTERED |
                                              BDRV_CHILD_PRIMARY);
    BlockNode *touched[] = { filter, bs };
    ret = perm_refresh_nodes(touched, ARRAY_SIZE(touched), errp);
    if (ret < 0) {
        bdrv_unlink_child_noperm(file);
        bdrv_move_parents_noperm(filter, bs);
        return ret;
    }
    bdrv_refresh_limits_node(filter);
    return 0;
}

int bdrv_remove_filter_locked(BlockNode *filter, BlockNode *to, Error **errp)
{
    GS_CODE();
    if (!filter->file) {
        abort();                /* not an inserted filter */
    }
    BlockNode *child = filter->file->node;
    assert_locked_and_quiesced(__func__, filter, child);
    assert_locked_and_quiesced(__func__, to, NULL);
    if (to != child && bdrv_node_reaches(to, filter)) {
        error_setg(errp, "Making '%s' replace '%s' would create a cycle",
                   to->node_name, filter->node_name);
        return -EINVAL;
    }
    /* The edges that move, remembered: when to is filter's own child,
     * moving back "every parent of to" would take the file edge too. */
    int n = 0;
    for (BlockChild *c = filter->parents; c; c = c->next_parent) {
        n++;
    }
    BlockChild **moved = calloc(n ? n : 1, sizeof(*moved));
    if (!moved) {
        error_setg(errp, "Out of memory");
        return -ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        moved[i] = filter->parents;
        bdrv_move_parent_noperm(moved[i], to);
    }
    /* filter has no parents now: its file edge asks for nothing and
     * shares everything — refreshed first, so that to is checked against
     * the new shape */
    BlockNode *touched[] = { filter, to };
    int ret = perm_refresh_nodes(touched, ARRAY_SIZE(touched), errp);
    if (ret < 0) {
        for (int i = 0; i < n; i++) {
            bdrv_move_parent_noperm(moved[i], filter);
        }
    }
    free(moved);
    if (ret < 0) {
        return ret;
    }
    bdrv_unlink_child_noperm(filter->file);
    perm_refresh_nodes(&child, 1, NULL);
    return 0;
}

int coroutine_fn bdrv_co_insert_filter(BlockNode *filter, BlockNode *bs,
                                       Error **errp)
{
    GS_CODE();
    BlockNode *nodes[] = { bs, filter };
    bdrv_co_quiesce_nodes_begin(nodes, ARRAY_SIZE(nodes));
    bdrv_graph_wrlock();
    int ret = bdrv_insert_filter_locked(filter, bs, errp);
    bdrv_graph_wrunlock();
    bdrv_co_quiesce_nodes_end(nodes, ARRAY_SIZE(nodes));
    return ret;
}

int coroutine_fn bdrv_co_remove_filter(BlockNode *filter, BlockNode *to,
                                       Error **errp)
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    BlockNode *child = filter->file ? filter->file->node : NULL;
    bdrv_graph_rdunlock_main_loop();
    BlockNode *nodes[] = { child, filter, to == child ? NULL : to };
    bdrv_co_quiesce_nodes_begin(nodes, ARRAY_SIZE(nodes));
    bdrv_graph_wrlock();
    int ret = bdrv_remove_filter_locked(filter, to, errp);
    bdrv_graph_wrunlock();
    bdrv_co_quiesce_nodes_end(nodes, ARRAY_SIZE(nodes));
    return ret;
}
