/*
 * thread-pool.c — blocking calls on worker threads, for coroutines.
 *
 * Why a pool next to io_uring: some system calls block (fallocate, fdatasync)
 * and io_uring serves some badly — O_DIRECT writes to one regular file are
 * punted to io-wq, which serialises them per inode (see protocols/file.c for
 * the numbers).  co_run_blocking() runs such a call on a plain thread and
 * wakes the caller when it returns.
 *
 * Design:
 *  - One process-wide pool, one mutex.  Each worker has its own condition
 *    variable, so a submitter wakes exactly the worker it hands the job to
 *    (no thundering herd on a shared condvar).
 *  - The job record (PoolJob) lives on the calling coroutine's stack: a call
 *    allocates nothing.  The caller stays yielded until the worker has
 *    written the result and called co_wake().
 *  - Submit: an idle worker gets the job directly (LIFO: the most recently
 *    idle worker is the warmest, and the others can time out); else a new
 *    worker starts with the job, up to the cap; else the job waits in a FIFO
 *    queue that a worker drains before it goes idle.  So: queue non-empty
 *    implies no idle worker.
 *  - Waking is the last thing a worker does with a job, and co_wake() still
 *    touches the caller's loop after it has queued the wake-up; the caller,
 *    once resumed, waits for the worker's "released" flag, so that when
 *    co_run_blocking() returns nothing of the pool touches its stack or its
 *    loop any more (the loop may be freed right after, e.g. an IOThread
 *    destroyed once its last request completed).
 *  - An idle worker exits after idle_ns.  Workers are detached threads that
 *    free their own record: an idle-timeout exit needs nobody to join it
 *    (a finished, unjoined thread is a leak to TSan).  At exit the pool
 *    stops: idle workers leave at once, busy ones after their job, and the
 *    atexit handler waits until the last has left (bounded).
 *  - Workers block every signal: signals belong to the main loop.
 *
 * Threading: everything here is thread-safe.  fn runs on a worker, which has
 * no loop and no coroutines.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coroutine/coroutine.h"
#include "loop/loop.h"

#define POOL_DEFAULT_MAX_WORKERS 64
#define POOL_DEFAULT_IDLE_NS     (5 * 1000000000LL)
/* How long exit waits for busy workers before it leaves them be. */
#define POOL_EXIT_WAIT_NS        (10 * 1000000000LL)

typedef struct PoolJob {
    int (*fn)(void *opaque);
    void *opaque;
    int ret;
    Coroutine *co;
    atomic_bool released;       /* the worker is done with job and co_wake() */
    struct PoolJob *next;       /* in the queue */
} PoolJob;

typedef struct Worker {
    pthread_cond_t cond;        /* a job was handed over, or the pool stops */
    PoolJob *job;               /* handed over by a submitter (pool.lock) */
    struct Worker *next_idle;
} Worker;

/* All fields under lock. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t exited;      /* nworkers went down; set up once */
    Worker *idle;               /* LIFO of parked workers */
    PoolJob *head, *tail;       /* jobs waiting for a worker */
    int nworkers;               /* started and not exited, busy or idle */
    int max_workers;
    int64_t idle_ns;
    bool stopping;              /* at exit: no new workers, idle ones leave */
} pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .max_workers = POOL_DEFAULT_MAX_WORKERS,
    .idle_ns = POOL_DEFAULT_IDLE_NS,
};

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static struct timespec deadline_after(int64_t ns)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ns += ts.tv_nsec;
    ts.tv_sec += ns / 1000000000LL;
    ts.tv_nsec = ns % 1000000000LL;
    return ts;
}

/* Timed waits use the monotonic clock: a clock change must not stretch
 * or cut an idle timeout. */
static void cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t attr;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

/* ------------------------------------------------------------------------
 * Worker side
 */

/* pool.lock held: the next job for w, if any. */
static PoolJob *take_job(Worker *w)
{
    PoolJob *job = w->job;

    if (job) {
        w->job = NULL;
        return job;
    }
    job = pool.head;
    if (job) {
        pool.head = job->next;
        if (!pool.head) {
            pool.tail = NULL;
        }
    }
    return job;
}

/* Runs the job and hands the result back.  After the release store the job
 * record may be gone (the coroutine returns from co_run_blocking). */
static void run_job(PoolJob *job)
{
    job->ret = job->fn(job->opaque);
    co_wake(job->co);
    atomic_store_explicit(&job->released, true, memory_order_release);
}

/* pool.lock held: takes w off the idle list (it idled out). */
static void idle_remove(Worker *w)
{
    for (Worker **p = &pool.idle; *p; p = &(*p)->next_idle) {
        if (*p == w) {
            *p = w->next_idle;
            return;
        }
    }
}

/* pool.lock held: parks w until a submitter hands it a job (true) or it
 * idles out or the pool stops (false). */
static bool wait_for_job(Worker *w)
{
    struct timespec deadline = deadline_after(pool.idle_ns);

    w->next_idle = pool.idle;
    pool.idle = w;
    while (!w->job && !pool.stopping) {
        if (pthread_cond_timedwait(&w->cond, &pool.lock, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    if (w->job) {
        return true;             /* the submitter took us off the list */
    }
    idle_remove(w);
    return false;
}

/* pool.lock held, released here: w (on no list any more) leaves the pool
 * and frees itself. */
static void worker_exit(Worker *w)
{
    pthread_cond_destroy(&w->cond);
    free(w);
    pool.nworkers--;
    pthread_cond_broadcast(&pool.exited);
    pthread_mutex_unlock(&pool.lock);
}

static void *worker_main(void *opaque)
{
    Worker *w = opaque;

    pthread_setname_np(pthread_self(), "ds-pool");
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        PoolJob *job = take_job(w);

        if (job) {
            pthread_mutex_unlock(&pool.lock);
            run_job(job);
            pthread_mutex_lock(&pool.lock);
            continue;
        }
        if (pool.stopping || !wait_for_job(w)) {
            break;
        }
    }
    worker_exit(w);
    return NULL;
}

/* Starts a (detached) worker whose first job is job; false if the thread
 * could not be created.  Every signal is blocked in the new thread. */
static bool start_worker(PoolJob *job)
{
    Worker *w = calloc(1, sizeof(*w));
    pthread_attr_t attr;
    pthread_t thread;
    sigset_t all, old;
    int ret;

    if (!w) {
        return false;
    }
    cond_init_monotonic(&w->cond);
    w->job = job;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    ret = pthread_create(&thread, &attr, worker_main, w);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (ret != 0) {
        pthread_cond_destroy(&w->cond);
        free(w);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------------
 * Caller side
 */

/* pool.lock held. */
static void enqueue(PoolJob *job)
{
    job->next = NULL;
    if (pool.tail) {
        pool.tail->next = job;
    } else {
        pool.head = job;
    }
    pool.tail = job;
}

/* Gives job to a worker; false if there is none and none could be started
 * (the caller then runs it itself). */
static bool submit(PoolJob *job)
{
    pthread_mutex_lock(&pool.lock);
    if (pool.idle) {
        Worker *w = pool.idle;
        pool.idle = w->next_idle;
        w->job = job;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&pool.lock);
        return true;
    }
    if (pool.nworkers < pool.max_workers && !pool.stopping) {
        pool.nworkers++;
        pthread_mutex_unlock(&pool.lock);
        if (start_worker(job)) {
            return true;
        }
        pthread_mutex_lock(&pool.lock);
        pool.nworkers--;
        pthread_cond_broadcast(&pool.exited);
    }
    if (pool.nworkers == 0) {
        pthread_mutex_unlock(&pool.lock);
        return false;
    }
    enqueue(job);
    pthread_mutex_unlock(&pool.lock);
    return true;
}

/* At exit: idle workers leave, busy ones leave after their job; waits for
 * all of them (bounded: a call stuck in the kernel must not hang exit). */
static void pool_stop_at_exit(void)
{
    struct timespec deadline = deadline_after(POOL_EXIT_WAIT_NS);

    pthread_mutex_lock(&pool.lock);
    pool.stopping = true;
    for (Worker *w = pool.idle; w; w = w->next_idle) {
        pthread_cond_signal(&w->cond);
    }
    while (pool.nworkers > 0) {
        if (pthread_cond_timedwait(&pool.exited, &pool.lock, &deadline) == ETIMEDOUT) {
            fprintf(stderr, "diskstack: %d blocking call(s) still running at exit\n",
                    pool.nworkers);
            pthread_mutex_unlock(&pool.lock);
            return;
        }
    }
    pthread_mutex_unlock(&pool.lock);
}

/* Before the first worker starts. */
static void pool_init_once(void)
{
    cond_init_monotonic(&pool.exited);
    atexit(pool_stop_at_exit);
}

int coroutine_fn co_run_blocking(int (*fn)(void *opaque), void *opaque)
{
    PoolJob job = { .fn = fn, .opaque = opaque, .co = co_self() };

    if (!job.co) {
        fprintf(stderr, "co_run_blocking outside a coroutine\n");
        abort();
    }
    pthread_once(&pool_once, pool_init_once);
    if (!submit(&job)) {
        return fn(opaque);       /* no thread at all: better slow than failed */
    }
    co_yield();
    /* Usually set already; else the worker is finishing co_wake(). */
    while (!atomic_load_explicit(&job.released, memory_order_acquire)) {
        sched_yield();
    }
    return job.ret;
}

void thread_pool_set_limits(int max_workers, int64_t idle_ns)
{
    pthread_mutex_lock(&pool.lock);
    pool.max_workers = max_workers > 0 ? max_workers : 1;
    pool.idle_ns = idle_ns > 0 ? idle_ns : POOL_DEFAULT_IDLE_NS;
    pthread_mutex_unlock(&pool.lock);
}

int thread_pool_worker_count(void)
{
    int n;

    pthread_mutex_lock(&pool.lock);
    n = pool.nworkers;
    pthread_mutex_unlock(&pool.lock);
    return n;
}
