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
#include "qmp/commands.h"


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

static const QmpArg no_args[] = { { NULL } };

const QmpCommandDef qmp_core_commands[] = {
    { { "qmp_capabilities", qmp_capabilities, "end capability negotiation" }, no_args },
    { { "query-version", query_version, "the diskstack version" }, no_args },
    { { "query-commands", query_commands, "the commands available" }, no_args },
    { { "quit", quit, "shut the daemon down cleanly" }, no_args },
    { { NULL } },
};

/* ------------------------------------------------------------ table */

static const QmpCommandDef *const groups[] = {
    qmp_core_commands, qmp_node_commands, qmp_export_commands,
    qmp_object_commands, qmp_snapshot_commands, qmp_reopen_commands,
    qmp_qom_commands, qmp_inject_commands, qmp_job_commands,
    qmp_stream_commands,
    qmp_mirror_commands,
};

#define FOREACH_COMMAND(d) \
    for (size_t g_ = 0; g_ < ARRAY_SIZE(groups); g_++) \
        for (const QmpCommandDef *d = groups[g_]; d->cmd.name; d++)

static json_t *coroutine_fn query_commands(json_t *args, Error **errp)
{
    json_t *list = json_array();

    FOREACH_COMMAND(d) {
        json_array_append_new(list, json_pack("{s:s}", "name", d->cmd.name));
    }
    return list;
}

const QmpCommand *qmp_find_command(const char *name)
{
    FOREACH_COMMAND(d) {
        if (!strcmp(d->cmd.name, name)) {
            return &d->cmd;
        }
    }
    return NULL;
}

static const char *arg_type_name(ArgType t)
{
    static const char *const names[] = {
        [ARG_STR] = "string", [ARG_BOOL] = "boolean", [ARG_INT] = "integer",
        [ARG_OBJECT] = "object", [ARG_LIST] = "array", [ARG_ANY] = "any",
    };
    return names[t];
}

static bool arg_type_ok(ArgType t, json_t *v)
{
    switch (t) {
    case ARG_STR: return json_is_string(v);
    case ARG_BOOL: return json_is_boolean(v);
    case ARG_INT: return json_is_integer(v);
    case ARG_OBJECT: return json_is_object(v);
    case ARG_LIST: return json_is_array(v);
    case ARG_ANY: return true;
    }
    return false;
}

/* Pure: checks args against table, with QEMU's messages. */
int qmp_check_args(const QmpArg *table, json_t *args, Error **errp)
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
    if (def->args && qmp_check_args(def->args, args, errp) < 0) {
        return NULL;
    }
    return cmd->handler(args, errp);
}
