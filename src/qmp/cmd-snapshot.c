/*
 * cmd-snapshot.c — QMP commands: blockdev-snapshot, blockdev-snapshot-sync,
 * blockdev-snapshot-internal-sync, blockdev-snapshot-delete-internal-sync,
 * transaction, block_resize, change-backing-file.
 *
 * Names, arguments, replies and error messages are qemu-storage-daemon's
 * (checked against qemu-storage-daemon 7.2).  qsd has no devices: its
 * exports' backends are anonymous, so a `device` argument only matches
 * where QEMU also looks it up as a node name (internal snapshots,
 * change-backing-file), never in blockdev-snapshot-sync or block_resize.
 *
 * The snapshot commands are transactions of one action, and `transaction`
 * runs several at one instant, all or nothing:
 *
 *   1. parse    every action's arguments (nothing happens on a bad one);
 *   2. prepare  each action: find its nodes (taking references), check what
 *               can be checked, create and open the overlays of
 *               blockdev-snapshot-sync — slow work, done while I/O runs;
 *   3. commit   quiesce every node involved (the exports above hold new
 *               requests, requests in flight complete), flush the old tops,
 *               take the internal snapshots, then with the graph write lock
 *               append every overlay; end the sections.  The instant of the
 *               snapshot is the same for every disk: no request reached any
 *               of them between the first section and the last append;
 *   4. finish   as QEMU: every old top is reopened read-only (giving up its
 *               image's write lock) and the overlays -sync opened belong to
 *               their parents from now on, not to the monitor;
 *      or abort on any failure, undo every action in reverse: overlays
 *               appended are removed again, internal snapshots taken are
 *               deleted, overlays opened are closed, overlay files this
 *               transaction created are removed.  The graph is as before.
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block-gs.h"
#include "block-io.h"
#include "cli/img.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"
#include "qmp/commands.h"

/* ------------------------------------------------------------ lookups */

/* QEMU's bdrv_lookup_bs(device, node_name) where no device exists. */
static BlockNode *lookup_node(const char *device, const char *node_name,
                              Error **errp) GS
{
    BlockNode *bs = node_name ? bdrv_find_node(node_name) : NULL;

    if (!bs) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'",
                   device ? device : "", node_name ? node_name : "");
    }
    return bs;
}

/* The first parent of bs that is a node using it with role (any role when
 * role is 0), or NULL. */
static BlockNode *node_parent_with_role_locked(BlockNode *bs, BdrvChildRole role)
    GRAPH_RDLOCK GS
{
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        if (c->parent_node && (!role || (c->role & role))) {
            return c->parent_node;
        }
    }
    return NULL;
}

static BlockNode *node_parent_with_role(BlockNode *bs, BdrvChildRole role) GS
{
    bdrv_graph_rdlock_main_loop();
    BlockNode *found = node_parent_with_role_locked(bs, role);
    bdrv_graph_rdunlock_main_loop();
    return found;
}

/* QEMU's qmp_get_root_bs(): a node that no other node uses. */
static BlockNode *lookup_root(const char *device, Error **errp) GS
{
    BlockNode *bs = lookup_node(device, device, errp);

    if (bs && node_parent_with_role(bs, 0)) {
        error_setg(errp, "Need a root block node");
        return NULL;
    }
    return bs;
}

/* QEMU blocks snapshots and resizes of a node another node uses as its
 * backing file (an op blocker); the messages are its. */
static int check_not_backing_locked(BlockNode *bs, Error **errp) GRAPH_RDLOCK GS
{
    BlockNode *user = node_parent_with_role_locked(bs, BDRV_CHILD_COW);

    if (user) {
        error_setg(errp, "Node '%s' is busy: node is used as backing hd of '%s'",
                   bs->node_name, user->node_name);
        return -EBUSY;
    }
    return 0;
}

static int check_not_backing(BlockNode *bs, Error **errp) GS
{
    bdrv_graph_rdlock_main_loop();
    int ret = check_not_backing_locked(bs, errp);
    bdrv_graph_rdunlock_main_loop();
    return ret;
}

static BlockNode *backing_node(BlockNode *bs) GS
{
    bdrv_graph_rdlock_main_loop();
    BlockNode *b = bs->backing ? bs->backing->node : NULL;
    bdrv_graph_rdunlock_main_loop();
    return b;
}

static const char *arg_str(json_t *args, const char *key)
{
    return json_string_value(json_object_get(args, key));
}

/* ------------------------------------------------------------ internal snapshots */

/* The snapshots of bs; -errno when its format has none. */
static int list_snapshots(BlockNode *bs, BdrvSnapshotInfo **out) GS
{
    *out = NULL;
    if (!bs->drv->snapshot_list) {
        return -ENOTSUP;
    }
    return bs->drv->snapshot_list(bs, out);
}

/* QEMU's match: both given, both must match; else the one given. */
static int find_snapshot(BlockNode *bs, const char *id, const char *name,
                         BdrvSnapshotInfo *found, Error **errp) GS
{
    BdrvSnapshotInfo *list;
    int n = list_snapshots(bs, &list);

    if (n < 0) {
        error_setg_errno(errp, -n, "Failed to get a snapshot list");
        return n;
    }
    int ret = 0;
    for (int i = 0; i < n && !ret; i++) {
        if ((!id || !strcmp(list[i].id, id)) && (!name || !strcmp(list[i].name, name))) {
            *found = list[i];
            ret = 1;
        }
    }
    free(list);
    return ret;
}

static int check_no_snapshot_named(BlockNode *bs, const char *device,
                                   const char *name, Error **errp) GS
{
    BdrvSnapshotInfo sn;
    int ret = find_snapshot(bs, NULL, name, &sn, errp);

    if (ret > 0) {
        error_setg(errp, "Snapshot with name '%s' already exists on device '%s'",
                   name, device);
        return -EEXIST;
    }
    return ret;
}

/* ------------------------------------------------------------ actions */

typedef enum ActionKind {
    ACT_SNAPSHOT,           /* blockdev-snapshot */
    ACT_SNAPSHOT_SYNC,      /* blockdev-snapshot-sync */
    ACT_INTERNAL,           /* blockdev-snapshot-internal-sync */
    ACT_ABORT,              /* abort */
} ActionKind;

typedef struct Action {
    ActionKind kind;
    json_t *data;               /* the action's arguments (borrowed) */
    BlockNode *top;             /* reference held from prepare on */
    BlockNode *overlay;         /* external: reference held */
    bool opened;                /* -sync opened the overlay: close on abort */
    char *created_file;         /* -sync created this file: remove on abort */
    bool appended;
    bool snap_created;          /* internal: delete snap_id on abort */
    char snap_id[128];
} Action;

static const char *const action_names[] = {
    [ACT_SNAPSHOT] = "blockdev-snapshot",
    [ACT_SNAPSHOT_SYNC] = "blockdev-snapshot-sync",
    [ACT_INTERNAL] = "blockdev-snapshot-internal-sync",
    [ACT_ABORT] = "abort",
};

static const QmpArg snapshot_args[] = {
    { "node", ARG_STR, true }, { "overlay", ARG_STR, true }, { NULL },
};
static const QmpArg snapshot_sync_args[] = {
    { "device", ARG_STR, false }, { "node-name", ARG_STR, false },
    { "snapshot-file", ARG_STR, true }, { "snapshot-node-name", ARG_STR, false },
    { "format", ARG_STR, false }, { "mode", ARG_STR, false }, { NULL },
};
static const QmpArg internal_args[] = {
    { "device", ARG_STR, true }, { "name", ARG_STR, true }, { NULL },
};
static const QmpArg no_args[] = { { NULL } };

static const QmpArg *const action_args[] = {
    [ACT_SNAPSHOT] = snapshot_args,
    [ACT_SNAPSHOT_SYNC] = snapshot_sync_args,
    [ACT_INTERNAL] = internal_args,
    [ACT_ABORT] = no_args,
};

/* Pure: the enum values are checked with the arguments, as QEMU does. */
static int check_enums(ActionKind kind, json_t *data, Error **errp)
{
    const char *mode = arg_str(data, "mode");

    if (kind == ACT_SNAPSHOT_SYNC && mode && strcmp(mode, "existing") &&
        strcmp(mode, "absolute-paths")) {
        error_setg(errp, "Parameter 'mode' does not accept value '%s'", mode);
        return -1;
    }
    return 0;
}

/* GS: the external snapshot actions' top node: found, held (the action's
 * abort drops the reference) and not someone's backing.  0 or -errno. */
static int take_top(Action *a, const char *device, const char *node_name,
                    Error **errp) GS
{
    GS_CODE();
    a->top = lookup_node(device, node_name, errp);
    if (!a->top) {
        return -ENOENT;
    }
    bdrv_ref(a->top);
    return check_not_backing(a->top, errp) < 0 ? -EBUSY : 0;
}

/* ---- blockdev-snapshot ---- */

static int coroutine_fn prepare_snapshot(Action *a, Error **errp) GS
{
    const char *node = arg_str(a->data, "node");
    const char *overlay = arg_str(a->data, "overlay");
    int ret = take_top(a, node, node, errp);

    if (ret < 0) {
        return ret;
    }
    a->overlay = lookup_node(overlay, overlay, errp);
    if (!a->overlay) {
        return -ENOENT;
    }
    bdrv_ref(a->overlay);
    return 0;
}

/* ---- blockdev-snapshot-sync ---- */

/* Writes an empty qcow2 image at path over top: backing file = top's
 * filename, backing format = top's format, the same size.  The image file
 * is opened as a file node with write and resize permission first, which
 * takes its lock: an image in use elsewhere is refused. */
static int coroutine_fn create_overlay_file(const char *path, BlockNode *top,
                                            Error **errp) GS
{
    json_t *def = json_pack("{s:s, s:s}", "driver", "file", "filename", path);
    BlockNode *file = bdrv_co_open_blockdev(def, errp);
    json_decref(def);
    if (!file) {
        return -EIO;
    }
    BlockBackend *blk = blk_new("snapshot-create", BLK_PERM_CONSISTENT_READ |
                                BLK_PERM_WRITE | BLK_PERM_RESIZE,
                                BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED);
    int ret = blk_insert_node(blk, file, errp);
    if (ret == 0) {
        Qcow2CreateOpts opts = {
            .size = (uint64_t)bdrv_getlength(top),
            .backing_file = top->filename,
            .backing_format = top->drv->format_name,
        };
        ret = qcow2_co_create(blk, &opts, errp);
        blk_co_remove_node(blk);
    }
    blk_co_unref(blk);
    char name[sizeof(file->node_name)];
    snprintf(name, sizeof(name), "%s", file->node_name);
    bdrv_co_blockdev_del(name, NULL);
    if (ret < 0) {
        error_prepend(errp, "Could not create '%s': ", path);
    }
    return ret < 0 ? ret : 0;
}

/* Checks the format and creates the image (mode absolute-paths). */
static int coroutine_fn create_overlay(Action *a, const char *path,
                                       const char *format, Error **errp) GS
{
    const BlockDriver *drv = bdrv_find_driver(format);
    struct stat st;

    if (!drv) {
        error_setg(errp, "Unknown file format '%s'", format);
        return -EINVAL;
    }
    if (strcmp(format, "qcow2")) {
        error_setg(errp, "Backing file not supported for file format '%s'", format);
        return -ENOTSUP;
    }
    bool existed = stat(path, &st) == 0;
    if (img_create_file(path, errp) < 0) {
        return -EIO;
    }
    if (!existed) {
        a->created_file = strdup(path);
    }
    return create_overlay_file(path, a->top, errp);
}

/* Opens the overlay image without its backing (the append sets it). */
static int coroutine_fn open_overlay(Action *a, const char *path,
                                     const char *format, const char *name,
                                     Error **errp) GS
{
    struct stat st;

    if (stat(path, &st) < 0) {
        error_setg_errno(errp, errno, "Could not open '%s'", path);
        return -ENOENT;
    }
    json_t *def = json_pack("{s:s, s:{s:s, s:s}, s:n}", "driver", format,
                            "file", "driver", "file", "filename", path, "backing");
    if (name) {
        json_object_set_new(def, "node-name", json_string(name));
    }
    a->overlay = bdrv_co_open_blockdev(def, errp);
    json_decref(def);
    if (!a->overlay) {
        return -EIO;
    }
    a->opened = true;
    bdrv_ref(a->overlay);
    return 0;
}

static int coroutine_fn prepare_snapshot_sync(Action *a, Error **errp) GS
{
    const char *device = arg_str(a->data, "device");
    const char *node_name = arg_str(a->data, "node-name");
    const char *path = arg_str(a->data, "snapshot-file");
    const char *name = arg_str(a->data, "snapshot-node-name");
    const char *format = arg_str(a->data, "format");
    const char *mode = arg_str(a->data, "mode");
    int ret = take_top(a, device, node_name, errp);

    if (ret < 0) {
        return ret;
    }
    if (node_name && !name) {
        error_setg(errp, "New overlay node-name missing");
        return -EINVAL;
    }
    if (name && bdrv_find_node(name)) {
        error_setg(errp, "New overlay node-name already in use");
        return -EEXIST;
    }
    format = format ? format : "qcow2";
    if ((!mode || strcmp(mode, "existing")) &&
        create_overlay(a, path, format, errp) < 0) {
        return -EIO;
    }
    return open_overlay(a, path, format, name, errp);
}

/* ---- blockdev-snapshot-internal-sync ---- */

static int coroutine_fn prepare_internal(Action *a, Error **errp) GS
{
    const char *device = arg_str(a->data, "device");
    const char *name = arg_str(a->data, "name");

    a->top = lookup_root(device, errp);
    if (!a->top) {
        return -ENOENT;
    }
    bdrv_ref(a->top);
    if (a->top->read_only) {
        error_setg(errp, "Device '%s' is read only", device);
        return -EACCES;
    }
    if (!a->top->drv->snapshot_create) {
        error_setg(errp, "Block format '%s' used by device '%s' does not support "
                   "internal snapshots", a->top->drv->format_name, device);
        return -ENOTSUP;
    }
    if (!name[0]) {
        error_setg(errp, "Name is empty");
        return -EINVAL;
    }
    return check_no_snapshot_named(a->top, device, name, errp);
}

/* In the quiesced section: takes the snapshot and remembers its id. */
static int coroutine_fn commit_internal(Action *a, Error **errp) GS
{
    const char *device = arg_str(a->data, "device");
    const char *name = arg_str(a->data, "name");
    BdrvSnapshotInfo sn;
    Error *err = NULL;

    /* an earlier action of this transaction may have taken it */
    int ret = check_no_snapshot_named(a->top, device, name, errp);
    if (ret < 0) {
        return ret;
    }
    ret = a->top->drv->snapshot_create(a->top, name, &err);
    if (ret < 0) {
        error_free(err);
        error_setg_errno(errp, ret, "Failed to create snapshot '%s' on device '%s'",
                         name, device);
        return ret;
    }
    if (find_snapshot(a->top, NULL, name, &sn, NULL) > 0) {
        a->snap_created = true;
        snprintf(a->snap_id, sizeof(a->snap_id), "%s", sn.id);
    }
    return 0;
}

/* ---- the transaction ---- */

static int coroutine_fn action_prepare(Action *a, Error **errp) GS
{
    switch (a->kind) {
    case ACT_SNAPSHOT:
        return prepare_snapshot(a, errp);
    case ACT_SNAPSHOT_SYNC:
        return prepare_snapshot_sync(a, errp);
    case ACT_INTERNAL:
        return prepare_internal(a, errp);
    case ACT_ABORT:
        error_setg(errp, "Transaction aborted using Abort action");
        return -ECANCELED;
    }
    return -EINVAL;
}

/* Undoes what prepare and commit did, whatever point they reached. */
static void coroutine_fn action_abort(Action *a) GS
{
    Error *err = NULL;

    if (a->snap_created &&
        a->top->drv->snapshot_delete(a->top, a->snap_id, &err) < 0) {
        error_prepend(&err, "Failed to delete snapshot with id '%s' on device "
                      "'%s' in abort: ", a->snap_id, a->top->node_name);
        error_report_err(err);
    }
    a->snap_created = false;
    if (a->opened) {
        char name[sizeof(a->overlay->node_name)];
        snprintf(name, sizeof(name), "%s", a->overlay->node_name);
        bdrv_co_unref(a->overlay);
        a->overlay = NULL;
        bdrv_co_blockdev_del(name, NULL);
    }
    if (a->created_file && unlink(a->created_file) < 0) {
        warn_report("Could not remove '%s': %s", a->created_file, strerror(errno));
    }
}

static void coroutine_fn action_clean(Action *a) GS
{
    bdrv_co_unref(a->overlay);
    bdrv_co_unref(a->top);
    free(a->created_file);
}

/* The nodes whose sections the commit holds: every top and overlay. */
static void coroutine_fn quiesce_all(Action *acts, int n) GS
{
    for (int i = 0; i < n; i++) {
        if (acts[i].top) {
            bdrv_co_quiesce_begin(acts[i].top);
        }
        if (acts[i].overlay) {
            bdrv_co_quiesce_begin(acts[i].overlay);
        }
    }
}

static void unquiesce_all(Action *acts, int n) GS
{
    for (int i = n - 1; i >= 0; i--) {
        if (acts[i].overlay) {
            bdrv_quiesce_end(acts[i].overlay);
        }
        if (acts[i].top) {
            bdrv_quiesce_end(acts[i].top);
        }
    }
}

/* Completed writes of every top reach its image before it becomes a
 * backing file, so that the old image alone is the content at the instant. */
static int coroutine_fn flush_tops(Action *acts, int n, Error **errp) GS
{
    int ret = 0;

    bdrv_graph_rdlock_main_loop();
    for (int i = 0; i < n && ret == 0; i++) {
        if (acts[i].overlay) {
            ret = bdrv_co_flush(acts[i].top);
            if (ret < 0) {
                error_setg_errno(errp, ret, "Failed to flush node '%s'",
                                 acts[i].top->node_name);
            }
        }
    }
    bdrv_graph_rdunlock_main_loop();
    return ret;
}

/* With the write lock: appends every overlay, or none.  A top that an
 * earlier action of this transaction covered is refused as QEMU does (it
 * appends in its prepare step, so the second action finds it busy). */
static int append_all(Action *acts, int n, Error **errp) GRAPH_WRLOCK GS
{
    for (int i = 0; i < n; i++) {
        if (!acts[i].overlay) {
            continue;
        }
        if (check_not_backing_locked(acts[i].top, errp) < 0 ||
            bdrv_append_overlay_locked(acts[i].overlay, acts[i].top, errp) < 0) {
            for (int j = i - 1; j >= 0; j--) {
                if (acts[j].appended) {
                    bdrv_remove_overlay_locked(acts[j].overlay, acts[j].top);
                    acts[j].appended = false;
                }
            }
            return -EPERM;
        }
        acts[i].appended = true;
    }
    return 0;
}

static int coroutine_fn commit_all(Action *acts, int n, Error **errp) GS
{
    quiesce_all(acts, n);
    int ret = flush_tops(acts, n, errp);
    for (int i = 0; i < n && ret == 0; i++) {
        if (acts[i].kind == ACT_INTERNAL) {
            ret = commit_internal(&acts[i], errp);
        }
    }
    if (ret == 0) {
        bdrv_graph_wrlock();
        ret = append_all(acts, n, errp);
        bdrv_graph_wrunlock();
    }
    unquiesce_all(acts, n);
    return ret;
}

/* After the commit, as QEMU does: an old top is only read from now on, so
 * it is reopened read-only, which also gives up its image's write lock.
 * A failure leaves it read-write and is not the transaction's.  The
 * overlays this transaction opened pass to their parents. */
static void coroutine_fn finish_external(Action *acts, int n) GS
{
    for (int i = 0; i < n; i++) {
        Error *err = NULL;
        if (acts[i].opened) {
            /* QEMU's -sync overlay belongs to its parents, not the monitor:
             * with no parent it goes at once, as there */
            bdrv_monitor_release(acts[i].overlay);
        }
        if (acts[i].appended &&
            bdrv_co_reopen_set_read_only(acts[i].top, true, &err) < 0) {
            error_prepend(&err, "node '%s' stays read-write: ",
                          acts[i].top->node_name);
            warn_report("%s", error_get_pretty(err));
            error_free(err);
        }
    }
}

/* Prepares, commits or aborts, and cleans up n parsed actions. */
static int coroutine_fn run_actions(Action *acts, int n, Error **errp) GS
{
    int reached = 0, ret = 0;

    for (; reached < n && ret == 0; reached++) {
        ret = action_prepare(&acts[reached], errp);
    }
    if (ret == 0) {
        ret = commit_all(acts, n, errp);
    }
    if (ret == 0) {
        finish_external(acts, n);
    } else {
        for (int i = reached - 1; i >= 0; i--) {
            action_abort(&acts[i]);
        }
    }
    for (int i = n - 1; i >= 0; i--) {
        action_clean(&acts[i]);
    }
    return ret;
}

static json_t *coroutine_fn run_one(ActionKind kind, json_t *args, Error **errp) GS
{
    Action a = { .kind = kind, .data = args };

    if (check_enums(kind, args, errp) < 0 || run_actions(&a, 1, errp) < 0) {
        return NULL;
    }
    return json_object();
}

/* ------------------------------------------------------------ transaction arguments */

/* "Parameter 'x' is missing" -> "Parameter 'PATH.x' is missing": QEMU names
 * a nested member by its path.  The name follows the first quote in each
 * of qmp_check_args()'s messages. */
static void error_add_path(Error **errp, const char *path)
{
    if (!errp || !*errp) {
        return;
    }
    const char *msg = error_get_pretty(*errp);
    const char *q = strchr(msg, '\'');
    if (!q) {
        return;
    }
    Error *err = NULL;
    error_setg(&err, "%.*s%s.%s", (int)(q - msg + 1), msg, path, q + 1);
    error_free(*errp);
    *errp = err;
}

static int check_args_at(const QmpArg *table, json_t *obj, const char *path,
                         Error **errp)
{
    if (qmp_check_args(table, obj, errp) < 0) {
        error_add_path(errp, path);
        return -1;
    }
    return 0;
}

static int action_kind(const char *type, ActionKind *out)
{
    for (size_t i = 0; i < ARRAY_SIZE(action_names); i++) {
        if (!strcmp(type, action_names[i])) {
            *out = (ActionKind)i;
            return 0;
        }
    }
    return -1;
}

/* Checks actions[i] and fills a. */
static int parse_action(json_t *elem, int i, Action *a, Error **errp)
{
    static const QmpArg envelope[] = {
        { "type", ARG_STR, true }, { "data", ARG_OBJECT, true }, { NULL },
    };
    char path[64];

    snprintf(path, sizeof(path), "actions[%d]", i);
    if (!json_is_object(elem)) {
        error_setg(errp, "Invalid parameter type for '%s', expected: object", path);
        return -1;
    }
    if (check_args_at(envelope, elem, path, errp) < 0) {
        return -1;
    }
    const char *type = arg_str(elem, "type");
    if (action_kind(type, &a->kind) < 0) {
        error_setg(errp, "Parameter 'type' does not accept value '%s'", type);
        return -1;
    }
    a->data = json_object_get(elem, "data");
    snprintf(path, sizeof(path), "actions[%d].data", i);
    if (check_args_at(action_args[a->kind], a->data, path, errp) < 0) {
        return -1;
    }
    return check_enums(a->kind, a->data, errp);
}

static int check_properties(json_t *props, Error **errp)
{
    static const QmpArg table[] = { { "completion-mode", ARG_STR, false }, { NULL } };

    if (!props) {
        return 0;
    }
    if (check_args_at(table, props, "properties", errp) < 0) {
        return -1;
    }
    /* "grouped" only changes how block jobs end: we start none */
    const char *mode = arg_str(props, "completion-mode");
    if (mode && strcmp(mode, "individual") && strcmp(mode, "grouped")) {
        error_setg(errp, "Parameter 'completion-mode' does not accept value '%s'", mode);
        return -1;
    }
    return 0;
}

static json_t *coroutine_fn transaction(json_t *args, Error **errp)
{
    json_t *list = json_object_get(args, "actions");
    int n = (int)json_array_size(list);
    Action *acts;
    int ret = 0;

    global_lock_assert_held();
    GS_CODE();
    if (check_properties(json_object_get(args, "properties"), errp) < 0) {
        return NULL;
    }
    acts = calloc(n ? n : 1, sizeof(*acts));
    if (!acts) {
        abort();
    }
    for (int i = 0; i < n && ret == 0; i++) {
        ret = parse_action(json_array_get(list, i), i, &acts[i], errp);
    }
    if (ret == 0) {
        ret = run_actions(acts, n, errp);
    }
    free(acts);
    return ret < 0 ? NULL : json_object();
}

/* ------------------------------------------------------------ commands */

static json_t *coroutine_fn blockdev_snapshot(json_t *args, Error **errp)
{
    global_lock_assert_held();
    GS_CODE();
    return run_one(ACT_SNAPSHOT, args, errp);
}

static json_t *coroutine_fn blockdev_snapshot_sync(json_t *args, Error **errp)
{
    global_lock_assert_held();
    GS_CODE();
    return run_one(ACT_SNAPSHOT_SYNC, args, errp);
}

static json_t *coroutine_fn blockdev_snapshot_internal_sync(json_t *args,
                                                            Error **errp)
{
    global_lock_assert_held();
    GS_CODE();
    return run_one(ACT_INTERNAL, args, errp);
}

/* QEMU's SnapshotInfo; icount only when recorded. */
static json_t *snapshot_info_json(const BdrvSnapshotInfo *sn)
{
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I}",
                          "id", sn->id, "name", sn->name,
                          "vm-state-size", (json_int_t)sn->vm_state_size,
                          "date-sec", (json_int_t)sn->date_sec,
                          "date-nsec", (json_int_t)sn->date_nsec,
                          "vm-clock-sec", (json_int_t)(sn->vm_clock_nsec / 1000000000),
                          "vm-clock-nsec", (json_int_t)(sn->vm_clock_nsec % 1000000000));
    if (sn->icount != UINT64_MAX) {
        json_object_set_new(o, "icount", json_integer((json_int_t)sn->icount));
    }
    return o;
}

static json_t *coroutine_fn blockdev_snapshot_delete_internal_sync(json_t *args,
                                                                   Error **errp)
{
    const char *device = arg_str(args, "device");
    const char *id = arg_str(args, "id");
    const char *name = arg_str(args, "name");
    BdrvSnapshotInfo sn;

    global_lock_assert_held();
    GS_CODE();
    BlockNode *bs = lookup_root(device, errp);
    if (!bs) {
        return NULL;
    }
    if (!id && !name) {
        error_setg(errp, "Name or id must be provided");
        return NULL;
    }
    int ret = find_snapshot(bs, id, name, &sn, errp);
    if (ret == 0) {
        error_setg(errp, "Snapshot with id '%s' and name '%s' does not exist on "
                   "device '%s'", id ? id : "null", name ? name : "null", device);
    }
    if (ret <= 0) {
        return NULL;
    }
    bdrv_ref(bs);
    ret = bs->drv->snapshot_delete(bs, sn.id, errp);
    bdrv_co_unref(bs);
    return ret < 0 ? NULL : snapshot_info_json(&sn);
}

static json_t *coroutine_fn block_resize(json_t *args, Error **errp)
{
    const char *device = arg_str(args, "device");
    json_int_t size = json_integer_value(json_object_get(args, "size"));

    global_lock_assert_held();
    GS_CODE();
    BlockNode *bs = lookup_node(device, arg_str(args, "node-name"), errp);
    if (!bs) {
        return NULL;
    }
    if (size < 0) {
        error_setg(errp, "Parameter 'size' expects a >0 size");
        return NULL;
    }
    if (node_parent_with_role(bs, BDRV_CHILD_COW)) {
        error_setg(errp, "Device '%s' is in use", bs->node_name);
        return NULL;
    }
    /* QEMU's qcow2 refuses this in its truncate; ours takes any length
     * (a growable FUSE export grows it byte by byte), so the QMP command
     * keeps QEMU's rule. */
    if (!strcmp(bs->drv->format_name, "qcow2") && size % BDRV_SECTOR_SIZE) {
        error_setg(errp, "The new size must be a multiple of %d", BDRV_SECTOR_SIZE);
        return NULL;
    }
    /* A backend of our own with the resize permission: every other user
     * of the node must share it. */
    BlockBackend *blk = blk_new("block_resize", BLK_PERM_RESIZE, BLK_PERM_ALL);
    int ret = blk_insert_node(blk, bs, errp);
    if (ret == 0) {
        ret = blk_co_truncate(blk, size, false, errp);
    }
    blk_co_unref(blk);
    if (ret == 0) {
        bdrv_notify_resized(bs);   /* before the reply: stat() sees the size */
    }
    return ret < 0 ? NULL : json_object();
}

/* True if image is top or below it on its backing chain (through filters). */
static bool chain_contains(BlockNode *top, BlockNode *image) GS
{
    bool found = false;

    bdrv_graph_rdlock_main_loop();
    for (BlockNode *bs = top; bs && !found; ) {
        found = bs == image;
        BlockChild *next = bs->backing ? bs->backing :
                           bs->drv->is_filter ? bs->file : NULL;
        bs = next ? next->node : NULL;
    }
    bdrv_graph_rdunlock_main_loop();
    return found;
}

/* Writes the new name into image's header; a read-only image (an old top)
 * is reopened read-write for it and read-only again after, as QEMU does.
 * The format recorded is the backing node's: QEMU records the image's own
 * format, which is wrong whenever the two differ. */
static int coroutine_fn rewrite_backing_file(BlockNode *image,
                                             const char *backing_file,
                                             BlockNode *backing, Error **errp) GS
{
    bool ro = image->read_only;

    if (ro && bdrv_co_reopen_set_read_only(image, false, errp) < 0) {
        return -EACCES;
    }
    int ret = image->drv->change_backing_file(image, backing_file,
                                              backing->drv->format_name, errp);
    if (ro && ret < 0) {
        bdrv_co_reopen_set_read_only(image, true, NULL);
    } else if (ro) {
        ret = bdrv_co_reopen_set_read_only(image, true, errp);
    }
    return ret;
}

static json_t *coroutine_fn change_backing_file(json_t *args, Error **errp)
{
    const char *device = arg_str(args, "device");
    const char *backing_file = arg_str(args, "backing-file");

    global_lock_assert_held();
    GS_CODE();
    BlockNode *bs = lookup_root(device, errp);
    BlockNode *image = bs ? lookup_node(NULL, arg_str(args, "image-node-name"), errp)
                          : NULL;
    if (!image) {
        return NULL;
    }
    BlockNode *backing = backing_node(image);
    if (!backing) {
        error_setg(errp, "not allowing backing file change on an image without "
                   "a backing file");
        return NULL;
    }
    if (!chain_contains(bs, image)) {
        error_setg(errp, "'%s' and image file are not in the same chain", device);
        return NULL;
    }
    if (!image->drv->change_backing_file) {
        error_setg_errno(errp, ENOTSUP, "Could not change backing file to '%s'",
                         backing_file);
        return NULL;
    }
    bdrv_ref(image);
    int ret = rewrite_backing_file(image, backing_file, backing, errp);
    bdrv_co_unref(image);
    return ret < 0 ? NULL : json_object();
}

static const QmpArg delete_internal_args[] = {
    { "device", ARG_STR, true }, { "id", ARG_STR, false },
    { "name", ARG_STR, false }, { NULL },
};
static const QmpArg transaction_args[] = {
    { "actions", ARG_LIST, true }, { "properties", ARG_OBJECT, false }, { NULL },
};
static const QmpArg resize_args[] = {
    { "device", ARG_STR, false }, { "node-name", ARG_STR, false },
    { "size", ARG_INT, true }, { NULL },
};
static const QmpArg change_backing_args[] = {
    { "device", ARG_STR, true }, { "image-node-name", ARG_STR, true },
    { "backing-file", ARG_STR, true }, { NULL },
};

const QmpCommandDef qmp_snapshot_commands[] = {
    { { "blockdev-snapshot", blockdev_snapshot,
        "put an existing node (added with backing: null) on top of a node" },
      snapshot_args },
    { { "blockdev-snapshot-sync", blockdev_snapshot_sync,
        "create an overlay image and put it on top of a node" },
      snapshot_sync_args },
    { { "blockdev-snapshot-internal-sync", blockdev_snapshot_internal_sync,
        "take an internal snapshot" }, internal_args },
    { { "blockdev-snapshot-delete-internal-sync",
        blockdev_snapshot_delete_internal_sync, "delete an internal snapshot" },
      delete_internal_args },
    { { "transaction", transaction, "several snapshots at one instant, all or "
        "nothing" }, transaction_args },
    { { "block_resize", block_resize, "change the size of a node" }, resize_args },
    { { "change-backing-file", change_backing_file,
        "rewrite the backing file name in an image header" }, change_backing_args },
    { { NULL } },
};
