/*
 * backend.c — how an export or a job holds a root node.
 *
 * A backend owns one "root" edge to a node.  Its requests (blk_co_*) take
 * the graph read lock for their trip, are counted in the backend's own
 * in_flight counter, and go to io.c on the root edge.
 *
 * While the backend is quiesced (a quiesced section of its root or of a node
 * below reached it through the BlockChildClass below), new requests are
 * held before they are counted and released when the last section ends.
 * The hold list is a mutex-protected list of coroutines rather than a
 * CoQueue because the release runs in GS code outside any coroutine (a
 * CoQueue needs a CoMutex to close the race between "check the counter" and
 * "enqueue"); each held coroutine is woken with co_wake(), which schedules
 * it on its own IOThread.
 *
 * blk_co_drain (DESIGN rule 2, meaning 1) waits for this backend's
 * in-flight requests, including those waiting in filters below, without
 * stopping new ones.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "graph-internal.h"

typedef struct HeldReq {
    Coroutine *co;
    struct HeldReq *next;
} HeldReq;

struct BlockBackend {
    char *name;
    uint64_t perm, shared_perm;      /* GS */
    BlockChild *root;                /* GS writes while quiesced; I/O reads */
    int refcnt;                      /* GS */
    const BlockBackendOps *ops;
    void *ops_opaque;

    _Atomic int in_flight;
    pthread_mutex_t hold_lock;       /* guards held, and writes of the counter */
    _Atomic int quiesce_counter;     /* read without the lock on the fast path */
    HeldReq *held;
    void (*hold_notify)(void *);     /* tests */
    void *hold_notify_opaque;
};

/* ---- the parent class of the root edge (all GS) ---- */

static const char *blk_child_get_name(BlockChild *c)
{
    static char buf[256];
    BlockBackend *blk = c->parent_opaque;
    const char *kind = blk->ops && blk->ops->user_kind ? blk->ops->user_kind
                                                       : "export";
    snprintf(buf, sizeof(buf), "%s '%s'", kind, blk->name);
    return buf;
}

static void blk_quiesce_begin_locked(BlockBackend *blk)
{
    pthread_mutex_lock(&blk->hold_lock);
    blk->quiesce_counter++;
    pthread_mutex_unlock(&blk->hold_lock);
}

/* Ends one section; the last one releases the held requests. */
static void blk_quiesce_end_locked(BlockBackend *blk)
{
    pthread_mutex_lock(&blk->hold_lock);
    HeldReq *held = NULL;
    if (--blk->quiesce_counter == 0) {
        held = blk->held;
        blk->held = NULL;
    }
    pthread_mutex_unlock(&blk->hold_lock);
    while (held) {
        HeldReq *next = held->next;  /* lives on the held coroutine's stack */
        co_wake(held->co);
        held = next;
    }
}

static void blk_child_quiesce_begin(BlockChild *c) GS
{
    BlockBackend *blk = c->parent_opaque;

    blk_quiesce_begin_locked(blk);
    if (blk->ops && blk->ops->quiesce_begin) {
        blk->ops->quiesce_begin(blk->ops_opaque);
    }
}

static void blk_child_quiesce_end(BlockChild *c) GS
{
    BlockBackend *blk = c->parent_opaque;

    if (blk->ops && blk->ops->quiesce_end) {
        blk->ops->quiesce_end(blk->ops_opaque);
    }
    blk_quiesce_end_locked(blk);
}

static bool blk_child_has_in_flight(BlockChild *c)
{
    BlockBackend *blk = c->parent_opaque;
    return atomic_load(&blk->in_flight) > 0;
}

static void blk_child_resize(BlockChild *c)
{
    BlockBackend *blk = c->parent_opaque;
    if (blk->ops && blk->ops->resize) {
        blk->ops->resize(blk->ops_opaque);
    }
}

static bool blk_child_stay_at_node(BlockChild *c)
{
    BlockBackend *blk = c->parent_opaque;
    return blk->ops && blk->ops->stay_at_node;
}

static const BlockChildClass backend_child_class = {
    .get_name = blk_child_get_name,
    .quiesce_begin = blk_child_quiesce_begin,
    .quiesce_end = blk_child_quiesce_end,
    .has_in_flight = blk_child_has_in_flight,
    .resize = blk_child_resize,
    .stay_at_node = blk_child_stay_at_node,
};

/* ---- GS API ---- */

BlockBackend *blk_of_child(BlockChild *c)
{
    GS_CODE();
    return c->klass == &backend_child_class ? c->parent_opaque : NULL;
}

BlockBackend *blk_new(const char *name, uint64_t perm, uint64_t shared_perm)
{
    GS_CODE();
    BlockBackend *blk = calloc(1, sizeof(*blk));
    if (!blk || !(blk->name = strdup(name ? name : ""))) {
        abort();
    }
    blk->perm = perm;
    blk->shared_perm = shared_perm;
    blk->refcnt = 1;
    pthread_mutex_init(&blk->hold_lock, NULL);
    return blk;
}

const char *blk_name(const BlockBackend *blk)
{
    return blk->name;
}

BlockNode *blk_node(BlockBackend *blk)
{
    GS_CODE();
    if (!blk->root) {
        return NULL;
    }
    bdrv_graph_rdlock_main_loop();
    BlockNode *bs = blk->root->node;
    bdrv_graph_rdunlock_main_loop();
    return bs;
}

int blk_insert_node(BlockBackend *blk, BlockNode *bs, Error **errp)
{
    GS_CODE();
    if (blk->root) {
        error_setg(errp, "Export '%s' already has a node", blk->name);
        return -EBUSY;
    }
    blk->root = bdrv_root_attach_child(bs, "root",
                                       BDRV_CHILD_DATA | BDRV_CHILD_PRIMARY,
                                       &backend_child_class, blk,
                                       blk->perm, blk->shared_perm, errp);
    return blk->root ? 0 : -EPERM;
}

/*
 * Holds new requests (a section of the backend's own), waits for the ones
 * in flight, detaches, and lets the held requests go: they find no root and
 * fail with -ENOMEDIUM.
 */
void coroutine_fn blk_co_remove_node(BlockBackend *blk)
{
    GS_CODE();
    if (!blk->root) {
        return;
    }
    blk_quiesce_begin_locked(blk);
    blk_co_drain(blk);
    BlockChild *root = blk->root;
    blk->root = NULL;
    bdrv_co_detach_child(root);
    blk_quiesce_end_locked(blk);
}

void coroutine_fn blk_co_unref(BlockBackend *blk)
{
    GS_CODE();
    if (!blk || --blk->refcnt > 0) {
        return;
    }
    blk_co_remove_node(blk);
    pthread_mutex_destroy(&blk->hold_lock);
    free(blk->name);
    free(blk);
}

int blk_set_perm(BlockBackend *blk, uint64_t perm, uint64_t shared, Error **errp)
{
    GS_CODE();
    if (blk->root) {
        int ret = bdrv_child_set_perm(blk->root, perm, shared, errp);
        if (ret < 0) {
            return ret;
        }
    }
    blk->perm = perm;
    blk->shared_perm = shared;
    return 0;
}

void blk_set_ops(BlockBackend *blk, const BlockBackendOps *ops, void *opaque)
{
    GS_CODE();
    blk->ops = ops;
    blk->ops_opaque = opaque;
}

void blk_set_hold_notifier(BlockBackend *blk, void (*fn)(void *), void *opaque)
{
    blk->hold_notify = fn;
    blk->hold_notify_opaque = opaque;
}

/* ---- I/O ---- */

static void blk_dec_in_flight(BlockBackend *blk)
{
    if (atomic_fetch_sub(&blk->in_flight, 1) == 1) {
        bdrv_notify_idle();
    }
}

/* Waits while quiesced; true if it had to wait. */
static bool coroutine_fn blk_wait_unquiesced(BlockBackend *blk)
{
    pthread_mutex_lock(&blk->hold_lock);
    if (blk->quiesce_counter == 0) {
        pthread_mutex_unlock(&blk->hold_lock);
        return false;
    }
    HeldReq h = { .co = co_self(), .next = blk->held };
    blk->held = &h;
    pthread_mutex_unlock(&blk->hold_lock);
    if (blk->hold_notify) {
        blk->hold_notify(blk->hold_notify_opaque);
    }
    co_yield();                 /* woken by the last quiesce end */
    return true;
}

/*
 * Counts the request first, then checks for a section: a quiescing waiter
 * that raised the counter either sees this request in flight, or this
 * request sees the counter and steps back out (un-counting, which wakes the
 * waiter) to wait.  Both sides use sequentially consistent atomics, so the
 * common case costs no lock; blk_wait_unquiesced() re-checks under it.
 */
static void coroutine_fn blk_enter(BlockBackend *blk)
{
    for (;;) {
        atomic_fetch_add(&blk->in_flight, 1);
        if (atomic_load(&blk->quiesce_counter) == 0) {
            return;
        }
        blk_dec_in_flight(blk);
        blk_wait_unquiesced(blk);
    }
}

/* The root edge of a request that has entered (read under the graph lock:
 * it only changes while the backend is quiesced and drained). */
static BlockChild *blk_root(BlockBackend *blk) GRAPH_RDLOCK
{
    return blk->root;
}

typedef enum { REQ_READ, REQ_WRITE, REQ_ZEROES, REQ_DISCARD } ReqKind;

static int coroutine_fn blk_rw(BlockBackend *blk, ReqKind kind, int64_t offset,
                               int64_t bytes, IOVector *qiov,
                               BdrvRequestFlags flags)
{
    blk_enter(blk);
    bdrv_graph_co_rdlock();
    BlockChild *root = blk_root(blk);
    int ret;
    if (!root) {
        ret = -ENOMEDIUM;
    } else if (kind == REQ_READ) {
        ret = bdrv_co_preadv(root, offset, bytes, qiov, 0, flags);
    } else if (kind == REQ_WRITE) {
        ret = bdrv_co_pwritev(root, offset, bytes, qiov, 0, flags);
    } else if (kind == REQ_ZEROES) {
        ret = bdrv_co_pwrite_zeroes(root, offset, bytes, flags);
    } else {
        ret = bdrv_co_pdiscard(root, offset, bytes);
    }
    bdrv_graph_co_rdunlock();
    blk_dec_in_flight(blk);
    return ret;
}

int coroutine_fn blk_co_preadv(BlockBackend *blk, int64_t offset, int64_t bytes,
                               IOVector *qiov, BdrvRequestFlags flags)
{
    return blk_rw(blk, REQ_READ, offset, bytes, qiov, flags);
}

int coroutine_fn blk_co_pwritev(BlockBackend *blk, int64_t offset, int64_t bytes,
                                IOVector *qiov, BdrvRequestFlags flags)
{
    return blk_rw(blk, REQ_WRITE, offset, bytes, qiov, flags);
}

int coroutine_fn blk_co_pwrite_zeroes(BlockBackend *blk, int64_t offset,
                                      int64_t bytes, BdrvRequestFlags flags)
{
    return blk_rw(blk, REQ_ZEROES, offset, bytes, NULL, flags);
}

int coroutine_fn blk_co_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes)
{
    return blk_rw(blk, REQ_DISCARD, offset, bytes, NULL, 0);
}

int coroutine_fn blk_co_flush(BlockBackend *blk)
{
    blk_enter(blk);
    bdrv_graph_co_rdlock();
    BlockChild *root = blk_root(blk);
    int ret = root ? bdrv_co_flush(root->node) : -ENOMEDIUM;
    bdrv_graph_co_rdunlock();
    blk_dec_in_flight(blk);
    return ret;
}

int coroutine_fn blk_co_block_status(BlockBackend *blk, int64_t offset,
                                     int64_t bytes, int64_t *pnum)
{
    blk_enter(blk);
    bdrv_graph_co_rdlock();
    BlockChild *root = blk_root(blk);
    int ret = -ENOMEDIUM;
    if (root) {
        ret = bdrv_co_block_status(root->node, true, offset, bytes, pnum,
                                   NULL, NULL);
    }
    bdrv_graph_co_rdunlock();
    blk_dec_in_flight(blk);
    return ret;
}

int coroutine_fn blk_co_truncate(BlockBackend *blk, int64_t offset, bool exact,
                                 Error **errp)
{
    blk_enter(blk);
    bdrv_graph_co_rdlock();
    BlockChild *root = blk_root(blk);
    int ret;
    if (root) {
        ret = bdrv_co_truncate(root, offset, exact, errp);
    } else {
        error_setg(errp, "Export '%s' has no node", blk->name);
        ret = -ENOMEDIUM;
    }
    bdrv_graph_co_rdunlock();
    blk_dec_in_flight(blk);
    return ret;
}

/* The root node, for the I/O-or-GS getters below. */
static BlockNode *blk_root_node(BlockBackend *blk) GRAPH_RDLOCK
{
    /* Not inside a request: a graph change may be moving the root edge to
     * another node right now (see link_parent() in graph.c). */
    return blk->root ? __atomic_load_n(&blk->root->node, __ATOMIC_ACQUIRE) : NULL;
}

/* I/O or GS: a request coroutine takes the read side; GS code outside a
 * coroutine holds the global lock, which already excludes graph writers. */
static BlockNode *blk_root_node_any(BlockBackend *blk)
{
    BlockNode *bs;
    if (in_coroutine()) {
        bdrv_graph_co_rdlock();
        bs = blk_root_node(blk);
        bdrv_graph_co_rdunlock();
    } else {
        global_lock_assert_held();
        bdrv_graph_rdlock_main_loop();
        bs = blk_root_node(blk);
        bdrv_graph_rdunlock_main_loop();
    }
    return bs;
}

int64_t blk_getlength(BlockBackend *blk)
{
    BlockNode *bs = blk_root_node_any(blk);
    return bs ? bdrv_getlength(bs) : -ENOMEDIUM;
}

bool blk_is_read_only(BlockBackend *blk)
{
    return !(blk->perm & BLK_PERM_WRITE);
}

const BlockLimits *blk_limits(BlockBackend *blk)
{
    static const BlockLimits none = { .request_alignment = 1 };
    BlockNode *bs = blk_root_node_any(blk);
    return bs ? &bs->bl : &none;
}

static bool blk_idle(void *opaque)
{
    BlockBackend *blk = opaque;
    return atomic_load(&blk->in_flight) == 0;
}

void coroutine_fn blk_co_drain(BlockBackend *blk)
{
    wait_until_idle(blk_idle, blk);
}
