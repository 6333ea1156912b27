/*
 * cmd-stream.c — QMP block-stream and block-commit (src/jobs/stream.h),
 * with QEMU 7.2's arguments, defaults and messages:
 *
 *   block-stream {job-id?, device, base?, base-node?, bottom?,
 *                 backing-file?, speed?, on-error?, filter-node-name?,
 *                 auto-finalize?, auto-dismiss?}
 *   block-commit {job-id?, device, base?, base-node?, top?, top-node?,
 *                 backing-file?, speed?, on-error?, filter-node-name?,
 *                 auto-finalize?, auto-dismiss?}
 *
 * job-id has no default here: a node is not a device with a name, so QEMU
 * asks for one too ("An explicit job ID is required").  filter-node-name
 * names the filter the job inserts for its life (without it, an automatic
 * hidden "#blockNNN" name), as QEMU: stream's copy-on-read above the
 * device, intermediate commit's commit_top above top.  Active commit (top
 * is device) is a mirror job of type "commit" (mirror_start_commit()), as
 * QEMU's commit_active_start; its filter is mirror-top.
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include <errno.h>
#include <string.h>

#include "block-gs.h"
#include "driver.h"
#include "jobs/mirror.h"
#include "jobs/stream.h"
#include "qmp/commands.h"

static const char *str_arg(json_t *args, const char *key)
{
    return json_string_value(json_object_get(args, key));
}

/* QEMU's "'a' and 'b' cannot be specified at the same time". */
static bool exclusive(json_t *args, const char *a, const char *b,
                      const char *fmt, Error **errp)
{
    if (str_arg(args, a) && str_arg(args, b)) {
        error_setg(errp, fmt, a, b);
        return false;
    }
    return true;
}

/* GS: the node in top's chain (top included) whose filename is name. */
static BlockNode *find_backing_image(BlockNode *top, const char *name) GS
{
    for (BlockNode *bs = top; bs; bs = chain_next(bs)) {
        if (!strcmp(bs->filename, name)) {
            return bs;
        }
    }
    return NULL;
}

/* GS: the node whose backing (or filtered child) is node, from top. */
static BlockNode *find_overlay(BlockNode *top, BlockNode *node) GS
{
    for (BlockNode *bs = top; bs; bs = chain_next(bs)) {
        if (chain_next(bs) == node) {
            return bs;
        }
    }
    return NULL;
}

/* The arguments both commands share; false with *errp on a bad one. */
static bool common_params(json_t *args, ChainJobParams *p, Error **errp)
{
    const char *on_error = str_arg(args, "on-error");
    json_t *af = json_object_get(args, "auto-finalize");
    json_t *ad = json_object_get(args, "auto-dismiss");

    p->job_id = str_arg(args, "job-id");
    p->filter_node_name = str_arg(args, "filter-node-name");
    p->backing_file = str_arg(args, "backing-file");
    p->speed = json_integer_value(json_object_get(args, "speed"));
    p->on_error = on_error ? blockdev_on_error_parse(on_error)
                           : BLOCKDEV_ON_ERROR_REPORT;
    p->auto_finalize = af ? json_is_true(af) : true;
    p->auto_dismiss = ad ? json_is_true(ad) : true;
    if ((int)p->on_error < 0) {
        error_setg(errp, "Parameter 'on-error' does not accept value '%s'",
                   on_error);
        return false;
    }
    return true;
}

/* QEMU's bdrv_lookup_bs(NULL, name). */
static BlockNode *lookup(const char *device, const char *name, Error **errp) GS
{
    BlockNode *bs = bdrv_find_node(name);

    if (!bs) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'",
                   device ? device : "", name);
    }
    return bs;
}

/* ------------------------------------------------------------ block-stream */

/* GS: base for block-stream from base / base-node / bottom; *ok false on
 * error (a NULL base is "the whole chain"). */
static BlockNode *stream_base(json_t *args, BlockNode *bs, bool *ok,
                              Error **errp) GS
{
    const char *device = str_arg(args, "device");
    const char *base = str_arg(args, "base");
    const char *base_node = str_arg(args, "base-node");
    const char *bottom = str_arg(args, "bottom");
    BlockNode *b = NULL;

    *ok = false;
    if (base && !(b = find_backing_image(chain_next(bs), base))) {
        error_setg(errp, "Base '%s' not found", base);
        return NULL;
    }
    if (base_node && (b = lookup(NULL, base_node, errp)) &&
        !chain_contains(bs, b)) {
        error_setg(errp, "Node '%s' is not a backing image of '%s'",
                   base_node, device);
        return NULL;
    }
    if (base_node && !b) {
        return NULL;
    }
    if (bottom) {
        BlockNode *bot = lookup(NULL, bottom, errp);
        if (!bot) {
            return NULL;
        }
        if (bot->drv->is_filter) {
            error_setg(errp, "Node '%s' is a filter, use a non-filter node as "
                       "'bottom'", bottom);
            return NULL;
        }
        if (!chain_contains(bs, bot)) {
            error_setg(errp, "Node '%s' is not in a chain starting from '%s'",
                       bottom, device);
            return NULL;
        }
        b = chain_next(bot);
    }
    *ok = true;
    return b;
}

static json_t *coroutine_fn block_stream(json_t *args, Error **errp)
{
    const char *fmt = "'%s' and '%s' cannot be specified at the same time";
    const char *device = str_arg(args, "device");
    ChainJobParams p;
    bool ok;

    global_lock_assert_held();
    GS_CODE();
    if (!exclusive(args, "base", "base-node", fmt, errp) ||
        !exclusive(args, "base", "bottom", fmt, errp) ||
        !exclusive(args, "bottom", "base-node", fmt, errp) ||
        !common_params(args, &p, errp)) {
        return NULL;
    }
    BlockNode *bs = lookup(device, device, errp);
    BlockNode *base = bs ? stream_base(args, bs, &ok, errp) : NULL;
    if (!bs || !ok) {
        return NULL;
    }
    if (!base && p.backing_file) {
        error_setg(errp, "backing file specified, but streaming the entire "
                   "chain");
        return NULL;
    }
    return stream_start(&p, bs, base, errp) < 0 ? NULL : json_object();
}

/* ------------------------------------------------------------ block-commit */

/* GS: top for block-commit (default: the active layer, device). */
static BlockNode *commit_top(json_t *args, BlockNode *bs, Error **errp) GS
{
    const char *top = str_arg(args, "top");
    const char *top_node = str_arg(args, "top-node");
    BlockNode *t = bs;

    if (top_node) {
        t = lookup(NULL, top_node, errp);
        if (t && t != bs && !chain_contains(bs, t)) {
            error_setg(errp, "'%s' is not in this backing file chain", top_node);
            return NULL;
        }
        return t;
    }
    if (top && !(t = find_backing_image(bs, top))) {
        error_setg(errp, "Top image file %s not found", top);
    }
    return t;
}

/* GS: base for block-commit (default: the bottom of top's chain). */
static BlockNode *commit_base(json_t *args, BlockNode *top, Error **errp) GS
{
    const char *base = str_arg(args, "base");
    const char *base_node = str_arg(args, "base-node");
    BlockNode *b = NULL;

    if (base_node) {
        b = lookup(NULL, base_node, errp);
        if (b && !chain_contains(top, b) && b != top) {
            error_setg(errp, "'%s' is not in this backing file chain", base_node);
            return NULL;
        }
        return b;
    }
    if (base) {
        if (!(b = find_backing_image(top, base))) {
            error_setg(errp, "Can't find '%s' in the backing chain", base);
        }
        return b;
    }
    /* the bottom of the chain: top itself without a backing, which the
     * caller refuses as QEMU does ("cannot commit an image into itself") */
    b = top;
    for (BlockNode *bs = chain_next(top); bs; bs = chain_next(bs)) {
        b = bs;
    }
    return b;
}

/* GS, coroutine: block-commit of the active layer top into base. */
static int coroutine_fn commit_active(const ChainJobParams *p, BlockNode *top,
                                      BlockNode *base, Error **errp) GS
{
    if (p->backing_file) {
        error_setg(errp, "'backing-file' specified, but 'top' is the active "
                   "layer");
        return -EINVAL;
    }
    MirrorParams m = {
        .job_id = p->job_id, .source = top, .target = base,
        .sync = MIRROR_SYNC_TOP, .speed = p->speed,
        .on_source_error = p->on_error, .on_target_error = p->on_error,
        .auto_finalize = p->auto_finalize, .auto_dismiss = p->auto_dismiss,
        .filter_node_name = p->filter_node_name,
    };
    if (!m.job_id) {
        error_setg(errp, "An explicit job ID is required");
        return -EINVAL;
    }
    return mirror_start_commit(&m, errp);
}

static json_t *coroutine_fn block_commit(json_t *args, Error **errp)
{
    const char *fmt = "'%s' and '%s' are mutually exclusive";
    const char *device = str_arg(args, "device");
    ChainJobParams p;

    global_lock_assert_held();
    GS_CODE();
    if (!common_params(args, &p, errp)) {
        return NULL;
    }
    BlockNode *bs = bdrv_find_node(device);
    if (!bs) {
        error_set_class(errp, "DeviceNotFound", "Device '%s' not found", device);
        return NULL;
    }
    if (!exclusive(args, "top-node", "top", fmt, errp) ||
        !exclusive(args, "base-node", "base", fmt, errp)) {
        return NULL;
    }
    BlockNode *top = commit_top(args, bs, errp);
    BlockNode *base = top ? commit_base(args, top, errp) : NULL;
    if (!base) {
        return NULL;
    }
    if (top == base) {
        error_setg(errp, "cannot commit an image into itself");
        return NULL;
    }
    if (top == bs) {
        return commit_active(&p, top, base, errp) < 0 ? NULL : json_object();
    }
    BlockNode *overlay = find_overlay(bs, top);
    return commit_start(&p, overlay, top, base, errp) < 0 ? NULL : json_object();
}

static const QmpArg stream_args[] = {
    { "job-id", ARG_STR, false }, { "device", ARG_STR, true },
    { "base", ARG_STR, false }, { "base-node", ARG_STR, false },
    { "bottom", ARG_STR, false }, { "backing-file", ARG_STR, false },
    { "speed", ARG_INT, false }, { "on-error", ARG_STR, false },
    { "filter-node-name", ARG_STR, false }, { "auto-finalize", ARG_BOOL, false },
    { "auto-dismiss", ARG_BOOL, false }, { NULL },
};
static const QmpArg commit_args[] = {
    { "job-id", ARG_STR, false }, { "device", ARG_STR, true },
    { "base", ARG_STR, false }, { "base-node", ARG_STR, false },
    { "top", ARG_STR, false }, { "top-node", ARG_STR, false },
    { "backing-file", ARG_STR, false }, { "speed", ARG_INT, false },
    { "on-error", ARG_STR, false }, { "filter-node-name", ARG_STR, false },
    { "auto-finalize", ARG_BOOL, false }, { "auto-dismiss", ARG_BOOL, false },
    { NULL },
};

const QmpCommandDef qmp_stream_commands[] = {
    { { "block-stream", block_stream,
        "copy a backing chain's data into a node and drop the chain" },
      stream_args },
    { { "block-commit", block_commit,
        "copy an overlay's data into its base and drop it (active layer: "
        "ready, then job-complete pivots to base)" },
      commit_args },
    { { NULL } },
};
