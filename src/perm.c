/*
 * perm.c — permissions on edges: parents ask, siblings may refuse.
 *
 * A parent takes `perm` on an edge and shares `shared_perm` with the other
 * parents of the same child.  A node's cumulative permissions are the union
 * of what its parents take and the intersection of what they share; every
 * parent must share what each other parent takes.  A node needs permissions
 * on its own children according to what its parents take on it
 * (driver->child_perm, or the default below), so a change at one edge ripples
 * down the subtree.
 *
 * A change is a transaction: (1) prepare — rewrite the edge perms of the
 * subtree top-down, checking every node for conflicts and read-only-ness,
 * logging the old values; (2) apply — call driver->set_perm on each node
 * whose cumulative perms changed (the file driver takes its image locks
 * here); (3) commit — remember the new cumulative perms.  A failure in (1)
 * or (2) rolls back the log and re-applies the old perms to the nodes already
 * changed, so on error nothing is different.
 *
 * All GS: main thread, global lock, graph read lock (edges are only read
 * here, apart from their perm fields which only GS code touches).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "graph-internal.h"

const char *blk_perm_names(uint64_t perm)
{
    static const char *const names[] = {
        "consistent read", "write", "write unchanged", "resize",
    };
    static __thread char buf[128];
    buf[0] = '\0';
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (perm & (1u << i)) {
            if (buf[0]) {
                strcat(buf, ", ");
            }
            strcat(buf, names[i]);
        }
    }
    return buf;
}

const char *bdrv_child_user_name(BlockChild *c)
{
    static char buf[256];
    GS_CODE();
    if (c->parent_node) {
        snprintf(buf, sizeof(buf), "node '%s'", c->parent_node->node_name);
        return buf;
    }
    if (c->klass && c->klass->get_name) {
        return c->klass->get_name(c);
    }
    return "a block user";
}

/* The default needs of a node on a child (driver->child_perm == NULL). */
static void default_child_perm(BlockNode *bs, BdrvChildRole role,
                               uint64_t perm, uint64_t shared,
                               uint64_t *nperm, uint64_t *nshared)
{
    if (role & BDRV_CHILD_COW) {
        /* A backing file is only read, and others may do what they like. */
        *nperm = BLK_PERM_CONSISTENT_READ;
        *nshared = BLK_PERM_ALL;
        return;
    }
    /* Formats and filters pass their parents' needs through. */
    *nperm = perm | BLK_PERM_CONSISTENT_READ;
    *nshared = shared;
    if (role & BDRV_CHILD_METADATA) {
        /* Metadata is updated even when no parent writes, and nobody else
         * may write or resize it under the format. */
        if (!bs->read_only) {
            *nperm |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
        }
        *nshared &= ~(uint64_t)(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    }
}

/* Cumulative perms of bs from its parents' edges. */
static void node_cumulative(BlockNode *bs, uint64_t *perm, uint64_t *shared)
    GRAPH_RDLOCK
{
    *perm = 0;
    *shared = BLK_PERM_ALL;
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        *perm |= c->perm;
        *shared &= c->shared_perm;
    }
}

void perm_for_child(BlockNode *parent, BlockChild *c,
                    uint64_t *perm, uint64_t *shared)
{
    GS_CODE();
    uint64_t p, s;
    node_cumulative(parent, &p, &s);
    if (parent->drv->child_perm) {
        parent->drv->child_perm(parent, c, c->role, p, s, perm, shared);
    } else {
        default_child_perm(parent, c->role, p, s, perm, shared);
    }
    if (node_state(parent)->force_share) {
        *shared = BLK_PERM_ALL;
    }
}

/* Every parent of bs must share what each other parent takes. */
static int check_parents(BlockNode *bs, Error **errp) GRAPH_RDLOCK GS
{
    for (BlockChild *a = bs->parents; a; a = a->next_parent) {
        for (BlockChild *b = bs->parents; b; b = b->next_parent) {
            uint64_t refused = a->perm & ~b->shared_perm;
            if (a == b || !refused) {
                continue;
            }
            char *wanted = strdup(bdrv_child_user_name(a));
            error_setg(errp, "Conflicts with use by %s as '%s', which does "
                       "not allow '%s' on %s (wanted by %s as '%s')",
                       bdrv_child_user_name(b), b->name,
                       blk_perm_names(refused), bs->node_name, wanted, a->name);
            free(wanted);
            return -EPERM;
        }
    }
    uint64_t perm, shared;
    node_cumulative(bs, &perm, &shared);
    if (bs->read_only && (perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED |
                                  BLK_PERM_RESIZE))) {
        error_setg(errp, "Block node is read-only");
        return -EACCES;
    }
    return 0;
}

/* The transaction log. */
typedef struct PermTx {
    struct { BlockChild *c; uint64_t perm, shared; } *edges;
    int nedges, edges_alloc;
    struct { BlockNode *bs; bool applied; } *nodes;
    int nnodes, nodes_alloc;
} PermTx;

static void *grow(void *arr, int *alloc, int n, size_t elem)
{
    if (n < *alloc) {
        return arr;
    }
    *alloc = *alloc ? *alloc * 2 : 8;
    arr = realloc(arr, *alloc * elem);
    if (!arr) {
        abort();
    }
    return arr;
}

static void tx_set_edge(PermTx *tx, BlockChild *c, uint64_t perm, uint64_t shared)
{
    tx->edges = grow(tx->edges, &tx->edges_alloc, tx->nedges, sizeof(*tx->edges));
    tx->edges[tx->nedges].c = c;
    tx->edges[tx->nedges].perm = c->perm;
    tx->edges[tx->nedges].shared = c->shared_perm;
    tx->nedges++;
    c->perm = perm;
    c->shared_perm = shared;
}

static void tx_add_node(PermTx *tx, BlockNode *bs)
{
    for (int i = 0; i < tx->nnodes; i++) {
        if (tx->nodes[i].bs == bs) {
            return;
        }
    }
    tx->nodes = grow(tx->nodes, &tx->nodes_alloc, tx->nnodes, sizeof(*tx->nodes));
    tx->nodes[tx->nnodes].bs = bs;
    tx->nodes[tx->nnodes].applied = false;
    tx->nnodes++;
}

/* Phase 1 for bs and below: check, and rewrite the child edges. */
static int tx_prepare_node(PermTx *tx, BlockNode *bs, Error **errp)
    GRAPH_RDLOCK GS
{
    int ret = check_parents(bs, errp);
    if (ret < 0) {
        return ret;
    }
    tx_add_node(tx, bs);
    for (BlockChild *c = bs->children; c; c = c->next_child) {
        uint64_t perm, shared;
        perm_for_child(bs, c, &perm, &shared);
        if (perm == c->perm && shared == c->shared_perm) {
            continue;
        }
        tx_set_edge(tx, c, perm, shared);
        ret = tx_prepare_node(tx, c->node, errp);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int node_apply(BlockNode *bs, uint64_t perm, uint64_t shared, Error **errp)
    GS
{
    if (!bs->drv->set_perm) {
        return 0;
    }
    return bs->drv->set_perm(bs, perm, shared, errp);
}

/* Phase 2: tell the drivers. */
static int tx_apply(PermTx *tx, Error **errp) GRAPH_RDLOCK GS
{
    for (int i = 0; i < tx->nnodes; i++) {
        BlockNode *bs = tx->nodes[i].bs;
        uint64_t perm, shared;
        node_cumulative(bs, &perm, &shared);
        if (perm == (uint64_t)bs->open_perm && shared == (uint64_t)bs->open_shared) {
            continue;
        }
        int ret = node_apply(bs, perm, shared, errp);
        if (ret < 0) {
            return ret;         /* the driver's message names the image */
        }
        tx->nodes[i].applied = true;
    }
    return 0;
}

static void tx_abort(PermTx *tx) GRAPH_RDLOCK GS
{
    for (int i = tx->nedges - 1; i >= 0; i--) {
        tx->edges[i].c->perm = tx->edges[i].perm;
        tx->edges[i].c->shared_perm = tx->edges[i].shared;
    }
    for (int i = 0; i < tx->nnodes; i++) {
        BlockNode *bs = tx->nodes[i].bs;
        if (tx->nodes[i].applied) {
            /* Going back to what was granted before cannot conflict. */
            node_apply(bs, bs->open_perm, bs->open_shared, NULL);
        }
    }
}

static void tx_commit(PermTx *tx) GRAPH_RDLOCK GS
{
    for (int i = 0; i < tx->nnodes; i++) {
        BlockNode *bs = tx->nodes[i].bs;
        uint64_t perm, shared;
        node_cumulative(bs, &perm, &shared);
        bs->open_perm = (int)perm;
        bs->open_shared = (int)shared;
    }
}

static void tx_free(PermTx *tx)
{
    free(tx->edges);
    free(tx->nodes);
}

int perm_refresh_node(BlockNode *bs, Error **errp)
{
    GS_CODE();
    return perm_refresh_nodes(&bs, 1, errp);
}

int perm_refresh_nodes(BlockNode *const *nodes, int n, Error **errp)
{
    GS_CODE();
    PermTx tx = { 0 };
    int ret = 0;
    for (int i = 0; i < n && ret == 0; i++) {
        ret = tx_prepare_node(&tx, nodes[i], errp);
    }
    if (ret == 0) {
        ret = tx_apply(&tx, errp);
    }
    if (ret < 0) {
        tx_abort(&tx);
    } else {
        tx_commit(&tx);
    }
    tx_free(&tx);
    return ret;
}

int bdrv_child_set_perm(BlockChild *c, uint64_t perm, uint64_t shared,
                        Error **errp)
{
    GS_CODE();
    uint64_t old_perm = c->perm, old_shared = c->shared_perm;
    bdrv_graph_rdlock_main_loop();
    c->perm = perm;
    c->shared_perm = shared;
    int ret = perm_refresh_node(c->node, errp);
    if (ret < 0) {
        c->perm = old_perm;
        c->shared_perm = old_shared;
    }
    bdrv_graph_rdunlock_main_loop();
    return ret;
}

int bdrv_refresh_perms(BlockNode *bs, Error **errp)
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    int ret = perm_refresh_node(bs, errp);
    bdrv_graph_rdunlock_main_loop();
    return ret;
}
