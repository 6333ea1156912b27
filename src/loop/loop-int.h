/*
 * loop-int.h — loop internals shared with coroutine.c (not a public API).
 */
#ifndef DISKSTACK_LOOP_INT_H
#define DISKSTACK_LOOP_INT_H

#include "loop/loop.h"

/* A bottom half node; embedded in its owner so scheduling allocates nothing
 * (co_wake uses one inside each Coroutine). */
typedef struct LoopBH {
    struct LoopBH *next;
    LoopFn *fn;
    void *opaque;
    int heap;           /* allocated by loop_schedule(); freed before fn runs */
} LoopBH;

/* Thread-safe: queues bh (not already queued) to run fn(opaque) on loop's
 * thread in a later iteration. */
void loop_schedule_bh(Loop *loop, LoopBH *bh, LoopFn *fn, void *opaque);

#endif
