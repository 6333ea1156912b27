/*
 * cmd-export.c — QMP commands on exports: block-export-add, block-export-del,
 * query-block-exports, and the BLOCK_EXPORT_DELETED event.
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "cli/cli.h"
#include "driver.h"   /* before export.h: its option table needs the type */
#include "fuse/export.h"
#include "options.h"
#include "qmp/commands.h"

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

static const QmpArg no_args[] = { { NULL } };
static const QmpArg id_arg[] = { { "id", ARG_STR, true }, { NULL } };

const QmpCommandDef qmp_export_commands[] = {
    { { "block-export-add", block_export_add_cmd, "add a FUSE export" }, NULL },
    { { "block-export-del", block_export_del_cmd, "remove an export" }, id_arg },
    { { "query-block-exports", query_block_exports, "the exports" }, no_args },
    { { NULL } },
};
