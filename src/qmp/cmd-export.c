/*
 * cmd-export.c — QMP commands on exports: block-export-add, block-export-del,
 * query-block-exports, x-diskstack-export-resume.  (BLOCK_EXPORT_DELETED is
 * posted by block_export_del() whatever deleted the export, BLOCK_IO_ERROR
 * by the export's I/O code, fuse/io-error.c.)
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "block-gs.h"
#include "cli/cli.h"
#include "driver.h"   /* before export.h: its option table needs the type */
#include "fuse/export.h"
#include "options.h"
#include "qmp/commands.h"

/* Coroutine entry on the main loop (GS): deletes an export whose mount went
 * away and tells the clients.  opaque is the export's id (freed here). */
static void coroutine_fn delete_gone_export_co(void *opaque)
{
    char *id = opaque;
    BlockExport *exp;

    global_lock_assert_held();
    GS_CODE();
    exp = block_export_find(id);
    if (exp && !daemon_stopping()) {
        fprintf(stderr, "diskstack: export '%s' was unmounted; removing it\n", id);
        daemon_co_delete_export(exp);
    }
    free(id);
}

void qmp_export_gone(BlockExport *exp, void *opaque)
{
    global_lock_assert_held();
    co_spawn(delete_gone_export_co, strdup(block_export_id(exp)));
}

/* GS: QEMU's error for the IOThread names in `iothread` (a name or a list
 * of names), before the export looks at them. */
static int check_iothread_names(json_t *spec, Error **errp) GS
{
    size_t i;
    json_t *v;

    GS_CODE();
    if (json_is_string(spec) && !iothread_find(json_string_value(spec))) {
        error_setg(errp, "iothread \"%s\" not found", json_string_value(spec));
        return -1;
    }
    json_array_foreach(spec, i, v) {
        if (json_is_string(v) && !iothread_find(json_string_value(v))) {
            error_setg(errp, "iothread \"%s\" not found", json_string_value(v));
            return -1;
        }
    }
    return 0;
}

/* GS: QEMU's errors about the mountpoint, in QEMU's order: an export on it
 * already, cannot stat it, not a regular file. */
static int check_mountpoint(const char *path, Error **errp) GS
{
    char *abs = realpath(path, NULL);
    struct stat st;

    GS_CODE();
    for (BlockExport *e = block_export_next(NULL); abs && e; e = block_export_next(e)) {
        if (!strcmp(block_export_mountpoint(e), abs)) {
            error_setg(errp, "There already is a FUSE export on '%s'", path);
            free(abs);
            return -1;
        }
    }
    free(abs);
    if (stat(path, &st) < 0) {
        error_setg_errno(errp, errno, "Failed to stat '%s'", path);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        error_setg(errp, "'%s' is not a regular file", path);
        return -1;
    }
    return 0;
}

/* GS: the checks QEMU's blk_exp_add makes before the driver's, with its
 * messages (block_export_add checks too, worded for the command line). */
static int check_export_args(json_t *args, Error **errp) GS
{
    const char *id = json_string_value(json_object_get(args, "id"));
    const char *node = json_string_value(json_object_get(args, "node-name"));
    json_t *iothread = json_object_get(args, "iothread");

    GS_CODE();
    if (block_export_find(id)) {
        error_setg(errp, "Block export id '%s' is already in use", id);
        return -1;
    }
    if (!bdrv_find_node(node)) {
        error_setg(errp, "Cannot find device='' nor node-name='%s'", node);
        return -1;
    }
    if (iothread && check_iothread_names(iothread, errp) < 0) {
        return -1;
    }
    return check_mountpoint(json_string_value(json_object_get(args, "mountpoint")),
                            errp);
}

/* Pure: checks and removes fixed-iothread, which the export table does not
 * know: our exports never move between threads, so it is always true. */
static int take_fixed_iothread(json_t *args, Error **errp)
{
    json_t *v = json_object_get(args, "fixed-iothread");

    if (v && !json_is_boolean(v)) {
        error_setg(errp, "Invalid parameter type for 'fixed-iothread', "
                   "expected: boolean");
        return -1;
    }
    json_object_del(args, "fixed-iothread");
    return 0;
}

/* Pure: the definition against the export's option table; `iothread`,
 * which may also be a list of names, is checked apart. */
static int check_types(json_t *def, Error **errp)
{
    json_t *copy = json_copy(def), *iothread = json_object_get(def, "iothread");
    size_t i;
    json_t *v;
    int ret;

    if (iothread && !json_is_string(iothread)) {
        json_object_del(copy, "iothread");
        json_array_foreach(iothread, i, v) {
            if (!json_is_string(v)) {
                iothread = NULL;   /* a list of non-strings */
            }
        }
        if (!json_is_array(iothread)) {
            error_setg(errp, "Invalid parameter type for 'iothread', "
                       "expected: string or array of strings");
            json_decref(copy);
            return -1;
        }
    }
    ret = opts_check(copy, fuse_export_options, false, errp);
    json_decref(copy);
    return ret;
}

static json_t *coroutine_fn block_export_add_cmd(json_t *args, Error **errp)
{
    json_t *def = json_deep_copy(args);
    BlockExport *exp = NULL;

    global_lock_assert_held();
    GS_CODE();
    if (take_fixed_iothread(def, errp) == 0 &&
        check_types(def, errp) == 0 &&
        check_export_args(def, errp) == 0) {
        exp = block_export_add(def, errp);
    }
    json_decref(def);
    if (!exp) {
        return NULL;
    }
    block_export_set_gone_cb(exp, qmp_export_gone, NULL);
    return json_object();
}

/* GS: the export named by args' "id", or NULL with QEMU's error. */
static BlockExport *find_export_arg(json_t *args, Error **errp) GS
{
    const char *id = json_string_value(json_object_get(args, "id"));
    BlockExport *exp;

    GS_CODE();
    exp = block_export_find(id);
    if (!exp) {
        error_setg(errp, "Export '%s' is not found", id);
    }
    return exp;
}

static json_t *coroutine_fn block_export_del_cmd(json_t *args, Error **errp)
{
    BlockExport *exp;

    global_lock_assert_held();
    GS_CODE();
    exp = find_export_arg(args, errp);
    if (!exp) {
        return NULL;
    }
    daemon_co_delete_export(exp);      /* BLOCK_EXPORT_DELETED, then the reply */
    return json_object();
}

static json_t *coroutine_fn query_block_exports(json_t *args, Error **errp)
{
    json_t *list = json_array();

    global_lock_assert_held();
    GS_CODE();
    for (BlockExport *e = block_export_next(NULL); e; e = block_export_next(e)) {
        /* QEMU's keys, then ours (prefixed: QEMU has no io-status here) */
        json_array_append_new(list, json_pack("{s:s,s:s,s:s,s:b,s:s}", "type", "fuse",
                                              "id", block_export_id(e),
                                              "node-name", block_export_node_name(e),
                                              "shutting-down", false,
                                              "x-diskstack-io-status",
                                              block_export_io_status(e)));
    }
    return list;
}

/* QEMU's `cont` for one export: ends the pause of a stop error policy. */
static json_t *coroutine_fn export_resume_cmd(json_t *args, Error **errp)
{
    BlockExport *exp;

    global_lock_assert_held();
    GS_CODE();
    exp = find_export_arg(args, errp);
    if (!exp || block_export_resume(exp, errp) < 0) {
        return NULL;
    }
    return json_object();
}

static const QmpArg no_args[] = { { NULL } };
static const QmpArg id_arg[] = { { "id", ARG_STR, true }, { NULL } };

const QmpCommandDef qmp_export_commands[] = {
    { { "block-export-add", block_export_add_cmd, "add a FUSE export" }, NULL },
    { { "block-export-del", block_export_del_cmd, "remove an export" }, id_arg },
    { { "query-block-exports", query_block_exports, "the exports" }, no_args },
    { { "x-diskstack-export-resume", export_resume_cmd,
        "resume an export its stop error policy paused" }, id_arg },
    { { NULL } },
};
