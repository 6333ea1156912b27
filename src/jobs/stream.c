/*
 * stream.c — the stream job (QMP block-stream), and the chain helpers the
 * commit job shares (stream.h).
 *
 * The copy.  For each chunk of top, in order: if top allocates it, skip;
 * if no node between top and base does, skip (reads come from base or
 * are zeroes either way); otherwise read it through top (the chain's
 * view) and write the same bytes back into top.  Then, in prepare, top's
 * backing becomes base and the nodes in between drop out.
 *
 * Writes racing the copy.  top stays exported writable: the guest may
 * write a region after the job read its old content from the backing and
 * before the job writes it back; a plain write would then put the old
 * data over the guest's.  The job's write is therefore a copy-on-read
 * style write: BDRV_REQ_WRITE_UNCHANGED (it does not change what reads
 * see, so it needs no WRITE permission — the export keeps that to itself)
 * plus BDRV_REQ_IF_UNALLOCATED: the format writes only the clusters that
 * are still unallocated, deciding under the same metadata lock its own
 * allocating writes take, after waiting for allocations in flight on those
 * clusters.  So a guest write either allocated the cluster first (the job
 * skips it) or waits for the job's cluster to be linked and overwrites it
 * (the guest wins).  A guest write into part of a cluster allocates the
 * whole cluster with the rest copied from the backing: the same bytes the
 * job would have written.  We chose this over a range lock in the job
 * because the only lock every writer of top already respects is the
 * format's; a job-side lock in the copy-on-read filter (next paragraph)
 * would miss writers that reach top without it (a node attached to top
 * later, the job's own backend).  Only formats that list IF_UNALLOCATED in
 * supported_write_flags (qcow2) can be streamed into.
 *
 * Guest reads during the job.  A copy-on-read filter (copy-on-read.c) is
 * inserted above top for the job's life, bounded by base: a read of a
 * region top does not allocate but the chain above base does is written
 * into top with the same write-unchanged, if-unallocated write, so what
 * the guest reads is not read from the backing again and the job finds
 * it allocated.  It leaves the graph in prepare (before the chain
 * changes) or in clean (failure, cancel).
 *
 * Threading: stream_start and the finalization callbacks are GS (main
 * thread, coroutines on the main loop); run is the job's coroutine on the
 * first IOThread (the main loop without one): it takes the graph read
 * lock itself (bdrv_graph_co_rdlock) and calls no GS helper.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block-io.h"
#include "driver.h"
#include "jobs/stream.h"

#define CHAIN_CHUNK (512 * 1024)   /* QEMU's: bytes checked and copied at once */

typedef struct StreamJob {
    BlockJob common;
    /* Constant while the job exists (the job's backends hold the nodes). */
    BlockNode *top, *base;       /* base NULL: stream the whole chain */
    BlockBackend *blk;           /* on top: read, write-unchanged */
    BlockdevOnError on_error;
    BlockNode *filter;           /* GS: copy-on-read above top (a reference);
                                  * NULL once it left the graph */
    char *backing_file;
    ChainFreeze frozen;          /* GS: top's backing edges down to base */
    bool top_was_ro;             /* GS: reopen top read-only in clean */
} StreamJob;

/* ------------------------------------------------------------ chain helpers */

int coroutine_fn chain_is_allocated_above(BlockNode *top, BlockNode *base,
                                          int64_t offset, int64_t bytes,
                                          int64_t *pnum)
{
    int64_t n = bytes;

    IO_CODE();
    for (BlockNode *bs = top; bs && bs != base;
         bs = bs->backing ? bs->backing->node : NULL) {
        int64_t len = bdrv_getlength(bs), pn = 0;
        if (offset >= len) {
            *pnum = n;          /* zeroes beyond a shorter layer */
            return 1;
        }
        int ret = bdrv_co_block_status(bs, false, offset, MIN(n, len - offset),
                                       &pn, NULL, NULL);
        if (ret < 0) {
            return ret;
        }
        if (ret & BDRV_BLOCK_ALLOCATED) {
            *pnum = pn;
            return 1;
        }
        n = MIN(n, pn);
    }
    *pnum = n;
    return 0;
}

/* Graph read lock: the edge below bs in its chain (backing, or a
 * filter's file child), or NULL. */
static BlockChild *chain_edge(BlockNode *bs) GRAPH_RDLOCK
{
    return bs->backing ? bs->backing : bs->drv->is_filter ? bs->file : NULL;
}

BlockNode *chain_next(BlockNode *bs)
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    BlockChild *c = chain_edge(bs);
    BlockNode *next = c ? c->node : NULL;
    bdrv_graph_rdunlock_main_loop();
    return next;
}

bool chain_contains(BlockNode *top, BlockNode *node)
{
    GS_CODE();
    for (BlockNode *bs = chain_next(top); bs; bs = chain_next(bs)) {
        if (bs == node) {
            return true;
        }
    }
    return false;
}

int coroutine_fn chain_open_rw(BlockNode *bs, bool *was_ro, Error **errp)
{
    GS_CODE();
    *was_ro = false;
    if (!bs->read_only) {
        return 0;
    }
    if (bdrv_co_reopen_set_read_only(bs, false, errp) < 0) {
        return -EACCES;
    }
    *was_ro = true;
    return 0;
}

void coroutine_fn chain_restore_ro(BlockJob *bjob, BlockNode *bs, bool *was_ro)
{
    Error *err = NULL;

    GS_CODE();
    if (bjob) {
        block_job_remove_all_nodes(bjob);
    }
    if (*was_ro && bdrv_co_reopen_set_read_only(bs, true, &err) < 0) {
        error_report_err(err);
    }
    *was_ro = false;
}

int chain_freeze(ChainFreeze *f, BlockNode *top, BlockNode *end)
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    for (BlockNode *bs = top; bs && bs != end && chain_edge(bs);
         bs = chain_edge(bs)->node) {
        BlockChild **e = realloc(f->edges, (f->n + 1) * sizeof(*e));
        if (!e) {
            bdrv_graph_rdunlock_main_loop();
            return -ENOMEM;
        }
        f->edges = e;
        f->edges[f->n++] = chain_edge(bs);
        chain_edge(bs)->frozen++;
    }
    bdrv_graph_rdunlock_main_loop();
    return 0;
}

void chain_thaw(ChainFreeze *f)
{
    GS_CODE();
    for (int i = 0; i < f->n; i++) {
        f->edges[i]->frozen--;
    }
    free(f->edges);
    f->edges = NULL;
    f->n = 0;
}

int chain_check_not_busy(BlockNode *top, BlockNode *end, Error **errp)
{
    GS_CODE();
    for (BlockNode *bs = top; bs && bs != end; bs = chain_next(bs)) {
        if (block_job_check_not_busy(bs, errp) < 0) {
            return -EBUSY;
        }
    }
    return 0;
}

/* GS, coroutine: the header of overlay names base (or nothing); an
 * overlay open read-only is reopened read-write for it and back, as QEMU's
 * bdrv_change_backing_file() callers do. */
static int coroutine_fn write_backing_name(BlockNode *overlay, BlockNode *base,
                                           const char *backing_file,
                                           Error **errp) GS
{
    const char *name = base ? (backing_file ? backing_file : base->filename) : NULL;
    const char *fmt = base ? base->drv->format_name : NULL;
    bool ro = overlay->read_only;

    if (!overlay->drv->change_backing_file) {
        return 0;               /* the format records no backing name */
    }
    if (ro && bdrv_co_reopen_set_read_only(overlay, false, errp) < 0) {
        return -EACCES;
    }
    int ret = overlay->drv->change_backing_file(overlay, name, fmt, errp);
    if (ro) {
        bdrv_co_reopen_set_read_only(overlay, true, ret < 0 ? NULL : errp);
    }
    return ret;
}

/* GS, coroutine: sets overlay's backing edge under the write lock. */
static int set_backing(BlockNode *overlay, BlockNode *backing, Error **errp) GS
{
    bdrv_graph_wrlock();
    int ret = bdrv_set_backing_locked(overlay, backing, errp);
    bdrv_graph_wrunlock();
    return ret;
}

int coroutine_fn chain_replace_backing(BlockNode *overlay, BlockNode *base,
                                       const char *backing_file, Error **errp)
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    BlockNode *old = overlay->backing ? overlay->backing->node : NULL;
    bdrv_graph_rdunlock_main_loop();
    BlockNode *nodes[] = { overlay, old, base };
    int n = ARRAY_SIZE(nodes);

    bdrv_co_quiesce_nodes_begin(nodes, n);
    int ret = set_backing(overlay, base, errp);
    if (ret == 0) {
        ret = write_backing_name(overlay, base, backing_file, errp);
        if (ret < 0) {
            set_backing(overlay, old, NULL);   /* the old shape: no conflict */
        }
    }
    bdrv_co_quiesce_nodes_end(nodes, n);
    return ret;
}

void coroutine_fn chain_drop_filter(BlockNode **filter, BlockNode *to)
{
    Error *err = NULL;

    GS_CODE();
    if (!*filter) {
        return;
    }
    if (bdrv_co_remove_filter(*filter, to, &err) < 0) {
        error_report_err(err);  /* cannot happen: the shape before the job */
        return;
    }
    bdrv_co_unref(*filter);
    *filter = NULL;
}

/* ------------------------------------------------------------ the copy */

int coroutine_fn chain_needs_copy(BlockNode *top, BlockNode *base,
                                  int64_t offset, int64_t bytes, int64_t *pnum)
{
    int64_t n = 0;

    IO_CODE();
    int ret = bdrv_co_block_status(top, false, offset, bytes, &n, NULL, NULL);
    if (ret >= 0 && (ret & BDRV_BLOCK_ALLOCATED)) {
        ret = 0;
    } else if (ret >= 0 && top->backing) {
        ret = chain_is_allocated_above(top->backing->node, base, offset, n, &n);
    } else if (ret >= 0) {
        ret = 0;                /* no backing (any more): nothing to copy */
    }
    *pnum = n;
    return ret;
}

/* I/O: copies [off, off+bytes) from src to dst; *is_read says which half
 * failed. */
static int coroutine_fn chain_copy(const ChainCopy *c, int64_t off,
                                   int64_t bytes, void *buf, bool *is_read)
{
    IOVector v;

    iov_init_buf(&v, buf, bytes);
    *is_read = true;
    int ret = blk_co_preadv(c->src, off, bytes, &v, 0);
    if (ret < 0) {
        return ret;
    }
    *is_read = false;
    return blk_co_pwritev(c->dst, off, bytes, &v, c->write_flags);
}

/* I/O: one chunk from off: *n bytes handled (0 on error), 1 if data was
 * written, 0 if not, or -errno (*is_read says of which half). */
static int coroutine_fn chain_chunk(const ChainCopy *c, int64_t off,
                                    int64_t bytes, void *buf, int64_t *n,
                                    bool *is_read)
{
    *is_read = true;
    bdrv_graph_co_rdlock();
    int ret = c->needs_copy(c->top, c->base, off, bytes, n);
    bdrv_graph_co_rdunlock();
    if (ret > 0) {
        ret = chain_copy(c, off, *n, buf, is_read);
        ret = ret < 0 ? ret : 1;
    }
    if (ret < 0) {
        *n = 0;
    }
    return ret;
}

/* I/O: the policy's answer to error ret on the chunk at off: how many
 * bytes to go on by (0: retry), or -1: stop the loop. */
static int64_t coroutine_fn chain_on_error(Job *job, const ChainCopy *c,
                                           int ret, bool is_read, int64_t chunk)
{
    BlockErrorAction a = job_error_action(job, c->on_error, is_read, ret);

    if (a == BLOCK_ERROR_ACTION_REPORT) {
        return -1;
    }
    if (a == BLOCK_ERROR_ACTION_IGNORE && c->ignore_skips) {
        return chunk;
    }
    return 0;                   /* stop: after the pause; commit's ignore */
}

int coroutine_fn chain_copy_loop(Job *job, const ChainCopy *c)
{
    int64_t len = blk_getlength(c->src), n = 0, delay = 0;
    void *buf = NULL;
    int error = 0;

    if (posix_memalign(&buf, 4096, CHAIN_CHUNK)) {
        return -ENOMEM;
    }
    job_progress_set_remaining(job, len);
    for (int64_t off = 0; off < len; off += n) {
        bool is_read;
        n = 0;
        if (job_sleep_ns(job, delay)) {
            break;
        }
        delay = 0;
        int64_t cur = MIN(len, blk_getlength(c->src));   /* a shrunk top */
        if (off >= cur) {
            break;
        }
        int64_t chunk = MIN(CHAIN_CHUNK, cur - off);
        int ret = chain_chunk(c, off, chunk, buf, &n, &is_read);
        if (ret < 0) {
            n = chain_on_error(job, c, ret, is_read, chunk);
            if (n != 0) {               /* report, or a skip: the job fails */
                error = error ? error : ret;
            }
            if (n < 0) {
                break;
            }
        }
        job_progress_update(job, n);
        if (ret > 0) {
            delay = job_ratelimit_delay_ns(job, n);
        }
    }
    free(buf);
    return error;
}

/*
 * run — lock: none (the chunks take the graph read lock); in flight: the
 * job's own requests only; threads: the job's coroutine on its IOThread.
 * QEMU's stream_run: stop retries the chunk after the pause, ignore skips
 * it and the job fails at the end, report fails now.
 */
static int coroutine_fn stream_run(Job *job, Error **errp)
{
    StreamJob *s = (StreamJob *)job;
    ChainCopy c = {
        .src = s->blk, .dst = s->blk,
        .write_flags = BDRV_REQ_WRITE_UNCHANGED | BDRV_REQ_IF_UNALLOCATED,
        .top = s->top, .base = s->base, .needs_copy = chain_needs_copy,
        .on_error = s->on_error, .ignore_skips = true,
    };

    return chain_copy_loop(job, &c);
}

/* ------------------------------------------------------------ finalization */

/* prepare — lock: GS, coroutine on the main loop; in flight: none of the
 * job's; threads: main.  The filter goes, then top's backing becomes base
 * in one quiesced section and the header names it; the nodes in between
 * are released when the job's backends go (clean). */
static int coroutine_fn stream_prepare(Job *job) GS
{
    StreamJob *s = (StreamJob *)job;
    Error *err = NULL;

    chain_thaw(&s->frozen);
    chain_drop_filter(&s->filter, s->top);
    int ret = chain_replace_backing(s->top, s->base, s->backing_file, &err);
    if (ret < 0) {
        error_propagate(&job->err, err);
    }
    return ret;
}

/* clean — lock: GS, coroutine on the main loop; in flight: none of the
 * job's; threads: main.  Success or not, before the backends go; the
 * filter first (it writes into top: top cannot be read-only under it). */
static void coroutine_fn stream_clean(Job *job) GS
{
    StreamJob *s = (StreamJob *)job;

    chain_thaw(&s->frozen);
    chain_drop_filter(&s->filter, s->top);
    chain_restore_ro(&s->common, s->top, &s->top_was_ro);
}

/* free — lock: GS; in flight: none; threads: main. */
static void stream_free(Job *job) GS
{
    free(((StreamJob *)job)->backing_file);
}

static const JobDriver stream_driver = {
    .type = "stream",
    .instance_size = sizeof(StreamJob),
    .run = stream_run,
    .prepare = stream_prepare,
    .clean = stream_clean,
    .free = stream_free,
};

/* ------------------------------------------------------------ start */

/* Everything a user other than the job may do with a node in the chain
 * between top and base: read it.  No writer may change what is copied. */
#define CHAIN_SHARED (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED)

/* GS, coroutine: the job holds every node from below top down to base
 * (exclusive), so none of them can be deleted or written meanwhile. */
static int coroutine_fn hold_chain(BlockJob *bjob, BlockNode *from,
                                   BlockNode *base, Error **errp) GS
{
    for (BlockNode *bs = from; bs && bs != base; bs = chain_next(bs)) {
        if (!block_job_add_node(bjob, bjob->job.id, bs, 0,
                                CHAIN_SHARED, errp)) {
            return -EBUSY;
        }
    }
    return 0;
}

/* GS, coroutine: the job's hold on the chain; -errno with *errp set. */
static int coroutine_fn stream_setup(StreamJob *s, Error **errp) GS
{
    int ret = hold_chain(&s->common, chain_next(s->top), s->base, errp);

    if (ret == 0 && chain_freeze(&s->frozen, s->top, s->base) < 0) {
        error_setg(errp, "Out of memory");
        ret = -ENOMEM;
    }
    return ret;
}

/* GS: top can be streamed into and no job holds its chain already. */
static int stream_check(BlockNode *top, BlockNode *base, Error **errp) GS
{
    if (!(top->supported_write_flags & BDRV_REQ_IF_UNALLOCATED)) {
        error_setg(errp, "Node '%s' (driver '%s') cannot be streamed into",
                   top->node_name, top->drv->format_name);
        return -ENOTSUP;
    }
    return chain_check_not_busy(top, base, errp);
}

/* GS: the last node streamed from, above base (QEMU's base_overlay, the
 * copy-on-read filter's bottom); NULL when base is NULL (everything). */
static BlockNode *stream_bottom(BlockNode *top, BlockNode *base) GS
{
    BlockNode *bottom = top;

    if (!base) {
        return NULL;
    }
    for (BlockNode *bs = top; bs && bs != base; bs = chain_next(bs)) {
        bottom = bs;
    }
    return bottom;
}

/* GS, coroutine: a copy-on-read filter above top bounded by base, named
 * name (NULL: automatic); NULL with *errp set and nothing changed. */
static BlockNode *coroutine_fn stream_insert_filter(BlockNode *top,
                                                    BlockNode *base,
                                                    const char *name,
                                                    Error **errp) GS
{
    BlockNode *filter = bdrv_co_open_internal(&bdrv_copy_on_read, name, errp);

    if (!filter) {
        return NULL;
    }
    copy_on_read_set_bottom(filter, stream_bottom(top, base));
    if (bdrv_co_insert_filter(filter, top, errp) < 0) {
        bdrv_co_unref(filter);
        return NULL;
    }
    return filter;
}

/* GS, coroutine: the job and its backends, the filter above top; on
 * error everything is undone (top read-only again if it was). */
static StreamJob *coroutine_fn stream_create(const ChainJobParams *p,
                                             BlockNode *top, BlockNode *base,
                                             bool was_ro, Error **errp) GS
{
    BlockNode *filter = stream_insert_filter(top, base, p->filter_node_name,
                                             errp);
    StreamJob *s = NULL;

    /* top: the export and others keep writing and resizing */
    if (filter) {
        s = block_job_create(p->job_id, &stream_driver, top,
                             BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED,
                             BLK_PERM_ALL, p->speed, p->auto_finalize,
                             p->auto_dismiss, block_job_default_iothread(), errp);
    }
    if (!s) {
        if (filter && bdrv_co_remove_filter(filter, top, NULL) == 0) {
            bdrv_co_unref(filter);
        }
        chain_restore_ro(NULL, top, &was_ro);
        return NULL;
    }
    s->top = top;
    s->base = base;
    s->filter = filter;
    s->top_was_ro = was_ro;
    return s;
}

int coroutine_fn stream_start(const ChainJobParams *p, BlockNode *top,
                              BlockNode *base, Error **errp)
{
    bool was_ro;

    GS_CODE();
    if (stream_check(top, base, errp) < 0 ||
        chain_open_rw(top, &was_ro, errp) < 0) {
        return -EBUSY;
    }
    StreamJob *s = stream_create(p, top, base, was_ro, errp);
    if (!s) {
        return -EINVAL;
    }
    s->blk = block_job_blk(&s->common);
    s->on_error = p->on_error;
    s->backing_file = p->backing_file ? strdup(p->backing_file) : NULL;
    int ret = stream_setup(s, errp);
    if (ret < 0) {
        chain_thaw(&s->frozen);
        chain_drop_filter(&s->filter, s->top);
        chain_restore_ro(&s->common, top, &s->top_was_ro);
        block_job_early_fail(&s->common);
        return ret;
    }
    job_start(&s->common.job);
    return 0;
}
