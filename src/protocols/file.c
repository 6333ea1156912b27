/*
 * file.c — the `file` protocol driver: a regular file or block device,
 * read and written through the calling thread's io_uring ring or a thread
 * pool (option aio).
 *
 * I/O: a request runs either on the ring of the thread it runs on
 * (co_preadv_fd & co, loop.h) or as a plain system call on a worker of the
 * thread pool (co_run_blocking), per the aio option; either way a node
 * serves all IOThreads at once with no shared state on the data path.  The
 * driver state is written at open and read-only afterwards, except two
 * "this fallocate mode is unsupported" flags, which are atomics.  Short
 * reads are completed or (at end of file) zero-filled, short writes are
 * resubmitted, -EINTR/-EAGAIN are retried, on either engine.
 * With cache.direct (O_DIRECT) a request whose buffers are not aligned goes
 * through an aligned bounce buffer, for that request only.
 *
 * Why a thread pool next to io_uring (aio=auto, the default): on this
 * project's reference machine (kernel 6.18, ext4 on virtio-blk), fio 4k
 * random O_DIRECT writes with 4 jobs to a fully written 1 GiB file do
 * 22.9k IOPS with psync but 3.6k with io_uring.  io_uring cannot complete
 * such a write inline and punts it to io-wq, which hashes buffered and
 * O_DIRECT writes to one regular file by inode and runs them one at a time
 * (meant to spare buffered writers contention on the inode lock).  Reads
 * are not hashed and stay fast (52k io_uring vs 60k psync).  So auto reads
 * through the ring and sends writes, write-zeroes, discard and flush to the
 * pool, where pwritev(2) from several threads runs in parallel.
 * aio=threads sends everything to the pool, aio=io_uring everything to the
 * ring.
 *
 * What may be opened: a regular file or a block device the user names,
 * never a directory, character device, FIFO or socket, and never created.
 * A file named by an image's own metadata (a qcow2 backing file) is opened
 * with x-regular-only, which the format sets: then only a regular file is
 * accepted, so a crafted image cannot reach /dev/sda, /dev/zero or a
 * directory through an absolute name, "../" or a symlink.  The check runs
 * on the open fd, so the path cannot be swapped after it (no TOCTOU), and
 * holds for the node's life (a reopen checks the new fd the same way).
 * QEMU opens what a backing name points to, devices included; diskstack is
 * stricter on purpose.
 *
 * Image locking follows QEMU's convention, so QEMU, qemu-img,
 * qemu-storage-daemon and diskstack see each other's use of an image:
 * open-file-description (OFD) locks on single bytes of the image file.
 *   byte 100 + i  shared lock while this user holds permission bit i;
 *   byte 200 + i  shared lock while this user does NOT share bit i.
 * A user wanting bit i checks that nobody holds byte 200 + i; a user not
 * sharing bit i checks that nobody holds byte 100 + i.  "Nobody" is tested
 * with F_OFD_GETLK for an exclusive lock, which ignores our own locks on the
 * same open file description.  OFD locks belong to the open file
 * description, so two nodes of this process on one file conflict as two
 * processes would — intended.  The permission bits are BLK_PERM_*, whose
 * first four match QEMU's numbering.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "loop/loop.h"

#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200
#define NUM_PERMS        4           /* bits of BLK_PERM_ALL */
#define MAX_PROBE_ALIGN  4096
#define FILE_MAX_TRANSFER (16u << 20)

typedef struct FileState {
    int fd;
    /* From the aio option: which requests run on the thread pool rather
     * than the ring.  Set at open, read-only afterwards. */
    bool reads_on_pool;          /* preadv */
    bool writes_on_pool;         /* pwritev, fallocate, fdatasync */
    bool is_blockdev;
    bool regular_only;           /* x-regular-only: no block device either */
    bool direct;                 /* opened with O_DIRECT */
    bool no_flush;               /* cache.no-flush: flush is a no-op */
    bool use_lock;
    size_t req_align;            /* O_DIRECT offset/length alignment */
    size_t buf_align;            /* O_DIRECT buffer alignment */
    /* Learned at run time: fallocate modes the filesystem refused. */
    _Atomic bool no_zero_range;
    _Atomic bool no_punch_hole;
    /* The first fdatasync failure, returned by every later flush: after a
     * failed writeback the kernel may have marked the pages clean, so a
     * later fdatasync could succeed without the data being stable. */
    _Atomic int flush_error;
    /* GS: the permission bits whose lock bytes this fd holds. */
    uint64_t locked_perm;        /* bytes 100 + i */
    uint64_t locked_unshared;    /* bytes 200 + i */
} FileState;

static const char *const locking_values[] = { "auto", "on", "off", NULL };
static const char *const aio_values[] = { "auto", "threads", "io_uring", "native", NULL };

static const BlockOptionDesc file_options[] = {
    { "filename", OPT_STRING, true, NULL, "path of the image file or block device" },
    { "locking", OPT_ENUM, false, locking_values,
      "image locking (auto|on|off, default auto = on)" },
    { "aio", OPT_ENUM, false, aio_values,
      "I/O engine: auto (reads on io_uring, the rest on threads; default), "
      "threads or io_uring" },
    /* Set by formats on a file their metadata names (a qcow2 backing
     * file): what an image says is trusted less than what a user says. */
    { "x-regular-only", OPT_BOOL, false, NULL,
      "open only a regular file, never a device (default off; set by formats "
      "for files named by image metadata)" },
    { NULL },
};

/* ------------------------------------------------------------------------
 * Image locking (GS)
 */

/* Both (a syscall): takes (shared) or drops the OFD lock on one byte.
 * Returns 0 or -errno. */
static int lock_byte(int fd, int byte, bool lock)
{
    struct flock fl = {
        .l_type = lock ? F_RDLCK : F_UNLCK,
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
    };
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* Both (a syscall): -EAGAIN if another open file description holds a lock
 * on byte. */
static int byte_locked_by_others(int fd, int byte)
{
    struct flock fl = {
        .l_type = F_WRLCK,
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
    };
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

/* Brings one set of lock bytes (base + i) to `want`; with !unlock it only
 * adds locks (the prepare step keeps the old ones until the new are checked). */
static int apply_lock_set(int fd, int base, uint64_t want, uint64_t *locked,
                          bool unlock, Error **errp) GS
{
    GS_CODE();
    for (int i = 0; i < NUM_PERMS; i++) {
        uint64_t bit = 1ull << i;
        bool have = *locked & bit;
        int ret;

        if ((want & bit) && !have) {
            ret = lock_byte(fd, base + i, true);
        } else if (unlock && have && !(want & bit)) {
            ret = lock_byte(fd, base + i, false);
        } else {
            continue;
        }
        if (ret < 0) {
            if (ret == -EAGAIN || ret == -EACCES) {
                error_setg(errp, "Failed to lock byte %d", base + i);
            } else {
                error_setg_errno(errp, ret, "Failed to lock byte %d", base + i);
            }
            return ret;
        }
        *locked ^= bit;
    }
    return 0;
}

static int apply_lock_bytes(FileState *s, uint64_t perm, uint64_t unshared,
                            bool unlock, Error **errp) GS
{
    GS_CODE();
    int ret = apply_lock_set(s->fd, LOCK_PERM_BASE, perm, &s->locked_perm,
                             unlock, errp);
    if (ret < 0) {
        return ret;
    }
    return apply_lock_set(s->fd, LOCK_SHARED_BASE, unshared,
                          &s->locked_unshared, unlock, errp);
}

/* Both (pure). */
static void set_lock_error(Error **errp, int ret, bool shared, uint64_t bit)
{
    const char *fmt = shared ? "Failed to get shared \"%s\" lock"
                             : "Failed to get \"%s\" lock";
    if (ret == -EAGAIN || ret == -EACCES) {
        error_setg(errp, fmt, blk_perm_names(bit));
    } else {
        error_setg_errno(errp, ret, fmt, blk_perm_names(bit));
    }
}

/* Does anybody else hold what we want or need unshared?  QEMU's order and
 * wording: taken permissions first, then the ones we refuse to share. */
static int check_lock_bytes(int fd, uint64_t perm, uint64_t shared,
                            Error **errp) GS
{
    GS_CODE();
    for (int i = 0; i < NUM_PERMS; i++) {
        uint64_t bit = 1ull << i;
        int ret;
        if ((perm & bit) &&
            (ret = byte_locked_by_others(fd, LOCK_SHARED_BASE + i)) < 0) {
            set_lock_error(errp, ret, false, bit);
            return ret;
        }
    }
    for (int i = 0; i < NUM_PERMS; i++) {
        uint64_t bit = 1ull << i;
        int ret;
        if (!(shared & bit) &&
            (ret = byte_locked_by_others(fd, LOCK_PERM_BASE + i)) < 0) {
            set_lock_error(errp, ret, true, bit);
            return ret;
        }
    }
    return 0;
}

/*
 * set_perm — lock: GS; in flight: may be (locking does not touch I/O);
 * threads: main only.  Prepare (add the new lock bytes while keeping the
 * old), check for conflicting users, then commit (drop what is no longer
 * needed) or abort (back to the old set).
 */
static int file_set_perm(BlockNode *bs, uint64_t perm, uint64_t shared,
                         Error **errp) GS
{
    GS_CODE();
    FileState *s = bs->opaque;
    uint64_t unshared = ~shared & BLK_PERM_ALL;
    uint64_t old_perm = s->locked_perm, old_unshared = s->locked_unshared;
    Error *err = NULL;
    int ret;

    if (!s->use_lock) {
        return 0;
    }
    ret = apply_lock_bytes(s, perm, unshared, false, &err);
    if (ret == 0) {
        ret = check_lock_bytes(s->fd, perm & BLK_PERM_ALL, shared, &err);
    }
    if (ret < 0) {
        apply_lock_bytes(s, old_perm, old_unshared, true, NULL);
        /* QEMU prints the hint on its own line; we keep it in the message. */
        error_setg(errp, "%s\nIs another process using the image [%s]?",
                   error_get_pretty(err), bs->filename);
        error_free(err);
        return ret == -EACCES ? -EAGAIN : ret;
    }
    if (apply_lock_bytes(s, perm, unshared, true, NULL) < 0) {
        /* Only unlocks happen here; they do not fail on local files. */
        warn_report("Failed to release lock bytes of '%s'", bs->filename);
    }
    return 0;
}

/* At open: does this filesystem do OFD locks?  locking=auto quietly turns
 * locking off where it does not (QEMU does the same). */
static int check_locking_works(FileState *s, const char *mode,
                               const char *filename, Error **errp) GS
{
    GS_CODE();
    int ret = byte_locked_by_others(s->fd, LOCK_PERM_BASE);

    if (ret == 0 || ret == -EAGAIN) {
        return 0;
    }
    if (strcmp(mode, "on") == 0) {
        error_setg_errno(errp, ret, "Failed to lock '%s' (locking=on)", filename);
        return ret;
    }
    s->use_lock = false;
    return 0;
}

/* ------------------------------------------------------------------------
 * Open and close (GS)
 */

static int get_length(FileState *s, const struct stat *st, int64_t *len) GS
{
    GS_CODE();
    if (s->is_blockdev) {
        uint64_t bytes;
        if (ioctl(s->fd, BLKGETSIZE64, &bytes) < 0) {
            return -errno;
        }
        *len = (int64_t)bytes;
    } else {
        *len = st->st_size;
    }
    return 0;
}

/* GS helper of open (a syscall).  A read of len bytes at offset 0 into buf
 * succeeds under O_DIRECT?
 * EINVAL is the kernel's answer to misalignment; any other outcome means
 * the alignment is fine (a real I/O error is not what we probe). */
static bool direct_read_ok(int fd, void *buf, size_t len)
{
    return pread(fd, buf, len, 0) >= 0 || errno != EINVAL;
}

/*
 * Finds the alignment O_DIRECT needs, as QEMU does: the smallest of 1, 512,
 * ..., 4096 that works.  A read at or past the end of the file succeeds
 * without any check, so "1 works" may mean "could not tell": then 4096,
 * which is always safe.
 */
static int probe_direct_alignment(FileState *s, Error **errp) GS
{
    GS_CODE();
    static const size_t aligns[] = { 1, 512, 1024, 2048, 4096 };
    unsigned int sector;
    char *buf;

    if (posix_memalign((void **)&buf, MAX_PROBE_ALIGN, 2 * MAX_PROBE_ALIGN)) {
        error_setg(errp, "Out of memory probing O_DIRECT alignment");
        return -ENOMEM;
    }
    s->req_align = 0;
    if (s->is_blockdev && ioctl(s->fd, BLKSSZGET, &sector) == 0 && sector) {
        s->req_align = sector;
    }
    for (size_t i = 0; !s->req_align && i < ARRAY_SIZE(aligns); i++) {
        if (direct_read_ok(s->fd, buf, aligns[i])) {
            s->req_align = aligns[i] == 1 ? MAX_PROBE_ALIGN : aligns[i];
        }
    }
    s->buf_align = 0;
    for (size_t i = 0; !s->buf_align && i < ARRAY_SIZE(aligns); i++) {
        if (direct_read_ok(s->fd, buf + aligns[i], MAX_PROBE_ALIGN)) {
            s->buf_align = aligns[i] == 1 ? s->req_align : aligns[i];
        }
    }
    free(buf);
    if (!s->req_align || !s->buf_align) {
        error_setg(errp, "Could not find a working O_DIRECT alignment "
                   "(try cache.direct=off)");
        return -EINVAL;
    }
    return 0;
}

/* Reads the driver's own options; errors name the option. */
static int parse_options(FileState *s, json_t *options, const char **filename,
                         const char **locking, Error **errp) GS
{
    GS_CODE();
    const char *aio = opt_str(options, "aio", "auto");

    *filename = opt_str(options, "filename", NULL);
    if (!*filename || !**filename) {
        error_setg(errp, "Parameter 'filename' is missing");
        return -EINVAL;
    }
    if (strcmp(aio, "native") == 0) {
        error_setg(errp, "aio=native (Linux AIO) is not supported; use "
                   "aio=auto, aio=threads or aio=io_uring");
        return -EINVAL;
    }
    s->reads_on_pool = strcmp(aio, "threads") == 0;
    s->writes_on_pool = strcmp(aio, "io_uring") != 0;
    *locking = opt_str(options, "locking", "auto");
    s->use_lock = strcmp(*locking, "off") != 0;
    s->direct = opt_bool(options, "cache.direct", false);
    s->no_flush = opt_bool(options, "cache.no-flush", false);
    s->regular_only = opt_bool(options, "x-regular-only", false);
    return 0;
}

/* Pure: a person's name for a non-regular file type. */
static const char *file_type_name(mode_t mode)
{
    return S_ISDIR(mode) ? "a directory" :
           S_ISBLK(mode) ? "a block device" :
           S_ISCHR(mode) ? "a character device" :
           S_ISFIFO(mode) ? "a FIFO" :
           S_ISSOCK(mode) ? "a socket" : "not a regular file";
}

/*
 * Both (pure): may the file just opened be used?  Checked on the open fd
 * (fstat), so a path swapped after the check cannot bring in another file,
 * and symlinks count as what they point to.  A directory or anything but a
 * regular file or block device is refused; with x-regular-only (a file
 * named by image metadata) a block device is refused too.
 */
static int check_file_type(const FileState *s, const char *filename,
                           mode_t mode, Error **errp)
{
    if (S_ISREG(mode)) {
        return 0;
    }
    if (s->regular_only) {
        error_setg(errp, "'%s' is %s, not a regular file: a file named by "
                   "image metadata must be a regular file%s",
                   filename, file_type_name(mode),
                   S_ISBLK(mode) ? " (name a block device explicitly, e.g. "
                                   "in blockdev-add, to use one)" : "");
        return S_ISDIR(mode) ? -EISDIR : -EINVAL;
    }
    if (S_ISDIR(mode)) {
        error_setg_errno(errp, EISDIR, "Could not open '%s'", filename);
        return -EISDIR;
    }
    if (!S_ISBLK(mode)) {
        error_setg(errp, "'%s' is not a regular file or block device", filename);
        return -EINVAL;
    }
    return 0;
}

/* Both (a syscall): drops the O_NONBLOCK the open used, keeping the rest
 * of the status flags (O_DIRECT). */
static int clear_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        return -errno;
    }
    return 0;
}

/*
 * Opens the image: never created (no O_CREAT), O_NONBLOCK so that a FIFO
 * named as an image cannot hang the main loop in open(2) (it is refused
 * right after), O_NOCTTY so that a terminal cannot become the daemon's.
 * The type is checked on the fd (check_file_type).
 */
static int open_image_fd(FileState *s, const char *filename, bool read_only,
                         struct stat *st, Error **errp) GS
{
    GS_CODE();
    int flags = (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY |
                O_NONBLOCK;
    int ret;

    if (s->direct) {
        flags |= O_DIRECT;
    }
    s->fd = open(filename, flags);
    if (s->fd < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not open '%s'", filename);
        return -err;
    }
    if (fstat(s->fd, st) < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not stat '%s'", filename);
        return -err;
    }
    ret = check_file_type(s, filename, st->st_mode, errp);
    if (ret < 0) {
        return ret;
    }
    ret = clear_nonblock(s->fd);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not set the flags of '%s'", filename);
        return ret;
    }
    s->is_blockdev = S_ISBLK(st->st_mode);
    return 0;
}

/*
 * refresh_limits — lock: GS; in flight: none; threads: main only.
 */
static void file_refresh_limits(BlockNode *bs) GS
{
    GS_CODE();
    FileState *s = bs->opaque;

    bs->bl.request_alignment = s->direct ? s->req_align : 1;
    bs->bl.min_mem_alignment = s->direct ? s->buf_align : 1;
    bs->bl.max_transfer = FILE_MAX_TRANSFER;
    bs->bl.opt_transfer = 0;
    bs->bl.max_pwrite_zeroes = 0;
    bs->bl.max_pdiscard = 0;
    bs->bl.pdiscard_alignment = 0;
    bs->bl.pwrite_zeroes_alignment = 0;
}

/*
 * close — lock: GS; in flight: none (drained); threads: main only.
 * Closing the fd also releases every lock byte it held.
 */
static void coroutine_fn file_close(BlockNode *bs) GS
{
    GS_CODE();
    FileState *s = bs->opaque;

    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}

/*
 * open — lock: GS, in a coroutine on the main loop; in flight: none, the
 * node is not reachable yet; threads: main only.  Locks are not taken here
 * but in set_perm, once the parents' permissions are known.
 */
static int coroutine_fn file_open(BlockNode *bs, json_t *options, Error **errp) GS
{
    GS_CODE();
    FileState *s = bs->opaque;
    const char *filename, *locking;
    struct stat st;
    int64_t len;
    int ret;

    s->fd = -1;
    ret = parse_options(s, options, &filename, &locking, errp);
    if (ret < 0) {
        return ret;
    }
    ret = open_image_fd(s, filename, bs->read_only, &st, errp);
    if (ret == 0 && (ret = get_length(s, &st, &len)) < 0) {
        error_setg_errno(errp, ret, "Could not get the size of '%s'", filename);
    }
    if (ret == 0 && s->direct) {
        ret = probe_direct_alignment(s, errp);
    }
    if (ret == 0 && s->use_lock) {
        ret = check_locking_works(s, locking, filename, errp);
    }
    if (ret < 0) {
        file_close(bs);
        return ret;
    }
    snprintf(bs->filename, sizeof(bs->filename), "%s", filename);
    atomic_store(&bs->length, len);
    bs->supported_write_flags = BDRV_REQ_FUA;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK;
    file_refresh_limits(bs);
    return 0;
}

/* ------------------------------------------------------------------------
 * Reopen (GS; blockdev-reopen, see src/reopen.c)
 *
 * read-only and cache.direct change the open mode, so prepare opens a new fd
 * with the new mode (nothing visible changes); permissions are then
 * refreshed by the core on the old fd (file_set_perm moves its lock bytes);
 * commit gives the new fd the same lock bytes, then closes the old one, so
 * the image is never unlocked in between.
 */

typedef struct FileReopen {
    int fd;                      /* the new fd, -1: keep the old one */
    bool direct, no_flush;
    size_t req_align, buf_align;
} FileReopen;

/* Opens the image again with the new mode into r (GS helper of prepare).
 * With auto-read-only, a file that cannot be opened read-write is opened
 * read-only instead, and rs->read_only says so. */
static int reopen_fd(BlockReopenState *rs, FileReopen *r, Error **errp) GS
{
    GS_CODE();
    FileState *s = rs->bs->opaque;
    FileState tmp;
    struct stat st;
    Error *err = NULL;
    int ret;

    memcpy(&tmp, s, sizeof(tmp));
    tmp.direct = r->direct;
    ret = open_image_fd(&tmp, rs->bs->filename, rs->read_only, &st, &err);
    if ((ret == -EACCES || ret == -EROFS || ret == -EPERM) && !rs->read_only &&
        opt_bool(rs->options, "auto-read-only", false)) {
        error_free(err);
        err = NULL;
        rs->read_only = true;
        ret = open_image_fd(&tmp, rs->bs->filename, true, &st, &err);
    }
    if (ret == 0 && r->direct) {
        ret = probe_direct_alignment(&tmp, &err);
    }
    if (ret < 0) {
        if (tmp.fd >= 0) {
            close(tmp.fd);
        }
        error_propagate(errp, err);
        return ret;
    }
    r->fd = tmp.fd;
    r->req_align = tmp.req_align;
    r->buf_align = tmp.buf_align;
    return 0;
}

/*
 * reopen_prepare — lock: GS; in flight: none (quiesced); threads: main only.
 * filename, locking and aio are fixed; read-only and cache.direct open a new
 * fd; cache.no-flush is a flag.
 */
static int coroutine_fn file_reopen_prepare(BlockReopenState *rs, Error **errp) GS
{
    GS_CODE();
    static const char *const fixed[] = { "filename", "locking", "aio", NULL };
    FileState *s = rs->bs->opaque;
    FileReopen *r;
    int ret;

    if (bdrv_reopen_refuse_changes(rs, fixed, errp) < 0) {
        return -EINVAL;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        error_setg(errp, "Out of memory");
        return -ENOMEM;
    }
    r->fd = -1;
    r->direct = opt_bool(rs->options, "cache.direct", false);
    r->no_flush = opt_bool(rs->options, "cache.no-flush", false);
    r->req_align = s->req_align;
    r->buf_align = s->buf_align;
    if (r->direct != s->direct || rs->read_only != rs->bs->read_only) {
        ret = reopen_fd(rs, r, errp);
        if (ret < 0) {
            free(r);
            return ret;
        }
    }
    rs->opaque = r;
    return 0;
}

/* Gives fd the lock bytes s->fd holds (shared locks of our own: they do not
 * conflict with the old fd's, and the conflicts with other users were
 * checked when the old fd took them). */
static void copy_lock_bytes(FileState *s, int fd) GS
{
    GS_CODE();
    for (int i = 0; i < NUM_PERMS; i++) {
        if (((s->locked_perm >> i) & 1) &&
            lock_byte(fd, LOCK_PERM_BASE + i, true) < 0) {
            warn_report("Failed to lock byte %d", LOCK_PERM_BASE + i);
        }
        if (((s->locked_unshared >> i) & 1) &&
            lock_byte(fd, LOCK_SHARED_BASE + i, true) < 0) {
            warn_report("Failed to lock byte %d", LOCK_SHARED_BASE + i);
        }
    }
}

/*
 * reopen_commit — lock: GS; in flight: none (quiesced); threads: main only.
 * Swaps in the new fd (closing the old one releases its locks).
 */
static void file_reopen_commit(BlockReopenState *rs) GS
{
    GS_CODE();
    FileState *s = rs->bs->opaque;
    FileReopen *r = rs->opaque;

    if (r->fd >= 0) {
        int old = s->fd;
        if (s->use_lock) {
            copy_lock_bytes(s, r->fd);
        }
        s->fd = r->fd;
        s->direct = r->direct;
        s->req_align = r->req_align;
        s->buf_align = r->buf_align;
        close(old);
    }
    s->no_flush = r->no_flush;
    free(r);
    rs->opaque = NULL;
}

/*
 * reopen_abort — lock: GS; in flight: none; threads: main only.
 */
static void file_reopen_abort(BlockReopenState *rs) GS
{
    GS_CODE();
    FileReopen *r = rs->opaque;

    if (r && r->fd >= 0) {
        close(r->fd);
    }
    free(r);
    rs->opaque = NULL;
}

/* ------------------------------------------------------------------------
 * I/O (thread-safe: only the fd and the atomics are shared)
 */

/*
 * The two engines: the calling thread's ring, or the plain system call on a
 * thread-pool worker (the caller yields meanwhile).  Each returns what the
 * kernel returned (bytes, or -errno) and retries nothing: the callers below
 * handle short I/O, -EINTR and -EAGAIN the same way for both.
 */

/* The arguments of one system call, on the caller's stack. */
typedef struct PoolSyscall {
    int fd;
    const struct iovec *iov;
    int iovcnt;
    int mode;                    /* fallocate */
    off_t off, len;
} PoolSyscall;

/* Pool worker (no loop, no coroutine).  A single preadv/pwritev transfers
 * at most 0x7ffff000 bytes, so the count fits an int. */
static int pool_preadv(void *opaque)
{
    PoolSyscall *c = opaque;
    ssize_t r = preadv(c->fd, c->iov, c->iovcnt, c->off);

    return r < 0 ? -errno : (int)r;
}

/* Pool worker. */
static int pool_pwritev(void *opaque)
{
    PoolSyscall *c = opaque;
    ssize_t r = pwritev(c->fd, c->iov, c->iovcnt, c->off);

    return r < 0 ? -errno : (int)r;
}

/* Pool worker. */
static int pool_fallocate(void *opaque)
{
    PoolSyscall *c = opaque;

    return fallocate(c->fd, c->mode, c->off, c->len) < 0 ? -errno : 0;
}

/* Pool worker. */
static int pool_fdatasync(void *opaque)
{
    PoolSyscall *c = opaque;

    return fdatasync(c->fd) < 0 ? -errno : 0;
}

static ssize_t coroutine_fn engine_preadv(FileState *s, const struct iovec *iov,
                                          int iovcnt, off_t off)
{
    PoolSyscall c = { .fd = s->fd, .iov = iov, .iovcnt = iovcnt, .off = off };

    return s->reads_on_pool ? co_run_blocking(pool_preadv, &c)
                            : co_preadv_fd(s->fd, iov, iovcnt, off);
}

static ssize_t coroutine_fn engine_pwritev(FileState *s, const struct iovec *iov,
                                           int iovcnt, off_t off)
{
    PoolSyscall c = { .fd = s->fd, .iov = iov, .iovcnt = iovcnt, .off = off };

    return s->writes_on_pool ? co_run_blocking(pool_pwritev, &c)
                             : co_pwritev_fd(s->fd, iov, iovcnt, off);
}

static int coroutine_fn engine_fallocate(FileState *s, int mode, off_t off,
                                         off_t len)
{
    PoolSyscall c = { .fd = s->fd, .mode = mode, .off = off, .len = len };

    return s->writes_on_pool ? co_run_blocking(pool_fallocate, &c)
                             : co_fallocate_fd(s->fd, mode, off, len);
}

static int coroutine_fn engine_fdatasync(FileState *s)
{
    PoolSyscall c = { .fd = s->fd };

    return s->writes_on_pool ? co_run_blocking(pool_fdatasync, &c)
                             : co_fsync_fd(s->fd, true);
}

/* The part [off, off + len) of qiov as an iovec array: no allocation for a
 * single buffer (the common case). */
static void slice_iov(IOVector *dst, IOVector *qiov, size_t off, size_t len)
{
    if (qiov->niov == 1) {
        iov_init_buf(dst, (char *)qiov->iov[0].iov_base + off, len);
    } else {
        iov_init(dst, qiov->niov);
        iov_concat(dst, qiov, off, len);
    }
}

/* Reads [offset, offset + bytes) into qiov at qiov_offset; zero-fills what
 * lies past the end of the file. */
static int coroutine_fn read_fully(FileState *s, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset)
{
    int64_t done = 0;

    while (done < bytes) {
        IOVector part;
        ssize_t r;

        slice_iov(&part, qiov, qiov_offset + done, bytes - done);
        r = engine_preadv(s, part.iov, part.niov, offset + done);
        iov_destroy(&part);
        if (r == -EINTR || r == -EAGAIN) {
            continue;
        }
        if (r < 0) {
            return (int)r;
        }
        if (r == 0) {
            /* End of file (which may be growing): the rest reads as zeroes. */
            iov_memset(qiov, qiov_offset + done, 0, bytes - done);
            break;
        }
        done += r;
    }
    return 0;
}

/* Writes all of [offset, offset + bytes), resubmitting after short writes. */
static int coroutine_fn write_fully(FileState *s, int64_t offset, int64_t bytes,
                                    IOVector *qiov, size_t qiov_offset)
{
    int64_t done = 0;

    while (done < bytes) {
        IOVector part;
        ssize_t r;

        slice_iov(&part, qiov, qiov_offset + done, bytes - done);
        r = engine_pwritev(s, part.iov, part.niov, offset + done);
        iov_destroy(&part);
        if (r == -EINTR || r == -EAGAIN) {
            continue;
        }
        if (r < 0) {
            return (int)r;
        }
        if (r == 0) {
            return -ENOSPC;     /* no progress: the device is full */
        }
        done += r;
    }
    return 0;
}

/* O_DIRECT needs every buffer base and length aligned. */
static bool needs_bounce(FileState *s, IOVector *qiov, size_t qiov_offset,
                         int64_t bytes)
{
    return s->direct &&
           !iov_is_aligned(qiov, qiov_offset, bytes,
                           MAX(s->buf_align, s->req_align));
}

static void *alloc_bounce(FileState *s, int64_t bytes)
{
    void *buf;
    size_t align = MAX(s->buf_align, s->req_align);

    if (posix_memalign(&buf, MAX(align, sizeof(void *)), bytes)) {
        return NULL;
    }
    return buf;
}

static int coroutine_fn datasync(FileState *s)
{
    int ret = atomic_load_explicit(&s->flush_error, memory_order_relaxed);

    if (ret < 0) {
        return ret;
    }
    do {
        ret = engine_fdatasync(s);
    } while (ret == -EINTR);
    if (ret < 0) {
        atomic_store_explicit(&s->flush_error, ret, memory_order_relaxed);
    }
    return ret;
}

/*
 * co_preadv — lock: graph read lock (I/O); in flight: yes, any number;
 * threads: yes, every IOThread at once (the caller's ring, or the pool).
 */
static int coroutine_fn file_co_preadv(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags) GRAPH_RDLOCK
{
    FileState *s = bs->opaque;
    IOVector bounce_v;
    void *bounce;
    int ret;

    if (!needs_bounce(s, qiov, qiov_offset, bytes)) {
        return read_fully(s, offset, bytes, qiov, qiov_offset);
    }
    bounce = alloc_bounce(s, bytes);
    if (!bounce) {
        return -ENOMEM;
    }
    iov_init_buf(&bounce_v, bounce, bytes);
    ret = read_fully(s, offset, bytes, &bounce_v, 0);
    if (ret == 0) {
        iov_from_buf(qiov, qiov_offset, bounce, bytes);
    }
    free(bounce);
    return ret;
}

/*
 * co_pwritev — lock: graph read lock (I/O); in flight: yes, any number;
 * threads: yes, every IOThread at once.  FUA is a write + fdatasync.
 */
static int coroutine_fn file_co_pwritev(BlockNode *bs, int64_t offset,
                                        int64_t bytes, IOVector *qiov,
                                        size_t qiov_offset,
                                        BdrvRequestFlags flags) GRAPH_RDLOCK
{
    FileState *s = bs->opaque;
    int ret;

    if (!needs_bounce(s, qiov, qiov_offset, bytes)) {
        ret = write_fully(s, offset, bytes, qiov, qiov_offset);
    } else {
        IOVector bounce_v;
        void *bounce = alloc_bounce(s, bytes);
        if (!bounce) {
            return -ENOMEM;
        }
        iov_to_buf(qiov, qiov_offset, bounce, bytes);
        iov_init_buf(&bounce_v, bounce, bytes);
        ret = write_fully(s, offset, bytes, &bounce_v, 0);
        free(bounce);
    }
    if (ret == 0 && (flags & BDRV_REQ_FUA) && !s->no_flush) {
        ret = datasync(s);
    }
    return ret;
}

/*
 * co_flush — lock: graph read lock (I/O); in flight: yes; threads: yes.
 * fdatasync; a no-op with cache.no-flush.  A failure sticks (datasync).
 */
static int coroutine_fn file_co_flush(BlockNode *bs) GRAPH_RDLOCK
{
    FileState *s = bs->opaque;

    if (s->no_flush) {
        return 0;
    }
    return datasync(s);
}

static bool mode_unsupported(int ret)
{
    return ret == -EOPNOTSUPP || ret == -ENOTSUP || ret == -ENOSYS ||
           ret == -EINVAL;
}

/* fallocate (ring or pool, per aio); remembers a mode the filesystem refuses so
 * later requests skip it.  Returns -ENOTSUP for an unsupported mode. */
static int coroutine_fn try_fallocate(FileState *s, _Atomic bool *unsupported,
                                      int mode, int64_t offset, int64_t bytes)
{
    int ret;

    if (atomic_load_explicit(unsupported, memory_order_relaxed)) {
        return -ENOTSUP;
    }
    do {
        ret = engine_fallocate(s, mode, offset, bytes);
    } while (ret == -EINTR || ret == -EAGAIN);
    if (mode_unsupported(ret)) {
        atomic_store_explicit(unsupported, true, memory_order_relaxed);
        return -ENOTSUP;
    }
    return ret;
}

/*
 * Zeroes by punching a hole.  A hole past the end of a regular file does not
 * move the end, so the tail beyond it (a file shorter than the node, e.g.
 * shrunk behind our back) is zeroed with ZERO_RANGE, which grows the file
 * and never shrinks it, even against concurrent writers.
 */
static int coroutine_fn punch_zeroes(FileState *s, int64_t offset, int64_t bytes)
{
    struct stat st;
    int64_t end = offset + bytes;
    int ret = try_fallocate(s, &s->no_punch_hole,
                            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            offset, bytes);

    if (ret < 0 || s->is_blockdev || fstat(s->fd, &st) < 0 || st.st_size >= end) {
        return ret;
    }
    offset = MAX(offset, (int64_t)st.st_size);
    return try_fallocate(s, &s->no_zero_range, FALLOC_FL_ZERO_RANGE,
                         offset, end - offset);
}

/*
 * co_pwrite_zeroes — lock: graph read lock (I/O); in flight: yes, any number;
 * threads: yes.  MAY_UNMAP punches a hole, otherwise ZERO_RANGE keeps the
 * blocks allocated; -ENOTSUP lets io.c fall back to writing zeroes.
 */
static int coroutine_fn file_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                              int64_t bytes,
                                              BdrvRequestFlags flags) GRAPH_RDLOCK
{
    FileState *s = bs->opaque;
    /* Block devices refuse modes without KEEP_SIZE; a regular file may
     * legitimately grow (see punch_zeroes). */
    int keep = s->is_blockdev ? FALLOC_FL_KEEP_SIZE : 0;
    int ret = -ENOTSUP;

    if (flags & BDRV_REQ_MAY_UNMAP) {
        ret = punch_zeroes(s, offset, bytes);
    }
    if (ret == -ENOTSUP) {
        ret = try_fallocate(s, &s->no_zero_range, FALLOC_FL_ZERO_RANGE | keep,
                            offset, bytes);
    }
    return ret;
}

/*
 * co_pdiscard — lock: graph read lock (I/O); in flight: yes; threads: yes.
 * Punches a hole (the range then reads as zeroes).
 */
static int coroutine_fn file_co_pdiscard(BlockNode *bs, int64_t offset,
                                         int64_t bytes) GRAPH_RDLOCK
{
    FileState *s = bs->opaque;

    return try_fallocate(s, &s->no_punch_hole,
                         FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         offset, bytes);
}

/*
 * Where the run starting at offset ends: *pnum bytes of data (returns true)
 * or of hole (false).  Anything lseek cannot answer is data.
 */
static bool find_run(int fd, int64_t offset, int64_t bytes, int64_t *pnum)
{
    off_t data = lseek(fd, offset, SEEK_DATA);
    off_t end;

    if (data < 0 && errno == ENXIO) {
        *pnum = bytes;               /* no data from here to the end */
        return false;
    }
    if (data < 0 || data < offset) {
        *pnum = bytes;               /* cannot tell: say data */
        return true;
    }
    if (data > offset) {
        *pnum = MIN(bytes, (int64_t)(data - offset));
        return false;
    }
    end = lseek(fd, offset, SEEK_HOLE);
    if (end <= offset) {
        *pnum = bytes;               /* raced with a writer, or no answer */
    } else {
        *pnum = MIN(bytes, (int64_t)(end - offset));
    }
    return true;
}

/*
 * co_block_status — lock: graph read lock (I/O); in flight: yes; threads:
 * yes (lseek on a shared fd does not use the file position).
 */
static int coroutine_fn file_co_block_status(BlockNode *bs, int64_t offset,
                                             int64_t bytes, int64_t *pnum,
                                             int64_t *map, BlockNode **file)
    GRAPH_RDLOCK
{
    FileState *s = bs->opaque;
    bool data = s->is_blockdev ? (*pnum = bytes, true)
                               : find_run(s->fd, offset, bytes, pnum);

    *map = offset;
    *file = bs;
    return (data ? BDRV_BLOCK_DATA : BDRV_BLOCK_ZERO) |
           BDRV_BLOCK_OFFSET_VALID | BDRV_BLOCK_ALLOCATED;
}

/*
 * co_truncate — lock: graph read lock (I/O); in flight: yes; threads: one
 * resize per node at a time (io.c serialises), I/O continues.  A block
 * device cannot change size: only "truncating" to a length it already
 * covers is accepted, and the node keeps the device's size.
 */
static int coroutine_fn file_co_truncate(BlockNode *bs, int64_t offset,
                                         bool exact, Error **errp) GRAPH_RDLOCK
{
    FileState *s = bs->opaque;

    if (s->is_blockdev) {
        int64_t len = bdrv_getlength(bs);
        if (offset > len || (exact && offset != len)) {
            error_setg(errp, "Cannot resize block device '%s'", bs->filename);
            return -ENOTSUP;
        }
        return 0;
    }
    if (ftruncate(s->fd, offset) < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Failed to resize '%s'", bs->filename);
        return -err;
    }
    atomic_store_explicit(&bs->length, offset, memory_order_release);
    return 0;
}

/* ------------------------------------------------------------------------
 * Identity (GS), for the loop check of formats that open files named by
 * image metadata: fstat of the open fd, not of a path that may have moved.
 */

extern const BlockDriver bdrv_file;

int bdrv_file_identity(BlockNode *bs, uint64_t *dev, uint64_t *ino) GS
{
    GS_CODE();
    FileState *s;
    struct stat st;

    if (!bs || bs->drv != &bdrv_file) {
        return -ENOTSUP;
    }
    s = bs->opaque;
    if (s->fd < 0 || fstat(s->fd, &st) < 0) {
        return -EBADF;
    }
    *dev = st.st_dev;
    *ino = st.st_ino;
    return 0;
}

const BlockDriver bdrv_file = {
    .format_name = "file",
    .instance_size = sizeof(FileState),
    .is_protocol = true,
    .options = file_options,

    .open = file_open,
    .close = file_close,
    .set_perm = file_set_perm,
    .refresh_limits = file_refresh_limits,
    .reopen_prepare = file_reopen_prepare,
    .reopen_commit = file_reopen_commit,
    .reopen_abort = file_reopen_abort,

    .co_preadv = file_co_preadv,
    .co_pwritev = file_co_pwritev,
    .co_pwrite_zeroes = file_co_pwrite_zeroes,
    .co_pdiscard = file_co_pdiscard,
    .co_flush = file_co_flush,
    .co_block_status = file_co_block_status,
    .co_truncate = file_co_truncate,
};
