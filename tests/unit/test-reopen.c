/*
 * test-reopen.c — bdrv_co_reopen_multiple (reopen.c) on the fake drivers:
 * read-only against the permissions of the parents, a file edge changed
 * while a request is in flight (the reopen waits for it; nothing is lost;
 * new requests go to the new child), another chain's I/O going on while a
 * reopen waits, the all-or-nothing rollback, the refusals, and the option
 * helpers drivers use.
 *
 * The tests wait on flags set by the coroutines themselves, never on time.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fake-drivers.h"
#include "options.h"

TestSuite(reopen, .init = test_env_init, .timeout = 20);

#define RW (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)

static BlockBackend *backend_on(BlockNode *bs, uint64_t perm) GS
{
    return test_backend_on("e0", bs, perm, BLK_PERM_ALL);
}

static BlockNode *file_of(BlockNode *bs) GS
{
    bdrv_graph_rdlock_main_loop();
    BlockNode *f = bs->file ? bs->file->node : NULL;
    bdrv_graph_rdunlock_main_loop();
    return f;
}

/* A reopen in its own coroutine; `done` when it returns. */
typedef struct ReopenOp {
    json_t *defs;              /* consumed */
    int ret;
    char err[512];
    _Atomic bool done;
} ReopenOp;

static void coroutine_fn reopen_entry(void *opaque)
{
    global_lock_assert_held();
    ReopenOp *op = opaque;
    Error *err = NULL;
    op->ret = bdrv_co_reopen_multiple(op->defs, &err);
    snprintf(op->err, sizeof(op->err), "%s", err ? error_get_pretty(err) : "");
    error_free(err);
    json_decref(op->defs);
    atomic_store(&op->done, true);
}

static void reopen_start(ReopenOp *op, const char *defs_json)
{
    json_error_t jerr;
    memset(op, 0, sizeof(*op));
    op->defs = json_loads(defs_json, 0, &jerr);
    cr_assert_not_null(op->defs, "bad test JSON: %s", jerr.text);
    co_spawn(reopen_entry, op);
}

/* Runs a reopen to the end; returns its status, *msg its error. */
static int reopen(const char *defs_json, const char **msg)
{
    static ReopenOp op;
    reopen_start(&op, defs_json);
    wait_flag(&op.done);
    if (msg) {
        *msg = op.err;
    }
    return op.ret;
}

static void reopen_ok(const char *defs_json)
{
    const char *msg;
    cr_assert_eq(reopen(defs_json, &msg), 0, "%s: %s", defs_json, msg);
}

static void reopen_fails(const char *defs_json, const char *want)
{
    const char *msg;
    cr_assert_lt(reopen(defs_json, &msg), 0, "%s succeeded", defs_json);
    cr_assert_str_eq(msg, want, "%s", defs_json);
}

static void coroutine_fn unref_blk_entry(void *opaque)
{
    global_lock_assert_held();
    blk_co_unref(opaque);
}

Test(reopen, read_only_follows_permissions)
{
    global_lock_assert_held();
    BlockNode *m = test_open_node("driver=mem,node-name=m0,size=1M");
    BlockBackend *blk = backend_on(m, RW);

    reopen_fails("[{\"driver\": \"mem\", \"node-name\": \"m0\", \"size\": 1048576,"
                 " \"read-only\": true}]",
                 "Read-only block node 'm0' cannot support read-write users");
    cr_assert_not(m->read_only);
    run_co(unref_blk_entry, blk);

    blk = backend_on(m, BLK_PERM_CONSISTENT_READ);
    reopen_ok("[{\"driver\": \"mem\", \"node-name\": \"m0\", \"size\": 1048576,"
              " \"read-only\": true}]");
    cr_assert(m->read_only);
    cr_assert(json_is_true(json_object_get(m->options, "read-only")));
    /* absent means the default: read-write again */
    reopen_ok("[{\"driver\": \"mem\", \"node-name\": \"m0\", \"size\": 1048576}]");
    cr_assert_not(m->read_only);
    cr_assert_null(json_object_get(m->options, "read-only"));
    run_co(unref_blk_entry, blk);
}

Test(reopen, write_permission_all_the_way_down)
{
    global_lock_assert_held();
    test_open_node("driver=mem,node-name=m0,size=1M,read-only=on");
    BlockNode *h = test_open_node("driver=hold,node-name=h0,file=m0,read-only=on");
    BlockBackend *blk = backend_on(h, BLK_PERM_CONSISTENT_READ);

    /* both at once, child listed first: the order does not matter */
    reopen_ok("[{\"driver\": \"mem\", \"node-name\": \"m0\", \"size\": 1048576},"
              " {\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"m0\"}]");
    cr_assert_not(h->read_only);
    cr_assert_not(file_of(h)->read_only);
    run_co(unref_blk_entry, blk);

    /* a writer above the filter needs the file writable too */
    blk = backend_on(h, RW);
    reopen_fails("[{\"driver\": \"mem\", \"node-name\": \"m0\", \"size\": 1048576,"
                 " \"read-only\": true}]",
                 "Read-only block node 'm0' cannot support read-write users");
    reopen_fails("[{\"driver\": \"mem\", \"node-name\": \"m0\", \"size\": 1048576,"
                 " \"read-only\": true},"
                 " {\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"m0\","
                 " \"read-only\": true}]",
                 "Read-only block node 'h0' cannot support read-write users");
    cr_assert_not(h->read_only);
    cr_assert_not(file_of(h)->read_only);
    run_co(unref_blk_entry, blk);

    /* with no writer above, a filter may become writable over a read-only
     * file: it passes only its parents' needs down */
    test_open_node("driver=mem,node-name=m1,size=1M,read-only=on");
    BlockNode *h1 = test_open_node("driver=hold,node-name=h1,file=m1,read-only=on");
    blk = backend_on(h1, BLK_PERM_CONSISTENT_READ);
    reopen_ok("[{\"driver\": \"hold\", \"node-name\": \"h1\", \"file\": \"m1\"}]");
    cr_assert_not(h1->read_only);
    run_co(unref_blk_entry, blk);
}

Test(reopen, file_change_waits_for_request_in_flight)
{
    global_lock_assert_held();
    BlockNode *m0 = test_open_node("driver=mem,node-name=m0,size=1M");
    BlockNode *m1 = test_open_node("driver=mem,node-name=m1,size=1M");
    BlockNode *h = test_open_node("driver=hold,node-name=h0,file=m0");
    BlockBackend *blk = backend_on(h, RW);

    hold_set_enabled(h, true);
    TestAsyncReq before;
    test_async_write_start(&before, blk, 0, 0xaa);
    cr_assert_eq(hold_held(h), 1);

    ReopenOp op;
    reopen_start(&op, "[{\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"m1\"}]");
    cr_assert_not(atomic_load(&op.done), "reopen must wait for the request in flight");
    cr_assert_eq(file_of(h), m0);

    /* a request issued now is held by the backend, not lost */
    hold_set_enabled(h, false);
    TestAsyncReq after;
    test_async_write_start(&after, blk, 4096, 0xbb);
    cr_assert_not(atomic_load(&after.done));

    hold_release_all(h);
    wait_flag(&op.done);
    cr_assert_eq(op.ret, 0, "%s", op.err);
    wait_flag(&before.done);
    wait_flag(&after.done);
    cr_assert_eq(before.ret, 0);
    cr_assert_eq(after.ret, 0);
    cr_assert_eq(file_of(h), m1);
    /* the old request finished on the old file, the new went to the new */
    cr_assert_eq(mem_data(m0)[0], 0xaa);
    cr_assert_eq(mem_data(m0)[4096], 0);
    cr_assert_eq(mem_data(m1)[4096], 0xbb);
    cr_assert_eq(mem_data(m1)[0], 0);
    cr_assert_str_eq(json_string_value(json_object_get(h->options, "file")), "m1");
    run_co(unref_blk_entry, blk);
}

Test(reopen, unrelated_chain_keeps_running)
{
    global_lock_assert_held();
    BlockNode *h = test_open_node("driver=hold,node-name=h0,file.driver=mem,"
                                  "file.node-name=m0,file.size=1M");
    BlockBackend *blk = backend_on(h, RW);
    BlockNode *m9 = test_open_node("driver=mem,node-name=m9,size=1M");
    BlockBackend *other = blk_new("e9", RW, BLK_PERM_ALL);
    Error *err = NULL;
    cr_assert_eq(blk_insert_node(other, m9, &err), 0);

    hold_set_enabled(h, true);
    TestAsyncReq stuck;
    test_async_write_start(&stuck, blk, 0, 0x11);
    ReopenOp op;
    reopen_start(&op, "[{\"driver\": \"hold\", \"node-name\": \"h0\","
                      " \"file\": \"m0\", \"detect-zeroes\": \"on\"}]");
    cr_assert_not(atomic_load(&op.done));

    /* the reopen waits on its own chain only */
    TestAsyncReq free_write;
    test_async_write_start(&free_write, other, 0, 0x22);
    wait_flag(&free_write.done);
    cr_assert_eq(free_write.ret, 0);
    cr_assert_eq(mem_data(m9)[0], 0x22);
    cr_assert_not(atomic_load(&op.done));

    hold_set_enabled(h, false);
    hold_release_all(h);
    wait_flag(&op.done);
    cr_assert_eq(op.ret, 0, "%s", op.err);
    wait_flag(&stuck.done);
    cr_assert_eq(stuck.ret, 0);
    cr_assert_str_eq(json_string_value(json_object_get(h->options, "detect-zeroes")),
                     "on");
    run_co(unref_blk_entry, blk);
    run_co(unref_blk_entry, other);
}

Test(reopen, two_reopens_racing_on_one_node)
{
    global_lock_assert_held();
    BlockNode *m0 = test_open_node("driver=mem,node-name=m0,size=1M");
    BlockNode *m1 = test_open_node("driver=mem,node-name=m1,size=1M");
    BlockNode *m2 = test_open_node("driver=mem,node-name=m2,size=1M");
    BlockNode *h = test_open_node("driver=hold,node-name=h0,file=m0");
    BlockBackend *blk = backend_on(h, RW);

    /* Reopens run one at a time, in order: the second sees the first's
     * result (file = m1) and builds on it. */
    hold_set_enabled(h, true);
    TestAsyncReq stuck;
    test_async_write_start(&stuck, blk, 0, 0x33);
    ReopenOp a, b;
    reopen_start(&a, "[{\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"m1\"}]");
    reopen_start(&b, "[{\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"m2\"}]");
    cr_assert_not(atomic_load(&a.done) || atomic_load(&b.done));
    hold_set_enabled(h, false);
    hold_release_all(h);
    wait_flag(&a.done);
    wait_flag(&b.done);
    wait_flag(&stuck.done);
    cr_assert_eq(a.ret, 0, "%s", a.err);
    cr_assert_eq(b.ret, 0, "%s", b.err);
    cr_assert_eq(file_of(h), m2);
    cr_assert_str_eq(json_string_value(json_object_get(h->options, "file")), "m2");
    cr_assert_eq(mem_data(m0)[0], 0x33);
    /* the nodes left behind have no parent and one reference */
    cr_assert_eq(m0->refcnt, 1);
    cr_assert_eq(m1->refcnt, 1);
    run_co(unref_blk_entry, blk);
}

typedef struct SetBacking {
    BlockNode *bs, *backing;
    int ret;
    _Atomic bool done;
} SetBacking;

static void coroutine_fn set_backing_entry(void *opaque)
{
    global_lock_assert_held();
    SetBacking *a = opaque;
    a->ret = bdrv_co_set_backing(a->bs, a->backing, NULL);
    atomic_store(&a->done, true);
}

/* A snapshot-style backing change slips in while a reopen waits to quiesce
 * the node: the reopen notices the edge it was built on changed and starts
 * again (qcow2 over a hold filter, so that a request can be kept in flight
 * inside the qcow2 node). */
Test(reopen, backing_changed_by_another_command_meanwhile)
{
    global_lock_assert_held();
    char dir[64], cmd[512], def[512];
    test_tmpdir_create(dir, sizeof(dir), "ds-test-reopen");
    snprintf(cmd, sizeof(cmd), "cd %s && for b in b1 b2 b3; do qemu-img create -q "
             "-f qcow2 $b.qcow2 1M || exit 1; done && qemu-img create -q -f qcow2 "
             "-b b1.qcow2 -F qcow2 top.qcow2 1M && qemu-io -c 'write -P 68 0 4k' "
             "top.qcow2 >/dev/null", dir);
    cr_assert_eq(system(cmd), 0, "qemu-img failed");
    BlockNode *b[3];
    for (int i = 0; i < 3; i++) {
        snprintf(def, sizeof(def), "driver=qcow2,node-name=b%d,read-only=on,"
                 "file.driver=file,file.filename=%s/b%d.qcow2", i + 1, dir, i + 1);
        b[i] = test_open_node(def);
    }
    snprintf(def, sizeof(def), "driver=file,node-name=ft,filename=%s/top.qcow2", dir);
    test_open_node(def);
    BlockNode *h = test_open_node("driver=hold,node-name=h,file=ft");
    BlockNode *top = test_open_node("driver=qcow2,node-name=top,file=h,backing=b1");
    BlockBackend *blk = backend_on(top, RW);

    hold_set_enabled(h, true);
    TestAsyncReq stuck;     /* allocated in top: read through h */
    test_async_read_start(&stuck, blk, 0);
    cr_assert_geq(hold_held(h), 1);
    ReopenOp op;
    reopen_start(&op, "[{\"driver\": \"qcow2\", \"node-name\": \"top\","
                      " \"file\": \"h\", \"backing\": \"b2\"}]");
    SetBacking sb = { .bs = top, .backing = b[2] };
    co_spawn(set_backing_entry, &sb);
    cr_assert_not(atomic_load(&op.done) || atomic_load(&sb.done));
    hold_set_enabled(h, false);
    hold_release_all(h);
    wait_flag(&op.done);
    wait_flag(&sb.done);
    wait_flag(&stuck.done);
    cr_assert_eq(op.ret, 0, "%s", op.err);
    cr_assert_eq(sb.ret, 0);
    cr_assert_eq(stuck.ret, 0, "read: %s", strerror(-stuck.ret));
    cr_assert_eq(stuck.buf[0], 68);
    bdrv_graph_rdlock_main_loop();
    BlockNode *now = top->backing ? top->backing->node : NULL;
    bdrv_graph_rdunlock_main_loop();
    cr_assert(now == b[1] || now == b[2]);
    cr_assert_eq(b[0]->refcnt, 1, "b1 is free again");
    run_co(unref_blk_entry, blk);
    test_tmpdir_remove(dir);
}

Test(reopen, failure_rolls_every_node_back)
{
    global_lock_assert_held();
    BlockNode *m0 = test_open_node("driver=mem,node-name=m0,size=1M");
    test_open_node("driver=mem,node-name=m1,size=1M");
    BlockNode *h = test_open_node("driver=hold,node-name=h0,file=m0");
    BlockNode *x = test_open_node("driver=mem,node-name=x,size=1M");
    BlockBackend *blk = backend_on(x, RW);
    json_t *h_opts = json_deep_copy(h->options);

    /* The first entry changes an edge and a flag; the second fails on
     * permissions: both are undone. */
    reopen_fails("[{\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"m1\","
                 "   \"detect-zeroes\": \"on\"},"
                 " {\"driver\": \"mem\", \"node-name\": \"x\", \"size\": 1048576,"
                 "   \"read-only\": true}]",
                 "Read-only block node 'x' cannot support read-write users");
    cr_assert_eq(file_of(h), m0);
    cr_assert_not(x->read_only);
    cr_assert(json_equal(h->options, h_opts));
    /* m1 lost the parent it had for a moment: it can be deleted */
    Error *err = NULL;
    cr_assert_eq(del_node("m1", &err), 0, "%s", err ? error_get_pretty(err) : "");
    json_decref(h_opts);
    run_co(unref_blk_entry, blk);
}

Test(reopen, refusals)
{
    global_lock_assert_held();
    test_open_node("driver=mem,node-name=m0,size=1M");
    test_open_node("driver=hold,node-name=h0,file=m0");
    test_open_node("driver=hold,node-name=h1,file=h0");

    reopen_fails("[{\"driver\": \"mem\", \"node-name\": \"nope\", \"size\": 1}]",
                 "Failed to find node with node-name='nope'");
    reopen_fails("[{\"driver\": \"mem\", \"size\": 1}]", "node-name not specified");
    reopen_fails("[{\"driver\": \"mem\", \"node-name\": \"m0\", \"size\": 1048576},"
                 " {\"driver\": \"mem\", \"node-name\": \"m0\", \"sise\": 1}]",
                 "Parameter 'options[1].sise' is unexpected");
    reopen_fails("[17]", "Invalid parameter type for 'options[0]', expected: object");
    /* mem has no reopen_prepare: its own options are fixed */
    reopen_fails("[{\"driver\": \"mem\", \"node-name\": \"m0\", \"size\": 4096}]",
                 "Cannot change the option 'size'");
    reopen_fails("[{\"driver\": \"mem\", \"node-name\": \"m0\", \"size\": 1048576,"
                 " \"cache\": {\"direct\": true}}]",
                 "Cannot change the option 'cache.direct'");
    reopen_fails("[{\"driver\": \"hold\", \"node-name\": \"m0\", \"file\": \"h0\"}]",
                 "Cannot change the option 'driver'");
    reopen_fails("[{\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"h1\"}]",
                 "Making 'h1' a file child of 'h0' would create a cycle");
    reopen_fails("[{\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"h0\"}]",
                 "Making 'h0' a file child of 'h0' would create a cycle");
    reopen_fails("[{\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"m0\"},"
                 " {\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"m0\"}]",
                 "Node 'h0' is listed more than once");
    reopen_fails("[{\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": \"zz\"}]",
                 "Cannot find device='' nor node-name='zz'");
    reopen_fails("[{\"driver\": \"hold\", \"node-name\": \"h0\", \"file\": "
                 "  {\"driver\": \"mem\", \"size\": 1048576}}]",
                 "Cannot change the option 'file.driver'");
    /* nothing to do is not an error */
    reopen_ok("[]");
}

typedef struct SetRo {
    BlockNode *bs;
    bool ro;
    int ret;
} SetRo;

static void coroutine_fn set_ro_entry(void *opaque)
{
    global_lock_assert_held();
    SetRo *a = opaque;
    a->ret = bdrv_co_reopen_set_read_only(a->bs, a->ro, NULL);
}

Test(reopen, set_read_only_carries_nested_children)
{
    global_lock_assert_held();
    BlockNode *h = test_open_node("driver=hold,node-name=h0,file.driver=mem,"
                                  "file.node-name=m0,file.size=1M");
    BlockNode *m = file_of(h);
    BlockBackend *blk = backend_on(h, BLK_PERM_CONSISTENT_READ);

    SetRo a = { .bs = h, .ro = true };
    run_co(set_ro_entry, &a);
    cr_assert_eq(a.ret, 0);
    cr_assert(h->read_only);
    cr_assert(m->read_only, "the file h0 created follows it");
    cr_assert_eq(file_of(h), m);
    a.ro = false;
    run_co(set_ro_entry, &a);
    cr_assert_eq(a.ret, 0);
    cr_assert_not(h->read_only);
    cr_assert_not(m->read_only);
    run_co(unref_blk_entry, blk);
}

Test(reopen, option_helpers)
{
    global_lock_assert_held();
    BlockNode *m = test_open_node("{\"driver\": \"mem\", \"node-name\": \"m0\","
                                  " \"size\": 65536, \"zeroes\": true}");
    BlockReopenState rs = { .bs = m };
    rs.options = json_pack("{s:s, s:s, s:i}", "driver", "mem", "node-name", "m0",
                           "size", 65536);
    cr_assert_not(bdrv_reopen_option_changed(&rs, "size"));
    cr_assert_not(bdrv_reopen_option_changed(&rs, "zeroes"),
                  "an option left out is not a change");
    json_object_set_new(rs.options, "zeroes", json_false());
    cr_assert(bdrv_reopen_option_changed(&rs, "zeroes"));
    json_object_set_new(rs.options, "align", json_integer(512));
    cr_assert(bdrv_reopen_option_changed(&rs, "align"), "new option");
    static const char *const fixed[] = { "size", "zeroes", NULL };
    Error *err = NULL;
    cr_assert_lt(bdrv_reopen_refuse_changes(&rs, fixed, &err), 0);
    cr_assert_str_eq(error_get_pretty(err), "Cannot change the option 'zeroes'");
    error_free(err);
    json_decref(rs.options);
}
