/*
 * copy-on-read.c — the `copy-on-read` filter driver (QEMU's), one child
 * "file":
 *
 *   blockdev-add driver=copy-on-read node-name=N file=NODE [bottom=NODE]
 *
 * and the filter block-stream inserts above its top for the job's life
 * (opened by bdrv_co_open_internal() without children, bounded with
 * copy_on_read_set_bottom(), then inserted).
 *
 * A read is cut into runs by chain_needs_copy() (stream.c): a run that the
 * file node does not allocate itself but some node of its backing chain
 * down to `bottom` (included; no bottom: the whole chain) does is read
 * through the file node and written back into it; other runs are just
 * read.  The write is the stream job's: BDRV_REQ_WRITE_UNCHANGED (it does
 * not change what reads see, so it needs only the write-unchanged
 * permission) plus BDRV_REQ_IF_UNALLOCATED, so the format writes only the
 * clusters still unallocated, decided under its own allocation lock: a
 * guest write racing the copy wins (stream.c explains the race).  A file
 * node whose format does not list IF_UNALLOCATED (anything but qcow2) is
 * only read through: a plain write could put old data over a guest's.  As
 * in QEMU, a failed copy fails the read.
 *
 * Writes, write-zeroes, discards, flushes, block status and truncate pass
 * through.  Permissions: the parents' read, write and resize pass through,
 * the filter adds write-unchanged (so the file node must be writable:
 * "Block node is read-only" otherwise, as QEMU) and shares everything
 * else.
 *
 * With bottom (a user's node): bottom must be a non-filter node in the
 * file node's chain; the edges from this node down to bottom are frozen
 * and bottom referenced until close, as QEMU's cor_open does.
 *
 * Thread-safety: the state is the bottom pointer, written GS while no
 * request can reach the node (open, or before a job inserts it) and read
 * atomically by the I/O path.
 */
#include <errno.h>
#include <stdatomic.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "filters/filter-util.h"
#include "jobs/stream.h"

typedef struct CorState {
    BlockNode *_Atomic bottom;   /* NULL: the whole chain */
    bool user_bottom;            /* GS: referenced and frozen by open */
    ChainFreeze frozen;          /* GS: this node's chain down to bottom */
} CorState;

static const BlockOptionDesc cor_options[] = {
    { "file", OPT_CHILD, true, NULL, "the node reads populate" },
    { "bottom", OPT_STRING, false, NULL,
      "the lowest node of file's backing chain whose data is copied up "
      "(default: the whole chain)" },
    { NULL },
};

void copy_on_read_set_bottom(BlockNode *filter, BlockNode *bottom)
{
    GS_CODE();
    CorState *s = filter->opaque;

    atomic_store(&s->bottom, bottom);
}

/* ------------------------------------------------------------ open/close */

/* GS: bottom, by name, for this node over file; NULL with *errp set. */
static BlockNode *cor_find_bottom(BlockNode *file, const char *name,
                                  Error **errp) GS
{
    BlockNode *bottom = bdrv_find_node(name);

    if (!bottom) {
        error_setg(errp, "Bottom node '%s' not found", name);
        return NULL;
    }
    if (bottom->drv->is_filter) {
        error_setg(errp, "Bottom node '%s' is a filter", name);
        return NULL;
    }
    if (bottom != file && !chain_contains(file, bottom)) {
        error_setg(errp, "Bottom node '%s' is not in the backing chain of "
                   "'%s'", name, file->node_name);
        return NULL;
    }
    return bottom;
}

/*
 * open — lock: GS, in a coroutine on the main loop; in flight: none (not
 * reachable yet); threads: main only.  Without "file" (only a job's
 * bdrv_co_open_internal() can leave it out: blockdev-add requires it) the
 * node waits to be inserted.
 */
static int coroutine_fn cor_open(BlockNode *bs, json_t *options, Error **errp)
    GS
{
    GS_CODE();
    CorState *s = bs->opaque;
    const char *bottom_name = opt_str(options, "bottom", NULL);

    if (!json_object_get(options, "file")) {
        return 0;
    }
    if (!bdrv_co_open_child(bs, options, "file",
                            BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, false,
                            errp)) {
        return -EINVAL;
    }
    filter_inherit_from_child(bs);
    if (!bottom_name) {
        return 0;
    }
    bdrv_graph_rdlock_main_loop();
    BlockNode *file = bs->file->node;
    bdrv_graph_rdunlock_main_loop();
    BlockNode *bottom = cor_find_bottom(file, bottom_name, errp);
    if (!bottom || chain_freeze(&s->frozen, bs, bottom) < 0) {
        chain_thaw(&s->frozen);
        if (bottom) {
            error_setg(errp, "Out of memory");
        }
        return -EINVAL;
    }
    bdrv_ref(bottom);
    s->user_bottom = true;
    atomic_store(&s->bottom, bottom);
    return 0;
}

/*
 * close — lock: GS; in flight: none (drained); threads: main only.  The
 * core detaches the child.
 */
static void coroutine_fn cor_close(BlockNode *bs) GS
{
    GS_CODE();
    CorState *s = bs->opaque;

    chain_thaw(&s->frozen);
    if (s->user_bottom) {
        bdrv_co_unref(atomic_load(&s->bottom));
        s->user_bottom = false;
    }
    atomic_store(&s->bottom, NULL);
}

/*
 * child_perm — lock: GS; in flight: may be; threads: main only.  Read,
 * write and resize as the parents ask, plus write-unchanged for the copy;
 * what the filter itself does not do is shared.
 */
#define COR_PASSTHROUGH (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | \
                         BLK_PERM_RESIZE)

static void cor_child_perm(BlockNode *bs, BlockChild *c, BdrvChildRole role,
                           uint64_t perm, uint64_t shared,
                           uint64_t *nperm, uint64_t *nshared) GS
{
    *nperm = (perm & COR_PASSTHROUGH) | BLK_PERM_CONSISTENT_READ |
             BLK_PERM_WRITE_UNCHANGED;
    *nshared = (shared & COR_PASSTHROUGH) |
               (BLK_PERM_ALL & ~(uint64_t)COR_PASSTHROUGH);
}

/* ------------------------------------------------------------ I/O */

/* Graph read lock: the node below bottom, where the copy stops (NULL: the
 * end of the chain). */
static BlockNode *cor_base(BlockNode *bs) GRAPH_RDLOCK
{
    CorState *s = bs->opaque;
    BlockNode *bottom = atomic_load(&s->bottom);

    return bottom && bottom->backing ? bottom->backing->node : NULL;
}

/*
 * co_preadv — lock: graph read lock (I/O); in flight: yes, any number;
 * threads: any, at once.  Run by run: read; copy up what needs it.
 */
static int coroutine_fn cor_co_preadv(BlockNode *bs, int64_t offset,
                                      int64_t bytes, IOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags) GRAPH_RDLOCK
{
    IO_CODE();
    BlockNode *file = bs->file->node;
    bool can_copy = file->supported_write_flags & BDRV_REQ_IF_UNALLOCATED;
    BlockNode *base = cor_base(bs);

    while (bytes > 0) {
        int64_t n = bytes;
        int copy = can_copy ? chain_needs_copy(file, base, offset, bytes, &n) : 0;
        if (copy < 0) {
            return copy;
        }
        n = n > 0 ? MIN(n, bytes) : bytes;
        int ret = bdrv_co_preadv(bs->file, offset, n, qiov, qiov_offset, flags);
        if (ret == 0 && copy) {
            ret = bdrv_co_pwritev(bs->file, offset, n, qiov, qiov_offset,
                                  BDRV_REQ_WRITE_UNCHANGED |
                                  BDRV_REQ_IF_UNALLOCATED);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qiov_offset += n;
        bytes -= n;
    }
    return 0;
}

const BlockDriver bdrv_copy_on_read = {
    .format_name = "copy-on-read",
    .instance_size = sizeof(CorState),
    .is_filter = true,
    .options = cor_options,

    .open = cor_open,
    .close = cor_close,
    .child_perm = cor_child_perm,

    .co_preadv = cor_co_preadv,
    .co_pwritev = filter_co_pwritev,        /* writes pass through */
    .co_pwrite_zeroes = filter_co_pwrite_zeroes,
    .co_pdiscard = filter_co_pdiscard,
    .co_flush = filter_co_flush,
    .co_block_status = filter_co_block_status,
    .co_truncate = filter_co_truncate,
};
