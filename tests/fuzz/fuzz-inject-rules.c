/*
 * fuzz-inject-rules.c — libFuzzer harness: the input is the JSON text of
 * an inject filter's rules (what x-diskstack-inject-set, blockdev-add's
 * "rules" and a rules-file carry from a client, see diskstack-inject(7)).
 *
 * The bytes go through json_loadb (any value, as a client may send one)
 * and inject_rules_parse, with or without a node seed (the input's length
 * picks).  A refused input must come with a message naming "rules".  A
 * parsed list must survive the trip a query takes back to a client and in
 * again: inject_rules_to_json, without the counters, dumped as text and
 * loaded again, must parse (no node seed, the seeds are in the JSON) to a
 * list of equal rules whose query is the same JSON.  A few requests are
 * then matched against the list on a fixed clock and draw, for the
 * sanitizers' sake.
 *
 * Oracle: besides sanitizers and leaks, abort() on a refused round trip,
 * a rule that comes back different, or a refusal without a message.
 *
 * Threading: the fuzzer's thread only; the parser and matcher are pure
 * (no runtime, no loop).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filters/inject.h"

#define MAX_INPUT (64 * 1024)

static int64_t fixed_now(void *opaque)
{
    return 5 * 1000000000LL;
}

static double fixed_draw(void *opaque)
{
    return 0.5;
}

static const InjectEnv fixed_env = { fixed_now, fixed_draw, NULL };

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz-inject-rules: %s%s%s\n", what, detail ? ": " : "",
            detail ? detail : "");
    abort();
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

/* Pure: the parts of two rules that parsing sets (not counters, not the
 * phases' origin, which both lists share). */
static bool rules_equal(const InjectRule *a, const InjectRule *b)
{
    return str_eq(a->id, b->id) && a->ops == b->ops &&
           a->has_range == b->has_range && a->offset == b->offset &&
           a->length == b->length && a->event == b->event &&
           a->probability == b->probability && a->after == b->after &&
           a->once == b->once && str_eq(a->trigger_file, b->trigger_file) &&
           a->has_phases == b->has_phases && a->up_ms == b->up_ms &&
           a->down_ms == b->down_ms && a->action == b->action &&
           a->err == b->err && a->delay_ms == b->delay_ms &&
           a->delay_max_ms == b->delay_max_ms && a->seed == b->seed;
}

/* The query of l without its counters (new reference). */
static json_t *query(const InjectRuleList *l)
{
    json_t *j = inject_rules_to_json(l), *r;
    size_t i;

    json_array_foreach(j, i, r) {
        json_object_del(r, "matched");
        json_object_del(r, "fired");
    }
    return j;
}

/* The query of l as a client gets it and sends it back: through text. */
static json_t *through_text(json_t *j)
{
    char *text = json_dumps(j, JSON_COMPACT);
    json_error_t jerr;
    json_t *back;

    if (!text) {
        fail("query does not dump", NULL);
    }
    back = json_loads(text, 0, &jerr);
    if (!back) {
        fail("query does not load back", jerr.text);
    }
    free(text);
    return back;
}

static void check_round_trip(const InjectRuleList *l)
{
    json_t *j = query(l), *text = through_text(j), *again;
    Error *err = NULL;
    int next_id = 0;
    InjectRuleList *l2 = inject_rules_parse(NULL, text, &next_id, 0, NULL, &err);

    if (!l2) {
        fail("the query does not parse back", error_get_pretty(err));
    }
    if (l2->n != l->n) {
        fail("the query parses back to another number of rules", NULL);
    }
    for (int i = 0; i < l->n; i++) {
        if (!rules_equal(l->rules[i], l2->rules[i])) {
            fail("a rule comes back different", l->rules[i]->id);
        }
    }
    again = query(l2);
    if (!json_equal(j, again)) {
        fail("the second query differs from the first", NULL);
    }
    json_decref(again);
    json_decref(text);
    json_decref(j);
    inject_list_unref(l2);
}

/* A few requests through the matcher (no coroutine: event rules stay
 * unarmed, except for one arm on a stand-in). */
static void exercise(InjectRuleList *l)
{
    static const InjectOp ops[] = { INJ_OP_READ, INJ_OP_WRITE, INJ_OP_ZEROES,
                                    INJ_OP_DISCARD, INJ_OP_FLUSH,
                                    INJ_OP_BLOCK_STATUS };
    int co;

    inject_arm(l, BLKDBG_L2_UPDATE, &co);
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        InjectReq req = { ops[i], ops[i] == INJ_OP_FLUSH ? 0 : 4096 * (int64_t)i,
                          ops[i] == INJ_OP_FLUSH ? 0 : 4096, &co };
        InjectRule *r = inject_match(l, &req, &fixed_env);

        if (r && inject_delay_ns(r, &fixed_env) < 0) {
            fail("a negative delay", r->id);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int64_t node_seed = 0x5eed;
    json_error_t jerr;
    json_t *arr;
    Error *err = NULL;
    int next_id = 0;
    InjectRuleList *l;

    if (size > MAX_INPUT) {
        return 0;
    }
    arr = json_loadb((const char *)data, size, JSON_DECODE_ANY, &jerr);
    if (!arr) {
        return 0;
    }
    l = inject_rules_parse(NULL, arr, &next_id, 0, size & 1 ? &node_seed : NULL,
                           &err);
    if (!l) {
        if (!strstr(error_get_pretty(err), "rules")) {
            fail("a refusal that does not name the rules", error_get_pretty(err));
        }
        error_free(err);
    } else {
        check_round_trip(l);
        exercise(l);
        inject_list_unref(l);
    }
    json_decref(arr);
    return 0;
}
