/*
 * inject-parse.c — the rules of the `inject` filter as JSON: parsing a
 * RULE object (diskstack-inject(7)) into an InjectRule, and the normalised
 * object x-diskstack-inject-query shows (every key spelled out, so that
 * without its counters it parses back to the same rule).
 *
 * Errors name the rule and the key: "rules[2].errno: expected EIO, ...";
 * an unknown key is an error, as is a key that makes no sense with the
 * rule's action (errno for a delay, delay-ms for a dropped write).
 *
 * Threading: pure functions (the counters in the output are atomic reads).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filters/inject.h"

#define MAX_DELAY_MS (3600 * 1000LL)

static const char *const op_names[] = {
    "read", "write", "zeroes", "discard", "flush", "block-status",
};

static const char *const action_names[] = {
    [INJ_ACT_FAIL] = "fail",
    [INJ_ACT_DELAY] = "delay",
    [INJ_ACT_DROP_WRITE] = "unsafe-drop-write",
};

static const struct { const char *name; int err; } errno_names[] = {
    { "EIO", EIO }, { "ENOSPC", ENOSPC }, { "EPERM", EPERM },
    { "EROFS", EROFS }, { "EINVAL", EINVAL }, { "ENOMEM", ENOMEM },
    { "ETIMEDOUT", ETIMEDOUT }, { "EDQUOT", EDQUOT }, { "EFBIG", EFBIG },
};

static const char *const rule_keys[] = {
    "id", "op", "offset", "length", "event", "probability", "after", "once",
    "trigger-file", "up-ms", "down-ms", "action", "errno", "delay-ms",
    "delay-max-ms", "seed", NULL,
};

const char *inject_op_name(InjectOp op)
{
    for (size_t i = 0; i < ARRAY_SIZE(op_names); i++) {
        if (op == (1u << i)) {
            return op_names[i];
        }
    }
    return NULL;
}

const char *inject_errno_name(int err)
{
    for (size_t i = 0; i < ARRAY_SIZE(errno_names); i++) {
        if (errno_names[i].err == err) {
            return errno_names[i].name;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------ parsing */

/* Pure: the error for field `key` of rule `index`. */
#define FIELD_ERR(errp, index, key, ...) \
    field_error(errp, index, key, __VA_ARGS__)

static void field_error(Error **errp, int index, const char *key,
                        const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void field_error(Error **errp, int index, const char *key,
                        const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (key) {
        error_setg(errp, "rules[%d].%s: %s", index, key, msg);
    } else {
        error_setg(errp, "rules[%d]: %s", index, msg);
    }
}

/* Reads an integer field >= min into *out (left alone if absent). */
static int get_int(json_t *obj, const char *key, int64_t min, int64_t max,
                   int64_t *out, int index, Error **errp)
{
    json_t *v = json_object_get(obj, key);

    if (!v) {
        return 0;
    }
    if (!json_is_integer(v)) {
        FIELD_ERR(errp, index, key, "expected an integer");
        return -EINVAL;
    }
    if (json_integer_value(v) < min || json_integer_value(v) > max) {
        FIELD_ERR(errp, index, key, "must be between %lld and %lld",
                  (long long)min, (long long)max);
        return -EINVAL;
    }
    *out = json_integer_value(v);
    return 0;
}

/* Reads a string field into *out (left alone if absent). */
static int get_str(json_t *obj, const char *key, const char **out, int index,
                   Error **errp)
{
    json_t *v = json_object_get(obj, key);

    if (!v) {
        return 0;
    }
    if (!json_is_string(v) || !*json_string_value(v)) {
        FIELD_ERR(errp, index, key, "expected a non-empty string");
        return -EINVAL;
    }
    *out = json_string_value(v);
    return 0;
}

static int op_bit(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(op_names); i++) {
        if (!strcmp(name, op_names[i])) {
            return 1 << i;
        }
    }
    return 0;
}

static int parse_op_one(json_t *v, unsigned *ops, int index, Error **errp)
{
    int bit = json_is_string(v) ? op_bit(json_string_value(v)) : 0;

    if (!json_is_string(v)) {
        FIELD_ERR(errp, index, "op", "expected a string or an array of strings");
        return -EINVAL;
    }
    if (!bit) {
        FIELD_ERR(errp, index, "op", "unknown operation '%s' (read, write, "
                  "zeroes, discard, flush, block-status)", json_string_value(v));
        return -EINVAL;
    }
    *ops |= bit;
    return 0;
}

static int parse_ops(json_t *obj, InjectRule *r, int index, Error **errp)
{
    json_t *v = json_object_get(obj, "op"), *e;
    size_t i;

    if (!v) {
        r->ops = r->action == INJ_ACT_DROP_WRITE ? INJ_OP_WRITES : INJ_OP_ALL;
        return 0;
    }
    r->ops = 0;
    if (!json_is_array(v)) {
        return parse_op_one(v, &r->ops, index, errp);
    }
    if (json_array_size(v) == 0) {
        FIELD_ERR(errp, index, "op", "expected at least one operation");
        return -EINVAL;
    }
    json_array_foreach(v, i, e) {
        if (parse_op_one(e, &r->ops, index, errp) < 0) {
            return -EINVAL;
        }
    }
    return 0;
}

static int parse_enum(json_t *obj, const char *key, const char *const *names,
                      size_t n, int *out, int index, Error **errp)
{
    const char *s = NULL;

    if (get_str(obj, key, &s, index, errp) < 0) {
        return -EINVAL;
    }
    if (!s) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (names[i] && !strcmp(s, names[i])) {
            *out = (int)i;
            return 0;
        }
    }
    FIELD_ERR(errp, index, key, "unknown value '%s'", s);
    return -EINVAL;
}

static int parse_event(json_t *obj, InjectRule *r, int index, Error **errp)
{
    const char *names[BLKDBG_EVENT_MAX];

    for (int i = 0; i < BLKDBG_EVENT_MAX; i++) {
        names[i] = bdrv_debug_event_name(i);
    }
    return parse_enum(obj, "event", names, BLKDBG_EVENT_MAX, &r->event, index,
                      errp);
}

static int parse_errno(json_t *obj, InjectRule *r, int index, Error **errp)
{
    json_t *v = json_object_get(obj, "errno");

    r->err = EIO;
    if (!v) {
        return 0;
    }
    if (r->action != INJ_ACT_FAIL) {
        FIELD_ERR(errp, index, "errno", "only for action 'fail'");
        return -EINVAL;
    }
    if (json_is_integer(v)) {
        int64_t e = EIO;
        if (get_int(obj, "errno", 1, 4095, &e, index, errp) < 0) {
            return -EINVAL;
        }
        r->err = (int)e;
        return 0;
    }
    for (size_t i = 0; json_is_string(v) && i < ARRAY_SIZE(errno_names); i++) {
        if (!strcmp(json_string_value(v), errno_names[i].name)) {
            r->err = errno_names[i].err;
            return 0;
        }
    }
    FIELD_ERR(errp, index, "errno", "expected EIO, ENOSPC, EPERM, EROFS, EINVAL, "
              "ENOMEM, ETIMEDOUT, EDQUOT, EFBIG or an errno number");
    return -EINVAL;
}

static int parse_probability(json_t *obj, InjectRule *r, int index, Error **errp)
{
    json_t *v = json_object_get(obj, "probability");

    r->probability = 1.0;
    if (!v) {
        return 0;
    }
    if (!json_is_number(v) || json_number_value(v) < 0 ||
        json_number_value(v) > 1) {
        FIELD_ERR(errp, index, "probability", "expected a number from 0 to 1");
        return -EINVAL;
    }
    r->probability = json_number_value(v);
    return 0;
}

static int parse_range(json_t *obj, InjectRule *r, int index, Error **errp)
{
    r->offset = 0;
    r->length = -1;
    r->has_range = json_object_get(obj, "offset") || json_object_get(obj, "length");
    if (get_int(obj, "offset", 0, BDRV_MAX_LENGTH, &r->offset, index, errp) < 0 ||
        get_int(obj, "length", 1, BDRV_MAX_LENGTH, &r->length, index, errp) < 0) {
        return -EINVAL;
    }
    return 0;
}

static int parse_phases(json_t *obj, InjectRule *r, int index, Error **errp)
{
    bool up = json_object_get(obj, "up-ms"), down = json_object_get(obj, "down-ms");

    r->has_phases = up || down;
    if (r->has_phases && !(up && down)) {
        FIELD_ERR(errp, index, up ? "down-ms" : "up-ms",
                  "up-ms and down-ms go together");
        return -EINVAL;
    }
    if (get_int(obj, "up-ms", 0, MAX_DELAY_MS, &r->up_ms, index, errp) < 0 ||
        get_int(obj, "down-ms", 1, MAX_DELAY_MS, &r->down_ms, index, errp) < 0) {
        return -EINVAL;
    }
    return 0;
}

static int parse_delay(json_t *obj, InjectRule *r, int index, Error **errp)
{
    bool has_delay = json_object_get(obj, "delay-ms") != NULL;

    r->delay_max_ms = -1;
    if (get_int(obj, "delay-ms", 0, MAX_DELAY_MS, &r->delay_ms, index, errp) < 0 ||
        get_int(obj, "delay-max-ms", 0, MAX_DELAY_MS, &r->delay_max_ms, index,
                errp) < 0) {
        return -EINVAL;
    }
    if (r->action == INJ_ACT_DELAY && !has_delay) {
        FIELD_ERR(errp, index, "delay-ms", "required for action 'delay'");
        return -EINVAL;
    }
    if (r->delay_max_ms >= 0 && !has_delay) {
        FIELD_ERR(errp, index, "delay-max-ms", "needs delay-ms");
        return -EINVAL;
    }
    if (r->delay_max_ms >= 0 && r->delay_max_ms < r->delay_ms) {
        FIELD_ERR(errp, index, "delay-max-ms", "must not be less than delay-ms");
        return -EINVAL;
    }
    if (r->action == INJ_ACT_DROP_WRITE && has_delay) {
        FIELD_ERR(errp, index, "delay-ms", "not with action 'unsafe-drop-write'");
        return -EINVAL;
    }
    return 0;
}

static int check_keys(json_t *obj, int index, Error **errp)
{
    const char *key;
    json_t *v;

    json_object_foreach(obj, key, v) {
        const char *const *k = rule_keys;
        while (*k && strcmp(*k, key)) {
            k++;
        }
        if (!*k) {
            FIELD_ERR(errp, index, NULL, "unknown key '%s'", key);
            return -EINVAL;
        }
    }
    return 0;
}

/* The scalar fields that need no cross-checks. */
static int parse_simple(json_t *obj, InjectRule *r, const char **id,
                        const char **trigger, int index, Error **errp)
{
    json_t *once = json_object_get(obj, "once");
    int action = INJ_ACT_FAIL;

    if (get_str(obj, "id", id, index, errp) < 0 ||
        get_str(obj, "trigger-file", trigger, index, errp) < 0 ||
        get_int(obj, "after", 0, INT64_MAX, &r->after, index, errp) < 0 ||
        parse_event(obj, r, index, errp) < 0 ||
        parse_enum(obj, "action", action_names, ARRAY_SIZE(action_names),
                   &action, index, errp) < 0) {
        return -EINVAL;
    }
    if (*id && strlen(*id) > 127) {
        FIELD_ERR(errp, index, "id", "longer than 127 characters");
        return -EINVAL;
    }
    if (once && !json_is_boolean(once)) {
        FIELD_ERR(errp, index, "once", "expected a boolean");
        return -EINVAL;
    }
    r->once = json_is_true(once);
    r->action = action;
    return 0;
}

static int parse_fields(json_t *obj, InjectRule *r, const char **id,
                        const char **trigger, int index, Error **errp)
{
    if (!json_is_object(obj)) {
        FIELD_ERR(errp, index, NULL, "expected an object");
        return -EINVAL;
    }
    if (check_keys(obj, index, errp) < 0 ||
        parse_simple(obj, r, id, trigger, index, errp) < 0 ||
        parse_ops(obj, r, index, errp) < 0 ||
        parse_range(obj, r, index, errp) < 0 ||
        parse_probability(obj, r, index, errp) < 0 ||
        parse_phases(obj, r, index, errp) < 0 ||
        parse_errno(obj, r, index, errp) < 0 ||
        parse_delay(obj, r, index, errp) < 0) {
        return -EINVAL;
    }
    if (r->action == INJ_ACT_DROP_WRITE && (r->ops & ~INJ_OP_WRITES)) {
        FIELD_ERR(errp, index, "op", "action 'unsafe-drop-write' takes only "
                  "write, zeroes and discard");
        return -EINVAL;
    }
    return 0;
}

void inject_rule_free(InjectRule *r)
{
    pthread_mutex_destroy(&r->arm_lock);
    free(r->id);
    free(r->trigger_file);
    free(r);
}

InjectRule *inject_rule_parse(json_t *obj, int index, const char *default_id,
                              int64_t set_ns, const int64_t *node_seed,
                              Error **errp)
{
    InjectRule *r = calloc(1, sizeof(*r));
    const char *id = NULL, *trigger = NULL;
    bool has_seed = json_object_get(obj, "seed") != NULL;
    int64_t seed = 0;

    if (!r) {
        abort();
    }
    r->refcnt = 1;
    r->event = -1;
    r->set_ns = set_ns;
    pthread_mutex_init(&r->arm_lock, NULL);
    if (parse_fields(obj, r, &id, &trigger, index, errp) < 0 ||
        get_int(obj, "seed", INT64_MIN, INT64_MAX, &seed, index, errp) < 0) {
        inject_rule_free(r);
        return NULL;
    }
    r->id = strdup(id ? id : default_id);
    r->trigger_file = trigger ? strdup(trigger) : NULL;
    inject_rule_seed(r, has_seed ? &seed : NULL, node_seed);
    return r;
}

/* ------------------------------------------------------------ to JSON */

static json_t *ops_to_json(unsigned ops)
{
    json_t *a = json_array();

    for (size_t i = 0; i < ARRAY_SIZE(op_names); i++) {
        if (ops & (1u << i)) {
            json_array_append_new(a, json_string(op_names[i]));
        }
    }
    return a;
}

static void optional_fields_to_json(const InjectRule *r, json_t *o)
{
    if (r->has_range) {
        json_object_set_new(o, "offset", json_integer(r->offset));
        if (r->length >= 0) {
            json_object_set_new(o, "length", json_integer(r->length));
        }
    }
    if (r->event >= 0) {
        json_object_set_new(o, "event", json_string(bdrv_debug_event_name(r->event)));
    }
    if (r->trigger_file) {
        json_object_set_new(o, "trigger-file", json_string(r->trigger_file));
    }
    if (r->has_phases) {
        json_object_set_new(o, "up-ms", json_integer(r->up_ms));
        json_object_set_new(o, "down-ms", json_integer(r->down_ms));
    }
    if (r->action == INJ_ACT_DELAY || r->delay_ms || r->delay_max_ms >= 0) {
        json_object_set_new(o, "delay-ms", json_integer(r->delay_ms));
    }
    if (r->delay_max_ms >= 0) {
        json_object_set_new(o, "delay-max-ms", json_integer(r->delay_max_ms));
    }
    if (r->action == INJ_ACT_FAIL) {
        const char *name = inject_errno_name(r->err);
        json_object_set_new(o, "errno", name ? json_string(name)
                                             : json_integer(r->err));
    }
}

json_t *inject_rule_to_json(const InjectRule *r)
{
    json_t *o = json_pack("{s:s, s:o, s:s, s:f, s:I, s:b, s:I}", "id", r->id,
                          "op", ops_to_json(r->ops),
                          "action", action_names[r->action],
                          "probability", r->probability,
                          "after", (json_int_t)r->after, "once", r->once,
                          "seed", (json_int_t)r->seed);

    optional_fields_to_json(r, o);
    json_object_set_new(o, "matched", json_integer(atomic_load(&r->matched)));
    json_object_set_new(o, "fired", json_integer(atomic_load(&r->fired)));
    return o;
}

