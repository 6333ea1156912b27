/*
 * graph-internal.h — private interfaces between the graph core's files
 * (graph.c, perm.c, quiesce.c, graph-lock.c, io.c, backend.c, blockdev.c,
 * options.c).  Not for drivers, exports or jobs.
 */
#ifndef DISKSTACK_GRAPH_INTERNAL_H
#define DISKSTACK_GRAPH_INTERNAL_H

#include <pthread.h>
#include "block-gs.h"
#include "block-io.h"
#include "driver.h"

typedef struct TrackedReq TrackedReq;

/*
 * The core's per-node state, around the public BlockNode (graph.c allocates
 * every node as a NodeState; node_state() gets back to it).
 */
typedef struct NodeState {
    BlockNode bs;
    bool monitor_owned;      /* GS: opened by blockdev-add, not nested */
    int open_depth;          /* GS: nesting level of its definition (0: top) */
    BlockNode *opening_parent; /* GS: whose open opens it, while it opens */
    bool no_flush;           /* cache.no-flush: flush does not reach the driver */
    bool force_share;        /* force-share: share everything on children */
    bool discard_unmap;      /* discard=unmap: discards and MAY_UNMAP pass on */
    int detect_zeroes;       /* DETECT_ZEROES_*: all-zero writes become zeroes */
    /* io.c: writes in flight on a node with request_alignment > 1, in
     * arrival order, so that read-modify-write cycles are serialised. */
    pthread_mutex_t req_lock;
    TrackedReq *tracked_head, *tracked_tail;
    _Atomic int serialising;   /* read-modify-writes in progress */
    _Atomic int fast_writes;   /* aligned writes in flight outside the list */
    CoMutex truncate_lock;   /* io.c: one resize at a time per node */
} NodeState;

enum { DETECT_ZEROES_OFF, DETECT_ZEROES_ON, DETECT_ZEROES_UNMAP };

/* Both (graph read lock): true if target is bs itself or below it through
 * any edge — the loop check of every edge change. */
bool bdrv_node_reaches(BlockNode *bs, BlockNode *target) GRAPH_RDLOCK;

/* GS: sets the I/O-path options of a node (cache.no-flush, discard,
 * detect-zeroes) from its definition; at open and at reopen commit. */
void node_apply_io_options(NodeState *ns, json_t *opts);
/* GS: limits inherited from the primary child, then refined by the
 * driver; at open and after a reopen or edge change. */
void bdrv_refresh_limits_node(BlockNode *bs) GRAPH_RDLOCK GS;

static inline NodeState *node_state(BlockNode *bs)
{
    return container_of(bs, NodeState, bs);
}

/* graph.c — the driver registry is written only at start-up (block_init),
 * so reading it is legal anywhere afterwards. */
const BlockDriver *driver_lookup(const char *name);

/* graph.c: attach an edge from a parent that is not a node (a backend, a
 * job).  The edge takes a reference on child.  Checks permissions. */
BlockChild *bdrv_root_attach_child(BlockNode *child, const char *name,
                                   BdrvChildRole role,
                                   const BlockChildClass *klass, void *opaque,
                                   uint64_t perm, uint64_t shared,
                                   Error **errp) GS;
/* graph.c: detaches any edge (node or root parent), drops its permissions
 * and the reference it held. */
void coroutine_fn bdrv_co_detach_child(BlockChild *c) GS;

/*
 * graph.c, for graph-change.c: edge changes inside a section the caller
 * holds.  All need the graph write lock, the nodes whose edges change
 * quiesced, and a reference of the caller's on every node involved; none
 * refreshes permissions (the caller runs one perm_refresh_nodes() for the
 * whole change and undoes the edges if it fails).
 */
/* Links a new edge parent -> child with the perms perm_for_child() gives;
 * the edge takes a reference on child. */
BlockChild *bdrv_link_child_noperm(BlockNode *parent, BlockNode *child,
                                   const char *name, BdrvChildRole role)
    GRAPH_WRLOCK GS;
/* Unlinks and frees c, dropping its reference (never the last one). */
void bdrv_unlink_child_noperm(BlockChild *c) GRAPH_WRLOCK GS;
/* Moves every parent edge of from (nodes, backends, jobs) to to; each edge
 * keeps its perms, follows to's quiesced sections and moves its reference. */
void bdrv_move_parents_noperm(BlockNode *from, BlockNode *to) GRAPH_WRLOCK GS;
/* Moves the one parent edge c (its node, backend or job) to to. */
void bdrv_move_parent_noperm(BlockChild *c, BlockNode *to) GRAPH_WRLOCK GS;

/* perm.c: after the parents of bs changed their perms, recomputes and
 * applies the perms of every edge below bs, calling drivers' set_perm.
 * On failure everything below bs is as it was. */
int perm_refresh_node(BlockNode *bs, Error **errp) GRAPH_RDLOCK GS;
/* perm.c: perm_refresh_node() for several nodes in one transaction (a
 * graph change that touched them all): on failure all are as they were. */
int perm_refresh_nodes(BlockNode *const *nodes, int n, Error **errp)
    GRAPH_RDLOCK GS;
/* perm.c: what a node parent takes and shares on child edge c. */
void perm_for_child(BlockNode *parent, BlockChild *c,
                    uint64_t *perm, uint64_t *shared) GRAPH_RDLOCK GS;

/* quiesce.c: a waiter for "the requests I wait on have completed". */
/* Thread-safe, cheap when nobody waits: called by io.c and backend.c
 * whenever an in-flight counter drops to zero. */
void bdrv_notify_idle(void);
/* Yields until cond(opaque) is true; re-checked after every notification.
 * I/O or GS, any coroutine. */
void coroutine_fn wait_until_idle(bool (*cond)(void *opaque), void *opaque);
/* quiesce.c: a new edge below a quiesced node inherits its sections; a
 * removed edge gives them back. */
void bdrv_parent_quiesce_begin_one(BlockChild *c) GRAPH_RDLOCK GS;
void bdrv_parent_quiesce_end_one(BlockChild *c) GRAPH_RDLOCK GS;
/* quiesce.c: how many sections of bs reach its parents: the count every
 * parent edge of bs must have (its parent_quiesced) — quiesce_counter, less
 * at a barrier node the sections from below that stopped there. */
int bdrv_parent_sections(BlockNode *bs) GRAPH_RDLOCK GS;

/* graph-lock.c */
bool graph_wrlock_held(void);

/* io.c: in-flight accounting of a node (thread-safe).  A filter that holds
 * requests in a queue of its own may uncount them while they wait. */
void bdrv_inc_in_flight(BlockNode *bs);
void bdrv_dec_in_flight(BlockNode *bs);

/* backend.c, for tests: fn(opaque) runs (on the requesting thread) each time
 * a request is held because the backend is quiesced. */
void blk_set_hold_notifier(BlockBackend *blk, void (*fn)(void *), void *opaque);



/* blockdev.c: dotted-key access to definitions ("cache.direct").  Pure. */
json_t *opt_lookup(json_t *opts, const char *dotted);
/* Sets a dotted key, creating nested objects; steals val. */
void opt_set(json_t *opts, const char *dotted, json_t *val);
/* Copies the options a nested child definition inherits from its parent's
 * (read-only, auto-read-only, cache.direct, cache.no-flush) unless the
 * child sets them itself. */
void opts_inherit(json_t *child_def, json_t *parent_opts);
#endif
