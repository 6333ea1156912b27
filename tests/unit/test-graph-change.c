/*
 * test-graph-change.c — live graph changes (graph-change.c): an overlay
 * appended under a backend with I/O in flight, the refusals, backing edges
 * set, replaced and removed, and complete rollback on a permission
 * conflict.
 *
 * The overlays are "cow" nodes, a small copy-on-write format defined here:
 * 4 KiB blocks written in this layer live in its file, the others come from
 * its backing (zeroes without one).  Its file edge passes its parents'
 * permissions through (the default for a DATA child), so a permission
 * conflict can appear below the overlay once a writer moves onto it.
 *
 * Requests are held on command in a "hold" filter; the tests wait on flags
 * the coroutines set, never on time.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "fake-drivers.h"
#include "graph-internal.h"
#include "loop/loop.h"

#define RW (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)
#define COW_BLOCK 4096

/* ================= the "cow" test format ================= */

typedef struct CowState {
    _Atomic unsigned char *written;    /* per block: in this layer */
    int64_t nblocks;
} CowState;

static const BlockOptionDesc cow_options[] = {
    { "file", OPT_CHILD, true, NULL, "where blocks written here live" },
    { "backing", OPT_CHILD_OR_NULL, false, NULL, "where the others come from" },
    { NULL },
};

/* open — GS, main only, nothing in flight. */
static int coroutine_fn cow_open(BlockNode *bs, json_t *opts, Error **errp) GS
{
    CowState *s = bs->opaque;
    Error *err = NULL;

    if (!bdrv_co_open_child(bs, opts, "file", BDRV_CHILD_DATA | BDRV_CHILD_PRIMARY,
                            false, errp)) {
        return -EINVAL;
    }
    if (!bdrv_co_open_child(bs, opts, "backing", BDRV_CHILD_COW, true, &err) && err) {
        error_propagate(errp, err);
        return -EINVAL;
    }
    bdrv_graph_rdlock_main_loop();
    int64_t len = bdrv_getlength(bs->file->node);
    bdrv_graph_rdunlock_main_loop();
    atomic_store(&bs->length, len);
    s->nblocks = DIV_ROUND_UP(len, COW_BLOCK);
    s->written = calloc(s->nblocks, 1);
    return 0;
}

/* close — GS, main only, drained. */
static void coroutine_fn cow_close(BlockNode *bs) GS
{
    CowState *s = bs->opaque;
    free((void *)s->written);
}

/* refresh_limits — GS, nothing in flight: whole blocks only (io.c does
 * the read-modify-write). */
static void cow_refresh_limits(BlockNode *bs) GS
{
    bs->bl.request_alignment = COW_BLOCK;
}

/* I/O — graph read lock, any thread. */
static int coroutine_fn cow_read_block(BlockNode *bs, int64_t off, int64_t n,
                                       IOVector *qiov, size_t qoff) GRAPH_RDLOCK
{
    CowState *s = bs->opaque;
    if (atomic_load(&s->written[off / COW_BLOCK])) {
        return bdrv_co_preadv(bs->file, off, n, qiov, qoff, 0);
    }
    if (bs->backing && off + n <= bdrv_getlength(bs->backing->node)) {
        return bdrv_co_preadv(bs->backing, off, n, qiov, qoff, 0);
    }
    iov_memset(qiov, qoff, 0, n);
    return 0;
}

static int coroutine_fn cow_preadv(BlockNode *bs, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qoff,
                                   BdrvRequestFlags flags) GRAPH_RDLOCK
{
    for (int64_t done = 0; done < bytes; ) {
        int64_t n = MIN(bytes - done, COW_BLOCK - (offset + done) % COW_BLOCK);
        int ret = cow_read_block(bs, offset + done, n, qiov, qoff + done);
        if (ret < 0) {
            return ret;
        }
        done += n;
    }
    return 0;
}

static int coroutine_fn cow_pwritev(BlockNode *bs, int64_t offset, int64_t bytes,
                                    IOVector *qiov, size_t qoff,
                                    BdrvRequestFlags flags) GRAPH_RDLOCK
{
    CowState *s = bs->opaque;
    int ret = bdrv_co_pwritev(bs->file, offset, bytes, qiov, qoff, flags);
    for (int64_t b = offset / COW_BLOCK; ret == 0 && b * COW_BLOCK < offset + bytes; b++) {
        atomic_store(&s->written[b], 1);
    }
    return ret;
}

/* Flush: the core recurses into the children. */
static int coroutine_fn cow_flush(BlockNode *bs) GRAPH_RDLOCK
{
    return 0;
}

static const BlockDriver cow_driver = {
    .format_name = "cow",
    .instance_size = sizeof(CowState),
    .is_format = true,
    .options = cow_options,
    .open = cow_open,
    .close = cow_close,
    .refresh_limits = cow_refresh_limits,
    .co_preadv = cow_preadv,
    .co_pwritev = cow_pwritev,
    .co_flush = cow_flush,
};

static void change_init(void) ACQUIRE(global_lock)
{
    test_env_init();
    bdrv_register(&cow_driver);
}

TestSuite(graph_change, .init = change_init, .timeout = 20);

/* ================= helpers ================= */

/* The in-flight requests (test-util.h) are one cow block each. */
_Static_assert(sizeof(((TestAsyncReq *)0)->buf) == COW_BLOCK,
               "TestAsyncReq moves one cow block");

static BlockNode *backing_of(BlockNode *bs) GS
{
    bdrv_graph_rdlock_main_loop();
    BlockNode *b = bs->backing ? bs->backing->node : NULL;
    bdrv_graph_rdunlock_main_loop();
    return b;
}

static int count_parents(BlockNode *bs) GS
{
    int n = 0;
    bdrv_graph_rdlock_main_loop();
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        n++;
    }
    bdrv_graph_rdunlock_main_loop();
    return n;
}

/* One GS graph change in its own coroutine; `done` when it returns. */
typedef struct Change {
    BlockNode *a, *b;           /* overlay, top — or bs, backing */
    bool set_backing;
    int ret;
    char err[512];
    _Atomic bool done;
} Change;

static void coroutine_fn change_entry(void *opaque)
{
    global_lock_assert_held();
    Change *ch = opaque;
    Error *err = NULL;
    ch->ret = ch->set_backing ? bdrv_co_set_backing(ch->a, ch->b, &err)
                              : bdrv_co_append_overlay(ch->a, ch->b, &err);
    snprintf(ch->err, sizeof(ch->err), "%s", err ? error_get_pretty(err) : "");
    error_free(err);
    atomic_store(&ch->done, true);
}

static void change_start(Change *ch, BlockNode *a, BlockNode *b, bool set_backing)
{
    memset(ch, 0, sizeof(*ch));
    ch->a = a;
    ch->b = b;
    ch->set_backing = set_backing;
    co_spawn(change_entry, ch);     /* returns when the change waits */
}

/* Runs a change to its end; returns its result, message in ch->err. */
static int change_now(Change *ch, BlockNode *a, BlockNode *b, bool set_backing)
{
    change_start(ch, a, b, set_backing);
    wait_flag(&ch->done);
    return ch->ret;
}

/* Reads one byte through blk (a whole block, aligned). */
static uint8_t read_byte(BlockBackend *blk, int64_t offset)
{
    static uint8_t buf[COW_BLOCK];
    TestReq r = { .kind = REQ_READ, .blk = blk, .off = offset, .len = COW_BLOCK,
                  .buf = buf };
    run_co(test_req_co, &r);
    cr_assert_eq(r.ret, 0, "read at %lld: %d", (long long)offset, r.ret);
    return buf[0];
}

static int write_byte(BlockBackend *blk, int64_t offset, uint8_t byte)
{
    static uint8_t buf[COW_BLOCK];
    memset(buf, byte, sizeof(buf));
    TestReq r = { .kind = REQ_WRITE, .blk = blk, .off = offset, .len = COW_BLOCK,
                  .buf = buf };
    run_co(test_req_co, &r);
    return r.ret;
}

/* ================= blockdev-snapshot ================= */

/*
 * export e0 -> hold h0 -> mem m0, a write held in h0.  Appending cow "ov"
 * waits for it; a write issued meanwhile is held at the backend and, once
 * the change commits, lands in the overlay.  An unrelated chain runs on.
 */
Test(graph_change, append_under_backend_with_io_in_flight)
{
    global_lock_assert_held();
    BlockNode *m0 = test_open_node("driver=mem,node-name=m0,size=1M");
    BlockNode *h0 = test_open_node("driver=hold,node-name=h0,file=m0");
    BlockNode *mo = test_open_node("driver=mem,node-name=mo,size=1M");
    BlockNode *ov = test_open_node("driver=cow,node-name=ov,file=mo");
    BlockBackend *e0 = test_backend_on("e0", h0, RW, BLK_PERM_ALL);
    BlockNode *other = test_open_node("driver=mem,node-name=other,size=1M");
    BlockBackend *e1 = test_backend_on("e1", other, RW, BLK_PERM_ALL);

    hold_set_enabled(h0, true);
    TestAsyncReq before;
    test_async_write_start(&before, e0, 0, 0xaa);
    cr_assert_eq(hold_held(h0), 1);

    Change ch;
    change_start(&ch, ov, h0, false);
    cr_assert_not(ch.done, "the change waits for the request in flight");

    TestAsyncReq during;
    test_async_write_start(&during, e0, COW_BLOCK, 0xbb);
    cr_assert_eq(hold_held(h0), 1, "the new request is held at the backend");
    cr_assert_eq(write_byte(e1, 0, 0x11), 0, "an unrelated chain runs on");

    hold_set_enabled(h0, false);
    hold_release_all(h0);
    wait_flag(&ch.done);
    cr_assert_eq(ch.ret, 0, "%s", ch.err);
    wait_flag(&during.done);
    cr_assert(before.done);
    cr_assert_eq(before.ret, 0);
    cr_assert_eq(during.ret, 0);

    cr_assert_eq(mem_data(m0)[0], 0xaa, "the request in flight reached the old top");
    cr_assert_eq(mem_data(m0)[COW_BLOCK], 0, "the later one did not");
    cr_assert_eq(mem_data(mo)[COW_BLOCK], 0xbb, "it went to the overlay");
    cr_assert_eq(blk_node(e0), ov);
    cr_assert_eq(backing_of(ov), h0);
    cr_assert_eq(count_parents(h0), 1, "the backing edge is h0's only parent");
    cr_assert_eq(read_byte(e0, 0), 0xaa, "the old content shows through");
    cr_assert_eq(read_byte(e0, COW_BLOCK), 0xbb);
    cr_assert_eq(m0->open_perm & BLK_PERM_WRITE, 0, "the old top is read only now");
    cr_assert(mo->open_perm & BLK_PERM_WRITE);
    cr_assert_eq(atomic_load(&h0->quiesce_counter), 0);
    cr_assert_eq(atomic_load(&ov->quiesce_counter), 0);
}

/*
 * A section opened below the top before the append (here on m0, under h0)
 * covers the new shape too: the export stays held until that section ends,
 * then everything is released and every counter is back to zero.
 */
Test(graph_change, section_below_the_top_carries_over)
{
    global_lock_assert_held();
    BlockNode *m0 = test_open_node("driver=mem,node-name=m0,size=1M");
    BlockNode *h0 = test_open_node("driver=hold,node-name=h0,file=m0");
    BlockNode *ov = test_open_node("driver=cow,node-name=ov,file.driver=mem,"
                                   "file.node-name=mo,file.size=1M");
    BlockBackend *e0 = test_backend_on("e0", h0, RW, BLK_PERM_ALL);
    test_quiesce_begin_now(m0);

    TestAsyncReq held;
    test_async_write_start(&held, e0, 0, 0xcc);
    Change ch;
    cr_assert_eq(change_now(&ch, ov, h0, false), 0, "%s", ch.err);
    cr_assert_eq(blk_node(e0), ov);
    cr_assert_gt(atomic_load(&ov->quiesce_counter), 0, "m0's section reaches ov");
    loop_iterate(loop_main(), false);
    cr_assert_not(held.done, "the export is held while m0's section lasts");

    bdrv_quiesce_end(m0);
    wait_flag(&held.done);
    cr_assert_eq(held.ret, 0);
    cr_assert_eq(mem_data(bdrv_find_node("mo"))[0], 0xcc);
    cr_assert_eq(atomic_load(&m0->quiesce_counter), 0);
    cr_assert_eq(atomic_load(&h0->quiesce_counter), 0);
    cr_assert_eq(atomic_load(&ov->quiesce_counter), 0);
    cr_assert_eq(write_byte(e0, COW_BLOCK, 0xdd), 0, "the export runs freely");
}

/* A node parent of the top (a filter) moves onto the overlay too. */
Test(graph_change, node_parents_move_to_the_overlay)
{
    global_lock_assert_held();
    BlockNode *t = test_open_node("driver=cow,node-name=t,file.driver=mem,"
                                  "file.node-name=mt,file.size=1M");
    BlockNode *f = test_open_node("driver=hold,node-name=f,file=t");
    BlockNode *ov = test_open_node("driver=cow,node-name=ov,file.driver=mem,"
                                   "file.node-name=mo,file.size=1M");
    BlockBackend *e0 = test_backend_on("e0", f, RW, BLK_PERM_ALL);
    Change ch;

    cr_assert_eq(change_now(&ch, ov, t, false), 0, "%s", ch.err);
    bdrv_graph_rdlock_main_loop();
    BlockNode *below_f = f->file->node;
    bdrv_graph_rdunlock_main_loop();
    cr_assert_eq(below_f, ov);
    cr_assert_eq(blk_node(e0), f);
    cr_assert_eq(write_byte(e0, 0, 0x42), 0);
    cr_assert_eq(mem_data(bdrv_find_node("mo"))[0], 0x42);
    cr_assert_eq(mem_data(bdrv_find_node("mt"))[0], 0);
    cr_assert_eq(t->refcnt, 2, "the monitor's and the backing edge's");
    cr_assert_eq(ov->refcnt, 2, "the monitor's and f's edge's");
}

/* The graph of the refusal tests: e0 -> cow t -> mem mt. */
typedef struct Top {
    BlockNode *t, *mt;
    BlockBackend *e0;
} Top;

static void top_open(Top *x) GS
{
    x->mt = test_open_node("driver=mem,node-name=mt,size=1M");
    x->t = test_open_node("driver=cow,node-name=t,file=mt");
    x->e0 = test_backend_on("e0", x->t, RW, BLK_PERM_ALL);
}

static void assert_top_unchanged(Top *x) GS
{
    cr_assert_eq(blk_node(x->e0), x->t);
    cr_assert_eq(count_parents(x->t), 1);
    cr_assert_null(backing_of(x->t));
    cr_assert(x->mt->open_perm & BLK_PERM_WRITE);
    cr_assert_eq(write_byte(x->e0, 0, 0x5a), 0);
    cr_assert_eq(mem_data(x->mt)[0], 0x5a, "writes still go to the old top");
    cr_assert_eq(atomic_load(&x->t->quiesce_counter), 0);
}

static void expect_append_error(BlockNode *ov, BlockNode *top, const char *msg)
{
    Change ch;
    cr_assert_lt(change_now(&ch, ov, top, false), 0);
    cr_assert_str_eq(ch.err, msg);
}

Test(graph_change, append_refusals)
{
    global_lock_assert_held();
    Top x;
    top_open(&x);

    BlockNode *b = test_open_node("driver=mem,node-name=b,size=1M");
    BlockNode *ovb = test_open_node("driver=cow,node-name=ovb,file.driver=mem,"
                                    "file.size=1M,backing=b");
    expect_append_error(ovb, x.t, "The overlay already has a backing image");
    cr_assert_eq(backing_of(ovb), b);

    BlockNode *ovu = test_open_node("driver=cow,node-name=ovu,"
                                    "file.driver=mem,file.size=1M");
    BlockBackend *user = test_backend_on("user", ovu, BLK_PERM_CONSISTENT_READ,
                                         BLK_PERM_ALL);
    expect_append_error(ovu, x.t, "The overlay is already in use");
    cr_assert_eq(blk_node(user), ovu);

    BlockNode *mem = test_open_node("driver=mem,node-name=plain,size=1M");
    expect_append_error(mem, x.t, "The overlay does not support backing images");

    expect_append_error(x.t, x.t, "The overlay is already in use");
    BlockNode *lone = test_open_node("driver=cow,node-name=lone,"
                                     "file.driver=mem,file.size=1M");
    expect_append_error(lone, lone,
                        "Making 'lone' a backing child of 'lone' would create a cycle");
    /* an overlay whose file is the top itself */
    BlockNode *loop = test_open_node("driver=cow,node-name=loop,file=mt");
    expect_append_error(loop, x.mt,
                        "Making 'mt' a backing child of 'loop' would create a cycle");
    assert_top_unchanged(&x);
    cr_assert_eq(count_parents(loop), 0);
}

/*
 * The overlay's file is also used by "reader", which does not share write.
 * Before the append nobody writes through the overlay; after it the export
 * would: the permission check of the new shape refuses, and everything —
 * edges, perms, sections — is as before.
 */
Test(graph_change, append_rolls_back_on_permission_conflict)
{
    global_lock_assert_held();
    Top x;
    top_open(&x);
    BlockNode *mo = test_open_node("driver=mem,node-name=mo,size=1M");
    BlockNode *ov = test_open_node("driver=cow,node-name=ov,file=mo");
    BlockBackend *reader = test_backend_on("reader", mo, BLK_PERM_CONSISTENT_READ,
                                           BLK_PERM_CONSISTENT_READ);
    int mo_perm = mo->open_perm, mt_perm = x.mt->open_perm;

    Change ch;
    cr_assert_lt(change_now(&ch, ov, x.t, false), 0);
    cr_assert(strstr(ch.err, "export 'reader'") && strstr(ch.err, "write"),
              "message: %s", ch.err);
    assert_top_unchanged(&x);
    cr_assert_eq(count_parents(ov), 0);
    cr_assert_null(backing_of(ov));
    cr_assert_eq(mo->open_perm, mo_perm);
    cr_assert_eq(x.mt->open_perm, mt_perm);
    cr_assert_eq(blk_node(reader), mo);
    cr_assert_eq(atomic_load(&ov->quiesce_counter), 0);
}

/* A transaction's undo: append and remove inside one section. */
static void coroutine_fn append_then_remove_entry(void *opaque)
{
    global_lock_assert_held();
    Top *x = opaque;
    BlockNode *ov = bdrv_find_node("ov");
    Error *err = NULL;
    bdrv_ref(x->t);
    bdrv_ref(ov);
    bdrv_co_quiesce_begin(x->t);
    bdrv_co_quiesce_begin(ov);
    bdrv_graph_wrlock();
    cr_assert_eq(bdrv_append_overlay_locked(ov, x->t, &err), 0);
    bdrv_remove_overlay_locked(ov, x->t);
    bdrv_graph_wrunlock();
    bdrv_quiesce_end(ov);
    bdrv_quiesce_end(x->t);
    bdrv_co_unref(ov);
    bdrv_co_unref(x->t);
}

Test(graph_change, remove_overlay_restores_the_shape)
{
    global_lock_assert_held();
    Top x;
    top_open(&x);
    BlockNode *ov = test_open_node("driver=cow,node-name=ov,file.driver=mem,"
                                   "file.node-name=mo,file.size=1M");
    run_co(append_then_remove_entry, &x);
    assert_top_unchanged(&x);
    cr_assert_eq(count_parents(ov), 0);
    cr_assert_null(backing_of(ov));
    cr_assert_eq(ov->refcnt, 1);
    cr_assert_eq(x.t->refcnt, 2, "the monitor's and the backend's");
    cr_assert_eq(bdrv_find_node("mo")->open_perm & BLK_PERM_WRITE, 0);
}

/* ================= backing edges ================= */

Test(graph_change, set_backing_replace_and_remove)
{
    global_lock_assert_held();
    BlockNode *b1 = test_open_node("driver=mem,node-name=b1,size=1M");
    BlockNode *b2 = test_open_node("driver=mem,node-name=b2,size=1M");
    mem_data(b1)[0] = 0x01;
    mem_data(b2)[0] = 0x02;
    BlockNode *c = test_open_node("driver=cow,node-name=c,file.driver=mem,file.size=1M");
    BlockBackend *e0 = test_backend_on("e0", c, RW, BLK_PERM_ALL);
    Change ch;

    cr_assert_eq(read_byte(e0, 0), 0);
    cr_assert_eq(change_now(&ch, c, b1, true), 0, "%s", ch.err);
    cr_assert_eq(backing_of(c), b1);
    cr_assert_eq(read_byte(e0, 0), 0x01);
    cr_assert(b1->open_perm & BLK_PERM_CONSISTENT_READ);
    cr_assert_eq(b1->refcnt, 2);

    cr_assert_eq(change_now(&ch, c, b2, true), 0, "%s", ch.err);
    cr_assert_eq(backing_of(c), b2);
    cr_assert_eq(read_byte(e0, 0), 0x02);
    cr_assert_eq(count_parents(b1), 0);
    cr_assert_eq(b1->open_perm, 0, "the old backing gave its perms up");
    cr_assert_eq(b1->refcnt, 1);

    cr_assert_eq(change_now(&ch, c, NULL, true), 0, "%s", ch.err);
    cr_assert_null(backing_of(c));
    cr_assert_eq(read_byte(e0, 0), 0);
    cr_assert_eq(count_parents(b2), 0);
    cr_assert_eq(b2->refcnt, 1);
    cr_assert_eq(change_now(&ch, c, NULL, true), 0, "no backing to remove is fine");
    cr_assert_eq(atomic_load(&c->quiesce_counter), 0);
}

/* A read of the backing held in flight (in hold node hb) completes from
 * the old backing; a read issued during the change waits at the export and
 * then reads the new one. */
Test(graph_change, set_backing_with_a_read_in_flight)
{
    global_lock_assert_held();
    BlockNode *b1 = test_open_node("driver=mem,node-name=b1,size=1M");
    BlockNode *hb = test_open_node("driver=hold,node-name=hb,file=b1");
    BlockNode *b2 = test_open_node("driver=mem,node-name=b2,size=1M");
    mem_data(b1)[0] = 0x01;
    mem_data(b2)[0] = 0x02;
    BlockNode *c = test_open_node("driver=cow,node-name=c,file.driver=mem,"
                                  "file.size=1M,backing=hb");
    BlockBackend *e0 = test_backend_on("e0", c, RW, BLK_PERM_ALL);

    hold_set_enabled(hb, true);
    TestAsyncReq before;
    test_async_read_start(&before, e0, 0);
    cr_assert_eq(hold_held(hb), 1);
    Change ch;
    change_start(&ch, c, b2, true);
    cr_assert_not(ch.done, "the change waits for the read in the old backing");
    TestAsyncReq during;
    test_async_read_start(&during, e0, 0);
    cr_assert_not(during.done);
    cr_assert_eq(hold_held(hb), 1, "the new read waits at the export");

    hold_set_enabled(hb, false);
    hold_release_all(hb);
    wait_flag(&ch.done);
    cr_assert_eq(ch.ret, 0, "%s", ch.err);
    wait_flag(&during.done);
    cr_assert(before.done);
    cr_assert_eq(before.ret, 0);
    cr_assert_eq(before.buf[0], 0x01, "the read in flight finished on the old backing");
    cr_assert_eq(during.ret, 0);
    cr_assert_eq(during.buf[0], 0x02, "the later read saw the new backing");
    cr_assert_eq(count_parents(hb), 0);
    cr_assert_eq(hb->refcnt, 1);
}

Test(graph_change, set_backing_refusals)
{
    global_lock_assert_held();
    BlockNode *c1 = test_open_node("driver=cow,node-name=c1,"
                                   "file.driver=mem,file.size=1M");
    BlockNode *c2 = test_open_node("driver=cow,node-name=c2,file.driver=mem,"
                                   "file.size=1M,backing=c1");
    BlockNode *m = test_open_node("driver=mem,node-name=m,size=1M");
    Change ch;

    cr_assert_lt(change_now(&ch, c1, c2, true), 0);
    cr_assert_str_eq(ch.err, "Making 'c2' a backing child of 'c1' would create a cycle");
    cr_assert_lt(change_now(&ch, c1, c1, true), 0);
    cr_assert_str_eq(ch.err, "Making 'c1' a backing child of 'c1' would create a cycle");
    cr_assert_lt(change_now(&ch, m, c1, true), 0);
    cr_assert_str_eq(ch.err, "Driver 'mem' of node 'm' does not support backing files");
    cr_assert_null(backing_of(c1));
    cr_assert_eq(backing_of(c2), c1);
    cr_assert_eq(count_parents(c2), 0);
}

/* The new backing is used by a backend that shares nothing: the backing
 * edge's consistent read conflicts and the old backing stays. */
Test(graph_change, set_backing_rolls_back_on_permission_conflict)
{
    global_lock_assert_held();
    BlockNode *b1 = test_open_node("driver=mem,node-name=b1,size=1M");
    BlockNode *b2 = test_open_node("driver=mem,node-name=b2,size=1M");
    BlockBackend *greedy = test_backend_on("greedy", b2, RW, 0);
    BlockNode *c = test_open_node("driver=cow,node-name=c,file.driver=mem,"
                                  "file.size=1M,backing=b1");
    BlockNode *c0 = test_open_node("driver=cow,node-name=c0,"
                                   "file.driver=mem,file.size=1M");
    Change ch;

    cr_assert_lt(change_now(&ch, c, b2, true), 0);
    cr_assert(strstr(ch.err, "export 'greedy'"), "message: %s", ch.err);
    cr_assert_eq(backing_of(c), b1);
    cr_assert_eq(count_parents(b2), 1);
    cr_assert_eq(b2->refcnt, 2);

    cr_assert_lt(change_now(&ch, c0, b2, true), 0, "adding one is checked too");
    cr_assert_null(backing_of(c0));
    cr_assert_eq(count_parents(b2), 1);
    cr_assert_eq(blk_node(greedy), b2);
    cr_assert_eq(atomic_load(&c->quiesce_counter), 0);
    cr_assert_eq(atomic_load(&b2->quiesce_counter), 0);
}
