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
 * format's; a job-side lock would need a filter node above top that every
 * writer goes through.  Only formats that list IF_UNALLOCATED in
 * supported_write_flags (qcow2) can be streamed into.
 *
 * Threading: stream_start and the finalization callbacks are GS (main
 * thread, coroutines on the main loop); run is the job's coroutine.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block-io.h"
#include "driver.h"
#include "jobs/stream.h"

#define STREAM_CHUNK (512 * 1024)   /* QEMU's: bytes checked and copied at once */

typedef struct StreamJob {
    BlockJob common;
    /* Constant while the job exists (the job's backends hold the nodes). */
    BlockNode *top, *base;       /* base NULL: stream the whole chain */
    BlockBackend *blk;           /* on top: read, write-unchanged */
    BlockdevOnError on_error;
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

BlockNode *chain_next(BlockNode *bs)
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    BlockChild *c = bs->backing ? bs->backing : bs->drv->is_filter ? bs->file : NULL;
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
    for (BlockNode *bs = top; bs && bs != end && bs->backing;
         bs = bs->backing->node) {
        BlockChild **e = realloc(f->edges, (f->n + 1) * sizeof(*e));
        if (!e) {
            bdrv_graph_rdunlock_main_loop();
            return -ENOMEM;
        }
        f->edges = e;
        f->edges[f->n++] = bs->backing;
        bs->backing->frozen++;
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
        BlockJob *bjob = block_job_holding(bs);
        if (bjob) {
            error_setg(errp, "Node '%s' is busy: block device is in use by "
                       "block job: %s", bs->node_name, bjob->job.driver->type);
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

/* ------------------------------------------------------------ the copy */

/* I/O: is [off, off+bytes) to be copied?  1 / 0 for *pnum bytes, or
 * -errno.  Allocated in top: no; else allocated between top and base. */
static int coroutine_fn stream_needs_copy(StreamJob *s, int64_t off,
                                          int64_t bytes, int64_t *pnum)
{
    int64_t n = 0;

    bdrv_graph_co_rdlock();
    int ret = bdrv_co_block_status(s->top, false, off, bytes, &n, NULL, NULL);
    if (ret >= 0 && (ret & BDRV_BLOCK_ALLOCATED)) {
        ret = 0;
    } else if (ret >= 0 && s->top->backing) {
        ret = chain_is_allocated_above(s->top->backing->node, s->base, off,
                                       n, &n);
    } else if (ret >= 0) {
        ret = 0;                /* no backing (any more): nothing to copy */
    }
    bdrv_graph_co_rdunlock();
    *pnum = n;
    return ret;
}

/* I/O: copies [off, off+bytes) into top (see the essay at the top);
 * *is_read says which half failed. */
static int coroutine_fn stream_copy(StreamJob *s, int64_t off, int64_t bytes,
                                    void *buf, bool *is_read)
{
    IOVector v;

    iov_init_buf(&v, buf, bytes);
    *is_read = true;
    int ret = blk_co_preadv(s->blk, off, bytes, &v, 0);
    if (ret < 0) {
        return ret;
    }
    *is_read = false;
    return blk_co_pwritev(s->blk, off, bytes, &v,
                          BDRV_REQ_WRITE_UNCHANGED | BDRV_REQ_IF_UNALLOCATED);
}

/* I/O: one chunk from off: *n bytes handled (0 on error), *copied if
 * data was written. */
static int coroutine_fn stream_chunk(StreamJob *s, int64_t off, int64_t bytes,
                                     void *buf, int64_t *n, bool *copied,
                                     bool *is_read)
{
    *copied = false;
    *is_read = true;
    int ret = stream_needs_copy(s, off, bytes, n);
    if (ret > 0) {
        ret = stream_copy(s, off, *n, buf, is_read);
        *copied = ret == 0;
    }
    return ret < 0 ? ret : 0;
}

/*
 * run — lock: none; in flight: the job's own requests only; threads: the
 * job's coroutine.  QEMU's stream_run: error policy per chunk (stop:
 * retry the chunk after the pause; ignore: go on, the job fails at the
 * end so that the chain is not cut short of data; report: fail now).
 */
static int coroutine_fn stream_run(Job *job, Error **errp)
{
    StreamJob *s = (StreamJob *)job;
    int64_t len = blk_getlength(s->blk), n = 0, delay = 0;
    void *buf = NULL;
    int error = 0;

    if (posix_memalign(&buf, 4096, STREAM_CHUNK)) {
        return -ENOMEM;
    }
    job_progress_set_remaining(job, len);
    for (int64_t off = 0; off < len; off += n) {
        bool copied, is_read;
        n = 0;
        if (job_sleep_ns(job, delay)) {
            break;
        }
        delay = 0;
        int64_t cur = MIN(len, blk_getlength(s->blk));   /* a shrunk top */
        if (off >= cur) {
            break;
        }
        int ret = stream_chunk(s, off, MIN(STREAM_CHUNK, cur - off), buf, &n,
                               &copied, &is_read);
        if (ret < 0) {
            BlockErrorAction a = job_error_action(job, s->on_error, is_read, ret);
            if (a == BLOCK_ERROR_ACTION_STOP) {
                n = 0;
                continue;
            }
            error = error ? error : ret;
            if (a == BLOCK_ERROR_ACTION_REPORT) {
                break;
            }
            n = MIN(STREAM_CHUNK, cur - off);   /* ignore: skip the chunk */
        }
        job_progress_update(job, n);
        if (copied) {
            delay = job_ratelimit_delay_ns(job, n);
        }
    }
    free(buf);
    return error;
}

/* ------------------------------------------------------------ finalization */

/* prepare — lock: GS, coroutine on the main loop; in flight: none of the
 * job's; threads: main.  top's backing becomes base in one quiesced
 * section, the header names it; the nodes in between are released when
 * the job's backends go (clean). */
static int coroutine_fn stream_prepare(Job *job) GS
{
    StreamJob *s = (StreamJob *)job;
    Error *err = NULL;

    chain_thaw(&s->frozen);
    int ret = chain_replace_backing(s->top, s->base, s->backing_file, &err);
    if (ret < 0) {
        error_propagate(&job->err, err);
    }
    return ret;
}

/* clean — lock: GS, coroutine on the main loop; in flight: none of the
 * job's; threads: main.  Success or not, before the backends go. */
static void coroutine_fn stream_clean(Job *job) GS
{
    StreamJob *s = (StreamJob *)job;

    chain_thaw(&s->frozen);
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

int coroutine_fn stream_start(const ChainJobParams *p, BlockNode *top,
                              BlockNode *base, Error **errp)
{
    bool was_ro;

    GS_CODE();
    if (stream_check(top, base, errp) < 0 ||
        chain_open_rw(top, &was_ro, errp) < 0) {
        return -EBUSY;
    }
    /* top: the export and others keep writing and resizing */
    StreamJob *s = block_job_create(p->job_id, &stream_driver, top,
                                    BLK_PERM_CONSISTENT_READ |
                                    BLK_PERM_WRITE_UNCHANGED, BLK_PERM_ALL,
                                    p->speed, p->auto_finalize,
                                    p->auto_dismiss, NULL, errp);
    if (!s) {
        chain_restore_ro(NULL, top, &was_ro);
        return -EINVAL;
    }
    s->top = top;
    s->base = base;
    s->top_was_ro = was_ro;
    s->blk = block_job_blk(&s->common);
    s->on_error = p->on_error;
    s->backing_file = p->backing_file ? strdup(p->backing_file) : NULL;
    int ret = stream_setup(s, errp);
    if (ret < 0) {
        chain_thaw(&s->frozen);
        chain_restore_ro(&s->common, top, &s->top_was_ro);
        block_job_early_fail(&s->common);
        return ret;
    }
    job_start(&s->common.job);
    return 0;
}
