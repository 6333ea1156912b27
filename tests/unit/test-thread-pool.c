/*
 * test-thread-pool.c — co_run_blocking(): results come back, calls from
 * coroutines on several IOThreads at once, more calls than workers (the
 * queue), calls that really run in parallel (a barrier only N parallel
 * calls can pass), idle workers exiting.
 *
 * Criterion runs every test in its own process, so each starts with an empty
 * pool, and the pool's exit handler (joining every worker) runs at the end of
 * each test: ASan/TSan builds check that it leaks and races nothing.
 * Waiting is on the event itself, with a timeout as a guard.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "coroutine/coroutine.h"
#include "loop/loop.h"
#include "util/threads.h"
#include "test-util.h"


TestSuite(pool, .init = test_loop_init, .timeout = 60);

/* Iterates the main loop until *count reaches want, or the guard expires. */
static void run_until_count(atomic_int *count, int want)
{
    int64_t deadline = clock_ns() + TEST_GUARD_NS;

    while (atomic_load(count) < want && clock_ns() < deadline) {
        loop_iterate(loop_main(), false);
        if (atomic_load(count) < want) {
            loop_iterate(loop_main(), true);
        }
    }
    cr_assert_eq(atomic_load(count), want, "timed out: %d of %d done",
                 atomic_load(count), want);
}

/* One coroutine's co_run_blocking(fn, NULL) and its result. */
typedef struct BlockingCall {
    int (*fn)(void *opaque);
    int ret;
    atomic_int *done;
} BlockingCall;

static void coroutine_fn blocking_co(void *opaque)
{
    BlockingCall *b = opaque;

    b->ret = co_run_blocking(b->fn, NULL);
    atomic_fetch_add(b->done, 1);
}

/* Spawns n coroutines on the main loop that each run fn through the pool
 * (calls[i].ret starts at 1), and waits until all n have their result. */
static void run_blocking_calls(BlockingCall *calls, int n, int (*fn)(void *))
{
    atomic_int done = 0;

    for (int i = 0; i < n; i++) {
        calls[i] = (BlockingCall){ .fn = fn, .ret = 1, .done = &done };
        co_spawn(blocking_co, &calls[i]);
    }
    run_until_count(&done, n);
}

/* The timeout guard of a wait on a statically initialised (realtime) condvar. */
static struct timespec guard_deadline(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += TEST_GUARD_NS / 1000000000LL;
    return ts;
}

/* ---- results ----------------------------------------------------------- */

typedef struct Call {
    int arg;
    pthread_t ran_on;
    int ret;
    atomic_int *done;
} Call;

static int twice_or_errno(void *opaque)
{
    Call *c = opaque;

    c->ran_on = pthread_self();
    return c->arg < 0 ? -EIO : 2 * c->arg;
}

static void coroutine_fn call_co(void *opaque)
{
    Call *c = opaque;

    c->ret = co_run_blocking(twice_or_errno, c);
    atomic_fetch_add(c->done, 1);
}

Test(pool, returns_results_from_another_thread)
{
    atomic_int done = 0;
    Call calls[3] = { { .arg = 21, .done = &done }, { .arg = 0, .done = &done },
                      { .arg = -1, .done = &done } };

    for (int i = 0; i < 3; i++) {
        co_spawn(call_co, &calls[i]);
    }
    /* Nothing ran synchronously: the callers are yielded. */
    cr_assert_eq(atomic_load(&done), 0);
    run_until_count(&done, 3);
    cr_assert_eq(calls[0].ret, 42);
    cr_assert_eq(calls[1].ret, 0);
    cr_assert_eq(calls[2].ret, -EIO);
    for (int i = 0; i < 3; i++) {
        cr_assert(!pthread_equal(calls[i].ran_on, pthread_self()));
    }
    cr_assert(thread_pool_worker_count() >= 1);
}

/* ---- many calls from many threads ------------------------------------- */

#define IOTHREADS 3
#define COS_PER_THREAD 8
#define CALLS_PER_THREAD 1000

static atomic_int calls_run;

static int count_and_echo(void *opaque)
{
    atomic_fetch_add(&calls_run, 1);
    return (int)(intptr_t)opaque;
}

typedef struct Caller {
    int first, n;             /* call arguments first .. first + n - 1 */
    int wrong;
    atomic_int *done;
} Caller;

static void coroutine_fn caller_co(void *opaque)
{
    Caller *c = opaque;

    for (int i = 0; i < c->n; i++) {
        int arg = c->first + i;
        if (co_run_blocking(count_and_echo, (void *)(intptr_t)arg) != arg) {
            c->wrong++;
        }
    }
    atomic_fetch_add(c->done, 1);
    loop_kick(loop_main());
}

static void spawn_caller_bh(void *opaque)
{
    co_spawn(caller_co, opaque);
}

Test(pool, thousand_calls_each_from_three_iothreads)
{
    static Caller callers[IOTHREADS][COS_PER_THREAD];
    IOThread *threads[IOTHREADS];
    atomic_int done = 0;
    int per_co = CALLS_PER_THREAD / COS_PER_THREAD;

    for (int t = 0; t < IOTHREADS; t++) {
        char name[16];
        snprintf(name, sizeof(name), "pool-io%d", t);
        threads[t] = iothread_create(name);
        for (int c = 0; c < COS_PER_THREAD; c++) {
            callers[t][c] = (Caller){ .first = (t * COS_PER_THREAD + c) * per_co,
                                      .n = per_co, .done = &done };
            loop_schedule(iothread_loop(threads[t]), spawn_caller_bh,
                          &callers[t][c]);
        }
    }
    run_until_count(&done, IOTHREADS * COS_PER_THREAD);
    for (int t = 0; t < IOTHREADS; t++) {
        iothread_destroy(threads[t]);
        for (int c = 0; c < COS_PER_THREAD; c++) {
            cr_assert_eq(callers[t][c].wrong, 0, "thread %d coroutine %d", t, c);
        }
    }
    cr_assert_eq(atomic_load(&calls_run), IOTHREADS * CALLS_PER_THREAD);
    cr_assert(thread_pool_worker_count() <= 64);
}

/* ---- more callers than workers ----------------------------------------- */

/* Each call waits (bounded) until `cap` calls run at once, so the test sees
 * the cap reached; the queue must then serve all the others. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_running, gate_max, gate_cap;
static bool gate_open;

static int wait_for_cap(void *opaque)
{
    struct timespec deadline = guard_deadline();
    int ret = 0;

    pthread_mutex_lock(&gate_lock);
    gate_running++;
    gate_max = MAX(gate_max, gate_running);
    if (gate_running == gate_cap) {
        gate_open = true;
        pthread_cond_broadcast(&gate_cond);
    }
    while (!gate_open && ret == 0) {
        ret = pthread_cond_timedwait(&gate_cond, &gate_lock, &deadline);
    }
    gate_running--;
    pthread_mutex_unlock(&gate_lock);
    return -ret;
}

Test(pool, more_callers_than_workers_queue)
{
    enum { CAP = 4, CALLERS = 40 };
    BlockingCall calls[CALLERS];

    thread_pool_set_limits(CAP, 5 * 1000000000LL);
    gate_cap = CAP;
    run_blocking_calls(calls, CALLERS, wait_for_cap);
    for (int i = 0; i < CALLERS; i++) {
        cr_assert_eq(calls[i].ret, 0, "call %d: %d", i, calls[i].ret);
    }
    cr_assert_eq(gate_max, CAP, "at most %d calls ran at once, cap %d", gate_max, CAP);
    cr_assert(thread_pool_worker_count() <= CAP);
}

/* ---- real parallelism ---------------------------------------------------- */

/* A barrier of n with a timeout: -ETIMEDOUT unless n callers meet. */
static pthread_mutex_t bar_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bar_cond = PTHREAD_COND_INITIALIZER;
static int bar_arrived, bar_n;

static int barrier_wait(void *opaque)
{
    struct timespec deadline = guard_deadline();
    int ret = 0;

    pthread_mutex_lock(&bar_lock);
    if (++bar_arrived == bar_n) {
        pthread_cond_broadcast(&bar_cond);
    }
    while (bar_arrived < bar_n && ret == 0) {
        ret = pthread_cond_timedwait(&bar_cond, &bar_lock, &deadline);
    }
    pthread_mutex_unlock(&bar_lock);
    return bar_arrived >= bar_n ? 0 : -ret;
}

Test(pool, calls_run_in_parallel)
{
    enum { N = 24 };
    BlockingCall calls[N];

    bar_n = N;
    run_blocking_calls(calls, N, barrier_wait);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(calls[i].ret, 0, "call %d did not meet the others: %d",
                     i, calls[i].ret);
    }
    cr_assert_eq(thread_pool_worker_count(), N);
}

/* ---- idle workers exit, and new ones start again ------------------------ */

Test(pool, idle_workers_exit_and_restart)
{
    enum { N = 6 };
    BlockingCall calls[N];
    atomic_int done = 0;
    int64_t deadline;

    thread_pool_set_limits(64, 20 * 1000000LL);      /* 20 ms idle */
    bar_n = N;
    run_blocking_calls(calls, N, barrier_wait);
    /* The exit has no event to wait on: poll the count, bounded. */
    deadline = clock_ns() + TEST_GUARD_NS;
    while (thread_pool_worker_count() > 0 && clock_ns() < deadline) {
        nanosleep(&(struct timespec){ .tv_nsec = 5000000 }, NULL);
    }
    cr_assert_eq(thread_pool_worker_count(), 0);

    /* The pool still serves calls afterwards. */
    Call c = { .arg = 5, .done = &done };
    co_spawn(call_co, &c);
    run_until_count(&done, 1);
    cr_assert_eq(c.ret, 10);
}
