/*
 * test-util.c — scaffolding the unit tests share (see test-util.h).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "loop/loop.h"
#include "options.h"
#include "util/threads.h"
#include "test-util.h"

void test_loop_init(void)
{
    threads_init_main();
    loop_init_main();
}

void test_runtime_init(void)
{
    threads_init_main();
    global_lock_acquire();
    loop_init_main();
    block_init();
}

/* The helpers do not include criterion.h: its TSan stand-in defines main()
 * and may be included by one file per test program only.  A helper that
 * cannot go on aborts, which the runner reports as a crashed test. */
static void util_check(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "test-util: %s: %s\n", what, strerror(errno));
        abort();
    }
}

void test_tmpdir_create(char *dir, size_t len, const char *prefix)
{
    snprintf(dir, len, "/tmp/%s-XXXXXX", prefix);
    util_check(mkdtemp(dir) != NULL, "mkdtemp");
}

void test_tmpdir_remove(const char *dir)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", dir);
    }
}

static void coroutine_fn test_co_entry(void *opaque)
{
    TestCo *co = opaque;
    co->fn(co->opaque);
    atomic_store(&co->done, true);
}

void test_co_start(TestCo *co, CoroutineEntry *fn, void *opaque)
{
    *co = (TestCo){ .fn = fn, .opaque = opaque };
    co_spawn(test_co_entry, co);
}

void run_co(CoroutineEntry *fn, void *opaque)
{
    TestCo co;
    test_co_start(&co, fn, opaque);
    wait_flag(&co.done);
}

static void coroutine_fn quiesce_begin_co(void *opaque)
{
    global_lock_assert_held();
    bdrv_co_quiesce_begin(opaque);
}

void test_quiesce_begin_start(TestCo *co, BlockNode *bs)
{
    GS_CODE();
    test_co_start(co, quiesce_begin_co, bs);
}

void test_quiesce_begin_now(BlockNode *bs)
{
    GS_CODE();
    TestCo co;
    test_quiesce_begin_start(&co, bs);
    wait_flag(&co.done);
}

void wait_flag(_Atomic bool *flag)
{
    while (!atomic_load(flag)) {
        loop_iterate(loop_main(), true);
    }
}

static void guard_fired(void *opaque)
{
    *(bool *)opaque = true;
}

bool wait_flag_guarded(_Atomic bool *flag)
{
    bool expired = false;
    LoopTimer guard;

    loop_timer_init(&guard, loop_main(), guard_fired, &expired);
    loop_timer_arm(&guard, clock_ns() + TEST_GUARD_NS);
    while (!atomic_load(flag) && !expired) {
        loop_iterate(loop_main(), true);
    }
    loop_timer_cancel(&guard);
    return atomic_load(flag);
}

typedef struct IOThreadJob {
    CoroutineEntry *fn;
    void *job;
    _Atomic int *done;
} IOThreadJob;

static void coroutine_fn iothread_job_entry(void *opaque)
{
    IOThreadJob *j = opaque;

    j->fn(j->job);
    atomic_fetch_add(j->done, 1);
    loop_kick(loop_main());
}

static void iothread_job_start_bh(void *opaque)
{
    co_spawn(iothread_job_entry, opaque);
}

void run_co_on_iothreads(const char *prefix, CoroutineEntry *fn, void *jobs,
                         size_t job_size, int n)
{
    IOThread *threads[8];
    IOThreadJob j[8];
    _Atomic int done = 0;

    util_check(n <= 8, "at most 8 IOThreads");
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "%s%d", prefix, i);
        threads[i] = iothread_create(name);
        j[i] = (IOThreadJob){ fn, (char *)jobs + i * job_size, &done };
        loop_schedule(iothread_loop(threads[i]), iothread_job_start_bh, &j[i]);
    }
    while (atomic_load(&done) < n) {
        loop_iterate(loop_main(), true);
    }
    for (int i = 0; i < n; i++) {
        iothread_destroy(threads[i]);
    }
}

void coroutine_fn test_req_co(void *opaque)
{
    TestReq *r = opaque;
    IOVector v, *qiov = r->qiov;
    Error *err = NULL;

    if (!qiov && r->buf) {
        iov_init_buf(&v, r->buf, r->len);
        qiov = &v;
    }
    switch (r->kind) {
    case REQ_READ:
        r->ret = blk_co_preadv(r->blk, r->off, r->len, qiov, r->flags);
        break;
    case REQ_WRITE:
        r->ret = blk_co_pwritev(r->blk, r->off, r->len, qiov, r->flags);
        break;
    case REQ_ZERO:
        r->ret = blk_co_pwrite_zeroes(r->blk, r->off, r->len, r->flags);
        break;
    case REQ_DISCARD:
        r->ret = blk_co_pdiscard(r->blk, r->off, r->len);
        break;
    case REQ_FLUSH:
        r->ret = blk_co_flush(r->blk);
        break;
    case REQ_STATUS:
        r->ret = blk_co_block_status(r->blk, r->off, r->len, &r->pnum);
        break;
    case REQ_TRUNCATE:
        r->ret = blk_co_truncate(r->blk, r->off, true, &err);
        if (err) {
            snprintf(r->err, sizeof(r->err), "%s", error_get_pretty(err));
            error_free(err);
        }
        break;
    }
}

void coroutine_fn test_async_req_co(void *opaque)
{
    TestAsyncReq *r = opaque;
    IOVector v;
    iov_init_buf(&v, r->buf, sizeof(r->buf));
    r->ret = r->read ? blk_co_preadv(r->blk, r->offset, sizeof(r->buf), &v, 0)
                     : blk_co_pwritev(r->blk, r->offset, sizeof(r->buf), &v, 0);
    atomic_store(&r->done, true);
}

void test_async_write_init(TestAsyncReq *r, BlockBackend *blk, int64_t offset,
                           uint8_t byte)
{
    memset(r, 0, sizeof(*r));
    r->blk = blk;
    r->offset = offset;
    memset(r->buf, byte, sizeof(r->buf));
}

void test_async_write_start(TestAsyncReq *r, BlockBackend *blk, int64_t offset,
                            uint8_t byte)
{
    test_async_write_init(r, blk, offset, byte);
    co_spawn(test_async_req_co, r);
}

void test_async_read_start(TestAsyncReq *r, BlockBackend *blk, int64_t offset)
{
    memset(r, 0, sizeof(*r));
    r->blk = blk;
    r->offset = offset;
    r->read = true;
    co_spawn(test_async_req_co, r);
}

typedef struct OpenDef {
    json_t *def;
    Error **errp;
    BlockNode *bs;
} OpenDef;

static void coroutine_fn open_def_co(void *opaque)
{
    global_lock_assert_held();
    OpenDef *o = opaque;
    o->bs = bdrv_co_open_blockdev(o->def, o->errp);
}

BlockNode *test_open_def(const char *text, Error **errp)
{
    GS_CODE();
    OpenDef o = { .errp = errp };
    o.def = defn_parse(text, errp);
    if (!o.def) {
        return NULL;
    }
    if (blockdev_def_check(o.def, text[0] != '{', errp) == 0) {
        run_co(open_def_co, &o);
    }
    json_decref(o.def);
    return o.bs;
}

/* Prints what failed and why, and aborts. */
static void util_fail(const char *what, const char *arg, Error *err)
{
    fprintf(stderr, "test-util: %s '%s': %s\n", what, arg,
            err ? error_get_pretty(err) : "(no error message)");
    abort();
}

BlockNode *test_open_node(const char *keyval)
{
    GS_CODE();
    Error *err = NULL;
    BlockNode *bs = test_open_def(keyval, &err);
    if (!bs) {
        util_fail("open", keyval, err);
    }
    return bs;
}

BlockBackend *test_backend_on(const char *name, BlockNode *bs, uint64_t perm,
                              uint64_t shared)
{
    GS_CODE();
    Error *err = NULL;
    BlockBackend *blk = blk_new(name, perm, shared);
    if (blk_insert_node(blk, bs, &err) < 0) {
        util_fail("attach backend", name, err);
    }
    return blk;
}

void coroutine_fn test_open_co(void *opaque)
{
    global_lock_assert_held();
    TestOpen *o = opaque;
    Error *err = NULL;

    o->err[0] = 0;
    o->bs = bdrv_co_open_blockdev(o->def, &err);
    json_decref(o->def);
    o->def = NULL;
    if (!o->bs) {
        snprintf(o->err, sizeof(o->err), "%s", error_get_pretty(err));
        error_free(err);
        return;
    }
    /* What `diskstack mount` does after probing guessed raw. */
    o->bs->probed = o->probed;
    if (!o->perm) {
        return;
    }
    o->blk = blk_new("test", o->perm, o->shared);
    if (blk_insert_node(o->blk, o->bs, &err) < 0) {
        snprintf(o->err, sizeof(o->err), "%s", error_get_pretty(err));
        error_free(err);
        blk_co_unref(o->blk);
        o->blk = NULL;
        bdrv_co_close_all();
        o->bs = NULL;
    }
}

void coroutine_fn test_close_co(void *opaque)
{
    global_lock_assert_held();
    TestOpen *o = opaque;

    if (o->blk) {
        blk_co_unref(o->blk);
        o->blk = NULL;
    }
    bdrv_co_close_all();
    o->bs = NULL;
}
