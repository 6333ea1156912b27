/*
 * test-mirror-top.c — the mirror job's filter and the graph helpers that
 * put it in and take it out (graph-change.c): every parent of the source
 * moves to the filter and back, or on to another node (the pivot); writes
 * through the filter mark the dirty bitmap after they complete and count
 * as guest writes (the job's busy signal), reads and write-unchanged
 * writes do neither; a refused change changes nothing; the
 * driver is not in the registry (not user-creatable).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "fake-drivers.h"
#include "jobs/mirror.h"
#include "test-util.h"

#define RW (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)

TestSuite(mirror_top, .init = test_env_init, .timeout = 30);

typedef struct Shape {
    BlockNode *src, *other, *filter;
    BlockBackend *user;
    DirtyBitmap *bitmap;
    int ret;
    char err[512];
} Shape;

static void coroutine_fn open_filter_co(void *opaque)
{
    global_lock_assert_held();
    Shape *s = opaque;
    Error *err = NULL;

    s->filter = bdrv_co_open_internal(&bdrv_mirror_top, NULL, &err);
    cr_assert_not_null(s->filter, "%s", err ? error_get_pretty(err) : "");
    mirror_top_set_bitmap(s->filter, s->bitmap);
}

static void coroutine_fn insert_co(void *opaque)
{
    global_lock_assert_held();
    Shape *s = opaque;
    Error *err = NULL;

    s->ret = bdrv_co_insert_filter(s->filter, s->src, &err);
    snprintf(s->err, sizeof(s->err), "%s", err ? error_get_pretty(err) : "");
    error_free(err);
}

static BlockNode *remove_to;

static void coroutine_fn remove_co(void *opaque)
{
    global_lock_assert_held();
    Shape *s = opaque;
    Error *err = NULL;

    s->ret = bdrv_co_remove_filter(s->filter, remove_to, &err);
    snprintf(s->err, sizeof(s->err), "%s", err ? error_get_pretty(err) : "");
    error_free(err);
}

static void coroutine_fn unref_filter_co(void *opaque)
{
    global_lock_assert_held();
    Shape *s = opaque;

    bdrv_co_unref(s->filter);
}

static void coroutine_fn unref_blk_co(void *opaque)
{
    global_lock_assert_held();
    blk_co_unref(opaque);
}

static void shape_open(Shape *s) GS
{
    memset(s, 0, sizeof(*s));
    s->src = test_open_node("driver=mem,node-name=src,size=1M");
    s->other = test_open_node("driver=mem,node-name=other,size=1M");
    s->user = test_backend_on("user", s->src, RW, BLK_PERM_ALL & ~BLK_PERM_WRITE);
    s->bitmap = dirty_bitmap_new(1 << 20, 4096);
    run_co(open_filter_co, s);
}

static void io(BlockBackend *blk, TestReqKind kind, int64_t off, int64_t len,
               BdrvRequestFlags flags) GS
{
    static uint8_t buf[65536];
    TestReq r = { .kind = kind, .blk = blk, .off = off, .len = len, .buf = buf,
                  .flags = flags };
    run_co(test_req_co, &r);
    cr_assert_eq(r.ret, 0, "request %d at %ld: %d", kind, (long)off, r.ret);
}

Test(mirror_top, insert_marks_writes_and_removes)
{
    global_lock_assert_held();
    Shape s;
    shape_open(&s);
    cr_assert_null(bdrv_find_driver("mirror_top"), "not user-creatable");
    cr_assert_eq(strncmp(s.filter->node_name, "#block", 6), 0);

    run_co(insert_co, &s);
    cr_assert_eq(s.ret, 0, "%s", s.err);
    cr_assert_eq(blk_node(s.user), s.filter, "the user moved to the filter");
    cr_assert_eq(bdrv_getlength(s.filter), 1 << 20);

    uint64_t in_flight = 1;
    io(s.user, REQ_READ, 0, 4096, 0);
    cr_assert_eq(dirty_bitmap_count(s.bitmap), 0, "reads do not dirty");
    io(s.user, REQ_WRITE, 8192, 4096, BDRV_REQ_WRITE_UNCHANGED);
    cr_assert_eq(dirty_bitmap_count(s.bitmap), 0, "nor unchanged writes");
    cr_assert_eq(mirror_top_guest_writes(s.filter, &in_flight), 0,
                 "the job's busy signal counts neither");
    io(s.user, REQ_WRITE, 8192, 100, 0);
    io(s.user, REQ_ZERO, 65536, 4096, 0);
    cr_assert_eq(dirty_bitmap_count(s.bitmap), 2 * 4096);
    cr_assert(dirty_bitmap_get(s.bitmap, 8192) && dirty_bitmap_get(s.bitmap, 65536));
    cr_assert_eq(mirror_top_guest_writes(s.filter, &in_flight), 2,
                 "a write and a write-zeroes went in");
    cr_assert_eq(in_flight, 0, "and came out");

    /* in use already: refused, nothing changes */
    run_co(insert_co, &s);
    cr_assert_lt(s.ret, 0);
    cr_assert(strstr(s.err, "already in use"), "%s", s.err);
    cr_assert_eq(blk_node(s.user), s.filter);

    remove_to = s.src;
    run_co(remove_co, &s);
    cr_assert_eq(s.ret, 0, "%s", s.err);
    cr_assert_eq(blk_node(s.user), s.src, "back on the source");
    cr_assert_eq(s.src->refcnt, 2, "the monitor's and the user's");
    mirror_top_set_bitmap(s.filter, NULL);
    run_co(unref_filter_co, &s);
    dirty_bitmap_free(s.bitmap);
}

Test(mirror_top, pivot_moves_the_users_to_another_node)
{
    global_lock_assert_held();
    Shape s;
    shape_open(&s);
    run_co(insert_co, &s);
    cr_assert_eq(s.ret, 0, "%s", s.err);

    /* a writer on the pivot target that does not share write: refused */
    BlockBackend *w = test_backend_on("holder", s.other, RW,
                                      BLK_PERM_ALL & ~BLK_PERM_WRITE);
    remove_to = s.other;
    run_co(remove_co, &s);
    cr_assert_lt(s.ret, 0);
    cr_assert_eq(blk_node(s.user), s.filter, "nothing changed");
    bdrv_graph_rdlock_main_loop();
    cr_assert_eq(s.filter->file->node, s.src);
    bdrv_graph_rdunlock_main_loop();
    run_co(unref_blk_co, w);

    run_co(remove_co, &s);
    cr_assert_eq(s.ret, 0, "%s", s.err);
    cr_assert_eq(blk_node(s.user), s.other, "pivoted");
    bdrv_graph_rdlock_main_loop();
    cr_assert_null(s.src->parents, "the source has no users left");
    bdrv_graph_rdunlock_main_loop();
    mirror_top_set_bitmap(s.filter, NULL);
    run_co(unref_filter_co, &s);
    dirty_bitmap_free(s.bitmap);
}
