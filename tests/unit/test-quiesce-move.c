/*
 * test-quiesce-move.c — a parent edge that moves onto a node (or is linked
 * to it) inside quiesced sections takes exactly the sections that reach it
 * through that node (graph.c, quiesce.c).
 *
 * The trap is a barrier filter (throttle): a section begun below it raises
 * its quiesce_counter but never reaches its parents, so it never ends
 * there either.  An edge moved onto a throttle held that way must not be
 * counted in that section, or it stays quiesced for good once every
 * section has ended (the FUSE export above hung).  Each test ends all its
 * sections and checks that no edge is left quiesced and that the backend
 * serves a request again.
 *
 * Shapes: mem M under throttle T (a group without limits), mem X (and X2)
 * beside it, backends and hold filters on top.  No I/O is in flight while
 * the sections begin, so their order does not matter to the waits.
 */
#include <criterion/criterion.h>
#include <string.h>
#include "fake-drivers.h"
#include "filters/throttle.h"
#include "graph-internal.h"
#include "jobs/mirror.h"

#define RW (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)

static void move_init(void) ACQUIRE(global_lock)
{
    test_env_init();
    Error *err = NULL;
    json_t *limits = json_loads("{\"iops-total\": 1000000}", 0, NULL);
    cr_assert_eq(throttle_group_create("g", limits, &err), 0, "%s",
                 err ? error_get_pretty(err) : "");
    json_decref(limits);
}

TestSuite(quiesce_move, .init = move_init, .timeout = 20);

/* ---- helpers (GS, main thread) ---- */

/* The root edge of blk (its parent is not a node). */
static BlockChild *root_edge(BlockBackend *blk) GS
{
    BlockChild *edge = NULL;
    bdrv_graph_rdlock_main_loop();
    for (BlockChild *c = blk_node(blk)->parents; c; c = c->next_parent) {
        if (!c->parent_node && blk_of_child(c) == blk) {
            edge = c;
        }
    }
    bdrv_graph_rdunlock_main_loop();
    cr_assert_not_null(edge);
    return edge;
}

static int sections(BlockNode *bs)
{
    return atomic_load(&bs->quiesce_counter);
}

/* A write through blk completes at once: blk is not quiesced. */
static void assert_serves(BlockBackend *blk, int64_t off, uint8_t byte) GS
{
    TestAsyncReq r;
    test_async_write_start(&r, blk, off, byte);
    cr_assert(r.done, "backend '%s' still holds its requests", blk_name(blk));
    cr_assert_eq(r.ret, 0);
}

static void coroutine_fn unref_co(void *bs)
{
    global_lock_assert_held();
    bdrv_co_unref(bs);
}

/* Re-checks the permissions of the nodes a test moved edges between. */
static void refresh_perms(BlockNode *a, BlockNode *b) GRAPH_WRLOCK GS
{
    BlockNode *nodes[] = { a, b };
    Error *err = NULL;
    cr_assert_eq(perm_refresh_nodes(nodes, 2, &err), 0, "%s",
                 err ? error_get_pretty(err) : "");
}

typedef struct Shape {
    BlockNode *m, *t, *x;
} Shape;

/* M under throttle T, and X beside them. */
static void shape_open(Shape *s) GS
{
    s->m = test_open_node("driver=mem,node-name=m,size=1M");
    s->t = test_open_node("driver=throttle,node-name=t,throttle-group=g,file=m");
    s->x = test_open_node("driver=mem,node-name=x,size=1M");
}

/*
 * A backend moves from X onto T while a section of M (below the barrier)
 * is open: it is in T's own section only, and free when the sections end,
 * in either order.
 */
static void backend_moved_onto_held_barrier(bool below_ends_first) GS
{
    Shape s;
    shape_open(&s);
    BlockBackend *e = test_backend_on("e", s.x, RW, BLK_PERM_ALL);
    BlockChild *edge = root_edge(e);

    test_quiesce_begin_now(s.t);
    test_quiesce_begin_now(s.m);
    test_quiesce_begin_now(s.x);
    cr_assert_eq(sections(s.t), 2, "its own and the one from below");
    cr_assert_eq(edge->parent_quiesced, 1);

    bdrv_graph_wrlock();
    bdrv_move_parent_noperm(edge, s.t);
    refresh_perms(s.t, s.x);
    bdrv_graph_wrunlock();
    cr_assert_eq(blk_node(e), s.t);
    cr_assert_eq(edge->parent_quiesced, 1,
                 "in T's own section, not in the one stopped below it");

    bdrv_quiesce_end(s.x);
    if (below_ends_first) {
        bdrv_quiesce_end(s.m);
        cr_assert_eq(edge->parent_quiesced, 1, "T's own section is still open");
        bdrv_quiesce_end(s.t);
    } else {
        bdrv_quiesce_end(s.t);
        cr_assert_eq(edge->parent_quiesced, 0);
        bdrv_quiesce_end(s.m);
    }
    cr_assert_eq(edge->parent_quiesced, 0, "the moved edge stayed quiesced");
    cr_assert_eq(sections(s.t), 0);
    assert_serves(e, 0, 0x11);
    cr_assert_eq(mem_data(s.m)[0], 0x11);
}

Test(quiesce_move, backend_onto_held_barrier_below_ends_first)
{
    global_lock_assert_held();
    backend_moved_onto_held_barrier(true);
}

Test(quiesce_move, backend_onto_held_barrier_own_ends_first)
{
    global_lock_assert_held();
    backend_moved_onto_held_barrier(false);
}

/*
 * The other way: a backend moves off T, held from below, onto X.  It
 * leaves T's own section and takes X's; the section below T stays T's.
 */
Test(quiesce_move, backend_off_held_barrier)
{
    global_lock_assert_held();
    Shape s;
    shape_open(&s);
    BlockBackend *e = test_backend_on("e", s.t, RW, BLK_PERM_ALL);
    BlockChild *edge = root_edge(e);

    test_quiesce_begin_now(s.t);
    test_quiesce_begin_now(s.m);
    test_quiesce_begin_now(s.x);
    cr_assert_eq(edge->parent_quiesced, 1, "T's own section only");

    bdrv_graph_wrlock();
    bdrv_move_parent_noperm(edge, s.x);
    refresh_perms(s.x, s.t);
    bdrv_graph_wrunlock();
    cr_assert_eq(edge->parent_quiesced, 1, "X's section");
    cr_assert_eq(sections(s.t), 2);

    bdrv_quiesce_end(s.m);
    bdrv_quiesce_end(s.t);
    cr_assert_eq(edge->parent_quiesced, 1);
    bdrv_quiesce_end(s.x);
    cr_assert_eq(edge->parent_quiesced, 0);
    cr_assert_eq(sections(s.t), 0);
    assert_serves(e, 0, 0x22);
    cr_assert_eq(mem_data(s.x)[0], 0x22);
}

/*
 * A node parent: hold filter H over X, backend on H; H's file edge is
 * replaced by one to T (bdrv_replace_child_node) while M's section is
 * open and T's own one too: H is in T's own section only.
 */
Test(quiesce_move, node_parent_replaced_onto_held_barrier)
{
    global_lock_assert_held();
    Shape s;
    shape_open(&s);
    BlockNode *h = test_open_node("driver=hold,node-name=h,file=x");
    BlockBackend *e = test_backend_on("e", h, RW, BLK_PERM_ALL);
    BlockChild *edge = root_edge(e);

    test_quiesce_begin_now(s.t);
    test_quiesce_begin_now(s.m);
    test_quiesce_begin_now(s.x);
    cr_assert_eq(sections(s.t), 2, "its own and the one from below");
    cr_assert_eq(sections(h), 1);

    Error *err = NULL;
    bdrv_ref(s.x);
    bdrv_graph_wrlock();
    cr_assert_eq(bdrv_replace_child_node(h->file, s.t, &err), 0, "%s",
                 err ? error_get_pretty(err) : "");
    int h_file_sections = h->file->parent_quiesced;
    bdrv_graph_wrunlock();
    cr_assert_eq(h_file_sections, 1,
                 "the section below T does not reach T's parents");
    cr_assert_eq(sections(h), 1);
    cr_assert_eq(edge->parent_quiesced, 1);

    bdrv_quiesce_end(s.x);
    bdrv_quiesce_end(s.m);
    cr_assert_eq(edge->parent_quiesced, 1);
    bdrv_quiesce_end(s.t);
    cr_assert_eq(edge->parent_quiesced, 0, "the backend stayed quiesced");
    cr_assert_eq(sections(s.t), 0);
    cr_assert_eq(sections(h), 0);
    assert_serves(e, 4096, 0x33);
    cr_assert_eq(mem_data(s.m)[4096], 0x33);
    run_co(unref_co, s.x);
}

/*
 * Below a barrier, the other way: T's own file edge moves from M to X2
 * while sections of both are open; T stays held exactly as long as some
 * section below it is, and never reaches the backend above.
 */
Test(quiesce_move, barrier_child_edge_moves_between_held_nodes)
{
    global_lock_assert_held();
    Shape s;
    shape_open(&s);
    BlockBackend *e = test_backend_on("e", s.t, RW, BLK_PERM_ALL);
    BlockChild *edge = root_edge(e);

    test_quiesce_begin_now(s.m);
    test_quiesce_begin_now(s.x);
    test_quiesce_begin_now(s.x);    /* two sections on X */
    cr_assert_eq(sections(s.t), 1);

    Error *err = NULL;
    bdrv_ref(s.m);
    bdrv_graph_wrlock();
    cr_assert_eq(bdrv_replace_child_node(s.t->file, s.x, &err), 0, "%s",
                 err ? error_get_pretty(err) : "");
    bdrv_graph_wrunlock();
    cr_assert_eq(sections(s.t), 2, "held by X's two sections now");
    cr_assert_eq(edge->parent_quiesced, 0);

    bdrv_quiesce_end(s.m);
    bdrv_quiesce_end(s.x);
    cr_assert_eq(sections(s.t), 1);
    bdrv_quiesce_end(s.x);
    cr_assert_eq(sections(s.t), 0);
    cr_assert_eq(edge->parent_quiesced, 0);
    assert_serves(e, 0, 0x44);
    cr_assert_eq(mem_data(s.x)[0], 0x44);
    run_co(unref_co, s.m);
}

/*
 * The mirror's pivot with replaces: mirror-top F above T; the source T,
 * F and M (the node to replace, below the barrier) are quiesced, then F
 * leaves and its parents move to T.  The export must be free afterwards.
 */
typedef struct Pivot {
    Shape s;
    BlockNode *f;
    int ret;
    char err[512];
} Pivot;

static void coroutine_fn pivot_open_co(void *opaque)
{
    global_lock_assert_held();
    Pivot *p = opaque;
    Error *err = NULL;
    p->f = bdrv_co_open_internal(&bdrv_mirror_top, NULL, &err);
    cr_assert_not_null(p->f, "%s", err ? error_get_pretty(err) : "");
    cr_assert_eq(bdrv_co_insert_filter(p->f, p->s.t, &err), 0, "%s",
                 err ? error_get_pretty(err) : "");
}

static void coroutine_fn pivot_remove_co(void *opaque)
{
    global_lock_assert_held();
    Pivot *p = opaque;
    Error *err = NULL;
    bdrv_ref(p->f);
    bdrv_co_quiesce_begin(p->s.t);
    bdrv_co_quiesce_begin(p->f);
    bdrv_co_quiesce_begin(p->s.m);
    bdrv_graph_wrlock();
    p->ret = bdrv_remove_filter_locked(p->f, p->s.t, &err);
    bdrv_graph_wrunlock();
    snprintf(p->err, sizeof(p->err), "%s", err ? error_get_pretty(err) : "");
    error_free(err);
    bdrv_quiesce_end(p->s.m);
    bdrv_quiesce_end(p->f);
    bdrv_quiesce_end(p->s.t);
    bdrv_co_unref(p->f);
    bdrv_co_unref(p->f);
}

Test(quiesce_move, filter_removed_onto_held_barrier)
{
    global_lock_assert_held();
    Pivot p;
    memset(&p, 0, sizeof(p));
    shape_open(&p.s);
    BlockBackend *e = test_backend_on("e", p.s.t, RW, BLK_PERM_ALL);
    run_co(pivot_open_co, &p);
    cr_assert_eq(blk_node(e), p.f);

    run_co(pivot_remove_co, &p);
    cr_assert_eq(p.ret, 0, "%s", p.err);
    cr_assert_eq(blk_node(e), p.s.t);
    cr_assert_eq(root_edge(e)->parent_quiesced, 0,
                 "the export stayed quiesced after the pivot");
    cr_assert_eq(sections(p.s.t), 0);
    assert_serves(e, 0, 0x55);
    cr_assert_eq(mem_data(p.s.m)[0], 0x55);
}
