/*
 * block-gs.h — the global-state half of the block layer.
 *
 * Everything here is GS code: main thread, global lock held (REQUIRES
 * (global_lock), checked by clang and by GS_CODE() at run time).  GS code
 * may change the graph, open and close nodes, and call I/O functions in
 * block-io.h (holding the graph read lock).  I/O code may not call anything
 * here.
 *
 * Graph changes follow "prepare all, commit or abort, then free": check
 * permissions for the new shape first, change edges only inside a quiesced
 * section of the nodes touched (with the graph write lock), and free the old
 * shape last.  A failed change leaves the graph as it was.
 */
#ifndef DISKSTACK_BLOCK_GS_H
#define DISKSTACK_BLOCK_GS_H

#include "block-common.h"

/* Registers the built-in drivers.  Once, at start-up. */
void block_init(void) GS;
void bdrv_register(const BlockDriver *drv) GS;
const BlockDriver *bdrv_find_driver(const char *name) GS;
/* How many leading bytes bdrv_co_probe_node() reads. */
#define BDRV_PROBE_BYTES 4096
/* GS: reads the first bytes of node bs (typically a file node opened alone)
 * and returns bdrv_probe_format()'s pick for them; NULL with *errp set when
 * they cannot be read (NULL, *errp untouched, when no buffer is left). */
const BlockDriver *coroutine_fn bdrv_co_probe_node(BlockNode *bs,
                                                   Error **errp) GS;

/*
 * The main thread's way to read the graph: the global lock already excludes
 * writers (only GS code writes), so this only tells the analysis.
 */
void bdrv_graph_rdlock_main_loop(void) ACQUIRE_SHARED(graph_lock) GS;
void bdrv_graph_rdunlock_main_loop(void) RELEASE_SHARED(graph_lock) GS;
/*
 * The write side.  Callers must have quiesced every node whose edges they
 * change (bdrv_co_quiesce_begin); the edge-changing functions assert it.
 */
void bdrv_graph_wrlock(void) ACQUIRE(graph_lock) GS;
void bdrv_graph_wrunlock(void) RELEASE(graph_lock) GS;

/*
 * Opening nodes from definitions (the arguments of QMP blockdev-add, as a
 * JSON object).  Children named by a string are existing nodes; children
 * given as objects are opened recursively.  On error nothing is left open.
 */
BlockNode *coroutine_fn bdrv_co_open_blockdev(json_t *def, Error **errp) GS;
/*
 * For a driver's open callback: opens (or references) the child named `key`
 * in `options` and attaches it with `role`.  Returns NULL with *errp set on
 * failure, or NULL without error when the key is absent and allow_none.
 */
BlockChild *coroutine_fn bdrv_co_open_child(BlockNode *parent, json_t *options,
                                            const char *key, BdrvChildRole role,
                                            bool allow_none, Error **errp) GS;
/*
 * For a driver's open callback: while bs is being opened as a child given
 * by definition (an object, or one a format builds from its metadata), the
 * node whose open is opening it; NULL for a top-level definition and once
 * bs is open.  Walking it up gives the chain of opens in progress above bs
 * (qcow2 uses it to find a backing file that loops back).
 */
BlockNode *bdrv_opening_parent(BlockNode *bs) GS;
/* The identity of the open file under a `file` node (fstat of its fd):
 * 0 and *dev, *ino, or -ENOTSUP if bs is not a file node (protocols/file.c). */
int bdrv_file_identity(BlockNode *bs, uint64_t *dev, uint64_t *ino) GS;
/* Attaches an existing node as a child of parent (checks permissions). */
BlockChild *bdrv_attach_child(BlockNode *parent, BlockNode *child,
                              const char *name, BdrvChildRole role,
                              Error **errp) GS;
/* Detaches and drops the reference the edge held (may close the child). */
void coroutine_fn bdrv_co_unref_child(BlockNode *parent, BlockChild *child) GS;

BlockNode *bdrv_find_node(const char *node_name) GS;
/* Iterates the named nodes: pass NULL to start. */
BlockNode *bdrv_next_node(BlockNode *prev) GS;
void bdrv_ref(BlockNode *bs) GS;
/* Drops a reference; the last one drains and closes the node. */
void coroutine_fn bdrv_co_unref(BlockNode *bs) GS;
/* QMP blockdev-del: refuses a node that has parents or is in use. */
int coroutine_fn bdrv_co_blockdev_del(const char *node_name, Error **errp) GS;
/* The monitor gives up a node bdrv_co_open_blockdev() opened for it: from
 * now on the node lives as long as its parents hold it, and blockdev-del
 * refuses it (QEMU's overlays of blockdev-snapshot-sync).  The caller holds
 * a reference of its own, so this never closes the node. */
void bdrv_monitor_release(BlockNode *bs) GS;
/* Flushes and closes every node (at exit). */
void coroutine_fn bdrv_co_close_all(void) GS;

/*
 * Permissions.  A parent asks for `perm` on an edge and shares
 * `shared_perm`; the other parents of the same node must share everything it
 * takes.  Conflicts are errors naming both users.
 */
int bdrv_child_set_perm(BlockChild *c, uint64_t perm, uint64_t shared,
                        Error **errp) GS;
/* Tells bs's parents that are not nodes (exports, jobs) that its length
 * changed, now.  io.c does it after every resize from a bottom half; GS
 * code that resized a node and answers a client calls it first, so the
 * answer never overtakes the notification (block_resize). */
void bdrv_notify_resized(BlockNode *bs) GS;
/* Recomputes the perms of every edge below bs (after a graph change). */
int bdrv_refresh_perms(BlockNode *bs, Error **errp) GS;
/* A name for the user of an edge: "node 'disk'", "export 'e0'", ... */
const char *bdrv_child_user_name(BlockChild *c) GS;

/*
 * Quiesced sections (DESIGN rule 2, meaning 2).  begin: every parent of bs,
 * up to the backends and jobs, stops sending new requests (backends hold
 * them), then begin waits until the requests in flight in bs and its parents
 * have completed.  Requests held in a filter's queue above bs are not in
 * flight below it and are not flushed.  Sections nest and count.
 */
void coroutine_fn bdrv_co_quiesce_begin(BlockNode *bs) GS;
void bdrv_quiesce_end(BlockNode *bs) GS;
/* Sections of several nodes for one graph change: takes a reference on
 * each node and quiesces it, NULLs skipped (begin); ends them in reverse
 * order, then drops the references — the last may close a node that left
 * the graph (end). */
void coroutine_fn bdrv_co_quiesce_nodes_begin(BlockNode **nodes, int n) GS;
void coroutine_fn bdrv_co_quiesce_nodes_end(BlockNode **nodes, int n) GS;
/* Node drain (meaning 3): only for closing a node or moving it. */
void coroutine_fn bdrv_co_drain_node(BlockNode *bs) GS;

/*
 * Edge changes.  Caller holds the graph write lock inside a quiesced section
 * of the old and new child nodes.  Permissions are checked first; on
 * conflict nothing changes.
 */
int bdrv_replace_child_node(BlockChild *c, BlockNode *new_bs, Error **errp)
    GRAPH_WRLOCK GS;

/*
 * Live graph changes (graph-change.c), for blockdev-snapshot,
 * blockdev-reopen and transaction.
 *
 * The _locked forms change edges only: the caller has quiesced every node
 * they touch (bdrv_co_quiesce_begin) and holds the graph write lock, so that
 * a transaction can quiesce several disks first and change them all at one
 * instant.  On error they leave the graph as it was.  The bdrv_co_ forms
 * quiesce exactly the nodes they touch, take the write lock and call the
 * _locked form.
 */
/* blockdev-snapshot: every parent of top (backends, nodes, jobs) moves to
 * overlay, then top becomes overlay's backing.  overlay must be writable,
 * have no backing edge and no parents; permissions are checked for the new
 * shape before anything changes. */
int bdrv_append_overlay_locked(BlockNode *overlay, BlockNode *top,
                               Error **errp) GRAPH_WRLOCK GS;
int coroutine_fn bdrv_co_append_overlay(BlockNode *overlay, BlockNode *top,
                                        Error **errp) GS;
/* Sets bs's backing edge to backing (NULL removes it); refuses a backing
 * that would make a loop, and a frozen edge (a job's chain: QEMU's "Cannot
 * change frozen 'backing' link from 'x' to 'y'"). */
int bdrv_set_backing_locked(BlockNode *bs, BlockNode *backing,
                            Error **errp) GRAPH_WRLOCK GS;
int coroutine_fn bdrv_co_set_backing(BlockNode *bs, BlockNode *backing,
                                     Error **errp) GS;
/* Undoes a bdrv_append_overlay_locked(overlay, top) of the same section
 * (a transaction whose later action failed): overlay's parents move back to
 * top and its backing edge goes.  Cannot fail. */
void bdrv_remove_overlay_locked(BlockNode *overlay, BlockNode *top)
    GRAPH_WRLOCK GS;

/*
 * Filters a job inserts above a node while it runs (the mirror job's
 * mirror-top) and removes again at its end.
 */
/* GS, coroutine: opens a node of drv, which need not be registered (so a
 * job's own filter is not user-creatable: no blockdev-add), with no
 * children and no options; node_name NULL gives an automatic "#blockNNN"
 * name, as QEMU's implicit nodes have.  The caller holds the one
 * reference; the node is not monitor-owned. */
BlockNode *coroutine_fn bdrv_co_open_internal(const BlockDriver *drv,
                                              const char *node_name,
                                              Error **errp) GS;
/* GS or I/O (graph read lock): is target bs itself or below it through
 * any edge?  (Also in graph-internal.h.) */
bool bdrv_node_reaches(BlockNode *bs, BlockNode *target) GRAPH_RDLOCK;
/* Every parent of bs (backends, nodes, jobs) moves to filter, then bs
 * becomes filter's "file" child (FILTERED | PRIMARY).  filter must have no
 * parents and no children; permissions of the new shape are checked
 * before anything is visible.  On error nothing changes.  Caller: graph
 * write lock, filter and bs quiesced. */
int bdrv_insert_filter_locked(BlockNode *filter, BlockNode *bs, Error **errp)
    GRAPH_WRLOCK GS;
/* The reverse, and the pivot: every parent of filter moves to to (its own
 * "file" child when to is that node, or another node: a mirror's target),
 * then filter's "file" edge goes.  Checks permissions first; on error
 * nothing changes.  Caller: graph write lock, filter, its child and to
 * quiesced. */
int bdrv_remove_filter_locked(BlockNode *filter, BlockNode *to, Error **errp)
    GRAPH_WRLOCK GS;
/* The same, quiescing filter, its child and to itself. */
int coroutine_fn bdrv_co_remove_filter(BlockNode *filter, BlockNode *to,
                                       Error **errp) GS;
int coroutine_fn bdrv_co_insert_filter(BlockNode *filter, BlockNode *bs,
                                       Error **errp) GS;

/*
 * Reopening nodes with new definitions (reopen.c, QMP blockdev-reopen).
 *
 * defs is a JSON array of definitions, each naming an existing node by its
 * "node-name" and giving its whole new definition (options left out go back
 * to their defaults; a child given by the name of its current node is kept,
 * by another node's name is replaced — "file" and "backing" — and "backing":
 * null detaches it).  All nodes are reopened at once: every change is
 * checked and prepared first (drivers' reopen_prepare, edges, permissions),
 * then all are committed, or all are rolled back and the graph is exactly as
 * before.  Quiesces only the nodes reopened and the children they gain or
 * lose.  Errors carry QEMU's messages; a definition error names its element
 * ("Parameter 'options[1].x' is unexpected").
 */
typedef struct BlockReopenState BlockReopenState;   /* driver.h */
int coroutine_fn bdrv_co_reopen_multiple(json_t *defs, Error **errp) GS;
/* Reopens bs alone with its current definition but read-only (or not), its
 * children kept (those it created itself follow it), as QEMU's
 * bdrv_reopen_set_read_only() — e.g. the old top after an external
 * snapshot.  Quiesces what it changes and takes the graph write lock
 * itself: the caller must not hold that lock. */
int coroutine_fn bdrv_co_reopen_set_read_only(BlockNode *bs, bool read_only,
                                              Error **errp) GS;
/* For drivers' reopen_prepare: does the new definition change option key
 * (dotted)?  An option the new definition leaves out is not a change. */
bool bdrv_reopen_option_changed(const BlockReopenState *rs, const char *key) GS;
/* For drivers' reopen_prepare: refuses a change of any of keys (NULL-
 * terminated) with QEMU's "Cannot change the option 'x'". */
int bdrv_reopen_refuse_changes(const BlockReopenState *rs,
                               const char *const *keys, Error **errp) GS;

/*
 * Backends.
 */
typedef struct BlockBackendOps {
    /* What the user is, for messages ("job" gives "job 'NAME'"); NULL:
     * "export". */
    const char *user_kind;
    /* The backend stays on its node when the node's parents move to
     * another (BlockChildClass.stay_at_node): a block job's. */
    bool stay_at_node;
    /* The root's length changed (e.g. another user resized it). */
    void (*resize)(void *opaque);
    /* A quiesced section reached the backend (begin) / ended (end); they
     * nest.  GS, main thread; in flight: the backend's own requests may
     * be.  A job's backend pauses the job at its next pause point
     * (jobs/block-job.c).  Both optional. */
    void (*quiesce_begin)(void *opaque) GS_PTR;
    void (*quiesce_end)(void *opaque) GS_PTR;
} BlockBackendOps;

BlockBackend *blk_new(const char *name, uint64_t perm, uint64_t shared_perm) GS;
/* Attaches bs as the root; fails on a permission conflict. */
int blk_insert_node(BlockBackend *blk, BlockNode *bs, Error **errp) GS;
/* Drains and detaches the root. */
void coroutine_fn blk_co_remove_node(BlockBackend *blk) GS;
void coroutine_fn blk_co_unref(BlockBackend *blk) GS;
BlockNode *blk_node(BlockBackend *blk) GS;
const char *blk_name(const BlockBackend *blk);
int blk_set_perm(BlockBackend *blk, uint64_t perm, uint64_t shared, Error **errp) GS;
void blk_set_ops(BlockBackend *blk, const BlockBackendOps *ops, void *opaque) GS;
/* The backend that is the parent of edge c, or NULL when its parent is a
 * node or a job (x-debug-query-block-graph tells them apart). */
BlockBackend *blk_of_child(BlockChild *c) GS;

/*
 * Driver option helpers for open callbacks: read a typed option from a
 * validated definition, with a default.  The definition has already been
 * checked against the driver's option table (see driver.h).
 */
const char *opt_str(json_t *opts, const char *key, const char *def);
bool opt_bool(json_t *opts, const char *key, bool def);
int64_t opt_int(json_t *opts, const char *key, int64_t def);

#endif
