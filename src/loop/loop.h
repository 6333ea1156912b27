/*
 * loop.h — one event loop per thread, each on its own io_uring ring.
 *
 * The main thread runs loop_main(); every IOThread runs its own Loop.  A loop
 * does four things, all through its ring: file I/O submitted by coroutines
 * (one SQE per request, submitted in a batch once per loop iteration),
 * timers, fd readiness, and cross-thread wake-ups (an eventfd).  Nothing in
 * the block layer polls a loop from inside a request (no nested polling):
 * waiting is always a coroutine yield.
 *
 * Thread-safety: loop_schedule(), loop_stop(), loop_kick() are thread-safe.
 * The co_*_fd() calls and timers act on the calling thread's loop and must be
 * called from that thread (the co_ ones from a coroutine).
 */
#ifndef DISKSTACK_LOOP_H
#define DISKSTACK_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include "annotations.h"

typedef struct Loop Loop;
typedef void LoopFn(void *opaque);

/* Creates a loop (and its ring).  It is bound to the thread that first runs
 * it; loop_main() is created by loop_init_main(). */
Loop *loop_new(const char *name);
void loop_free(Loop *loop);
void loop_init_main(void);
Loop *loop_main(void);
Loop *loop_current(void);             /* NULL on a thread without a loop */
const char *loop_name(const Loop *loop);

/* Runs the loop on the calling thread until loop_stop(). */
void loop_run(Loop *loop);
void loop_stop(Loop *loop);
/* Runs one iteration; blocks for events only if `blocking`.  For tests and
 * for the main thread's start-up code, never from inside a coroutine. */
bool loop_iterate(Loop *loop, bool blocking);

/* Thread-safe: runs fn(opaque) on loop's thread soon (a bottom half). */
void loop_schedule(Loop *loop, LoopFn *fn, void *opaque);
/* A coroutine on any loop: runs fn(opaque) as a bottom half on the main
 * loop (GS: main thread, global lock held) and returns once it has run.
 * For I/O code that needs one GS step (a permission change, an event with
 * a job state change) without blocking its thread. */
void coroutine_fn co_run_on_main_loop(LoopFn *fn, void *opaque);
void loop_kick(Loop *loop);

/* Monotonic clock in ns. */
int64_t clock_ns(void);

/*
 * Timers: callbacks on the owning loop's thread.  Arm and cancel from that
 * thread only.
 */
typedef struct LoopTimer {
    Loop *loop;
    LoopFn *cb;
    void *opaque;
    int64_t deadline;                 /* internal; 0 = not armed */
    struct LoopTimer *next;           /* internal */
} LoopTimer;
void loop_timer_init(LoopTimer *t, Loop *loop, LoopFn *cb, void *opaque);
void loop_timer_arm(LoopTimer *t, int64_t deadline_ns);   /* clock_ns() based */
void loop_timer_cancel(LoopTimer *t);
bool loop_timer_pending(const LoopTimer *t);

/*
 * fd handlers: cb runs on the loop's thread whenever fd is readable
 * (level-triggered, re-armed after each call).  For listening sockets,
 * signalfd and the like — not for request traffic.
 */
void loop_set_fd_handler(Loop *loop, int fd, LoopFn *on_readable, void *opaque);
void loop_remove_fd_handler(Loop *loop, int fd);

/*
 * Coroutine I/O on the calling thread's ring.  Each returns what the kernel
 * returned (bytes, or -errno); no retry on short I/O (callers handle it).
 */
ssize_t coroutine_fn co_preadv_fd(int fd, const struct iovec *iov, int iovcnt, off_t off);
ssize_t coroutine_fn co_pwritev_fd(int fd, const struct iovec *iov, int iovcnt, off_t off);
int coroutine_fn co_fsync_fd(int fd, bool datasync);
int coroutine_fn co_fallocate_fd(int fd, int mode, off_t off, off_t len);
/* Waits until fd has one of `events` (POLLIN...); returns revents or -errno. */
int coroutine_fn co_poll_fd(int fd, int events);
/* Reads from fd through the ring (e.g. a /dev/fuse clone). */
ssize_t coroutine_fn co_read_fd(int fd, void *buf, size_t len);

/*
 * Blocking calls on a worker thread (thread-pool.c).
 *
 * co_run_blocking() runs fn(opaque) on a thread of one process-wide pool and
 * yields until it returns; the worker wakes the coroutine with co_wake(), so
 * it resumes on its home loop.  Returns fn's result.  For system calls that
 * block or that io_uring serves badly (see protocols/file.c).  No allocation
 * per call: the job record lives on the caller's stack.  Workers are started
 * on demand up to a cap, idle ones exit after a few seconds, calls queue FIFO
 * while all are busy; the pool stops (joining every worker) at exit.
 *
 * Thread-safety: any coroutine on any thread with a loop.  fn runs on a
 * thread without a loop or coroutines: it must not call co_ or loop_
 * functions (except the thread-safe ones).
 */
int coroutine_fn co_run_blocking(int (*fn)(void *opaque), void *opaque);
/* Tests and tuning; thread-safe.  max_workers >= 1; idle_ns > 0.  Lowering
 * the cap does not stop busy workers, it only keeps new ones from starting. */
void thread_pool_set_limits(int max_workers, int64_t idle_ns);
/* Workers alive right now (busy or idle); thread-safe. */
int thread_pool_worker_count(void);

/*
 * IOThreads: a thread running its own Loop.
 */
typedef struct IOThread IOThread;
IOThread *iothread_create(const char *id);   /* starts the thread */
void iothread_destroy(IOThread *t);          /* stops and joins */
Loop *iothread_loop(IOThread *t);
const char *iothread_id(const IOThread *t);
/* The thread's kernel id (gettid), as QMP query-iothreads' thread-id. */
pid_t iothread_thread_id(const IOThread *t);
/*
 * QEMU's iothread object properties (object-add, query-iothreads).  Kept
 * and reported so QEMU's scripts work; they change nothing: our loops wait
 * in io_uring and never busy-poll, and submit every ready request at once.
 * GS: main thread only.
 */
typedef struct IOThreadParams {
    int64_t poll_max_ns;     /* QEMU's default: IOTHREAD_POLL_MAX_NS_DEFAULT */
    int64_t poll_grow;
    int64_t poll_shrink;
    int64_t aio_max_batch;
} IOThreadParams;
#define IOTHREAD_POLL_MAX_NS_DEFAULT 32768
void iothread_get_params(const IOThread *t, IOThreadParams *p);
void iothread_set_params(IOThread *t, const IOThreadParams *p);
/* Registry of the IOThreads created so far (GS: main thread only). */
IOThread *iothread_find(const char *id);
int iothread_count(void);
IOThread *iothread_nth(int i);

#endif
