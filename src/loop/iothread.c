/*
 * iothread.c — threads that each run their own Loop (see loop.h).
 *
 * The loop is created by the new thread itself, so the ring, the coroutine
 * pool and the loop's thread binding all belong to it; iothread_create()
 * returns once that thread is about to run the loop, so callers may schedule
 * work on it right away.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loop/loop.h"

struct IOThread {
    char *id;
    Loop *loop;
    pid_t tid;              /* the thread's id in the kernel (gettid) */
    IOThreadParams params;  /* GS: QEMU's tuning knobs, reported only */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool ready;
};

/* The registry.  Documented as main-thread only; the mutex makes a mistake
 * harmless rather than a data race. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static IOThread **registry;
static int registry_len;

static void iothread_die(const char *what)
{
    fprintf(stderr, "diskstack: iothread: %s\n", what);
    abort();
}

static void *iothread_main(void *opaque)
{
    IOThread *t = opaque;
    Loop *loop = loop_new(t->id);

    /* Binds the loop to this thread before anyone can use it. */
    loop_iterate(loop, false);
    pthread_mutex_lock(&t->lock);
    t->tid = gettid();
    t->loop = loop;
    t->ready = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);

    loop_run(loop);
    /* The loop is freed by iothread_destroy() after the join: loop_stop()
     * may still be kicking its eventfd when loop_run() returns here. */
    return NULL;
}

static void registry_add(IOThread *t)
{
    pthread_mutex_lock(&registry_lock);
    registry = realloc(registry, sizeof(*registry) * (registry_len + 1));
    if (!registry) {
        iothread_die("out of memory");
    }
    registry[registry_len++] = t;
    pthread_mutex_unlock(&registry_lock);
}

static void registry_remove(IOThread *t)
{
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < registry_len; i++) {
        if (registry[i] == t) {
            memmove(&registry[i], &registry[i + 1],
                    sizeof(*registry) * (registry_len - i - 1));
            registry_len--;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

/* Shows the id in top -H, gdb and perf (the kernel keeps 15 characters). */
static void iothread_set_thread_name(IOThread *t)
{
    char name[16];

    snprintf(name, sizeof(name), "%s", t->id);
    pthread_setname_np(t->thread, name);
}

/* GS (main thread). */
IOThread *iothread_create(const char *id)
{
    IOThread *t = calloc(1, sizeof(*t));

    if (!t || !(t->id = strdup(id))) {
        iothread_die("out of memory");
    }
    t->params.poll_max_ns = IOTHREAD_POLL_MAX_NS_DEFAULT;
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    if (pthread_create(&t->thread, NULL, iothread_main, t) != 0) {
        iothread_die("cannot start a thread");
    }
    iothread_set_thread_name(t);
    pthread_mutex_lock(&t->lock);
    while (!t->ready) {
        pthread_cond_wait(&t->cond, &t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    registry_add(t);
    return t;
}

/* GS (main thread).  Work still queued on the loop is dropped. */
void iothread_destroy(IOThread *t)
{
    if (!t) {
        return;
    }
    registry_remove(t);
    loop_stop(t->loop);
    pthread_join(t->thread, NULL);
    loop_free(t->loop);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
    free(t->id);
    free(t);
}

Loop *iothread_loop(IOThread *t)
{
    return t->loop;
}

const char *iothread_id(const IOThread *t)
{
    return t->id;
}

/* Written before iothread_create() returns (under t->lock), constant after. */
pid_t iothread_thread_id(const IOThread *t)
{
    return t->tid;
}

/* GS (main thread), like the registry. */
void iothread_get_params(const IOThread *t, IOThreadParams *p)
{
    *p = t->params;
}

void iothread_set_params(IOThread *t, const IOThreadParams *p)
{
    t->params = *p;
}

IOThread *iothread_find(const char *id)
{
    IOThread *found = NULL;

    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < registry_len && !found; i++) {
        if (strcmp(registry[i]->id, id) == 0) {
            found = registry[i];
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return found;
}

int iothread_count(void)
{
    int n;

    pthread_mutex_lock(&registry_lock);
    n = registry_len;
    pthread_mutex_unlock(&registry_lock);
    return n;
}

IOThread *iothread_nth(int i)
{
    IOThread *t = NULL;

    pthread_mutex_lock(&registry_lock);
    if (i >= 0 && i < registry_len) {
        t = registry[i];
    }
    pthread_mutex_unlock(&registry_lock);
    return t;
}
