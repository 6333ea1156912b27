/*
 * test-quiesce.c — the three drains of DESIGN rule 2 (quiesce.c,
 * backend.c) and graph changes inside quiesced sections.
 *
 * Requests are held on command in a "hold" filter; the tests wait on events
 * (flags set by the coroutines themselves), never on time.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>
#include "fake-drivers.h"
#include "graph-internal.h"
#include "loop/loop.h"

TestSuite(quiesce, .init = test_env_init, .timeout = 20);

#define RW (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)

typedef struct Chain {
    BlockBackend *blk;
    BlockNode *hold, *mem;
} Chain;

/* export e<name> -> hold h<name> -> mem m<name> */
static void chain_open(Chain *c, const char *name) GS
{
    char def[256];
    snprintf(def, sizeof(def), "driver=mem,node-name=m%s,size=1M", name);
    c->mem = test_open_node(def);
    snprintf(def, sizeof(def), "driver=hold,node-name=h%s,file=m%s", name, name);
    c->hold = test_open_node(def);
    snprintf(def, sizeof(def), "e%s", name);
    c->blk = test_backend_on(def, c->hold, RW, BLK_PERM_ALL);
}

static void coroutine_fn drain_co(void *blk)
{
    blk_co_drain(blk);
}

Test(quiesce, backend_drain_waits_for_request_held_below)
{
    global_lock_assert_held();
    Chain c;
    chain_open(&c, "0");
    hold_set_enabled(c.hold, true);
    TestAsyncReq r;
    test_async_write_start(&r, c.blk, 0, 0xaa);
    cr_assert_eq(hold_held(c.hold), 1);

    TestCo d;
    test_co_start(&d, drain_co, c.blk);
    cr_assert_not(d.done, "drain must wait for the request held in the filter");

    /* drain does not stop new requests */
    hold_set_enabled(c.hold, false);
    TestAsyncReq r2;
    test_async_write_start(&r2, c.blk, 4096, 0xbb);
    cr_assert(r2.done, "a new request passes while a backend drain waits");
    cr_assert_not(d.done);

    hold_release_all(c.hold);
    wait_flag(&d.done);
    cr_assert(r.done);
    cr_assert_eq(r.ret, 0);
    cr_assert_eq(mem_data(c.mem)[0], 0xaa);
    cr_assert_eq(atomic_load(&c.hold->in_flight), 0);
    cr_assert_eq(atomic_load(&c.mem->in_flight), 0);
}

Test(quiesce, section_holds_new_requests_and_waits_for_in_flight)
{
    global_lock_assert_held();
    Chain c;
    chain_open(&c, "0");
    hold_set_enabled(c.hold, true);
    TestAsyncReq r1;
    test_async_write_start(&r1, c.blk, 0, 0x11);
    cr_assert_eq(hold_held(c.hold), 1);

    TestCo q;
    test_quiesce_begin_start(&q, c.mem);
    cr_assert_not(q.done, "the section waits for the request in flight above");
    cr_assert_gt(atomic_load(&c.hold->quiesce_counter), 0, "parents are quiesced");

    TestAsyncReq r2;
    test_async_write_start(&r2, c.blk, 4096, 0x22);
    cr_assert_eq(hold_held(c.hold), 1, "the new request is held at the backend");
    cr_assert_eq(hold_passed(c.hold), 0);

    hold_set_enabled(c.hold, false);
    hold_release_all(c.hold);
    wait_flag(&q.done);
    cr_assert(r1.done);
    cr_assert_not(r2.done, "still held while quiesced");
    cr_assert_eq(hold_passed(c.hold), 1);
    cr_assert_eq(atomic_load(&c.mem->in_flight), 0);

    bdrv_quiesce_end(c.mem);
    wait_flag(&r2.done);
    cr_assert_eq(r2.ret, 0);
    cr_assert_eq(mem_data(c.mem)[4096], 0x22);
    cr_assert_eq(atomic_load(&c.hold->quiesce_counter), 0);
    cr_assert_eq(atomic_load(&c.mem->quiesce_counter), 0);
}

Test(quiesce, sections_nest_and_count)
{
    global_lock_assert_held();
    Chain c;
    chain_open(&c, "0");
    test_quiesce_begin_now(c.mem);
    test_quiesce_begin_now(c.hold);
    cr_assert_eq(atomic_load(&c.mem->quiesce_counter), 1);
    cr_assert_eq(atomic_load(&c.hold->quiesce_counter), 2);

    TestAsyncReq r;
    test_async_write_start(&r, c.blk, 0, 0x33);
    cr_assert_not(r.done);
    bdrv_quiesce_end(c.hold);
    cr_assert_not(r.done, "one section is still open");
    /* let any (wrong) wake-up run before checking again */
    loop_iterate(loop_main(), false);
    cr_assert_not(r.done);
    bdrv_quiesce_end(c.mem);
    wait_flag(&r.done);
    cr_assert_eq(r.ret, 0);
}

Test(quiesce, chains_are_isolated)
{
    global_lock_assert_held();
    Chain a, b;
    chain_open(&a, "a");
    chain_open(&b, "b");
    hold_set_enabled(b.hold, true);
    TestAsyncReq rb;
    test_async_write_start(&rb, b.blk, 0, 0x44);
    cr_assert_eq(hold_held(b.hold), 1);

    /* quiescing chain A neither waits for nor stops chain B */
    test_quiesce_begin_now(a.mem);
    cr_assert_eq(atomic_load(&b.hold->quiesce_counter), 0);
    hold_set_enabled(b.hold, false);
    TestAsyncReq rb2;
    test_async_write_start(&rb2, b.blk, 4096, 0x55);
    cr_assert(rb2.done, "chain B serves requests while A is quiesced");

    /* a graph change on chain A while B has a request in flight */
    Error *err = NULL;
    BlockNode *m2 = open_def("driver=mem,node-name=ma2,size=1M", &err);
    cr_assert_not_null(m2);
    test_quiesce_begin_now(m2);
    bdrv_ref(a.mem);
    bdrv_graph_wrlock();
    BlockChild *edge = a.hold->file;
    cr_assert_eq(bdrv_replace_child_node(edge, m2, &err), 0, "%s", error_get_pretty(err));
    bdrv_graph_wrunlock();
    bdrv_quiesce_end(m2);
    bdrv_quiesce_end(a.mem);

    TestAsyncReq ra;
    test_async_write_start(&ra, a.blk, 0, 0x66);
    wait_flag(&ra.done);
    cr_assert_eq(mem_data(m2)[0], 0x66, "the write went to the new child");
    cr_assert_eq(mem_data(a.mem)[0], 0);
    cr_assert_not(rb.done);
    hold_release_all(b.hold);
    wait_flag(&rb.done);
}

Test(quiesce, replace_without_quiesce_aborts, .signal = SIGABRT)
{
    global_lock_assert_held();
    Chain a;
    chain_open(&a, "a");
    Error *err = NULL;
    BlockNode *m2 = open_def("driver=mem,node-name=ma2,size=1M", &err);
    bdrv_ref(a.mem);
    bdrv_graph_wrlock();
    bdrv_replace_child_node(a.hold->file, m2, &err);
    bdrv_graph_wrunlock();
}

/* ---- a request from an IOThread during a section ---- */

typedef struct IoReq {
    TestAsyncReq req;
    Loop *loop;
    _Atomic bool held, done;
} IoReq;

static void set_flag_bh(void *opaque)
{
    atomic_store((_Atomic bool *)opaque, true);
}

static void on_held(void *opaque)              /* runs on the IOThread */
{
    IoReq *io = opaque;
    loop_schedule(loop_main(), set_flag_bh, &io->held);
}

static void coroutine_fn io_req_entry(void *opaque)
{
    IoReq *io = opaque;
    test_async_req_co(&io->req);
    loop_schedule(loop_main(), set_flag_bh, &io->done);
}

static void io_req_start_bh(void *opaque)      /* on the IOThread */
{
    co_spawn(io_req_entry, opaque);
}

Test(quiesce, iothread_request_held_then_completes)
{
    global_lock_assert_held();
    Chain c;
    chain_open(&c, "0");
    IOThread *t = iothread_create("io0");
    IoReq io;
    memset(&io, 0, sizeof(io));
    test_async_write_init(&io.req, c.blk, 8192, 0x77);
    blk_set_hold_notifier(c.blk, on_held, &io);

    test_quiesce_begin_now(c.mem);
    loop_schedule(iothread_loop(t), io_req_start_bh, &io);
    wait_flag(&io.held);
    cr_assert_not(io.done, "held while the section is open");
    cr_assert_eq(hold_passed(c.hold), 0);

    bdrv_quiesce_end(c.mem);
    wait_flag(&io.done);
    cr_assert_eq(io.req.ret, 0);
    cr_assert_eq(mem_data(c.mem)[8192], 0x77);
    cr_assert_eq(atomic_load(&c.mem->in_flight), 0);
    iothread_destroy(t);
}
