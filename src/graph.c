/*
 * graph.c — nodes and edges: the driver registry, opening nodes from
 * definitions, attaching and detaching children, references, blockdev-del
 * and closing everything at exit.
 *
 * All GS (main thread, global lock), except driver_lookup() which reads the
 * registry that block_init() fills once at start-up.
 *
 * Edge changes take the graph write lock.  An edge below a node that is
 * reachable (has parents, so requests may arrive) changes only while that
 * node is quiesced; the functions assert it (see graph-lock.c for why that
 * is the exclusion readers need).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "graph-internal.h"
#include "options.h"

extern const BlockDriver bdrv_file;
extern const BlockDriver bdrv_raw;

/* ---- driver registry ---- */

#define MAX_DRIVERS 32
static const BlockDriver *drivers[MAX_DRIVERS];
static int ndrivers;

void bdrv_register(const BlockDriver *drv)
{
    GS_CODE();
    for (int i = 0; i < ndrivers; i++) {
        if (drivers[i] == drv || !strcmp(drivers[i]->format_name, drv->format_name)) {
            return;
        }
    }
    if (ndrivers == MAX_DRIVERS) {
        abort();
    }
    drivers[ndrivers++] = drv;
}

void block_init(void)
{
    GS_CODE();
    bdrv_register(&bdrv_file);
    bdrv_register(&bdrv_raw);
    { extern const BlockDriver bdrv_qcow2; bdrv_register(&bdrv_qcow2); }
    { extern const BlockDriver bdrv_throttle; bdrv_register(&bdrv_throttle); }
    { extern const BlockDriver bdrv_inject; bdrv_register(&bdrv_inject); }
    { extern const BlockDriver bdrv_copy_on_read; bdrv_register(&bdrv_copy_on_read); }
}

const BlockDriver *driver_lookup(const char *name)
{
    for (int i = 0; name && i < ndrivers; i++) {
        if (!strcmp(drivers[i]->format_name, name)) {
            return drivers[i];
        }
    }
    return NULL;
}

const BlockDriver *bdrv_find_driver(const char *name)
{
    GS_CODE();
    return driver_lookup(name);
}

/* I/O or GS: the registry is filled by block_init() before any IOThread
 * starts and never changes after, and probe callbacks are pure, so raw's
 * sector-0 guard may call this on its I/O path. */
const BlockDriver *bdrv_probe_format(const uint8_t *buf, int len,
                                     const char *filename)
{
    IO_OR_GS_CODE();
    const BlockDriver *raw = driver_lookup("raw");
    const BlockDriver *best = raw;
    int best_score = (raw && raw->probe) ? raw->probe(buf, len, filename) : 1;
    for (int i = 0; i < ndrivers; i++) {
        const BlockDriver *d = drivers[i];
        if (!d->probe || d == raw) {
            continue;
        }
        int score = d->probe(buf, len, filename);
        if (score > best_score) {
            best_score = score;
            best = d;
        }
    }
    return best;
}

/* GS: reads the first len bytes of node bs through a temporary backend. */
static int coroutine_fn read_head(BlockNode *bs, uint8_t *buf, int len,
                                  Error **errp) GS
{
    BlockBackend *blk;
    IOVector qiov;
    int ret;

    GS_CODE();
    blk = blk_new("probe", BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    if (blk_insert_node(blk, bs, errp) < 0) {
        blk_co_unref(blk);
        return -1;
    }
    iov_init_buf(&qiov, buf, len);
    ret = len > 0 ? blk_co_preadv(blk, 0, len, &qiov, 0) : 0;
    blk_co_remove_node(blk);
    blk_co_unref(blk);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot read image '%s'", bs->filename);
        return -1;
    }
    return 0;
}

const BlockDriver *coroutine_fn bdrv_co_probe_node(BlockNode *bs, Error **errp)
{
    const BlockDriver *drv = NULL;
    uint8_t *buf = NULL;
    int len;

    GS_CODE();
    len = (int)MIN(bdrv_getlength(bs), BDRV_PROBE_BYTES);
    /* aligned: the file driver may hand it straight to the kernel */
    if (posix_memalign((void **)&buf, BDRV_PROBE_BYTES, BDRV_PROBE_BYTES) == 0 &&
        read_head(bs, buf, len, errp) == 0) {
        drv = bdrv_probe_format(buf, len, bs->filename);
    }
    free(buf);
    return drv;
}

/* ---- named nodes ---- */

static BlockNode *named_nodes;

BlockNode *bdrv_find_node(const char *node_name)
{
    GS_CODE();
    for (BlockNode *bs = named_nodes; bs; bs = bs->next_named) {
        if (!strcmp(bs->node_name, node_name)) {
            return bs;
        }
    }
    return NULL;
}

BlockNode *bdrv_next_node(BlockNode *prev)
{
    GS_CODE();
    return prev ? prev->next_named : named_nodes;
}

static void named_add(BlockNode *bs) GS
{
    BlockNode **p = &named_nodes;
    while (*p) {
        p = &(*p)->next_named;
    }
    bs->next_named = NULL;
    *p = bs;
}

static void named_remove(BlockNode *bs) GS
{
    for (BlockNode **p = &named_nodes; *p; p = &(*p)->next_named) {
        if (*p == bs) {
            *p = bs->next_named;
            return;
        }
    }
}

/* QEMU's rule: a letter first, then letters, digits, '-', '.', '_'. */
static bool node_name_wellformed(const char *name)
{
    if (!name[0] || strlen(name) >= sizeof(((BlockNode *)0)->node_name)) {
        return false;
    }
    if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z'))) {
        return false;
    }
    for (const char *p = name; *p; p++) {
        if (!(strchr("-._", *p) || (*p >= '0' && *p <= '9') ||
              (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))) {
            return false;
        }
    }
    return true;
}

/* Picks the node name: the given one (checked) or a generated "#blockNNN". */
static int choose_node_name(json_t *opts, char *out, size_t len, Error **errp) GS
{
    static unsigned counter;
    const char *name = opt_str(opts, "node-name", NULL);
    if (name) {
        if (!node_name_wellformed(name)) {
            error_setg(errp, "Invalid node-name: '%s'", name);
            return -EINVAL;
        }
        if (bdrv_find_node(name)) {
            error_setg(errp, "Duplicate nodes with node-name='%s'", name);
            return -EEXIST;
        }
        snprintf(out, len, "%s", name);
        return 0;
    }
    do {
        snprintf(out, len, "#block%03u", counter++);
    } while (bdrv_find_node(out));
    return 0;
}

/* ---- edges ---- */

static bool node_quiesced(BlockNode *bs)
{
    return atomic_load(&bs->quiesce_counter) > 0;
}

/* A node requests may reach: it has a parent. */
static bool node_reachable(BlockNode *bs) GRAPH_RDLOCK
{
    return bs->parents != NULL;
}

static void assert_may_change_edges_of(BlockNode *bs) GRAPH_RDLOCK
{
    if (bs && node_reachable(bs) && !node_quiesced(bs)) {
        fprintf(stderr, "diskstack: edges of node '%s' changed outside a "
                "quiesced section\n", bs->node_name);
        abort();
    }
}

static void link_parent(BlockNode *bs, BlockChild *c) GRAPH_WRLOCK
{
    /* Atomic: a backend's I/O-or-GS getters (blk_getlength) read its root
     * edge's node without entering a request, and moving the parents of a
     * node (blockdev-snapshot) rewrites that edge under them. */
    __atomic_store_n(&c->node, bs, __ATOMIC_RELEASE);
    c->next_parent = bs->parents;
    bs->parents = c;
}

static void unlink_parent(BlockNode *bs, BlockChild *c) GRAPH_WRLOCK
{
    for (BlockChild **p = &bs->parents; *p; p = &(*p)->next_parent) {
        if (*p == c) {
            *p = c->next_parent;
            break;
        }
    }
    c->next_parent = NULL;
}

static void link_child(BlockNode *parent, BlockChild *c) GRAPH_WRLOCK
{
    BlockChild **p = &parent->children;
    while (*p) {
        p = &(*p)->next_child;
    }
    *p = c;
    c->next_child = NULL;
    if (!strcmp(c->name, "file")) {
        parent->file = c;
    } else if (!strcmp(c->name, "backing")) {
        parent->backing = c;
    }
}

static void unlink_child(BlockNode *parent, BlockChild *c) GRAPH_WRLOCK
{
    for (BlockChild **p = &parent->children; *p; p = &(*p)->next_child) {
        if (*p == c) {
            *p = c->next_child;
            break;
        }
    }
    if (parent->file == c) {
        parent->file = NULL;
    }
    if (parent->backing == c) {
        parent->backing = NULL;
    }
}

/* Makes the parent side of c follow the quiesced sections of its node:
 * `sections` is bdrv_parent_sections() of c's node (0 when c leaves it),
 * which leaves out the sections a barrier node holds from below. */
static void sync_parent_quiesce(BlockChild *c, int sections) GRAPH_RDLOCK GS
{
    while (c->parent_quiesced < sections) {
        bdrv_parent_quiesce_begin_one(c);
    }
    while (c->parent_quiesced > sections) {
        bdrv_parent_quiesce_end_one(c);
    }
}

static void edge_unlink(BlockChild *c) GRAPH_WRLOCK GS
{
    sync_parent_quiesce(c, 0);
    if (c->parent_node) {
        unlink_child(c->parent_node, c);
    }
    unlink_parent(c->node, c);
}

static void edge_free(BlockChild *c)
{
    free(c->name);
    free(c);
}

/* Creates and links an edge, checks and applies permissions.  The edge
 * takes a reference on child. */
static BlockChild *attach_edge(BlockNode *child, const char *name,
                               BdrvChildRole role, BlockNode *parent_node,
                               const BlockChildClass *klass, void *opaque,
                               uint64_t perm, uint64_t shared, Error **errp) GS
{
    BlockChild *c = calloc(1, sizeof(*c));
    if (!c || !(c->name = strdup(name))) {
        abort();
    }
    c->role = role;
    c->parent_node = parent_node;
    c->klass = klass;
    c->parent_opaque = opaque;

    bdrv_graph_wrlock();
    assert_may_change_edges_of(parent_node);
    link_parent(child, c);
    if (parent_node) {
        link_child(parent_node, c);
        perm_for_child(parent_node, c, &perm, &shared);
    }
    c->perm = perm;
    c->shared_perm = shared;
    sync_parent_quiesce(c, bdrv_parent_sections(child));
    int ret = perm_refresh_node(child, errp);
    if (ret < 0) {
        edge_unlink(c);
        bdrv_graph_wrunlock();
        edge_free(c);
        return NULL;
    }
    bdrv_graph_wrunlock();
    bdrv_ref(child);
    return c;
}

BlockChild *bdrv_attach_child(BlockNode *parent, BlockNode *child,
                              const char *name, BdrvChildRole role,
                              Error **errp)
{
    GS_CODE();
    return attach_edge(child, name, role, parent, NULL, NULL, 0, 0, errp);
}

BlockChild *bdrv_root_attach_child(BlockNode *child, const char *name,
                                   BdrvChildRole role,
                                   const BlockChildClass *klass, void *opaque,
                                   uint64_t perm, uint64_t shared,
                                   Error **errp)
{
    GS_CODE();
    return attach_edge(child, name, role, NULL, klass, opaque, perm, shared, errp);
}

void coroutine_fn bdrv_co_detach_child(BlockChild *c)
{
    GS_CODE();
    bdrv_graph_wrlock();
    BlockNode *child = c->node;
    assert_may_change_edges_of(c->parent_node);
    edge_unlink(c);
    /* Dropping permissions cannot conflict; a driver refusing to unlock is
     * reported by the driver and ignored here. */
    perm_refresh_node(child, NULL);
    bdrv_graph_wrunlock();
    edge_free(c);
    bdrv_co_unref(child);
}

void coroutine_fn bdrv_co_unref_child(BlockNode *parent, BlockChild *child)
{
    GS_CODE();
    bdrv_co_detach_child(child);
}

int bdrv_replace_child_node(BlockChild *c, BlockNode *new_bs, Error **errp)
{
    GS_CODE();
    BlockNode *old = c->node;
    if (!graph_wrlock_held() || !node_quiesced(old) || !node_quiesced(new_bs)) {
        fprintf(stderr, "diskstack: bdrv_replace_child_node needs the graph "
                "write lock and both nodes quiesced\n");
        abort();
    }
    if (old->refcnt < 2) {
        /* The caller keeps old alive across the change (see block-gs.h). */
        abort();
    }
    int sections = c->parent_quiesced;
    unlink_parent(old, c);
    link_parent(new_bs, c);
    sync_parent_quiesce(c, bdrv_parent_sections(new_bs));
    int ret = perm_refresh_node(new_bs, errp);
    if (ret < 0) {
        unlink_parent(new_bs, c);
        link_parent(old, c);
        sync_parent_quiesce(c, sections);
        return ret;
    }
    perm_refresh_node(old, NULL);
    bdrv_ref(new_bs);
    old->refcnt--;
    return 0;
}

/* ---- edge changes inside a caller's section (graph-change.c) ----
 *
 * The caller holds the graph write lock, has quiesced the nodes whose edges
 * change, holds a reference on each of them, and refreshes permissions
 * itself (one perm transaction for the whole change). */

BlockChild *bdrv_link_child_noperm(BlockNode *parent, BlockNode *child,
                                   const char *name, BdrvChildRole role)
{
    GS_CODE();
    if (!graph_wrlock_held()) {
        abort();
    }
    assert_may_change_edges_of(parent);
    BlockChild *c = calloc(1, sizeof(*c));
    if (!c || !(c->name = strdup(name))) {
        abort();
    }
    c->role = role;
    c->parent_node = parent;
    link_parent(child, c);
    link_child(parent, c);
    perm_for_child(parent, c, &c->perm, &c->shared_perm);
    sync_parent_quiesce(c, bdrv_parent_sections(child));
    child->refcnt++;
    return c;
}

void bdrv_unlink_child_noperm(BlockChild *c)
{
    GS_CODE();
    BlockNode *child = c->node;
    if (!graph_wrlock_held() || child->refcnt < 2) {
        /* the caller keeps the child alive: it cannot be closed here */
        abort();
    }
    assert_may_change_edges_of(c->parent_node);
    edge_unlink(c);
    edge_free(c);
    child->refcnt--;
}

void bdrv_move_parent_noperm(BlockChild *c, BlockNode *to)
{
    GS_CODE();
    BlockNode *from = c->node;
    if (!graph_wrlock_held() || !node_quiesced(from) || !node_quiesced(to)) {
        fprintf(stderr, "diskstack: moving parents needs the graph write lock "
                "and both nodes quiesced\n");
        abort();
    }
    unlink_parent(from, c);
    link_parent(to, c);
    /* both are quiesced, so the parent never leaves its section (unless to
     * is a barrier held only from below: then it is not in any of them) */
    sync_parent_quiesce(c, bdrv_parent_sections(to));
    to->refcnt++;
    if (--from->refcnt < 1) {
        abort();        /* the caller keeps from alive */
    }
}

/* A parent that is not moved when its node is replaced: a block job's
 * backend keeps working on the node it was started on (QEMU's
 * stay_at_node), e.g. a stream into a node that a snapshot just put under
 * an overlay. */
static bool stays_at_node(BlockChild *c) GS
{
    return c->klass && c->klass->stay_at_node && c->klass->stay_at_node(c);
}

void bdrv_move_parents_noperm(BlockNode *from, BlockNode *to)
{
    GS_CODE();
    BlockChild *c = from->parents;
    while (c) {
        BlockChild *next = c->next_parent;
        if (!stays_at_node(c)) {
            bdrv_move_parent_noperm(c, to);
        }
        c = next;
    }
}

/* ---- references and closing ---- */

void bdrv_ref(BlockNode *bs)
{
    GS_CODE();
    bs->refcnt++;
}

static BlockChild *first_child(BlockNode *bs) GS
{
    bdrv_graph_rdlock_main_loop();
    BlockChild *c = bs->children;
    bdrv_graph_rdunlock_main_loop();
    return c;
}

static void coroutine_fn detach_all_children(BlockNode *bs) GS
{
    BlockChild *c;
    while ((c = first_child(bs))) {
        bdrv_co_detach_child(c);
    }
}

static void node_free(BlockNode *bs) GS
{
    NodeState *ns = node_state(bs);
    named_remove(bs);
    json_decref(bs->options);
    free(bs->opaque);
    pthread_mutex_destroy(&ns->req_lock);
    free(ns);
}

void coroutine_fn bdrv_co_unref(BlockNode *bs)
{
    GS_CODE();
    if (!bs || --bs->refcnt > 0) {
        return;
    }
    bdrv_co_drain_node(bs);
    if (bs->drv->close) {
        bs->drv->close(bs);
    }
    detach_all_children(bs);
    node_free(bs);
}

void bdrv_monitor_release(BlockNode *bs)
{
    GS_CODE();
    if (!node_state(bs)->monitor_owned || bs->refcnt < 2) {
        abort();
    }
    node_state(bs)->monitor_owned = false;
    bs->refcnt--;
}

int coroutine_fn bdrv_co_blockdev_del(const char *node_name, Error **errp)
{
    GS_CODE();
    BlockNode *bs = bdrv_find_node(node_name);
    if (!bs) {
        error_setg(errp, "Failed to find node with node-name='%s'", node_name);
        return -ENOENT;
    }
    if (!node_state(bs)->monitor_owned) {
        error_setg(errp, "Node '%s' is not owned by the monitor", node_name);
        return -EPERM;
    }
    bdrv_graph_rdlock_main_loop();
    BlockChild *user = bs->parents;
    if (user) {
        error_setg(errp, "Node '%s' is in use by %s", node_name,
                   bdrv_child_user_name(user));
    }
    bdrv_graph_rdunlock_main_loop();
    if (user) {
        return -EBUSY;
    }
    if (bs->refcnt > 1) {
        error_setg(errp, "Node '%s' is in use", node_name);
        return -EBUSY;
    }
    node_state(bs)->monitor_owned = false;
    bdrv_co_unref(bs);
    return 0;
}

static BlockNode *next_closable(void) GS
{
    bdrv_graph_rdlock_main_loop();
    BlockNode *found = NULL;
    for (BlockNode *bs = named_nodes; bs && !found; bs = bs->next_named) {
        if (node_state(bs)->monitor_owned && !bs->parents) {
            found = bs;
        }
    }
    bdrv_graph_rdunlock_main_loop();
    return found;
}

void coroutine_fn bdrv_co_close_all(void)
{
    GS_CODE();
    bdrv_graph_rdlock_main_loop();
    for (BlockNode *bs = named_nodes; bs; bs = bs->next_named) {
        int ret = bdrv_co_flush(bs);
        if (ret < 0) {
            error_report("Failed to flush node '%s': %s", bs->node_name,
                         strerror(-ret));
        }
    }
    bdrv_graph_rdunlock_main_loop();
    /* Parents before children: a node without parents goes first, and
     * closing it releases its children. */
    BlockNode *bs;
    while ((bs = next_closable())) {
        node_state(bs)->monitor_owned = false;
        bdrv_co_unref(bs);
    }
}

/* ---- opening ---- */

void bdrv_refresh_limits_node(BlockNode *bs)
{
    GS_CODE();
    BlockChild *c = bs->file ? bs->file : bs->children;
    if (c) {
        bs->bl = c->node->bl;
    }
    if (!bs->bl.request_alignment) {
        bs->bl.request_alignment = 1;
    }
    if (bs->drv->refresh_limits) {
        bs->drv->refresh_limits(bs);
    }
}

void node_apply_io_options(NodeState *ns, json_t *opts)
{
    const char *dz = opt_str(opts, "detect-zeroes", "off");

    ns->no_flush = opt_bool(opts, "cache.no-flush", false);
    /* QEMU's default is discard=ignore: a discard does nothing and a
     * write-zeroes never deallocates */
    ns->discard_unmap = !strcmp(opt_str(opts, "discard", "ignore"), "unmap");
    ns->detect_zeroes = !strcmp(dz, "unmap") ? DETECT_ZEROES_UNMAP :
                        !strcmp(dz, "on") ? DETECT_ZEROES_ON : DETECT_ZEROES_OFF;
}

static NodeState *node_new(const BlockDriver *drv, json_t *opts, const char *name)
{
    NodeState *ns = calloc(1, sizeof(*ns));
    if (!ns) {
        abort();
    }
    BlockNode *bs = &ns->bs;
    snprintf(bs->node_name, sizeof(bs->node_name), "%s", name);
    bs->drv = drv;
    bs->options = opts;
    bs->opaque = drv->instance_size ? calloc(1, drv->instance_size) : NULL;
    bs->read_only = opt_bool(opts, "read-only", false);
    snprintf(bs->filename, sizeof(bs->filename), "%s", opt_str(opts, "filename", ""));
    bs->refcnt = 1;
    bs->bl.request_alignment = 1;
    bs->open_perm = 0;
    bs->open_shared = BLK_PERM_ALL;
    ns->force_share = opt_bool(opts, "force-share", false);
    node_apply_io_options(ns, opts);
    pthread_mutex_init(&ns->req_lock, NULL);
    co_mutex_init(&ns->truncate_lock);
    return ns;
}

static int coroutine_fn driver_open(BlockNode *bs, Error **errp) GS
{
    if (!bs->drv->open) {
        return 0;
    }
    Error *err = NULL;
    int ret = bs->drv->open(bs, bs->options, &err);
    if (ret < 0 && !err) {
        error_setg(&err, "Could not open node '%s' (driver '%s')",
                   bs->node_name, bs->drv->format_name);
    }
    error_propagate(errp, err);
    return ret;
}

/*
 * How deep definitions may nest (a node's "file" or "backing" given as an
 * object, or built by a format from its metadata: a qcow2 backing chain is
 * one level per image).  Opening recurses on a 256 KiB coroutine stack,
 * which an image whose backing file names itself would otherwise overflow
 * (measured: the ASan build overflows at about 290 levels, the plain debug
 * build at about 500).
 */
#define MAX_OPEN_DEPTH 200

static int coroutine_fn open_finish(BlockNode *bs, Error **errp) GS;

static BlockNode *coroutine_fn open_node(json_t *def, bool monitor_owned,
                                         int depth, BlockNode *parent,
                                         Error **errp) GS
{
    if (!json_is_object(def)) {
        error_setg(errp, "Invalid parameter type, expected: object");
        return NULL;
    }
    if (blockdev_def_check(def, false, errp) < 0) {
        return NULL;
    }
    json_t *opts = json_deep_copy(def);
    const BlockDriver *drv = driver_lookup(opt_str(opts, "driver", NULL));
    char name[128];
    if (choose_node_name(opts, name, sizeof(name), errp) < 0) {
        json_decref(opts);
        return NULL;
    }
    if (!strcmp(opt_str(opts, "detect-zeroes", "off"), "unmap") &&
        strcmp(opt_str(opts, "discard", "ignore"), "unmap")) {
        error_setg(errp, "setting detect-zeroes to unmap is not allowed without "
                   "setting discard operation to unmap");
        json_decref(opts);
        return NULL;
    }
    if (opt_bool(opts, "force-share", false) && !opt_bool(opts, "read-only", false)) {
        error_setg(errp, "force-share=on can only be used with read-only images");
        json_decref(opts);
        return NULL;
    }
    NodeState *ns = node_new(drv, opts, name);
    BlockNode *bs = &ns->bs;
    ns->monitor_owned = monitor_owned;
    ns->open_depth = depth;
    ns->opening_parent = parent;
    named_add(bs);
    return open_finish(bs, errp) < 0 ? NULL : bs;
}

/* GS: the driver's open, limits and perms of a new named node; on error
 * the node is gone. */
static int coroutine_fn open_finish(BlockNode *bs, Error **errp) GS
{
    int ret = driver_open(bs, errp);
    node_state(bs)->opening_parent = NULL;
    if (ret < 0) {
        detach_all_children(bs);
        node_free(bs);
        return ret;
    }
    bdrv_graph_rdlock_main_loop();
    bdrv_refresh_limits_node(bs);
    bdrv_graph_rdunlock_main_loop();
    if (bdrv_refresh_perms(bs, errp) < 0) {
        if (bs->drv->close) {
            bs->drv->close(bs);
        }
        detach_all_children(bs);
        node_free(bs);
        return -EPERM;
    }
    return 0;
}

BlockNode *coroutine_fn bdrv_co_open_internal(const BlockDriver *drv,
                                              const char *node_name,
                                              Error **errp)
{
    GS_CODE();
    json_t *opts = json_object();
    char name[128];

    if (node_name) {
        json_object_set_new(opts, "node-name", json_string(node_name));
    }
    if (choose_node_name(opts, name, sizeof(name), errp) < 0) {
        json_decref(opts);
        return NULL;
    }
    NodeState *ns = node_new(drv, opts, name);
    named_add(&ns->bs);
    return open_finish(&ns->bs, errp) < 0 ? NULL : &ns->bs;
}

BlockNode *coroutine_fn bdrv_co_open_blockdev(json_t *def, Error **errp)
{
    GS_CODE();
    return open_node(def, true, 0, NULL, errp);
}

BlockNode *bdrv_opening_parent(BlockNode *bs)
{
    GS_CODE();
    return node_state(bs)->opening_parent;
}

static BlockChild *coroutine_fn open_nested_child(BlockNode *parent,
                                                  json_t *parent_opts,
                                                  json_t *def, const char *key,
                                                  BdrvChildRole role,
                                                  Error **errp) GS
{
    int depth = node_state(parent)->open_depth + 1;
    if (depth > MAX_OPEN_DEPTH) {
        error_setg(errp, "definitions nested more than %d levels deep (a "
                   "backing chain that long, or one that loops back on "
                   "itself)", MAX_OPEN_DEPTH);
        return NULL;
    }
    json_t *copy = json_deep_copy(def);
    opts_inherit(copy, parent_opts);
    BlockNode *child = open_node(copy, false, depth, parent, errp);
    json_decref(copy);
    if (!child) {
        return NULL;
    }
    BlockChild *c = bdrv_attach_child(parent, child, key, role, errp);
    /* The edge holds the node now (or nothing does, and it closes). */
    bdrv_co_unref(child);
    return c;
}

BlockChild *coroutine_fn bdrv_co_open_child(BlockNode *parent, json_t *options,
                                            const char *key, BdrvChildRole role,
                                            bool allow_none, Error **errp)
{
    GS_CODE();
    json_t *v = json_object_get(options, key);
    BlockChild *c = NULL;
    Error *err = NULL;
    if (!v || json_is_null(v)) {
        if (!allow_none) {
            error_setg(errp, "Node '%s': a block device must be specified "
                       "for '%s'", parent->node_name, key);
        }
        return NULL;
    }
    if (json_is_string(v)) {
        BlockNode *child = bdrv_find_node(json_string_value(v));
        if (!child) {
            error_setg(errp, "Node '%s', child '%s': Cannot find node-name='%s'",
                       parent->node_name, key, json_string_value(v));
            return NULL;
        }
        c = bdrv_attach_child(parent, child, key, role, &err);
    } else if (json_is_object(v)) {
        c = open_nested_child(parent, options, v, key, role, &err);
    } else {
        error_setg(&err, "Invalid parameter type for '%s', expected: string "
                   "or object", key);
    }
    if (!c) {
        error_prepend(&err, "Node '%s', child '%s': ", parent->node_name, key);
        error_propagate(errp, err);
    }
    return c;
}
