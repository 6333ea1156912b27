/*
 * cmd-node.c — QMP commands on nodes: blockdev-add, blockdev-del,
 * query-named-block-nodes.
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

static const QmpArg flat_arg[] = { { "flat", ARG_BOOL, false }, { NULL } };
static const QmpArg node_name_arg[] = { { "node-name", ARG_STR, true }, { NULL } };

const QmpCommandDef qmp_node_commands[] = {
    { { "query-named-block-nodes", query_named_block_nodes,
        "the named block nodes" }, flat_arg },
    { { "blockdev-add", blockdev_add, "open a node from a definition" }, NULL },
    { { "blockdev-del", blockdev_del, "close a node nothing uses" }, node_name_arg },
    { { NULL } },
};
