/*
 * test-util.h — scaffolding the unit tests share (linked into every unit
 * test, next to fake-drivers.c, whose harness builds on it).
 *
 * Threading: main thread (the test thread) unless stated.
 */
#ifndef DISKSTACK_TEST_UTIL_H
#define DISKSTACK_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "annotations.h"
#include "block-gs.h"
#include "block-io.h"
#include "coroutine/coroutine.h"

/* The timeout guard of the runtime tests' waits (20 s). */
#define TEST_GUARD_NS (20LL * 1000000000LL)

/* The runtime alone: main thread and main loop, no global lock, no
 * drivers (coroutine and thread-pool tests). */
void test_loop_init(void);
/* The test thread as the daemon's main thread: holds the global lock for
 * the whole test, runs the main loop, built-in drivers registered (no fake
 * ones: test_env_init() adds those). */
void test_runtime_init(void) ACQUIRE(global_lock);

/* Creates a fresh directory /tmp/PREFIX-XXXXXX into dir[len]; fails the
 * test if it cannot. */
void test_tmpdir_create(char *dir, size_t len, const char *prefix);
/* Removes dir and everything in it; complains on stderr if it cannot. */
void test_tmpdir_remove(const char *dir);

/* fn(opaque) in a coroutine of its own; `done` when fn returns. */
typedef struct TestCo {
    CoroutineEntry *fn;
    void *opaque;
    _Atomic bool done;
} TestCo;

/* Spawns fn(opaque) on the calling thread's loop; returns as soon as the
 * coroutine first waits (or has finished). */
void test_co_start(TestCo *co, CoroutineEntry *fn, void *opaque);
/* Runs fn(opaque) in a coroutine on the main loop, iterating the loop until
 * it returns. */
void run_co(CoroutineEntry *fn, void *opaque);
/* bdrv_co_quiesce_begin(bs) in a coroutine of its own: _start returns when
 * it first waits (co->done tells whether the section has begun), _now when
 * the section has begun.  The caller ends it with bdrv_quiesce_end(bs). */
void test_quiesce_begin_start(TestCo *co, BlockNode *bs) GS;
void test_quiesce_begin_now(BlockNode *bs) GS;
/* Iterates the main loop until *flag becomes true (set by a coroutine or a
 * bottom half).  The criterion timeout is the guard. */
void wait_flag(_Atomic bool *flag);
/* Main thread: iterates the main loop until *flag is true or TEST_GUARD_NS
 * passed (a loop timer, not a sleep); returns *flag. */
bool wait_flag_guarded(_Atomic bool *flag);

/*
 * Runs fn(job) for each of the n jobs (an array of job_size-byte elements)
 * in a coroutine on an IOThread of its own, named PREFIX0, PREFIX1, ...;
 * iterates the main loop until all have returned, then destroys the
 * IOThreads.  At most 8 jobs.
 */
void run_co_on_iothreads(const char *prefix, CoroutineEntry *fn, void *jobs,
                         size_t job_size, int n);

/* One request on a backend, run with run_co(test_req_co, &req) by tests
 * that do one thing at a time.  The data is qiov or, without one, buf. */
typedef enum { REQ_READ, REQ_WRITE, REQ_ZERO, REQ_DISCARD, REQ_FLUSH,
               REQ_STATUS, REQ_TRUNCATE } TestReqKind;

typedef struct TestReq {
    TestReqKind kind;
    BlockBackend *blk;
    int64_t off, len;           /* REQ_TRUNCATE: off is the new length */
    void *buf;
    IOVector *qiov;
    BdrvRequestFlags flags;
    int64_t pnum;               /* REQ_STATUS */
    int ret;
    char err[512];              /* REQ_TRUNCATE's error message */
} TestReq;

void coroutine_fn test_req_co(void *opaque);

/* A 4 KiB read or write in a coroutine of its own, for tests that hold
 * requests in flight; `done` when it returns.  I/O: any thread. */
typedef struct TestAsyncReq {
    BlockBackend *blk;
    int64_t offset;
    bool read;
    uint8_t buf[4096];          /* a write's data (all `byte`), a read's result */
    int ret;
    _Atomic bool done;
} TestAsyncReq;

/* Fills in r (the write's buffer too) without starting it: for a start on
 * another thread, with test_async_req_co as the coroutine. */
void test_async_write_init(TestAsyncReq *r, BlockBackend *blk, int64_t offset,
                           uint8_t byte);
void coroutine_fn test_async_req_co(void *opaque);
/* Spawn the request on the calling thread and return when it first waits
 * (or has finished). */
void test_async_write_start(TestAsyncReq *r, BlockBackend *blk, int64_t offset,
                            uint8_t byte);
void test_async_read_start(TestAsyncReq *r, BlockBackend *blk, int64_t offset);

/* Parses a definition (JSON, or key=value coerced as on the command line)
 * and opens it as blockdev-add would; NULL with *errp on error. */
BlockNode *test_open_def(const char *text, Error **errp) GS;
/* test_open_def() that must succeed: prints the definition and the error and
 * aborts (the runner reports a crashed test) if it does not. */
BlockNode *test_open_node(const char *keyval) GS;
/* A backend `name` with perm/shared attached to bs; prints the error and
 * aborts if the attach fails. */
BlockBackend *test_backend_on(const char *name, BlockNode *bs, uint64_t perm,
                              uint64_t shared) GS;

/* A node opened from a definition, as blockdev-add would, by
 * run_co(test_open_co, &o); held through a backend named "test" unless
 * perm is 0.  On failure bs (or blk) is NULL and err says why. */
typedef struct TestOpen {
    json_t *def;              /* consumed */
    uint64_t perm, shared;    /* for the backend; 0 perm = no backend */
    bool probed;              /* as `diskstack mount` marks a probed raw */
    BlockNode *bs;
    BlockBackend *blk;
    char err[1024];
} TestOpen;

void coroutine_fn test_open_co(void *opaque) GS;
/* Drops o's backend and closes every node. */
void coroutine_fn test_close_co(void *opaque) GS;

#endif
