/*
 * io-error.c — what a FUSE export does when a request fails below it.
 *
 * The policy is QEMU's rerror/werror (BlockdevOnError) applied to an export
 * instead of a guest device: rerror for reads, werror for writes, write
 * zeroes (fallocate) and flushes.
 *
 *   report  the caller gets the errno (the default: a program reading a
 *           file expects an error, not a hang)
 *   ignore  the caller gets success; a read returns zeroes
 *   enospc  stop on ENOSPC, report anything else
 *   stop    the export pauses: the failed request and every later request
 *           of the export that reaches the node, but flushes, is held (not
 *           failed, not lost) until x-diskstack-export-resume, which retries
 *           the failed ones (proto.c's held_while_paused says why a close's
 *           flush goes on)
 *
 * Each error posts BLOCK_IO_ERROR (device: the export id, node-name: the
 * node the export serves, operation, action, nospace, reason) — once per
 * pause for stop, once per failed request otherwise; no rate limit, as in
 * QEMU.  io-status (query-block-exports) is "failed" or "nospace" while a
 * stop pause lasts, "ok" otherwise.
 *
 * The pause and drains.  A held request waits here, in the export, after
 * its blk_co_* call returned (or before it made one): it is not in flight
 * on the backend.  So a quiesced section or a graph change below the export
 * while it is paused never waits for held requests (no deadlock), and
 * blk_co_drain in block_export_del returns at once for them.  The retry
 * after a resume goes through blk_co_* again and sees the graph as it is
 * then.  Deleting a paused export fails the held requests with EIO first
 * (fuse_error_release_held) and waits until their replies are written, so
 * the callers get EIO and not the connection abort's ECONNABORTED.
 *
 * Threading: the policies are immutable after block_export_add.  The pause
 * state is under pause_lock, a CoMutex shared by request coroutines on every
 * IOThread and by the GS coroutines of resume and delete on the main loop;
 * `paused` is also read without it on the fast path (a request that slips
 * past a pause that is just beginning runs, as if it had come first).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block-events.h"
#include "block-gs.h"
#include "fuse/fuse-int.h"

/* ------------------------------------------------------------ options */

static const char *const policy_names[] = {
    [FUSE_ERR_REPORT] = "report",
    [FUSE_ERR_IGNORE] = "ignore",
    [FUSE_ERR_ENOSPC] = "enospc",
    [FUSE_ERR_STOP] = "stop",
};

/* Pure: the policy named s ("auto" is the default, report); -1 if none. */
static int policy_parse(const char *s)
{
    if (!strcmp(s, "auto")) {
        return FUSE_ERR_REPORT;
    }
    for (size_t i = 0; i < ARRAY_SIZE(policy_names); i++) {
        if (!strcmp(s, policy_names[i])) {
            return i;
        }
    }
    return -1;
}

int fuse_error_init(BlockExport *exp, const char *rerror, const char *werror,
                    Error **errp) GS
{
    int r = policy_parse(rerror), w = policy_parse(werror);

    GS_CODE();
    if (r < 0 || w < 0) {
        error_setg(errp, "Parameter '%s' does not accept value '%s'",
                   r < 0 ? "rerror" : "werror", r < 0 ? rerror : werror);
        return -EINVAL;
    }
    exp->rerror = r;
    exp->werror = w;
    co_mutex_init(&exp->pause_lock);
    co_queue_init(&exp->resumed);
    co_event_init(&exp->unheld);
    atomic_init(&exp->paused, false);
    atomic_init(&exp->io_status, FUSE_IO_STATUS_OK);
    atomic_init(&exp->held, 0);
    return 0;
}

/* ------------------------------------------------------------ events */

typedef struct IoErrorEvent {
    BlockExport *exp;
    json_t *data;
} IoErrorEvent;

/* GS, a bottom half on the main loop: adds the node the export serves now
 * (only GS code may ask) and posts the event.  The export is kept alive by
 * the active reference post_event() took. */
static void io_error_event_bh(void *opaque)
{
    IoErrorEvent *ev = opaque;

    global_lock_assert_held();
    json_object_set_new(ev->data, "node-name",
                        json_string(block_export_node_name(ev->exp)));
    block_event_post("BLOCK_IO_ERROR", ev->data);
    fuse_export_active_unref(ev->exp);
    free(ev);
}

/* I/O, any thread: BLOCK_IO_ERROR for errno err.  nospace is always
 * present, as QEMU gives it for devices that report an io-status. */
static void post_event(BlockExport *exp, bool is_write, const char *action,
                       int err)
{
    IoErrorEvent *ev = malloc(sizeof(*ev));

    if (!ev) {
        return;
    }
    ev->exp = exp;
    ev->data = json_pack("{s:s,s:s,s:s,s:b,s:s}", "device", exp->id,
                         "operation", is_write ? "write" : "read",
                         "action", action, "nospace", err == ENOSPC,
                         "reason", strerror(err));
    fuse_export_active_ref(exp);
    loop_schedule(loop_main(), io_error_event_bh, ev);
}

/* ------------------------------------------------------------ the pause */

/*
 * Waits while the export is paused.  I/O, request coroutine, pause_lock
 * held.  Returns 0 to go on, -EIO when the export is being deleted.
 */
static int coroutine_fn wait_locked(FuseRequest *req)
{
    BlockExport *exp = req->q->exp;

    while (atomic_load(&exp->paused)) {
        if (atomic_load(&exp->deleting)) {
            return -EIO;
        }
        if (!req->held) {
            req->held = true;
            atomic_fetch_add(&exp->held, 1);
        }
        co_queue_wait(&exp->resumed, &exp->pause_lock);
    }
    return 0;
}

int coroutine_fn fuse_wait_running(FuseRequest *req)
{
    BlockExport *exp = req->q->exp;
    int ret;

    if (!atomic_load(&exp->paused)) {
        return 0;
    }
    co_mutex_lock(&exp->pause_lock);
    ret = wait_locked(req);
    co_mutex_unlock(&exp->pause_lock);
    return ret;
}

/* I/O, request coroutine: the stop action.  Pauses the export (the first
 * failure of a pause sets io-status and posts the event), then waits for
 * the resume.  FUSE_IO_RETRY, or -EIO when the export is being deleted. */
static int coroutine_fn stop_on_error(FuseRequest *req, bool is_write, int err)
{
    BlockExport *exp = req->q->exp;
    int ret = -EIO;

    co_mutex_lock(&exp->pause_lock);
    if (!atomic_load(&exp->deleting)) {
        if (!atomic_load(&exp->paused)) {
            atomic_store(&exp->io_status, err == ENOSPC ? FUSE_IO_STATUS_NOSPACE
                                                        : FUSE_IO_STATUS_FAILED);
            atomic_store(&exp->paused, true);
            post_event(exp, is_write, "stop", err);
        }
        ret = wait_locked(req) < 0 ? -EIO : FUSE_IO_RETRY;
    }
    co_mutex_unlock(&exp->pause_lock);
    return ret;
}

int coroutine_fn fuse_io_error(FuseRequest *req, bool is_write, int ret)
{
    BlockExport *exp = req->q->exp;
    FuseErrorPolicy p = is_write ? exp->werror : exp->rerror;
    int err = ret > -4096 ? -ret : EIO;

    if (p == FUSE_ERR_ENOSPC) {
        p = err == ENOSPC ? FUSE_ERR_STOP : FUSE_ERR_REPORT;
    }
    switch (p) {
    case FUSE_ERR_IGNORE:
        post_event(exp, is_write, "ignore", err);
        return FUSE_IO_IGNORED;
    case FUSE_ERR_STOP:
        return stop_on_error(req, is_write, err);
    default:
        post_event(exp, is_write, "report", err);
        return ret;
    }
}

/* I/O or GS, any thread: after the request's reply. */
void fuse_request_done(FuseRequest *req)
{
    BlockExport *exp = req->q->exp;

    if (req->held && atomic_fetch_sub(&exp->held, 1) == 1 &&
        atomic_load(&exp->deleting)) {
        co_event_set(&exp->unheld);
    }
}

/* ------------------------------------------------------------ GS */

int coroutine_fn block_export_resume(BlockExport *exp, Error **errp) GS
{
    int ret = 0;

    GS_CODE();
    co_mutex_lock(&exp->pause_lock);
    if (atomic_load(&exp->paused)) {
        atomic_store(&exp->paused, false);
        atomic_store(&exp->io_status, FUSE_IO_STATUS_OK);
        co_queue_restart_all(&exp->resumed);
    } else {
        error_setg(errp, "Export '%s' is not paused", exp->id);
        ret = -EINVAL;
    }
    co_mutex_unlock(&exp->pause_lock);
    return ret;
}

/* exp->deleting is set: every waiter (now or later) gives up with EIO. */
void coroutine_fn fuse_error_release_held(BlockExport *exp) GS
{
    GS_CODE();
    co_mutex_lock(&exp->pause_lock);
    co_queue_restart_all(&exp->resumed);
    co_mutex_unlock(&exp->pause_lock);
    if (atomic_load(&exp->held) > 0) {
        co_event_wait(&exp->unheld);
    }
}

const char *block_export_io_status(const BlockExport *exp) GS
{
    static const char *const names[] = {
        [FUSE_IO_STATUS_OK] = "ok",
        [FUSE_IO_STATUS_FAILED] = "failed",
        [FUSE_IO_STATUS_NOSPACE] = "nospace",
    };

    GS_CODE();
    return names[atomic_load(&exp->io_status)];
}
