/*
 * test-loop.c — the io_uring event loop: bottom halves (also from 4 threads
 * at once), timers, coroutine file I/O, fd handlers, co_poll_fd/co_read_fd,
 * loop_stop from another thread, IOThreads and their registry.
 *
 * Criterion runs every test in its own process; the fixture makes the main
 * loop.  Waiting is on the event itself, with a timer as a guard.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coroutine/coroutine.h"
#include "loop/loop.h"
#include "util/threads.h"
#include "test-util.h"

TestSuite(loop, .init = test_loop_init, .timeout = 60);

static void noop(void *opaque) { }

/* Iterates the main loop until *flag becomes true; fails after TEST_GUARD_NS. */
static void run_until(atomic_bool *flag)
{
    cr_assert(wait_flag_guarded(flag), "timed out waiting for the test's event");
}

/* ---- bottom halves ----------------------------------------------------- */

static void count_up(void *opaque)
{
    (*(int *)opaque)++;
}

Test(loop, schedule_from_own_thread_runs_later)
{
    int n = 0;

    cr_assert_eq(loop_current(), loop_main());
    cr_assert_str_eq(loop_name(loop_main()), "main");
    loop_schedule(loop_main(), count_up, &n);
    cr_assert_eq(n, 0, "loop_schedule ran the callback synchronously");
    loop_iterate(loop_main(), false);
    cr_assert_eq(n, 1);
    loop_iterate(loop_main(), false);
    cr_assert_eq(n, 1);
}

#define SCHED_THREADS 4
#define SCHED_PER_THREAD 20000
static atomic_uchar seen[SCHED_THREADS * SCHED_PER_THREAD];
static int ran;                 /* main thread only */
static atomic_bool sched_all_ran;

static void mark_seen(void *opaque)
{
    uintptr_t i = (uintptr_t)opaque;

    cr_assert_eq(loop_current(), loop_main());
    atomic_fetch_add(&seen[i], 1);
    if (++ran == SCHED_THREADS * SCHED_PER_THREAD) {
        atomic_store(&sched_all_ran, true);
    }
}

static void *scheduler_thread(void *opaque)
{
    uintptr_t base = (uintptr_t)opaque * SCHED_PER_THREAD;

    for (uintptr_t i = 0; i < SCHED_PER_THREAD; i++) {
        loop_schedule(loop_main(), mark_seen, (void *)(base + i));
    }
    return NULL;
}

Test(loop, schedule_from_four_threads_runs_each_once)
{
    pthread_t th[SCHED_THREADS];

    for (uintptr_t i = 0; i < SCHED_THREADS; i++) {
        pthread_create(&th[i], NULL, scheduler_thread, (void *)i);
    }
    run_until(&sched_all_ran);
    for (int i = 0; i < SCHED_THREADS; i++) {
        pthread_join(th[i], NULL);
    }
    loop_iterate(loop_main(), false);
    for (int i = 0; i < SCHED_THREADS * SCHED_PER_THREAD; i++) {
        cr_assert_eq(atomic_load(&seen[i]), 1, "callback %d ran %d times", i,
                     atomic_load(&seen[i]));
    }
    cr_assert_eq(ran, SCHED_THREADS * SCHED_PER_THREAD);
}

/* ---- timers ------------------------------------------------------------ */

static int fired[8];
static int fired_len;
static atomic_bool timers_done;

static void record_timer(void *opaque)
{
    fired[fired_len++] = (int)(intptr_t)opaque;
    if (fired_len == 4) {
        atomic_store(&timers_done, true);
    }
}

Test(loop, timers_fire_in_deadline_order)
{
    LoopTimer t[5];
    int64_t now = clock_ns(), ms = 1000000;
    int64_t offsets[5] = { 30 * ms, 10 * ms, 40 * ms, 20 * ms, 15 * ms };

    for (int i = 0; i < 5; i++) {
        loop_timer_init(&t[i], loop_main(), record_timer, (void *)(intptr_t)i);
        loop_timer_arm(&t[i], now + offsets[i]);
        cr_assert(loop_timer_pending(&t[i]));
    }
    loop_timer_cancel(&t[4]);
    cr_assert_not(loop_timer_pending(&t[4]));
    run_until(&timers_done);
    cr_assert_geq(clock_ns(), now + 40 * ms);
    int want[] = { 1, 3, 0, 2 };
    cr_assert_arr_eq(fired, want, sizeof(want));
    for (int i = 0; i < 5; i++) {
        cr_assert_not(loop_timer_pending(&t[i]));
    }
}

static void rearm_once(void *opaque)
{
    LoopTimer *t = opaque;

    if (fired_len++ == 0) {
        loop_timer_arm(t, clock_ns() + 1000000);
    } else {
        atomic_store(&timers_done, true);
    }
}

Test(loop, timer_rearms_from_its_callback)
{
    LoopTimer t;

    loop_timer_init(&t, loop_main(), rearm_once, &t);
    loop_timer_arm(&t, clock_ns());
    run_until(&timers_done);
    cr_assert_eq(fired_len, 2);
}

/* ---- file I/O through the ring ----------------------------------------- */

static char tmpl[] = "/tmp/test-loop-XXXXXX";
static atomic_bool io_done;

static void file_io(void *opaque)
{
    int fd = *(int *)opaque;
    char a[100], b[3000], c[4096 - 3100], out[4096];
    struct iovec wiov[3] = { { a, sizeof(a) }, { b, sizeof(b) }, { c, sizeof(c) } };
    struct iovec riov[2] = { { out, 1000 }, { out + 1000, 3096 } };
    struct stat st;

    memset(a, 'a', sizeof(a));
    memset(b, 'b', sizeof(b));
    memset(c, 'c', sizeof(c));
    cr_assert_eq(co_pwritev_fd(fd, wiov, 3, 4096), 4096);
    cr_assert_eq(co_fsync_fd(fd, true), 0);
    cr_assert_eq(co_fsync_fd(fd, false), 0);
    cr_assert_eq(co_preadv_fd(fd, riov, 2, 4096), 4096);
    cr_assert_eq(memcmp(out, a, 100), 0);
    cr_assert_eq(memcmp(out + 100, b, 3000), 0);
    cr_assert_eq(memcmp(out + 3100, c, sizeof(c)), 0);

    /* One buffer; reading past the end is short. */
    struct iovec one = { out, sizeof(out) };
    cr_assert_eq(co_preadv_fd(fd, &one, 1, 4096 + 2048), 2048);
    cr_assert_eq(co_preadv_fd(fd, &one, 1, 1 << 20), 0);

    /* Zero range keeps the size; punching a hole reads back zeros. */
    cr_assert_eq(co_fallocate_fd(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                 4096, 4096), 0);
    cr_assert_eq(co_preadv_fd(fd, &one, 1, 4096), 4096);
    for (int i = 0; i < 4096; i++) {
        cr_assert_eq(out[i], 0);
    }
    cr_assert_eq(co_fallocate_fd(fd, 0, 0, 1 << 20), 0);
    fstat(fd, &st);
    cr_assert_eq(st.st_size, 1 << 20);

    /* Errors come back as -errno. */
    cr_assert_eq(co_preadv_fd(-1, &one, 1, 0), -EBADF);
    atomic_store(&io_done, true);
}

Test(loop, file_io_readv_writev_fsync_fallocate)
{
    int fd = mkstemp(tmpl);

    cr_assert_geq(fd, 0);
    unlink(tmpl);
    co_spawn(file_io, &fd);
    run_until(&io_done);
    close(fd);
}

/* More requests in flight than the submission queue holds. */
#define MANY_IO 2000
static atomic_int many_io_left;

static void one_read(void *opaque)
{
    int fd = *(int *)opaque;
    char buf[8];
    struct iovec iov = { buf, sizeof(buf) };

    cr_assert_eq(co_preadv_fd(fd, &iov, 1, 0), 8);
    cr_assert_eq(memcmp(buf, "01234567", 8), 0);
    if (atomic_fetch_sub(&many_io_left, 1) == 1) {
        atomic_store(&io_done, true);
    }
}

Test(loop, more_requests_than_ring_entries)
{
    int fd = mkstemp(tmpl);

    cr_assert_geq(fd, 0);
    unlink(tmpl);
    cr_assert_eq(pwrite(fd, "01234567", 8, 0), 8);
    atomic_store(&many_io_left, MANY_IO);
    for (int i = 0; i < MANY_IO; i++) {
        co_spawn(one_read, &fd);
    }
    run_until(&io_done);
    close(fd);
}

/* ---- fd handlers, co_poll_fd, co_read_fd ------------------------------- */

static int pipefd[2];
static int handler_calls;
static atomic_bool handler_done;

static void read_one_byte(void *opaque)
{
    char c;

    cr_assert_eq(read(pipefd[0], &c, 1), 1);
    handler_calls++;
    if (handler_calls == 3) {
        atomic_store(&handler_done, true);
    }
}

Test(loop, fd_handler_is_level_triggered_and_removable)
{
    cr_assert_eq(pipe2(pipefd, O_NONBLOCK), 0);
    loop_set_fd_handler(loop_main(), pipefd[0], read_one_byte, NULL);
    loop_iterate(loop_main(), false);
    cr_assert_eq(handler_calls, 0);
    cr_assert_eq(write(pipefd[1], "xyz", 3), 3);
    run_until(&handler_done);         /* one byte per call: called 3 times */
    cr_assert_eq(handler_calls, 3);

    loop_remove_fd_handler(loop_main(), pipefd[0]);
    cr_assert_eq(write(pipefd[1], "q", 1), 1);
    for (int i = 0; i < 5; i++) {
        loop_iterate(loop_main(), false);
    }
    cr_assert_eq(handler_calls, 3, "removed handler still called");
}

static void remove_self(void *opaque)
{
    handler_calls++;
    loop_remove_fd_handler(loop_main(), pipefd[0]);
    atomic_store(&handler_done, true);
}

Test(loop, fd_handler_removes_itself)
{
    cr_assert_eq(pipe2(pipefd, O_NONBLOCK), 0);
    loop_set_fd_handler(loop_main(), pipefd[0], remove_self, NULL);
    cr_assert_eq(write(pipefd[1], "xy", 2), 2);
    run_until(&handler_done);
    for (int i = 0; i < 5; i++) {
        loop_iterate(loop_main(), false);
    }
    cr_assert_eq(handler_calls, 1);
}

static void poll_then_read(void *opaque)
{
    char buf[16];

    cr_assert(co_poll_fd(pipefd[0], POLLIN) & POLLIN);
    cr_assert_eq(co_read_fd(pipefd[0], buf, sizeof(buf)), 5);
    cr_assert_eq(memcmp(buf, "hello", 5), 0);
    atomic_store(&io_done, true);
}

Test(loop, co_poll_and_co_read_on_pipe)
{
    cr_assert_eq(pipe(pipefd), 0);
    co_spawn(poll_then_read, NULL);
    loop_iterate(loop_main(), false);
    cr_assert_not(atomic_load(&io_done));
    cr_assert_eq(write(pipefd[1], "hello", 5), 5);
    run_until(&io_done);
}

/* ---- loop_run / loop_stop ---------------------------------------------- */

static void *stopper(void *opaque)
{
    atomic_bool *running = opaque;

    while (!atomic_load(running)) {
        sched_yield();
    }
    loop_stop(loop_main());
    return NULL;
}

static void mark_running(void *opaque)
{
    atomic_store((atomic_bool *)opaque, true);
}

Test(loop, loop_stop_from_another_thread)
{
    atomic_bool running = false;
    pthread_t th;

    loop_schedule(loop_main(), mark_running, &running);
    pthread_create(&th, NULL, stopper, &running);
    loop_run(loop_main());      /* returns only through loop_stop */
    pthread_join(th, NULL);
    cr_assert(atomic_load(&running));
}

/* ---- IOThreads ---------------------------------------------------------- */

static atomic_bool on_io_done;
static _Atomic(Loop *) seen_loop;

static void note_loop(void *opaque)
{
    atomic_store(&seen_loop, loop_current());
    atomic_store(&on_io_done, true);
    loop_schedule(loop_main(), noop, NULL);
}

Test(loop, iothread_runs_work_and_registry)
{
    IOThread *a = iothread_create("io-a"), *b = iothread_create("io-b");

    cr_assert_eq(iothread_count(), 2);
    cr_assert_eq(iothread_find("io-b"), b);
    cr_assert_null(iothread_find("io-c"));
    cr_assert_eq(iothread_nth(0), a);
    cr_assert_null(iothread_nth(2));
    cr_assert_str_eq(iothread_id(a), "io-a");
    cr_assert_str_eq(loop_name(iothread_loop(a)), "io-a");
    loop_schedule(iothread_loop(b), note_loop, NULL);
    run_until(&on_io_done);
    cr_assert_eq(atomic_load(&seen_loop), iothread_loop(b));
    iothread_destroy(a);
    cr_assert_eq(iothread_count(), 1);
    cr_assert_eq(iothread_nth(0), b);
    iothread_destroy(b);
    cr_assert_eq(iothread_count(), 0);
}

static atomic_bool io_thread_io_done;

static void io_on_iothread(void *opaque)
{
    int fd = *(int *)opaque;
    char buf[4] = "abcd", back[4];
    struct iovec w = { buf, 4 }, r = { back, 4 };

    cr_assert_eq(co_pwritev_fd(fd, &w, 1, 0), 4);
    cr_assert_eq(co_preadv_fd(fd, &r, 1, 0), 4);
    cr_assert_eq(memcmp(back, "abcd", 4), 0);
    co_sleep_ns(1000000);
    atomic_store(&io_thread_io_done, true);
    loop_schedule(loop_main(), noop, NULL);
}

static void spawn_io(void *opaque)
{
    co_spawn(io_on_iothread, opaque);
}

Test(loop, coroutine_io_on_iothread)
{
    IOThread *t = iothread_create("io0");
    int fd = mkstemp(tmpl);

    unlink(tmpl);
    loop_schedule(iothread_loop(t), spawn_io, &fd);
    run_until(&io_thread_io_done);
    iothread_destroy(t);
    close(fd);
}

/* ---- misuse is caught -------------------------------------------------- */

static void iterate_inside(void *opaque)
{
    loop_iterate(loop_main(), false);
}

Test(loop, iterate_from_coroutine_aborts, .signal = SIGABRT)
{
    co_spawn(iterate_inside, NULL);
}

static LoopTimer foreign_timer;
static void *arm_from_other_thread(void *opaque)
{
    loop_timer_arm(&foreign_timer, clock_ns() + 1000000000LL);
    return NULL;
}

Test(loop, timer_armed_from_other_thread_aborts, .signal = SIGABRT)
{
    pthread_t th;

    loop_timer_init(&foreign_timer, loop_main(), noop, NULL);
    pthread_create(&th, NULL, arm_from_other_thread, NULL);
    pthread_join(th, NULL);
}

static void *kick_later(void *opaque)
{
    loop_kick(loop_main());
    return NULL;
}

Test(loop, kick_wakes_a_blocked_iteration)
{
    pthread_t th;

    loop_iterate(loop_main(), false);   /* nothing pending any more */
    pthread_create(&th, NULL, kick_later, NULL);
    /* Would block forever without the kick (the suite timeout fails it). */
    loop_iterate(loop_main(), true);
    pthread_join(th, NULL);
}

/* ---- short sleeps on IOThreads under cross-thread traffic -------------- */

/*
 * Regression test for a hang seen with co_sleep_ns(1000) on two IOThreads: a
 * loop slept in its io_uring wait with no time limit while an expired timer
 * sat at the head of its list (the wait timeout, computed as a difference of
 * two clock reads, could come out negative = "forever").
 *
 * A token goes round a ring of coroutines spread over three IOThreads and is
 * passed on with co_wake().  The holder sleeps about 1 us, writes and reads back
 * its slot of a shared file through its ring and bounces a bottom half off
 * a third IOThread before passing the token on.  Only the holder has work,
 * so nothing else can come along and wake a loop that missed its timer: one
 * sleep that does not end stops the ring, and the guard fails the test.
 */
#define RING_THREADS 3
#define RING_MEMBERS (3 * RING_THREADS)
#define RING_LAPS 1500

typedef struct RingMember {
    Loop *home;
    Loop *bounce;               /* a loop that is neither home nor next */
    _Atomic(Coroutine *) co;
    int index;
} RingMember;

static RingMember ring_members[RING_MEMBERS];
static int ring_fd;
static atomic_int ring_created;
static atomic_bool ring_ready;
static atomic_int ring_turns;
static atomic_int ring_errors;
static atomic_int ring_bounced;
static atomic_bool ring_done;
static atomic_bool ring_bounces_done;

static void ring_tell_main(atomic_bool *flag)
{
    atomic_store(flag, true);
    loop_schedule(loop_main(), noop, NULL);
}

static void ring_bounce_bh(void *opaque)
{
    if (atomic_fetch_add(&ring_bounced, 1) == RING_MEMBERS * RING_LAPS - 1) {
        ring_tell_main(&ring_bounces_done);
    }
}

/* The holder's turn: a sleep of 0-2 us, a write and a read back through
 * the ring, a bottom half for another thread.  The sleep length varies so
 * that the time left when the loop computes its wait timeout sweeps the
 * whole range down to a few ns (a fixed 1 us lands on the same spot of a
 * deterministic code path every time). */
static void coroutine_fn ring_turn(RingMember *m, int lap)
{
    char out[16], in[16];
    struct iovec w = { out, sizeof(out) }, r = { in, sizeof(in) };
    off_t off = (off_t)m->index * sizeof(out);

    co_sleep_ns((lap * 997 + m->index * 131) % 2000);
    snprintf(out, sizeof(out), "%d/%d", m->index, lap);
    if (co_pwritev_fd(ring_fd, &w, 1, off) != sizeof(out) ||
        co_preadv_fd(ring_fd, &r, 1, off) != sizeof(in) ||
        memcmp(in, out, sizeof(in)) != 0) {
        atomic_fetch_add(&ring_errors, 1);
    }
    loop_schedule(m->bounce, ring_bounce_bh, NULL);
    atomic_fetch_add(&ring_turns, 1);
}

/* Each co_wake() is answered by exactly one co_yield() of the next member,
 * so no wake is pending when a member ends. */
static void coroutine_fn ring_member(void *opaque)
{
    RingMember *m = opaque;
    RingMember *next = &ring_members[(m->index + 1) % RING_MEMBERS];

    for (int lap = 0; lap < RING_LAPS; lap++) {
        co_yield();                     /* wait for the token */
        ring_turn(m, lap);
        if (m->index == RING_MEMBERS - 1 && lap == RING_LAPS - 1) {
            ring_tell_main(&ring_done);
        } else {
            co_wake(atomic_load(&next->co));
        }
    }
}

static void ring_create_member_bh(void *opaque)
{
    RingMember *m = opaque;
    Coroutine *co = co_create(ring_member, m);

    atomic_store(&m->co, co);
    co_enter(co);                       /* runs up to its first yield */
    if (atomic_fetch_add(&ring_created, 1) == RING_MEMBERS - 1) {
        ring_tell_main(&ring_ready);
    }
}

Test(loop, short_sleeps_on_iothreads_with_cross_thread_wakes)
{
    IOThread *t[RING_THREADS];

    ring_fd = mkstemp(tmpl);
    cr_assert_geq(ring_fd, 0);
    unlink(tmpl);
    for (int i = 0; i < RING_THREADS; i++) {
        char id[8];

        snprintf(id, sizeof(id), "io%d", i);
        t[i] = iothread_create(id);
    }
    for (int i = 0; i < RING_MEMBERS; i++) {
        RingMember *m = &ring_members[i];

        m->index = i;
        m->home = iothread_loop(t[i % RING_THREADS]);
        m->bounce = iothread_loop(t[(i + 2) % RING_THREADS]);
        loop_schedule(m->home, ring_create_member_bh, m);
    }
    run_until(&ring_ready);
    co_wake(atomic_load(&ring_members[0].co));  /* hand out the token */

    /* Not run_until(): the message says where the token stopped. */
    wait_flag_guarded(&ring_done);
    int turns = atomic_load(&ring_turns);
    cr_assert(atomic_load(&ring_done),
              "hang: the token stopped at member %d after %d of %d turns "
              "(a co_sleep_ns of < 2 us that did not end within %lld s)",
              turns % RING_MEMBERS, turns, RING_MEMBERS * RING_LAPS,
              TEST_GUARD_NS / 1000000000LL);
    cr_assert_eq(atomic_load(&ring_errors), 0);
    run_until(&ring_bounces_done);
    for (int i = 0; i < RING_THREADS; i++) {
        iothread_destroy(t[i]);
    }
    cr_assert_eq(atomic_load(&ring_bounced), RING_MEMBERS * RING_LAPS);
    close(ring_fd);
}
