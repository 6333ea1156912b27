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

/* Runs fn(opaque) in a coroutine on the main loop, iterating the loop until
 * it returns. */
void run_co(CoroutineEntry *fn, void *opaque);
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
