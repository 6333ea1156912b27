/*
 * fake-drivers.c — "mem", "hold" and "nothing" test drivers, and the test
 * harness (see fake-drivers.h).
 *
 * Every driver callback states its three facts in the vtable comment of
 * driver.h; here: open/close are GS, main only, no I/O in flight; the I/O
 * callbacks hold the graph read lock, may run on any thread at once, and
 * guard their state with a mutex or atomics.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fake-drivers.h"
#include "options.h"
#include "loop/loop.h"
#include "util/threads.h"

char fake_close_log[1024];

/* GS: records the order in which nodes are closed. */
static void fake_log_close(BlockNode *bs) GS
{
    size_t n = strlen(fake_close_log);
    snprintf(fake_close_log + n, sizeof(fake_close_log) - n, "%s,", bs->node_name);
}

/* ================= mem ================= */

typedef struct MemState {
    pthread_mutex_t lock;       /* guards buf and size */
    uint8_t *buf;
    int64_t size;
    bool zeroes;
    uint32_t align;
    int64_t read_yield;
    _Atomic int reads, writes, zeroes_calls, discards, flushes, truncates;
    _Atomic int misaligned;
    _Atomic int64_t max_request;
} MemState;

static const BlockOptionDesc mem_options[] = {
    { "size", OPT_SIZE, true, NULL, "disk size" },
    { "align", OPT_INT, false, NULL, "request alignment" },
    { "max-transfer", OPT_SIZE, false, NULL, "largest request" },
    { "zeroes", OPT_BOOL, false, NULL, "support write-zeroes" },
    { "read-yield", OPT_INT, false, NULL,
      "after each read, go round the loop this many times (widens races)" },
    { "filename", OPT_STRING, false, NULL, "ignored" },
    { NULL },
};

/* open — GS, main only, nothing in flight. */
static int coroutine_fn mem_open(BlockNode *bs, json_t *opts, Error **errp) GS
{
    MemState *s = bs->opaque;
    s->size = opt_int(opts, "size", 0);
    s->align = opt_int(opts, "align", 1);
    s->zeroes = opt_bool(opts, "zeroes", true);
    s->read_yield = opt_int(opts, "read-yield", 0);
    if (s->size < 0 || s->align < 1) {
        error_setg(errp, "mem: bad size or align");
        return -EINVAL;
    }
    s->buf = calloc(1, s->size ? s->size : 1);
    if (!s->buf) {
        error_setg(errp, "mem: out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&s->lock, NULL);
    atomic_store(&bs->length, s->size);
    return 0;
}

/* close — GS, main only, drained. */
static void coroutine_fn mem_close(BlockNode *bs) GS
{
    MemState *s = bs->opaque;
    fake_log_close(bs);
    free(s->buf);
    pthread_mutex_destroy(&s->lock);
}

/* refresh_limits — GS, main only, nothing in flight. */
static void mem_refresh_limits(BlockNode *bs) GS
{
    MemState *s = bs->opaque;
    bs->bl.request_alignment = s->align;
    bs->bl.max_transfer = opt_int(bs->options, "max-transfer", 0);
}

static void mem_note(MemState *s, int64_t offset, int64_t bytes)
{
    if (offset % s->align || bytes % s->align) {
        atomic_fetch_add(&s->misaligned, 1);
    }
    int64_t m = atomic_load(&s->max_request);
    while (bytes > m && !atomic_compare_exchange_weak(&s->max_request, &m, bytes)) {
    }
}

/* I/O callbacks — graph read lock, any thread, state under s->lock. */
static int coroutine_fn mem_preadv(BlockNode *bs, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qoff,
                                   BdrvRequestFlags flags) GRAPH_RDLOCK
{
    MemState *s = bs->opaque;
    atomic_fetch_add(&s->reads, 1);
    mem_note(s, offset, bytes);
    pthread_mutex_lock(&s->lock);
    int64_t have = offset < s->size ? MIN(bytes, s->size - offset) : 0;
    iov_from_buf(qiov, qoff, s->buf + offset, have);
    iov_memset(qiov, qoff + have, 0, bytes - have);   /* past the end: zeroes */
    pthread_mutex_unlock(&s->lock);
    for (int64_t i = 0; i < s->read_yield; i++) {
        co_wake(co_self());             /* what was read ages meanwhile */
        co_yield();
    }
    return 0;
}

static int coroutine_fn mem_pwritev(BlockNode *bs, int64_t offset, int64_t bytes,
                                    IOVector *qiov, size_t qoff,
                                    BdrvRequestFlags flags) GRAPH_RDLOCK
{
    MemState *s = bs->opaque;
    atomic_fetch_add(&s->writes, 1);
    mem_note(s, offset, bytes);
    pthread_mutex_lock(&s->lock);
    int64_t have = offset < s->size ? MIN(bytes, s->size - offset) : 0;
    iov_to_buf(qiov, qoff, s->buf + offset, have);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int coroutine_fn mem_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                          int64_t bytes, BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    MemState *s = bs->opaque;
    if (!s->zeroes) {
        return -ENOTSUP;
    }
    atomic_fetch_add(&s->zeroes_calls, 1);
    pthread_mutex_lock(&s->lock);
    memset(s->buf + offset, 0, bytes);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int coroutine_fn mem_pdiscard(BlockNode *bs, int64_t offset, int64_t bytes)
    GRAPH_RDLOCK
{
    MemState *s = bs->opaque;
    atomic_fetch_add(&s->discards, 1);
    pthread_mutex_lock(&s->lock);
    memset(s->buf + offset, 0, bytes);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int coroutine_fn mem_flush(BlockNode *bs) GRAPH_RDLOCK
{
    MemState *s = bs->opaque;
    atomic_fetch_add(&s->flushes, 1);
    return 0;
}

static int coroutine_fn mem_truncate(BlockNode *bs, int64_t offset, bool exact,
                                     Error **errp) GRAPH_RDLOCK
{
    MemState *s = bs->opaque;
    atomic_fetch_add(&s->truncates, 1);
    pthread_mutex_lock(&s->lock);
    uint8_t *nb = realloc(s->buf, offset ? offset : 1);
    if (!nb) {
        pthread_mutex_unlock(&s->lock);
        error_setg(errp, "mem: out of memory");
        return -ENOMEM;
    }
    if (offset > s->size) {
        memset(nb + s->size, 0, offset - s->size);
    }
    s->buf = nb;
    s->size = offset;
    atomic_store(&bs->length, offset);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

const BlockDriver fake_mem_driver = {
    .format_name = "mem",
    .instance_size = sizeof(MemState),
    .is_protocol = true,
    .options = mem_options,
    .open = mem_open,
    .close = mem_close,
    .refresh_limits = mem_refresh_limits,
    .co_preadv = mem_preadv,
    .co_pwritev = mem_pwritev,
    .co_pwrite_zeroes = mem_pwrite_zeroes,
    .co_pdiscard = mem_pdiscard,
    .co_flush = mem_flush,
    .co_truncate = mem_truncate,
};

void mem_stats(BlockNode *bs, MemStats *out)
{
    MemState *s = bs->opaque;
    out->reads = s->reads;
    out->writes = s->writes;
    out->zeroes = s->zeroes_calls;
    out->discards = s->discards;
    out->flushes = s->flushes;
    out->truncates = s->truncates;
    out->misaligned = s->misaligned;
    out->max_request = s->max_request;
}

uint8_t *mem_data(BlockNode *bs)
{
    return ((MemState *)bs->opaque)->buf;
}

/* ================= hold ================= */

typedef struct HoldWaiter {
    Coroutine *co;
    struct HoldWaiter *next;
} HoldWaiter;

typedef struct HoldState {
    pthread_mutex_t lock;       /* guards enabled, waiters, notify */
    bool enabled;
    HoldWaiter *waiters;
    void (*notify)(void *);
    void *notify_opaque;
    _Atomic int held, passed;
} HoldState;

static const BlockOptionDesc hold_options[] = {
    { "file", OPT_CHILD, true, NULL, "the filtered node" },
    { "fail-open", OPT_BOOL, false, NULL, "fail after opening the child" },
    { NULL },
};

/* open — GS, main only, nothing in flight. */
static int coroutine_fn hold_open(BlockNode *bs, json_t *opts, Error **errp) GS
{
    HoldState *s = bs->opaque;
    pthread_mutex_init(&s->lock, NULL);
    if (!bdrv_co_open_child(bs, opts, "file",
                            BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, false, errp)) {
        pthread_mutex_destroy(&s->lock);
        return -EINVAL;
    }
    if (opt_bool(opts, "fail-open", false)) {
        pthread_mutex_destroy(&s->lock);
        error_setg(errp, "hold: failing as asked");
        return -EIO;            /* the core detaches the child */
    }
    bdrv_graph_rdlock_main_loop();
    atomic_store(&bs->length, bdrv_getlength(bs->file->node));
    bdrv_graph_rdunlock_main_loop();
    return 0;
}

/* close — GS, main only, drained. */
static void coroutine_fn hold_close(BlockNode *bs) GS
{
    HoldState *s = bs->opaque;
    fake_log_close(bs);
    pthread_mutex_destroy(&s->lock);
}

/* Waits here while holding is on. */
static void coroutine_fn hold_gate(BlockNode *bs)
{
    HoldState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    if (s->enabled) {
        HoldWaiter w = { .co = co_self(), .next = s->waiters };
        s->waiters = &w;
        atomic_fetch_add(&s->held, 1);
        void (*notify)(void *) = s->notify;
        void *opaque = s->notify_opaque;
        pthread_mutex_unlock(&s->lock);
        if (notify) {
            notify(opaque);
        }
        co_yield();
    } else {
        pthread_mutex_unlock(&s->lock);
    }
    atomic_fetch_add(&s->passed, 1);
}

/* I/O callbacks — graph read lock, any thread; pass on explicitly. */
static int coroutine_fn hold_preadv(BlockNode *bs, int64_t offset, int64_t bytes,
                                    IOVector *qiov, size_t qoff,
                                    BdrvRequestFlags flags) GRAPH_RDLOCK
{
    hold_gate(bs);
    return bdrv_co_preadv(bs->file, offset, bytes, qiov, qoff, flags);
}

static int coroutine_fn hold_pwritev(BlockNode *bs, int64_t offset, int64_t bytes,
                                     IOVector *qiov, size_t qoff,
                                     BdrvRequestFlags flags) GRAPH_RDLOCK
{
    hold_gate(bs);
    return bdrv_co_pwritev(bs->file, offset, bytes, qiov, qoff, flags);
}

static int coroutine_fn hold_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                           int64_t bytes, BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    hold_gate(bs);
    return bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn hold_pdiscard(BlockNode *bs, int64_t offset, int64_t bytes)
    GRAPH_RDLOCK
{
    hold_gate(bs);
    return bdrv_co_pdiscard(bs->file, offset, bytes);
}

/* Flush: the core recurses into the child; nothing of our own. */
static int coroutine_fn hold_flush(BlockNode *bs) GRAPH_RDLOCK
{
    hold_gate(bs);
    return 0;
}

const BlockDriver fake_hold_driver = {
    .format_name = "hold",
    .instance_size = sizeof(HoldState),
    .is_filter = true,
    .options = hold_options,
    .open = hold_open,
    .close = hold_close,
    .co_preadv = hold_preadv,
    .co_pwritev = hold_pwritev,
    .co_pwrite_zeroes = hold_pwrite_zeroes,
    .co_pdiscard = hold_pdiscard,
    .co_flush = hold_flush,
};

void hold_set_enabled(BlockNode *bs, bool on)
{
    HoldState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    s->enabled = on;
    pthread_mutex_unlock(&s->lock);
}

void hold_release_all(BlockNode *bs)
{
    HoldState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    HoldWaiter *w = s->waiters;
    s->waiters = NULL;
    pthread_mutex_unlock(&s->lock);
    while (w) {
        HoldWaiter *next = w->next;
        atomic_fetch_sub(&s->held, 1);
        co_wake(w->co);
        w = next;
    }
}

int hold_held(BlockNode *bs)
{
    return atomic_load(&((HoldState *)bs->opaque)->held);
}

int hold_passed(BlockNode *bs)
{
    return atomic_load(&((HoldState *)bs->opaque)->passed);
}

void hold_set_notifier(BlockNode *bs, void (*fn)(void *), void *opaque)
{
    HoldState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    s->notify = fn;
    s->notify_opaque = opaque;
    pthread_mutex_unlock(&s->lock);
}

/* ================= nothing ================= */

static const BlockOptionDesc nothing_options[] = {
    { "size", OPT_SIZE, true, NULL, "disk size" },
    { NULL },
};

/* open — GS, main only, nothing in flight. */
static int coroutine_fn nothing_open(BlockNode *bs, json_t *opts, Error **errp) GS
{
    atomic_store(&bs->length, opt_int(opts, "size", 0));
    return 0;
}

/* preadv — graph read lock, any thread, stateless. */
static int coroutine_fn nothing_preadv(BlockNode *bs, int64_t offset, int64_t bytes,
                                       IOVector *qiov, size_t qoff,
                                       BdrvRequestFlags flags) GRAPH_RDLOCK
{
    iov_memset(qiov, qoff, 0, bytes);
    return 0;
}

const BlockDriver fake_nothing_driver = {
    .format_name = "nothing",
    .is_protocol = true,
    .options = nothing_options,
    .open = nothing_open,
    .co_preadv = nothing_preadv,
};

void fake_drivers_register(void)
{
    bdrv_register(&fake_mem_driver);
    bdrv_register(&fake_hold_driver);
    bdrv_register(&fake_nothing_driver);
}

/* ================= harness ================= */

void test_env_init(void)
{
    test_runtime_init();
    fake_drivers_register();
}

BlockNode *open_def(const char *text, Error **errp)
{
    return test_open_def(text, errp);
}

typedef struct DelArgs {
    const char *name;
    Error **errp;
    int ret;
} DelArgs;

static void coroutine_fn del_entry(void *opaque)
{
    global_lock_assert_held();
    DelArgs *a = opaque;
    a->ret = bdrv_co_blockdev_del(a->name, a->errp);
}

int del_node(const char *name, Error **errp)
{
    DelArgs a = { .name = name, .errp = errp };
    run_co(del_entry, &a);
    return a.ret;
}
