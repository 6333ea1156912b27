/*
 * test-throttle.c — the throttle filter, throttle groups and the quiesce
 * barrier (filters/throttle.c, filters/throttle-group.c, quiesce.c).
 *
 * There is no fake clock below the loops, so pacing is checked on the real
 * clock with bounds the limits force (a request cannot complete before the
 * bucket allows it) and generous upper bounds.  Tests wait on events —
 * flags set by the requests themselves — never on time, except where they
 * check that nothing happens for a while (a loop timer, not a sleep).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include "fake-drivers.h"
#include "filters/throttle-int.h"
#include "loop/loop.h"

TestSuite(throttle, .init = test_env_init, .timeout = 30);

#define RW (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)
#define MS 1000000LL
#define MAX_REQS 32

/* export e<name> -> throttle t<name> (group g) -> mem m<name> */
typedef struct Chain {
    BlockBackend *blk;
    BlockNode *thr, *mem;
} Chain;

static void group_create(const char *id, const char *limits_json) GS
{
    Error *err = NULL;
    json_t *limits = json_loads(limits_json, 0, NULL);
    cr_assert_not_null(limits);
    cr_assert_eq(throttle_group_create(id, limits, &err), 0, "%s",
                 error_get_pretty(err));
    json_decref(limits);
}

static void group_set_limits(const char *id, const char *limits_json) GS
{
    Error *err = NULL;
    json_t *limits = json_loads(limits_json, 0, NULL);
    cr_assert_eq(throttle_group_set_limits(throttle_group_find(id), limits, &err),
                 0, "%s", error_get_pretty(err));
    json_decref(limits);
}

static void chain_open(Chain *c, const char *name, const char *group) GS
{
    char def[256];
    snprintf(def, sizeof(def), "driver=mem,node-name=m%s,size=4M", name);
    c->mem = test_open_node(def);
    snprintf(def, sizeof(def), "driver=throttle,node-name=t%s,throttle-group=%s,"
             "file=m%s", name, group, name);
    c->thr = test_open_node(def);
    snprintf(def, sizeof(def), "e%s", name);
    c->blk = test_backend_on(def, c->thr, RW, BLK_PERM_ALL);
}

/* Group "g" with these limits and chain "0" in it. */
static void chain_open_in_new_group(Chain *c, const char *limits_json) GS
{
    group_create("g", limits_json);
    chain_open(c, "0", "g");
}

/* A batch of 4k writes, each in its own coroutine on the calling thread.
 * `all_done` is set by the last one to complete. */
typedef struct Batch {
    BlockBackend *blk;
    int n;
    _Atomic int completed;
    _Atomic bool all_done;
    int64_t done_at[MAX_REQS];       /* clock_ns() at completion */
    int ret[MAX_REQS];
    uint8_t buf[4096];
} Batch;

typedef struct BatchReq {
    Batch *b;
    int i;
} BatchReq;

static BatchReq batch_reqs[MAX_REQS * 2];

static void coroutine_fn batch_req_entry(void *opaque)
{
    BatchReq *r = opaque;
    Batch *b = r->b;
    IOVector v;
    iov_init_buf(&v, b->buf, sizeof(b->buf));
    b->ret[r->i] = blk_co_pwritev(b->blk, (int64_t)r->i * 4096, 4096, &v, 0);
    b->done_at[r->i] = clock_ns();
    if (atomic_fetch_add(&b->completed, 1) + 1 == b->n) {
        atomic_store(&b->all_done, true);
    }
}

/* Starts requests [from, to) of b (b->n must already count them). */
static void batch_start(Batch *b, int from, int to, BatchReq *slots)
{
    for (int i = from; i < to; i++) {
        slots[i] = (BatchReq){ b, i };
        co_spawn(batch_req_entry, &slots[i]);   /* returns when it waits */
    }
}

static void batch_init(Batch *b, BlockBackend *blk, int n)
{
    memset(b, 0, sizeof(*b));
    b->blk = blk;
    b->n = n;
    memset(b->buf, 0x5a, sizeof(b->buf));
}

/* A batch of n writes on blk, the first `started` of them started. */
static void batch_begin(Batch *b, BlockBackend *blk, int n, int started)
{
    batch_init(b, blk, n);
    batch_start(b, 0, started, batch_reqs);
}

/* Lets the main loop run for ns: for checks that nothing happens. */
static void timer_flag_cb(void *opaque)
{
    atomic_store((_Atomic bool *)opaque, true);
}

static void run_loop_for(int64_t ns)
{
    _Atomic bool fired = false;
    LoopTimer t;
    loop_timer_init(&t, loop_main(), timer_flag_cb, (void *)&fired);
    loop_timer_arm(&t, clock_ns() + ns);
    wait_flag(&fired);
}

/* Begins a section of bs; returns how long that took. */
static int64_t quiesce_begin_timed(BlockNode *bs) GS
{
    int64_t t0 = clock_ns();
    test_quiesce_begin_now(bs);
    return clock_ns() - t0;
}

static int mem_writes(BlockNode *mem)
{
    MemStats st;
    mem_stats(mem, &st);
    return st.writes;
}

/*
 * 20 iops, no burst: the bucket holds avg/10 = 2 ops, so the first three
 * requests go at once and each further one needs 50 ms of leak.
 */
Test(throttle, requests_are_paced)
{
    global_lock_assert_held();
    Chain c;
    chain_open_in_new_group(&c, "{\"iops-total\": 20}");
    static Batch b;
    int64_t start = clock_ns();
    batch_begin(&b, c.blk, 12, 12);
    cr_assert_lt(atomic_load(&b.completed), 12, "12 requests cannot go at once");
    cr_assert_gt(throttle_node_queued(c.thr), 0);
    wait_flag(&b.all_done);

    int64_t last = 0;
    for (int i = 0; i < 12; i++) {
        cr_assert_eq(b.ret[i], 0);
        last = MAX(last, b.done_at[i] - start);
    }
    /* nine requests beyond the bucket need at least 9 * 50 ms */
    cr_assert_geq(last, 420 * MS, "12 requests at 20 iops took %lld ms",
                  (long long)(last / MS));
    cr_assert_lt(last, 2000 * MS, "paced far too slowly: %lld ms",
                 (long long)(last / MS));
    /* at most 20 iops (+ the bucket) in any window of one second */
    for (int i = 0; i < 12; i++) {
        int in_window = 0;
        for (int j = 0; j < 12; j++) {
            int64_t d = b.done_at[j] - b.done_at[i];
            in_window += d >= 0 && d < 200 * MS;
        }
        cr_assert_leq(in_window, 4 + 3, "too many completions in 200 ms");
    }
    cr_assert_eq(mem_writes(c.mem), 12);
}

/*
 * The barrier: a section of the throttle's child ends its wait at once
 * although 16 requests are queued, nothing is dispatched during it, the
 * backend above keeps accepting (the requests queue in the throttle), and
 * after the end the queue goes at the throttled rate.
 */
Test(throttle, section_below_holds_queue_and_returns_at_once)
{
    global_lock_assert_held();
    Chain c;
    chain_open_in_new_group(&c, "{\"iops-total\": 20}");
    static Batch b;
    batch_begin(&b, c.blk, 20, 19);
    int passed = mem_writes(c.mem);
    cr_assert_eq(throttle_node_queued(c.thr), 19 - passed);
    cr_assert_geq(throttle_node_queued(c.thr), 16);

    int64_t took = quiesce_begin_timed(c.mem);
    cr_assert_lt(took, 100 * MS, "quiesce_begin waited %lld ms for the queue",
                 (long long)(took / MS));
    cr_assert_gt(atomic_load(&c.thr->quiesce_counter), 0);
    cr_assert_eq(c.thr->drv->in_flight_below(c.thr), 0);

    /* the backend is not quiesced: a new request queues in the throttle */
    batch_start(&b, 19, 20, batch_reqs);
    int queued = throttle_node_queued(c.thr);
    cr_assert_eq(queued, 20 - passed, "the new request queues in the throttle");

    /* 300 ms would release 6 requests at 20 iops: none may go */
    int writes = mem_writes(c.mem);
    run_loop_for(300 * MS);
    cr_assert_eq(mem_writes(c.mem), writes, "dispatched during the section");
    cr_assert_eq(throttle_node_queued(c.thr), queued);

    int64_t t_end = clock_ns();
    bdrv_quiesce_end(c.mem);
    wait_flag(&b.all_done);
    int64_t drained = clock_ns() - t_end;
    /* after the section: 3 at once (the bucket), then 50 ms each */
    int64_t min_ns = (int64_t)(queued - 3) * 50 * MS - 30 * MS;
    cr_assert_geq(drained, min_ns, "%d queued requests went in %lld ms",
                  queued, (long long)(drained / MS));
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(b.ret[i], 0);
        if (i >= passed) {
            cr_assert_geq(b.done_at[i], t_end,
                          "request %d completed during the section", i);
        }
    }
    cr_assert_eq(atomic_load(&c.thr->quiesce_counter), 0);
    cr_assert_eq(mem_writes(c.mem), 20);
}

/*
 * Backend drain above a throttle waits for its queue, at the throttled
 * rate (limits stay enforced).
 */
static void coroutine_fn drain_entry(void *opaque)
{
    Batch *b = opaque;
    blk_co_drain(b->blk);
    cr_assert_eq(atomic_load(&b->completed), b->n, "drain returned early");
}

Test(throttle, backend_drain_waits_at_the_rate)
{
    global_lock_assert_held();
    Chain c;
    chain_open_in_new_group(&c, "{\"iops-total\": 20}");
    static Batch b;
    int64_t t0 = clock_ns();
    batch_begin(&b, c.blk, 10, 10);
    run_co(drain_entry, &b);
    int64_t took = clock_ns() - t0;
    cr_assert(atomic_load(&b.all_done));
    cr_assert_geq(took, 7 * 50 * MS - 30 * MS, "drain flushed the queue: %lld ms",
                  (long long)(took / MS));
}

/*
 * Live limit change: requests queued behind 1 iops go within a timer
 * period of raising the limit.
 */
Test(throttle, set_limits_retimes_queue)
{
    global_lock_assert_held();
    Chain c;
    chain_open_in_new_group(&c, "{\"iops-total\": 1}");
    static Batch b;
    batch_begin(&b, c.blk, 6, 6);
    cr_assert_geq(throttle_node_queued(c.thr), 4);

    int64_t t0 = clock_ns();
    group_set_limits("g", "{\"iops-total\": 1000}");
    wait_flag(&b.all_done);
    int64_t took = clock_ns() - t0;
    cr_assert_lt(took, 300 * MS, "queue not re-timed: %lld ms", (long long)(took / MS));

    json_t *got = throttle_group_get_limits(throttle_group_find("g"));
    cr_assert_eq(json_integer_value(json_object_get(got, "iops-total")), 1000);
    json_decref(got);
}

/*
 * Two members of one group on two IOThreads: a busy one (16 writers that
 * keep its queue full) and a light one (one write at a time).  Round-robin
 * lets each light write go after at most one busy write.
 */
typedef struct Fair {
    BlockBackend *blk;
    bool busy;
    struct FairShared *sh;
    int64_t light_max_ns, light_total_ns;
} Fair;

typedef struct FairShared {
    CoEvent busy_full;          /* the busy member's queue is full */
    _Atomic bool stop;
    _Atomic int workers;
    CoEvent workers_done;
    _Atomic int errors;         /* failed writes (asserted on the main thread) */
} FairShared;

static void coroutine_fn busy_worker(void *opaque)
{
    Fair *f = opaque;
    static uint8_t buf[4096];
    IOVector v;
    iov_init_buf(&v, buf, sizeof(buf));
    while (!atomic_load(&f->sh->stop)) {
        if (blk_co_pwritev(f->blk, 0, 4096, &v, 0) < 0) {
            atomic_fetch_add(&f->sh->errors, 1);
        }
    }
    if (atomic_fetch_sub(&f->sh->workers, 1) == 1) {
        co_event_set(&f->sh->workers_done);
    }
}

static void coroutine_fn fair_job(void *opaque)
{
    Fair *f = opaque;
    if (f->busy) {
        atomic_store(&f->sh->workers, 16);
        for (int i = 0; i < 16; i++) {
            co_spawn(busy_worker, f);
        }
        co_event_set(&f->sh->busy_full);
        co_event_wait(&f->sh->workers_done);
        return;
    }
    co_event_wait(&f->sh->busy_full);
    uint8_t buf[4096];
    memset(buf, 1, sizeof(buf));
    IOVector v;
    iov_init_buf(&v, buf, sizeof(buf));
    for (int i = 0; i < 5; i++) {
        int64_t t = clock_ns();
        if (blk_co_pwritev(f->blk, 0, 4096, &v, 0) < 0) {
            atomic_fetch_add(&f->sh->errors, 1);
        }
        t = clock_ns() - t;
        f->light_max_ns = MAX(f->light_max_ns, t);
        f->light_total_ns += t;
    }
    atomic_store(&f->sh->stop, true);
}

Test(throttle, light_member_is_not_starved)
{
    global_lock_assert_held();
    group_create("g", "{\"iops-total\": 20}");
    Chain busy, light;
    chain_open(&busy, "b", "g");
    chain_open(&light, "l", "g");
    static FairShared sh;
    co_event_init(&sh.busy_full);
    co_event_init(&sh.workers_done);
    Fair jobs[2] = {
        { .blk = busy.blk, .busy = true, .sh = &sh },
        { .blk = light.blk, .busy = false, .sh = &sh },
    };
    run_co_on_iothreads("thr", fair_job, jobs, sizeof(Fair), 2);
    cr_assert_eq(atomic_load(&sh.errors), 0);
    /* FIFO across the group would make each light write wait for the 16
     * busy ones ahead of it (~800 ms); round-robin: one busy write. */
    cr_assert_lt(jobs[1].light_max_ns, 300 * MS, "a light write waited %lld ms",
                 (long long)(jobs[1].light_max_ns / MS));
    cr_assert_lt(jobs[1].light_total_ns, 5 * 200 * MS);
    cr_assert_eq(throttle_node_queued(busy.thr), 0);
}

Test(throttle, group_with_members_cannot_be_deleted)
{
    global_lock_assert_held();
    group_create("g", "{\"iops-total\": 20}");
    Error *err = NULL;
    BlockNode *m = open_def("driver=mem,node-name=m0,size=1M", &err);
    cr_assert_not_null(m);
    BlockNode *t = open_def("driver=throttle,node-name=t0,throttle-group=g,file=m0", &err);
    cr_assert_not_null(t, "%s", error_get_pretty(err));

    cr_assert_eq(throttle_group_delete("g", &err), -EBUSY);
    cr_assert_str_eq(error_get_pretty(err), "object 'g' is in use, can not be deleted");
    error_free(err);
    err = NULL;
    cr_assert_not_null(throttle_group_find("g"));

    cr_assert_eq(del_node("t0", &err), 0, "%s", error_get_pretty(err));
    cr_assert_eq(throttle_group_delete("g", &err), 0, "%s", error_get_pretty(err));
    cr_assert_null(throttle_group_find("g"));
}

Test(throttle, open_errors_name_the_group)
{
    global_lock_assert_held();
    Error *err = NULL;
    cr_assert_not_null(open_def("driver=mem,node-name=m0,size=1M", &err));
    cr_assert_null(open_def("driver=throttle,node-name=t0,throttle-group=nope,file=m0",
                            &err));
    cr_assert_str_eq(error_get_pretty(err), "Throttle group 'nope' does not exist");
    error_free(err);
    err = NULL;
    cr_assert_null(open_def("driver=throttle,node-name=t0,file=m0", &err));
    cr_assert_str_eq(error_get_pretty(err), "Parameter 'throttle-group' is missing");
    error_free(err);
}

/* Flush is not throttled: it completes while writes are queued. */
static void coroutine_fn flush_entry(void *opaque)
{
    Batch *b = opaque;
    b->ret[MAX_REQS - 1] = blk_co_flush(b->blk);
}

Test(throttle, flush_is_not_throttled)
{
    global_lock_assert_held();
    Chain c;
    chain_open_in_new_group(&c, "{\"iops-total\": 1}");
    static Batch b;
    batch_begin(&b, c.blk, 4, 4);
    cr_assert_geq(throttle_node_queued(c.thr), 2);
    run_co(flush_entry, &b);
    cr_assert_eq(b.ret[MAX_REQS - 1], 0);
    cr_assert_geq(throttle_node_queued(c.thr), 2, "flush waited for the queue");
    group_set_limits("g", "{\"iops-total\": 0}");
    wait_flag(&b.all_done);
}

/*
 * Write-zeroes and discard count as writes: behind an iops-write limit
 * they queue, while a read (not limited) goes at once.
 */
Test(throttle, zeroes_and_discard_count_as_writes)
{
    global_lock_assert_held();
    group_create("g", "{\"iops-write\": 1}");
    BlockNode *mem = test_open_node("driver=mem,node-name=m0,size=1M,discard=unmap");
    BlockNode *thr = test_open_node("driver=throttle,node-name=t0,throttle-group=g,"
                                    "file=m0,discard=unmap");
    BlockBackend *blk = test_backend_on("e0", thr, RW, BLK_PERM_ALL);

    static TestReq reqs[3];
    static TestCo cos[3];
    const TestReqKind kinds[3] = { REQ_ZERO, REQ_DISCARD, REQ_ZERO };
    for (int i = 0; i < 3; i++) {
        reqs[i] = (TestReq){ .kind = kinds[i], .blk = blk, .off = i * 4096,
                             .len = 4096, .flags = BDRV_REQ_MAY_UNMAP };
        test_co_start(&cos[i], test_req_co, &reqs[i]);
    }
    cr_assert(cos[0].done, "the first write goes at once");
    cr_assert_eq(throttle_node_queued(thr), 2, "discard and zeroes queue as writes");

    static uint8_t buf[4096];
    TestReq rd = { .kind = REQ_READ, .blk = blk, .off = 0, .len = 4096, .buf = buf };
    run_co(test_req_co, &rd);
    cr_assert_eq(rd.ret, 0);
    cr_assert_eq(throttle_node_queued(thr), 2, "a read is not held by iops-write");

    group_set_limits("g", "{\"iops-write\": 0}");
    for (int i = 0; i < 3; i++) {
        wait_flag(&cos[i].done);
        cr_assert_eq(reqs[i].ret, 0);
    }
    MemStats st;
    mem_stats(mem, &st);
    cr_assert_eq(st.discards, 1);
    cr_assert_eq(st.zeroes, 2);
}

/*
 * A section below one member holds only that member: the other member of
 * the group goes on at the group's rate, even when the held member's
 * request owned the group's timer when the section began.
 */
Test(throttle, section_holds_one_member_only)
{
    global_lock_assert_held();
    group_create("g", "{\"iops-total\": 20}");
    Chain a, b;
    chain_open(&a, "a", "g");
    chain_open(&b, "b", "g");
    static Batch ba, bb;
    batch_init(&ba, a.blk, 8);
    batch_init(&bb, b.blk, 8);
    batch_start(&ba, 0, 8, batch_reqs);         /* a queues first: it owns the timer */
    batch_start(&bb, 0, 8, batch_reqs + MAX_REQS);
    cr_assert_gt(throttle_node_queued(a.thr), 0);

    test_quiesce_begin_now(a.mem);
    int a_writes = mem_writes(a.mem);
    wait_flag(&bb.all_done);
    cr_assert_eq(mem_writes(a.mem), a_writes, "the held member dispatched");
    cr_assert_eq(mem_writes(b.mem), 8);

    bdrv_quiesce_end(a.mem);
    wait_flag(&ba.all_done);
    cr_assert_eq(mem_writes(a.mem), 8);
}

/*
 * A section of the throttle node itself (node drain, a change above it)
 * waits for its queue, released at the throttled rate — never flushed.
 */
Test(throttle, section_of_the_node_itself_drains_at_the_rate)
{
    global_lock_assert_held();
    Chain c;
    chain_open_in_new_group(&c, "{\"iops-total\": 20}");
    static Batch b;
    batch_begin(&b, c.blk, 10, 10);
    int queued = throttle_node_queued(c.thr);
    cr_assert_geq(queued, 6);

    int64_t took = quiesce_begin_timed(c.thr);
    cr_assert(atomic_load(&b.all_done), "the section waits for the queue");
    cr_assert_geq(took, (int64_t)(queued - 1) * 50 * MS - 30 * MS,
                  "%d queued requests flushed in %lld ms", queued,
                  (long long)(took / MS));
    bdrv_quiesce_end(c.thr);
}

/* blockdev-reopen in a coroutine. */
typedef struct ReopenOp {
    const char *defs;
    int ret;
    char err[512];
} ReopenOp;

static void coroutine_fn reopen_entry(void *opaque)
{
    global_lock_assert_held();
    ReopenOp *op = opaque;
    Error *err = NULL;
    json_t *defs = json_loads(op->defs, 0, NULL);
    op->ret = bdrv_co_reopen_multiple(defs, &err);
    snprintf(op->err, sizeof(op->err), "%s", err ? error_get_pretty(err) : "");
    error_free(err);
    json_decref(defs);
}

/* blockdev-reopen may move a throttle node to another group (as QEMU). */
Test(throttle, reopen_switches_group)
{
    global_lock_assert_held();
    group_create("g1", "{\"iops-total\": 20}");
    group_create("g2", "{\"iops-total\": 30}");
    Chain c;
    chain_open(&c, "0", "g1");

    ReopenOp bad = { "[{\"driver\": \"throttle\", \"node-name\": \"t0\", "
                     "\"throttle-group\": \"nope\", \"file\": \"m0\"}]" };
    run_co(reopen_entry, &bad);
    cr_assert_lt(bad.ret, 0);
    cr_assert_str_eq(bad.err, "Throttle group 'nope' does not exist");

    ReopenOp op = { "[{\"driver\": \"throttle\", \"node-name\": \"t0\", "
                    "\"throttle-group\": \"g2\", \"file\": \"m0\"}]" };
    run_co(reopen_entry, &op);
    cr_assert_eq(op.ret, 0, "%s", op.err);
    Error *err = NULL;
    cr_assert_eq(throttle_group_delete("g1", &err), 0, "%s", error_get_pretty(err));
    cr_assert_eq(throttle_group_delete("g2", &err), -EBUSY, "the node is in g2 now");
    error_free(err);

    static Batch b;
    batch_begin(&b, c.blk, 2, 2);
    wait_flag(&b.all_done);
    cr_assert_eq(b.ret[0], 0);
}
