/*
 * cmd-node.c — QMP commands on nodes: blockdev-add, blockdev-del,
 * query-named-block-nodes, x-debug-query-block-graph.
 *
 * query-named-block-nodes answers with QEMU's BlockDeviceInfo.  The image
 * part is img_image_info() (cli/img-info.c), the same object `diskstack img
 * info --output=json` prints.  Fields we have no feature for are QEMU's
 * neutral values: encrypted false, the bps/iops limits and write_threshold
 * 0 (throttling is a filter node here, not a node property).  As in QEMU,
 * flat=false adds the nested backing-image chain and backing_file_depth;
 * flat=true omits the chain and reports depth 0.
 *
 * x-debug-query-block-graph lists nodes (block-driver), backends
 * (block-backend, named after their user: an export's id) and jobs
 * (block-job), with small integer ids, and every edge with its role name
 * and permissions.  Our permissions are consistent-read, write,
 * write-unchanged and resize; QEMU's graph-mod does not exist here.
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop;
 * the graph is read under bdrv_graph_rdlock_main_loop().
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "cli/cli.h"
#include "cli/img.h"
#include "driver.h"   /* before export.h: its option table needs the type */
#include "fuse/export.h"
#include "options.h"
#include "qmp/commands.h"

/* ------------------------------------------------------------ node info */

/* Pure: option `key` of a definition, nested ("cache": {"direct": ..}) or
 * dotted ("cache.direct"), whichever the definition used; NULL if unset. */
static json_t *node_option(json_t *opts, const char *group, const char *key)
{
    char dotted[128];
    json_t *v = json_object_get(json_object_get(opts, group), key);

    if (v) {
        return v;
    }
    snprintf(dotted, sizeof(dotted), "%s.%s", group, key);
    return json_object_get(opts, dotted);
}

/* GS: BlockdevCacheInfo.  Nodes are always writeback (writethrough is an
 * export's option). */
static json_t *cache_info(BlockNode *bs) GS
{
    GS_CODE();
    return json_pack("{s:b,s:b,s:b}", "writeback", true,
                     "direct", json_is_true(node_option(bs->options, "cache", "direct")),
                     "no-flush", json_is_true(node_option(bs->options, "cache", "no-flush")));
}

/* GS: ImageInfo of bs, with the chain of its backing images unless flat. */
static json_t *node_image_info(BlockNode *bs, bool flat) GRAPH_RDLOCK GS
{
    json_t *info;

    GS_CODE();
    info = img_image_info(bs, bs->filename);
    if (!flat && bs->backing) {
        json_object_set_new(info, "backing-image",
                            node_image_info(bs->backing->node, false));
    }
    return info;
}

/* GS: the number of images below bs through backing edges. */
static int backing_depth(BlockNode *bs) GRAPH_RDLOCK GS
{
    int depth = 0;

    GS_CODE();
    for (BlockChild *b = bs->backing; b; b = b->node->backing) {
        depth++;
    }
    return depth;
}

/* GS: one node as QEMU's BlockDeviceInfo. */
static json_t *node_info(BlockNode *bs, bool flat) GRAPH_RDLOCK GS
{
    json_t *dz = json_object_get(bs->options, "detect-zeroes");
    json_t *o;

    GS_CODE();
    o = json_pack("{s:s,s:s,s:b,s:s}", "file", bs->filename,
                  "node-name", bs->node_name, "ro", bs->read_only,
                  "drv", bs->drv->format_name);
    if (bs->backing) {
        json_object_set_new(o, "backing_file",
                            json_string(bs->backing->node->filename));
    }
    json_object_set_new(o, "backing_file_depth",
                        json_integer(flat ? 0 : backing_depth(bs)));
    json_object_set_new(o, "encrypted", json_false());
    json_object_set_new(o, "detect_zeroes",
                        json_string(json_is_string(dz) ? json_string_value(dz) : "off"));
    static const char *const limits[] = {
        "bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr",
    };
    for (size_t i = 0; i < ARRAY_SIZE(limits); i++) {
        json_object_set_new(o, limits[i], json_integer(0));
    }
    json_object_set_new(o, "image", node_image_info(bs, flat));
    json_object_set_new(o, "write_threshold", json_integer(0));
    /* diskstack's addition (QEMU shows it only inside a json: filename):
     * the group of a throttle node, for `diskstack throttle set NODE` */
    if (json_is_string(json_object_get(bs->options, "throttle-group"))) {
        json_object_set(o, "throttle-group",
                        json_object_get(bs->options, "throttle-group"));
    }
    json_object_set_new(o, "cache", cache_info(bs));
    return o;
}

static const QmpArg flat_arg[] = { { "flat", ARG_BOOL, false }, { NULL } };

static json_t *coroutine_fn query_named_block_nodes(json_t *args, Error **errp)
{
    bool flat = json_is_true(json_object_get(args, "flat"));
    json_t *list = json_array();

    global_lock_assert_held();
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    for (BlockNode *bs = bdrv_next_node(NULL); bs; bs = bdrv_next_node(bs)) {
        json_array_append_new(list, node_info(bs, flat));
    }
    bdrv_graph_rdunlock_main_loop();
    return list;
}

/* ------------------------------------------------------------ graph */

/* Ids of the graph's vertices: nodes, then the backends and jobs met as
 * parents.  Small integers, stable within one reply. */
typedef struct GraphIds {
    const void **vertex;
    int n, cap;
} GraphIds;

static int graph_id(GraphIds *ids, const void *v)
{
    for (int i = 0; i < ids->n; i++) {
        if (ids->vertex[i] == v) {
            return i + 1;
        }
    }
    if (ids->n == ids->cap) {
        ids->cap = ids->cap ? ids->cap * 2 : 16;
        ids->vertex = realloc(ids->vertex, ids->cap * sizeof(*ids->vertex));
    }
    ids->vertex[ids->n++] = v;
    return ids->n;
}

/* Pure: QEMU's permission names, in the order QEMU lists them. */
static json_t *perm_list(uint64_t perm)
{
    static const char *const names[] = {
        "consistent-read", "write", "write-unchanged", "resize",
    };
    json_t *list = json_array();

    for (int i = ARRAY_SIZE(names) - 1; i >= 0; i--) {
        if (perm & (1u << i)) {
            json_array_append_new(list, json_string(names[i]));
        }
    }
    return list;
}

/* GS: the vertex of a parent that is not a node (a backend or a job). */
static json_t *user_vertex(BlockChild *c, int id) GS
{
    BlockBackend *blk = blk_of_child(c);

    GS_CODE();
    if (blk) {
        return json_pack("{s:i,s:s,s:s}", "id", id, "type", "block-backend",
                         "name", blk_name(blk) ? blk_name(blk) : "");
    }
    return json_pack("{s:i,s:s,s:s}", "id", id, "type", "block-job",
                     "name", bdrv_child_user_name(c));
}

/* GS: the edges into bs, adding the users (backends, jobs) met on the way. */
static void add_parent_edges(BlockNode *bs, GraphIds *ids, json_t *nodes,
                             json_t *edges) GRAPH_RDLOCK GS
{
    GS_CODE();
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        const void *parent = c->parent_node ? (const void *)c->parent_node
                                            : c->parent_opaque;
        int known = ids->n;
        int pid = graph_id(ids, parent);

        if (!c->parent_node && pid > known) {
            json_array_append_new(nodes, user_vertex(c, pid));
        }
        json_array_append_new(edges, json_pack("{s:i,s:i,s:s,s:o,s:o}",
                                               "parent", pid,
                                               "child", graph_id(ids, bs),
                                               "name", c->name,
                                               "perm", perm_list(c->perm),
                                               "shared-perm",
                                               perm_list(c->shared_perm)));
    }
}

static json_t *coroutine_fn x_debug_query_block_graph(json_t *args, Error **errp)
{
    GraphIds ids = { 0 };
    json_t *nodes = json_array(), *edges = json_array();

    global_lock_assert_held();
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    /* every node first, so they get the low ids */
    for (BlockNode *bs = bdrv_next_node(NULL); bs; bs = bdrv_next_node(bs)) {
        json_array_append_new(nodes, json_pack("{s:i,s:s,s:s}",
                                               "id", graph_id(&ids, bs),
                                               "type", "block-driver",
                                               "name", bs->node_name));
    }
    for (BlockNode *bs = bdrv_next_node(NULL); bs; bs = bdrv_next_node(bs)) {
        add_parent_edges(bs, &ids, nodes, edges);
    }
    bdrv_graph_rdunlock_main_loop();
    free(ids.vertex);
    return json_pack("{s:o,s:o}", "nodes", nodes, "edges", edges);
}

/* ------------------------------------------------------------ add, del */

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

static const QmpArg no_args[] = { { NULL } };
static const QmpArg node_name_arg[] = { { "node-name", ARG_STR, true }, { NULL } };

const QmpCommandDef qmp_node_commands[] = {
    { { "query-named-block-nodes", query_named_block_nodes,
        "the named block nodes" }, flat_arg },
    { { "x-debug-query-block-graph", x_debug_query_block_graph,
        "the graph: nodes, backends, jobs and their edges" }, no_args },
    { { "blockdev-add", blockdev_add, "open a node from a definition" }, NULL },
    { { "blockdev-del", blockdev_del, "close a node nothing uses" }, node_name_arg },
    { { NULL } },
};
