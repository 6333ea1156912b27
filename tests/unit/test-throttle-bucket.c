/*
 * test-throttle-bucket.c — the bucket maths of filters/throttle-bucket.c on
 * a fake clock: steady iops and bps rates, bursts that settle to the
 * average, -max-length, iops-size, read/write/total combined, live changes
 * that keep the bucket levels, and every validation error with QEMU's
 * message.
 *
 * The clock is a plain int64_t the tests advance by exactly the wait the
 * maths asks for, so a run of "5 seconds" takes microseconds and the rates
 * can be checked to 1%.
 *
 * Threading: main thread only; the maths is pure.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "filters/throttle.h"

#define SEC 1000000000LL
#define MS  1000000LL
#define KIB 1024ULL

TestSuite(bucket, .timeout = 20);

/* ------------------------------------------------------------ helpers */

static ThrottleConfig parse_ok(const char *text)
{
    json_error_t jerr;
    json_t *limits = json_loads(text, 0, &jerr);
    ThrottleConfig cfg;
    Error *err = NULL;

    cr_assert_not_null(limits, "bad JSON in test: %s", text);
    cr_assert_eq(throttle_config_parse(limits, NULL, &cfg, &err), 0,
                 "%s: %s", text, err ? error_get_pretty(err) : "?");
    json_decref(limits);
    return cfg;
}

/* A fake clock and one set of buckets. */
typedef struct Sim {
    ThrottleState ts;
    int64_t now;
} Sim;

static void sim_init(Sim *s, const char *limits)
{
    ThrottleConfig cfg = parse_ok(limits);

    s->now = 0;
    throttle_state_init(&s->ts, &cfg, s->now);
}

/* Waits (on the fake clock) until one request may go, sends it, and
 * returns the time it went. */
static int64_t sim_send(Sim *s, bool is_write, uint64_t bytes)
{
    for (int tries = 0; tries < 4; tries++) {
        int64_t wait = throttle_wait_ns(&s->ts, is_write, bytes, s->now);

        if (!wait) {
            throttle_account(&s->ts, is_write, bytes);
            return s->now;
        }
        cr_assert_gt(wait, 0);
        s->now += wait;
    }
    /* a timer that fires on time must find the bucket ready (at most one
     * nanosecond of rounding) */
    cr_assert_fail("request still waiting after its wait at %lld", (long long)s->now);
    return -1;
}

/* Sends requests that go at once; returns how many did (up to limit). */
static int sim_send_now(Sim *s, bool is_write, uint64_t bytes, int limit)
{
    int n = 0;

    while (n < limit && !throttle_wait_ns(&s->ts, is_write, bytes, s->now)) {
        throttle_account(&s->ts, is_write, bytes);
        n++;
    }
    return n;
}

/* Sends n requests back to back; returns the time the last one went. */
static int64_t sim_send_n(Sim *s, bool is_write, uint64_t bytes, int n)
{
    int64_t t = s->now;

    for (int i = 0; i < n; i++) {
        t = sim_send(s, is_write, bytes);
    }
    return t;
}

/* The steady state: sends one request (whatever the bucket held before),
 * then n more; returns the time between the first and the last, which is
 * exactly n requests' worth at the limiting rate. */
static int64_t sim_steady_ns(Sim *s, bool is_write, uint64_t bytes, int n)
{
    int64_t start = sim_send(s, is_write, bytes);

    return sim_send_n(s, is_write, bytes, n) - start;
}

static void assert_within(double got, double want, double rel, const char *what)
{
    cr_assert(fabs(got - want) <= want * rel,
              "%s: got %.6f, want %.6f within %.1f%%", what, got, want, rel * 100);
}

/* ------------------------------------------------------------ steady rates */

Test(bucket, iops_steady_rate)
{
    Sim s;

    sim_init(&s, "{\"iops-total\": 100}");
    /* the bucket holds avg/10: an idle disk may send 10 (+1) at once */
    cr_assert_eq(sim_send_now(&s, false, 4096, 1000), 11);
    assert_within((double)sim_steady_ns(&s, false, 4096, 500) / SEC, 5.0, 0.01,
                  "500 requests at 100 iops");
}

Test(bucket, iops_steady_rate_writes_and_small_limits)
{
    Sim s;

    /* 5 iops: a bucket of half an op still lets one request through */
    sim_init(&s, "{\"iops-write\": 5}");
    cr_assert_eq(sim_send_now(&s, true, 512, 100), 1);
    assert_within((double)sim_steady_ns(&s, true, 512, 25) / SEC, 5.0, 0.01,
                  "25 writes at 5 iops");
}

Test(bucket, bps_steady_rate)
{
    Sim s;

    sim_init(&s, "{\"bps-total\": 1048576}");
    sim_send_now(&s, false, 64 * KIB, 1000);
    /* 5 MiB in 64k requests */
    assert_within((double)sim_steady_ns(&s, false, 64 * KIB, 80) / SEC, 5.0, 0.01,
                  "5 MiB at 1 MiB/s");
}

Test(bucket, bps_large_request_waits_for_its_bytes)
{
    Sim s;

    /* a request larger than the bucket goes, then the next waits for it */
    sim_init(&s, "{\"bps-read\": 1000}");
    cr_assert_eq(sim_send(&s, false, 10000), 0);
    sim_send(&s, false, 1);
    assert_within((double)s.now / SEC, 9.9, 0.001, "10000 bytes at 1000 B/s, bucket 100");
}

Test(bucket, no_limits_never_wait)
{
    Sim s;

    sim_init(&s, "{}");
    cr_assert_not(throttle_config_enabled(&s.ts.cfg));
    cr_assert_eq(sim_send_now(&s, false, 1 << 20, 100000), 100000);
    cr_assert_eq(sim_send_now(&s, true, 1 << 20, 100000), 100000);
}

/* ------------------------------------------------------------ bursts */

/* Requests that went in [from, to), given their send times. */
static int count_between(const int64_t *t, int n, int64_t from, int64_t to)
{
    int c = 0;

    for (int i = 0; i < n; i++) {
        c += t[i] >= from && t[i] < to;
    }
    return c;
}

Test(bucket, burst_allowed_then_settles_to_avg)
{
    enum { N = 400 };
    static int64_t t[N];
    Sim s;

    sim_init(&s, "{\"iops-total\": 10, \"iops-total-max\": 100,"
                 " \"iops-total-max-length\": 3}");
    for (int i = 0; i < N; i++) {
        t[i] = sim_send(&s, false, 4096);
    }
    /* the burst runs at max (100/s, plus the max/10 burst bucket at once)
     * for about max-length seconds */
    for (int64_t sec = 0; sec < 3; sec++) {
        int c = count_between(t, N, sec * SEC, (sec + 1) * SEC);
        cr_assert(c >= 99 && c <= 111, "second %lld of the burst: %d requests",
                  (long long)sec, c);
    }
    /* never more than max + max/10 in any one-second window */
    for (int i = 0; i < N; i++) {
        int c = count_between(t, N, t[i], t[i] + SEC);
        cr_assert_leq(c, 111, "window at %lld ns: %d requests", (long long)t[i], c);
    }
    /* then it settles to avg: the bucket (max * max-length = 300) is full */
    int64_t settled = t[N - 1] - 5 * SEC;
    int c = count_between(t, N, settled, t[N - 1] + 1);
    cr_assert(c >= 50 && c <= 51, "5 s after the burst: %d requests", c);
    cr_assert_gt(settled, 4 * SEC);
}

Test(bucket, burst_refills_after_idle)
{
    Sim s;

    sim_init(&s, "{\"iops-read\": 10, \"iops-read-max\": 50}");
    /* max-length 1: the bucket holds max, all of it may go at once */
    cr_assert_eq(sim_send_now(&s, false, 4096, 1000), 51);
    cr_assert_eq(sim_send_now(&s, false, 4096, 1000), 0);
    /* 2 s idle leak 20 ops: 20 more may go at once */
    s.now += 2 * SEC;
    cr_assert_eq(sim_send_now(&s, false, 4096, 1000), 20);
}

Test(bucket, max_length_sets_the_burst_seconds)
{
    Sim one, three;
    int64_t t1, t3;

    sim_init(&one, "{\"bps-write\": 1000, \"bps-write-max\": 10000}");
    sim_init(&three, "{\"bps-write\": 1000, \"bps-write-max\": 10000,"
                     " \"bps-write-max-length\": 3}");
    /* 30000 bytes in 100-byte writes */
    t1 = sim_send_n(&one, true, 100, 300);
    t3 = sim_send_n(&three, true, 100, 300);
    /* max-length 1: 10000 at once, the other 20000 at avg (20 s) */
    assert_within((double)t1 / SEC, 20.0, 0.01, "max-length 1");
    /* max-length 3: all 30000 ride the burst at 10000 B/s (3 s) */
    cr_assert_lt(t3, 3 * SEC + 100 * MS, "max-length 3 took %lld ns", (long long)t3);
    cr_assert_gt(t3, 2 * SEC, "max-length 3 took %lld ns", (long long)t3);
}

/* ------------------------------------------------------------ iops-size */

Test(bucket, iops_size_counts_large_requests_as_several_ops)
{
    Sim s;

    sim_init(&s, "{\"iops-total\": 100, \"iops-size\": 4096}");
    throttle_account(&s.ts, false, 64 * KIB);
    assert_within(s.ts.cfg.buckets[THROTTLE_OPS_TOTAL].level, 16, 1e-9, "64k / 4k");
    throttle_account(&s.ts, true, 1 * KIB);
    assert_within(s.ts.cfg.buckets[THROTTLE_OPS_TOTAL].level, 17, 1e-9, "a small one is 1");
    throttle_account(&s.ts, true, 6 * KIB);
    assert_within(s.ts.cfg.buckets[THROTTLE_OPS_TOTAL].level, 18.5, 1e-9, "6k is 1.5");
}

Test(bucket, iops_size_rate)
{
    Sim s;

    sim_init(&s, "{\"iops-read\": 100, \"iops-size\": 4096}");
    sim_send_now(&s, false, 64 * KIB, 100);
    /* 50 x 16 ops = 800 ops at 100/s */
    assert_within((double)sim_steady_ns(&s, false, 64 * KIB, 50) / SEC, 8.0, 0.01,
                  "64k reads as 16 ops");
}

Test(bucket, without_iops_size_a_request_is_one_op)
{
    Sim s;

    sim_init(&s, "{\"iops-total\": 100}");
    throttle_account(&s.ts, false, 1 << 20);
    assert_within(s.ts.cfg.buckets[THROTTLE_OPS_TOTAL].level, 1, 1e-9, "1 MiB, no iops-size");
}

/* ------------------------------------------------------------ directions */

/*
 * Two busy queues, reads and writes, on one set of buckets for `secs` of
 * fake time: whichever may go, goes; otherwise the clock jumps to the first
 * that may.  Counts what each sent.
 */
static void sim_two_queues(Sim *s, uint64_t rbytes, uint64_t wbytes, int secs,
                           int *reads, int *writes)
{
    int64_t end = s->now + secs * SEC;

    *reads = *writes = 0;
    while (s->now < end) {
        int64_t wr = throttle_wait_ns(&s->ts, false, rbytes, s->now);
        int64_t ww = throttle_wait_ns(&s->ts, true, wbytes, s->now);

        if (!wr) {
            throttle_account(&s->ts, false, rbytes);
            (*reads)++;
        } else if (!ww) {
            throttle_account(&s->ts, true, wbytes);
            (*writes)++;
        } else {
            s->now += wr < ww ? wr : ww;
        }
    }
}

Test(bucket, read_and_write_limits_are_separate)
{
    Sim s;
    int r, w;

    sim_init(&s, "{\"iops-read\": 50, \"iops-write\": 20}");
    sim_two_queues(&s, 4096, 4096, 10, &r, &w);
    /* 10 s at the rate, plus the bucket of an idle start */
    cr_assert(r >= 500 && r <= 506, "reads: %d", r);
    cr_assert(w >= 200 && w <= 203, "writes: %d", w);
}

Test(bucket, total_limit_is_shared_by_reads_and_writes)
{
    Sim s;
    int r, w;

    sim_init(&s, "{\"iops-total\": 100}");
    sim_two_queues(&s, 4096, 4096, 10, &r, &w);
    cr_assert(r + w >= 1000 && r + w <= 1011, "reads %d + writes %d", r, w);
}

Test(bucket, write_does_not_wait_for_a_full_read_bucket)
{
    Sim s;

    sim_init(&s, "{\"iops-read\": 10, \"bps-write\": 1000000}");
    sim_send_now(&s, false, 4096, 1000);
    cr_assert_gt(throttle_wait_ns(&s.ts, false, 4096, s.now), 0);
    cr_assert_eq(throttle_wait_ns(&s.ts, true, 4096, s.now), 0);
    /* and writes do not fill the read bucket */
    s.now += SEC;
    cr_assert_eq(throttle_wait_ns(&s.ts, true, 4096, s.now), 0);
    throttle_account(&s.ts, true, 4096);
    cr_assert_eq(s.ts.cfg.buckets[THROTTLE_OPS_READ].level, 0);
}

Test(bucket, bps_and_iops_combine_the_slowest_wins)
{
    Sim s;
    int r, w;

    /* bps-total with iops-read: reads are held by the 10 iops, 64k writes
     * by the 1 MiB/s (16 per second) */
    sim_init(&s, "{\"bps-total\": 1048576, \"iops-read\": 10}");
    sim_two_queues(&s, 4096, 64 * KIB, 10, &r, &w);
    cr_assert(r >= 100 && r <= 102, "reads: %d", r);
    /* the reads' 4k take a little of the shared bandwidth */
    double wbytes = 10.0 * 1048576 - r * 4096.0;
    cr_assert(fabs(w - wbytes / (64 * KIB)) <= 2.5, "writes: %d", w);
}

/* ------------------------------------------------------------ live changes */

static void sim_set(Sim *s, const char *limits)
{
    ThrottleConfig cfg = parse_ok(limits);

    throttle_state_set_config(&s->ts, &cfg, s->now);
}

Test(bucket, live_change_keeps_levels)
{
    Sim s;

    sim_init(&s, "{\"iops-total\": 100}");
    cr_assert_eq(sim_send_now(&s, false, 4096, 1000), 11);
    /* the same limits again: still full (QEMU would empty the bucket and
     * let another 11 through) */
    sim_set(&s, "{\"iops-total\": 100}");
    cr_assert_gt(throttle_wait_ns(&s.ts, false, 4096, s.now), 0);
    /* twice the rate: the bucket of 20 keeps its 11, so 10 more, not 21 */
    sim_set(&s, "{\"iops-total\": 200}");
    cr_assert_eq(sim_send_now(&s, false, 4096, 1000), 10);
}

Test(bucket, live_change_lower_applies_at_once)
{
    Sim s;
    int64_t start;

    sim_init(&s, "{\"iops-total\": 1000}");
    sim_send_n(&s, false, 4096, 500);           /* bucket full, 100 ops */
    sim_set(&s, "{\"iops-total\": 50}");
    start = s.now;
    /* no debt from the old rate: the next request waits one period at most */
    sim_send(&s, false, 4096);
    cr_assert_leq(s.now - start, 20 * MS, "first request after the change waited %lld ns",
                  (long long)(s.now - start));
    assert_within((double)sim_steady_ns(&s, false, 4096, 250) / SEC, 5.0, 0.01,
                  "250 requests at 50 iops");
}

Test(bucket, live_change_retimes_a_waiting_request)
{
    Sim s;
    int64_t wait;

    sim_init(&s, "{\"bps-read\": 1000}");
    sim_send(&s, false, 5000);
    wait = throttle_wait_ns(&s.ts, false, 1, s.now);
    assert_within((double)wait / SEC, 4.9, 0.001, "waiting at 1000 B/s");
    /* raising the limit re-times the queued request */
    sim_set(&s, "{\"bps-read\": 100000}");
    cr_assert_eq(throttle_wait_ns(&s.ts, false, 1, s.now), 0);
}

Test(bucket, live_change_time_before_counts_at_the_old_rate)
{
    Sim s;

    sim_init(&s, "{\"iops-total\": 10}");
    sim_send_now(&s, false, 4096, 1000);        /* level 2, bucket 1 */
    s.now += 100 * MS;                          /* leaks 1 at the old rate */
    sim_set(&s, "{\"iops-total\": 10, \"iops-total-max\": 10}");
    assert_within(s.ts.cfg.buckets[THROTTLE_OPS_TOTAL].level, 1, 1e-9, "level after the change");
}

Test(bucket, live_change_switched_off_then_on_starts_empty)
{
    Sim s;

    sim_init(&s, "{\"iops-read\": 10, \"bps-write\": 100}");
    sim_send_now(&s, false, 4096, 1000);
    sim_set(&s, "{\"bps-write\": 100}");
    cr_assert_eq(sim_send_now(&s, false, 4096, 1000), 1000);
    sim_set(&s, "{\"iops-read\": 10, \"bps-write\": 100}");
    cr_assert_eq(s.ts.cfg.buckets[THROTTLE_OPS_READ].level, 0);
    cr_assert_eq(sim_send_now(&s, false, 4096, 1000), 2);
}

Test(bucket, clock_going_backwards_leaks_nothing)
{
    Sim s;
    double level;

    sim_init(&s, "{\"iops-total\": 10}");
    s.now = 5 * SEC;
    sim_send_now(&s, false, 4096, 1000);
    level = s.ts.cfg.buckets[THROTTLE_OPS_TOTAL].level;
    throttle_wait_ns(&s.ts, false, 4096, 4 * SEC);
    cr_assert_eq(s.ts.cfg.buckets[THROTTLE_OPS_TOTAL].level, level);
    cr_assert_eq(s.ts.last_leak_ns, 5 * SEC);
}

/* ------------------------------------------------------------ parsing */

Test(bucket, parse_defaults_and_values)
{
    ThrottleConfig cfg = parse_ok("{\"bps-read\": 5, \"bps-read-max\": 7,"
                                  " \"bps-read-max-length\": 2,"
                                  " \"iops-write\": 9, \"iops-size\": 512}");

    cr_assert_eq(cfg.buckets[THROTTLE_BPS_READ].avg, 5);
    cr_assert_eq(cfg.buckets[THROTTLE_BPS_READ].max, 7);
    cr_assert_eq(cfg.buckets[THROTTLE_BPS_READ].burst_length, 2);
    cr_assert_eq(cfg.buckets[THROTTLE_OPS_WRITE].avg, 9);
    cr_assert_eq(cfg.buckets[THROTTLE_OPS_WRITE].burst_length, 1);
    cr_assert_eq(cfg.buckets[THROTTLE_BPS_TOTAL].avg, 0);
    cr_assert_eq(cfg.op_size, 512);
    cr_assert(throttle_config_enabled(&cfg));

    /* NULL limits and the empty object: everything off */
    Error *err = NULL;
    cr_assert_eq(throttle_config_parse(NULL, NULL, &cfg, &err), 0);
    cr_assert_not(throttle_config_enabled(&cfg));
    cr_assert_eq(cfg.buckets[THROTTLE_OPS_TOTAL].burst_length, 1);

    /* the largest value QEMU takes */
    cfg = parse_ok("{\"iops-total\": 1000000000000000}");
    cr_assert_eq(cfg.buckets[THROTTLE_OPS_TOTAL].avg, 1e15);
    cfg = parse_ok("{\"iops-total\": 10, \"iops-total-max\": 20,"
                   " \"iops-total-max-length\": 4294967295}");
    cr_assert_eq(cfg.buckets[THROTTLE_OPS_TOTAL].burst_length, 4294967295ULL);
}

Test(bucket, parse_partial_keeps_base)
{
    ThrottleConfig base = parse_ok("{\"iops-total\": 100, \"bps-read\": 5}");
    ThrottleConfig cfg;
    Error *err = NULL;
    json_t *limits = json_pack("{s:i}", "iops-total-max", 200);

    base.buckets[THROTTLE_OPS_TOTAL].level = 42;    /* state is not copied */
    cr_assert_eq(throttle_config_parse(limits, &base, &cfg, &err), 0);
    cr_assert_eq(cfg.buckets[THROTTLE_OPS_TOTAL].avg, 100);
    cr_assert_eq(cfg.buckets[THROTTLE_OPS_TOTAL].max, 200);
    cr_assert_eq(cfg.buckets[THROTTLE_BPS_READ].avg, 5);
    cr_assert_eq(cfg.buckets[THROTTLE_OPS_TOTAL].level, 0);
    json_decref(limits);

    /* validated as a whole: iops-read next to the base's iops-total */
    limits = json_pack("{s:i}", "iops-read", 200);
    cr_assert_eq(throttle_config_parse(limits, &base, &cfg, &err), -1);
    cr_assert_str_eq(error_get_pretty(err), "bps/iops/max total values and "
                     "read/write values cannot be used at the same time");
    error_free(err);
    json_decref(limits);

    /* ... unless the same object switches the total off */
    limits = json_pack("{s:i,s:i}", "iops-read", 200, "iops-total", 0);
    err = NULL;
    cr_assert_eq(throttle_config_parse(limits, &base, &cfg, &err), 0);
    json_decref(limits);
}

Test(bucket, to_json_has_every_key)
{
    ThrottleConfig cfg = parse_ok("{\"iops-total\": 100, \"iops-total-max\": 200,"
                                  " \"iops-total-max-length\": 4,"
                                  " \"bps-write\": 1048576, \"iops-size\": 4096}");
    json_t *j = throttle_config_to_json(&cfg);
    static const char *const kinds[] = {
        "bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write",
    };
    char key[64];

    cr_assert_eq(json_object_size(j), 19);
    for (size_t i = 0; i < 6; i++) {
        cr_assert(json_is_integer(json_object_get(j, kinds[i])), "%s", kinds[i]);
        snprintf(key, sizeof(key), "%s-max", kinds[i]);
        cr_assert(json_is_integer(json_object_get(j, key)), "%s", key);
        snprintf(key, sizeof(key), "%s-max-length", kinds[i]);
        cr_assert(json_is_integer(json_object_get(j, key)), "%s", key);
    }
    cr_assert_eq(json_integer_value(json_object_get(j, "iops-total")), 100);
    cr_assert_eq(json_integer_value(json_object_get(j, "iops-total-max")), 200);
    cr_assert_eq(json_integer_value(json_object_get(j, "iops-total-max-length")), 4);
    cr_assert_eq(json_integer_value(json_object_get(j, "bps-write")), 1048576);
    cr_assert_eq(json_integer_value(json_object_get(j, "bps-read")), 0);
    cr_assert_eq(json_integer_value(json_object_get(j, "bps-read-max")), 0);
    /* like qemu-storage-daemon: an unset burst length reads 1 */
    cr_assert_eq(json_integer_value(json_object_get(j, "bps-read-max-length")), 1);
    cr_assert_eq(json_integer_value(json_object_get(j, "iops-size")), 4096);

    /* and it parses back to the same limits */
    ThrottleConfig back;
    Error *err = NULL;
    cr_assert_eq(throttle_config_parse(j, NULL, &back, &err), 0);
    cr_assert_eq(memcmp(&back, &cfg, sizeof(cfg)), 0);
    json_decref(j);
}

typedef struct BadLimits {
    const char *limits;
    const char *message;
} BadLimits;

static const BadLimits bad_limits[] = {
    { "{\"iops-total\": 100, \"iops-read\": 5}",
      "bps/iops/max total values and read/write values cannot be used at the same time" },
    { "{\"bps-total\": 100, \"bps-write\": 5}",
      "bps/iops/max total values and read/write values cannot be used at the same time" },
    { "{\"bps-total\": 100, \"bps-total-max\": 200, \"bps-read\": 0,"
      " \"bps-write\": 0, \"bps-read-max\": 300}",
      "bps/iops/max total values and read/write values cannot be used at the same time" },
    { "{\"iops-size\": 4096}",
      "iops size requires an iops value to be set" },
    { "{\"iops-size\": 4096, \"bps-total\": 1000}",
      "iops size requires an iops value to be set" },
    { "{\"iops-total\": -1}",
      "bps/iops/max values must be within [0, 1000000000000000]" },
    { "{\"bps-read\": 1000000000000001}",
      "bps/iops/max values must be within [0, 1000000000000000]" },
    { "{\"bps-read\": 10, \"bps-read-max\": 1000000000000001}",
      "bps/iops/max values must be within [0, 1000000000000000]" },
    { "{\"iops-total\": 10, \"iops-total-max\": 20, \"iops-total-max-length\": 0}",
      "the burst length cannot be 0" },
    { "{\"iops-write-max-length\": 2}",
      "burst length set without burst rate" },
    { "{\"bps-total\": 10, \"bps-total-max\": 1000000000000, \"bps-total-max-length\": 1001}",
      "burst length too high for this burst rate" },
    { "{\"iops-total-max\": 5}",
      "bps_max/iops_max require corresponding bps/iops values" },
    { "{\"bps-total\": 10, \"bps-read-max\": 20}",
      "bps_max/iops_max require corresponding bps/iops values" },
    { "{\"iops-total\": 10, \"iops-total-max\": 5}",
      "bps_max/iops_max cannot be lower than bps/iops" },
    { "{\"iops-total\": 10, \"iops-total-max\": 20, \"iops-total-max-length\": 4294967296}",
      "iops-total-max-length value must be in the range [0, 4294967295]" },
    { "{\"bps-read\": 10, \"bps-read-max\": 20, \"bps-read-max-length\": -1}",
      "bps-read-max-length value must be in the range [0, 4294967295]" },
    { "{\"iops-total\": 10, \"iops-size\": -1}",
      "iops-size value must not be negative" },
    { "{\"foo\": 1}", "Parameter 'limits.foo' is unexpected" },
    { "{\"iops-total-foo\": 1}", "Parameter 'limits.iops-total-foo' is unexpected" },
    { "{\"x-iops-total\": 1}", "Parameter 'limits.x-iops-total' is unexpected" },
    { "{\"iops-total\": \"100\"}",
      "Invalid parameter type for 'limits.iops-total', expected: integer" },
    { "{\"iops-total\": 1.5}",
      "Invalid parameter type for 'limits.iops-total', expected: integer" },
    { "{\"bps-write\": null}",
      "Invalid parameter type for 'limits.bps-write', expected: integer" },
    { "{\"bps-write\": true}",
      "Invalid parameter type for 'limits.bps-write', expected: integer" },
    { "[1]", "Invalid parameter type for 'limits', expected: object" },
};

Test(bucket, every_validation_error)
{
    for (size_t i = 0; i < sizeof(bad_limits) / sizeof(bad_limits[0]); i++) {
        const BadLimits *b = &bad_limits[i];
        json_error_t jerr;
        json_t *limits = json_loads(b->limits, JSON_DECODE_ANY, &jerr);
        ThrottleConfig cfg, before;
        Error *err = NULL;

        cr_assert_not_null(limits, "bad JSON in test: %s", b->limits);
        memset(&cfg, 0xa5, sizeof(cfg));
        before = cfg;
        cr_assert_eq(throttle_config_parse(limits, NULL, &cfg, &err), -1,
                     "accepted %s", b->limits);
        cr_assert_not_null(err, "%s: no error", b->limits);
        cr_assert_str_eq(error_get_pretty(err), b->message, "limits %s", b->limits);
        /* a refused object leaves the output alone */
        cr_assert_eq(memcmp(&cfg, &before, sizeof(cfg)), 0, "%s changed cfg", b->limits);
        error_free(err);
        json_decref(limits);
    }
}
