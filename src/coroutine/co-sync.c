/*
 * co-sync.c — CoMutex, CoQueue, CoEvent (see coroutine.h).
 *
 * Waiters live on their own coroutine's stack (a CoWaiter) in a FIFO list
 * guarded by a tiny spinlock; the lock is held only for a few pointer moves,
 * never across a yield or a wake.  Waking always goes through co_wake(), so
 * a waiter on another thread is resumed on its own loop, and a wake that
 * lands between "queued myself" and "yielded" is not lost (co_wake defers
 * the re-entry to the home loop, which runs only after the yield).
 *
 * A waiter's CoWaiter may vanish as soon as it is woken, so the waker reads
 * everything it needs from it before calling co_wake().
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "coroutine/coroutine.h"

struct CoWaiter {
    Coroutine *co;
    struct CoWaiter *next;
};

static void sync_die(const char *what)
{
    fprintf(stderr, "diskstack: coroutine sync misuse: %s\n", what);
    abort();
}

/* ---- the internal spinlock --------------------------------------------- */

static void spin_lock(int *spin)
{
    unsigned tries = 0;

    while (__atomic_exchange_n(spin, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(spin, __ATOMIC_RELAXED)) {
            /* The holder may have been preempted: on a busy machine spinning
             * for its whole time slice is worse than yielding. */
            if (++tries % 64 == 0) {
                sched_yield();
            } else {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            }
        }
    }
}

static void spin_unlock(int *spin)
{
    __atomic_store_n(spin, 0, __ATOMIC_RELEASE);
}

/* Caller holds the list's spinlock. */
static void waiters_push(CoWaiter **head, CoWaiter **tail, CoWaiter *w)
{
    w->next = NULL;
    if (*tail) {
        (*tail)->next = w;
    } else {
        *head = w;
    }
    *tail = w;
}

/* Caller holds the list's spinlock. */
static CoWaiter *waiters_pop(CoWaiter **head, CoWaiter **tail)
{
    CoWaiter *w = *head;

    if (w) {
        *head = w->next;
        if (!*head) {
            *tail = NULL;
        }
    }
    return w;
}

static Coroutine *self_or_die(const char *func)
{
    Coroutine *self = co_self();

    if (!self) {
        sync_die(func);
    }
    return self;
}

/* ---- CoMutex ----------------------------------------------------------- */

void co_mutex_init(CoMutex *m)
{
    m->locked = 0;
    m->holder = NULL;
    m->head = m->tail = NULL;
    m->spin = 0;
}

void coroutine_fn co_mutex_lock(CoMutex *m)
{
    Coroutine *self = self_or_die("co_mutex_lock outside a coroutine");
    CoWaiter w = { .co = self };

    spin_lock(&m->spin);
    if (!m->locked) {
        m->locked = 1;
        m->holder = self;
        spin_unlock(&m->spin);
        return;
    }
    if (m->holder == self) {
        spin_unlock(&m->spin);
        sync_die("CoMutex locked twice by one coroutine");
    }
    waiters_push(&m->head, &m->tail, &w);
    spin_unlock(&m->spin);
    /* Woken by co_mutex_unlock, which made us the holder (hand-off). */
    co_yield();
}

void coroutine_fn co_mutex_unlock(CoMutex *m)
{
    CoWaiter *w;
    Coroutine *next = NULL;

    spin_lock(&m->spin);
    if (!m->locked || m->holder != co_self()) {
        spin_unlock(&m->spin);
        sync_die("CoMutex unlocked by a coroutine that does not hold it");
    }
    w = waiters_pop(&m->head, &m->tail);
    if (w) {
        next = w->co;
        m->holder = next;       /* stays locked: no barging */
    } else {
        m->locked = 0;
        m->holder = NULL;
    }
    spin_unlock(&m->spin);
    if (next) {
        co_wake(next);
    }
}

/* ---- CoQueue ----------------------------------------------------------- */

void co_queue_init(CoQueue *q)
{
    q->head = q->tail = NULL;
    q->spin = 0;
}

void coroutine_fn co_queue_wait(CoQueue *q, CoMutex *m)
{
    CoWaiter w = { .co = self_or_die("co_queue_wait outside a coroutine") };

    spin_lock(&q->spin);
    waiters_push(&q->head, &q->tail, &w);
    spin_unlock(&q->spin);
    /* Queued before m is released: a waker that takes m after us sees us. */
    if (m) {
        co_mutex_unlock(m);
    }
    co_yield();
    if (m) {
        co_mutex_lock(m);
    }
}

bool co_queue_next(CoQueue *q)
{
    CoWaiter *w;
    Coroutine *co = NULL;

    spin_lock(&q->spin);
    w = waiters_pop(&q->head, &q->tail);
    if (w) {
        co = w->co;
    }
    spin_unlock(&q->spin);
    if (co) {
        co_wake(co);
    }
    return co != NULL;
}

void co_queue_restart_all(CoQueue *q)
{
    CoWaiter *w;

    spin_lock(&q->spin);
    w = q->head;
    q->head = q->tail = NULL;
    spin_unlock(&q->spin);
    while (w) {
        CoWaiter *next = w->next;   /* w is gone once its coroutine runs */

        co_wake(w->co);
        w = next;
    }
}

bool co_queue_empty(CoQueue *q)
{
    bool empty;

    spin_lock(&q->spin);
    empty = q->head == NULL;
    spin_unlock(&q->spin);
    return empty;
}

/* ---- CoEvent ----------------------------------------------------------- */

enum { EV_UNSET, EV_WAITING, EV_SET };

void co_event_init(CoEvent *ev)
{
    ev->state = EV_UNSET;
    ev->waiter = NULL;
}

void co_event_reset(CoEvent *ev)
{
    int expected = EV_SET;

    if (!__atomic_compare_exchange_n(&ev->state, &expected, EV_UNSET, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) &&
        expected == EV_WAITING) {
        sync_die("co_event_reset while a coroutine waits");
    }
}

/* Thread-safe. */
void co_event_set(CoEvent *ev)
{
    int old = __atomic_exchange_n(&ev->state, EV_SET, __ATOMIC_ACQ_REL);

    if (old == EV_WAITING) {
        co_wake(__atomic_load_n(&ev->waiter, __ATOMIC_RELAXED));
    }
}

void coroutine_fn co_event_wait(CoEvent *ev)
{
    Coroutine *self = self_or_die("co_event_wait outside a coroutine");
    int expected = EV_UNSET;

    __atomic_store_n(&ev->waiter, self, __ATOMIC_RELAXED);
    /* Release publishes waiter to the co_event_set that sees EV_WAITING. */
    if (!__atomic_compare_exchange_n(&ev->state, &expected, EV_WAITING, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        if (expected == EV_WAITING) {
            sync_die("two coroutines wait for one CoEvent");
        }
        return;                 /* already set */
    }
    co_yield();
}

bool co_event_is_set(CoEvent *ev)
{
    return __atomic_load_n(&ev->state, __ATOMIC_ACQUIRE) == EV_SET;
}
