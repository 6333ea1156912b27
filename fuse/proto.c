/*
 * proto.c — the FUSE kernel protocol for a single regular file.
 *
 * One request arrives in one buffer (see fuse-int.h for its layout); its
 * coroutine decodes it, runs it against the export's backend with blk_co_*
 * (which take the graph read lock themselves) and writes the reply with
 * writev() on the fd it came from: the kernel matches replies to requests
 * per cloned fd.  A request that must wait for I/O yields; nothing here
 * polls.
 *
 * Threading class of everything here: I/O.  Runs in a request coroutine on
 * the queue's IOThread; never calls GS code.  Export fields read here are
 * immutable after creation except the attributes (attr_lock) and
 * proto_minor (atomic).
 *
 * Every read, write, write-zeroes and flush goes through io_with_policy(),
 * which applies the export's rerror/werror (io-error.c) to a failure and
 * retries after a stop is resumed; the requests that reach the node (but
 * FLUSH) wait first while the export is paused (held_while_paused).
 *
 * The only inode is the root (nodeid 1): the mountpoint file itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "block-io.h"
#include "fuse/fuse-int.h"

/* Protocol 7.39 names bit 36 of the init flags; our headers stop at 7.38. */
#ifndef FUSE_DIRECT_IO_ALLOW_MMAP
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36)
#endif

#define ATTR_VALID_SEC 1

static const struct fuse_in_header *req_hdr(const FuseRequest *req)
{
    return (const struct fuse_in_header *)req->in;
}

/* The request's argument, or NULL if the request is too short for it. */
static const void *req_arg(const FuseRequest *req, size_t size)
{
    if (req->len < sizeof(struct fuse_in_header) + size) {
        return NULL;
    }
    return req->in + sizeof(struct fuse_in_header);
}

static void reply_iov(FuseRequest *req, int err, struct iovec *data, int ndata)
{
    struct fuse_out_header oh = {
        .len = sizeof(oh),
        .error = -err,
        .unique = req_hdr(req)->unique,
    };
    struct iovec iov[3] = { { &oh, sizeof(oh) } };
    int i;

    for (i = 0; i < ndata && !err; i++) {
        iov[i + 1] = data[i];
        oh.len += data[i].iov_len;
    }
    /* ENOENT: the request was interrupted; ENODEV: the mount is gone. */
    if (writev(req->q->fd, iov, err ? 1 : ndata + 1) < 0 &&
        errno != ENOENT && errno != ENODEV) {
        warn_report("FUSE export '%s': reply failed: %s", req->q->exp->id,
                    strerror(errno));
    }
}

static void reply(FuseRequest *req, int err, const void *data, size_t len)
{
    struct iovec iov = { (void *)data, len };

    reply_iov(req, err, &iov, len ? 1 : 0);
}

static void reply_err(FuseRequest *req, int err)
{
    reply(req, err, NULL, 0);
}

/*
 * The errno a file would give for a block-layer error.  ENOSYS is never
 * passed on: for several opcodes the kernel takes it as "never ask again".
 */
static int blk_errno(int ret)
{
    int err = -ret;

    if (ret >= 0 || err > 4095 || err == ENOSYS) {
        return EIO;
    }
    return err;
}

/* The backend requests the error policy covers. */
typedef enum IoKind { IO_READ, IO_WRITE, IO_ZEROES, IO_FLUSH } IoKind;

typedef struct IoReq {
    IoKind kind;
    int64_t offset, bytes;
    IOVector *qiov;              /* IO_READ, IO_WRITE */
    BdrvRequestFlags flags;
} IoReq;

static int coroutine_fn io_issue(BlockExport *exp, const IoReq *r)
{
    switch (r->kind) {
    case IO_READ:
        return blk_co_preadv(exp->blk, r->offset, r->bytes, r->qiov, r->flags);
    case IO_WRITE:
        return blk_co_pwritev(exp->blk, r->offset, r->bytes, r->qiov, r->flags);
    case IO_ZEROES:
        return blk_co_pwrite_zeroes(exp->blk, r->offset, r->bytes, r->flags);
    case IO_FLUSH:
        return blk_co_flush(exp->blk);
    }
    return -EINVAL;
}

/*
 * One backend request under the export's error policy: rerror for reads,
 * werror for the rest.  Returns >= 0 on success or when the policy ignores
 * the error (a read then returns zeroes), -errno to report.  After a stop,
 * returns only once resumed (and retried) or deleted (-EIO).
 */
static int coroutine_fn io_with_policy(FuseRequest *req, const IoReq *r)
{
    int ret;

    do {
        ret = io_issue(req->q->exp, r);
        if (ret >= 0) {
            return ret;
        }
        ret = fuse_io_error(req, r->kind != IO_READ, ret);
    } while (ret == FUSE_IO_RETRY);
    if (ret == FUSE_IO_IGNORED) {
        if (r->kind == IO_READ) {
            /* the buffer holds an earlier request's data */
            iov_memset(r->qiov, 0, 0, r->bytes);
        }
        return 0;
    }
    return ret;
}

static void fill_attr(BlockExport *exp, int64_t length, struct fuse_attr *a)
{
    memset(a, 0, sizeof(*a));
    a->ino = FUSE_ROOT_ID;
    a->size = length;
    a->blocks = DIV_ROUND_UP((uint64_t)length, 512);
    a->nlink = 1;
    a->blksize = FUSE_EXPORT_PAGE;
    pthread_mutex_lock(&exp->attr_lock);
    a->mode = exp->mode;
    a->uid = exp->uid;
    a->gid = exp->gid;
    a->atime = exp->atime.tv_sec;
    a->atimensec = exp->atime.tv_nsec;
    a->mtime = exp->mtime.tv_sec;
    a->mtimensec = exp->mtime.tv_nsec;
    a->ctime = exp->ctime.tv_sec;
    a->ctimensec = exp->ctime.tv_nsec;
    pthread_mutex_unlock(&exp->attr_lock);
}

static void reply_attr(FuseRequest *req)
{
    BlockExport *exp = req->q->exp;
    struct fuse_attr_out out = { .attr_valid = ATTR_VALID_SEC };
    int64_t length = blk_getlength(exp->blk);

    if (length < 0) {
        reply_err(req, blk_errno(length));
        return;
    }
    fill_attr(exp, length, &out.attr);
    reply(req, 0, &out, sizeof(out));
}

/*
 * INIT.  The kernel holds every other request until this reply is written,
 * so the state set here is visible before any other queue serves anything.
 */
static void do_init(FuseRequest *req)
{
    BlockExport *exp = req->q->exp;
    struct fuse_init_in in = { 0 };
    struct fuse_init_out out = { 0 };
    size_t in_len = req->len - sizeof(struct fuse_in_header);
    uint64_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES |
                    FUSE_INIT_EXT;
    uint64_t offered;

    memcpy(&in, req->in + sizeof(struct fuse_in_header), MIN(in_len, sizeof(in)));
    if (in.major < FUSE_KERNEL_VERSION) {
        reply_err(req, EPROTO);
        return;
    }
    out.major = FUSE_KERNEL_VERSION;
    out.minor = MIN(in.minor, FUSE_KERNEL_MINOR_VERSION);
    if (in.major > FUSE_KERNEL_VERSION) {
        /* The kernel retries INIT with our major. */
        reply(req, 0, &out, FUSE_COMPAT_22_INIT_OUT_SIZE);
        return;
    }
    offered = in.flags;
    if (in.flags & FUSE_INIT_EXT) {
        offered |= (uint64_t)in.flags2 << 32;
    }
    want |= FUSE_DIRECT_IO_ALLOW_MMAP;
    want &= offered;
    out.max_readahead = in.max_readahead;
    out.flags = (uint32_t)want;
    out.flags2 = (uint32_t)(want >> 32);
    out.max_background = 64;
    out.congestion_threshold = 48;
    out.max_write = FUSE_EXPORT_MAX_IO;
    out.time_gran = 1;
    out.max_pages = FUSE_EXPORT_MAX_PAGES;
    atomic_store(&exp->proto_minor, out.minor);
    reply(req, 0, &out, out.minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof(out));
}

/* Grows the node to at least `end` bytes (-EBUSY while a job refuses
 * resizes).  Serialised: two growing writes must not truncate each other
 * back. */
static int coroutine_fn grow_to(BlockExport *exp, int64_t end)
{
    return fuse_export_resize(exp, end, true);
}

static int coroutine_fn set_size(BlockExport *exp, uint64_t size)
{
    int64_t length = blk_getlength(exp->blk);

    if (length < 0) {
        return length;
    }
    if ((int64_t)size == length) {
        return 0;
    }
    if (!exp->writable) {
        return -EROFS;
    }
    if (!exp->growable || size > BDRV_MAX_LENGTH) {
        return -EINVAL;
    }
    return fuse_export_resize(exp, size, false);
}

static void set_time(struct timespec *t, uint64_t sec, uint32_t nsec, bool now)
{
    if (now) {
        clock_gettime(CLOCK_REALTIME, t);
    } else {
        t->tv_sec = sec;
        t->tv_nsec = nsec;
    }
}

static void store_attrs(BlockExport *exp, const struct fuse_setattr_in *in)
{
    pthread_mutex_lock(&exp->attr_lock);
    if (in->valid & FATTR_MODE) {
        exp->mode = S_IFREG | (in->mode & 07777);
    }
    if (in->valid & FATTR_UID) {
        exp->uid = in->uid;
    }
    if (in->valid & FATTR_GID) {
        exp->gid = in->gid;
    }
    if (in->valid & (FATTR_ATIME | FATTR_ATIME_NOW)) {
        set_time(&exp->atime, in->atime, in->atimensec, in->valid & FATTR_ATIME_NOW);
    }
    if (in->valid & (FATTR_MTIME | FATTR_MTIME_NOW)) {
        set_time(&exp->mtime, in->mtime, in->mtimensec, in->valid & FATTR_MTIME_NOW);
    }
    if (in->valid & FATTR_CTIME) {
        set_time(&exp->ctime, in->ctime, in->ctimensec, false);
    }
    pthread_mutex_unlock(&exp->attr_lock);
}

static void coroutine_fn do_setattr(FuseRequest *req)
{
    const struct fuse_setattr_in *in = req_arg(req, sizeof(*in));
    int ret;

    if (!in) {
        reply_err(req, EINVAL);
        return;
    }
    if (in->valid & FATTR_SIZE) {
        ret = set_size(req->q->exp, in->size);
        if (ret < 0) {
            reply_err(req, ret == -EROFS || ret == -EINVAL ? -ret : blk_errno(ret));
            return;
        }
    }
    store_attrs(req->q->exp, in);
    reply_attr(req);
}

static void do_open(FuseRequest *req)
{
    const struct fuse_open_in *in = req_arg(req, sizeof(*in));
    BlockExport *exp = req->q->exp;
    struct fuse_open_out out = { 0 };

    if (!in) {
        reply_err(req, EINVAL);
        return;
    }
    if ((in->flags & O_ACCMODE) != O_RDONLY && !exp->writable) {
        reply_err(req, EROFS);
        return;
    }
    if (exp->direct_io) {
        /* Without PARALLEL_DIRECT_WRITES the kernel serialises all writes
         * to the file on the inode lock. */
        out.open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
    }
    reply(req, 0, &out, sizeof(out));
}

/* Where a READ's data goes: the page-aligned part of the request buffer. */
static uint8_t *data_area(FuseRequest *req)
{
    return req->mem + FUSE_EXPORT_PAGE;
}

static void coroutine_fn do_read(FuseRequest *req)
{
    const struct fuse_read_in *inp = req_arg(req, sizeof(*inp));
    BlockExport *exp = req->q->exp;
    uint64_t offset, size;
    int64_t length;
    IOVector v;
    int ret;

    if (!inp) {
        reply_err(req, EINVAL);
        return;
    }
    /* The data area starts right after fuse_read_in: no overlap. */
    offset = inp->offset;
    size = MIN(inp->size, FUSE_EXPORT_MAX_IO);
    length = blk_getlength(exp->blk);
    if (length < 0) {
        reply_err(req, blk_errno(length));
        return;
    }
    if (offset >= (uint64_t)length || size == 0) {
        reply(req, 0, NULL, 0);             /* EOF: zero bytes */
        return;
    }
    size = MIN(size, (uint64_t)length - offset);
    iov_init_buf(&v, data_area(req), size);
    ret = io_with_policy(req, &(IoReq){ IO_READ, offset, size, &v, 0 });
    if (ret < 0) {
        reply_err(req, blk_errno(ret));
        return;
    }
    reply(req, 0, data_area(req), size);
}

/*
 * How many of `size` bytes at `offset` a write may touch: grows the node
 * when growable (-EBUSY, nothing written, while a job refuses resizes: a
 * whole failure rather than a short write, see diskstack-fuse(7)), else
 * writes up to the end (a short write) or fails with ENOSPC when starting
 * at or after it.  Returns bytes or -errno.  Inside the end: one length
 * check, no lock.
 */
static int64_t coroutine_fn write_extent(BlockExport *exp, uint64_t offset,
                                         uint64_t size)
{
    int64_t length = blk_getlength(exp->blk);
    int ret;

    if (length < 0) {
        return length;
    }
    if (offset + size <= (uint64_t)length) {
        return size;
    }
    if (exp->growable) {
        if (offset + size > BDRV_MAX_LENGTH) {
            return -EFBIG;
        }
        ret = grow_to(exp, offset + size);
        return ret < 0 ? ret : (int64_t)size;
    }
    if (offset >= (uint64_t)length) {
        return -ENOSPC;
    }
    return length - offset;
}

static void coroutine_fn do_write(FuseRequest *req)
{
    const struct fuse_write_in *in = req_arg(req, sizeof(*in));
    BlockExport *exp = req->q->exp;
    struct fuse_write_out out = { 0 };
    uint8_t *payload = req->in + sizeof(struct fuse_in_header) + sizeof(*in);
    int64_t n;
    IOVector v;
    int ret;

    if (!in || req->len < FUSE_WRITE_HDR_LEN + (size_t)in->size ||
        in->offset > INT64_MAX) {
        reply_err(req, EINVAL);
        return;
    }
    if (!exp->writable) {
        reply_err(req, EROFS);
        return;
    }
    n = write_extent(exp, in->offset, in->size);
    if (n < 0) {
        reply_err(req, n == -ENOSPC || n == -EFBIG ? (int)-n : blk_errno(n));
        return;
    }
    if (n > 0) {
        /* No copy: the payload is written straight from the request buffer. */
        iov_init_buf(&v, payload, n);
        ret = io_with_policy(req, &(IoReq){ IO_WRITE, in->offset, n, &v,
                                   exp->writethrough ? BDRV_REQ_FUA : 0 });
        if (ret < 0) {
            reply_err(req, blk_errno(ret));
            return;
        }
    }
    out.size = n;
    reply(req, 0, &out, sizeof(out));
}

/* fallocate mode 0 or ZERO_RANGE without KEEP_SIZE may extend the file. */
static int coroutine_fn fallocate_extend(BlockExport *exp, uint64_t end)
{
    int64_t length = blk_getlength(exp->blk);

    if (length < 0) {
        return length;
    }
    if (end <= (uint64_t)length) {
        return 0;
    }
    if (!exp->growable) {
        return -ENOSPC;
    }
    if (end > BDRV_MAX_LENGTH) {
        return -EFBIG;
    }
    return grow_to(exp, end);
}

/* Zeroes [offset, offset+len) clipped to the current length. */
static int coroutine_fn zero_within(FuseRequest *req, uint64_t offset,
                                    uint64_t len, BdrvRequestFlags flags)
{
    int64_t length = blk_getlength(req->q->exp->blk);

    if (length < 0) {
        return length;
    }
    if (offset >= (uint64_t)length) {
        return 0;
    }
    len = MIN(len, (uint64_t)length - offset);
    return io_with_policy(req, &(IoReq){ IO_ZEROES, offset, len, NULL, flags });
}

static int coroutine_fn fallocate_mode(FuseRequest *req, uint32_t mode,
                                       uint64_t offset, uint64_t len)
{
    BlockExport *exp = req->q->exp;
    bool keep = mode & FALLOC_FL_KEEP_SIZE;
    int ret;

    switch (mode & ~FALLOC_FL_KEEP_SIZE) {
    case 0:
        /* Allocation: nothing to do within the size, grow past it. */
        return keep ? 0 : fallocate_extend(exp, offset + len);
    case FALLOC_FL_PUNCH_HOLE:
        if (!keep) {
            return -EOPNOTSUPP;
        }
        /* A punched range must read back as zeroes: a discard need not. */
        return zero_within(req, offset, len, BDRV_REQ_MAY_UNMAP);
    case FALLOC_FL_ZERO_RANGE:
        if (!keep) {
            ret = fallocate_extend(exp, offset + len);
            if (ret < 0) {
                return ret;
            }
        }
        return zero_within(req, offset, len, 0);
    default:
        return -EOPNOTSUPP;
    }
}

static void coroutine_fn do_fallocate(FuseRequest *req)
{
    const struct fuse_fallocate_in *in = req_arg(req, sizeof(*in));
    BlockExport *exp = req->q->exp;
    int ret;

    if (!in || in->offset > INT64_MAX || in->length > INT64_MAX ||
        in->offset + in->length > INT64_MAX || in->length == 0) {
        reply_err(req, EINVAL);
        return;
    }
    if (!exp->writable) {
        reply_err(req, EROFS);
        return;
    }
    ret = fallocate_mode(req, in->mode, in->offset, in->length);
    if (ret == -EOPNOTSUPP || ret == -ENOSPC || ret == -EFBIG) {
        reply_err(req, -ret);
    } else {
        reply_err(req, ret < 0 ? blk_errno(ret) : 0);
    }
}

static void coroutine_fn do_flush(FuseRequest *req)
{
    BlockExport *exp = req->q->exp;
    int ret = 0;

    if (exp->writable) {
        ret = io_with_policy(req, &(IoReq){ .kind = IO_FLUSH });
    }

    reply_err(req, ret < 0 ? blk_errno(ret) : 0);
}

/*
 * SEEK_DATA / SEEK_HOLE from block status.  A range that reads as zeroes
 * counts as a hole; the end of the file is a hole.
 */
static int64_t coroutine_fn seek_data_hole(BlockExport *exp, int64_t offset,
                                           bool want_data)
{
    int64_t length = blk_getlength(exp->blk);

    if (length < 0) {
        return length;
    }
    if (offset < 0 || offset >= length) {
        return -ENXIO;
    }
    while (offset < length) {
        int64_t pnum = 0;
        int ret = blk_co_block_status(exp->blk, offset, length - offset, &pnum);
        bool is_data;

        if (ret < 0) {
            return ret;
        }
        if (pnum <= 0) {
            return -EIO;
        }
        is_data = !(ret & BDRV_BLOCK_ZERO);
        if (is_data == want_data) {
            return offset;
        }
        offset += pnum;
    }
    return want_data ? -ENXIO : length;
}

static void coroutine_fn do_lseek(FuseRequest *req)
{
    const struct fuse_lseek_in *in = req_arg(req, sizeof(*in));
    struct fuse_lseek_out out = { 0 };
    int64_t ret;

    if (!in || (in->whence != SEEK_DATA && in->whence != SEEK_HOLE) ||
        in->offset > INT64_MAX) {
        reply_err(req, EINVAL);
        return;
    }
    ret = seek_data_hole(req->q->exp, in->offset, in->whence == SEEK_DATA);
    if (ret < 0) {
        reply_err(req, ret == -ENXIO ? ENXIO : blk_errno(ret));
        return;
    }
    out.offset = ret;
    reply(req, 0, &out, sizeof(out));
}

static void do_statfs(FuseRequest *req)
{
    struct fuse_statfs_out out = { 0 };
    int64_t length = blk_getlength(req->q->exp->blk);

    out.st.bsize = FUSE_EXPORT_PAGE;
    out.st.frsize = FUSE_EXPORT_PAGE;
    out.st.blocks = length > 0 ? DIV_ROUND_UP((uint64_t)length, FUSE_EXPORT_PAGE) : 0;
    out.st.files = 1;
    out.st.namelen = NAME_MAX;
    reply(req, 0, &out, sizeof(out));
}

/*
 * The requests held while the export is paused: those that reach the node,
 * except FLUSH.  The kernel sends a FLUSH for every close(2) of every copy
 * of a descriptor, including the implicit ones at exec: holding it would
 * hang any program that forks while holding the file open.  Not holding it
 * is safe: a flush covers only writes that have completed, and the held
 * ones have not (its own failure still goes through werror).
 */
static bool held_while_paused(uint32_t opcode)
{
    switch (opcode) {
    case FUSE_READ: case FUSE_WRITE: case FUSE_FALLOCATE: case FUSE_FSYNC:
    case FUSE_LSEEK:
        return true;
    default:
        return false;
    }
}

/* Operations on the file itself: anything but nodeid 1 does not exist. */
static void coroutine_fn handle_file_op(FuseRequest *req, uint32_t opcode)
{
    if (held_while_paused(opcode) && fuse_wait_running(req) < 0) {
        reply_err(req, EIO);
        return;
    }
    switch (opcode) {
    case FUSE_GETATTR:   reply_attr(req); break;
    case FUSE_SETATTR:   do_setattr(req); break;
    case FUSE_OPEN:      do_open(req); break;
    case FUSE_RELEASE:   reply_err(req, 0); break;
    case FUSE_READ:      do_read(req); break;
    case FUSE_WRITE:     do_write(req); break;
    case FUSE_FALLOCATE: do_fallocate(req); break;
    case FUSE_FLUSH:
    case FUSE_FSYNC:     do_flush(req); break;
    case FUSE_LSEEK:     do_lseek(req); break;
    default:             reply_err(req, ENOSYS); break;
    }
}

void coroutine_fn fuse_handle_request(FuseRequest *req)
{
    const struct fuse_in_header *h = req_hdr(req);

    if (req->len < sizeof(*h) || h->len != req->len) {
        /* Cannot happen with a sane kernel; nothing to reply to. */
        warn_report("FUSE export '%s': malformed request", req->q->exp->id);
        return;
    }
    switch (h->opcode) {
    case FUSE_INIT:         do_init(req); return;
    case FUSE_DESTROY:      reply_err(req, 0); return;
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:    return;          /* no reply */
    case FUSE_STATFS:       do_statfs(req); return;
    case FUSE_LOOKUP:       reply_err(req, ENOENT); return;
    case FUSE_GETATTR: case FUSE_SETATTR: case FUSE_OPEN: case FUSE_RELEASE:
    case FUSE_READ: case FUSE_WRITE: case FUSE_FALLOCATE: case FUSE_FLUSH:
    case FUSE_FSYNC: case FUSE_LSEEK:
        if (h->nodeid != FUSE_ROOT_ID) {
            reply_err(req, ENOENT);
            return;
        }
        handle_file_op(req, h->opcode);
        return;
    default:
        reply_err(req, ENOSYS);
        return;
    }
}
