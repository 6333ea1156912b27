/*
 * ratelimit.h — a slice-based rate limiter in bytes per second (see
 * ratelimit.c for how it works).  Pure: the caller passes the time and
 * serialises calls on one RateLimit.
 */
#ifndef DISKSTACK_JOBS_RATELIMIT_H
#define DISKSTACK_JOBS_RATELIMIT_H

#include <stdint.h>

typedef struct RateLimit {
    uint64_t slice_quota;       /* bytes per slice; 0: unlimited */
    int64_t slice_ns;
    int64_t slice_start, slice_end;
    uint64_t dispatched;        /* bytes in the current slice */
} RateLimit;

#define JOB_SLICE_NS 100000000LL        /* QEMU's BLOCK_JOB_SLICE_TIME */

/* bytes_per_s 0: unlimited.  Keeps the current slice. */
void ratelimit_set_speed(RateLimit *rl, uint64_t bytes_per_s, int64_t slice_ns);
/* Accounts bytes dispatched at time now (ns, any monotonic origin);
 * returns how long to wait before dispatching more (ns, >= 0). */
int64_t ratelimit_delay_ns(RateLimit *rl, int64_t now, uint64_t bytes);

#endif
