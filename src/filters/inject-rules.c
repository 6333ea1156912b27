/*
 * inject-rules.c — the rules of the `inject` filter: lists, matching,
 * counters (inject-parse.c turns JSON into rules and back).  The driver (inject.c) holds a list and asks inject_match()
 * which rule, if any, acts on each request.
 *
 * Matching, for each rule in order until one acts:
 *   1. filters: not spent (once), the op is selected, the range overlaps
 *      (a rule with a range never matches flush, which has none), and for
 *      an "event" rule the requesting coroutine is armed — consuming the
 *      arm;
 *   2. liveness: the trigger file exists (a stat at most every 10 ms per
 *      rule, the answer cached) and the up/down cycle is in its down
 *      ("live") part;
 *   3. "matched" counts the request; the first `after` ones are let by;
 *      then the probability draw; then, for a once rule, whoever turns
 *      `spent` from false to true; the rule "fires" and acts.
 * A rule that matched but did not act lets the next rules look.
 *
 * Why counters and `spent` are atomics and the arms a mutex: the same rule
 * is matched by every IOThread at once, and the list is an immutable
 * snapshot (inject.h) — only this per-rule state changes under requests.
 *
 * Threading: list building is pure; matching and arming are thread-safe.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "filters/inject.h"

#define TRIGGER_RECHECK_NS (10 * 1000000LL)
#define NS_PER_MS 1000000LL

/* ------------------------------------------------------------ the world */

static int64_t real_now_ns(void *opaque)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * The rules' generators.  splitmix64 (Steele, Lea and Flood, "Fast
 * splittable pseudorandom number generators", 2014): the state advances by
 * a fixed odd constant and each output is a mix of the new state, so one
 * atomic fetch-add is a complete, thread-safe step — no lock, no retry —
 * and the n-th draw depends only on the seed and n.  That is what makes a
 * run repeatable: with the same seeds and the same requests in the same
 * order, the same requests fail.  (Requests racing on several IOThreads
 * take the draws in whatever order they arrive.)
 */
#define SPLITMIX_GAMMA 0x9e3779b97f4a7c15ULL

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double inject_rule_rand01(InjectRule *r)
{
    uint64_t z = atomic_fetch_add(&r->rng, SPLITMIX_GAMMA) + SPLITMIX_GAMMA;

    return (double)(mix64(z) >> 11) * 0x1.0p-53;
}

/* FNV-1a: a rule's id as a number, to tell rules of one node seed apart. */
static uint64_t id_hash(const char *id)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (; *id; id++) {
        h = (h ^ (unsigned char)*id) * 0x100000001b3ULL;
    }
    return h;
}

void inject_rule_seed(InjectRule *r, const int64_t *seed,
                      const int64_t *node_seed)
{
    static _Atomic uint64_t unseeded;

    if (seed) {
        r->seed = *seed;
    } else if (node_seed) {
        r->seed = (int64_t)mix64((uint64_t)*node_seed ^ mix64(id_hash(r->id)));
    } else {
        r->seed = (int64_t)mix64((uint64_t)real_now_ns(NULL) ^
                                 mix64(atomic_fetch_add(&unseeded, 1)));
    }
    atomic_store(&r->rng, (uint64_t)r->seed);
}

/* A draw for rule r: the test's world, or the rule's own generator. */
static double draw(InjectRule *r, const InjectEnv *env)
{
    return env->rand01 ? env->rand01(env->opaque) : inject_rule_rand01(r);
}

const InjectEnv inject_default_env = { real_now_ns, NULL, NULL };

/* ------------------------------------------------------------ lists */

static InjectRuleList *list_new(int cap)
{
    InjectRuleList *l = calloc(1, sizeof(*l));

    if (!l || !(l->rules = calloc(cap ? cap : 1, sizeof(*l->rules)))) {
        abort();
    }
    l->refcnt = 1;
    return l;
}

static void list_add(InjectRuleList *l, InjectRule *r)
{
    l->rules[l->n++] = r;
}

static InjectRule *rule_ref(InjectRule *r)
{
    atomic_fetch_add(&r->refcnt, 1);
    return r;
}

static void rule_unref(InjectRule *r)
{
    if (atomic_fetch_sub(&r->refcnt, 1) == 1) {
        inject_rule_free(r);
    }
}

InjectRuleList *inject_list_ref(InjectRuleList *l)
{
    atomic_fetch_add(&l->refcnt, 1);
    return l;
}

void inject_list_unref(InjectRuleList *l)
{
    if (!l || atomic_fetch_sub(&l->refcnt, 1) != 1) {
        return;
    }
    for (int i = 0; i < l->n; i++) {
        rule_unref(l->rules[i]);
    }
    free(l->rules);
    free(l);
}

static bool list_has_id(const InjectRuleList *l, const char *id)
{
    for (int i = 0; i < l->n; i++) {
        if (!strcmp(l->rules[i]->id, id)) {
            return true;
        }
    }
    return false;
}

/* A default id "r<N>" not taken in l. */
static void next_default_id(const InjectRuleList *l, int *next_id, char *buf,
                            size_t len)
{
    do {
        snprintf(buf, len, "r%d", (*next_id)++);
    } while (list_has_id(l, buf));
}

InjectRuleList *inject_rules_parse(const InjectRuleList *base, json_t *arr,
                                   int *next_id, int64_t set_ns,
                                   const int64_t *node_seed, Error **errp)
{
    int nbase = base ? base->n : 0, saved_id = *next_id;
    InjectRuleList *l;
    json_t *v;
    size_t i;

    if (!json_is_array(arr)) {
        error_setg(errp, "rules: expected an array of rule objects");
        return NULL;
    }
    l = list_new(nbase + (int)json_array_size(arr));
    for (int k = 0; k < nbase; k++) {
        list_add(l, rule_ref(base->rules[k]));
    }
    json_array_foreach(arr, i, v) {
        char def_id[32];
        InjectRule *r;

        next_default_id(l, next_id, def_id, sizeof(def_id));
        r = inject_rule_parse(v, (int)i, def_id, set_ns, node_seed, errp);
        if (r && list_has_id(l, r->id)) {
            error_setg(errp, "rules[%d].id: '%s' is already used", (int)i, r->id);
            rule_unref(r);
            r = NULL;
        }
        if (!r) {
            *next_id = saved_id;
            inject_list_unref(l);
            return NULL;
        }
        list_add(l, r);
    }
    return l;
}

InjectRuleList *inject_rules_without(const InjectRuleList *l, const char *id,
                                     Error **errp)
{
    InjectRuleList *out;

    if (id && !list_has_id(l, id)) {
        error_setg(errp, "No inject rule with id '%s'", id);
        return NULL;
    }
    out = list_new(l->n);
    for (int i = 0; id && i < l->n; i++) {
        if (strcmp(l->rules[i]->id, id)) {
            list_add(out, rule_ref(l->rules[i]));
        }
    }
    return out;
}

json_t *inject_rules_to_json(const InjectRuleList *l)
{
    json_t *a = json_array();

    for (int i = 0; l && i < l->n; i++) {
        json_array_append_new(a, inject_rule_to_json(l->rules[i]));
    }
    return a;
}

/* ------------------------------------------------------------ matching */

static bool range_matches(const InjectRule *r, const InjectReq *req)
{
    if (!r->has_range) {
        return true;
    }
    if (req->op == INJ_OP_FLUSH) {
        return false;
    }
    return req->offset + req->bytes > r->offset &&
           (r->length < 0 || req->offset < r->offset + r->length);
}

/* Thread-safe: consumes co's arm on r; false if co is not armed. */
static bool consume_arm(InjectRule *r, void *co)
{
    bool found = false;

    pthread_mutex_lock(&r->arm_lock);
    for (int i = 0; co && i < INJECT_MAX_ARMED && !found; i++) {
        if (r->armed[i] == co) {
            r->armed[i] = NULL;
            found = true;
        }
    }
    pthread_mutex_unlock(&r->arm_lock);
    return found;
}

static bool filters_pass(InjectRule *r, const InjectReq *req)
{
    if (atomic_load(&r->spent) || !(r->ops & req->op) || !range_matches(r, req)) {
        return false;
    }
    return r->event < 0 || consume_arm(r, req->co);
}

/* Thread-safe: does the trigger file exist?  Racing re-checks are
 * harmless: each stores a fresh answer. */
static bool trigger_live(InjectRule *r, int64_t now)
{
    int64_t checked = atomic_load(&r->trigger_checked_ns);
    struct stat st;

    if (!r->trigger_file) {
        return true;
    }
    if (checked == 0 || now - checked >= TRIGGER_RECHECK_NS) {
        atomic_store(&r->trigger_exists, stat(r->trigger_file, &st) == 0);
        atomic_store(&r->trigger_checked_ns, now ? now : 1);
    }
    return atomic_load(&r->trigger_exists);
}

/* dm-flakey: dormant for up-ms, live for down-ms, repeating. */
static bool phase_live(const InjectRule *r, int64_t now)
{
    int64_t cycle = (r->up_ms + r->down_ms) * NS_PER_MS, pos;

    if (!r->has_phases) {
        return true;
    }
    pos = (now - r->set_ns) % cycle;
    if (pos < 0) {
        pos += cycle;
    }
    return pos >= r->up_ms * NS_PER_MS;
}

/* Past the filters: after, probability, once. */
static bool decides_to_act(InjectRule *r, const InjectEnv *env)
{
    int64_t n = atomic_fetch_add(&r->matched, 1);

    if (n < r->after) {
        return false;
    }
    if (r->probability < 1.0 && !(draw(r, env) < r->probability)) {
        return false;
    }
    if (r->once) {
        bool expected = false;
        if (!atomic_compare_exchange_strong(&r->spent, &expected, true)) {
            return false;
        }
    }
    atomic_fetch_add(&r->fired, 1);
    return true;
}

InjectRule *inject_match(const InjectRuleList *l, const InjectReq *req,
                         const InjectEnv *env)
{
    int64_t now = 0;

    for (int i = 0; l && i < l->n; i++) {
        InjectRule *r = l->rules[i];

        if (!filters_pass(r, req)) {
            continue;
        }
        if ((r->trigger_file || r->has_phases) && !now) {
            now = env->now_ns(env->opaque);
        }
        if (!trigger_live(r, now) || !phase_live(r, now)) {
            continue;
        }
        if (decides_to_act(r, env)) {
            return r;
        }
    }
    return NULL;
}

/* Thread-safe: arms co on r (once); an empty slot if there is one, else
 * the oldest arm gives way. */
static void arm_one(InjectRule *r, void *co)
{
    int slot = -1;

    pthread_mutex_lock(&r->arm_lock);
    for (int k = 0; k < INJECT_MAX_ARMED; k++) {
        if (r->armed[k] == co) {
            pthread_mutex_unlock(&r->arm_lock);
            return;
        }
        if (!r->armed[k] && slot < 0) {
            slot = k;
        }
    }
    if (slot < 0) {
        slot = r->next_arm;
        r->next_arm = (r->next_arm + 1) % INJECT_MAX_ARMED;
    }
    r->armed[slot] = co;
    pthread_mutex_unlock(&r->arm_lock);
}

void inject_arm(const InjectRuleList *l, BlkDebugEvent ev, void *co)
{
    for (int i = 0; l && co && i < l->n; i++) {
        InjectRule *r = l->rules[i];

        if (r->event != (int)ev || atomic_load(&r->spent)) {
            continue;
        }
        arm_one(r, co);
    }
}

int64_t inject_delay_ns(InjectRule *r, const InjectEnv *env)
{
    int64_t ms = r->delay_ms;

    if (r->delay_max_ms > r->delay_ms) {
        ms += (int64_t)(draw(r, env) *
                        (double)(r->delay_max_ms - r->delay_ms + 1));
        ms = MIN(ms, r->delay_max_ms);
    }
    return ms * NS_PER_MS;
}
