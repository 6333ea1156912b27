/*
 * test-coroutine.c — coroutines: switch, nesting, many at once, cross-thread
 * wake, sleep, CoMutex (exclusion and FIFO hand-off across threads), CoQueue,
 * CoEvent, and the misuse checks.
 *
 * Criterion runs every test in its own process, so each starts with a fresh
 * main loop (fixture).  Waiting is always on the event itself: run_until()
 * iterates the main loop until a condition holds, with a timer as a guard so
 * a broken test fails instead of hanging.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sched.h>

#include "coroutine/coroutine.h"
#include "loop/loop.h"
#include "util/threads.h"
#include "test-util.h"

/* White-box: the waiter record of co-sync.c, to count queued waiters. */
struct CoWaiter {
    Coroutine *co;
    struct CoWaiter *next;
};

TestSuite(coroutine, .init = test_loop_init, .timeout = 60);

static void noop(void *opaque) { }

/* Iterates the main loop until *flag becomes true; fails after TEST_GUARD_NS. */
static void run_until(atomic_bool *flag)
{
    cr_assert(wait_flag_guarded(flag), "timed out waiting for the test's event");
}

/* Sets *flag from any thread and wakes the main loop to notice. */
static void signal_main(atomic_bool *flag)
{
    atomic_store(flag, true);
    loop_schedule(loop_main(), noop, NULL);
}

/* ---- switch, yield, resume --------------------------------------------- */

static int trace[16];
static int trace_len;

static void yield_three_times(void *opaque)
{
    for (int i = 0; i < 3; i++) {
        trace[trace_len++] = i;
        cr_assert_eq(co_self(), *(Coroutine **)opaque);
        co_yield();
    }
    trace[trace_len++] = 99;
}

Test(coroutine, switch_yield_resume)
{
    Coroutine *co = co_create(yield_three_times, &co);

    cr_assert_null(co_self());
    cr_assert_eq(co_home(co), loop_main());
    for (int i = 0; i < 4; i++) {
        co_enter(co);
        cr_assert_null(co_self());
        cr_assert_eq(trace_len, i + 1);
    }
    int want[] = { 0, 1, 2, 99 };
    cr_assert_arr_eq(trace, want, sizeof(want));
}

static void check_locals_survive(void *opaque)
{
    volatile double d = 1.5;
    volatile long l = 42;

    co_yield();
    *(int *)opaque = d == 1.5 && l == 42;
}

Test(coroutine, locals_and_callee_saved_survive)
{
    int ok = 0;
    register long keep = 0x1234567;   /* likely in a callee-saved register */
    Coroutine *co = co_create(check_locals_survive, &ok);

    co_enter(co);
    co_enter(co);
    cr_assert(ok);
    cr_assert_eq(keep, 0x1234567);
}

#if defined(__x86_64__)
/* MXCSR (SSE rounding mode, exception masks) is callee-saved: each side of
 * a switch keeps its own. */
static unsigned read_mxcsr(void)
{
    unsigned v;

    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}

static void write_mxcsr(unsigned v)
{
    __asm__ volatile("ldmxcsr %0" : : "m"(v));
}

#define MXCSR_ROUND_DOWN (1u << 13)

static void round_down_inside(void *opaque)
{
    unsigned saved = read_mxcsr();

    write_mxcsr((saved & ~(3u << 13)) | MXCSR_ROUND_DOWN);
    co_yield();
    cr_assert_eq(read_mxcsr() & (3u << 13), MXCSR_ROUND_DOWN,
                 "the coroutine lost its MXCSR across a switch");
    write_mxcsr(saved);
}

Test(coroutine, mxcsr_is_per_context)
{
    unsigned before = read_mxcsr();
    Coroutine *co = co_create(round_down_inside, NULL);

    co_enter(co);
    cr_assert_eq(read_mxcsr(), before, "the coroutine's MXCSR leaked out");
    co_enter(co);
    cr_assert_eq(read_mxcsr(), before);
}
#endif

#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if !defined(__SANITIZE_ADDRESS__) && !__has_feature(address_sanitizer) && \
    !defined(__SANITIZE_THREAD__) && !__has_feature(thread_sanitizer)
/* Running off the end of a coroutine stack hits the guard page: a crash,
 * not silent corruption of whatever lies below.  (The sanitizers report
 * overflows their own way, so this runs without them.) */
static int recurse(volatile char *prev, int depth)
{
    volatile char frame[1024];

    frame[0] = prev ? prev[0] : 1;
    return depth > 0 ? recurse(frame, depth - 1) + frame[0] : frame[0];
}

static void overflow_stack(void *opaque)
{
    recurse(NULL, 1 << 20);         /* 1 GiB of frames: far past the end */
}

Test(coroutine, stack_overflow_hits_guard_page, .signal = SIGSEGV)
{
    co_spawn(overflow_stack, NULL);
}
#endif

/* ---- nesting ----------------------------------------------------------- */

static Coroutine *inner_co;

static void inner(void *opaque)
{
    trace[trace_len++] = 2;
    co_yield();                 /* back to whoever entered us */
    trace[trace_len++] = 5;
}

static void outer(void *opaque)
{
    trace[trace_len++] = 1;
    inner_co = co_create(inner, NULL);
    co_enter(inner_co);
    cr_assert_eq(co_self(), *(Coroutine **)opaque, "outer resumed itself");
    trace[trace_len++] = 3;
    co_yield();
    trace[trace_len++] = 6;
}

Test(coroutine, nested_enter)
{
    Coroutine *out = co_create(outer, &out);

    co_enter(out);              /* 1 2 3 */
    trace[trace_len++] = 4;
    co_enter(inner_co);         /* inner's caller is now main: 5 */
    co_enter(out);              /* 6 */
    int want[] = { 1, 2, 3, 4, 5, 6 };
    cr_assert_eq(trace_len, 6);
    cr_assert_arr_eq(trace, want, sizeof(want));
}

/* ---- many at once ------------------------------------------------------ */

#define MANY 10000
static Coroutine *many[MANY];
static int many_done;

static void many_entry(void *opaque)
{
    char buf[512];              /* touch some stack in each */

    buf[0] = (char)(uintptr_t)opaque;
    co_yield();
    cr_assert_eq(buf[0], (char)(uintptr_t)opaque);
    many_done++;
}

Test(coroutine, ten_thousand_alive)
{
    for (int i = 0; i < MANY; i++) {
        many[i] = co_create(many_entry, (void *)(uintptr_t)i);
        co_enter(many[i]);
    }
    cr_assert_eq(many_done, 0);
    for (int i = 0; i < MANY; i++) {
        co_enter(many[i]);
    }
    cr_assert_eq(many_done, MANY);
}

/* ---- rdlock depth is per coroutine ------------------------------------- */

static void depth_entry(void *opaque)
{
    cr_assert_eq(co_rdlock_depth_add(0), 0);
    cr_assert_eq(co_rdlock_depth_add(1), 1);
    co_yield();
    cr_assert_eq(co_rdlock_depth_add(-1), 0);
}

Test(coroutine, rdlock_depth_per_coroutine)
{
    Coroutine *a = co_create(depth_entry, NULL);
    Coroutine *b = co_create(depth_entry, NULL);

    co_enter(a);
    co_enter(b);                /* a holds depth 1; b starts at 0 */
    cr_assert_eq(co_rdlock_depth_add(0), 0);
    co_enter(a);
    co_enter(b);
}

/* ---- cross-thread wake ------------------------------------------------- */

#define PINGS 2000
static _Atomic(Coroutine *) co_a, co_b;
static atomic_int b_rounds;
static atomic_bool pingpong_done;

static void pong_on_iothread(void *opaque)
{
    atomic_store(&co_b, co_self());
    co_wake(atomic_load(&co_a));        /* A may run before we yield */
    for (int i = 0; i < PINGS; i++) {
        co_yield();
        cr_assert_eq(co_home(co_self()), loop_current());
        atomic_fetch_add(&b_rounds, 1);
        co_wake(atomic_load(&co_a));
    }
}

static void spawn_pong(void *opaque)
{
    co_spawn(pong_on_iothread, NULL);
}

static void ping_on_main(void *opaque)
{
    IOThread *t = opaque;

    atomic_store(&co_a, co_self());
    loop_schedule(iothread_loop(t), spawn_pong, NULL);
    co_yield();                         /* until B has started */
    for (int i = 0; i < PINGS; i++) {
        co_wake(atomic_load(&co_b));
        co_yield();
        cr_assert_eq(atomic_load(&b_rounds), i + 1);
    }
    atomic_store(&pingpong_done, true);
}

Test(coroutine, cross_thread_wake_both_ways)
{
    IOThread *t = iothread_create("io0");

    co_spawn(ping_on_main, t);
    run_until(&pingpong_done);
    cr_assert_eq(atomic_load(&b_rounds), PINGS);
    iothread_destroy(t);
}

/* ---- sleep ------------------------------------------------------------- */

static atomic_bool slept;
static int64_t slept_ns;

static void sleeper(void *opaque)
{
    int64_t start = clock_ns();

    co_sleep_ns(20 * 1000000LL);
    slept_ns = clock_ns() - start;
    atomic_store(&slept, true);
}

Test(coroutine, sleep_at_least_asked)
{
    co_spawn(sleeper, NULL);
    cr_assert_not(atomic_load(&slept));
    run_until(&slept);
    cr_assert_geq(slept_ns, 20 * 1000000LL);
}

/* ---- CoMutex ----------------------------------------------------------- */

#define MX_THREADS 3
#define MX_PER_THREAD 8
#define MX_ROUNDS 200
static CoMutex mx;
static long mx_counter;         /* protected by mx only */
static int mx_inside;           /* protected by mx only */
static atomic_int mx_finished;
static atomic_bool mx_all_done;

static void mx_worker(void *opaque)
{
    for (int i = 0; i < MX_ROUNDS; i++) {
        co_mutex_lock(&mx);
        cr_assert_eq(mx_inside, 0, "two coroutines inside the CoMutex");
        mx_inside = 1;
        long v = mx_counter;
        if (i % 4 == 0) {       /* hold the lock across a yield */
            co_wake(co_self());
            co_yield();
        }
        mx_counter = v + 1;
        mx_inside = 0;
        co_mutex_unlock(&mx);
    }
    if (atomic_fetch_add(&mx_finished, 1) + 1 == MX_THREADS * MX_PER_THREAD) {
        signal_main(&mx_all_done);
    }
}

static void spawn_mx_workers(void *opaque)
{
    for (int i = 0; i < MX_PER_THREAD; i++) {
        co_spawn(mx_worker, NULL);
    }
}

Test(coroutine, comutex_excludes_across_threads)
{
    IOThread *t1 = iothread_create("io1"), *t2 = iothread_create("io2");

    co_mutex_init(&mx);
    loop_schedule(iothread_loop(t1), spawn_mx_workers, NULL);
    loop_schedule(iothread_loop(t2), spawn_mx_workers, NULL);
    spawn_mx_workers(NULL);
    run_until(&mx_all_done);
    cr_assert_eq(mx_counter, (long)MX_THREADS * MX_PER_THREAD * MX_ROUNDS);
    iothread_destroy(t1);
    iothread_destroy(t2);
}

/* FIFO: waiters queued in a known order on three threads get the lock in
 * exactly that order. */
static atomic_int fifo_order[8];
static atomic_int fifo_len;
static atomic_bool fifo_done;

static int mx_waiters(CoMutex *m)
{
    int n = 0;

    while (__atomic_exchange_n(&m->spin, 1, __ATOMIC_ACQUIRE)) {
    }
    for (CoWaiter *w = m->head; w; w = w->next) {
        n++;
    }
    __atomic_store_n(&m->spin, 0, __ATOMIC_RELEASE);
    return n;
}

static void fifo_waiter(void *opaque)
{
    co_mutex_lock(&mx);
    atomic_store(&fifo_order[atomic_fetch_add(&fifo_len, 1)], (int)(intptr_t)opaque);
    co_mutex_unlock(&mx);
    if (atomic_load(&fifo_len) == 6) {
        signal_main(&fifo_done);
    }
}

static void spawn_fifo_waiter(void *opaque)
{
    co_spawn(fifo_waiter, opaque);
}

/* Takes mx, yields while holding it, releases it when entered again. */
static void hold_mx(void *opaque)
{
    co_mutex_lock(&mx);
    co_yield();
    co_mutex_unlock(&mx);
}

/* Waits (without sleeping) until n coroutines are queued on mx. */
static void wait_waiters(int n)
{
    int64_t deadline = clock_ns() + TEST_GUARD_NS;

    while (mx_waiters(&mx) < n) {
        loop_iterate(loop_main(), false);
        sched_yield();
        cr_assert_lt(clock_ns(), deadline, "waiter never queued");
    }
}

Test(coroutine, comutex_fifo_handoff_three_threads)
{
    IOThread *t[2] = { iothread_create("io1"), iothread_create("io2") };
    Loop *where[6] = { NULL, NULL, NULL, NULL, NULL, NULL };
    Coroutine *holder;

    co_mutex_init(&mx);
    holder = co_create(hold_mx, NULL);
    co_enter(holder);
    for (int i = 0; i < 6; i++) {
        where[i] = i % 3 == 2 ? loop_main() : iothread_loop(t[(i + 1) % 2]);
        if (where[i] == loop_main()) {
            co_spawn(fifo_waiter, (void *)(intptr_t)i);
        } else {
            loop_schedule(where[i], spawn_fifo_waiter, (void *)(intptr_t)i);
        }
        wait_waiters(i + 1);
    }
    co_enter(holder);           /* unlocks: hands mx to waiter 0 */
    run_until(&fifo_done);
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(atomic_load(&fifo_order[i]), i, "waiter %d served out of order", i);
    }
    iothread_destroy(t[0]);
    iothread_destroy(t[1]);
}

/* ---- CoQueue ----------------------------------------------------------- */

static CoQueue q;
static int q_ready;             /* protected by mx */
static atomic_int q_woken;
static atomic_bool q_done;

static void q_waiter(void *opaque)
{
    co_mutex_lock(&mx);
    while (!q_ready) {
        co_queue_wait(&q, &mx);
        cr_assert_eq(mx.holder, co_self(), "co_queue_wait did not re-take the mutex");
    }
    co_mutex_unlock(&mx);
    if (atomic_fetch_add(&q_woken, 1) + 1 == 4) {
        signal_main(&q_done);
    }
}

static void spawn_q_waiter(void *opaque)
{
    co_spawn(q_waiter, NULL);
}

static void q_release_all(void *opaque)
{
    co_mutex_lock(&mx);
    q_ready = 1;
    co_queue_restart_all(&q);
    co_mutex_unlock(&mx);
}

static int queue_len(CoQueue *cq)
{
    int n = 0;

    while (__atomic_exchange_n(&cq->spin, 1, __ATOMIC_ACQUIRE)) {
    }
    for (CoWaiter *w = cq->head; w; w = w->next) {
        n++;
    }
    __atomic_store_n(&cq->spin, 0, __ATOMIC_RELEASE);
    return n;
}

Test(coroutine, coqueue_wait_and_restart_all)
{
    IOThread *t = iothread_create("io1");
    int64_t deadline = clock_ns() + TEST_GUARD_NS;

    co_mutex_init(&mx);
    co_queue_init(&q);
    cr_assert(co_queue_empty(&q));
    co_spawn(q_waiter, NULL);
    co_spawn(q_waiter, NULL);
    loop_schedule(iothread_loop(t), spawn_q_waiter, NULL);
    loop_schedule(iothread_loop(t), spawn_q_waiter, NULL);
    while (queue_len(&q) < 4) {
        loop_iterate(loop_main(), false);
        sched_yield();
        cr_assert_lt(clock_ns(), deadline);
    }
    cr_assert_not(co_queue_empty(&q));
    co_spawn(q_release_all, NULL);
    run_until(&q_done);
    cr_assert(co_queue_empty(&q));
    cr_assert_not(co_queue_next(&q));
    iothread_destroy(t);
}

static int q_order[4];
static int q_order_len;

static void q_fifo_waiter(void *opaque)
{
    co_queue_wait(&q, NULL);
    q_order[q_order_len++] = (int)(intptr_t)opaque;
}

Test(coroutine, coqueue_next_is_fifo)
{
    co_queue_init(&q);
    for (int i = 0; i < 4; i++) {
        co_spawn(q_fifo_waiter, (void *)(intptr_t)i);
    }
    for (int i = 0; i < 4; i++) {
        cr_assert(co_queue_next(&q));
        while (q_order_len < i + 1) {
            loop_iterate(loop_main(), true);
        }
    }
    cr_assert_not(co_queue_next(&q));
    int want[] = { 0, 1, 2, 3 };
    cr_assert_arr_eq(q_order, want, sizeof(want));
}

/* ---- CoEvent ----------------------------------------------------------- */

static CoEvent ev;
static atomic_bool ev_seen;

static void ev_waiter(void *opaque)
{
    co_event_wait(&ev);
    cr_assert(co_event_is_set(&ev));
    atomic_store(&ev_seen, true);
}

static void ev_setter(void *opaque)
{
    co_event_set(&ev);
}

Test(coroutine, coevent_set_from_other_thread)
{
    IOThread *t = iothread_create("io1");

    co_event_init(&ev);
    co_spawn(ev_waiter, NULL);
    cr_assert_not(atomic_load(&ev_seen));
    loop_schedule(iothread_loop(t), ev_setter, NULL);
    run_until(&ev_seen);
    /* Already set: waiting returns at once; reset makes it wait again. */
    atomic_store(&ev_seen, false);
    co_spawn(ev_waiter, NULL);
    cr_assert(atomic_load(&ev_seen));
    co_event_reset(&ev);
    cr_assert_not(co_event_is_set(&ev));
    iothread_destroy(t);
}

/* ---- misuse is caught -------------------------------------------------- */

static void just_yield(void *opaque) { co_yield(); }

Test(coroutine, double_wake_aborts, .signal = SIGABRT)
{
    Coroutine *co = co_create(just_yield, NULL);

    co_enter(co);
    co_wake(co);
    co_wake(co);
}

Test(coroutine, yield_outside_coroutine_aborts, .signal = SIGABRT)
{
    co_yield();
}

static void unlock_not_held(void *opaque)
{
    co_mutex_unlock(&mx);
}

Test(coroutine, unlock_of_unheld_mutex_aborts, .signal = SIGABRT)
{
    co_mutex_init(&mx);
    co_spawn(unlock_not_held, NULL);
}

/* ---- the global lock (util/threads.c) ---------------------------------- */

static void gs_function(void)
{
    GS_CODE();
}

Test(coroutine, global_lock_held_by_main_only)
{
    cr_assert(in_main_thread());
    cr_assert_not(global_lock_held());
    global_lock_acquire();
    cr_assert(global_lock_held());
    gs_function();                      /* passes the run-time check */
    global_lock_assert_held();
    global_lock_release();
    cr_assert_not(global_lock_held());
}

Test(coroutine, gs_code_without_global_lock_aborts, .signal = SIGABRT)
{
    gs_function();
}

static void *gs_from_other_thread(void *opaque)
{
    cr_assert_not(in_main_thread());
    global_lock_assert_held();          /* aborts: not the main thread */
    return NULL;
}

Test(coroutine, global_lock_assert_on_other_thread_aborts, .signal = SIGABRT)
{
    pthread_t th;

    global_lock_acquire();
    pthread_create(&th, NULL, gs_from_other_thread, NULL);
    pthread_join(th, NULL);
    global_lock_release();              /* not reached */
}

static void wake_self_then_end(void *opaque)
{
    co_wake(co_self());
}

Test(coroutine, ending_with_a_wake_pending_aborts, .signal = SIGABRT)
{
    co_spawn(wake_self_then_end, NULL);
}
