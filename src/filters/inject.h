/*
 * inject.h — the rules of the `inject` fault-injection filter: parsing
 * (JSON RULE objects, see diskstack-inject(7); inject-parse.c), matching a
 * request against an ordered list (inject-rules.c), and the node-level
 * entry points the QMP commands use (inject.c).
 *
 * A rule is immutable once parsed except for its counters and run-time
 * state (spent, trigger-file cache, armed coroutines), which are atomic or
 * under the rule's own small mutex.  A rule list is an immutable,
 * refcounted snapshot of rule pointers; a node swaps whole snapshots under
 * its mutex (inject.c), so a request matches against the snapshot it took
 * and a live change never frees a rule under it.  Rules shared by two
 * snapshots (append, clear of another rule) keep their counters.
 *
 * Threading: inject_rule_parse/inject_rules_parse and the list functions
 * are pure or thread-safe; inject_match is I/O code callable from any
 * thread at once (it takes only per-rule locks, briefly, never across a
 * sleep or a call below).
 */
#ifndef DISKSTACK_INJECT_H
#define DISKSTACK_INJECT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>
#include "block-common.h"

/* The request kinds a rule can select (bit per kind). */
typedef enum InjectOp {
    INJ_OP_READ         = 1 << 0,
    INJ_OP_WRITE        = 1 << 1,
    INJ_OP_ZEROES       = 1 << 2,
    INJ_OP_DISCARD      = 1 << 3,
    INJ_OP_FLUSH        = 1 << 4,
    INJ_OP_BLOCK_STATUS = 1 << 5,
    INJ_OP_ALL          = (1 << 6) - 1,
    INJ_OP_WRITES       = INJ_OP_WRITE | INJ_OP_ZEROES | INJ_OP_DISCARD,
} InjectOp;

typedef enum InjectAction {
    INJ_ACT_FAIL,
    INJ_ACT_DELAY,
    INJ_ACT_DROP_WRITE,         /* "unsafe-drop-write": crash tests only */
} InjectAction;

/* How many coroutines one rule can have armed at once; a further arm
 * replaces the oldest. */
#define INJECT_MAX_ARMED 16

typedef struct InjectRule {
    _Atomic int refcnt;
    /* --- immutable after parsing --- */
    char *id;
    unsigned ops;               /* InjectOp bits */
    bool has_range;
    int64_t offset, length;     /* length < 0: to the end */
    int event;                  /* BlkDebugEvent, -1: none */
    double probability;
    int64_t after;
    bool once;
    char *trigger_file;         /* NULL: none */
    int64_t up_ms, down_ms;     /* phases when has_phases */
    bool has_phases;
    int64_t set_ns;             /* the phases' origin (when the rule was set) */
    InjectAction action;
    int err;                    /* positive errno for fail */
    int64_t delay_ms, delay_max_ms;   /* delay_max_ms < delay_ms: fixed */
    int64_t seed;               /* the generator's seed (as the JSON shows it) */
    /* --- run-time state --- */
    _Atomic uint64_t rng;               /* splitmix64 state, starts at seed */
    _Atomic int64_t matched, fired;
    _Atomic bool spent;                 /* once: has fired */
    _Atomic int64_t trigger_checked_ns; /* last stat (0: never) */
    _Atomic bool trigger_exists;        /* its answer */
    pthread_mutex_t arm_lock;           /* guards armed[] */
    void *armed[INJECT_MAX_ARMED];      /* coroutines armed by the event */
    int next_arm;                       /* round-robin slot for a new arm */
} InjectRule;

/* An immutable ordered list of rules (refcounted snapshot). */
typedef struct InjectRuleList {
    _Atomic int refcnt;
    int n;
    InjectRule **rules;
} InjectRuleList;

/* One request as the matcher sees it. */
typedef struct InjectReq {
    InjectOp op;
    int64_t offset, bytes;      /* flush: bytes == 0, no range */
    void *co;                   /* the requesting coroutine (event arms) */
} InjectReq;

/* What the matcher needs from the world, so tests can drive it: the
 * clock (nanoseconds, monotonic) and a uniform random number in [0, 1).
 * rand01 NULL: each rule draws from its own seeded generator
 * (inject_rule_rand01), so a run with the same seeds repeats. */
typedef struct InjectEnv {
    int64_t (*now_ns)(void *opaque);
    double (*rand01)(void *opaque);
    void *opaque;
} InjectEnv;

/* The real clock and the rules' own generators. */
extern const InjectEnv inject_default_env;

/*
 * The next number in [0, 1) of r's generator: splitmix64 on an atomic
 * state, so draws from any number of threads at once each take one step
 * and the n-th draw of a rule seeded s is always the same number.
 * Thread-safe.
 */
double inject_rule_rand01(InjectRule *r);
/* Seeds r's generator (r->id set): with *seed, else from *node_seed and
 * the id, else from the clock and a counter (both pointers may be NULL).
 * Called by the parser; pure but for that counter. */
void inject_rule_seed(InjectRule *r, const int64_t *seed,
                      const int64_t *node_seed);

/*
 * Parses one RULE object (index: its place in the caller's array, for
 * messages "rules[2].errno: ...").  default_id is used when it has no
 * "id".  set_ns is the phases' origin.  A rule without "seed" takes one
 * derived from *node_seed and its id (the same node seed gives a rule of
 * the same id the same draws), or, node_seed NULL, an unpredictable one
 * (the query shows it).  NULL with *errp naming the field.
 */
InjectRule *inject_rule_parse(json_t *obj, int index, const char *default_id,
                              int64_t set_ns, const int64_t *node_seed,
                              Error **errp);
/* Frees a rule whose last reference is gone (for the lists). */
void inject_rule_free(InjectRule *r);
/*
 * Parses an array of RULE objects and appends them to base (NULL: empty),
 * returning a new list (base is not changed).  Ids default to "r<N>" with
 * N counting from *next_id (advanced); an id already in the result is an
 * error.  node_seed as for inject_rule_parse.  NULL with *errp on any
 * bad rule: all or nothing.
 */
InjectRuleList *inject_rules_parse(const InjectRuleList *base, json_t *arr,
                                   int *next_id, int64_t set_ns,
                                   const int64_t *node_seed, Error **errp);
/* The list without the rule called id (NULL id: an empty list); NULL with
 * *errp when there is no such rule. */
InjectRuleList *inject_rules_without(const InjectRuleList *l, const char *id,
                                     Error **errp);
InjectRuleList *inject_list_ref(InjectRuleList *l);
void inject_list_unref(InjectRuleList *l);
/* The rules for x-diskstack-inject-query: each RULE normalised, with
 * "matched" and "fired". */
json_t *inject_rules_to_json(const InjectRuleList *l);
json_t *inject_rule_to_json(const InjectRule *r);

/*
 * The first live rule of l that matches req and decides to act, or NULL.
 * Counts "matched" on every rule whose filters pass and "fired" on the one
 * returned.  Thread-safe.
 */
InjectRule *inject_match(const InjectRuleList *l, const InjectReq *req,
                         const InjectEnv *env);
/* A named event point was raised by coroutine co: arms co on every rule of
 * l waiting for ev.  Thread-safe. */
void inject_arm(const InjectRuleList *l, BlkDebugEvent ev, void *co);
/* The delay of a rule's action, in ns (random in [delay, delay-max]). */
int64_t inject_delay_ns(InjectRule *r, const InjectEnv *env);

/* Names: "read", ... for one op bit; "EIO", ... for an errno (NULL if it
 * has no name here). */
const char *inject_op_name(InjectOp op);
const char *inject_errno_name(int err);

/* ---- node level (inject.c), for the QMP commands: GS ---- */

/* True if bs is an inject node. */
bool inject_is_node(BlockNode *bs) GS;
/* Replace (or append to) the node's rules; all or nothing. */
int inject_node_set(BlockNode *bs, json_t *rules, bool replace, Error **errp) GS;
/* Remove one rule by id, or all (id NULL). */
int inject_node_clear(BlockNode *bs, const char *id, Error **errp) GS;
/* The node's rules with their counters (new reference). */
json_t *inject_node_query(BlockNode *bs) GS;

#endif
