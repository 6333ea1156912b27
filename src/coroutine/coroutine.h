/*
 * coroutine.h — stackful coroutines bound to the loop that created them.
 *
 * A coroutine runs only on its home loop's thread.  It is entered with
 * co_enter() (from that thread), gives the CPU back with co_yield(), and is
 * woken from any thread with co_wake(), which schedules the re-entry on the
 * home loop (never a direct cross-thread switch).  A coroutine that returns
 * from its entry function is freed; its stack goes back to a per-thread pool.
 *
 * This is the small, safe API the block layer uses (DESIGN rule 3): drivers
 * and jobs never touch the loop or the switch directly, they wait with
 * co_yield()/co_wake(), the CoMutex, the CoQueue and co_sleep_ns().
 *
 * Thread-safety: co_wake(), co_home() are thread-safe; everything else acts on
 * the calling thread's coroutines.
 */
#ifndef DISKSTACK_COROUTINE_H
#define DISKSTACK_COROUTINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "annotations.h"

typedef struct Coroutine Coroutine;
typedef struct Loop Loop;
typedef void coroutine_fn CoroutineEntry(void *opaque);

/* Creates a coroutine whose home is the calling thread's loop. */
Coroutine *co_create(CoroutineEntry *entry, void *opaque);
/* Runs co on the calling thread (its home) until it yields or returns.  May
 * be called from inside another coroutine: the caller is resumed when co
 * yields or ends. */
void co_enter(Coroutine *co);
/* co_create + co_enter. */
void co_spawn(CoroutineEntry *entry, void *opaque);
/* Gives the CPU back to whoever entered us. */
void coroutine_fn co_yield(void);
/* The running coroutine, or NULL outside coroutines. */
Coroutine *co_self(void);
static inline bool in_coroutine(void) { return co_self() != NULL; }
/* Thread-safe: schedules co to be re-entered from its home loop.  co must be
 * yielded (or about to yield: a wake that races with the yield is not lost). */
void co_wake(Coroutine *co);
Loop *co_home(const Coroutine *co);
/* The running coroutine's graph read-lock depth, adjusted by delta; for
 * graph-lock.c only (a per-thread counter would be wrong: a request holds
 * the read lock across yields while other coroutines run on its thread). */
int co_rdlock_depth_add(int delta);

/* Sleep on the home loop's timer. */
void coroutine_fn co_sleep_ns(int64_t ns);

/*
 * CoMutex: a mutex for coroutines, possibly on different threads.  Waiters
 * are served FIFO with direct hand-off (no barging), so a busy lock is fair.
 */
typedef struct CoWaiter CoWaiter;
typedef struct CoMutex {
    int locked;                 /* internal */
    Coroutine *holder;
    struct CoWaiter *head, *tail;
    int spin;                   /* internal spinlock guarding the list */
} CoMutex;
void co_mutex_init(CoMutex *m);
void coroutine_fn co_mutex_lock(CoMutex *m);
void coroutine_fn co_mutex_unlock(CoMutex *m);

/*
 * CoQueue: coroutines waiting for a condition.  co_queue_wait() releases m
 * (if non-NULL) while waiting and takes it again before returning.
 * Wake-ups are FIFO.  Thread-safe.
 */
typedef struct CoQueue {
    struct CoWaiter *head, *tail;
    int spin;
} CoQueue;
void co_queue_init(CoQueue *q);
void coroutine_fn co_queue_wait(CoQueue *q, CoMutex *m);
bool co_queue_next(CoQueue *q);          /* wakes one; false if empty */
void co_queue_restart_all(CoQueue *q);
bool co_queue_empty(CoQueue *q);

/*
 * CoEvent: a one-shot (resettable) flag a coroutine can wait for.  Used for
 * "wait until the last request completes" style hand-offs across threads.
 */
typedef struct CoEvent {
    int state;                  /* internal */
    Coroutine *waiter;
} CoEvent;
void co_event_init(CoEvent *ev);
void co_event_reset(CoEvent *ev);
void co_event_set(CoEvent *ev);          /* thread-safe */
void coroutine_fn co_event_wait(CoEvent *ev);
bool co_event_is_set(CoEvent *ev);

#endif
