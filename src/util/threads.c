/*
 * threads.c — the global lock and thread identity (see threads.h).
 *
 * The global lock is a real mutex plus a thread-local "held by me" flag: the
 * mutex makes it a lock, the flag lets GS_CODE() tell "held by this thread"
 * from "held by someone" without reading pthread internals.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "util/threads.h"

GlobalLock global_lock;

static pthread_mutex_t global_mutex = PTHREAD_MUTEX_INITIALIZER;
static __thread bool is_main_thread;
static __thread bool holds_global_lock;

/* Both: called once by the thread that will run GS code. */
void threads_init_main(void)
{
    is_main_thread = true;
}

bool in_main_thread(void)
{
    return is_main_thread;
}

bool global_lock_held(void)
{
    return holds_global_lock;
}

/* Main thread only.  The analysis cannot see that the mutex is the role's
 * implementation, hence NO_THREAD_SAFETY_ANALYSIS on the two bodies. */
void global_lock_acquire(void) NO_THREAD_SAFETY_ANALYSIS
{
    if (holds_global_lock) {
        fprintf(stderr, "diskstack: global lock taken twice by one thread\n");
        abort();
    }
    pthread_mutex_lock(&global_mutex);
    holds_global_lock = true;
}

void global_lock_release(void) NO_THREAD_SAFETY_ANALYSIS
{
    if (!holds_global_lock) {
        fprintf(stderr, "diskstack: global lock released but not held\n");
        abort();
    }
    holds_global_lock = false;
    pthread_mutex_unlock(&global_mutex);
}

void gs_code_failed(const char *func)
{
    fprintf(stderr, "diskstack: GS_CODE() violated in %s: "
            "not the main thread with the global lock\n", func);
    abort();
}

void global_lock_assert_held(void)
{
    if (!(is_main_thread && holds_global_lock)) {
        fprintf(stderr, "diskstack: global lock not held by this thread "
                "(main thread: %s)\n", is_main_thread ? "yes" : "no");
        abort();
    }
}
