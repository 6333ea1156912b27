/*
 * cmd-inject.c — QMP commands of the inject fault-injection filter
 * (src/filters/inject.c, diskstack-inject(7)):
 *
 *   x-diskstack-inject-set   {node-name, rules: [RULE...], replace?: bool}
 *       appends the rules (or, with replace, replaces the node's rules);
 *       one bad rule refuses the whole command and changes nothing.
 *   x-diskstack-inject-clear {node-name, id?: str}
 *       removes rule `id`, or every rule; an unknown id is an error.
 *   x-diskstack-inject-query {node-name}
 *       -> [RULE + "matched", "fired"], in matching order.
 *
 * A node that does not exist or is not an inject node: GenericError
 * "Node 'x' is not an inject filter".
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include "block-gs.h"
#include "filters/inject.h"
#include "qmp/commands.h"

/* GS: the inject node named by the "node-name" argument, or NULL. */
static BlockNode *inject_node(json_t *args, Error **errp) GS
{
    const char *name = json_string_value(json_object_get(args, "node-name"));
    BlockNode *bs = bdrv_find_node(name);

    GS_CODE();
    if (!inject_is_node(bs)) {
        error_setg(errp, "Node '%s' is not an inject filter", name);
        return NULL;
    }
    return bs;
}

static json_t *coroutine_fn inject_set(json_t *args, Error **errp)
{
    json_t *replace = json_object_get(args, "replace");
    BlockNode *bs;

    global_lock_assert_held();
    GS_CODE();
    if (!(bs = inject_node(args, errp)) ||
        inject_node_set(bs, json_object_get(args, "rules"), json_is_true(replace),
                        errp) < 0) {
        return NULL;
    }
    return json_object();
}

static json_t *coroutine_fn inject_clear(json_t *args, Error **errp)
{
    BlockNode *bs;

    global_lock_assert_held();
    GS_CODE();
    if (!(bs = inject_node(args, errp)) ||
        inject_node_clear(bs, json_string_value(json_object_get(args, "id")),
                          errp) < 0) {
        return NULL;
    }
    return json_object();
}

static json_t *coroutine_fn inject_query(json_t *args, Error **errp)
{
    BlockNode *bs;

    global_lock_assert_held();
    GS_CODE();
    if (!(bs = inject_node(args, errp))) {
        return NULL;
    }
    return inject_node_query(bs);
}

static const QmpArg set_args[] = {
    { "node-name", ARG_STR, true },
    { "rules", ARG_LIST, true },
    { "replace", ARG_BOOL, false },
    { NULL },
};

static const QmpArg clear_args[] = {
    { "node-name", ARG_STR, true },
    { "id", ARG_STR, false },
    { NULL },
};

static const QmpArg query_args[] = {
    { "node-name", ARG_STR, true },
    { NULL },
};

const QmpCommandDef qmp_inject_commands[] = {
    { { "x-diskstack-inject-set", inject_set,
        "add (or replace) fault-injection rules of an inject node" }, set_args },
    { { "x-diskstack-inject-clear", inject_clear,
        "remove one fault-injection rule (by id) or all" }, clear_args },
    { { "x-diskstack-inject-query", inject_query,
        "the rules of an inject node with their counters" }, query_args },
    { { NULL } },
};
