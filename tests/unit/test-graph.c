/*
 * test-graph.c — nodes, edges, definitions, permissions, blockdev-del,
 * close order (graph.c, perm.c, options.c, blockdev.c, backend.c).
 */
#include <criterion/criterion.h>
#include <string.h>
#include "fake-drivers.h"
#include "options.h"

TestSuite(graph, .init = test_env_init, .timeout = 20);

#define ALL BLK_PERM_ALL
#define RW (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)

static void coroutine_fn unref_blk_entry(void *opaque)
{
    global_lock_assert_held();
    blk_co_unref(opaque);
}

static int count_nodes(void) GS
{
    int n = 0;
    for (BlockNode *bs = bdrv_next_node(NULL); bs; bs = bdrv_next_node(bs)) {
        n++;
    }
    return n;
}

static BlockNode *must_open(const char *text) GS
{
    Error *err = NULL;
    BlockNode *bs = open_def(text, &err);
    cr_assert_not_null(bs, "open '%s': %s", text, error_get_pretty(err));
    return bs;
}

/* Opens text expecting failure; returns the message (static). */
static const char *open_error(const char *text) GS
{
    static char msg[512];
    Error *err = NULL;
    BlockNode *bs = open_def(text, &err);
    cr_assert_null(bs, "'%s' opened but should fail", text);
    cr_assert_not_null(err);
    snprintf(msg, sizeof(msg), "%s", error_get_pretty(err));
    error_free(err);
    return msg;
}

static BlockChild *first_parent(BlockNode *bs) GS
{
    bdrv_graph_rdlock_main_loop();
    BlockChild *c = bs->parents;
    bdrv_graph_rdunlock_main_loop();
    return c;
}

static BlockNode *file_of(BlockNode *bs) GS
{
    bdrv_graph_rdlock_main_loop();
    BlockNode *f = bs->file ? bs->file->node : NULL;
    bdrv_graph_rdunlock_main_loop();
    return f;
}

Test(graph, open_json)
{
    global_lock_assert_held();
    BlockNode *bs = must_open("{\"driver\": \"mem\", \"node-name\": \"m0\", \"size\": 65536}");
    cr_assert_eq(bdrv_find_node("m0"), bs);
    cr_assert_eq(bdrv_getlength(bs), 65536);
    cr_assert_eq(bs->refcnt, 1);
}

Test(graph, open_keyval_nested)
{
    global_lock_assert_held();
    BlockNode *h = must_open("driver=hold,node-name=h0,file.driver=mem,"
                             "file.node-name=m1,file.size=1M");
    BlockNode *m = bdrv_find_node("m1");
    cr_assert_not_null(m);
    cr_assert_eq(file_of(h), m);
    cr_assert_eq(bdrv_getlength(h), 1 << 20);
    cr_assert_eq(first_parent(m)->parent_node, h);
    /* the default child perm of a filter takes consistent read */
    cr_assert(first_parent(m)->perm & BLK_PERM_CONSISTENT_READ);
}

Test(graph, auto_node_names)
{
    global_lock_assert_held();
    BlockNode *h = must_open("driver=hold,node-name=h0,file.driver=mem,file.size=4096");
    BlockNode *m = file_of(h);
    cr_assert_eq(strncmp(m->node_name, "#block", 6), 0, "got %s", m->node_name);
    BlockNode *a = must_open("driver=mem,size=4096");
    cr_assert_str_neq(a->node_name, m->node_name);
}

Test(graph, nested_inherits_options)
{
    global_lock_assert_held();
    BlockNode *h = must_open("driver=hold,node-name=h0,read-only=on,cache.no-flush=on,"
                             "file.driver=mem,file.size=4096,file.node-name=m1");
    BlockNode *m = file_of(h);
    cr_assert(h->read_only);
    cr_assert(m->read_only, "read-only is inherited");
    cr_assert(opt_bool(m->options, "cache.no-flush", false), "cache.* is inherited");

    BlockNode *h2 = must_open("driver=hold,node-name=h2,read-only=on,"
                              "file.driver=mem,file.size=4096,file.read-only=off");
    cr_assert_not(file_of(h2)->read_only, "an explicit child setting wins");
}

Test(graph, definition_errors)
{
    global_lock_assert_held();
    cr_assert_str_eq(open_error("driver=mem,size=4096,foo=bar"),
                     "Parameter 'foo' is unexpected");
    cr_assert_str_eq(open_error("node-name=x,size=4096"), "Parameter 'driver' is missing");
    cr_assert_str_eq(open_error("driver=mem"), "Parameter 'size' is missing");
    cr_assert_str_eq(open_error("{\"driver\": \"mem\", \"size\": 4096, \"read-only\": \"yes\"}"),
                     "Invalid parameter type for 'read-only', expected: boolean");
    cr_assert_str_eq(open_error("driver=mem,size=4096,read-only=maybe"),
                     "Parameter 'read-only' expects 'on' or 'off'");
    cr_assert_str_eq(open_error("driver=mem,size=lots"), "Parameter 'size' expects a size");
    cr_assert_str_eq(open_error("driver=hold,file.driver=mem"),
                     "Parameter 'file.size' is missing");
    cr_assert_str_eq(open_error("driver=mem,size=4096,discard=sometimes"),
                     "Parameter 'discard' does not accept value 'sometimes'");
    cr_assert_str_eq(open_error("driver=nope"), "Parameter 'driver' does not accept value 'nope'");
    cr_assert_str_eq(open_error("driver=mem,size=4096,node-name=1x"), "Invalid node-name: '1x'");
    cr_assert_eq(count_nodes(), 0);
}

Test(graph, keyval_syntax)
{
    Error *err = NULL;
    json_t *o = keyval_parse("driver=file,filename=a,,b.img,cache.direct=on", &err);
    cr_assert_not_null(o, "%s", error_get_pretty(err));
    cr_assert_str_eq(opt_str(o, "filename", ""), "a,b.img");
    cr_assert_str_eq(opt_str(o, "cache.direct", ""), "on");
    json_decref(o);
    cr_assert_null(keyval_parse("driver", &err));
    cr_assert_str_eq(error_get_pretty(err), "Expected '=' after parameter 'driver'");
    error_free(err);
    uint64_t v;
    cr_assert(parse_size("1G", &v) && v == 1ULL << 30);
    cr_assert(parse_size("1.5k", &v) && v == 1536);
    cr_assert(parse_size("4096", &v) && v == 4096);
    cr_assert_not(parse_size("-1", &v));
    cr_assert_not(parse_size("12q", &v));
    cr_assert_not(parse_size("99999999999999999999", &v));
}

Test(graph, duplicate_names)
{
    global_lock_assert_held();
    must_open("driver=mem,node-name=m0,size=4096");
    cr_assert_str_eq(open_error("driver=mem,node-name=m0,size=4096"),
                     "Duplicate nodes with node-name='m0'");
    /* a nested child clashing with its own parent: nothing is left */
    const char *msg = open_error("driver=hold,node-name=h0,file.driver=mem,"
                                 "file.size=4096,file.node-name=h0");
    cr_assert(strstr(msg, "Duplicate nodes with node-name='h0'"), "%s", msg);
    cr_assert(strstr(msg, "Node 'h0', child 'file'"), "names parent and key: %s", msg);
    cr_assert_eq(count_nodes(), 1);
}

Test(graph, failed_open_leaves_nothing)
{
    global_lock_assert_held();
    const char *msg = open_error("driver=hold,node-name=h0,fail-open=on,"
                                 "file.driver=mem,file.size=4096,file.node-name=m1");
    cr_assert_str_eq(msg, "hold: failing as asked");
    cr_assert_eq(count_nodes(), 0, "the nested child was closed again");
    cr_assert_str_eq(fake_close_log, "m1,");

    msg = open_error("driver=hold,node-name=h0,file.driver=mem,file.size=4096,file.align=0");
    cr_assert(strstr(msg, "mem: bad size or align"), "%s", msg);
    cr_assert_eq(count_nodes(), 0);

    BlockNode *m = must_open("driver=mem,node-name=m0,size=4096");
    msg = open_error("driver=hold,node-name=h0,file=nope");
    cr_assert(strstr(msg, "nope"), "%s", msg);
    open_error("driver=hold,node-name=h1,fail-open=on,file=m0");
    cr_assert_eq(count_nodes(), 1);
    cr_assert_eq(m->refcnt, 1, "the reference taken by the failed parent is gone");
    cr_assert_null(first_parent(m));
}

Test(graph, perm_conflict_names_both_users)
{
    global_lock_assert_held();
    BlockNode *m = must_open("driver=mem,node-name=disk,size=4096");
    Error *err = NULL;
    BlockBackend *e0 = blk_new("e0", RW, BLK_PERM_CONSISTENT_READ);
    cr_assert_eq(blk_insert_node(e0, m, &err), 0, "%s", error_get_pretty(err));
    int perm_before = m->open_perm;

    BlockBackend *e1 = blk_new("e1", RW, ALL);
    cr_assert_lt(blk_insert_node(e1, m, &err), 0);
    const char *msg = error_get_pretty(err);
    cr_assert(strstr(msg, "Conflicts with use by export 'e0' as 'root', which does "
                          "not allow 'write' on disk"), "%s", msg);
    cr_assert(strstr(msg, "export 'e1'"), "names the other user too: %s", msg);
    error_free(err);
    err = NULL;
    run_co(unref_blk_entry, e1);
    cr_assert_eq(m->open_perm, perm_before, "nothing changed");
    cr_assert_eq(first_parent(m)->parent_opaque, e0);
    cr_assert_null(first_parent(m)->next_parent);

    /* a reader that shares everything is fine */
    BlockBackend *r = blk_new("r", BLK_PERM_CONSISTENT_READ, ALL);
    cr_assert_eq(blk_insert_node(r, m, &err), 0, "%s", error_get_pretty(err));
    /* e0 may not start sharing less than r takes... r takes no write, ok */
    cr_assert_eq(blk_set_perm(e0, RW, BLK_PERM_CONSISTENT_READ, &err), 0);
}

Test(graph, perm_conflict_through_filter)
{
    global_lock_assert_held();
    must_open("driver=mem,node-name=disk,size=4096");
    BlockNode *h = must_open("driver=hold,node-name=h0,file=disk");
    Error *err = NULL;
    BlockBackend *e0 = blk_new("e0", RW, BLK_PERM_CONSISTENT_READ);
    cr_assert_eq(blk_insert_node(e0, h, &err), 0, "%s", error_get_pretty(err));
    BlockBackend *e1 = blk_new("e1", RW, ALL);
    cr_assert_lt(blk_insert_node(e1, bdrv_find_node("disk"), &err), 0);
    cr_assert(strstr(error_get_pretty(err), "Conflicts with use by node 'h0' as 'file', "
                     "which does not allow 'write' on disk"), "%s", error_get_pretty(err));
    error_free(err);
    run_co(unref_blk_entry, e1);
}

Test(graph, read_only_refuses_write)
{
    global_lock_assert_held();
    BlockNode *m = must_open("driver=mem,node-name=ro,size=4096,read-only=on");
    Error *err = NULL;
    BlockBackend *e0 = blk_new("e0", RW, ALL);
    cr_assert_lt(blk_insert_node(e0, m, &err), 0);
    cr_assert_str_eq(error_get_pretty(err), "Block node is read-only");
    error_free(err);
    run_co(unref_blk_entry, e0);
    err = NULL;
    BlockBackend *r = blk_new("r", BLK_PERM_CONSISTENT_READ, ALL);
    cr_assert_eq(blk_insert_node(r, m, &err), 0);
}

Test(graph, blockdev_del_in_use)
{
    global_lock_assert_held();
    must_open("driver=mem,node-name=m0,size=4096");
    must_open("driver=hold,node-name=h0,file=m0");
    Error *err = NULL;
    cr_assert_lt(del_node("m0", &err), 0);
    cr_assert_str_eq(error_get_pretty(err), "Node 'm0' is in use by node 'h0'");
    error_free(err);
    err = NULL;

    BlockBackend *e0 = blk_new("e0", RW, ALL);
    cr_assert_eq(blk_insert_node(e0, bdrv_find_node("h0"), &err), 0);
    cr_assert_lt(del_node("h0", &err), 0);
    cr_assert_str_eq(error_get_pretty(err), "Node 'h0' is in use by export 'e0'");
    error_free(err);
    err = NULL;

    run_co(unref_blk_entry, e0);
    cr_assert_eq(del_node("h0", &err), 0, "%s", error_get_pretty(err));
    cr_assert_eq(del_node("m0", &err), 0, "%s", error_get_pretty(err));
    cr_assert_eq(count_nodes(), 0);
    cr_assert_str_eq(fake_close_log, "h0,m0,");
    cr_assert_lt(del_node("m0", &err), 0);
    cr_assert_str_eq(error_get_pretty(err), "Failed to find node with node-name='m0'");
    error_free(err);
}

Test(graph, blockdev_del_nested_refused)
{
    global_lock_assert_held();
    must_open("driver=hold,node-name=h0,file.driver=mem,file.size=4096,file.node-name=m1");
    Error *err = NULL;
    cr_assert_lt(del_node("m1", &err), 0);
    cr_assert(strstr(error_get_pretty(err), "not owned by the monitor"), "%s",
              error_get_pretty(err));
    error_free(err);
    err = NULL;
    cr_assert_eq(del_node("h0", &err), 0);
    cr_assert_eq(count_nodes(), 0, "the nested child goes with its parent");
}

static void coroutine_fn close_all_entry(void *opaque)
{
    global_lock_assert_held();
    bdrv_co_close_all();
}

Test(graph, close_all_parents_first)
{
    global_lock_assert_held();
    must_open("driver=mem,node-name=base,size=4096");
    must_open("driver=hold,node-name=mid,file=base");
    must_open("driver=hold,node-name=top,file=mid");
    must_open("driver=mem,node-name=other,size=4096");
    run_co(close_all_entry, NULL);
    cr_assert_str_eq(fake_close_log, "top,mid,base,other,");
    cr_assert_eq(count_nodes(), 0);
}

Test(graph, probe_defaults_to_raw)
{
    global_lock_assert_held();
    uint8_t buf[512] = { 0 };
    const BlockDriver *d = bdrv_probe_format(buf, sizeof(buf), "x.img");
    cr_assert_not_null(d);
    cr_assert_str_eq(d->format_name, "raw");
}
