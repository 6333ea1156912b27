/*
 * fuse-int.h — private to the FUSE export (the .c files under fuse/).
 *
 * The export is split in three files, one concern each:
 *   export.c  lifetime: options, block_export_add/del, the queues, the
 *             reader coroutines and the request buffer pools.
 *   proto.c   the kernel protocol: decodes one request from /dev/fuse,
 *             runs it against the backend, writes the reply.
 *   mount.c   libfuse for mount/unmount only, /proc/self/mountinfo, and
 *             aborting the connection through fusectl.
 *   io-error.c the error policy (rerror/werror), BLOCK_IO_ERROR, and the
 *             pause of the `stop` policy with its resume.
 * mount.c includes libfuse's headers and proto.c <linux/fuse.h>; the two
 * define some of the same macros, so they never meet in one file.
 *
 * Threads: an export is created and deleted by GS code on the main loop.
 * Each queue (one cloned /dev/fuse fd) lives on one IOThread: its reader
 * coroutine, its request coroutines and its buffer pool are touched only by
 * that thread, so the pool needs no lock.  Export-wide state written after
 * creation (the stored attributes, the negotiated protocol minor) is under
 * attr_lock or atomic.
 */
#ifndef DISKSTACK_FUSE_INT_H
#define DISKSTACK_FUSE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "block-common.h"
#include "coroutine/coroutine.h"
#include "loop/loop.h"
#include "fuse/export.h"

/* Largest WRITE payload / READ reply we negotiate (max_pages = 256). */
#define FUSE_EXPORT_MAX_IO      (1024 * 1024)
#define FUSE_EXPORT_MAX_PAGES   256
#define FUSE_EXPORT_PAGE        4096
/*
 * A request buffer: one page of slack, then 1 MiB + one page for the
 * request.  The request is read at offset PAGE - FUSE_WRITE_HDR_LEN so that a
 * WRITE's payload (after fuse_in_header + fuse_write_in = 80 bytes) starts
 * page-aligned at PAGE, and a READ's data is read to PAGE too: both are then
 * usable for O_DIRECT without a bounce buffer.  The slack before the request
 * holds the FuseRequest itself.
 */
#define FUSE_WRITE_HDR_LEN      80
#define FUSE_REQ_OFFSET         (FUSE_EXPORT_PAGE - FUSE_WRITE_HDR_LEN)
#define FUSE_READ_LEN           (FUSE_EXPORT_MAX_IO + FUSE_EXPORT_PAGE)
#define FUSE_BUF_SIZE           (FUSE_REQ_OFFSET + FUSE_READ_LEN + FUSE_WRITE_HDR_LEN)
/* Buffers per queue; when all are in use the reader stops reading. */
#define FUSE_POOL_MAX           32

typedef struct FuseQueue FuseQueue;

/* What an export does when a request fails below it (rerror / werror):
 * QEMU's BlockdevOnError; "auto" is taken as the default, report. */
typedef enum FuseErrorPolicy {
    FUSE_ERR_REPORT,            /* the caller gets the errno */
    FUSE_ERR_IGNORE,            /* the caller gets success */
    FUSE_ERR_ENOSPC,            /* stop on ENOSPC, report anything else */
    FUSE_ERR_STOP,              /* pause the export until resumed */
} FuseErrorPolicy;

/* query-block-exports' io-status (QEMU's BlockDeviceIoStatus). */
typedef enum FuseIoStatus {
    FUSE_IO_STATUS_OK,
    FUSE_IO_STATUS_FAILED,
    FUSE_IO_STATUS_NOSPACE,
} FuseIoStatus;

typedef struct FuseMount {
    void *session;               /* struct fuse_session * (mount.c) */
    char *path;                  /* absolute path of the mountpoint */
    unsigned conn_id;            /* fusectl directory name (st_dev) */
    bool allow_other;
} FuseMount;

/* One request in flight; lives at the start of its buffer. */
typedef struct FuseRequest {
    FuseQueue *q;
    uint8_t *mem;                /* the buffer (FUSE_BUF_SIZE bytes) */
    uint8_t *in;                 /* mem + FUSE_REQ_OFFSET: fuse_in_header */
    size_t len;                  /* bytes read from /dev/fuse */
    bool held;                   /* counted in exp->held (io-error.c) */
} FuseRequest;

struct FuseQueue {
    BlockExport *exp;
    int fd;                      /* cloned /dev/fuse fd, O_NONBLOCK */
    Loop *loop;                  /* the IOThread's loop (or the main loop) */
    /* Below: only touched on loop's thread. */
    uint8_t *free_bufs[FUSE_POOL_MAX];
    int nfree, nalloc;
    Coroutine *reader_waiting;   /* reader yielded for a free buffer */
};

struct BlockExport {
    char *id;
    BlockBackend *blk;
    FuseMount mnt;
    bool writable, growable, writethrough, direct_io;

    FuseQueue *queues;
    int nqueues;

    /*
     * Serialises resizes (growing writes and fallocates, truncates) with
     * the transient resize permission each takes (export.c), so two of
     * them never shrink each other.  resize_refusal (under grow_lock): the
     * message logged for the last refused attempt, NULL after a success.
     */
    CoMutex grow_lock;
    char *resize_refusal;
    /* Kernel protocol minor agreed in INIT (0 before INIT). */
    _Atomic uint32_t proto_minor;

    /*
     * Error policy (io-error.c).  rerror/werror are immutable after
     * creation.  The pause of the stop policy: `paused` is written under
     * pause_lock and read without it on the fast path; requests held while
     * paused wait in `resumed`.  `held` counts the requests that waited in
     * a pause until their reply is written; block_export_del waits on
     * `unheld` for it to reach 0 after failing them with EIO.
     */
    FuseErrorPolicy rerror, werror;
    CoMutex pause_lock;
    CoQueue resumed;
    _Atomic bool paused;
    _Atomic int io_status;       /* FuseIoStatus */
    _Atomic int held;
    CoEvent unheld;

    /* Attributes setattr may change. */
    pthread_mutex_t attr_lock;
    uint32_t mode, uid, gid;
    struct timespec atime, mtime, ctime;

    /*
     * Readers and requests alive, plus one reference held until
     * block_export_del; the one that drops it to zero sets `done`.
     */
    _Atomic int active;
    CoEvent done;
    _Atomic bool deleting;
    _Atomic bool gone_reported;
    void (*gone_cb)(BlockExport *, void *);
    void *gone_opaque;

    BlockExport *next;           /* GS: the list of exports */
};

/* export.c — I/O or GS, any thread. */
void fuse_export_active_ref(BlockExport *exp);
void fuse_export_active_unref(BlockExport *exp);
/*
 * export.c — I/O, in a request coroutine of a growable export: resizes the
 * node to `size` (only if it is shorter, when grow_only), holding the
 * resize permission for that time only.  0 when done or nothing to do,
 * -EBUSY when another user of the node (a job) refuses resizes (nothing
 * was changed), or the truncate's -errno.  Serialised per export.
 */
int coroutine_fn fuse_export_resize(BlockExport *exp, int64_t size,
                                    bool grow_only);

/*
 * io-error.c — the error policy.
 *
 * GS: fuse_error_init() sets the policies from the checked definition
 * (-EINVAL naming a bad value); fuse_error_release_held() fails every held
 * request with EIO and returns once each has replied (block_export_del,
 * before the connection is aborted, so the callers see EIO).
 */
int fuse_error_init(BlockExport *exp, const char *rerror, const char *werror,
                    Error **errp) GS;
void coroutine_fn fuse_error_release_held(BlockExport *exp) GS;
/*
 * I/O, in a request coroutine:
 *   fuse_wait_running()  holds a new request while the export is paused:
 *                        0 to go on, -EIO when the export is being deleted.
 *   fuse_io_error()      applies rerror (is_write false) or werror to a
 *                        request that failed with ret < 0 and posts
 *                        BLOCK_IO_ERROR: returns ret (report), FUSE_IO_IGNORED
 *                        (the caller succeeds), FUSE_IO_RETRY (resumed after
 *                        a stop) or -EIO (deleted while held).
 *   fuse_request_done()  after the reply: un-counts a request that was held.
 */
#define FUSE_IO_IGNORED 1
#define FUSE_IO_RETRY   2
int coroutine_fn fuse_wait_running(FuseRequest *req);
int coroutine_fn fuse_io_error(FuseRequest *req, bool is_write, int ret);
void fuse_request_done(FuseRequest *req);

/* proto.c — I/O, on the queue's thread, in the request's coroutine. */
void coroutine_fn fuse_handle_request(FuseRequest *req);

/* mount.c — GS. */
int fuse_mount_file(FuseMount *m, const char *path, bool allow_other,
                    bool read_only, Error **errp) GS;
void fuse_unmount_file(FuseMount *m) GS;
/* Forces the connection down (requests still open fail) via fusectl. */
void fuse_abort_conn(FuseMount *m) GS;
int fuse_mount_fd(FuseMount *m) GS;
/* True if path (absolute) is a mountpoint in /proc/self/mountinfo. */
bool fuse_path_is_mounted(const char *abs_path) GS;
/* Absolute path of the file without following a final symlink or stat'ing
 * the file itself (a dead FUSE mount there would fail with ENOTCONN). */
char *fuse_abs_path(const char *path) GS;

#endif
