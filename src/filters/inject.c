/*
 * inject.c — the `inject` filter driver: fault injection for tests and
 * for users who want to see what their stack does when the disk fails.
 *
 *   blockdev-add driver=inject node-name=N file=CHILD rules=[RULE...]
 *   --blockdev driver=inject,node-name=N,file=CHILD,rules-file=PATH[,seed=S]
 *
 * Every request passes through the rule list (inject-rules.c); the first
 * live matching rule acts: fail with an errno (after an optional delay),
 * delay then pass on, or — crash tests only — report a write done without
 * sending it ("unsafe-drop-write").  Everything else passes through:
 * truncate, limits (the core copies the child's), write and zero flags,
 * permissions (the core's default for a FILTERED child).  Named event
 * points raised by a format above (co_debug_event) arm "event" rules for
 * the raising coroutine.  The rules change live over QMP (cmd-inject.c).
 *
 * Thread-safety: the rule list is an immutable refcounted snapshot; `lock`
 * guards only the pointer.  A request takes a reference under the lock,
 * matches and acts without it (never holding it across a sleep or a call
 * below) and drops the reference after; a QMP change builds the new list
 * first and swaps it under the lock, so a request in flight keeps the
 * rules it started with.  Counters and other run-time rule state are the
 * rules' own (atomics, a per-rule arm lock).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "filters/filter-util.h"
#include "filters/inject.h"

typedef struct InjectState {
    pthread_mutex_t lock;       /* guards rules (the pointer) */
    InjectRuleList *rules;      /* written GS under lock; read under lock */
    int next_id;                /* GS: the N of the next default id "r<N>" */
    bool has_seed;              /* GS, set at open: the node's "seed" */
    int64_t seed;
} InjectState;

extern const BlockDriver bdrv_inject;

static const BlockOptionDesc inject_options[] = {
    { "file", OPT_CHILD, true, NULL, "the node faults are injected into" },
    { "rules", OPT_JSON, false, NULL,
      "array of rule objects (JSON syntax only; see diskstack-inject(7))" },
    { "rules-file", OPT_STRING, false, NULL,
      "a file holding a JSON array of rule objects" },
    { "seed", OPT_INT, false, NULL,
      "seeds the random draws of every rule without its own seed" },
    { NULL },
};

static int64_t now_ns(void)
{
    return inject_default_env.now_ns(inject_default_env.opaque);
}

/* GS: what a new rule without "seed" derives its seed from (NULL: none). */
static const int64_t *node_seed(InjectState *s) GS
{
    GS_CODE();
    return s->has_seed ? &s->seed : NULL;
}

/* Thread-safe: the current snapshot, referenced. */
static InjectRuleList *rules_get(InjectState *s)
{
    InjectRuleList *l;

    pthread_mutex_lock(&s->lock);
    l = inject_list_ref(s->rules);
    pthread_mutex_unlock(&s->lock);
    return l;
}

/* GS: installs l (consumed) and drops the old snapshot. */
static void rules_swap(InjectState *s, InjectRuleList *l) GS
{
    InjectRuleList *old;

    GS_CODE();
    pthread_mutex_lock(&s->lock);
    old = s->rules;
    s->rules = l;
    pthread_mutex_unlock(&s->lock);
    inject_list_unref(old);
}

/* ------------------------------------------------------------ open/close */

/* GS: the rules of rules-file appended to *l; errors name the file. */
static int load_rules_file(InjectState *s, const char *path, InjectRuleList **l,
                           Error **errp) GS
{
    json_error_t jerr;
    json_t *arr = json_load_file(path, 0, &jerr);
    InjectRuleList *nl;

    GS_CODE();
    if (!arr) {
        error_setg(errp, "rules-file '%s': %s (line %d)", path, jerr.text,
                   jerr.line);
        return -EINVAL;
    }
    nl = inject_rules_parse(*l, arr, &s->next_id, now_ns(), node_seed(s),
                            errp);
    json_decref(arr);
    if (!nl) {
        error_prepend(errp, "rules-file '%s': ", path);
        return -EINVAL;
    }
    inject_list_unref(*l);
    *l = nl;
    return 0;
}

/* GS: the rules a definition gives ("rules", then "rules-file"). */
static InjectRuleList *initial_rules(InjectState *s, json_t *options,
                                     Error **errp) GS
{
    json_t *arr = json_object_get(options, "rules");
    const char *path = opt_str(options, "rules-file", NULL);
    json_t *empty = json_array();
    InjectRuleList *l;

    GS_CODE();
    s->has_seed = json_object_get(options, "seed") != NULL;
    s->seed = opt_int(options, "seed", 0);
    l = inject_rules_parse(NULL, arr ? arr : empty, &s->next_id, now_ns(),
                           node_seed(s), errp);
    json_decref(empty);
    if (l && path && load_rules_file(s, path, &l, errp) < 0) {
        inject_list_unref(l);
        return NULL;
    }
    return l;
}

/*
 * open — lock: GS, in a coroutine on the main loop; in flight: none (not
 * reachable yet); threads: main only.  The rules are checked before the
 * child is opened, so a bad rule opens nothing.
 */
static int coroutine_fn inject_open(BlockNode *bs, json_t *options,
                                    Error **errp) GS
{
    GS_CODE();
    InjectState *s = bs->opaque;
    InjectRuleList *l = initial_rules(s, options, errp);

    if (!l) {
        return -EINVAL;
    }
    if (!bdrv_co_open_child(bs, options, "file",
                            BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, false, errp)) {
        inject_list_unref(l);
        return -EINVAL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->rules = l;
    filter_inherit_from_child(bs);
    return 0;
}

/*
 * close — lock: GS; in flight: none (drained: delayed requests have
 * finished); threads: main only.  The core detaches the child.
 */
static void coroutine_fn inject_close(BlockNode *bs) GS
{
    GS_CODE();
    InjectState *s = bs->opaque;

    inject_list_unref(s->rules);
    s->rules = NULL;
    pthread_mutex_destroy(&s->lock);
}

/* ------------------------------------------------------------ the policy */

/*
 * I/O: what the rules do to one request.  Returns 1 when the request goes
 * on to the child, else its result (0 for a dropped write, -errno for a
 * failure).  Sleeps (co_sleep_ns: the thread serves others meanwhile)
 * for a delay; the request stays counted in flight by io.c.
 */
static int coroutine_fn apply_rules(BlockNode *bs, InjectOp op, int64_t offset,
                                    int64_t bytes) GRAPH_RDLOCK
{
    IO_CODE();
    InjectRuleList *l = rules_get(bs->opaque);
    InjectReq req = { op, offset, bytes, co_self() };
    InjectRule *r = l->n ? inject_match(l, &req, &inject_default_env) : NULL;
    int64_t delay = r ? inject_delay_ns(r, &inject_default_env) : 0;
    int ret = 1;

    if (r && r->action == INJ_ACT_FAIL) {
        ret = -r->err;
    } else if (r && r->action == INJ_ACT_DROP_WRITE) {
        ret = 0;
    }
    inject_list_unref(l);           /* r is not used past this point */
    if (delay > 0) {
        co_sleep_ns(delay);
    }
    return ret;
}

/*
 * co_preadv, co_pwritev, co_pwrite_zeroes, co_pdiscard, co_flush,
 * co_block_status — lock: graph read lock (I/O); in flight: yes, any
 * number; threads: yes (see the header comment).  The rules, then the
 * child.  Flush: io.c flushes the child itself after us.
 */
static int coroutine_fn inject_co_preadv(BlockNode *bs, int64_t offset,
                                         int64_t bytes, IOVector *qiov,
                                         size_t qiov_offset,
                                         BdrvRequestFlags flags) GRAPH_RDLOCK
{
    int ret = apply_rules(bs, INJ_OP_READ, offset, bytes);

    return ret <= 0 ? ret : bdrv_co_preadv(bs->file, offset, bytes, qiov,
                                           qiov_offset, flags);
}

static int coroutine_fn inject_co_pwritev(BlockNode *bs, int64_t offset,
                                          int64_t bytes, IOVector *qiov,
                                          size_t qiov_offset,
                                          BdrvRequestFlags flags) GRAPH_RDLOCK
{
    int ret = apply_rules(bs, INJ_OP_WRITE, offset, bytes);

    return ret <= 0 ? ret : bdrv_co_pwritev(bs->file, offset, bytes, qiov,
                                            qiov_offset, flags);
}

static int coroutine_fn inject_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                                int64_t bytes,
                                                BdrvRequestFlags flags)
    GRAPH_RDLOCK
{
    int ret = apply_rules(bs, INJ_OP_ZEROES, offset, bytes);

    return ret <= 0 ? ret : bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn inject_co_pdiscard(BlockNode *bs, int64_t offset,
                                           int64_t bytes) GRAPH_RDLOCK
{
    int ret = apply_rules(bs, INJ_OP_DISCARD, offset, bytes);

    return ret <= 0 ? ret : bdrv_co_pdiscard(bs->file, offset, bytes);
}

static int coroutine_fn inject_co_flush(BlockNode *bs) GRAPH_RDLOCK
{
    int ret = apply_rules(bs, INJ_OP_FLUSH, 0, 0);

    return ret <= 0 ? ret : 0;
}

static int coroutine_fn inject_co_block_status(BlockNode *bs, int64_t offset,
                                               int64_t bytes, int64_t *pnum,
                                               int64_t *map, BlockNode **file)
    GRAPH_RDLOCK
{
    int ret = apply_rules(bs, INJ_OP_BLOCK_STATUS, offset, bytes);

    if (ret < 0) {
        return ret;               /* (no rule drops a status query) */
    }
    return filter_co_block_status(bs, offset, bytes, pnum, map, file);
}

/*
 * co_truncate — lock: graph read lock; in flight: yes; threads: one resize
 * per node at a time (io.c serialises).  Passes through.
 */
static int coroutine_fn inject_co_truncate(BlockNode *bs, int64_t offset,
                                           bool exact, Error **errp) GRAPH_RDLOCK
{
    return filter_co_truncate(bs, offset, exact, errp);
}

/*
 * co_debug_event — lock: graph read lock (I/O); in flight: yes; threads:
 * any, at once.  Arms the rules waiting for ev for the calling coroutine.
 */
static void coroutine_fn inject_co_debug_event(BlockNode *bs, BlkDebugEvent ev)
    GRAPH_RDLOCK
{
    IO_CODE();
    InjectRuleList *l = rules_get(bs->opaque);

    inject_arm(l, ev, co_self());
    inject_list_unref(l);
}

/* ------------------------------------------------------------ QMP side */

bool inject_is_node(BlockNode *bs) GS
{
    GS_CODE();
    return bs && bs->drv == &bdrv_inject;
}

int inject_node_set(BlockNode *bs, json_t *rules, bool replace, Error **errp) GS
{
    GS_CODE();
    InjectState *s = bs->opaque;
    InjectRuleList *l = inject_rules_parse(replace ? NULL : s->rules, rules,
                                           &s->next_id, now_ns(), node_seed(s),
                                           errp);

    if (!l) {
        return -EINVAL;
    }
    rules_swap(s, l);
    return 0;
}

int inject_node_clear(BlockNode *bs, const char *id, Error **errp) GS
{
    GS_CODE();
    InjectState *s = bs->opaque;
    InjectRuleList *l = inject_rules_without(s->rules, id, errp);

    if (!l) {
        return -EINVAL;
    }
    rules_swap(s, l);
    return 0;
}

json_t *inject_node_query(BlockNode *bs) GS
{
    GS_CODE();
    InjectState *s = bs->opaque;

    return inject_rules_to_json(s->rules);
}

const BlockDriver bdrv_inject = {
    .format_name = "inject",
    .instance_size = sizeof(InjectState),
    .is_filter = true,
    .options = inject_options,

    .open = inject_open,
    .close = inject_close,

    .co_preadv = inject_co_preadv,
    .co_pwritev = inject_co_pwritev,
    .co_pwrite_zeroes = inject_co_pwrite_zeroes,
    .co_pdiscard = inject_co_pdiscard,
    .co_flush = inject_co_flush,
    .co_block_status = inject_co_block_status,
    .co_truncate = inject_co_truncate,
    .co_debug_event = inject_co_debug_event,
};
