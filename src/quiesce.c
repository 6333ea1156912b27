/*
 * quiesce.c — quiesced sections and node drain (DESIGN rule 2, meanings 2
 * and 3; backend drain, meaning 1, is blk_co_drain in backend.c).
 *
 * bdrv_co_quiesce_begin(bs) walks up from bs: every node above it gets its
 * quiesce_counter raised, every parent that is not a node (a backend, a job)
 * is told through its class to stop sending new requests.  Then it waits
 * until the requests already inside bs and inside the nodes above it, and
 * those the backends above have in flight, have completed.  Nothing outside
 * that set is touched: a quiesced section on one chain never stops or waits
 * for another chain.
 *
 * Barriers.  A node whose driver has quiesce_barrier (the throttle filter)
 * stops the walk: a section of a node below it raises its quiesce_counter
 * and tells its driver (quiesce_barrier_begin), which then stops
 * dispatching the requests it queues, but its parents are not quiesced —
 * the backend above keeps accepting requests, and they queue in the
 * filter.  At such a node the wait is for in_flight_below() == 0, the
 * requests it has already sent below, not for its in_flight (which counts
 * its queue) nor its parents'.  So a section below a throttle node ends
 * its wait at once, however long the queue, and no limit is exceeded.
 * quiesce_end undoes it symmetrically (quiesce_barrier_end: dispatch
 * resumes at the throttled rate).  A section that starts at the barrier
 * node itself (node drain before close, a change above it) is an ordinary
 * one: the node's queue counts as in flight and drains at its rate.  So
 * whoever quiesces both a barrier node and a node below it must begin with
 * the barrier node (as reopen.c does, reopened node first): begun the
 * other way round, the barrier's queue is held by the first section and
 * the second would wait for it until the first ends.
 *
 * Edges that change inside sections (graph.c: attached, moved, replaced)
 * take the sections that reach them through their new node, which at a
 * barrier node are its own sections only (bdrv_parent_sections()).
 *
 * Waiting is a coroutine yield, never a nested event loop or a poll: the
 * completion path (io.c and backend.c, on any thread) calls
 * bdrv_notify_idle() when an in-flight counter drops to zero, which wakes
 * every waiter so it re-checks its condition.  The notification is a cheap
 * atomic load when nobody waits.
 *
 * Memory order: a request decrements its counter and then reads
 * `nwaiters`; a waiter registers (raising `nwaiters`) and then reads the
 * counters.  Both are sequentially consistent, so either the request sees
 * the waiter and wakes it, or the waiter sees the counter at zero.
 */
#include <pthread.h>
#include <stdlib.h>
#include "graph-internal.h"

typedef struct IdleWaiter {
    CoEvent ev;
    struct IdleWaiter *next;
} IdleWaiter;

static pthread_mutex_t waiters_lock = PTHREAD_MUTEX_INITIALIZER;
static IdleWaiter *waiters;
static _Atomic int nwaiters;

/* I/O or GS, thread-safe. */
void bdrv_notify_idle(void)
{
    if (atomic_load(&nwaiters) == 0) {
        return;
    }
    pthread_mutex_lock(&waiters_lock);
    for (IdleWaiter *w = waiters; w; w = w->next) {
        co_event_set(&w->ev);
    }
    pthread_mutex_unlock(&waiters_lock);
}

static void waiter_add(IdleWaiter *w)
{
    pthread_mutex_lock(&waiters_lock);
    w->next = waiters;
    waiters = w;
    atomic_fetch_add(&nwaiters, 1);
    pthread_mutex_unlock(&waiters_lock);
}

static void waiter_remove(IdleWaiter *w)
{
    pthread_mutex_lock(&waiters_lock);
    for (IdleWaiter **p = &waiters; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    atomic_fetch_sub(&nwaiters, 1);
    pthread_mutex_unlock(&waiters_lock);
}

/* I/O or GS: any coroutine. */
void coroutine_fn wait_until_idle(bool (*cond)(void *opaque), void *opaque)
{
    IdleWaiter w;
    co_event_init(&w.ev);
    waiter_add(&w);
    while (!cond(opaque)) {
        co_event_wait(&w.ev);
        co_event_reset(&w.ev);
    }
    waiter_remove(&w);
}

static void quiesce_up(BlockNode *bs) GRAPH_RDLOCK GS;

/* Both (pure): does a section coming from below stop at bs? */
static bool is_barrier(const BlockNode *bs)
{
    return bs->drv && bs->drv->quiesce_barrier;
}

/* GS: a section from below reaches barrier bs and goes no further. */
static void barrier_begin(BlockNode *bs) GS
{
    GS_CODE();
    atomic_fetch_add(&bs->quiesce_counter, 1);
    if (bs->drv->quiesce_barrier_begin) {
        bs->drv->quiesce_barrier_begin(bs);
    }
}

static void barrier_end(BlockNode *bs) GS
{
    GS_CODE();
    if (bs->drv->quiesce_barrier_end) {
        bs->drv->quiesce_barrier_end(bs);
    }
    if (atomic_fetch_sub(&bs->quiesce_counter, 1) <= 0) {
        abort();
    }
}

void bdrv_parent_quiesce_begin_one(BlockChild *c)
{
    GS_CODE();
    c->parent_quiesced++;
    if (c->parent_node && is_barrier(c->parent_node)) {
        barrier_begin(c->parent_node);
    } else if (c->parent_node) {
        quiesce_up(c->parent_node);
    } else if (c->klass && c->klass->quiesce_begin) {
        c->klass->quiesce_begin(c);
    }
}

static void quiesce_up(BlockNode *bs)
{
    atomic_fetch_add(&bs->quiesce_counter, 1);
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        bdrv_parent_quiesce_begin_one(c);
    }
}

static void unquiesce_up(BlockNode *bs) GRAPH_RDLOCK GS;

void bdrv_parent_quiesce_end_one(BlockChild *c)
{
    GS_CODE();
    if (c->parent_quiesced <= 0) {
        abort();
    }
    c->parent_quiesced--;
    if (c->parent_node && is_barrier(c->parent_node)) {
        barrier_end(c->parent_node);
    } else if (c->parent_node) {
        unquiesce_up(c->parent_node);
    } else if (c->klass && c->klass->quiesce_end) {
        c->klass->quiesce_end(c);
    }
}

static void unquiesce_up(BlockNode *bs)
{
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        bdrv_parent_quiesce_end_one(c);
    }
    if (atomic_fetch_sub(&bs->quiesce_counter, 1) <= 0) {
        abort();
    }
}

/*
 * The invariant of an edge's parent_quiesced: an edge c is in exactly the
 * sections that pass up through its node, bdrv_parent_sections(c->node).
 * At an ordinary node that is all of its quiesce_counter (sections begun on
 * it and those its children's edges brought up).  At a barrier node the
 * sections from below stop there: each of its child edges has raised its
 * counter once per section it is in (barrier_begin), and none of those
 * reaches its parents, so they are in the node's own sections only.  An
 * edge counted in a section from below would never be ended by it (the
 * section's end stops at the barrier too) and would stay quiesced.
 */
int bdrv_parent_sections(BlockNode *bs)
{
    GS_CODE();
    int n = atomic_load(&bs->quiesce_counter);
    if (is_barrier(bs)) {
        for (BlockChild *c = bs->children; c; c = c->next_child) {
            n -= c->parent_quiesced;
        }
    }
    if (n < 0) {
        abort();
    }
    return n;
}

/* True while barrier bs has requests it sent below that have not
 * completed.  Thread-safe read. */
static bool barrier_busy(BlockNode *bs)
{
    return bs->drv->in_flight_below && bs->drv->in_flight_below(bs) > 0;
}

/* True while bs, a node above it, or a backend above it has requests in
 * flight; above a barrier only what the barrier sent below counts.  Runs in
 * the main thread (the waiter is GS). */
static bool busy_up(BlockNode *bs) GRAPH_RDLOCK
{
    if (atomic_load(&bs->in_flight) > 0) {
        return true;
    }
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        if (c->parent_node && is_barrier(c->parent_node)) {
            if (barrier_busy(c->parent_node)) {
                return true;
            }
        } else if (c->parent_node) {
            if (busy_up(c->parent_node)) {
                return true;
            }
        } else if (c->klass && c->klass->has_in_flight &&
                   c->klass->has_in_flight(c)) {
            return true;
        }
    }
    return false;
}

/* The waiter's condition, checked in the main thread by the waiting GS
 * coroutine, which holds the main loop's read marker while it waits. */
static bool quiesced_idle(void *opaque)
{
    graph_lock_assert_rdlocked();
    return !busy_up(opaque);
}

void coroutine_fn bdrv_co_quiesce_begin(BlockNode *bs)
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    quiesce_up(bs);
    wait_until_idle(quiesced_idle, bs);
    bdrv_graph_rdunlock_main_loop();
}

void bdrv_quiesce_end(BlockNode *bs)
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    unquiesce_up(bs);
    bdrv_graph_rdunlock_main_loop();
}

/* Node drain (meaning 3): when it returns, nothing is in flight in bs or
 * above it.  Used before a node is closed, when it has no parents left that
 * could send new requests, so the section can end at once. */
void coroutine_fn bdrv_co_drain_node(BlockNode *bs)
{
    GS_CODE();
    bdrv_co_quiesce_begin(bs);
    bdrv_quiesce_end(bs);
}
