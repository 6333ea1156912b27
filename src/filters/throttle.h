/*
 * throttle.h — I/O limits: the bucket maths, throttle groups and the
 * throttle filter driver.
 *
 *   throttle-bucket.c  pure maths: limits (QEMU's ThrottleLimits names and
 *                      validation), leaky buckets with bursts, "how long
 *                      must this request wait".  No clock of its own: every
 *                      call takes `now` so tests run on a fake clock.
 *   throttle-group.c   named groups (QMP object throttle-group): one set of
 *                      buckets shared by member nodes on any IOThreads, fair
 *                      round-robin among members with queued requests,
 *                      timers on the members' loops, live limit changes.
 *   throttle.c         the `throttle` filter driver: one member of a group,
 *                      one child "file"; holds its queue while quiesced.
 *
 * Quiesce (DESIGN rule 2): a throttle node is a barrier for quiesced
 * sections.  A section of a node below it stops the throttle's dispatch
 * (requests keep queueing, at no rate) and waits only for the requests the
 * throttle already sent below; queued requests are released at the
 * throttled rate once the section ends.  quiesce.c asks the driver through
 * BlockDriver.quiesce_barrier (driver.h).
 */
#ifndef DISKSTACK_FILTERS_THROTTLE_H
#define DISKSTACK_FILTERS_THROTTLE_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>
#include "block-common.h"

/* ------------------------------------------------------------ bucket maths */

typedef enum ThrottleBucketType {
    THROTTLE_BPS_TOTAL,
    THROTTLE_BPS_READ,
    THROTTLE_BPS_WRITE,
    THROTTLE_OPS_TOTAL,
    THROTTLE_OPS_READ,
    THROTTLE_OPS_WRITE,
    THROTTLE_BUCKETS,
} ThrottleBucketType;

/* One limit: avg per second (0: none), burst rate max (0: none) sustained
 * for burst_length seconds.  level/burst_level are the bucket's state. */
typedef struct LeakyBucket {
    double avg;
    double max;
    uint64_t burst_length;       /* seconds, >= 1 */
    double level;                /* units (bytes or ops) not yet leaked */
    double burst_level;          /* the same for the burst bucket */
} LeakyBucket;

typedef struct ThrottleConfig {
    LeakyBucket buckets[THROTTLE_BUCKETS];
    uint64_t op_size;            /* iops-size: 0 = every request is one op */
} ThrottleConfig;

/*
 * Pure.  Parses QEMU's ThrottleLimits object ("iops-total", "iops-read",
 * "iops-write", "bps-total", "bps-read", "bps-write", each with "-max" and
 * "-max-length", and "iops-size"; all integers) into cfg and validates it
 * with QEMU's rules and messages (total with read/write, -max without its
 * base, -max below the base, -max-length without -max, negative or too
 * large values).  base may be NULL (all off) or a config whose values keys
 * absent from limits keep (qom-set of a partial limits object).
 */
int throttle_config_parse(json_t *limits, const ThrottleConfig *base,
                          ThrottleConfig *cfg, Error **errp);
/* Pure: the limits object, every key present as qom-get returns it in
 * QEMU (0 for an unset rate, 1 for an unset -max-length). */
json_t *throttle_config_to_json(const ThrottleConfig *cfg);
/* Pure: true if any limit is set. */
bool throttle_config_enabled(const ThrottleConfig *cfg);

/*
 * The state of one set of buckets.  Not thread-safe: the group serialises
 * calls with its lock.
 */
typedef struct ThrottleState {
    ThrottleConfig cfg;
    int64_t last_leak_ns;
} ThrottleState;

void throttle_state_init(ThrottleState *ts, const ThrottleConfig *cfg, int64_t now);
/* New limits; the bucket levels carry over (clamped), so a live change is
 * smooth and queued requests are re-timed, not lost. */
void throttle_state_set_config(ThrottleState *ts, const ThrottleConfig *cfg,
                               int64_t now);
/* Nanoseconds until a request of `bytes` in that direction may go (0: now).
 * Leaks the buckets up to now first. */
int64_t throttle_wait_ns(ThrottleState *ts, bool is_write, uint64_t bytes,
                         int64_t now);
/* Charges a request that goes now: bytes to the bps buckets, and
 * max(1, bytes / op_size) ops (op_size set) or 1 op to the ops buckets. */
void throttle_account(ThrottleState *ts, bool is_write, uint64_t bytes);

/* ------------------------------------------------------------ groups (GS) */

typedef struct ThrottleGroup ThrottleGroup;
typedef struct ThrottleMember ThrottleMember;

/* GS: creates group id with the limits object (QMP object-add
 * qom-type=throttle-group id=ID limits={...}; QEMU also accepts the limits
 * as top-level "x-iops-total"-style keys: not supported, say so). */
int throttle_group_create(const char *id, json_t *limits, Error **errp) GS;
/* GS: refuses a group that has members ("object 'ID' is in use, can not be
 * deleted"). */
int throttle_group_delete(const char *id, Error **errp) GS;
ThrottleGroup *throttle_group_find(const char *id) GS;
/* GS: qom-set path=ID property=limits value={...}: validated as a whole
 * against the current limits, applied within one timer period. */
int throttle_group_set_limits(ThrottleGroup *tg, json_t *limits, Error **errp) GS;
/* GS: qom-get path=ID property=limits (new reference). */
json_t *throttle_group_get_limits(ThrottleGroup *tg) GS;
const char *throttle_group_id(const ThrottleGroup *tg);
/* GS: iterate the groups (NULL to start). */
ThrottleGroup *throttle_group_next(ThrottleGroup *prev) GS;

#endif
