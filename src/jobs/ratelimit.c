/*
 * ratelimit.c — the jobs' speed limit (bytes per second).
 *
 * Time is cut into slices (JOB_SLICE_NS, 100 ms as QEMU's block jobs), each
 * allowed speed * slice bytes.  The job tells the limiter what it is about
 * to dispatch and is told how long to wait first:
 *
 *   - the first call after the current slice ended opens a new slice at
 *     that instant with nothing dispatched, so an idle job never saves up
 *     more than one slice of credit (no burst after a long pause);
 *   - bytes within the slice's quota go at once;
 *   - past the quota the slice is stretched to the time the bytes
 *     dispatched in it are worth (dispatched / quota slices) and the job
 *     waits until its new end.
 *
 * A steady job therefore gets the speed on average whatever its chunk
 * size: chunks below the quota go in bursts of one slice's worth, a chunk
 * of several slices' worth waits that many slices.  The maths is pure (the
 * caller passes the time), so the unit test checks it on a simulated clock.
 */
#include "jobs/ratelimit.h"
#include "annotations.h"

void ratelimit_set_speed(RateLimit *rl, uint64_t bytes_per_s, int64_t slice_ns)
{
    double quota = (double)bytes_per_s * slice_ns / 1e9;

    rl->slice_ns = slice_ns;
    rl->slice_quota = bytes_per_s ? MAX((uint64_t)quota, (uint64_t)1) : 0;
}

int64_t ratelimit_delay_ns(RateLimit *rl, int64_t now, uint64_t bytes)
{
    double slices;

    if (!rl->slice_quota) {
        return 0;
    }
    if (now >= rl->slice_end) {             /* the (stretched) slice is over */
        rl->slice_start = now;
        rl->slice_end = now + rl->slice_ns;
        rl->dispatched = 0;
    }
    rl->dispatched += bytes;
    if (rl->dispatched < rl->slice_quota) {
        return 0;
    }
    /* Stretch the slice to the time its bytes are worth. */
    slices = (double)rl->dispatched / rl->slice_quota;
    rl->slice_end = rl->slice_start + (int64_t)(slices * rl->slice_ns);
    return MAX(rl->slice_end - now, (int64_t)0);
}

