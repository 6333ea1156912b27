/*
 * cmd-mirror.c — QMP blockdev-mirror (src/jobs/mirror.c), with QEMU's
 * names, defaults and messages:
 *
 *   drive-mirror    {job-id?, device, target (a file name), format?,
 *                    node-name?, replaces?, sync, mode?, speed?, unmap?,
 *                    ...}
 *                   mode absolute-paths (default) creates the image (the
 *                   source's format unless format; backing: sync top the
 *                   source's backing, none the source itself, full none),
 *                   existing opens it (format probed unless given); then
 *                   the same job.  The target belongs to the job, then to
 *                   whoever the pivot gives it to (not to the monitor).
 *   block-job-change {id, type: "mirror", copy-mode}
 *                   background -> write-blocking, live (QEMU 8.2's)
 *   blockdev-mirror {job-id?, device, target, replaces?, sync, speed?,
 *                    granularity?, buf-size?, on-source-error?,
 *                    on-target-error?, filter-node-name?, copy-mode?,
 *                    auto-finalize?, auto-dismiss?,
 *                    x-diskstack-target-is-zero?}
 *
 * job-id defaults to the device name; sync is required; the error
 * policies default to report; copy-mode to background.  replaces names the
 * node the target takes the place of on job-complete: the device or a node
 * below it through filters (drive-mirror: node-name is then required).
 * unmap (drive-mirror only, as in qemu-storage-daemon 7.2; default true):
 * zero regions reach the target as write-zeroes with (or without) unmap.  target-is-zero is
 * not in qemu-storage-daemon 7.2's schema, hence the x-diskstack- prefix.
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block-gs.h"
#include "cli/img.h"
#include "formats/qcow2/qcow2.h"
#include "jobs/job.h"
#include "jobs/mirror.h"
#include "qmp/commands.h"

/* Pure: the value of enum argument key among names (index), def when
 * absent, -1 with QEMU's message when not one of them. */
static int enum_arg(json_t *args, const char *key, const char *const *names,
                    int def, Error **errp)
{
    json_t *v = json_object_get(args, key);

    if (!v) {
        return def;
    }
    if (!json_is_string(v)) {
        error_setg(errp, "Invalid parameter type for '%s', expected: string", key);
        return -1;
    }
    for (int i = 0; names[i]; i++) {
        if (!strcmp(names[i], json_string_value(v))) {
            return i;
        }
    }
    error_setg(errp, "Parameter '%s' does not accept value '%s'", key,
               json_string_value(v));
    return -1;
}

static const char *str_arg(json_t *args, const char *key)
{
    return json_string_value(json_object_get(args, key));
}

static json_int_t int_arg(json_t *args, const char *key)
{
    return json_integer_value(json_object_get(args, key));
}

static bool bool_arg(json_t *args, const char *key, bool def)
{
    json_t *v = json_object_get(args, key);

    return v ? json_is_true(v) : def;
}

/* GS: QEMU's bdrv_lookup_bs(name, name). */
static BlockNode *lookup(const char *name, Error **errp) GS
{
    BlockNode *bs = bdrv_find_node(name);

    if (!bs) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'", name, name);
    }
    return bs;
}

static const char *const sync_names[] = { "top", "full", "none", "incremental",
                                          "bitmap", NULL };
static const char *const on_error_names[] = { "report", "ignore", "enospc",
                                              "stop", "auto", NULL };
static const char *const copy_mode_names[] = { "background", "write-blocking",
                                               NULL };

/* GS: the enum arguments into p; -1 on a bad one. */
static int parse_enums(json_t *args, MirrorParams *p, Error **errp) GS
{
    int sync = enum_arg(args, "sync", sync_names, -1, errp);
    int src = sync < 0 ? -1 : enum_arg(args, "on-source-error", on_error_names,
                                       BLOCKDEV_ON_ERROR_REPORT, errp);
    int tgt = src < 0 ? -1 : enum_arg(args, "on-target-error", on_error_names,
                                      BLOCKDEV_ON_ERROR_REPORT, errp);
    int mode = tgt < 0 ? -1 : enum_arg(args, "copy-mode", copy_mode_names, 0, errp);

    if (mode < 0) {
        return -1;
    }
    if (sync > MIRROR_SYNC_NONE) {
        error_setg(errp, "Sync mode '%s' not supported", sync_names[sync]);
        return -1;
    }
    p->write_blocking = mode == 1;
    p->sync = sync;
    p->on_source_error = src;
    p->on_target_error = tgt;
    return 0;
}

/* GS: the arguments both commands share into p (source looked up). */
static int parse_common(json_t *args, MirrorParams *p, Error **errp) GS
{
    if (parse_enums(args, p, errp) < 0) {
        return -1;
    }
    if (!(p->source = lookup(str_arg(args, "device"), errp))) {
        return -1;
    }
    p->replaces = str_arg(args, "replaces");    /* checked by mirror_start */
    p->no_unmap = !bool_arg(args, "unmap", true);   /* drive-mirror only */
    p->job_id = str_arg(args, "job-id") ? str_arg(args, "job-id")
                                        : str_arg(args, "device");
    p->speed = int_arg(args, "speed");
    if (int_arg(args, "granularity") < 0 ||
        int_arg(args, "granularity") > UINT32_MAX) {
        error_setg(errp, "Parameter 'granularity' expects a value in range "
                   "[512B, 64MB]");
        return -1;
    }
    p->granularity = (uint32_t)int_arg(args, "granularity");
    p->buf_size = int_arg(args, "buf-size");
    p->filter_node_name = str_arg(args, "filter-node-name");
    p->auto_finalize = bool_arg(args, "auto-finalize", true);
    p->auto_dismiss = bool_arg(args, "auto-dismiss", true);
    p->target_is_zero = bool_arg(args, "x-diskstack-target-is-zero", false);
    return 0;
}

static json_t *coroutine_fn blockdev_mirror(json_t *args, Error **errp)
{
    MirrorParams p = { 0 };

    global_lock_assert_held();
    if (parse_common(args, &p, errp) < 0 ||
        !(p.target = lookup(str_arg(args, "target"), errp))) {
        return NULL;
    }
    return mirror_start(&p, errp) < 0 ? NULL : json_object();
}

/* ------------------------------------------------------------ drive-mirror */

/* GS: the node whose file the new image names as its backing: the
 * source's backing (top), the source (none), none (full). */
static BlockNode *new_image_backing(BlockNode *src, MirrorSyncMode sync) GS
{
    BlockNode *b = NULL;

    if (sync == MIRROR_SYNC_NONE) {
        return src;
    }
    bdrv_graph_rdlock_main_loop();
    if (sync == MIRROR_SYNC_TOP && src->backing) {
        b = src->backing->node;
    }
    bdrv_graph_rdunlock_main_loop();
    return b;
}

/* GS, coroutine: writes a new image of format fmt at path, the source's
 * size, over backing (may be NULL).  The file is opened as a node first,
 * which takes its image lock: a file in use elsewhere is refused. */
static int coroutine_fn create_target(const char *path, const char *fmt,
                                      BlockNode *src, BlockNode *backing,
                                      Error **errp) GS
{
    if (strcmp(fmt, "qcow2") && strcmp(fmt, "raw")) {
        error_setg(errp, "Unknown file format '%s'", fmt);
        return -EINVAL;
    }
    if (backing && strcmp(fmt, "qcow2")) {
        error_setg(errp, "Backing file not supported for file format '%s'", fmt);
        return -ENOTSUP;
    }
    if (img_create_file(path, errp) < 0) {
        return -EIO;
    }
    json_t *def = json_pack("{s:s, s:s}", "driver", "file", "filename", path);
    BlockNode *file = bdrv_co_open_blockdev(def, errp);
    json_decref(def);
    if (!file) {
        return -EIO;
    }
    BlockBackend *blk = blk_new("drive-mirror", BLK_PERM_CONSISTENT_READ |
                                BLK_PERM_WRITE | BLK_PERM_RESIZE,
                                BLK_PERM_CONSISTENT_READ);
    int ret = blk_insert_node(blk, file, errp);
    if (ret == 0 && !strcmp(fmt, "qcow2")) {
        Qcow2CreateOpts opts = {
            .size = (uint64_t)bdrv_getlength(src),
            .backing_file = backing ? backing->filename : NULL,
            .backing_format = backing ? backing->drv->format_name : NULL,
        };
        ret = qcow2_co_create(blk, &opts, errp);
    } else if (ret == 0) {
        ret = blk_co_truncate(blk, bdrv_getlength(src), true, errp);
    }
    blk_co_unref(blk);
    char name[sizeof(file->node_name)];
    snprintf(name, sizeof(name), "%s", file->node_name);
    bdrv_co_blockdev_del(name, NULL);
    return ret < 0 ? ret : 0;
}

/* GS, coroutine: opens the target image (backing from its header, except
 * for sync full, which copies everything) with the source's discard
 * option, as QEMU opens it with the source's flags: with discard=unmap
 * the zero regions of unmap=true become holes. */
static BlockNode *coroutine_fn open_target(json_t *args, const char *fmt,
                                           BlockNode *src, MirrorSyncMode sync,
                                           Error **errp) GS
{
    json_t *def = json_pack("{s:s, s:{s:s, s:s}}", "driver", fmt, "file",
                            "driver", "file", "filename", str_arg(args, "target"));
    json_t *discard = json_object_get(src->options, "discard");
    if (json_is_string(discard)) {
        json_object_set(def, "discard", discard);
    }
    if (str_arg(args, "node-name")) {
        json_object_set_new(def, "node-name", json_string(str_arg(args, "node-name")));
    }
    if (sync == MIRROR_SYNC_FULL && !strcmp(fmt, "qcow2")) {
        json_object_set_new(def, "backing", json_null());
    }
    BlockNode *bs = bdrv_co_open_blockdev(def, errp);
    json_decref(def);
    return bs;
}

static const char *const mode_names[] = { "existing", "absolute-paths", NULL };

static json_t *coroutine_fn drive_mirror(json_t *args, Error **errp)
{
    MirrorParams p = { 0 };
    const char *path = str_arg(args, "target");
    const char *fmt = str_arg(args, "format");
    bool created = false;

    global_lock_assert_held();
    int mode = enum_arg(args, "mode", mode_names, 1, errp);
    if (mode < 0 || parse_common(args, &p, errp) < 0) {
        return NULL;
    }
    if (p.replaces && !str_arg(args, "node-name")) {
        error_setg(errp, "a node-name must be provided when replacing a named "
                   "node of the graph");
        return NULL;
    }
    if (mode == 1) {
        struct stat st;
        fmt = fmt ? fmt : p.source->drv->format_name;
        created = stat(path, &st) < 0;
        if (create_target(path, fmt, p.source, new_image_backing(p.source, p.sync),
                          errp) < 0) {
            goto fail;
        }
        /* a new image without backing reads as zeroes: only what the
         * source allocates is copied (QEMU's zero-init case) */
        p.target_is_zero |= p.sync == MIRROR_SYNC_FULL;
    } else if (!fmt && !(fmt = img_co_probe(path, errp))) {
        return NULL;
    }
    if (!(p.target = open_target(args, fmt, p.source, p.sync, errp))) {
        goto fail;
    }
    if (mirror_start(&p, errp) < 0) {
        char name[sizeof(p.target->node_name)];
        snprintf(name, sizeof(name), "%s", p.target->node_name);
        bdrv_co_blockdev_del(name, NULL);
        goto fail;
    }
    bdrv_monitor_release(p.target);     /* the job's and then its users' */
    return json_object();
fail:
    if (created) {
        unlink(path);
    }
    return NULL;
}

static const QmpArg blockdev_mirror_args[] = {
    { "job-id", ARG_STR, false },
    { "device", ARG_STR, true },
    { "target", ARG_STR, true },
    { "replaces", ARG_STR, false },
    { "sync", ARG_STR, true },
    { "speed", ARG_INT, false },
    { "granularity", ARG_INT, false },
    { "buf-size", ARG_INT, false },
    { "on-source-error", ARG_STR, false },
    { "on-target-error", ARG_STR, false },
    { "filter-node-name", ARG_STR, false },
    { "copy-mode", ARG_STR, false },
    { "auto-finalize", ARG_BOOL, false },
    { "auto-dismiss", ARG_BOOL, false },
    { "x-diskstack-target-is-zero", ARG_BOOL, false },
    { NULL },
};

/* ------------------------------------------------------------ block-job-change */

static json_t *coroutine_fn block_job_change(json_t *args, Error **errp)
{
    const char *id = str_arg(args, "id");
    Error *local = NULL;
    Job *job;

    global_lock_assert_held();
    if (!(job = job_get(id))) {
        error_set_class(errp, "DeviceNotActive", "Block job '%s' not found", id);
        return NULL;
    }
    if (strcmp(str_arg(args, "type"), job->driver->type) || !job_is_mirror(job)) {
        error_setg(errp, "Job type does not match");
        return NULL;
    }
    int mode = enum_arg(args, "copy-mode", copy_mode_names, -1, &local);
    if (mode < 0) {
        if (!local) {
            error_setg(&local, "Parameter 'copy-mode' is missing");
        }
        error_propagate(errp, local);
        return NULL;
    }
    return mirror_change_copy_mode(job, mode == 1, errp) < 0 ? NULL : json_object();
}

static const QmpArg block_job_change_args[] = {
    { "id", ARG_STR, true },
    { "type", ARG_STR, true },
    { "copy-mode", ARG_STR, false },
    { NULL },
};

static const QmpArg drive_mirror_args[] = {
    { "job-id", ARG_STR, false },
    { "device", ARG_STR, true },
    { "target", ARG_STR, true },
    { "format", ARG_STR, false },
    { "node-name", ARG_STR, false },
    { "replaces", ARG_STR, false },
    { "sync", ARG_STR, true },
    { "mode", ARG_STR, false },
    { "speed", ARG_INT, false },
    { "granularity", ARG_INT, false },
    { "buf-size", ARG_INT, false },
    { "on-source-error", ARG_STR, false },
    { "on-target-error", ARG_STR, false },
    { "unmap", ARG_BOOL, false },
    { "copy-mode", ARG_STR, false },
    { "auto-finalize", ARG_BOOL, false },
    { "auto-dismiss", ARG_BOOL, false },
    { "x-diskstack-target-is-zero", ARG_BOOL, false },
    { NULL },
};

const QmpCommandDef qmp_mirror_commands[] = {
    { { "block-job-change", block_job_change,
        "change a running block job (mirror: copy-mode)" },
      block_job_change_args },
    { { "drive-mirror", drive_mirror,
        "mirror a node to an image file (created or existing)" },
      drive_mirror_args },
    { { "blockdev-mirror", blockdev_mirror,
        "mirror a node to another node; job-complete pivots to it" },
      blockdev_mirror_args },
    { { NULL } },
};
