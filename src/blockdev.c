/*
 * blockdev.c — typed access to node definitions and the options every node
 * takes.
 *
 * Definitions are JSON objects; a dotted key ("cache.direct") names a member
 * of a nested object ({"cache": {"direct": true}}).  The helpers are pure
 * functions of their arguments (callable anywhere); a definition that went
 * through blockdev_def_check() has the declared types, so the defaults
 * below only apply to absent keys.
 */
#include <stdlib.h>
#include <string.h>
#include "graph-internal.h"
#include "options.h"

static const char *const discard_values[] = { "ignore", "unmap", NULL };
static const char *const detect_zeroes_values[] = { "off", "on", "unmap", NULL };

const BlockOptionDesc bdrv_common_options[] = {
    { "driver", OPT_STRING, true, NULL, "the block driver" },
    { "node-name", OPT_STRING, false, NULL, "unique name of the node" },
    { "read-only", OPT_BOOL, false, NULL, "open read-only" },
    { "auto-read-only", OPT_BOOL, false, NULL,
      "fall back to read-only if writing is not possible" },
    { "force-share", OPT_BOOL, false, NULL,
      "share all permissions (read-only nodes only)" },
    { "discard", OPT_ENUM, false, discard_values, "ignore or unmap discards" },
    { "detect-zeroes", OPT_ENUM, false, detect_zeroes_values,
      "turn zero writes into write-zeroes" },
    { "cache.direct", OPT_BOOL, false, NULL, "bypass the host page cache" },
    { "cache.no-flush", OPT_BOOL, false, NULL, "ignore flush requests" },
    { NULL },
};

json_t *opt_lookup(json_t *opts, const char *dotted)
{
    json_t *v = opts;
    const char *p = dotted;
    while (v && json_is_object(v)) {
        const char *dot = strchr(p, '.');
        if (!dot) {
            return json_object_get(v, p);
        }
        char key[256];
        size_t n = (size_t)(dot - p);
        if (n >= sizeof(key)) {
            return NULL;
        }
        memcpy(key, p, n);
        key[n] = '\0';
        v = json_object_get(v, key);
        p = dot + 1;
    }
    return NULL;
}

void opt_set(json_t *opts, const char *dotted, json_t *val)
{
    const char *dot = strchr(dotted, '.');
    if (!dot) {
        json_object_set_new(opts, dotted, val);
        return;
    }
    char *key = strndup(dotted, dot - dotted);
    json_t *sub = json_object_get(opts, key);
    if (!json_is_object(sub)) {
        sub = json_object();
        json_object_set_new(opts, key, sub);
    }
    free(key);
    opt_set(sub, dot + 1, val);
}

void opts_inherit(json_t *child_def, json_t *parent_opts)
{
    static const char *const inherited[] = {
        "read-only", "auto-read-only", "cache.direct", "cache.no-flush",
        "discard",
    };
    for (size_t i = 0; i < ARRAY_SIZE(inherited); i++) {
        json_t *pv = opt_lookup(parent_opts, inherited[i]);
        if (pv && !opt_lookup(child_def, inherited[i])) {
            opt_set(child_def, inherited[i], json_deep_copy(pv));
        }
    }
}

const char *opt_str(json_t *opts, const char *key, const char *def)
{
    json_t *v = opt_lookup(opts, key);
    return json_is_string(v) ? json_string_value(v) : def;
}

bool opt_bool(json_t *opts, const char *key, bool def)
{
    json_t *v = opt_lookup(opts, key);
    bool b;
    if (json_is_boolean(v)) {
        return json_is_true(v);
    }
    if (json_is_string(v) && parse_bool(json_string_value(v), &b)) {
        return b;
    }
    return def;
}

int64_t opt_int(json_t *opts, const char *key, int64_t def)
{
    json_t *v = opt_lookup(opts, key);
    uint64_t u;
    if (json_is_integer(v)) {
        return json_integer_value(v);
    }
    if (json_is_string(v) && parse_size(json_string_value(v), &u) && u <= INT64_MAX) {
        return (int64_t)u;
    }
    return def;
}
