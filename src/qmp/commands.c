/*
 * commands.c — the QMP command table and the commands.
 *
 * Each command has an argument table checked before its handler runs, with
 * QEMU's wording for unknown, missing and mistyped arguments.  The
 * definition-taking commands (blockdev-add, block-export-add) check their
 * arguments with the option tables of the block layer instead, without
 * coercion (QMP values are typed JSON already).
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "cli/cli.h"
#include "cli/cli-version.h"
#include "driver.h"   /* before export.h: its option table needs the type */
#include "fuse/export.h"
#include "options.h"
#include "qmp/server.h"

typedef enum { ARG_STR, ARG_BOOL, ARG_ANY_DEF } ArgType;

typedef struct QmpArg {
    const char *name;
    ArgType type;
    bool required;
} QmpArg;

typedef struct QmpCommandDef {
    QmpCommand cmd;
    const QmpArg *args;   /* NULL-terminated; NULL: any arguments (a definition) */
} QmpCommandDef;

json_t *qmp_version_json(void)
{
    int major = 0, minor = 0, micro = 0;

    sscanf(DISKSTACK_VERSION, "%d.%d.%d", &major, &minor, &micro);
    return json_pack("{s:{s:i,s:i,s:i},s:s}", "qemu", "micro", micro,
                     "minor", minor, "major", major,
                     "package", "diskstack " DISKSTACK_VERSION);
}

/* ------------------------------------------------------------ commands */

static json_t *coroutine_fn qmp_capabilities(json_t *args, Error **errp)
{
    return json_object();
}

static json_t *coroutine_fn query_version(json_t *args, Error **errp)
{
    return qmp_version_json();
}

static json_t *coroutine_fn query_commands(json_t *args, Error **errp);

/* Bottom half on the main loop (GS): the shutdown after quit's reply. */
static void quit_bh(void *opaque)
{
    global_lock_assert_held();
    daemon_shutdown(EXIT_OK);
}

static json_t *coroutine_fn quit(json_t *args, Error **errp)
{
    /* Scheduled, so the reply is sent before the shutdown starts. */
    loop_schedule(loop_main(), quit_bh, NULL);
    return json_object();
}

/* GS: one node as QEMU's BlockDeviceInfo (the subset we know). */
static json_t *node_info(BlockNode *bs) GS
{
    const char *fmt = bs->drv->format_name;

    GS_CODE();
    return json_pack("{s:s,s:s,s:s,s:b,s:{s:s,s:s,s:I}}",
                     "node-name", bs->node_name, "drv", fmt,
                     "file", bs->filename, "ro", bs->read_only,
                     "image", "filename", bs->filename, "format", fmt,
                     "virtual-size", (json_int_t)bdrv_getlength(bs));
}

static json_t *coroutine_fn query_named_block_nodes(json_t *args, Error **errp)
{
    json_t *list = json_array();

    global_lock_assert_held();
    GS_CODE();
    for (BlockNode *bs = bdrv_next_node(NULL); bs; bs = bdrv_next_node(bs)) {
        json_array_append_new(list, node_info(bs));
    }
    return list;
}

static json_t *coroutine_fn blockdev_add(json_t *args, Error **errp)
{
    global_lock_assert_held();
    GS_CODE();
    if (blockdev_def_check(args, false, errp) < 0 ||
        !bdrv_co_open_blockdev(args, errp)) {
        return NULL;
    }
    return json_object();
}

static json_t *coroutine_fn blockdev_del(json_t *args, Error **errp)
{
    global_lock_assert_held();
    GS_CODE();
    if (bdrv_co_blockdev_del(json_string_value(json_object_get(args, "node-name")),
                             errp) < 0) {
        return NULL;
    }
    return json_object();
}

/* Coroutine entry on the main loop (GS): deletes an export and tells the
 * clients.  opaque is the export's id (freed here). */
static void coroutine_fn delete_export_co(void *opaque)
{
    char *id = opaque;
    BlockExport *exp;

    global_lock_assert_held();
    GS_CODE();
    exp = block_export_find(id);
    if (exp && !daemon_stopping()) {
        daemon_co_delete_export(exp);
        qmp_emit_event("BLOCK_EXPORT_DELETED", json_pack("{s:s}", "id", id));
    }
    free(id);
}

/* Main loop (GS): an export's mount went away underneath us. */
static void export_gone(BlockExport *exp, void *opaque)
{
    global_lock_assert_held();
    co_spawn(delete_export_co, strdup(block_export_id(exp)));
}

static json_t *coroutine_fn block_export_add_cmd(json_t *args, Error **errp)
{
    BlockExport *exp;

    global_lock_assert_held();
    GS_CODE();
    if (opts_check(args, fuse_export_options, false, errp) < 0) {
        return NULL;
    }
    exp = block_export_add(args, errp);
    if (!exp) {
        return NULL;
    }
    block_export_set_gone_cb(exp, export_gone, NULL);
    return json_object();
}

static json_t *coroutine_fn block_export_del_cmd(json_t *args, Error **errp)
{
    const char *id = json_string_value(json_object_get(args, "id"));
    BlockExport *exp;

    global_lock_assert_held();
    GS_CODE();
    exp = block_export_find(id);
    if (!exp) {
        error_setg(errp, "Export '%s' is not found", id);
        return NULL;
    }
    daemon_co_delete_export(exp);
    qmp_emit_event("BLOCK_EXPORT_DELETED", json_pack("{s:s}", "id", id));
    return json_object();
}

static json_t *coroutine_fn query_block_exports(json_t *args, Error **errp)
{
    json_t *list = json_array();

    global_lock_assert_held();
    GS_CODE();
    for (BlockExport *e = block_export_next(NULL); e; e = block_export_next(e)) {
        json_array_append_new(list, json_pack("{s:s,s:s,s:b}", "type", "fuse",
                                              "id", block_export_id(e),
                                              "shutting-down", false));
    }
    return list;
}

/* ------------------------------------------------------------ table */

static const QmpArg no_args[] = { { NULL } };
static const QmpArg flat_arg[] = { { "flat", ARG_BOOL, false }, { NULL } };
static const QmpArg node_name_arg[] = { { "node-name", ARG_STR, true }, { NULL } };
static const QmpArg id_arg[] = { { "id", ARG_STR, true }, { NULL } };

static const QmpCommandDef commands[] = {
    { { "qmp_capabilities", qmp_capabilities, "end capability negotiation" }, no_args },
    { { "query-version", query_version, "the diskstack version" }, no_args },
    { { "query-commands", query_commands, "the commands available" }, no_args },
    { { "quit", quit, "shut the daemon down cleanly" }, no_args },
    { { "query-named-block-nodes", query_named_block_nodes,
        "the named block nodes" }, flat_arg },
    { { "blockdev-add", blockdev_add, "open a node from a definition" }, NULL },
    { { "blockdev-del", blockdev_del, "close a node nothing uses" }, node_name_arg },
    { { "block-export-add", block_export_add_cmd, "add a FUSE export" }, NULL },
    { { "block-export-del", block_export_del_cmd, "remove an export" }, id_arg },
    { { "query-block-exports", query_block_exports, "the exports" }, no_args },
};

static json_t *coroutine_fn query_commands(json_t *args, Error **errp)
{
    json_t *list = json_array();

    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        json_array_append_new(list, json_pack("{s:s}", "name", commands[i].cmd.name));
    }
    return list;
}

const QmpCommand *qmp_find_command(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        if (!strcmp(commands[i].cmd.name, name)) {
            return &commands[i].cmd;
        }
    }
    return NULL;
}

static const char *arg_type_name(ArgType t)
{
    return t == ARG_STR ? "string" : t == ARG_BOOL ? "boolean" : "any";
}

static bool arg_type_ok(ArgType t, json_t *v)
{
    return t == ARG_STR ? json_is_string(v) : t == ARG_BOOL ? json_is_boolean(v) : true;
}

/* Pure: checks args against table, with QEMU's messages. */
static int check_args(const QmpArg *table, json_t *args, Error **errp)
{
    const char *key;
    json_t *val;

    json_object_foreach(args, key, val) {
        const QmpArg *a = table;
        while (a->name && strcmp(a->name, key)) {
            a++;
        }
        if (!a->name) {
            error_setg(errp, "Parameter '%s' is unexpected", key);
            return -1;
        }
        if (!arg_type_ok(a->type, val)) {
            error_setg(errp, "Invalid parameter type for '%s', expected: %s",
                       key, arg_type_name(a->type));
            return -1;
        }
    }
    for (const QmpArg *a = table; a->name; a++) {
        if (a->required && !json_object_get(args, a->name)) {
            error_setg(errp, "Parameter '%s' is missing", a->name);
            return -1;
        }
    }
    return 0;
}

json_t *coroutine_fn qmp_dispatch(const QmpCommand *cmd, json_t *args, Error **errp)
{
    const QmpCommandDef *def = (const QmpCommandDef *)cmd;

    GS_CODE();
    if (def->args && check_args(def->args, args, errp) < 0) {
        return NULL;
    }
    return cmd->handler(args, errp);
}
