/*
 * io.c — the only place that calls a driver's I/O callbacks.
 *
 * Every request on an edge comes through here (I/O code: any thread, in a
 * coroutine, graph read lock held).  Before a driver sees a request, this
 * file has:
 *   - checked the range: negative offsets or lengths and overflow are
 *     -EINVAL; reads past the end are -EINVAL (callers clamp); writes,
 *     zeroes and discards past the end are -ENOSPC (callers grow first);
 *     zero-length requests succeed without reaching the driver;
 *   - refused writes to a read-only node (-EPERM) and writes on an edge that
 *     does not hold the write permission (an assertion: it is a bug in the
 *     caller; -EPERM when built with NDEBUG);
 *   - aligned the request to bl.request_alignment: unaligned reads read the
 *     whole blocks into scratch space around the caller's buffer; unaligned
 *     writes read the partial head and tail blocks and write whole blocks
 *     (read-modify-write), serialised against overlapping writes;
 *   - split it into pieces no larger than bl.max_transfer (max_pwrite_zeroes,
 *     max_pdiscard);
 *   - counted it in the node's in_flight, waking a quiescing waiter when the
 *     count drops to zero.
 * A NULL callback is -ENOTSUP, with two defined exceptions: pwrite_zeroes
 * falls back to writing a zeroed buffer (unless BDRV_REQ_NO_FALLBACK), and a
 * NULL co_flush means "nothing to make stable at this layer" (flush then
 * goes on to the children).
 *
 * Serialisation of read-modify-write: on nodes with request_alignment > 1,
 * writes register their (aligned) range in the node's list in arrival
 * order.  A request waits for each earlier overlapping request when either
 * of the two is a read-modify-write.  Waiting only for earlier requests
 * makes the waits acyclic.  Nodes with alignment 1 never do RMW and skip
 * the list entirely.
 *
 * The list costs a lock per write, so aligned writes skip it while no RMW is
 * in progress on the node: they only count themselves in `fast_writes`.  An
 * RMW first raises `serialising` (from then on new writes take the list),
 * then waits until the uncounted fast writes have drained, then registers.
 * Both sides raise their own counter before reading the other's, with
 * sequentially consistent atomics, so no write slips between the two.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "graph-internal.h"
#include "loop/loop.h"

/* ---- in-flight accounting ---- */

void bdrv_inc_in_flight(BlockNode *bs)
{
    atomic_fetch_add(&bs->in_flight, 1);
}

void bdrv_dec_in_flight(BlockNode *bs)
{
    if (atomic_fetch_sub(&bs->in_flight, 1) == 1) {
        bdrv_notify_idle();
    }
}

/* ---- checks ---- */

static int check_range(int64_t offset, int64_t bytes)
{
    if (offset < 0 || bytes < 0 || offset > BDRV_MAX_LENGTH ||
        bytes > BDRV_MAX_LENGTH - offset) {
        return -EINVAL;
    }
    return 0;
}

static int check_write(BlockChild *child, int64_t offset, int64_t bytes,
                       BdrvRequestFlags flags) GRAPH_RDLOCK
{
    BlockNode *bs = child->node;
    int ret = check_range(offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (bs->read_only) {
        return -EPERM;
    }
    uint64_t need = (flags & BDRV_REQ_WRITE_UNCHANGED) ?
        (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED) : BLK_PERM_WRITE;
    if (!(child->perm & need)) {
        assert(!"write on an edge without the write permission");
        return -EPERM;
    }
    if (offset + bytes > bdrv_getlength(bs)) {
        return -ENOSPC;
    }
    return 0;
}

static uint32_t node_align(BlockNode *bs)
{
    return bs->bl.request_alignment ? bs->bl.request_alignment : 1;
}

/* The largest piece for a limit, a multiple of align (0 = unlimited). */
static int64_t piece_max(uint64_t limit, uint32_t align)
{
    if (!limit || limit > INT64_MAX / 2) {
        return INT64_MAX / 2;
    }
    int64_t m = ROUND_DOWN((int64_t)limit, (int64_t)align);
    return m > 0 ? m : align;
}

static void *scratch_alloc(BlockNode *bs, size_t len)
{
    size_t align = MAX(bs->bl.min_mem_alignment, sizeof(void *));
    void *p = NULL;
    if (posix_memalign(&p, align, len)) {
        return NULL;
    }
    return p;
}

/* ---- serialising overlapping writes (RMW) ---- */

typedef struct ReqWaiter {
    Coroutine *co;
    struct ReqWaiter *next;
} ReqWaiter;

struct TrackedReq {
    int64_t start, end;         /* aligned range */
    bool serialising;           /* a read-modify-write */
    struct TrackedReq *prev, *next;
    ReqWaiter *waiters;
};

static bool track_needed(BlockNode *bs)
{
    return node_align(bs) > 1;
}

static TrackedReq *earlier_conflict(NodeState *ns, TrackedReq *req)
{
    for (TrackedReq *o = ns->tracked_head; o && o != req; o = o->next) {
        if ((o->serialising || req->serialising) &&
            o->start < req->end && req->start < o->end) {
            return o;
        }
    }
    return NULL;
}

static void coroutine_fn track_begin(BlockNode *bs, TrackedReq *req,
                                     int64_t offset, int64_t bytes,
                                     bool serialising)
{
    NodeState *ns = node_state(bs);
    uint32_t align = node_align(bs);
    req->start = ROUND_DOWN(offset, (int64_t)align);
    req->end = ROUND_UP(offset + bytes, (int64_t)align);
    req->serialising = serialising;
    req->waiters = NULL;
    req->next = NULL;

    pthread_mutex_lock(&ns->req_lock);
    req->prev = ns->tracked_tail;
    if (ns->tracked_tail) {
        ns->tracked_tail->next = req;
    } else {
        ns->tracked_head = req;
    }
    ns->tracked_tail = req;
    TrackedReq *o;
    while ((o = earlier_conflict(ns, req))) {
        ReqWaiter w = { .co = co_self(), .next = o->waiters };
        o->waiters = &w;
        pthread_mutex_unlock(&ns->req_lock);
        co_yield();             /* woken by track_end(o) */
        pthread_mutex_lock(&ns->req_lock);
    }
    pthread_mutex_unlock(&ns->req_lock);
}

static void track_end(BlockNode *bs, TrackedReq *req)
{
    NodeState *ns = node_state(bs);
    pthread_mutex_lock(&ns->req_lock);
    if (req->prev) {
        req->prev->next = req->next;
    } else {
        ns->tracked_head = req->next;
    }
    if (req->next) {
        req->next->prev = req->prev;
    } else {
        ns->tracked_tail = req->prev;
    }
    ReqWaiter *w = req->waiters;
    req->waiters = NULL;
    pthread_mutex_unlock(&ns->req_lock);
    while (w) {
        ReqWaiter *next = w->next;   /* w lives on the waiter's stack */
        co_wake(w->co);
        w = next;
    }
}

/* The fast path and the choice between the two (see the top). */
typedef struct WriteReq {
    TrackedReq tr;
    bool tracked, fast, serialising;
} WriteReq;

static void fast_write_end(NodeState *ns)
{
    if (atomic_fetch_sub(&ns->fast_writes, 1) == 1) {
        bdrv_notify_idle();
    }
}

static bool no_fast_writes(void *opaque)
{
    NodeState *ns = opaque;
    return atomic_load(&ns->fast_writes) == 0;
}

static void coroutine_fn write_begin(BlockNode *bs, WriteReq *w, int64_t offset,
                                     int64_t bytes, bool serialising)
{
    NodeState *ns = node_state(bs);
    *w = (WriteReq){ .serialising = serialising };
    if (!track_needed(bs)) {
        return;
    }
    if (!serialising) {
        atomic_fetch_add(&ns->fast_writes, 1);
        if (atomic_load(&ns->serialising) == 0) {
            w->fast = true;
            return;
        }
        fast_write_end(ns);
    } else {
        atomic_fetch_add(&ns->serialising, 1);
        wait_until_idle(no_fast_writes, ns);
    }
    w->tracked = true;
    track_begin(bs, &w->tr, offset, bytes, serialising);
}

static void write_end(BlockNode *bs, WriteReq *w)
{
    NodeState *ns = node_state(bs);
    if (w->fast) {
        fast_write_end(ns);
    }
    if (w->tracked) {
        track_end(bs, &w->tr);
        if (w->serialising) {
            atomic_fetch_sub(&ns->serialising, 1);
        }
    }
}

/* ---- aligned, split calls into the driver ---- */

static int coroutine_fn drv_read(BlockNode *bs, int64_t offset, int64_t bytes,
                                 IOVector *qiov, size_t qoff,
                                 BdrvRequestFlags flags) GRAPH_RDLOCK
{
    if (!bs->drv->co_preadv) {
        return -ENOTSUP;
    }
    int64_t max = piece_max(bs->bl.max_transfer, node_align(bs));
    while (bytes > 0) {
        int64_t n = MIN(bytes, max);
        int ret = bs->drv->co_preadv(bs, offset, n, qiov, qoff, flags);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += n;
        bytes -= n;
    }
    return 0;
}

static int coroutine_fn drv_write(BlockNode *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qoff,
                                  BdrvRequestFlags flags) GRAPH_RDLOCK
{
    if (!bs->drv->co_pwritev) {
        return -ENOTSUP;
    }
    if ((flags & BDRV_REQ_COMPRESS) &&
        !(bs->supported_write_flags & BDRV_REQ_COMPRESS)) {
        return -ENOTSUP;
    }
    bool emulate_fua = (flags & BDRV_REQ_FUA) &&
                       !(bs->supported_write_flags & BDRV_REQ_FUA);
    BdrvRequestFlags pass = flags & bs->supported_write_flags;
    int64_t max = piece_max(bs->bl.max_transfer, node_align(bs));
    while (bytes > 0) {
        int64_t n = MIN(bytes, max);
        int ret = bs->drv->co_pwritev(bs, offset, n, qiov, qoff, pass);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += n;
        bytes -= n;
    }
    if (emulate_fua && bs->drv->co_flush) {
        return bs->drv->co_flush(bs);
    }
    return 0;
}

/* ---- reads ---- */

/* I/O: an unaligned request widened to whole blocks: sets [*start, *end) to
 * the blocks covering [offset, offset+bytes) and returns scratch space for
 * its partial head and tail block (two blocks, head first; free() it), or
 * NULL when out of memory. */
static uint8_t *widen_to_blocks(BlockNode *bs, int64_t offset, int64_t bytes,
                                int64_t *start, int64_t *end)
{
    int64_t align = node_align(bs);

    *start = ROUND_DOWN(offset, align);
    *end = ROUND_UP(offset + bytes, align);
    return scratch_alloc(bs, 2 * align);
}

/* Reads [offset, offset+bytes) when it is not aligned: whole blocks are read,
 * the parts outside the request land in scratch space. */
static int coroutine_fn read_unaligned(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVector *qiov,
                                       size_t qoff, BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    int64_t align = node_align(bs), start, end;
    uint8_t *scratch = widen_to_blocks(bs, offset, bytes, &start, &end);
    if (!scratch) {
        return -ENOMEM;
    }
    IOVector v;
    iov_init(&v, qiov->niov + 2);
    iov_add(&v, scratch, offset - start);
    iov_concat(&v, qiov, qoff, bytes);
    iov_add(&v, scratch + align, end - (offset + bytes));
    int ret = drv_read(bs, start, end - start, &v, 0, flags);
    iov_destroy(&v);
    free(scratch);
    return ret;
}

int coroutine_fn bdrv_co_preadv(BlockChild *child, int64_t offset, int64_t bytes,
                                IOVector *qiov, size_t qiov_offset,
                                BdrvRequestFlags flags)
{
    IO_CODE();
    BlockNode *bs = child->node;
    int ret = check_range(offset, bytes);
    if (ret < 0 || bytes == 0) {
        return ret;
    }
    if (offset + bytes > bdrv_getlength(bs) || qiov_offset + bytes > qiov->size) {
        return -EINVAL;
    }
    int64_t align = node_align(bs);
    bdrv_inc_in_flight(bs);
    if (IS_ALIGNED(offset, align) && IS_ALIGNED(bytes, align)) {
        ret = drv_read(bs, offset, bytes, qiov, qiov_offset, flags);
    } else {
        ret = read_unaligned(bs, offset, bytes, qiov, qiov_offset, flags);
    }
    bdrv_dec_in_flight(bs);
    return ret;
}

int coroutine_fn bdrv_co_pread(BlockChild *child, int64_t offset, int64_t bytes,
                               void *buf, BdrvRequestFlags flags)
{
    IO_CODE();
    IOVector v;
    iov_init_buf(&v, buf, bytes > 0 ? bytes : 0);
    return bdrv_co_preadv(child, offset, bytes, &v, 0, flags);
}

/* ---- writes ---- */

/* Reads the block at `block` into buf (one alignment unit). */
static int coroutine_fn read_block(BlockNode *bs, int64_t block, uint8_t *buf)
    GRAPH_RDLOCK
{
    IOVector v;
    iov_init_buf(&v, buf, node_align(bs));
    return drv_read(bs, block, node_align(bs), &v, 0, 0);
}

/*
 * Read-modify-write of an unaligned write.  The head and tail blocks are
 * read into scratch space; the write is then [head scratch][caller's
 * data][tail scratch] over whole blocks, without copying the data.  A write
 * inside one block is copied into that block instead.
 */
static int coroutine_fn write_unaligned(BlockNode *bs, int64_t offset,
                                        int64_t bytes, IOVector *qiov,
                                        size_t qoff, BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    int64_t align = node_align(bs), start, end;
    uint8_t *scratch = widen_to_blocks(bs, offset, bytes, &start, &end);
    if (!scratch) {
        return -ENOMEM;
    }
    uint8_t *head = scratch, *tail = scratch + align;
    int ret = 0;
    IOVector v;
    iov_init(&v, qiov->niov + 2);

    if (end - start == align) {
        ret = read_block(bs, start, head);
        if (ret == 0) {
            iov_to_buf(qiov, qoff, head + (offset - start), bytes);
            iov_add(&v, head, align);
        }
    } else {
        if (offset != start) {
            ret = read_block(bs, start, head);
        }
        if (ret == 0 && offset + bytes != end) {
            ret = read_block(bs, end - align, tail);
        }
        iov_add(&v, head, offset - start);
        iov_concat(&v, qiov, qoff, bytes);
        iov_add(&v, tail + (offset + bytes - (end - align)),
                end - (offset + bytes));
    }
    if (ret == 0) {
        ret = drv_write(bs, start, end - start, &v, 0, flags);
    }
    iov_destroy(&v);
    free(scratch);
    return ret;
}

int coroutine_fn bdrv_co_pwritev(BlockChild *child, int64_t offset, int64_t bytes,
                                 IOVector *qiov, size_t qiov_offset,
                                 BdrvRequestFlags flags)
{
    IO_CODE();
    BlockNode *bs = child->node;
    int ret = check_write(child, offset, bytes, flags);
    if (ret < 0 || bytes == 0) {
        return ret;
    }
    if (qiov_offset + bytes > qiov->size) {
        return -EINVAL;
    }
    int dz = node_state(bs)->detect_zeroes;
    if (dz != DETECT_ZEROES_OFF && iov_is_zero(qiov, qiov_offset, bytes)) {
        /* detect-zeroes: the write becomes a write-zeroes request */
        BdrvRequestFlags zf = (flags & BDRV_REQ_FUA) |
                              (dz == DETECT_ZEROES_UNMAP ? BDRV_REQ_MAY_UNMAP : 0);
        return bdrv_co_pwrite_zeroes(child, offset, bytes, zf);
    }
    int64_t align = node_align(bs);
    bool aligned = IS_ALIGNED(offset, align) && IS_ALIGNED(bytes, align);
    WriteReq w;
    bdrv_inc_in_flight(bs);
    write_begin(bs, &w, offset, bytes, !aligned);
    if (aligned) {
        ret = drv_write(bs, offset, bytes, qiov, qiov_offset, flags);
    } else {
        ret = write_unaligned(bs, offset, bytes, qiov, qiov_offset, flags);
    }
    write_end(bs, &w);
    bdrv_dec_in_flight(bs);
    return ret;
}

int coroutine_fn bdrv_co_pwrite(BlockChild *child, int64_t offset, int64_t bytes,
                                const void *buf, BdrvRequestFlags flags)
{
    IO_CODE();
    IOVector v;
    iov_init_buf(&v, (void *)buf, bytes > 0 ? bytes : 0);
    return bdrv_co_pwritev(child, offset, bytes, &v, 0, flags);
}

/* ---- write zeroes ---- */

/* Writes zeroes as data, in pieces of at most 1 MiB (or max_transfer). */
static int coroutine_fn zero_by_writing(BlockNode *bs, int64_t offset,
                                        int64_t bytes, BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    int64_t piece = MIN(bytes, piece_max(bs->bl.max_transfer, node_align(bs)));
    piece = MIN(piece, 1 << 20);
    piece = MAX(piece, (int64_t)node_align(bs));
    uint8_t *buf = scratch_alloc(bs, piece);
    if (!buf) {
        return -ENOMEM;
    }
    memset(buf, 0, piece);
    int ret = 0;
    while (bytes > 0 && ret == 0) {
        int64_t n = MIN(bytes, piece);
        IOVector v;
        iov_init_buf(&v, buf, n);
        ret = drv_write(bs, offset, n, &v, 0,
                        (flags & BDRV_REQ_FUA) | BDRV_REQ_ZERO_WRITE);
        offset += n;
        bytes -= n;
    }
    free(buf);
    return ret;
}

/* Zeroes an aligned range: the driver's callback, else writing zeroes. */
static int coroutine_fn zero_aligned(BlockNode *bs, int64_t offset, int64_t bytes,
                                     BdrvRequestFlags flags) GRAPH_RDLOCK
{
    int64_t max = piece_max(bs->bl.max_pwrite_zeroes, node_align(bs));
    BdrvRequestFlags pass = flags & (bs->supported_zero_flags | BDRV_REQ_NO_FALLBACK);
    while (bytes > 0) {
        int64_t n = MIN(bytes, max);
        int ret = -ENOTSUP;
        if (bs->drv->co_pwrite_zeroes) {
            ret = bs->drv->co_pwrite_zeroes(bs, offset, n, pass);
        }
        if (ret == -ENOTSUP && !(flags & BDRV_REQ_NO_FALLBACK)) {
            ret = zero_by_writing(bs, offset, n, flags);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
    }
    return 0;
}

/* Zeroes part of one block by read-modify-write. */
static int coroutine_fn zero_partial_block(BlockNode *bs, int64_t offset,
                                           int64_t bytes, BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    int64_t align = node_align(bs);
    int64_t block = ROUND_DOWN(offset, align);
    uint8_t *buf = scratch_alloc(bs, align);
    if (!buf) {
        return -ENOMEM;
    }
    int ret = read_block(bs, block, buf);
    if (ret == 0) {
        memset(buf + (offset - block), 0, bytes);
        IOVector v;
        iov_init_buf(&v, buf, align);
        ret = drv_write(bs, block, align, &v, 0, flags & BDRV_REQ_FUA);
    }
    free(buf);
    return ret;
}

static int coroutine_fn zero_unaligned(BlockNode *bs, int64_t offset,
                                       int64_t bytes, BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    int64_t align = node_align(bs);
    int64_t end = offset + bytes;
    int64_t mid_start = ROUND_UP(offset, align);
    int64_t mid_end = ROUND_DOWN(end, align);
    int ret = 0;
    if (mid_start > mid_end) {            /* inside one block */
        return zero_partial_block(bs, offset, bytes, flags);
    }
    if (offset < mid_start) {
        ret = zero_partial_block(bs, offset, mid_start - offset, flags);
    }
    if (ret == 0 && mid_start < mid_end) {
        ret = zero_aligned(bs, mid_start, mid_end - mid_start, flags);
    }
    if (ret == 0 && mid_end < end) {
        ret = zero_partial_block(bs, mid_end, end - mid_end, flags);
    }
    return ret;
}

int coroutine_fn bdrv_co_pwrite_zeroes(BlockChild *child, int64_t offset,
                                       int64_t bytes, BdrvRequestFlags flags)
{
    IO_CODE();
    BlockNode *bs = child->node;
    int ret = check_write(child, offset, bytes, flags);
    if (ret < 0 || bytes == 0) {
        return ret;
    }
    if (!node_state(bs)->discard_unmap) {
        flags &= ~BDRV_REQ_MAY_UNMAP;     /* discard=ignore */
    }
    int64_t align = node_align(bs);
    bool aligned = IS_ALIGNED(offset, align) && IS_ALIGNED(bytes, align);
    if (!aligned && (flags & BDRV_REQ_NO_FALLBACK)) {
        return -ENOTSUP;
    }
    WriteReq w;
    bdrv_inc_in_flight(bs);
    write_begin(bs, &w, offset, bytes, !aligned);
    if (aligned) {
        ret = zero_aligned(bs, offset, bytes, flags);
    } else {
        ret = zero_unaligned(bs, offset, bytes, flags);
    }
    write_end(bs, &w);
    bdrv_dec_in_flight(bs);
    return ret;
}

/* ---- discard ---- */

/* Discard is advisory: only the aligned inside of the range is passed on. */
int coroutine_fn bdrv_co_pdiscard(BlockChild *child, int64_t offset, int64_t bytes)
{
    IO_CODE();
    BlockNode *bs = child->node;
    int ret = check_write(child, offset, bytes, 0);
    if (ret < 0 || bytes == 0) {
        return ret;
    }
    if (!node_state(bs)->discard_unmap) {
        return 0;                 /* discard=ignore */
    }
    if (!bs->drv->co_pdiscard) {
        return -ENOTSUP;
    }
    int64_t align = MAX(node_align(bs), bs->bl.pdiscard_alignment);
    int64_t start = ROUND_UP(offset, align);
    int64_t end = ROUND_DOWN(offset + bytes, align);
    if (start >= end) {
        return 0;
    }
    int64_t max = piece_max(bs->bl.max_pdiscard, align);
    WriteReq w;
    bdrv_inc_in_flight(bs);
    write_begin(bs, &w, start, end - start, false);
    for (int64_t off = start; off < end && ret == 0; off += max) {
        ret = bs->drv->co_pdiscard(bs, off, MIN(max, end - off));
    }
    write_end(bs, &w);
    bdrv_dec_in_flight(bs);
    return ret;
}

/* ---- flush ---- */

int coroutine_fn bdrv_co_flush(BlockNode *bs)
{
    IO_CODE();
    int ret = 0;
    bdrv_inc_in_flight(bs);
    if (bs->drv->co_flush && !node_state(bs)->no_flush && !bs->read_only) {
        ret = bs->drv->co_flush(bs);
    }
    for (BlockChild *c = bs->children; c; c = c->next_child) {
        int r = bdrv_co_flush(c->node);
        if (ret == 0) {
            ret = r;
        }
    }
    bdrv_dec_in_flight(bs);
    return ret;
}

/* ---- named event points (fault injection) ---- */

static const char *const debug_event_names[BLKDBG_EVENT_MAX] = {
    [BLKDBG_L2_UPDATE] = "l2-update",
    [BLKDBG_REFBLOCK_ALLOC] = "refblock-alloc",
    [BLKDBG_COW_READ] = "cow-read",
    [BLKDBG_COW_WRITE] = "cow-write",
    [BLKDBG_HEADER_UPDATE] = "header-update",
};

const char *bdrv_debug_event_name(BlkDebugEvent ev)
{
    return (unsigned)ev < BLKDBG_EVENT_MAX ? debug_event_names[ev] : NULL;
}

int bdrv_debug_event_parse(const char *name)
{
    for (int i = 0; i < BLKDBG_EVENT_MAX; i++) {
        if (name && strcmp(name, debug_event_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

void coroutine_fn bdrv_co_debug_event(BlockChild *child, BlkDebugEvent ev)
{
    for (BlockNode *bs = child ? child->node : NULL; bs;
         bs = bs->file ? bs->file->node : NULL) {
        if (bs->drv->co_debug_event) {
            bs->drv->co_debug_event(bs, ev);
            return;
        }
    }
}

/* ---- block status ---- */

static int coroutine_fn status_here(BlockNode *bs, int64_t offset, int64_t bytes,
                                    int64_t *pnum, int64_t *map,
                                    BlockNode **file) GRAPH_RDLOCK
{
    if (!bs->drv->co_block_status) {
        *pnum = bytes;
        if (bs->drv->is_protocol) {
            *map = offset;
            *file = bs;
            return BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID;
        }
        return BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
    }
    int ret = bs->drv->co_block_status(bs, offset, bytes, pnum, map, file);
    if (ret >= 0 && (*pnum <= 0 || *pnum > bytes)) {
        return -EIO;        /* a driver bug must not loop the caller */
    }
    return ret;
}

/* DATA/ZERO of a format's run, resolved in its file (RECURSE). */
static int coroutine_fn status_recurse(int ret, int64_t *pnum, int64_t map,
                                       BlockNode *file) GRAPH_RDLOCK
{
    int64_t pnum2, map2;
    BlockNode *file2 = NULL;
    int64_t len = bdrv_getlength(file);
    if (map >= len) {
        return (ret & ~(BDRV_BLOCK_RECURSE | BDRV_BLOCK_DATA)) | BDRV_BLOCK_ZERO;
    }
    int ret2 = bdrv_co_block_status(file, false, map, MIN(*pnum, len - map),
                                    &pnum2, &map2, &file2);
    if (ret2 < 0) {
        return ret2;
    }
    *pnum = MIN(*pnum, pnum2);
    ret &= ~(BDRV_BLOCK_RECURSE | BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO);
    return ret | (ret2 & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO));
}

/* An unallocated run, looked up in the backing chain. */
static int coroutine_fn status_backing(BlockNode *bs, int64_t offset,
                                       int64_t *pnum, int64_t *map,
                                       BlockNode **file) GRAPH_RDLOCK
{
    BlockNode *base = bs->backing->node;
    int64_t blen = bdrv_getlength(base);
    if (offset >= blen) {
        return BDRV_BLOCK_ZERO;     /* beyond the backing file: zeroes */
    }
    int64_t n = MIN(*pnum, blen - offset);
    int ret = bdrv_co_block_status(base, true, offset, n, pnum, map, file);
    return ret;
}

int coroutine_fn bdrv_co_block_status(BlockNode *bs, bool want_chain,
                                      int64_t offset, int64_t bytes,
                                      int64_t *pnum, int64_t *map,
                                      BlockNode **file)
{
    IO_CODE();
    int64_t len = bdrv_getlength(bs);
    int64_t lmap = 0;
    BlockNode *lfile = NULL;
    *pnum = 0;
    if (check_range(offset, bytes) < 0 || offset > len) {
        return -EINVAL;
    }
    bytes = MIN(bytes, len - offset);
    if (bytes == 0) {
        return 0;               /* at the end: *pnum = 0 */
    }
    bdrv_inc_in_flight(bs);
    int ret = status_here(bs, offset, bytes, pnum, &lmap, &lfile);
    if (ret >= 0 && (ret & BDRV_BLOCK_RECURSE) && lfile &&
        (ret & BDRV_BLOCK_OFFSET_VALID)) {
        ret = status_recurse(ret, pnum, lmap, lfile);
    }
    if (ret >= 0 && want_chain && !(ret & BDRV_BLOCK_ALLOCATED) && bs->backing) {
        ret = status_backing(bs, offset, pnum, &lmap, &lfile);
    }
    bdrv_dec_in_flight(bs);
    if (map) {
        *map = lmap;
    }
    if (file) {
        *file = lfile;
    }
    return ret;
}

/* ---- truncate ---- */

/*
 * Tells the parents that are not nodes (backends, jobs) that the length
 * changed.  Their resize hook is GS, so it runs in a bottom half on the main
 * loop; the node stays counted in flight until then, which keeps it from
 * being closed (closing drains first).
 */
void bdrv_notify_resized(BlockNode *bs)
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        if (!c->parent_node && c->klass && c->klass->resize) {
            c->klass->resize(c);
        }
    }
    bdrv_graph_rdunlock_main_loop();
}

static void resize_notify_bh(void *opaque)
{
    BlockNode *bs = opaque;
    global_lock_assert_held();
    bdrv_notify_resized(bs);
    bdrv_dec_in_flight(bs);
}

static void resize_notify(BlockNode *bs)
{
    bdrv_inc_in_flight(bs);
    loop_schedule(loop_main(), resize_notify_bh, bs);
}

int coroutine_fn bdrv_co_truncate(BlockChild *child, int64_t offset, bool exact,
                                  Error **errp)
{
    IO_CODE();
    BlockNode *bs = child->node;
    if (offset < 0 || offset > BDRV_MAX_LENGTH) {
        error_setg(errp, "Invalid image length %" PRId64, offset);
        return -EINVAL;
    }
    if (bs->read_only) {
        error_setg(errp, "Block node is read-only");
        return -EACCES;
    }
    if (!(child->perm & BLK_PERM_RESIZE)) {
        assert(!"truncate on an edge without the resize permission");
        error_setg(errp, "Permission 'resize' not taken on node '%s'",
                   bs->node_name);
        return -EPERM;
    }
    if (!bs->drv->co_truncate) {
        error_setg(errp, "Driver '%s' does not support resize",
                   bs->drv->format_name);
        return -ENOTSUP;
    }
    NodeState *ns = node_state(bs);
    bdrv_inc_in_flight(bs);
    co_mutex_lock(&ns->truncate_lock);
    int64_t old = bdrv_getlength(bs);
    int ret = bs->drv->co_truncate(bs, offset, exact, errp);
    if (ret == 0 && exact && bdrv_getlength(bs) == old) {
        atomic_store(&bs->length, offset);
    }
    if (ret == 0 && bdrv_getlength(bs) != old) {
        resize_notify(bs);
    }
    co_mutex_unlock(&ns->truncate_lock);
    bdrv_dec_in_flight(bs);
    return ret;
}
