/*
 * throttle-bucket.c — the maths of I/O limits: parsing and validating
 * QEMU's ThrottleLimits, leaky buckets with bursts, "how long must this
 * request wait".
 *
 * Design
 * ------
 * A limit such as iops-read=100 is a *leaky bucket*: every request pours
 * its cost into the bucket (bytes for a bps limit, operations for an iops
 * limit) and the bucket leaks at the average rate `avg` per second.  A
 * request may go while the bucket is not over its size; once it is, the
 * request waits until enough has leaked.  A bucket (rather than "one request
 * every 1/avg seconds") remembers idle time: a disk that was idle may send a
 * short burst, and a steady stream settles exactly at `avg`.
 *
 * The size of the bucket decides how large that burst is:
 *   - without `-max`, the bucket holds avg/10, a tenth of a second of I/O.
 *     That is QEMU's choice: without any slack every other request would be
 *     delayed, and a guest's elevator that batches reads and writes in
 *     100 ms slices would be throttled far below the limit.
 *   - with `-max` (the burst rate) and `-max-length` (burst seconds,
 *     default 1) the bucket holds max * max-length: an idle disk may do
 *     `max` per second for about `max-length` seconds before it settles back
 *     to `avg`.  When the burst lasts longer than one second, a second,
 *     smaller *burst bucket* (size max/10, leaking at `max`) keeps the burst
 *     itself at `max` per second instead of letting all of max*max-length go
 *     at once.
 * A request waits as long as the slowest bucket it touches needs: the time
 * for the bucket's excess over its size to leak at that bucket's rate.  The
 * wait is rounded up to the next nanosecond so that a timer that fires on
 * time finds the bucket ready.  The request's own size does not decide
 * whether it may go, only what it costs afterwards: a request larger than
 * the bucket (1 MiB under bps-total=1M) would otherwise never go; instead it
 * goes when the bucket is not over its size and the requests after it wait
 * for its bytes to leak.
 *
 * The caller's loop (throttle-group.c): throttle_wait_ns(now); 0 means send
 * the request and throttle_account() it; otherwise arm a timer for the wait
 * and ask again when it fires or when the limits change.
 *
 * Directions.  The six buckets are bps and iops for total, read and write.
 * A read is checked against total+read, a write against total+write, and a
 * request that goes is charged to the same two of each kind.  Discard and
 * write-zeroes change the disk, so the caller (throttle.c) passes them with
 * is_write set; flush is not throttled at all and never reaches this file.
 * Total cannot be combined with read or write of the same kind (QEMU's rule),
 * but bps and iops limits combine freely, e.g. bps-total with iops-read.
 *
 * iops-size.  With iops-size=S, a request of B > S bytes counts as B/S
 * operations (fractional, like QEMU: 6k with S=4k is 1.5 ops); smaller
 * requests count as one.  So a 64k request with iops-size=4k costs 16 ops,
 * and large requests cannot dodge an iops limit.
 *
 * Live changes.  QEMU empties every bucket when the limits change, so a
 * flurry of qom-set lets unlimited I/O through.  Here the levels carry over:
 * the buckets first leak up to `now` at the old rates, then a bucket whose
 * parameters are unchanged keeps its level exactly, a changed one keeps its
 * level clamped to its new size (a full bucket: the new rate applies from
 * the next request, without a debt from the old, faster rate that would
 * stall the disk for seconds), and a bucket switched off is emptied.  A
 * newly enabled bucket starts empty, as at creation.  Queued requests are
 * not touched here; the group asks throttle_wait_ns() again for them, so
 * they are re-timed at the new rates.
 *
 * Units are doubles (as in QEMU): levels are fractional under iops-size and
 * between leaks, and 1e15 (the largest limit) is exact in a double.
 *
 * Threading: every function here is pure or works on one ThrottleState
 * passed in; none keeps state of its own, none reads a clock.  They are
 * legal in any thread (I/O or GS); the group serialises calls on a shared
 * ThrottleState with its lock.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "filters/throttle.h"

#define NS_PER_SEC 1000000000.0
/* QEMU's THROTTLE_VALUE_MAX: the largest avg or max, and max*max-length. */
#define THROTTLE_VALUE_MAX 1000000000000000LL
/* No wait is longer than this (about 31 years): keeps now + wait in range. */
#define THROTTLE_WAIT_MAX_NS 1000000000000000000LL

/* The QMP key prefix of each bucket, in ThrottleBucketType order. */
static const char *const bucket_keys[THROTTLE_BUCKETS] = {
    [THROTTLE_BPS_TOTAL] = "bps-total",
    [THROTTLE_BPS_READ] = "bps-read",
    [THROTTLE_BPS_WRITE] = "bps-write",
    [THROTTLE_OPS_TOTAL] = "iops-total",
    [THROTTLE_OPS_READ] = "iops-read",
    [THROTTLE_OPS_WRITE] = "iops-write",
};

/* Which part of a bucket a key sets. */
typedef enum LimitField {
    FIELD_AVG,
    FIELD_MAX,
    FIELD_LENGTH,
    FIELD_OP_SIZE,
} LimitField;

/* ------------------------------------------------------------ parsing */

/* Both.  Pure: all limits off, burst lengths 1, levels empty. */
static void config_clear(ThrottleConfig *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        cfg->buckets[i].burst_length = 1;
    }
}

/* Both.  Pure: the limits of src without its levels. */
static void config_copy_limits(ThrottleConfig *dst, const ThrottleConfig *src)
{
    *dst = *src;
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        dst->buckets[i].level = 0;
        dst->buckets[i].burst_level = 0;
    }
}

/* Both.  Pure: finds the bucket and field a ThrottleLimits key names;
 * false for an unknown key.  *bucket is unset for "iops-size". */
static bool lookup_key(const char *key, int *bucket, LimitField *field)
{
    if (!strcmp(key, "iops-size")) {
        *field = FIELD_OP_SIZE;
        return true;
    }
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        size_t n = strlen(bucket_keys[i]);
        if (strncmp(key, bucket_keys[i], n)) {
            continue;
        }
        *bucket = i;
        if (!key[n]) {
            *field = FIELD_AVG;
        } else if (!strcmp(key + n, "-max")) {
            *field = FIELD_MAX;
        } else if (!strcmp(key + n, "-max-length")) {
            *field = FIELD_LENGTH;
        } else {
            continue;       /* e.g. "iops-total-foo" */
        }
        return true;
    }
    return false;
}

/* Both.  Stores one key's value.  Range checks of avg and max are left to
 * config_check() (QEMU reports them there, with one message for all). */
static int set_field(ThrottleConfig *cfg, const char *key, int bucket,
                     LimitField field, json_int_t v, Error **errp)
{
    switch (field) {
    case FIELD_AVG:
        cfg->buckets[bucket].avg = (double)v;
        return 0;
    case FIELD_MAX:
        cfg->buckets[bucket].max = (double)v;
        return 0;
    case FIELD_LENGTH:
        /* QEMU keeps burst lengths in 32 bits (0 is refused later) */
        if (v < 0 || v > UINT_MAX) {
            error_setg(errp, "%s value must be in the range [0, %u]",
                       key, UINT_MAX);
            return -1;
        }
        cfg->buckets[bucket].burst_length = (uint64_t)v;
        return 0;
    case FIELD_OP_SIZE:
        if (v < 0) {
            /* QEMU 7.2 takes -1 and shows it back; refuse it instead */
            error_setg(errp, "iops-size value must not be negative");
            return -1;
        }
        cfg->op_size = (uint64_t)v;
        return 0;
    }
    return -1;
}

/* Both.  Pure: QEMU's throttle_is_valid() rules, in its order, with its
 * messages (scripts and people compare them with qemu-storage-daemon's). */
static int config_check(const ThrottleConfig *cfg, Error **errp)
{
    const LeakyBucket *b = cfg->buckets;
    bool bps_mix = b[THROTTLE_BPS_TOTAL].avg &&
                   (b[THROTTLE_BPS_READ].avg || b[THROTTLE_BPS_WRITE].avg);
    bool ops_mix = b[THROTTLE_OPS_TOTAL].avg &&
                   (b[THROTTLE_OPS_READ].avg || b[THROTTLE_OPS_WRITE].avg);
    bool bps_max_mix = b[THROTTLE_BPS_TOTAL].max &&
                       (b[THROTTLE_BPS_READ].max || b[THROTTLE_BPS_WRITE].max);
    bool ops_max_mix = b[THROTTLE_OPS_TOTAL].max &&
                       (b[THROTTLE_OPS_READ].max || b[THROTTLE_OPS_WRITE].max);

    if (bps_mix || ops_mix || bps_max_mix || ops_max_mix) {
        error_setg(errp, "bps/iops/max total values and read/write values"
                   " cannot be used at the same time");
        return -1;
    }
    if (cfg->op_size && !b[THROTTLE_OPS_TOTAL].avg &&
        !b[THROTTLE_OPS_READ].avg && !b[THROTTLE_OPS_WRITE].avg) {
        error_setg(errp, "iops size requires an iops value to be set");
        return -1;
    }
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        if (b[i].avg < 0 || b[i].max < 0 ||
            b[i].avg > THROTTLE_VALUE_MAX || b[i].max > THROTTLE_VALUE_MAX) {
            error_setg(errp, "bps/iops/max values must be within [0, %lld]",
                       THROTTLE_VALUE_MAX);
            return -1;
        }
        if (!b[i].burst_length) {
            error_setg(errp, "the burst length cannot be 0");
            return -1;
        }
        if (b[i].burst_length > 1 && !b[i].max) {
            error_setg(errp, "burst length set without burst rate");
            return -1;
        }
        if (b[i].max && b[i].burst_length > THROTTLE_VALUE_MAX / b[i].max) {
            error_setg(errp, "burst length too high for this burst rate");
            return -1;
        }
        if (b[i].max && !b[i].avg) {
            error_setg(errp, "bps_max/iops_max require corresponding"
                       " bps/iops values");
            return -1;
        }
        if (b[i].max && b[i].max < b[i].avg) {
            error_setg(errp, "bps_max/iops_max cannot be lower than bps/iops");
            return -1;
        }
    }
    return 0;
}

/* Both.  Pure: see throttle.h.  Type errors use QMP's wording for an
 * argument named "limits". */
int throttle_config_parse(json_t *limits, const ThrottleConfig *base,
                          ThrottleConfig *cfg, Error **errp)
{
    ThrottleConfig new_cfg;
    const char *key;
    json_t *value;

    if (base) {
        config_copy_limits(&new_cfg, base);
    } else {
        config_clear(&new_cfg);
    }
    if (limits && !json_is_object(limits)) {
        error_setg(errp, "Invalid parameter type for 'limits', expected: object");
        return -1;
    }
    json_object_foreach(limits, key, value) {
        int bucket = 0;
        LimitField field;

        if (!lookup_key(key, &bucket, &field)) {
            error_setg(errp, "Parameter 'limits.%s' is unexpected", key);
            return -1;
        }
        if (!json_is_integer(value)) {
            error_setg(errp, "Invalid parameter type for 'limits.%s',"
                       " expected: integer", key);
            return -1;
        }
        if (set_field(&new_cfg, key, bucket, field,
                      json_integer_value(value), errp) < 0) {
            return -1;
        }
    }
    if (config_check(&new_cfg, errp) < 0) {
        return -1;
    }
    *cfg = new_cfg;
    return 0;
}

/* Both.  Pure: see throttle.h.  Like qemu-storage-daemon's qom-get, unset
 * limits read 0 and unset burst lengths read 1 (their default). */
json_t *throttle_config_to_json(const ThrottleConfig *cfg)
{
    json_t *obj = json_object();
    char key[32];

    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        const LeakyBucket *b = &cfg->buckets[i];

        json_object_set_new(obj, bucket_keys[i], json_integer((json_int_t)b->avg));
        snprintf(key, sizeof(key), "%s-max", bucket_keys[i]);
        json_object_set_new(obj, key, json_integer((json_int_t)b->max));
        snprintf(key, sizeof(key), "%s-max-length", bucket_keys[i]);
        json_object_set_new(obj, key, json_integer((json_int_t)b->burst_length));
    }
    json_object_set_new(obj, "iops-size", json_integer((json_int_t)cfg->op_size));
    return obj;
}

/* Both.  Pure: see throttle.h. */
bool throttle_config_enabled(const ThrottleConfig *cfg)
{
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        if (cfg->buckets[i].avg > 0) {
            return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------ buckets */

/* Both.  Pure: how much the bucket holds before requests wait at avg. */
static double bucket_size(const LeakyBucket *b)
{
    return b->max ? b->max * (double)b->burst_length : b->avg / 10;
}

/* Both.  Pure: the size of the burst bucket (only with burst_length > 1),
 * a tenth of a second at the burst rate. */
static double burst_bucket_size(const LeakyBucket *b)
{
    return b->max / 10;
}

static bool has_burst_bucket(const LeakyBucket *b)
{
    return b->burst_length > 1;
}

/* Both.  Empties the bucket by what leaked in delta_ns. */
static void bucket_leak(LeakyBucket *b, int64_t delta_ns)
{
    if (!b->avg) {
        return;
    }
    b->level = fmax(b->level - b->avg * (double)delta_ns / NS_PER_SEC, 0);
    if (has_burst_bucket(b)) {
        b->burst_level =
            fmax(b->burst_level - b->max * (double)delta_ns / NS_PER_SEC, 0);
    }
}

/* Both.  Pure: nanoseconds for `extra` units to leak at `rate` per second,
 * rounded up so that the bucket is ready when a timer fires on time. */
static int64_t leak_time_ns(double extra, double rate)
{
    double ns = ceil(extra * NS_PER_SEC / rate);

    return ns > THROTTLE_WAIT_MAX_NS ? THROTTLE_WAIT_MAX_NS : (int64_t)ns;
}

/* Both.  Pure: how long a new request must wait for this bucket. */
static int64_t bucket_wait_ns(const LeakyBucket *b)
{
    double extra;

    if (!b->avg) {
        return 0;
    }
    extra = b->level - bucket_size(b);
    if (extra > 0) {
        return leak_time_ns(extra, b->avg);
    }
    if (has_burst_bucket(b)) {
        extra = b->burst_level - burst_bucket_size(b);
        if (extra > 0) {
            return leak_time_ns(extra, b->max);
        }
    }
    return 0;
}

/* Both.  Pours `units` into an enabled bucket.  Disabled buckets stay empty,
 * so a limit switched on later starts empty, as at creation. */
static void bucket_fill(LeakyBucket *b, double units)
{
    if (!b->avg) {
        return;
    }
    b->level += units;
    if (has_burst_bucket(b)) {
        b->burst_level += units;
    }
}

/* Both.  Leaks every bucket up to now.  A `now` behind the last leak (two
 * threads reading the clock, then taking the group lock in the other order)
 * leaks nothing and keeps the later time. */
static void state_leak(ThrottleState *ts, int64_t now)
{
    int64_t delta = now - ts->last_leak_ns;

    if (delta <= 0) {
        return;
    }
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        bucket_leak(&ts->cfg.buckets[i], delta);
    }
    ts->last_leak_ns = now;
}

/* Both.  Not thread-safe (caller holds the group lock).  See throttle.h. */
void throttle_state_init(ThrottleState *ts, const ThrottleConfig *cfg, int64_t now)
{
    config_copy_limits(&ts->cfg, cfg);
    ts->last_leak_ns = now;
}

static bool same_limit(const LeakyBucket *a, const LeakyBucket *b)
{
    return a->avg == b->avg && a->max == b->max &&
           a->burst_length == b->burst_length;
}

/* Both.  The level one bucket keeps across a change of limits (see the
 * essay: kept, clamped to the new size, or emptied). */
static void bucket_carry_over(LeakyBucket *new_b, const LeakyBucket *old_b)
{
    if (!new_b->avg) {
        return;             /* switched off (or still off): stays empty */
    }
    if (same_limit(new_b, old_b)) {
        new_b->level = old_b->level;
        new_b->burst_level = old_b->burst_level;
        return;
    }
    new_b->level = fmin(old_b->level, bucket_size(new_b));
    if (has_burst_bucket(new_b)) {
        new_b->burst_level = fmin(old_b->burst_level, burst_bucket_size(new_b));
    }
}

/* Both.  Not thread-safe (caller holds the group lock).  See throttle.h. */
void throttle_state_set_config(ThrottleState *ts, const ThrottleConfig *cfg,
                               int64_t now)
{
    ThrottleConfig new_cfg;

    state_leak(ts, now);            /* time so far counts at the old rates */
    config_copy_limits(&new_cfg, cfg);
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        bucket_carry_over(&new_cfg.buckets[i], &ts->cfg.buckets[i]);
    }
    ts->cfg = new_cfg;
}

/* The two buckets of each kind a request of a direction touches. */
static const ThrottleBucketType bps_buckets[2][2] = {
    { THROTTLE_BPS_TOTAL, THROTTLE_BPS_READ },
    { THROTTLE_BPS_TOTAL, THROTTLE_BPS_WRITE },
};
static const ThrottleBucketType ops_buckets[2][2] = {
    { THROTTLE_OPS_TOTAL, THROTTLE_OPS_READ },
    { THROTTLE_OPS_TOTAL, THROTTLE_OPS_WRITE },
};

/* Both.  Not thread-safe (caller holds the group lock).  See throttle.h.
 * `bytes` does not change the answer (see the essay: a request is charged
 * after it goes); it is part of the contract of throttle.h. */
int64_t throttle_wait_ns(ThrottleState *ts, bool is_write, uint64_t bytes,
                         int64_t now)
{
    int64_t wait = 0;

    (void)bytes;
    state_leak(ts, now);
    for (int i = 0; i < 2; i++) {
        int64_t w_bps = bucket_wait_ns(&ts->cfg.buckets[bps_buckets[is_write][i]]);
        int64_t w_ops = bucket_wait_ns(&ts->cfg.buckets[ops_buckets[is_write][i]]);

        wait = w_bps > wait ? w_bps : wait;
        wait = w_ops > wait ? w_ops : wait;
    }
    return wait;
}

/* Both.  Not thread-safe (caller holds the group lock).  See throttle.h. */
void throttle_account(ThrottleState *ts, bool is_write, uint64_t bytes)
{
    double units = 1;

    if (ts->cfg.op_size && bytes > ts->cfg.op_size) {
        units = (double)bytes / (double)ts->cfg.op_size;
    }
    for (int i = 0; i < 2; i++) {
        bucket_fill(&ts->cfg.buckets[bps_buckets[is_write][i]], (double)bytes);
        bucket_fill(&ts->cfg.buckets[ops_buckets[is_write][i]], units);
    }
}
