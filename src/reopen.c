/*
 * reopen.c — blockdev-reopen: live nodes take new definitions, all or
 * nothing.
 *
 * A reopen is a queue of entries, one per node, each with the node's whole
 * new definition.  The user lists some nodes; the queue grows by the
 * children they carry along:
 *   - a child given as a nested definition is reopened with it (only a child
 *     the parent created itself, as in QEMU: a node added by blockdev-add is
 *     reopened by naming it in the list);
 *   - a child the parent created itself and keeps by name inherits the
 *     parent's new read-only, auto-read-only and cache.* values, so making a
 *     qcow2 node with a nested file writable makes its file writable too.
 *
 * The steps, in the order of "bind the new table before destroying the old":
 *   1. check   every definition against the option tables, every node and
 *              child name, the options nobody may change; nothing is touched.
 *   2. quiesce the nodes reopened and the children they gain or lose — no
 *              other node: a reopen on one export's chain does not stall
 *              another export.
 *   3. prepare each driver's reopen_prepare (a new fd, a metadata flush)
 *              changes nothing visible; the new read-only flags are set
 *              tentatively, the edges change under the graph write lock, and
 *              permissions are recomputed from the top down for the new
 *              shape (the file driver re-takes its image locks here).
 *   4. commit  every driver's reopen_commit, children before parents (a
 *              qcow2 node going read-write writes through its file's new
 *              read-write fd), the core's own per-node state, bs->options.
 *      or abort: edges back, flags back, permissions recomputed for the old
 *              shape, every prepared driver's reopen_abort.
 *   5. end the sections, drop the references that kept the nodes alive.
 *
 * Quiescing and the drivers' prepare yield, so another command may change
 * an edge the queue was built on meanwhile (a snapshot): the edges are
 * checked again before anything changes, and the reopen starts over on the
 * graph as it is then.  Reopens themselves run one at a time.
 *
 * Everything here is GS: main thread, global lock, in the QMP command's
 * coroutine.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "graph-internal.h"
#include "options.h"

#define WRITE_PERMS (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED | BLK_PERM_RESIZE)

/* Options a parent passes to the children it created (see opts_inherit). */
static const char *const inherited_options[] = {
    "read-only", "auto-read-only", "cache.direct", "cache.no-flush", NULL,
};

typedef struct ReopenEntry {
    BlockReopenState rs;      /* rs.options: the new definition (owned) */
    char prefix[96];          /* "" or "file." for messages on nested defs */
    bool listed;              /* named by the user, not carried along */
    bool prepared;            /* reopen_prepare succeeded */
    bool old_read_only;
    /* Edge changes: new_* NULL with set_* means "detach". */
    bool set_backing, set_file;
    BlockNode *new_backing, *new_file;
    BlockNode *old_backing, *old_file;    /* the children when checked */
    bool backing_changed, file_changed;   /* applied, for the rollback */
} ReopenEntry;

typedef struct ReopenQueue {
    ReopenEntry **e;
    int n, cap;
    BlockNode **held;         /* referenced and quiesced */
    int nheld, heldcap;
    int *order;               /* indices, parents before children */
} ReopenQueue;

static void *grow_array(void *arr, int *cap, int n, size_t elem)
{
    if (n < *cap) {
        return arr;
    }
    *cap = *cap ? *cap * 2 : 8;
    arr = realloc(arr, (size_t)*cap * elem);
    if (!arr) {
        abort();
    }
    return arr;
}

static ReopenEntry *queue_find(ReopenQueue *q, BlockNode *bs)
{
    for (int i = 0; i < q->n; i++) {
        if (q->e[i]->rs.bs == bs) {
            return q->e[i];
        }
    }
    return NULL;
}

static ReopenEntry *queue_append(ReopenQueue *q, BlockNode *bs, json_t *def,
                                 bool listed, const char *prefix)
{
    ReopenEntry *e = calloc(1, sizeof(*e));
    if (!e) {
        abort();
    }
    e->rs.bs = bs;
    e->rs.options = def;
    e->rs.read_only = opt_bool(def, "read-only", false);
    e->listed = listed;
    snprintf(e->prefix, sizeof(e->prefix), "%.80s", prefix);
    q->e = grow_array(q->e, &q->cap, q->n, sizeof(*q->e));
    q->e[q->n++] = e;
    return e;
}

static void queue_remove(ReopenQueue *q, ReopenEntry *e)
{
    for (int i = 0; i < q->n; i++) {
        if (q->e[i] == e) {
            memmove(&q->e[i], &q->e[i + 1], (size_t)(q->n - i - 1) * sizeof(*q->e));
            q->n--;
            break;
        }
    }
    json_decref(e->rs.options);
    free(e);
}

static void queue_free(ReopenQueue *q)
{
    for (int i = 0; i < q->n; i++) {
        json_decref(q->e[i]->rs.options);
        free(q->e[i]);
    }
    free(q->e);
    free(q->held);
    free(q->order);
}

/* ------------------------------------------------------------------------
 * Option helpers (pure, apart from being called from GS code)
 */

/* Both (pure): removes a dotted key ("cache.direct"). */
static void opt_del(json_t *opts, const char *dotted)
{
    const char *dot = strrchr(dotted, '.');
    if (!dot) {
        json_object_del(opts, dotted);
        return;
    }
    char parent[256];
    snprintf(parent, sizeof(parent), "%.*s", (int)(dot - dotted), dotted);
    json_t *sub = opt_lookup(opts, parent);
    if (json_is_object(sub)) {
        json_object_del(sub, dot + 1);
        if (json_object_size(sub) == 0) {
            opt_del(opts, parent);
        }
    }
}

bool bdrv_reopen_option_changed(const BlockReopenState *rs, const char *key)
{
    GS_CODE();
    json_t *nv = opt_lookup(rs->options, key);
    json_t *ov = opt_lookup(rs->bs->options, key);
    return nv && (!ov || !json_equal(ov, nv));
}

int bdrv_reopen_refuse_changes(const BlockReopenState *rs,
                               const char *const *keys, Error **errp)
{
    GS_CODE();
    for (; *keys; keys++) {
        if (bdrv_reopen_option_changed(rs, *keys)) {
            error_setg(errp, "Cannot change the option '%s'", *keys);
            return -EINVAL;
        }
    }
    return 0;
}

/* Both (pure): a bool option's value in the new and the old definition,
 * absent meaning false (QEMU's default for every core bool). */
static bool bool_changed(json_t *old_opts, json_t *new_opts, const char *key)
{
    return opt_bool(old_opts, key, false) != opt_bool(new_opts, key, false);
}

/* Gives a definition error the element's position, as QEMU's QAPI visitor
 * does: "Parameter 'x' ..." becomes "Parameter 'options[1].x' ...". */
static void error_at_element(Error **errp, Error *err, size_t index)
{
    static const char *const starts[] = {
        "Parameter '", "Invalid parameter type for '",
    };
    const char *msg = error_get_pretty(err);
    for (size_t i = 0; i < ARRAY_SIZE(starts); i++) {
        size_t n = strlen(starts[i]);
        if (!strncmp(msg, starts[i], n)) {
            error_setg(errp, "%.*soptions[%zu].%s", (int)n, msg, index, msg + n);
            error_free(err);
            return;
        }
    }
    error_propagate(errp, err);
}

/* ------------------------------------------------------------------------
 * Step 1: check and build the queue (nothing changes)
 */

static int check_definitions(json_t *defs, Error **errp) GS
{
    GS_CODE();
    size_t i;
    json_t *def;

    json_array_foreach(defs, i, def) {
        Error *err = NULL;
        if (!json_is_object(def)) {
            error_setg(errp, "Invalid parameter type for 'options[%zu]', "
                       "expected: object", i);
            return -EINVAL;
        }
        if (blockdev_def_check(def, false, &err) < 0) {
            error_at_element(errp, err, i);
            return -EINVAL;
        }
    }
    return 0;
}

static bool driver_has_option(const BlockDriver *drv, const char *key)
{
    for (const BlockOptionDesc *d = drv->options; d && d->name; d++) {
        if (!strcmp(d->name, key)) {
            return true;
        }
    }
    return false;
}

/* The options no driver can change, and the driver's own when it has no
 * reopen_prepare to judge them. */
static int check_fixed_options(ReopenEntry *e, Error **errp) GS
{
    GS_CODE();
    BlockNode *bs = e->rs.bs;
    json_t *nopts = e->rs.options;

    if (strcmp(opt_str(nopts, "driver", ""), bs->drv->format_name)) {
        error_setg(errp, "Cannot change the option '%sdriver'", e->prefix);
        return -EINVAL;
    }
    if (bool_changed(bs->options, nopts, "force-share")) {
        error_setg(errp, "Cannot change the option 'force-share'");
        return -EINVAL;
    }
    if (opt_bool(nopts, "force-share", false) && !e->rs.read_only) {
        error_setg(errp, "force-share=on can only be used with read-only images");
        return -EINVAL;
    }
    if (bs->drv->reopen_prepare) {
        return 0;             /* the driver judges its own options */
    }
    if (bs->drv->is_protocol && bool_changed(bs->options, nopts, "cache.direct")) {
        error_setg(errp, "Cannot change the option 'cache.direct'");
        return -EINVAL;
    }
    for (const BlockOptionDesc *d = bs->drv->options; d && d->name; d++) {
        if (d->type != OPT_CHILD && d->type != OPT_CHILD_OR_NULL &&
            bdrv_reopen_option_changed(&e->rs, d->name)) {
            error_setg(errp, "Cannot change the option '%s'", d->name);
            return -EINVAL;
        }
    }
    return 0;
}

static ReopenEntry *queue_node(ReopenQueue *q, BlockNode *bs, json_t *def,
                               bool listed, const char *prefix, Error **errp) GS;

/* A child this node created itself and keeps: it follows the parent's new
 * inherited options.  Queued only when one of them actually changes. */
static int carry_child_along(ReopenQueue *q, ReopenEntry *parent,
                             BlockNode *child, bool backing, Error **errp) GS
{
    GS_CODE();
    if (node_state(child)->monitor_owned || queue_find(q, child)) {
        return 0;
    }
    json_t *def = json_deep_copy(child->options);
    bool changed = false;
    for (const char *const *k = inherited_options; *k; k++) {
        if (backing && strstr(*k, "read-only")) {
            continue;         /* a backing file stays read-only */
        }
        json_t *pv = opt_lookup(parent->rs.options, *k);
        json_t *cv = opt_lookup(def, *k);
        if (pv && !(cv && json_equal(pv, cv))) {
            opt_set(def, *k, json_deep_copy(pv));
            changed = true;
        } else if (!pv && cv) {
            opt_del(def, *k);
            changed = true;
        }
    }
    if (!changed) {
        json_decref(def);
        return 0;
    }
    return queue_node(q, child, def, false, parent->prefix, errp) ? 0 : -EINVAL;
}

/* A child given as a nested definition: reopens the current child with it,
 * if this node created that child (QEMU's rule). */
static int reopen_nested_child(ReopenQueue *q, ReopenEntry *parent,
                               const char *key, BlockNode *cur, json_t *v,
                               Error **errp) GS
{
    GS_CODE();
    if (!cur || node_state(cur)->monitor_owned) {
        error_setg(errp, "Cannot change the option '%s%s.driver'",
                   parent->prefix, key);
        return -EINVAL;
    }
    const char *name = opt_str(v, "node-name", NULL);
    if (name && strcmp(name, cur->node_name)) {
        error_setg(errp, "Cannot change the option 'node-name'");
        return -EINVAL;
    }
    json_t *def = json_deep_copy(v);
    opts_inherit(def, parent->rs.options);
    json_object_set_new(def, "node-name", json_string(cur->node_name));
    char prefix[sizeof(parent->prefix) + 16];
    snprintf(prefix, sizeof(prefix), "%s%s.", parent->prefix, key);
    return queue_node(q, cur, def, true, prefix, errp) ? 0 : -EINVAL;
}

static BlockNode *current_child(BlockNode *bs, bool backing) GS
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    BlockChild *c = backing ? bs->backing : bs->file;
    BlockNode *n = c ? c->node : NULL;
    bdrv_graph_rdunlock_main_loop();
    return n;
}

/* Reads what the new definition says about child `key` ("file" or
 * "backing"): keep, replace, detach, or reopen with a nested definition. */
static int resolve_child(ReopenQueue *q, ReopenEntry *e, const char *key,
                         Error **errp) GS
{
    GS_CODE();
    BlockNode *bs = e->rs.bs;
    bool backing = !strcmp(key, "backing");
    BlockNode *cur = current_child(bs, backing);
    json_t *v = json_object_get(e->rs.options, key);

    /* what the decisions below are based on, checked again once quiesced */
    *(backing ? &e->old_backing : &e->old_file) = cur;
    if (!driver_has_option(bs->drv, key)) {
        return 0;
    }
    if (!v) {
        /* QEMU: an omitted backing does not mean "keep it" */
        if (backing && cur) {
            error_setg(errp, "backing is missing for '%s'", bs->node_name);
            return -EINVAL;
        }
        return 0;
    }
    if (json_is_object(v)) {
        return reopen_nested_child(q, e, key, cur, v, errp);
    }
    BlockNode *want = NULL;
    if (json_is_string(v)) {
        want = bdrv_find_node(json_string_value(v));
        if (!want) {
            error_setg(errp, "Cannot find device='' nor node-name='%s'",
                       json_string_value(v));
            return -ENOENT;
        }
    }
    if (want == cur) {
        return cur ? carry_child_along(q, e, cur, backing, errp) : 0;
    }
    if (backing) {
        e->set_backing = true;
        e->new_backing = want;
    } else {
        e->set_file = true;
        e->new_file = want;
    }
    return 0;
}

/* Adds bs with its new definition def (consumed) and resolves its children;
 * NULL with *errp set on a refusal (the entry stays for queue_free). */
static ReopenEntry *queue_node(ReopenQueue *q, BlockNode *bs, json_t *def,
                               bool listed, const char *prefix, Error **errp)
{
    GS_CODE();
    ReopenEntry *old = queue_find(q, bs);
    if (old && old->listed) {
        json_decref(def);
        error_setg(errp, "Node '%s' is listed more than once", bs->node_name);
        return NULL;
    }
    if (old) {
        queue_remove(q, old);   /* carried along before; the list says more */
    }
    ReopenEntry *e = queue_append(q, bs, def, listed, prefix);
    if (check_fixed_options(e, errp) < 0 ||
        resolve_child(q, e, "file", errp) < 0 ||
        resolve_child(q, e, "backing", errp) < 0) {
        return NULL;
    }
    return e;
}

static int build_queue(ReopenQueue *q, json_t *defs, Error **errp) GS
{
    GS_CODE();
    size_t i;
    json_t *def;

    json_array_foreach(defs, i, def) {
        const char *name = opt_str(def, "node-name", NULL);
        if (!name) {
            error_setg(errp, "node-name not specified");
            return -EINVAL;
        }
        BlockNode *bs = bdrv_find_node(name);
        if (!bs) {
            error_setg(errp, "Failed to find node with node-name='%s'", name);
            return -ENOENT;
        }
        if (!queue_node(q, bs, json_deep_copy(def), true, "", errp)) {
            return -EINVAL;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Step 2: references and quiesced sections
 */

static void hold_node(ReopenQueue *q, BlockNode *bs) GS
{
    GS_CODE();
    if (!bs) {
        return;
    }
    for (int i = 0; i < q->nheld; i++) {
        if (q->held[i] == bs) {
            return;
        }
    }
    q->held = grow_array(q->held, &q->heldcap, q->nheld, sizeof(*q->held));
    q->held[q->nheld++] = bs;
    bdrv_ref(bs);
}

static void coroutine_fn quiesce_touched(ReopenQueue *q) GS
{
    GS_CODE();
    for (int i = 0; i < q->n; i++) {
        ReopenEntry *e = q->e[i];
        hold_node(q, e->rs.bs);
        /* children kept are not touched: their other parents run on */
        if (e->set_backing) {
            hold_node(q, e->new_backing);
            hold_node(q, e->old_backing);
        }
        if (e->set_file) {
            hold_node(q, e->new_file);
            hold_node(q, e->old_file);
        }
    }
    for (int i = 0; i < q->nheld; i++) {
        bdrv_co_quiesce_begin(q->held[i]);
    }
}

static void coroutine_fn release_touched(ReopenQueue *q) GS
{
    GS_CODE();
    for (int i = 0; i < q->nheld; i++) {
        bdrv_quiesce_end(q->held[i]);
    }
    for (int i = 0; i < q->nheld; i++) {
        bdrv_co_unref(q->held[i]);
    }
}

/* ------------------------------------------------------------------------
 * Step 3: prepare
 */


/* The entries, parents before children (by the graph of the moment). */
static void compute_order(ReopenQueue *q) GRAPH_RDLOCK GS
{
    GS_CODE();
    bool *done = calloc(q->n + 1, sizeof(*done));
    free(q->order);
    q->order = calloc(q->n + 1, sizeof(*q->order));
    if (!done || !q->order) {
        abort();
    }
    for (int k = 0; k < q->n; k++) {
        int pick = -1;
        for (int i = 0; i < q->n && pick < 0; i++) {
            bool has_parent_left = false;
            for (int j = 0; j < q->n && !done[i] && !has_parent_left; j++) {
                has_parent_left = j != i && !done[j] &&
                                  bdrv_node_reaches(q->e[j]->rs.bs, q->e[i]->rs.bs);
            }
            if (!done[i] && !has_parent_left) {
                pick = i;
            }
        }
        if (pick < 0) {                 /* cannot happen in a DAG */
            for (pick = 0; done[pick]; pick++) {
            }
        }
        done[pick] = true;
        q->order[k] = pick;
    }
    free(done);
}

static int coroutine_fn prepare_drivers(ReopenQueue *q, Error **errp) GS
{
    GS_CODE();
    for (int i = 0; i < q->n; i++) {
        ReopenEntry *e = q->e[i];
        BlockNode *bs = e->rs.bs;
        e->old_read_only = bs->read_only;
        if (bs->drv->reopen_prepare) {
            Error *err = NULL;
            if (bs->drv->reopen_prepare(&e->rs, &err) < 0) {
                if (!err) {
                    error_setg(&err, "Could not reopen node '%s'", bs->node_name);
                }
                error_propagate(errp, err);
                return -EINVAL;
            }
        }
        e->prepared = true;
    }
    return 0;
}

static void cycle_error(Error **errp, BlockNode *child, const char *role,
                        BlockNode *parent)
{
    error_setg(errp, "Making '%s' a %s child of '%s' would create a cycle",
               child->node_name, role, parent->node_name);
}

/* bdrv_set_backing_locked() refuses a cycle with QEMU's message. */
static int change_backing(ReopenEntry *e, Error **errp) GRAPH_WRLOCK GS
{
    GS_CODE();
    int ret = bdrv_set_backing_locked(e->rs.bs, e->new_backing, errp);
    e->backing_changed = ret == 0;
    return ret;
}

static int change_file(ReopenEntry *e, Error **errp) GRAPH_WRLOCK GS
{
    GS_CODE();
    BlockNode *bs = e->rs.bs;

    if (bdrv_node_reaches(e->new_file, bs)) {
        cycle_error(errp, e->new_file, "file", bs);
        return -EINVAL;
    }
    int ret = bdrv_replace_child_node(bs->file, e->new_file, errp);
    e->file_changed = ret == 0;
    return ret;
}

static int change_edges(ReopenQueue *q, Error **errp) GRAPH_WRLOCK GS
{
    GS_CODE();
    for (int i = 0; i < q->n; i++) {
        ReopenEntry *e = q->e[i];
        if ((e->set_file && change_file(e, errp) < 0) ||
            (e->set_backing && change_backing(e, errp) < 0)) {
            return -EINVAL;
        }
    }
    return 0;
}

static void undo_edges(ReopenQueue *q) GRAPH_WRLOCK GS
{
    GS_CODE();
    for (int i = q->n - 1; i >= 0; i--) {
        ReopenEntry *e = q->e[i];
        BlockNode *bs = e->rs.bs;
        if (e->backing_changed) {
            bdrv_set_backing_locked(bs, e->old_backing, NULL);
            e->backing_changed = false;
        }
        if (e->file_changed) {
            bdrv_replace_child_node(bs->file, e->old_file, NULL);
            e->file_changed = false;
        }
    }
}

/* A node that is read-only after the reopen may have no writing parent.
 * Checked here, with the parents' edges already recomputed, to give QEMU's
 * two messages. */
static int check_no_writer(ReopenEntry *e, Error **errp) GRAPH_RDLOCK GS
{
    GS_CODE();
    BlockNode *bs = e->rs.bs;
    if (!bs->read_only) {
        return 0;
    }
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        if (!(c->perm & WRITE_PERMS)) {
            continue;
        }
        if (e->old_read_only) {
            error_setg(errp, "Block node is read-only");
        } else {
            error_setg(errp, "Read-only block node '%s' cannot support "
                       "read-write users", bs->node_name);
        }
        return -EACCES;
    }
    return 0;
}

/* Permissions for the new shape, from the top down. */
static int refresh_perms(ReopenQueue *q, Error **errp) GRAPH_RDLOCK GS
{
    GS_CODE();
    compute_order(q);
    for (int k = 0; k < q->n; k++) {
        ReopenEntry *e = q->e[q->order[k]];
        int ret = check_no_writer(e, errp);
        if (ret == 0) {
            ret = perm_refresh_node(e->rs.bs, errp);
        }
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static void set_read_only_flags(ReopenQueue *q, bool new_values) GS
{
    GS_CODE();
    for (int i = 0; i < q->n; i++) {
        ReopenEntry *e = q->e[i];
        e->rs.bs->read_only = new_values ? e->rs.read_only : e->old_read_only;
    }
}

/* Back to the old shape: edges, flags, then the permissions they imply
 * (going back to what was granted before does not conflict). */
static void undo_shape(ReopenQueue *q) GRAPH_WRLOCK GS
{
    GS_CODE();
    undo_edges(q);
    set_read_only_flags(q, false);
    compute_order(q);
    for (int k = 0; k < q->n; k++) {
        perm_refresh_node(q->e[q->order[k]]->rs.bs, NULL);
    }
}

static void abort_drivers(ReopenQueue *q) GS
{
    GS_CODE();
    for (int i = q->n - 1; i >= 0; i--) {
        ReopenEntry *e = q->e[i];
        if (e->prepared && e->rs.bs->drv->reopen_abort) {
            e->rs.bs->drv->reopen_abort(&e->rs);
        }
        e->prepared = false;
    }
}

/* The new shape: flags, edges and permissions, all or nothing.  Under the
 * write lock, which is a flag of the main thread: nothing here yields. */
static int change_shape(ReopenQueue *q, Error **errp) GS
{
    GS_CODE();
    bdrv_graph_wrlock();
    set_read_only_flags(q, true);
    int ret = change_edges(q, errp);
    if (ret == 0) {
        ret = refresh_perms(q, errp);
    }
    if (ret < 0) {
        undo_shape(q);
    }
    bdrv_graph_wrunlock();
    return ret;
}

/* ------------------------------------------------------------------------
 * Step 4: commit
 */

/* The users that are not nodes (exports, jobs) learn a new length, as
 * after a resize (a raw node follows the length of a new file child). */
static void notify_length(BlockNode *bs) GRAPH_RDLOCK GS
{
    GS_CODE();
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        if (!c->parent_node && c->klass && c->klass->resize) {
            c->klass->resize(c);
        }
    }
}

static void commit_entry(ReopenEntry *e) GRAPH_RDLOCK GS
{
    GS_CODE();
    BlockNode *bs = e->rs.bs;
    NodeState *ns = node_state(bs);
    int64_t old_length = bdrv_getlength(bs);

    if (bs->drv->reopen_commit) {
        bs->drv->reopen_commit(&e->rs);
    }
    if (bdrv_getlength(bs) != old_length) {
        notify_length(bs);
    }
    e->prepared = false;
    node_apply_io_options(ns, e->rs.options);
    if (e->file_changed && bs->file) {
        snprintf(bs->filename, sizeof(bs->filename), "%s",
                 bs->file->node->filename);
    }
    /* query-named-block-nodes reports the definition the node runs with */
    json_decref(bs->options);
    bs->options = json_incref(e->rs.options);
    bdrv_refresh_limits_node(bs);
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        if (c->parent_node) {
            bdrv_refresh_limits_node(c->parent_node);
        }
    }
}

static void commit_all(ReopenQueue *q) GRAPH_RDLOCK GS
{
    GS_CODE();
    compute_order(q);
    for (int k = q->n - 1; k >= 0; k--) {      /* children first */
        commit_entry(q->e[q->order[k]]);
    }
}

/* Returned inside this file when the graph changed under a yield: the
 * whole reopen starts again on the graph as it is now. */
#define REOPEN_AGAIN 1

static bool queue_still_valid(ReopenQueue *q) GS;

/* Steps 3 and 4, inside the quiesced sections.  The drivers' prepare may
 * yield (a qcow2 flush), so the edges are checked again before they change.
 * Commits run outside the write lock: a driver's commit may do I/O (qcow2
 * going read-write repairs a dirty image), and the write lock must not be
 * held across a yield. */
static int coroutine_fn reopen_quiesced(ReopenQueue *q, Error **errp) GS
{
    GS_CODE();
    int ret = prepare_drivers(q, errp);

    if (ret == 0 && !queue_still_valid(q)) {
        ret = REOPEN_AGAIN;
    }
    if (ret == 0) {
        ret = change_shape(q, errp);
    }
    if (ret != 0) {
        abort_drivers(q);
        return ret;
    }
    bdrv_graph_rdlock_main_loop();
    commit_all(q);
    bdrv_graph_rdunlock_main_loop();
    return 0;
}

/* Quiescing yields: another command (a snapshot) may have changed an edge
 * the queue was built on meanwhile.  Then the sections cover the wrong
 * nodes. */
static bool queue_still_valid(ReopenQueue *q)
{
    GS_CODE();
    for (int i = 0; i < q->n; i++) {
        ReopenEntry *e = q->e[i];
        if (current_child(e->rs.bs, false) != e->old_file ||
            current_child(e->rs.bs, true) != e->old_backing) {
            return false;
        }
    }
    return true;
}

/* One reopen at a time: a second one would see the first's tentative
 * read-only flags and prepared state. */
static CoMutex reopen_lock;
static bool reopen_lock_ready;

static int coroutine_fn reopen_locked(json_t *defs, Error **errp) GS
{
    GS_CODE();
    int ret;

    do {
        ReopenQueue q = { 0 };
        ret = build_queue(&q, defs, errp);
        if (ret == 0 && q.n > 0) {
            quiesce_touched(&q);
            ret = queue_still_valid(&q) ? reopen_quiesced(&q, errp) : REOPEN_AGAIN;
            release_touched(&q);
        }
        queue_free(&q);
    } while (ret == REOPEN_AGAIN);
    return ret;
}

int coroutine_fn bdrv_co_reopen_multiple(json_t *defs, Error **errp)
{
    GS_CODE();
    int ret;

    if (!json_is_array(defs)) {
        error_setg(errp, "Invalid parameter type for 'options', expected: array");
        return -EINVAL;
    }
    ret = check_definitions(defs, errp);
    if (ret < 0) {
        return ret;
    }
    if (!reopen_lock_ready) {
        co_mutex_init(&reopen_lock);
        reopen_lock_ready = true;
    }
    co_mutex_lock(&reopen_lock);
    ret = reopen_locked(defs, errp);
    co_mutex_unlock(&reopen_lock);
    return ret < 0 ? ret : 0;
}

/* The definition bs runs with, its children named by their current nodes
 * (so that they are kept) and read-only set as asked. */
static json_t *definition_with_read_only(BlockNode *bs, bool read_only) GS
{
    GS_CODE();
    json_t *def = json_deep_copy(bs->options);
    BlockNode *file = current_child(bs, false);
    BlockNode *backing = current_child(bs, true);

    json_object_set_new(def, "node-name", json_string(bs->node_name));
    json_object_set_new(def, "read-only", json_boolean(read_only));
    if (file) {
        json_object_set_new(def, "file", json_string(file->node_name));
    }
    if (driver_has_option(bs->drv, "backing")) {
        json_object_set_new(def, "backing", backing ?
                            json_string(backing->node_name) : json_null());
    }
    return def;
}

int coroutine_fn bdrv_co_reopen_set_read_only(BlockNode *bs, bool read_only,
                                              Error **errp)
{
    GS_CODE();
    if (bs->read_only == read_only) {
        return 0;
    }
    json_t *defs = json_array();
    json_array_append_new(defs, definition_with_read_only(bs, read_only));
    int ret = bdrv_co_reopen_multiple(defs, errp);
    json_decref(defs);
    return ret;
}
