/*
 * test-inject.c — the inject filter: rule parsing (every field, defaults,
 * errors that name the field, all-or-nothing lists), matching (op, range
 * overlap, flush and ranges, after, once, probability 0 and 1, up/down
 * phases and the trigger file on a fake clock, event arms per coroutine),
 * and the driver over a "mem" node (fail, delay, drop, live set/clear,
 * named events raised through bdrv_co_debug_event).
 *
 * The matcher's world (clock, random draw) is an InjectEnv the tests fill
 * with a plain int64_t and a fixed draw, so phases and probabilities are
 * exact.
 *
 * Threading: main thread; the driver tests run their requests in
 * coroutines on the main loop.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fake-drivers.h"
#include "filters/inject.h"

#define MS 1000000LL

TestSuite(inject, .init = test_env_init, .timeout = 30);

/* ------------------------------------------------------------ fake world */

typedef struct FakeWorld {
    int64_t now;
    double draw;
} FakeWorld;

static int64_t fake_now(void *opaque)
{
    return ((FakeWorld *)opaque)->now;
}

static double fake_rand(void *opaque)
{
    return ((FakeWorld *)opaque)->draw;
}

static FakeWorld world;
static const InjectEnv fake_env = { fake_now, fake_rand, &world };

/* ------------------------------------------------------------ helpers */

/* Parses a JSON array of rules (set at time 0); NULL and *msg on error. */
static InjectRuleList *parse(const char *text, char *msg, size_t len)
{
    json_error_t jerr;
    json_t *arr = json_loads(text, 0, &jerr);
    Error *err = NULL;
    int next_id = 0;
    InjectRuleList *l;

    cr_assert_not_null(arr, "bad JSON in test: %s", text);
    l = inject_rules_parse(NULL, arr, &next_id, 0, NULL, &err);
    json_decref(arr);
    if (msg) {
        snprintf(msg, len, "%s", err ? error_get_pretty(err) : "");
    }
    error_free(err);
    return l;
}

static InjectRuleList *parse_ok(const char *text)
{
    char msg[512];
    InjectRuleList *l = parse(text, msg, sizeof(msg));

    cr_assert_not_null(l, "%s: %s", text, msg);
    return l;
}

/* The rule must be refused with a message containing `want`. */
static void parse_bad(const char *text, const char *want)
{
    char msg[512];
    InjectRuleList *l = parse(text, msg, sizeof(msg));

    cr_assert_null(l, "%s was accepted", text);
    cr_assert(strstr(msg, want), "%s: message '%s' lacks '%s'", text, msg, want);
}

/* The id of the rule acting on one request, or "-" for none. */
static const char *hit(InjectRuleList *l, InjectOp op, int64_t off, int64_t len,
                       void *co)
{
    InjectReq req = { op, off, len, co };
    InjectRule *r = inject_match(l, &req, &fake_env);

    return r ? r->id : "-";
}

#define HIT(l, op, off, len) hit(l, op, off, len, NULL)

/* ------------------------------------------------------------ parsing */

Test(inject, every_field_and_defaults)
{
    InjectRuleList *l = parse_ok(
        "[{}, {\"id\": \"all\", \"op\": [\"read\", \"flush\"], \"offset\": 4096,"
        "  \"length\": 512, \"event\": \"cow-write\", \"probability\": 0.5,"
        "  \"after\": 3, \"once\": true, \"trigger-file\": \"/x\","
        "  \"up-ms\": 10, \"down-ms\": 20, \"action\": \"fail\","
        "  \"errno\": \"ENOSPC\", \"delay-ms\": 5, \"delay-max-ms\": 9},"
        " {\"action\": \"unsafe-drop-write\"}, {\"errno\": 28}]");
    InjectRule *d = l->rules[0], *a = l->rules[1];

    cr_assert_eq(l->n, 4);
    cr_assert_str_eq(d->id, "r0");
    cr_assert_eq(d->ops, INJ_OP_ALL);
    cr_assert_not(d->has_range);
    cr_assert_eq(d->event, -1);
    cr_assert_eq(d->probability, 1.0);
    cr_assert_eq(d->action, INJ_ACT_FAIL);
    cr_assert_eq(d->err, EIO);
    cr_assert_str_eq(a->id, "all");
    cr_assert_eq(a->ops, INJ_OP_READ | INJ_OP_FLUSH);
    cr_assert(a->has_range && a->offset == 4096 && a->length == 512);
    cr_assert_eq(a->event, BLKDBG_COW_WRITE);
    cr_assert(a->once && a->after == 3 && a->probability == 0.5);
    cr_assert_str_eq(a->trigger_file, "/x");
    cr_assert(a->has_phases && a->up_ms == 10 && a->down_ms == 20);
    cr_assert(a->err == ENOSPC && a->delay_ms == 5 && a->delay_max_ms == 9);
    cr_assert_str_eq(l->rules[2]->id, "r2");
    cr_assert_eq(l->rules[2]->ops, INJ_OP_WRITES, "drop defaults to writes");
    cr_assert_eq(l->rules[3]->err, 28);
    inject_list_unref(l);
}

Test(inject, bad_input_names_the_field)
{
    parse_bad("{}", "rules: expected an array");
    parse_bad("[5]", "rules[0]: expected an object");
    parse_bad("[{\"bogus\": 1}]", "rules[0]: unknown key 'bogus'");
    parse_bad("[{}, {\"op\": \"nap\"}]", "rules[1].op: unknown operation 'nap'");
    parse_bad("[{\"op\": []}]", "rules[0].op");
    parse_bad("[{\"op\": [\"read\", 3]}]", "rules[0].op");
    parse_bad("[{\"id\": 3}]", "rules[0].id");
    parse_bad("[{\"id\": \"\"}]", "rules[0].id");
    parse_bad("[{\"id\": \"a\"}, {\"id\": \"a\"}]", "rules[1].id: 'a' is already used");
    parse_bad("[{\"offset\": -1}]", "rules[0].offset");
    parse_bad("[{\"offset\": \"0\"}]", "rules[0].offset: expected an integer");
    parse_bad("[{\"length\": 0}]", "rules[0].length");
    parse_bad("[{\"event\": \"boom\"}]", "rules[0].event: unknown value 'boom'");
    parse_bad("[{\"probability\": 1.5}]", "rules[0].probability");
    parse_bad("[{\"probability\": \"1\"}]", "rules[0].probability");
    parse_bad("[{\"after\": -1}]", "rules[0].after");
    parse_bad("[{\"once\": 1}]", "rules[0].once: expected a boolean");
    parse_bad("[{\"trigger-file\": \"\"}]", "rules[0].trigger-file");
    parse_bad("[{\"up-ms\": 5}]", "rules[0].down-ms: up-ms and down-ms go together");
    parse_bad("[{\"down-ms\": 5}]", "rules[0].up-ms");
    parse_bad("[{\"up-ms\": 5, \"down-ms\": 0}]", "rules[0].down-ms");
    parse_bad("[{\"action\": \"explode\"}]", "rules[0].action: unknown value");
    parse_bad("[{\"errno\": \"EWHAT\"}]", "rules[0].errno");
    parse_bad("[{\"errno\": 0}]", "rules[0].errno");
    parse_bad("[{\"action\": \"delay\", \"delay-ms\": 1, \"errno\": \"EIO\"}]",
              "rules[0].errno: only for action 'fail'");
    parse_bad("[{\"action\": \"delay\"}]", "rules[0].delay-ms: required");
    parse_bad("[{\"delay-ms\": -1}]", "rules[0].delay-ms");
    parse_bad("[{\"delay-ms\": 5, \"delay-max-ms\": 4}]", "rules[0].delay-max-ms");
    parse_bad("[{\"delay-max-ms\": 4}]", "rules[0].delay-max-ms: needs delay-ms");
    parse_bad("[{\"action\": \"unsafe-drop-write\", \"op\": \"read\"}]", "rules[0].op");
    parse_bad("[{\"seed\": \"1\"}]", "rules[0].seed: expected an integer");
    parse_bad("[{\"seed\": 1.5}]", "rules[0].seed: expected an integer");
}

Test(inject, append_is_all_or_nothing_and_ids_continue)
{
    InjectRuleList *base = parse_ok("[{}, {\"id\": \"keep\"}]");
    json_t *bad = json_loads("[{}, {\"op\": \"x\"}]", 0, NULL);
    json_t *good = json_loads("[{}, {\"id\": \"r5\"}]", 0, NULL);
    Error *err = NULL;
    int next_id = 2;
    InjectRuleList *l;

    cr_assert_null(inject_rules_parse(base, bad, &next_id, 0, NULL, &err));
    cr_assert_eq(next_id, 2, "a refused list uses up no ids");
    cr_assert_eq(base->n, 2, "the base is not changed");
    error_free(err);
    l = inject_rules_parse(base, good, &next_id, 0, NULL, NULL);
    cr_assert_not_null(l);
    cr_assert_eq(l->n, 4);
    cr_assert_eq(l->rules[0], base->rules[0], "appending shares the old rules");
    cr_assert_str_eq(l->rules[2]->id, "r2");
    cr_assert_str_eq(l->rules[3]->id, "r5");
    json_decref(bad);
    json_decref(good);
    inject_list_unref(base);
    inject_list_unref(l);
}

Test(inject, clear_by_id_and_all)
{
    InjectRuleList *l = parse_ok("[{\"id\": \"a\"}, {\"id\": \"b\"}]");
    Error *err = NULL;
    InjectRuleList *nb = inject_rules_without(l, "a", NULL);
    InjectRuleList *none = inject_rules_without(l, NULL, NULL);

    cr_assert(nb->n == 1 && !strcmp(nb->rules[0]->id, "b"));
    cr_assert_eq(none->n, 0);
    cr_assert_null(inject_rules_without(l, "zz", &err));
    cr_assert(strstr(error_get_pretty(err), "'zz'"));
    error_free(err);
    inject_list_unref(nb);
    inject_list_unref(none);
    inject_list_unref(l);
}

Test(inject, query_json_round_trips)
{
    InjectRuleList *l = parse_ok(
        "[{\"id\": \"a\", \"op\": \"write\", \"offset\": 0, \"length\": 8,"
        "  \"errno\": 77, \"seed\": -5}, {\"action\": \"delay\", \"delay-ms\": 3}]");
    json_t *j = inject_rules_to_json(l), *again;
    char msg[512];
    int next_id = 0;
    Error *err = NULL;

    cr_assert_eq(json_array_size(j), 2);
    json_t *a = json_array_get(j, 0);
    cr_assert_str_eq(json_string_value(json_object_get(a, "id")), "a");
    cr_assert_eq(json_integer_value(json_object_get(a, "errno")), 77);
    cr_assert_eq(json_integer_value(json_object_get(a, "seed")), -5);
    cr_assert(json_is_integer(json_object_get(json_array_get(j, 1), "seed")),
              "an unseeded rule shows the seed it drew");
    cr_assert_eq(json_integer_value(json_object_get(a, "matched")), 0);
    cr_assert_eq(json_integer_value(json_object_get(a, "fired")), 0);
    cr_assert_null(json_object_get(json_array_get(j, 1), "errno"));
    /* without the counters, a query's rules are valid rules again */
    for (size_t i = 0; i < json_array_size(j); i++) {
        json_object_del(json_array_get(j, i), "matched");
        json_object_del(json_array_get(j, i), "fired");
    }
    InjectRuleList *l2 = inject_rules_parse(NULL, j, &next_id, 0, NULL, &err);
    snprintf(msg, sizeof(msg), "%s", err ? error_get_pretty(err) : "");
    cr_assert_not_null(l2, "%s", msg);
    again = inject_rules_to_json(l2);
    for (size_t i = 0; i < json_array_size(again); i++) {
        json_object_del(json_array_get(again, i), "matched");
        json_object_del(json_array_get(again, i), "fired");
    }
    cr_assert(json_equal(j, again));
    json_decref(j);
    json_decref(again);
    inject_list_unref(l);
    inject_list_unref(l2);
}

/* ------------------------------------------------------------ matching */

Test(inject, op_and_range_overlap)
{
    InjectRuleList *l = parse_ok(
        "[{\"id\": \"w\", \"op\": \"write\", \"offset\": 1000, \"length\": 100},"
        " {\"id\": \"tail\", \"op\": [\"read\", \"block-status\"], \"offset\": 5000},"
        " {\"id\": \"fl\", \"op\": \"flush\"}]");

    world = (FakeWorld){ 0, 0.0 };
    cr_assert_str_eq(HIT(l, INJ_OP_WRITE, 900, 100), "-", "ends where it starts");
    cr_assert_str_eq(HIT(l, INJ_OP_WRITE, 900, 101), "w");
    cr_assert_str_eq(HIT(l, INJ_OP_WRITE, 1099, 1), "w");
    cr_assert_str_eq(HIT(l, INJ_OP_WRITE, 1100, 50), "-");
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 1000, 100), "-", "op not selected");
    cr_assert_str_eq(HIT(l, INJ_OP_ZEROES, 1000, 100), "-");
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 1 << 30, 512), "tail", "to the end");
    cr_assert_str_eq(HIT(l, INJ_OP_BLOCK_STATUS, 4096, 1024), "tail");
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 4096), "-");
    cr_assert_str_eq(HIT(l, INJ_OP_FLUSH, 0, 0), "fl");
    cr_assert_eq(atomic_load(&l->rules[0]->matched), 2);
    cr_assert_eq(atomic_load(&l->rules[0]->fired), 2);
    inject_list_unref(l);
}

Test(inject, flush_never_matches_a_range_rule)
{
    InjectRuleList *l = parse_ok("[{\"id\": \"r\", \"offset\": 0},"
                                 " {\"id\": \"any\"}]");

    world = (FakeWorld){ 0, 0.0 };
    cr_assert_str_eq(HIT(l, INJ_OP_FLUSH, 0, 0), "any");
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "r");
    inject_list_unref(l);
}

Test(inject, after_once_and_first_rule_wins)
{
    InjectRuleList *l = parse_ok(
        "[{\"id\": \"third\", \"after\": 2, \"once\": true},"
        " {\"id\": \"rest\", \"op\": \"read\"}]");

    world = (FakeWorld){ 0, 0.0 };
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "rest");
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "rest");
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "third");
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "rest", "once: spent");
    cr_assert_str_eq(HIT(l, INJ_OP_WRITE, 0, 1), "-");
    cr_assert_eq(atomic_load(&l->rules[0]->matched), 3);
    cr_assert_eq(atomic_load(&l->rules[0]->fired), 1);
    cr_assert_eq(atomic_load(&l->rules[1]->fired), 3);
    inject_list_unref(l);
}

Test(inject, probability_zero_and_one)
{
    InjectRuleList *l = parse_ok("[{\"id\": \"never\", \"probability\": 0},"
                                 " {\"id\": \"half\", \"probability\": 0.5},"
                                 " {\"id\": \"always\", \"probability\": 1}]");

    world = (FakeWorld){ 0, 0.0 };
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "half", "draw 0 < 0.5");
    world.draw = 0.999999;
    for (int i = 0; i < 100; i++) {
        cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "always");
    }
    cr_assert_eq(atomic_load(&l->rules[0]->fired), 0);
    cr_assert_eq(atomic_load(&l->rules[0]->matched), 101);
    inject_list_unref(l);
}

Test(inject, probability_real_draws_are_near_the_rate)
{
    InjectRuleList *l = parse_ok("[{\"probability\": 0.25}]");
    InjectReq req = { INJ_OP_READ, 0, 1, NULL };
    int fired = 0;

    for (int i = 0; i < 10000; i++) {
        fired += inject_match(l, &req, &inject_default_env) != NULL;
    }
    cr_assert(fired > 2000 && fired < 3000, "%d of 10000 at 0.25", fired);
    inject_list_unref(l);
}

/* Parses text with a node seed (NULL: none). */
static InjectRuleList *parse_seeded(const char *text, const int64_t *node_seed)
{
    json_t *arr = json_loads(text, 0, NULL);
    int next_id = 0;
    InjectRuleList *l;

    cr_assert_not_null(arr, "bad JSON in test: %s", text);
    l = inject_rules_parse(NULL, arr, &next_id, 0, node_seed, NULL);
    json_decref(arr);
    cr_assert_not_null(l, "%s", text);
    return l;
}

/* The decisions of the first rule of l on n reads with the real draws,
 * as a string of '1' (acted) and '0'. */
static void decisions(InjectRuleList *l, char *out, int n)
{
    InjectReq req = { INJ_OP_READ, 0, 1, NULL };

    for (int i = 0; i < n; i++) {
        out[i] = inject_match(l, &req, &inject_default_env) ? '1' : '0';
    }
    out[n] = 0;
}

#define NDEC 256

Test(inject, same_seed_same_decisions_other_seed_others)
{
    const char *r42 = "[{\"probability\": 0.5, \"seed\": 42}]";
    InjectRuleList *a = parse_seeded(r42, NULL), *b = parse_seeded(r42, NULL);
    InjectRuleList *c = parse_seeded("[{\"probability\": 0.5, \"seed\": 43}]", NULL);
    char da[NDEC + 1], db[NDEC + 1], dc[NDEC + 1];

    decisions(a, da, NDEC);
    decisions(b, db, NDEC);
    decisions(c, dc, NDEC);
    cr_assert_str_eq(da, db, "seed 42 twice");
    cr_assert_str_neq(da, dc, "seeds 42 and 43");
    cr_assert(strchr(da, '0') && strchr(da, '1'), "%s", da);
    cr_assert_eq(a->rules[0]->seed, 42);
    inject_list_unref(a);
    inject_list_unref(b);
    inject_list_unref(c);
}

Test(inject, seeded_random_delays_repeat)
{
    const char *d = "[{\"action\": \"delay\", \"delay-ms\": 0,"
                    "  \"delay-max-ms\": 1000, \"seed\": 9}]";
    InjectRuleList *a = parse_seeded(d, NULL), *b = parse_seeded(d, NULL);
    int64_t first = inject_delay_ns(b->rules[0], &inject_default_env);
    int differ = 0;

    cr_assert_eq(inject_delay_ns(a->rules[0], &inject_default_env), first);
    for (int i = 1; i < 64; i++) {
        int64_t da = inject_delay_ns(a->rules[0], &inject_default_env);
        cr_assert_eq(da, inject_delay_ns(b->rules[0], &inject_default_env),
                     "draw %d", i);
        differ += da != first;
    }
    cr_assert_gt(differ, 0, "the delays are random");
    inject_list_unref(a);
    inject_list_unref(b);
}

Test(inject, node_seed_gives_each_id_its_own_repeatable_seed)
{
    const char *text = "[{\"id\": \"a\", \"probability\": 0.5},"
                       " {\"id\": \"b\", \"probability\": 0.5},"
                       " {\"id\": \"own\", \"seed\": 3}]";
    const int64_t s7 = 7, s8 = 8;
    InjectRuleList *x = parse_seeded(text, &s7), *y = parse_seeded(text, &s7);
    InjectRuleList *z = parse_seeded(text, &s8);
    InjectRuleList *u = parse_seeded(text, NULL), *v = parse_seeded(text, NULL);

    cr_assert_eq(x->rules[0]->seed, y->rules[0]->seed);
    cr_assert_eq(x->rules[1]->seed, y->rules[1]->seed);
    cr_assert_neq(x->rules[0]->seed, x->rules[1]->seed, "ids a and b");
    cr_assert_neq(x->rules[0]->seed, z->rules[0]->seed, "node seeds 7 and 8");
    cr_assert_eq(x->rules[2]->seed, 3, "a rule's own seed wins");
    cr_assert_neq(u->rules[0]->seed, v->rules[0]->seed, "no seed: unpredictable");
    InjectRuleList *lists[] = { x, y, z, u, v };
    for (size_t i = 0; i < ARRAY_SIZE(lists); i++) {
        inject_list_unref(lists[i]);
    }
}

/* Four threads draw from one rule at once: every step is taken exactly
 * once, so the draws are the single-threaded sequence, reordered. */
typedef struct DrawJob {
    InjectRule *r;
    double got[1000];
} DrawJob;

static void *draw_thread(void *opaque)
{
    DrawJob *j = opaque;

    for (int i = 0; i < 1000; i++) {
        j->got[i] = inject_rule_rand01(j->r);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

Test(inject, generator_is_thread_safe)
{
    const char *text = "[{\"seed\": 11}]";
    InjectRuleList *shared = parse_seeded(text, NULL), *ref = parse_seeded(text, NULL);
    static DrawJob jobs[4];
    static double all[4000], want[4000];
    pthread_t t[4];

    for (int i = 0; i < 4; i++) {
        jobs[i].r = shared->rules[0];
        pthread_create(&t[i], NULL, draw_thread, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        memcpy(all + i * 1000, jobs[i].got, sizeof(jobs[i].got));
    }
    for (int i = 0; i < 4000; i++) {
        want[i] = inject_rule_rand01(ref->rules[0]);
    }
    qsort(all, 4000, sizeof(double), cmp_double);
    qsort(want, 4000, sizeof(double), cmp_double);
    cr_assert_arr_eq(all, want, sizeof(all));
    inject_list_unref(shared);
    inject_list_unref(ref);
}

Test(inject, up_down_phases_on_a_fake_clock)
{
    char text[128];
    InjectRuleList *l;

    world = (FakeWorld){ 1000 * MS, 0.0 };
    snprintf(text, sizeof(text), "[{\"up-ms\": 100, \"down-ms\": 50}]");
    json_t *arr = json_loads(text, 0, NULL);
    int next_id = 0;
    l = inject_rules_parse(NULL, arr, &next_id, world.now, NULL, NULL);
    json_decref(arr);
    cr_assert_not_null(l);
    int64_t t0 = world.now;
    const int64_t live[] = { 100, 149, 250, 299, 400 };
    const int64_t dormant[] = { 0, 99, 150, 249, 300 };
    for (size_t i = 0; i < ARRAY_SIZE(live); i++) {
        world.now = t0 + live[i] * MS;
        cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "r0", "live at %lld ms",
                         (long long)live[i]);
        world.now = t0 + dormant[i] * MS;
        cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "-", "dormant at %lld ms",
                         (long long)dormant[i]);
    }
    inject_list_unref(l);
}

Test(inject, trigger_file_checked_at_most_every_10ms)
{
    char dir[256], path[300], text[400];
    InjectRuleList *l;

    test_tmpdir_create(dir, sizeof(dir), "inject-trigger");
    snprintf(path, sizeof(path), "%s/trigger", dir);
    snprintf(text, sizeof(text), "[{\"trigger-file\": \"%s\"}]", path);
    l = parse_ok(text);
    world = (FakeWorld){ 1000 * MS, 0.0 };
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "-");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fclose(f);
    world.now += 5 * MS;
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "-", "the cached answer");
    world.now += 5 * MS;
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "r0", "re-checked after 10 ms");
    unlink(path);
    world.now += 10 * MS;
    cr_assert_str_eq(HIT(l, INJ_OP_READ, 0, 1), "-");
    inject_list_unref(l);
    test_tmpdir_remove(dir);
}

Test(inject, event_arms_per_coroutine)
{
    InjectRuleList *l = parse_ok(
        "[{\"id\": \"l2\", \"event\": \"l2-update\", \"op\": \"write\"}]");
    int co_a, co_b;       /* stand-ins for two coroutines */

    world = (FakeWorld){ 0, 0.0 };
    cr_assert_str_eq(hit(l, INJ_OP_WRITE, 0, 1, &co_a), "-", "not armed");
    inject_arm(l, BLKDBG_COW_READ, &co_a);
    cr_assert_str_eq(hit(l, INJ_OP_WRITE, 0, 1, &co_a), "-", "other event");
    inject_arm(l, BLKDBG_L2_UPDATE, &co_a);
    cr_assert_str_eq(hit(l, INJ_OP_WRITE, 0, 1, &co_b), "-", "other coroutine");
    cr_assert_str_eq(hit(l, INJ_OP_READ, 0, 1, &co_a), "-", "op filter first");
    cr_assert_str_eq(hit(l, INJ_OP_WRITE, 0, 1, &co_a), "l2");
    cr_assert_str_eq(hit(l, INJ_OP_WRITE, 0, 1, &co_a), "-", "the arm is consumed");
    inject_arm(l, BLKDBG_L2_UPDATE, &co_a);
    inject_arm(l, BLKDBG_L2_UPDATE, &co_b);
    cr_assert_str_eq(hit(l, INJ_OP_WRITE, 0, 1, &co_b), "l2");
    cr_assert_str_eq(hit(l, INJ_OP_WRITE, 0, 1, &co_a), "l2");
    inject_list_unref(l);
}

Test(inject, delay_fixed_and_random)
{
    InjectRuleList *l = parse_ok("[{\"action\": \"delay\", \"delay-ms\": 7},"
                                 " {\"action\": \"delay\", \"delay-ms\": 10,"
                                 "  \"delay-max-ms\": 20}]");

    world = (FakeWorld){ 0, 0.0 };
    cr_assert_eq(inject_delay_ns(l->rules[0], &fake_env), 7 * MS);
    cr_assert_eq(inject_delay_ns(l->rules[1], &fake_env), 10 * MS);
    world.draw = 0.999999;
    cr_assert_eq(inject_delay_ns(l->rules[1], &fake_env), 20 * MS);
    world.draw = 0.5;
    cr_assert_eq(inject_delay_ns(l->rules[1], &fake_env), 15 * MS);
    inject_list_unref(l);
}

/* ------------------------------------------------------------ the driver */

#define NODE(rules) \
    "{\"driver\": \"inject\", \"node-name\": \"inj\", \"rules\": " rules ", " \
    "\"file\": {\"driver\": \"mem\", \"node-name\": \"mem\", \"size\": 1048576}}"

typedef struct Chain {
    BlockNode *inj, *mem;
    BlockBackend *blk;
} Chain;

static void chain_open(Chain *c, const char *def) GS
{
    Error *err = NULL;

    c->inj = test_open_def(def, &err);
    cr_assert_not_null(c->inj, "%s: %s", def, err ? error_get_pretty(err) : "");
    c->mem = bdrv_find_node("mem");
    c->blk = test_backend_on("test", c->inj, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                             BLK_PERM_ALL);
}

static int req(Chain *c, TestReqKind kind, int64_t off, int64_t len, void *buf)
{
    TestReq r = { .kind = kind, .blk = c->blk, .off = off, .len = len, .buf = buf };

    run_co(test_req_co, &r);
    return r.ret;
}

static void set_rules(Chain *c, const char *rules, bool replace, int want_ret) GS
{
    json_t *arr = json_loads(rules, 0, NULL);
    Error *err = NULL;

    cr_assert_not_null(arr);
    cr_assert_eq(inject_node_set(c->inj, arr, replace, &err), want_ret,
                 "%s: %s", rules, err ? error_get_pretty(err) : "");
    error_free(err);
    json_decref(arr);
}

Test(inject, fails_exactly_the_range_with_the_errno)
{
    global_lock_assert_held();
    static uint8_t buf[4096];
    Chain c;

    chain_open(&c, NODE("[{\"op\": \"read\", \"offset\": 8192, \"length\": 4096,"
                        "  \"errno\": \"EPERM\"},"
                        " {\"op\": \"write\", \"offset\": 65536, \"errno\": \"ENOSPC\"}]"));
    cr_assert_eq(req(&c, REQ_READ, 8192, 4096, buf), -EPERM);
    cr_assert_eq(req(&c, REQ_READ, 4096, 8192, buf), -EPERM, "overlap fails all");
    cr_assert_eq(req(&c, REQ_READ, 0, 4096, buf), 0);
    cr_assert_eq(req(&c, REQ_WRITE, 65536, 4096, buf), -ENOSPC);
    cr_assert_eq(req(&c, REQ_WRITE, 0, 4096, buf), 0);
    cr_assert_eq(req(&c, REQ_FLUSH, 0, 0, NULL), 0, "range rules skip flush");
    json_t *q = inject_node_query(c.inj);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(q, 0), "fired")), 2);
    json_decref(q);
}

Test(inject, drop_write_reports_success_and_writes_nothing)
{
    global_lock_assert_held();
    static uint8_t buf[4096];
    Chain c;

    chain_open(&c, NODE("[{\"action\": \"unsafe-drop-write\"}]"));
    memset(buf, 0xab, sizeof(buf));
    cr_assert_eq(req(&c, REQ_WRITE, 0, 4096, buf), 0);
    cr_assert_eq(mem_data(c.mem)[0], 0, "the write did not reach the disk");
    MemStats st;
    mem_stats(c.mem, &st);
    cr_assert_eq(st.writes, 0);
    cr_assert_eq(req(&c, REQ_READ, 0, 4096, buf), 0, "reads pass");
}

Test(inject, delay_keeps_the_request_in_flight_then_passes)
{
    global_lock_assert_held();
    static uint8_t buf[4096];
    Chain c;

    chain_open(&c, NODE("[{\"action\": \"delay\", \"delay-ms\": 30, \"op\": \"write\"}]"));
    static TestAsyncReq w;
    test_async_write_start(&w, c.blk, 0, 0x5a);
    cr_assert_not(atomic_load(&w.done), "the write sleeps in the filter");
    cr_assert_gt(atomic_load(&c.inj->in_flight), 0, "counted in flight meanwhile");
    wait_flag(&w.done);
    cr_assert_eq(w.ret, 0);
    cr_assert_eq(mem_data(c.mem)[0], 0x5a);
    cr_assert_eq(req(&c, REQ_READ, 0, 4096, buf), 0);
}

Test(inject, live_set_and_clear)
{
    global_lock_assert_held();
    static uint8_t buf[4096];
    Error *err = NULL;
    Chain c;

    chain_open(&c, NODE("[]"));
    cr_assert_eq(req(&c, REQ_READ, 0, 4096, buf), 0);
    set_rules(&c, "[{\"id\": \"a\", \"op\": \"read\"}]", false, 0);
    cr_assert_eq(req(&c, REQ_READ, 0, 4096, buf), -EIO);
    set_rules(&c, "[{\"op\": \"nope\"}]", false, -EINVAL);
    set_rules(&c, "[{\"id\": \"a\"}]", false, -EINVAL);   /* id taken */
    json_t *q = inject_node_query(c.inj);
    cr_assert_eq(json_array_size(q), 1, "a refused set changes nothing");
    json_decref(q);
    set_rules(&c, "[{\"id\": \"b\", \"op\": \"write\"}]", false, 0);
    cr_assert_eq(inject_node_clear(c.inj, "a", NULL), 0);
    cr_assert_eq(req(&c, REQ_READ, 0, 4096, buf), 0);
    cr_assert_eq(req(&c, REQ_WRITE, 0, 4096, buf), -EIO);
    cr_assert_lt(inject_node_clear(c.inj, "a", &err), 0);
    error_free(err);
    set_rules(&c, "[{\"id\": \"z\", \"op\": \"read\"}]", true, 0);
    cr_assert_eq(req(&c, REQ_WRITE, 0, 4096, buf), 0, "replace dropped b");
    cr_assert_eq(inject_node_clear(c.inj, NULL, NULL), 0);
    cr_assert_eq(req(&c, REQ_READ, 0, 4096, buf), 0);
}

Test(inject, node_seed_option_decides_like_the_matcher)
{
    global_lock_assert_held();
    const char *rules = "[{\"id\": \"p\", \"op\": \"read\", \"probability\": 0.5}]";
    const int64_t seed = -5;
    static uint8_t buf[4096];
    char want[65], got[65];
    Chain c;

    chain_open(&c, "driver=inject,node-name=inj,seed=-5,file.driver=mem,"
                   "file.node-name=mem,file.size=1M");
    set_rules(&c, rules, false, 0);
    InjectRuleList *l = parse_seeded(rules, &seed);
    decisions(l, want, 64);
    for (int i = 0; i < 64; i++) {
        got[i] = req(&c, REQ_READ, 0, 4096, buf) == -EIO ? '1' : '0';
    }
    got[64] = 0;
    cr_assert_str_eq(got, want, "the node's seed is the matcher's");
    json_t *q = inject_node_query(c.inj);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(q, 0), "seed")),
                 l->rules[0]->seed);
    json_decref(q);
    inject_list_unref(l);
}

Test(inject, refuses_bad_rules_at_open_and_keyval_rules)
{
    global_lock_assert_held();
    Error *err = NULL;

    cr_assert_null(test_open_def(NODE("[{\"errno\": \"EBOGUS\"}]"), &err));
    cr_assert(strstr(error_get_pretty(err), "rules[0].errno"), "%s",
              error_get_pretty(err));
    cr_assert_null(bdrv_find_node("mem"), "nothing opened");
    error_free(err);
    err = NULL;
    cr_assert_null(test_open_def("driver=inject,node-name=i2,rules=x,"
                                 "file.driver=mem,file.size=4096", &err));
    cr_assert(strstr(error_get_pretty(err), "'rules' needs the JSON syntax"), "%s",
              error_get_pretty(err));
    error_free(err);
}

Test(inject, rules_file_after_rules)
{
    global_lock_assert_held();
    char dir[256], path[300], def[700];
    static uint8_t buf[4096];
    Error *err = NULL;
    Chain c;

    test_tmpdir_create(dir, sizeof(dir), "inject-rules");
    snprintf(path, sizeof(path), "%s/rules.json", dir);
    FILE *f = fopen(path, "w");
    fputs("[{\"id\": \"f\", \"op\": \"write\"}]", f);
    fclose(f);
    snprintf(def, sizeof(def), "driver=inject,node-name=inj,rules-file=%s,"
             "file.driver=mem,file.node-name=mem,file.size=1M", path);
    chain_open(&c, def);
    cr_assert_eq(req(&c, REQ_WRITE, 0, 4096, buf), -EIO);
    cr_assert_eq(req(&c, REQ_READ, 0, 4096, buf), 0);
    f = fopen(path, "w");
    fputs("[{\"op\": 1}]", f);
    fclose(f);
    snprintf(def, sizeof(def), "driver=inject,node-name=inj2,rules-file=%s,"
             "file.driver=mem,file.size=1M", path);
    cr_assert_null(test_open_def(def, &err));
    cr_assert(strstr(error_get_pretty(err), "rules-file") &&
              strstr(error_get_pretty(err), "rules[0].op"), "%s",
              error_get_pretty(err));
    error_free(err);
    test_tmpdir_remove(dir);
}

/* A coroutine that raises `ev` on the backend's edge, then writes. */
typedef struct EventWrite {
    BlockNode *inj;
    BlkDebugEvent ev;
    int ret;
} EventWrite;

static void coroutine_fn event_write_co(void *opaque)
{
    EventWrite *e = opaque;
    static uint8_t buf[512];

    bdrv_graph_co_rdlock();
    BlockChild *edge = e->inj->parents;
    bdrv_co_debug_event(edge, e->ev);
    e->ret = bdrv_co_pwrite(edge, 0, sizeof(buf), buf, 0);
    bdrv_graph_co_rdunlock();
}

Test(inject, named_event_fails_only_that_step)
{
    global_lock_assert_held();
    static uint8_t buf[512];
    Chain c;

    chain_open(&c, NODE("[{\"event\": \"l2-update\", \"op\": \"write\", "
                        "  \"errno\": \"ENOSPC\"}]"));
    EventWrite e = { c.inj, BLKDBG_L2_UPDATE, 1 };
    run_co(event_write_co, &e);
    cr_assert_eq(e.ret, -ENOSPC);
    cr_assert_eq(req(&c, REQ_WRITE, 0, 512, buf), 0, "no event: passes");
    e = (EventWrite){ c.inj, BLKDBG_HEADER_UPDATE, 1 };
    run_co(event_write_co, &e);
    cr_assert_eq(e.ret, 0, "another event: passes");
}

/* Four IOThreads at once: once fires exactly once, after lets exactly its
 * count by, and event arms stay with their own coroutine. */
typedef struct Hammer {
    BlockNode *inj;
    BlockBackend *blk;
    int fail_once, fail_after, event_ok, event_fail, plain_fail;
} Hammer;

static void coroutine_fn hammer_job(void *opaque)
{
    Hammer *h = opaque;
    static _Thread_local uint8_t buf[512];
    IOVector v;

    iov_init_buf(&v, buf, sizeof(buf));
    for (int i = 0; i < 250; i++) {
        h->fail_once += blk_co_preadv(h->blk, 0, 512, &v, 0) == -EIO;
        h->fail_after += blk_co_preadv(h->blk, 4096, 512, &v, 0) == -EIO;
        bdrv_graph_co_rdlock();
        BlockChild *edge = h->inj->parents;
        bdrv_co_debug_event(edge, BLKDBG_COW_WRITE);
        int ret = bdrv_co_pwrite(edge, 8192, sizeof(buf), buf, 0);
        h->event_fail += ret == -ENOSPC;
        h->event_ok += ret == 0;
        h->plain_fail += bdrv_co_pwrite(edge, 8192, sizeof(buf), buf, 0) != 0;
        bdrv_graph_co_rdunlock();
    }
}

Test(inject, counters_and_arms_across_iothreads)
{
    global_lock_assert_held();
    Chain c;

    chain_open(&c, NODE("[{\"id\": \"once\", \"op\": \"read\", \"offset\": 0,"
                        "  \"length\": 4096, \"once\": true},"
                        " {\"id\": \"after\", \"op\": \"read\", \"offset\": 4096,"
                        "  \"length\": 4096, \"after\": 600},"
                        " {\"id\": \"ev\", \"event\": \"cow-write\", \"op\": \"write\","
                        "  \"errno\": \"ENOSPC\"}]"));
    Hammer jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (Hammer){ .inj = c.inj, .blk = c.blk };
    }
    run_co_on_iothreads("inj", hammer_job, jobs, sizeof(Hammer), 4);
    int once = 0, after = 0, ev_fail = 0, ev_ok = 0, plain = 0;
    for (int i = 0; i < 4; i++) {
        once += jobs[i].fail_once;
        after += jobs[i].fail_after;
        ev_fail += jobs[i].event_fail;
        ev_ok += jobs[i].event_ok;
        plain += jobs[i].plain_fail;
    }
    cr_assert_eq(once, 1);
    cr_assert_eq(after, 1000 - 600);
    cr_assert_eq(ev_fail, 1000, "every armed write failed (%d passed)", ev_ok);
    cr_assert_eq(plain, 0, "no arm leaked to an unarmed write");
    json_t *q = inject_node_query(c.inj);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(q, 1), "matched")),
                 1000);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(q, 2), "fired")),
                 1000);
    json_decref(q);
}
