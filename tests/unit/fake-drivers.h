/*
 * fake-drivers.h — test drivers and a small harness for unit tests.
 *
 *   "mem"      protocol: an in-memory disk of `size` bytes, thread-safe.
 *              Options: size (required), align (request_alignment),
 *              max-transfer, zeroes (bool, default on: without it
 *              co_pwrite_zeroes answers -ENOTSUP, exercising io.c's
 *              fallback), read-yield (after every read, go round the
 *              loop that many times, to widen race windows).  Counts the calls it gets (mem_stats()).
 *   "hold"     filter over `file`: while holding is on, requests wait in the
 *              filter until the test releases them.  Counts held/passed.
 *   "nothing"  protocol of `size` bytes with only co_preadv (reads zeroes):
 *              every other request must come back -ENOTSUP.
 *
 * The harness functions are GS (main thread, global lock), except where
 * stated.
 */
#ifndef DISKSTACK_FAKE_DRIVERS_H
#define DISKSTACK_FAKE_DRIVERS_H

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "test-util.h"

/* "name,name," in the order mem and hold nodes were closed. */
extern char fake_close_log[1024];

extern const BlockDriver fake_mem_driver, fake_hold_driver, fake_nothing_driver;
void fake_drivers_register(void) GS;

typedef struct MemStats {
    int reads, writes, zeroes, discards, flushes, truncates;
    int misaligned;           /* requests not aligned to the node's `align` */
    int64_t max_request;      /* largest read/write seen */
} MemStats;
/* Thread-safe snapshots. */
void mem_stats(BlockNode *bs, MemStats *out);
uint8_t *mem_data(BlockNode *bs);

/* Thread-safe. */
void hold_set_enabled(BlockNode *bs, bool on);
void hold_release_all(BlockNode *bs);
int hold_held(BlockNode *bs);      /* waiting now */
int hold_passed(BlockNode *bs);    /* went through to the child */
/* fn(opaque) runs on the requesting thread whenever a request gets held. */
void hold_set_notifier(BlockNode *bs, void (*fn)(void *), void *opaque);

/*
 * Harness (with run_co() and wait_flag() from test-util.h).
 * test_env_init(): test_runtime_init() and the fake drivers.
 */
void test_env_init(void) ACQUIRE(global_lock);
/* test_open_def() (test-util.h) under its older name. */
BlockNode *open_def(const char *text, Error **errp) GS;
/* blockdev-del, in a coroutine. */
int del_node(const char *name, Error **errp) GS;

#endif
