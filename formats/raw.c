/*
 * raw.c — the `raw` format driver: the image is its file, optionally only
 * the window [offset, offset + size) of it.
 *
 * Without a window raw behaves like a filter: requests pass to the file
 * child unchanged, permissions pass through, truncate resizes the file.
 * With a window it shifts requests by `offset` and keeps them inside
 * `size`; the file may then not be resized under it.
 *
 * The probing hole.  When nobody said "this is raw" and probing guessed it
 * (bs->probed), the guest owns sector 0; a guest that writes a qcow2 header
 * there would turn the image into a qcow2 at the next probe, with a backing
 * file of its choosing (any file the host can read).  So every request that
 * changes the first 512 bytes of a probed raw node is checked: the new
 * first sector is probed, and anything that does not probe as raw fails
 * with -EPERM.  Those requests are serialised by a CoMutex so two partial
 * writes cannot assemble a header between them; nothing else is slowed.
 *
 * Thread-safety: the state is written at open (GS) and read-only afterwards,
 * except the length (atomic, in the node) and the sector-0 mutex.
 */
#include <errno.h>
#include <string.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"

#define PROBE_SECTOR 512

extern const BlockDriver bdrv_raw;   /* defined at the end of this file */

typedef struct RawState {
    BlockChild *file;
    uint64_t offset;
    bool has_size;
    /* Only for probed nodes: requests that change sector 0 take it. */
    CoMutex sector0_lock;
} RawState;

static const BlockOptionDesc raw_options[] = {
    { "file", OPT_CHILD, true, NULL, "the node holding the image" },
    { "offset", OPT_SIZE, false, NULL, "where the image starts in the file (default 0)" },
    { "size", OPT_SIZE, false, NULL, "image size (default: up to the end of the file)" },
    { NULL },
};

/* Both (pure). */
static bool has_window(const RawState *s)
{
    return s->offset || s->has_size;
}

/*
 * probe — pure function: raw claims every image with the lowest score, so
 * it wins only when no other format recognises the image.
 */
static int raw_probe(const uint8_t *buf, int len, const char *filename)
{
    return 1;
}

/* ------------------------------------------------------------------------
 * Open (GS)
 */

/* GS helper of open (pure): checks offset/size against the file, with
 * QEMU's rules and messages. */
static int check_window(RawState *s, int64_t offset, bool has_size, int64_t size,
                        int64_t file_len, Error **errp)
{
    if (offset < 0 || size < 0) {
        error_setg(errp, "Parameter '%s' must not be negative",
                   offset < 0 ? "offset" : "size");
        return -EINVAL;
    }
    if (offset > file_len) {
        error_setg(errp, "Offset (%lld) cannot be greater than size of the "
                   "containing file (%lld)", (long long)offset, (long long)file_len);
        return -EINVAL;
    }
    if (has_size && file_len - offset < size) {
        error_setg(errp, "The sum of offset (%lld) and size (%lld) has to be "
                   "smaller or equal to the actual size of the containing "
                   "file (%lld)", (long long)offset, (long long)size,
                   (long long)file_len);
        return -EINVAL;
    }
    /* A size that is not a whole number of sectors would be rounded up by
     * sector-based users and leak out of the window. */
    if (has_size && !IS_ALIGNED(size, BDRV_SECTOR_SIZE)) {
        error_setg(errp, "Specified size is not multiple of %d", BDRV_SECTOR_SIZE);
        return -EINVAL;
    }
    return 0;
}

/*
 * open — lock: GS, in a coroutine on the main loop; in flight: none;
 * threads: main only.  The window is read before the child is attached
 * because child_perm depends on it.
 */
static int coroutine_fn raw_open(BlockNode *bs, json_t *options, Error **errp) GS
{
    GS_CODE();
    RawState *s = bs->opaque;
    int64_t offset = opt_int(options, "offset", 0);
    int64_t size = opt_int(options, "size", 0);
    int64_t file_len;
    BlockNode *file;
    int ret;

    s->offset = offset > 0 ? (uint64_t)offset : 0;
    s->has_size = json_object_get(options, "size") != NULL;
    co_mutex_init(&s->sector0_lock);

    s->file = bdrv_co_open_child(bs, options, "file",
                                 has_window(s) ? BDRV_CHILD_DATA | BDRV_CHILD_PRIMARY
                                               : BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY,
                                 false, errp);
    if (!s->file) {
        return -EINVAL;
    }
    bdrv_graph_rdlock_main_loop();
    file = s->file->node;
    file_len = bdrv_getlength(file);
    ret = check_window(s, offset, s->has_size, size, file_len, errp);
    if (ret == 0) {
        snprintf(bs->filename, sizeof(bs->filename), "%s", file->filename);
        atomic_store(&bs->length, s->has_size ? size : file_len - offset);
        bs->supported_write_flags = BDRV_REQ_FUA & file->supported_write_flags;
        bs->supported_zero_flags = (BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP |
                                    BDRV_REQ_NO_FALLBACK) & file->supported_zero_flags;
    }
    bdrv_graph_rdunlock_main_loop();
    if (ret == 0 && bs->probed && !bs->read_only) {
        warn_report("Image format was not specified for '%s' and probing "
                    "guessed raw; writes that would make sector 0 look like "
                    "another format are refused.  Specify the 'raw' format "
                    "explicitly to remove the restriction.", bs->filename);
    }
    return ret;
}

/*
 * close — lock: GS; in flight: none (drained); threads: main only.
 * The core detaches the file child.
 */
static void coroutine_fn raw_close(BlockNode *bs) GS
{
    GS_CODE();
    RawState *s = bs->opaque;

    s->file = NULL;
}

/*
 * child_perm — lock: GS; in flight: may be; threads: main only.
 * Passes the parents' needs through (plus consistent read, which reading the
 * image needs).  A writable window must not see the file resized beneath
 * it, so RESIZE is not shared then.
 */
static void raw_child_perm(BlockNode *bs, BlockChild *c, BdrvChildRole role,
                           uint64_t perm, uint64_t shared,
                           uint64_t *nperm, uint64_t *nshared) GS
{
    GS_CODE();
    RawState *s = bs->opaque;

    *nperm = perm | BLK_PERM_CONSISTENT_READ;
    *nshared = shared;
    if (!bs->read_only && has_window(s)) {
        *nshared &= ~(uint64_t)BLK_PERM_RESIZE;
    }
}

/*
 * refresh_limits — lock: GS; in flight: none; threads: main only.
 * The file's limits, except the request alignment: raw itself takes any
 * byte range (a window need not be aligned, sector 0 is guarded byte by
 * byte), and the file node aligns what reaches it.  Aligning here as well
 * would stretch a read at the unaligned end of an image past that end.
 */
static void raw_refresh_limits(BlockNode *bs) GS
{
    GS_CODE();
    RawState *s = bs->opaque;

    if (!s->file) {
        return;
    }
    bdrv_graph_rdlock_main_loop();
    bs->bl = s->file->node->bl;
    bdrv_graph_rdunlock_main_loop();
    bs->bl.request_alignment = 1;
}

/* ------------------------------------------------------------------------
 * I/O (thread-safe)
 */

/* I/O: shifts a request into the window; refuses what leaves it (io.c checks the
 * node length already, this keeps the window safe on its own). */
static int window_offset(BlockNode *bs, int64_t *offset, int64_t bytes,
                         bool is_write)
{
    RawState *s = bs->opaque;
    int64_t len = bdrv_getlength(bs);

    if (s->has_size && (*offset > len || bytes > len - *offset)) {
        return is_write ? -ENOSPC : -EINVAL;
    }
    if (*offset > INT64_MAX - (int64_t)s->offset) {
        return -EINVAL;
    }
    *offset += s->offset;
    return 0;
}

/* I/O (pure). */
static bool touches_sector0(BlockNode *bs, int64_t offset, int64_t bytes)
{
    return bs->probed && offset < PROBE_SECTOR && bytes > 0;
}

/* I/O: would this first sector be probed as raw?  Every registered format
 * is asked (bdrv_probe_format is I/O-or-GS), so a format added later is
 * guarded too. */
static bool probes_as_raw(const uint8_t *buf, int len, const char *filename)
{
    return bdrv_probe_format(buf, len, filename) == &bdrv_raw;
}

/*
 * Would sector 0 still probe as raw after writing [offset, offset + bytes)
 * with the data in qiov (zeroes when qiov is NULL)?  Builds the new sector
 * from the current one and the request.  Caller holds sector0_lock.
 */
static int coroutine_fn check_new_sector0(BlockNode *bs, int64_t offset,
                                          int64_t bytes, IOVector *qiov,
                                          size_t qiov_offset) GRAPH_RDLOCK
{
    RawState *s = bs->opaque;
    uint8_t buf[PROBE_SECTOR];
    int len = (int)MIN((int64_t)PROBE_SECTOR, bdrv_getlength(bs));
    int64_t end = MIN(offset + bytes, (int64_t)len);
    int ret;

    if (offset > 0 || end < len) {
        ret = bdrv_co_pread(s->file, s->offset, len, buf, 0);
        if (ret < 0) {
            return ret;
        }
    }
    if (qiov) {
        iov_to_buf(qiov, qiov_offset, buf + offset, end - offset);
    } else {
        memset(buf + offset, 0, end - offset);
    }
    return probes_as_raw(buf, len, bs->filename) ? 0 : -EPERM;
}

/*
 * co_preadv — lock: graph read lock (I/O); in flight: yes, any number;
 * threads: yes.
 */
static int coroutine_fn raw_co_preadv(BlockNode *bs, int64_t offset,
                                      int64_t bytes, IOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags) GRAPH_RDLOCK
{
    RawState *s = bs->opaque;
    int ret = window_offset(bs, &offset, bytes, false);

    return ret < 0 ? ret
                   : bdrv_co_preadv(s->file, offset, bytes, qiov, qiov_offset, flags);
}

/* The three request kinds that change content. */
typedef enum { RAW_WRITE, RAW_ZEROES, RAW_DISCARD } RawChange;

static int coroutine_fn forward_change(BlockNode *bs, RawChange kind,
                                       int64_t offset, int64_t bytes,
                                       IOVector *qiov, size_t qiov_offset,
                                       BdrvRequestFlags flags) GRAPH_RDLOCK
{
    RawState *s = bs->opaque;
    int ret = window_offset(bs, &offset, bytes, true);

    if (ret < 0) {
        return ret;
    }
    switch (kind) {
    case RAW_WRITE:
        return bdrv_co_pwritev(s->file, offset, bytes, qiov, qiov_offset, flags);
    case RAW_ZEROES:
        return bdrv_co_pwrite_zeroes(s->file, offset, bytes, flags);
    default:
        return bdrv_co_pdiscard(s->file, offset, bytes);
    }
}

/* Forwards a change, guarding sector 0 of a probed image.  A discard is
 * treated as writing zeroes: that is what the range may read as afterwards. */
static int coroutine_fn guarded_change(BlockNode *bs, RawChange kind,
                                       int64_t offset, int64_t bytes,
                                       IOVector *qiov, size_t qiov_offset,
                                       BdrvRequestFlags flags) GRAPH_RDLOCK
{
    RawState *s = bs->opaque;
    int ret;

    if (!touches_sector0(bs, offset, bytes)) {
        return forward_change(bs, kind, offset, bytes, qiov, qiov_offset, flags);
    }
    co_mutex_lock(&s->sector0_lock);
    ret = check_new_sector0(bs, offset, bytes,
                            kind == RAW_WRITE ? qiov : NULL, qiov_offset);
    if (ret == 0) {
        ret = forward_change(bs, kind, offset, bytes, qiov, qiov_offset, flags);
    }
    co_mutex_unlock(&s->sector0_lock);
    return ret;
}

/*
 * co_pwritev — lock: graph read lock (I/O); in flight: yes, any number;
 * threads: yes (sector-0 writes of a probed image serialised).
 */
static int coroutine_fn raw_co_pwritev(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags) GRAPH_RDLOCK
{
    return guarded_change(bs, RAW_WRITE, offset, bytes, qiov, qiov_offset, flags);
}

/*
 * co_pwrite_zeroes — lock: graph read lock (I/O); in flight: yes; threads: yes.
 */
static int coroutine_fn raw_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                             int64_t bytes,
                                             BdrvRequestFlags flags) GRAPH_RDLOCK
{
    return guarded_change(bs, RAW_ZEROES, offset, bytes, NULL, 0, flags);
}

/*
 * co_pdiscard — lock: graph read lock (I/O); in flight: yes; threads: yes.
 */
static int coroutine_fn raw_co_pdiscard(BlockNode *bs, int64_t offset,
                                        int64_t bytes) GRAPH_RDLOCK
{
    return guarded_change(bs, RAW_DISCARD, offset, bytes, NULL, 0, 0);
}

/*
 * co_flush — lock: graph read lock (I/O); in flight: yes; threads: yes.
 * raw caches nothing; io.c then flushes the file child.
 */
static int coroutine_fn raw_co_flush(BlockNode *bs) GRAPH_RDLOCK
{
    return 0;
}

/*
 * co_block_status — lock: graph read lock (I/O); in flight: yes; threads:
 * yes.  Everything is defined by this layer and lives at the same place in
 * the file; DATA/ZERO come from the file (RECURSE).
 */
static int coroutine_fn raw_co_block_status(BlockNode *bs, int64_t offset,
                                            int64_t bytes, int64_t *pnum,
                                            int64_t *map, BlockNode **file)
    GRAPH_RDLOCK
{
    RawState *s = bs->opaque;

    *pnum = bytes;
    *map = offset + (int64_t)s->offset;
    *file = s->file->node;
    return BDRV_BLOCK_OFFSET_VALID | BDRV_BLOCK_RECURSE | BDRV_BLOCK_ALLOCATED;
}

/*
 * co_truncate — lock: graph read lock (I/O); in flight: yes; threads: one
 * resize per node at a time (io.c serialises).  Only without a window: a
 * window is a fixed part of the file.
 */
static int coroutine_fn raw_co_truncate(BlockNode *bs, int64_t offset,
                                        bool exact, Error **errp) GRAPH_RDLOCK
{
    RawState *s = bs->opaque;
    int ret;

    if (has_window(s)) {
        error_setg(errp, "Cannot resize a raw node with an offset or size");
        return -ENOTSUP;
    }
    ret = bdrv_co_truncate(s->file, offset, exact, errp);
    if (ret == 0) {
        atomic_store_explicit(&bs->length, offset, memory_order_release);
    }
    return ret;
}

/* ------------------------------------------------------------------------
 * Reopen (GS; blockdev-reopen, see src/reopen.c)
 */

/* Both (pure): the window options of the two definitions differ; unlike
 * most options, leaving one out is a change here (back to "no window"). */
static bool window_option_changed(json_t *old_opts, json_t *new_opts,
                                  const char *key)
{
    json_t *o = json_object_get(old_opts, key);
    json_t *n = json_object_get(new_opts, key);
    return (o == NULL) != (n == NULL) || (o && !json_equal(o, n));
}

/*
 * reopen_prepare — lock: GS; in flight: none (quiesced); threads: main only.
 * The window (offset, size) is fixed: the file edge's role and child_perm
 * depend on it.  Everything else passes through (read-only and the cache
 * options reach the file node through its own reopen).
 */
static int coroutine_fn raw_reopen_prepare(BlockReopenState *rs, Error **errp) GS
{
    GS_CODE();
    static const char *const window[] = { "offset", "size" };

    for (size_t i = 0; i < ARRAY_SIZE(window); i++) {
        if (window_option_changed(rs->bs->options, rs->options, window[i])) {
            error_setg(errp, "Cannot change the option '%s'", window[i]);
            return -EINVAL;
        }
    }
    return 0;
}

/*
 * reopen_commit — lock: GS; in flight: none (quiesced); threads: main only.
 * The file child may be another node now: without a window the node is as
 * long as its file.
 */
static void raw_reopen_commit(BlockReopenState *rs) GS
{
    GS_CODE();
    BlockNode *bs = rs->bs;
    RawState *s = bs->opaque;

    if (has_window(s)) {
        return;
    }
    bdrv_graph_rdlock_main_loop();
    atomic_store(&bs->length, bdrv_getlength(s->file->node));
    bdrv_graph_rdunlock_main_loop();
}

/*
 * reopen_abort — lock: GS; in flight: none; threads: main only.
 * Nothing was prepared.
 */
static void raw_reopen_abort(BlockReopenState *rs) GS
{
    GS_CODE();
}

const BlockDriver bdrv_raw = {
    .format_name = "raw",
    .instance_size = sizeof(RawState),
    .is_format = true,
    .options = raw_options,
    .probe = raw_probe,

    .open = raw_open,
    .close = raw_close,
    .child_perm = raw_child_perm,
    .refresh_limits = raw_refresh_limits,
    .reopen_prepare = raw_reopen_prepare,
    .reopen_commit = raw_reopen_commit,
    .reopen_abort = raw_reopen_abort,

    .co_preadv = raw_co_preadv,
    .co_pwritev = raw_co_pwritev,
    .co_pwrite_zeroes = raw_co_pwrite_zeroes,
    .co_pdiscard = raw_co_pdiscard,
    .co_flush = raw_co_flush,
    .co_block_status = raw_co_block_status,
    .co_truncate = raw_co_truncate,
};
