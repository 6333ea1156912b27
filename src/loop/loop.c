/*
 * loop.c — one event loop per thread on its own io_uring ring (see loop.h).
 *
 * One iteration: run the bottom halves queued so far and the expired timers;
 * then submit every SQE prepared since the last iteration in one
 * io_uring_enter() and, if nothing else is ready and the caller wants to
 * block, wait in the same call for a completion or the nearest timer
 * deadline; then dispatch the completions.  Coroutines that prepare I/O only
 * fill SQEs and yield, so a burst of requests costs one system call.
 *
 * Every CQE's user_data points at a LoopCompletion whose callback gets the
 * result.  Coroutine I/O keeps the completion on the coroutine's stack and
 * the callback re-enters the coroutine directly (we are on its thread).
 *
 * Cross-thread wake-ups: bottom halves go on a lock-free intrusive
 * multi-producer stack (the consumer takes the whole stack at once and
 * reverses it, so order is FIFO).  A producer writes the loop's eventfd only
 * if the loop announced it is about to sleep (notify_me), and only the first
 * producer of a sleep does (kick_pending) — the classic Dekker pair of
 * sequentially consistent accesses: either the producer sees notify_me or
 * the loop sees the new bottom half before sleeping.  The ring
 * keeps a read of the eventfd in flight, so a write completes it and ends
 * the wait.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <liburing.h>

#include "coroutine/coroutine.h"
#include "loop/loop.h"
#include "loop/loop-int.h"

#define LOOP_SQ_ENTRIES 256
#define LOOP_CQ_ENTRIES 1024

typedef struct LoopCompletion LoopCompletion;
struct LoopCompletion {
    void (*done)(LoopCompletion *c, int res);
};

typedef struct FdHandler {
    LoopCompletion comp;
    Loop *loop;
    int fd;
    LoopFn *on_readable;
    void *opaque;
    bool removed;           /* unlinked by the user; freed by its last CQE */
    bool polling;           /* a POLL_ADD is in flight */
    struct FdHandler *next;
} FdHandler;

struct Loop {
    char *name;
    struct io_uring ring;
    pthread_t thread;
    bool bound;
    _Atomic(LoopBH *) bh_head;
    atomic_bool notify_me;      /* about to sleep: producers must kick */
    atomic_bool kick_pending;   /* a producer kicked during this sleep */
    atomic_bool stop;
    int efd;
    uint64_t efd_buf;
    LoopCompletion efd_comp;
    LoopTimer *timers;          /* sorted by deadline */
    FdHandler *handlers;
};

static __thread Loop *current_loop;
static Loop *main_loop;

static void loop_die(const char *what, int err)
{
    fprintf(stderr, "diskstack: loop: %s%s%s\n", what, err ? ": " : "",
            err ? strerror(err) : "");
    abort();
}

int64_t clock_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Timers and fd handlers belong to the loop's thread (before the loop is
 * bound to a thread, whoever sets it up). */
static void loop_assert_owner(const Loop *loop, const char *func)
{
    if (loop->bound && !pthread_equal(loop->thread, pthread_self())) {
        fprintf(stderr, "diskstack: loop: %s on loop '%s' from another "
                "thread\n", func, loop->name);
        abort();
    }
}

/* ---- submission -------------------------------------------------------- */

/* Loop thread.  Submits the prepared SQEs without waiting.  Returns false if
 * the kernel is out of room for completions (CQ overflow backlog full). */
static bool loop_submit(Loop *loop)
{
    for (;;) {
        int ret = io_uring_submit(&loop->ring);

        if (ret >= 0) {
            return true;
        }
        if (ret == -EINTR) {
            continue;
        }
        if (ret == -EBUSY || ret == -EAGAIN) {
            return false;
        }
        loop_die("io_uring_submit", -ret);
    }
}

/* Loop thread.  An SQE; if the SQ is full, what is queued is submitted at
 * once.  If even that fails (completions must be reaped first), a coroutine
 * lets the loop run an iteration and tries again. */
static struct io_uring_sqe *loop_get_sqe(Loop *loop)
{
    struct io_uring_sqe *sqe;

    while (!(sqe = io_uring_get_sqe(&loop->ring))) {
        if (!loop_submit(loop)) {
            if (!in_coroutine()) {
                loop_die("submission queue stuck outside a coroutine", 0);
            }
            co_wake(co_self());
            co_yield();
        }
    }
    return sqe;
}

/* ---- bottom halves ----------------------------------------------------- */

void loop_schedule_bh(Loop *loop, LoopBH *bh, LoopFn *fn, void *opaque)
{
    LoopBH *old = atomic_load_explicit(&loop->bh_head, memory_order_relaxed);

    bh->fn = fn;
    bh->opaque = opaque;
    do {
        bh->next = old;
    } while (!atomic_compare_exchange_weak_explicit(&loop->bh_head, &old, bh,
                 memory_order_seq_cst, memory_order_relaxed));
    /* Pairs with the store of notify_me in loop_iterate(): seq_cst on both
     * sides.  One kick per sleep is enough, hence kick_pending. */
    if (atomic_load(&loop->notify_me) &&
        !atomic_exchange(&loop->kick_pending, true)) {
        loop_kick(loop);
    }
}

void loop_schedule(Loop *loop, LoopFn *fn, void *opaque)
{
    LoopBH *bh = malloc(sizeof(*bh));

    if (!bh) {
        loop_die("out of memory", 0);
    }
    bh->heap = 1;
    loop_schedule_bh(loop, bh, fn, opaque);
}

typedef struct MainLoopCall {
    LoopFn *fn;
    void *opaque;
    CoEvent done;
} MainLoopCall;

/* Bottom half on the main loop: the call, then its caller goes on. */
static void main_loop_call_bh(void *opaque)
{
    MainLoopCall *c = opaque;

    c->fn(c->opaque);
    co_event_set(&c->done);             /* c is gone after this */
}

void coroutine_fn co_run_on_main_loop(LoopFn *fn, void *opaque)
{
    MainLoopCall c = { .fn = fn, .opaque = opaque };

    co_event_init(&c.done);
    loop_schedule(loop_main(), main_loop_call_bh, &c);
    co_event_wait(&c.done);
}

void loop_kick(Loop *loop)
{
    uint64_t one = 1;

    /* Only EAGAIN (counter about to overflow) can fail: already kicked. */
    if (write(loop->efd, &one, sizeof(one)) < 0 && errno != EAGAIN) {
        loop_die("eventfd write", errno);
    }
}

/* Loop thread: runs the bottom halves queued so far, oldest first.  Ones
 * queued while these run wait for the next call. */
static bool run_bhs(Loop *loop)
{
    LoopBH *list = atomic_exchange(&loop->bh_head, NULL);
    LoopBH *fifo = NULL;

    if (!list) {
        return false;
    }
    while (list) {
        LoopBH *next = list->next;

        list->next = fifo;
        fifo = list;
        list = next;
    }
    while (fifo) {
        LoopBH *bh = fifo;
        LoopFn *fn = bh->fn;
        void *opaque = bh->opaque;

        /* bh may be queued again or freed by fn: done with it first. */
        fifo = bh->next;
        if (bh->heap) {
            free(bh);
        }
        fn(opaque);
    }
    return true;
}

/* ---- timers ------------------------------------------------------------ */

void loop_timer_init(LoopTimer *t, Loop *loop, LoopFn *cb, void *opaque)
{
    t->loop = loop;
    t->cb = cb;
    t->opaque = opaque;
    t->deadline = 0;
    t->next = NULL;
}

bool loop_timer_pending(const LoopTimer *t)
{
    return t->deadline != 0;
}

void loop_timer_cancel(LoopTimer *t)
{
    LoopTimer **p;

    if (!t->deadline) {
        return;
    }
    loop_assert_owner(t->loop, __func__);
    for (p = &t->loop->timers; *p; p = &(*p)->next) {
        if (*p == t) {
            *p = t->next;
            break;
        }
    }
    t->deadline = 0;
    t->next = NULL;
}

/* Insertion keeps the list sorted; equal deadlines fire in arming order. */
void loop_timer_arm(LoopTimer *t, int64_t deadline_ns)
{
    LoopTimer **p;

    loop_assert_owner(t->loop, __func__);
    loop_timer_cancel(t);
    t->deadline = deadline_ns > 0 ? deadline_ns : 1;
    for (p = &t->loop->timers; *p && (*p)->deadline <= t->deadline;
         p = &(*p)->next) {
    }
    t->next = *p;
    *p = t;
}

/* Loop thread: fires the timers due now.  One at a time, since a callback
 * may arm or cancel others. */
static bool run_timers(Loop *loop)
{
    int64_t now;
    bool progress = false;

    if (!loop->timers) {
        return false;
    }
    now = clock_ns();
    while (loop->timers && loop->timers->deadline <= now) {
        LoopTimer *t = loop->timers;

        loop->timers = t->next;
        t->next = NULL;
        t->deadline = 0;
        t->cb(t->opaque);
        progress = true;
    }
    return progress;
}

/* ---- completions ------------------------------------------------------- */

static void efd_arm(Loop *loop)
{
    struct io_uring_sqe *sqe = loop_get_sqe(loop);

    io_uring_prep_read(sqe, loop->efd, &loop->efd_buf, sizeof(loop->efd_buf), 0);
    io_uring_sqe_set_data(sqe, &loop->efd_comp);
}

static void efd_done(LoopCompletion *c, int res)
{
    Loop *loop = container_of(c, Loop, efd_comp);

    if (res < 0 && res != -EINTR && res != -EAGAIN && res != -ECANCELED) {
        loop_die("eventfd read", -res);
    }
    efd_arm(loop);
}

/* Loop thread: dispatches every completion available now. */
static bool reap_cqes(Loop *loop)
{
    struct io_uring_cqe *cqe;
    bool progress = false;

    while (io_uring_peek_cqe(&loop->ring, &cqe) == 0) {
        LoopCompletion *c = io_uring_cqe_get_data(cqe);
        int res = cqe->res;

        io_uring_cqe_seen(&loop->ring, cqe);
        if (c) {                /* NULL: a poll-remove request, no one waits */
            c->done(c, res);
            progress = true;
        }
    }
    return progress;
}

/* "Wait until a completion arrives": no timer and nothing queued.  Only
 * loop_wait_timeout() produces it, never arithmetic on deadlines. */
#define LOOP_WAIT_FOREVER (-1)

/* Loop thread, just before sleeping: how long the wait may last.  0 if a
 * bottom half or a stop is already there (the wait only submits and peeks),
 * the time left to the nearest timer, or LOOP_WAIT_FOREVER without timers.
 *
 * The time left is read from the clock exactly once and clamped at 0.  It
 * used to be MAX(deadline - clock_ns(), 0), and MAX() evaluates its argument
 * twice: the comparison could see +20 ns and the result, from a second
 * clock read, -5 ns — which loop_wait() took for "no limit".  The loop then
 * slept with an expired timer at the head of its list until some unrelated
 * completion or kick came, forever if the coroutine that timer would wake
 * was the one everybody else waited for.  Sleeps of about 1 us keep the
 * time left that small: test-loop's ring of sleepers fell into this window
 * within a few hundred sleeps. */
static int64_t loop_wait_timeout(Loop *loop)
{
    int64_t left;

    if (atomic_load(&loop->bh_head) || atomic_load(&loop->stop)) {
        return 0;
    }
    if (!loop->timers) {
        return LOOP_WAIT_FOREVER;
    }
    left = loop->timers->deadline - clock_ns();
    return left > 0 ? left : 0;
}

/* Loop thread: submits, and waits for a completion until `timeout_ns` from
 * now (>= 0), or without limit if it is LOOP_WAIT_FOREVER. */
static void loop_wait(Loop *loop, int64_t timeout_ns)
{
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts;
    int ret;

    if (timeout_ns < 0 && timeout_ns != LOOP_WAIT_FOREVER) {
        /* A computed timeout gone negative must not mean "forever". */
        loop_die("negative wait timeout", 0);
    }
    if (timeout_ns == LOOP_WAIT_FOREVER) {
        ret = io_uring_submit_and_wait(&loop->ring, 1);
    } else {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        ret = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, 1, &ts, NULL);
    }
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY &&
        ret != -EAGAIN) {
        loop_die("io_uring wait", -ret);
    }
}

/* ---- the loop ---------------------------------------------------------- */

static void loop_bind(Loop *loop)
{
    if (!loop->bound) {
        if (current_loop && current_loop != loop) {
            loop_die("a thread can run only one loop", 0);
        }
        loop->thread = pthread_self();
        loop->bound = true;
        current_loop = loop;
    } else if (!pthread_equal(loop->thread, pthread_self())) {
        loop_die("loop run from a thread it does not belong to", 0);
    }
}

Loop *loop_new(const char *name)
{
    Loop *loop = calloc(1, sizeof(*loop));
    struct io_uring_params p;
    int ret;

    if (!loop || !(loop->name = strdup(name ? name : "loop"))) {
        loop_die("out of memory", 0);
    }
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN;
    p.cq_entries = LOOP_CQ_ENTRIES;
    ret = io_uring_queue_init_params(LOOP_SQ_ENTRIES, &loop->ring, &p);
    if (ret == -EINVAL) {       /* kernel older than 5.19: no COOP_TASKRUN */
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = LOOP_CQ_ENTRIES;
        ret = io_uring_queue_init_params(LOOP_SQ_ENTRIES, &loop->ring, &p);
    }
    if (ret < 0) {
        loop_die("cannot create an io_uring ring", -ret);
    }
    loop->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->efd < 0) {
        loop_die("eventfd", errno);
    }
    loop->efd_comp.done = efd_done;
    efd_arm(loop);
    return loop;
}

void loop_free(Loop *loop)
{
    LoopBH *bh = atomic_exchange(&loop->bh_head, NULL);

    while (bh) {                /* dropped: nobody will run this loop again */
        LoopBH *next = bh->next;

        if (bh->heap) {
            free(bh);
        }
        bh = next;
    }
    while (loop->handlers) {
        FdHandler *h = loop->handlers;

        loop->handlers = h->next;
        free(h);
    }
    io_uring_queue_exit(&loop->ring);
    close(loop->efd);
    if (current_loop == loop) {
        current_loop = NULL;
    }
    if (main_loop == loop) {
        main_loop = NULL;
    }
    free(loop->name);
    free(loop);
}

void loop_init_main(void)
{
    if (main_loop) {
        if (current_loop != main_loop) {
            loop_die("loop_init_main called from two threads", 0);
        }
        return;
    }
    main_loop = loop_new("main");
    loop_bind(main_loop);
}

Loop *loop_main(void)
{
    return main_loop;
}

Loop *loop_current(void)
{
    return current_loop;
}

const char *loop_name(const Loop *loop)
{
    return loop->name;
}

/* Loop thread, outside coroutines. */
bool loop_iterate(Loop *loop, bool blocking)
{
    bool progress;

    if (in_coroutine()) {
        loop_die("loop_iterate called from a coroutine (nested polling)", 0);
    }
    loop_bind(loop);
    progress = run_bhs(loop);
    progress |= run_timers(loop);
    if (blocking && !progress && !atomic_load(&loop->stop)) {
        /* notify_me first: a bottom half queued after this store kicks us,
         * one queued before it is seen by loop_wait_timeout(). */
        /* kick_pending is cleared before notify_me is set, not after the
         * wait: a producer that read notify_me during the previous sleep
         * may set kick_pending late; cleared after the wait, that late
         * value would survive into this sleep and make every producer of
         * this sleep skip its kick (a lost wake-up).  Cleared here, a late
         * producer's own eventfd write ends this sleep instead. */
        atomic_store(&loop->kick_pending, false);
        atomic_store(&loop->notify_me, true);
        loop_wait(loop, loop_wait_timeout(loop));
        atomic_store(&loop->notify_me, false);
    } else if (io_uring_sq_ready(&loop->ring)) {
        loop_submit(loop);
    }
    progress |= reap_cqes(loop);
    progress |= run_timers(loop);
    progress |= run_bhs(loop);
    return progress;
}

void loop_run(Loop *loop)
{
    loop_bind(loop);
    while (!atomic_load(&loop->stop)) {
        loop_iterate(loop, true);
    }
    atomic_store(&loop->stop, false);
}

/* Thread-safe. */
void loop_stop(Loop *loop)
{
    atomic_store(&loop->stop, true);
    loop_kick(loop);
}

/* ---- fd handlers ------------------------------------------------------- */

static void fd_handler_arm(FdHandler *h)
{
    struct io_uring_sqe *sqe = loop_get_sqe(h->loop);

    io_uring_prep_poll_add(sqe, h->fd, POLLIN);
    io_uring_sqe_set_data(sqe, &h->comp);
    h->polling = true;
}

static void fd_handler_free(FdHandler *h)
{
    FdHandler **p;

    for (p = &h->loop->handlers; *p; p = &(*p)->next) {
        if (*p == h) {
            *p = h->next;
            break;
        }
    }
    free(h);
}

/* Level-triggered: the one-shot poll is re-armed after each callback, and
 * fires again at once if the fd is still readable. */
static void fd_handler_done(LoopCompletion *c, int res)
{
    FdHandler *h = container_of(c, FdHandler, comp);

    h->polling = false;
    if (h->removed) {
        fd_handler_free(h);
        return;
    }
    if (res == -ECANCELED) {
        return;
    }
    h->on_readable(h->opaque);
    if (h->removed) {
        fd_handler_free(h);
    } else {
        fd_handler_arm(h);
    }
}

static FdHandler *fd_handler_find(Loop *loop, int fd)
{
    FdHandler *h;

    for (h = loop->handlers; h; h = h->next) {
        if (h->fd == fd && !h->removed) {
            return h;
        }
    }
    return NULL;
}

void loop_set_fd_handler(Loop *loop, int fd, LoopFn *on_readable, void *opaque)
{
    FdHandler *h;

    loop_assert_owner(loop, __func__);
    if (!on_readable) {
        loop_remove_fd_handler(loop, fd);
        return;
    }
    h = fd_handler_find(loop, fd);
    if (h) {
        h->on_readable = on_readable;
        h->opaque = opaque;
        return;
    }
    h = calloc(1, sizeof(*h));
    if (!h) {
        loop_die("out of memory", 0);
    }
    h->comp.done = fd_handler_done;
    h->loop = loop;
    h->fd = fd;
    h->on_readable = on_readable;
    h->opaque = opaque;
    h->next = loop->handlers;
    loop->handlers = h;
    fd_handler_arm(h);
}

void loop_remove_fd_handler(Loop *loop, int fd)
{
    FdHandler *h = fd_handler_find(loop, fd);
    struct io_uring_sqe *sqe;

    loop_assert_owner(loop, __func__);
    if (!h) {
        return;
    }
    h->removed = true;
    if (h->polling) {
        /* The poll's -ECANCELED completion frees h. */
        sqe = loop_get_sqe(loop);
        io_uring_prep_poll_remove(sqe, (__u64)(uintptr_t)&h->comp);
        io_uring_sqe_set_data(sqe, NULL);
    }
    /* else: its callback is running; fd_handler_done frees it after. */
}

/* ---- coroutine I/O ----------------------------------------------------- */

typedef struct CoIoWait {
    LoopCompletion comp;
    Coroutine *co;
    int res;
} CoIoWait;

static void co_io_done(LoopCompletion *c, int res)
{
    CoIoWait *w = container_of(c, CoIoWait, comp);

    w->res = res;
    co_enter(w->co);
}

/* Coroutine: an SQE on this thread's ring whose completion resumes us. */
static struct io_uring_sqe *co_io_begin(CoIoWait *w)
{
    Loop *loop = current_loop;
    struct io_uring_sqe *sqe;

    if (!loop || !in_coroutine()) {
        loop_die("coroutine I/O outside a coroutine on a loop thread", 0);
    }
    w->comp.done = co_io_done;
    w->co = co_self();
    sqe = loop_get_sqe(loop);
    io_uring_sqe_set_data(sqe, &w->comp);
    return sqe;
}

/* Coroutine: waits for the SQE prepared after co_io_begin.  The SQE goes to
 * the kernel with the rest of this iteration's batch. */
static int co_io_wait(CoIoWait *w)
{
    co_yield();
    return w->res;
}

ssize_t coroutine_fn co_preadv_fd(int fd, const struct iovec *iov, int iovcnt,
                                  off_t off)
{
    CoIoWait w;
    struct io_uring_sqe *sqe = co_io_begin(&w);

    if (iovcnt == 1) {
        io_uring_prep_read(sqe, fd, iov[0].iov_base, iov[0].iov_len, off);
    } else {
        io_uring_prep_readv(sqe, fd, iov, iovcnt, off);
    }
    io_uring_sqe_set_data(sqe, &w.comp);
    return co_io_wait(&w);
}

ssize_t coroutine_fn co_pwritev_fd(int fd, const struct iovec *iov, int iovcnt,
                                   off_t off)
{
    CoIoWait w;
    struct io_uring_sqe *sqe = co_io_begin(&w);

    if (iovcnt == 1) {
        io_uring_prep_write(sqe, fd, iov[0].iov_base, iov[0].iov_len, off);
    } else {
        io_uring_prep_writev(sqe, fd, iov, iovcnt, off);
    }
    io_uring_sqe_set_data(sqe, &w.comp);
    return co_io_wait(&w);
}

int coroutine_fn co_fsync_fd(int fd, bool datasync)
{
    CoIoWait w;
    struct io_uring_sqe *sqe = co_io_begin(&w);

    io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    io_uring_sqe_set_data(sqe, &w.comp);
    return co_io_wait(&w);
}

int coroutine_fn co_fallocate_fd(int fd, int mode, off_t off, off_t len)
{
    CoIoWait w;
    struct io_uring_sqe *sqe = co_io_begin(&w);

    io_uring_prep_fallocate(sqe, fd, mode, off, len);
    io_uring_sqe_set_data(sqe, &w.comp);
    return co_io_wait(&w);
}

int coroutine_fn co_poll_fd(int fd, int events)
{
    CoIoWait w;
    struct io_uring_sqe *sqe = co_io_begin(&w);

    io_uring_prep_poll_add(sqe, fd, (unsigned)events);
    io_uring_sqe_set_data(sqe, &w.comp);
    return co_io_wait(&w);
}

ssize_t coroutine_fn co_read_fd(int fd, void *buf, size_t len)
{
    CoIoWait w;
    struct io_uring_sqe *sqe = co_io_begin(&w);

    /* Offset -1: the file position, as read(2) (also for pipes, devices). */
    io_uring_prep_read(sqe, fd, buf, (unsigned)len, (__u64)-1);
    io_uring_sqe_set_data(sqe, &w.comp);
    return co_io_wait(&w);
}
