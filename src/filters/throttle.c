/*
 * throttle.c — the `throttle` filter driver: one member of a throttle group
 * (throttle-group.c), one child "file".
 *
 *   blockdev-add driver=throttle node-name=N throttle-group=ID file=NODE
 *
 * Reads, writes, write-zeroes and discards wait for their turn in the
 * group (write-zeroes and discards count as writes of their length), then
 * go to the child.  Flush, block status and truncate pass through
 * unthrottled.  Permissions pass through like any filter's (the core's
 * default for a FILTERED child).
 *
 * Quiesce (DESIGN rule 2): the node is a barrier.  A quiesced section of a
 * node below it stops here: quiesce.c calls quiesce_barrier_begin/end
 * instead of going on to our parents, and waits only for in_flight_below —
 * the requests we have let through and that have not completed.  While such
 * a section is active the group dispatches nothing from our queues and our
 * new requests queue too; when the last one ends, dispatch resumes at the
 * group's rate.  A section of this node itself (node drain before close, a
 * graph change above us) is an ordinary one: our parents stop sending and
 * the requests we hold are released at the throttled rate until none is
 * left — never flushed past the limits, never dropped.
 *
 * Thread-safety: the state is written at open and close (GS); the I/O
 * callbacks touch only the member, which the group's lock guards.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "filters/filter-util.h"
#include "filters/throttle-int.h"

typedef struct ThrottleNodeState {
    ThrottleMember member;
} ThrottleNodeState;

static const BlockOptionDesc throttle_options[] = {
    { "file", OPT_CHILD, true, NULL, "the throttled node" },
    { "throttle-group", OPT_STRING, true, NULL,
      "the throttle group (object-add qom-type=throttle-group) whose limits apply" },
    { NULL },
};

/* ------------------------------------------------------------ open/close */

/*
 * open — lock: GS, in a coroutine on the main loop; in flight: none (not
 * reachable yet); threads: main only.  The group is checked before the
 * child is opened, so a wrong name opens nothing.
 */
static int coroutine_fn throttle_open(BlockNode *bs, json_t *options,
                                      Error **errp) GS
{
    GS_CODE();
    ThrottleNodeState *s = bs->opaque;
    const char *group = opt_str(options, "throttle-group", NULL);

    if (!group) {
        error_setg(errp, "Please specify a throttle group");
        return -EINVAL;
    }
    if (throttle_member_join(&s->member, group, errp) < 0) {
        return -EINVAL;
    }
    s->member.on_idle_below = bdrv_notify_idle;
    if (!bdrv_co_open_child(bs, options, "file",
                            BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, false, errp)) {
        throttle_member_leave(&s->member);
        return -EINVAL;
    }
    filter_inherit_from_child(bs);
    return 0;
}

/*
 * close — lock: GS; in flight: none (node drain has released the queue at
 * the throttled rate); threads: main only.  The core detaches the child.
 */
static void coroutine_fn throttle_close(BlockNode *bs) GS
{
    GS_CODE();
    ThrottleNodeState *s = bs->opaque;

    throttle_member_leave(&s->member);
}

/* ------------------------------------------------------------ quiesce */

/*
 * quiesce_barrier_begin/end — lock: GS; in flight: yes (requests queue
 * meanwhile); threads: main only.  A section below us begins / ends.
 */
static void throttle_barrier_begin(BlockNode *bs) GS
{
    GS_CODE();
    ThrottleNodeState *s = bs->opaque;

    throttle_member_hold(&s->member);
}

static void throttle_barrier_end(BlockNode *bs) GS
{
    GS_CODE();
    ThrottleNodeState *s = bs->opaque;

    throttle_member_release(&s->member);
}

/*
 * in_flight_below — lock: none (atomic read); in flight: yes; threads: any.
 */
static int throttle_in_flight_below(BlockNode *bs)
{
    ThrottleNodeState *s = bs->opaque;

    return atomic_load(&s->member.in_flight_below);
}

/* Thread-safe. */
int throttle_node_queued(BlockNode *bs)
{
    ThrottleNodeState *s = bs->opaque;

    return throttle_member_queued(&s->member);
}

/* ------------------------------------------------------------ I/O */

/* The four throttled request kinds. */
typedef enum { THR_READ, THR_WRITE, THR_ZEROES, THR_DISCARD } ThrottledKind;

typedef struct ThrottledReq {
    ThrottledKind kind;
    int64_t offset, bytes;
    IOVector *qiov;
    size_t qiov_offset;
    BdrvRequestFlags flags;
} ThrottledReq;

/* I/O: sends r to the child (it has been let through). */
static int coroutine_fn forward(BlockNode *bs, const ThrottledReq *r) GRAPH_RDLOCK
{
    BlockChild *file = bs->file;

    switch (r->kind) {
    case THR_READ:
        return bdrv_co_preadv(file, r->offset, r->bytes, r->qiov, r->qiov_offset,
                              r->flags);
    case THR_WRITE:
        return bdrv_co_pwritev(file, r->offset, r->bytes, r->qiov, r->qiov_offset,
                               r->flags);
    case THR_ZEROES:
        return bdrv_co_pwrite_zeroes(file, r->offset, r->bytes, r->flags);
    default:
        return bdrv_co_pdiscard(file, r->offset, r->bytes);
    }
}

/* I/O: waits for the group's permission, then forwards. */
static int coroutine_fn throttled(BlockNode *bs, const ThrottledReq *r) GRAPH_RDLOCK
{
    IO_CODE();
    ThrottleNodeState *s = bs->opaque;
    int ret;

    throttle_member_co_intercept(&s->member, r->kind != THR_READ,
                                 (uint64_t)r->bytes);
    ret = forward(bs, r);
    throttle_member_sent_done(&s->member);
    return ret;
}

/*
 * co_preadv, co_pwritev, co_pwrite_zeroes, co_pdiscard — lock: graph read
 * lock (I/O); in flight: yes, any number; threads: yes (the group's lock
 * serialises the queues).  Throttled.
 */
static int coroutine_fn throttle_co_preadv(BlockNode *bs, int64_t offset,
                                           int64_t bytes, IOVector *qiov,
                                           size_t qiov_offset,
                                           BdrvRequestFlags flags) GRAPH_RDLOCK
{
    ThrottledReq r = { THR_READ, offset, bytes, qiov, qiov_offset, flags };
    return throttled(bs, &r);
}

static int coroutine_fn throttle_co_pwritev(BlockNode *bs, int64_t offset,
                                            int64_t bytes, IOVector *qiov,
                                            size_t qiov_offset,
                                            BdrvRequestFlags flags) GRAPH_RDLOCK
{
    ThrottledReq r = { THR_WRITE, offset, bytes, qiov, qiov_offset, flags };
    return throttled(bs, &r);
}

static int coroutine_fn throttle_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                                  int64_t bytes,
                                                  BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    ThrottledReq r = { THR_ZEROES, offset, bytes, NULL, 0, flags };
    return throttled(bs, &r);
}

static int coroutine_fn throttle_co_pdiscard(BlockNode *bs, int64_t offset,
                                             int64_t bytes) GRAPH_RDLOCK
{
    ThrottledReq r = { THR_DISCARD, offset, bytes, NULL, 0, 0 };
    return throttled(bs, &r);
}

/*
 * co_truncate — lock: graph read lock; in flight: yes; threads: one resize
 * per node at a time (io.c serialises).  Not throttled.
 */
static int coroutine_fn throttle_co_truncate(BlockNode *bs, int64_t offset,
                                             bool exact, Error **errp) GRAPH_RDLOCK
{
    return filter_co_truncate(bs, offset, exact, errp);
}

/* ------------------------------------------------------------ reopen */

/*
 * reopen_prepare — lock: GS; in flight: none (the node is quiesced, its
 * queue drained at the rate); threads: main only.  A new throttle-group is
 * checked here and switched to at commit (QEMU allows it too).
 */
static int coroutine_fn throttle_reopen_prepare(BlockReopenState *rs,
                                                Error **errp) GS
{
    GS_CODE();
    const char *group = opt_str(rs->options, "throttle-group", NULL);

    if (!group || !bdrv_reopen_option_changed(rs, "throttle-group")) {
        return 0;
    }
    if (!throttle_group_find(group)) {
        error_setg(errp, "Throttle group '%s' does not exist", group);
        return -EINVAL;
    }
    rs->opaque = strdup(group);
    return 0;
}

/* GS: moves the member to group id.  Its queues are empty (quiesced), and
 * nothing yields in between, so the old group (which counts us as a member
 * until now and so cannot have been deleted) takes us back if id vanished. */
static void switch_group(ThrottleNodeState *s, const char *id) GS
{
    GS_CODE();
    char *old = strdup(throttle_group_id(s->member.tg));
    Error *err = NULL;

    throttle_member_leave(&s->member);
    if (throttle_member_join(&s->member, id, &err) < 0) {
        error_free(err);
        throttle_member_join(&s->member, old, NULL);
    }
    s->member.on_idle_below = bdrv_notify_idle;
    free(old);
}

/* reopen_commit / reopen_abort — lock: GS; in flight: none; threads: main
 * only.  Commit switches the group if prepare chose one; the child may be
 * another node now. */
static void throttle_reopen_commit(BlockReopenState *rs) GS
{
    GS_CODE();
    BlockNode *bs = rs->bs;

    if (rs->opaque) {
        switch_group(bs->opaque, rs->opaque);
        free(rs->opaque);
        rs->opaque = NULL;
    }
    bdrv_graph_rdlock_main_loop();
    atomic_store(&bs->length, bdrv_getlength(bs->file->node));
    bdrv_graph_rdunlock_main_loop();
}

static void throttle_reopen_abort(BlockReopenState *rs) GS
{
    GS_CODE();
    free(rs->opaque);
    rs->opaque = NULL;
}

const BlockDriver bdrv_throttle = {
    .format_name = "throttle",
    .instance_size = sizeof(ThrottleNodeState),
    .is_filter = true,
    .quiesce_barrier = true,
    .in_flight_below = throttle_in_flight_below,
    .quiesce_barrier_begin = throttle_barrier_begin,
    .quiesce_barrier_end = throttle_barrier_end,
    .options = throttle_options,

    .open = throttle_open,
    .close = throttle_close,
    .reopen_prepare = throttle_reopen_prepare,
    .reopen_commit = throttle_reopen_commit,
    .reopen_abort = throttle_reopen_abort,

    .co_preadv = throttle_co_preadv,
    .co_pwritev = throttle_co_pwritev,
    .co_pwrite_zeroes = throttle_co_pwrite_zeroes,
    .co_pdiscard = throttle_co_pdiscard,
    .co_flush = filter_co_flush,
    .co_block_status = filter_co_block_status,
    .co_truncate = throttle_co_truncate,
};
