/*
 * options.c — definitions in QEMU's two syntaxes (JSON and dotted
 * key=value), checked and typed against option tables.
 *
 * Error messages follow QEMU's where QEMU has one ("Parameter 'x' is
 * unexpected", "Parameter 'x' is missing", "Invalid parameter type for 'x',
 * expected: boolean", ...), with nested keys named in full ("file.filename").
 *
 * Thread-safety: pure functions of their arguments (the driver registry they
 * consult is fixed after start-up).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "graph-internal.h"
#include "options.h"

/* ---- scalars ---- */

bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "on", "true", "yes" };
    static const char *const no[] = { "off", "false", "no" };
    for (size_t i = 0; s && i < ARRAY_SIZE(yes); i++) {
        if (!strcmp(s, yes[i])) {
            *out = true;
            return true;
        }
        if (!strcmp(s, no[i])) {
            *out = false;
            return true;
        }
    }
    return false;
}

static int suffix_shift(char c)
{
    switch (tolower((unsigned char)c)) {
    case 'b': return 0;
    case 'k': return 10;
    case 'm': return 20;
    case 'g': return 30;
    case 't': return 40;
    case 'p': return 50;
    case 'e': return 60;
    default:  return -1;
    }
}

bool parse_size(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)s[0])) {
        return false;
    }
    char *end;
    errno = 0;
    unsigned long long whole = strtoull(s, &end, 10);
    if (errno) {
        return false;
    }
    double frac = 0;
    if (*end == '.') {
        char *fend;
        frac = strtod(end, &fend);
        if (fend == end + 1) {
            return false;             /* "1." */
        }
        end = fend;
    }
    int shift = 0;
    if (*end) {
        shift = suffix_shift(*end);
        if (shift < 0 || end[1]) {
            return false;
        }
    } else if (frac != 0) {
        return false;                 /* fractions of a byte */
    }
    if (shift && whole > (UINT64_MAX >> shift)) {
        return false;
    }
    uint64_t v = (uint64_t)whole << shift;
    double extra = frac * (double)(1ULL << shift);
    if (extra >= (double)(UINT64_MAX - v)) {
        return false;
    }
    *out = v + (uint64_t)extra;
    return true;
}

/* ---- key=value ---- */

/* Reads a value up to an unescaped ',' (",," is a literal comma). */
static const char *read_value(const char *p, char **out)
{
    size_t cap = strlen(p) + 1, n = 0;
    char *v = malloc(cap);
    if (!v) {
        abort();
    }
    while (*p) {
        if (*p == ',') {
            if (p[1] != ',') {
                break;
            }
            p++;
        }
        v[n++] = *p++;
    }
    v[n] = '\0';
    *out = v;
    return p;
}

/* Puts value at dotted key in obj, creating nested objects; later values
 * replace earlier ones, as in QEMU. */
static int keyval_put(json_t *obj, const char *key, const char *value,
                      Error **errp)
{
    const char *seg = key;
    json_t *cur = obj;
    for (;;) {
        const char *dot = strchr(seg, '.');
        size_t n = dot ? (size_t)(dot - seg) : strlen(seg);
        if (n == 0) {
            error_setg(errp, "Invalid parameter '%s'", key);
            return -EINVAL;
        }
        char *name = strndup(seg, n);
        json_t *old = json_object_get(cur, name);
        if (!dot) {
            if (old && !json_is_string(old)) {
                error_setg(errp, "Parameters '%s.*' used inconsistently", key);
                free(name);
                return -EINVAL;
            }
            json_object_set_new(cur, name, json_string(value));
            free(name);
            return 0;
        }
        if (old && !json_is_object(old)) {
            error_setg(errp, "Parameters '%.*s.*' used inconsistently",
                       (int)(dot - key), key);
            free(name);
            return -EINVAL;
        }
        if (!old) {
            old = json_object();
            json_object_set_new(cur, name, old);
        }
        free(name);
        cur = old;
        seg = dot + 1;
    }
}

json_t *keyval_parse(const char *text, Error **errp)
{
    json_t *obj = json_object();
    const char *p = text;
    while (*p) {
        size_t klen = strcspn(p, "=,");
        char *key = strndup(p, klen);
        p += klen;
        if (*p != '=') {
            if (klen == 0) {
                error_setg(errp, "Invalid parameter ''");
            } else {
                error_setg(errp, "Expected '=' after parameter '%s'", key);
            }
            free(key);
            json_decref(obj);
            return NULL;
        }
        char *value;
        p = read_value(p + 1, &value);
        int ret = keyval_put(obj, key, value, errp);
        free(key);
        free(value);
        if (ret < 0) {
            json_decref(obj);
            return NULL;
        }
        if (*p == ',') {
            p++;
            if (!*p) {
                error_setg(errp, "Invalid parameter ''");
                json_decref(obj);
                return NULL;
            }
        }
    }
    return obj;
}

bool defn_is_json(const char *text)
{
    while (isspace((unsigned char)*text)) {
        text++;
    }
    return *text == '{';
}

json_t *defn_parse(const char *text, Error **errp)
{
    const char *p = text;
    while (isspace((unsigned char)*p)) {
        p++;
    }
    if (!defn_is_json(p)) {
        return keyval_parse(text, errp);
    }
    json_error_t jerr;
    json_t *obj = json_loads(p, 0, &jerr);
    if (!obj) {
        error_setg(errp, "JSON parse error at column %d: %s", jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(obj)) {
        error_setg(errp, "Invalid definition: expected a JSON object");
        json_decref(obj);
        return NULL;
    }
    return obj;
}

/* ---- checking against tables ---- */

typedef struct CheckCtx {
    const BlockOptionDesc *table;
    const char *errprefix;      /* "file." for a nested definition */
    bool coerce;
    bool children;              /* recurse into nested child definitions */
} CheckCtx;

static int def_check(json_t *def, bool coerce, const char *errprefix, Error **errp);

static const BlockOptionDesc *find_desc(const BlockOptionDesc *t, const char *name)
{
    for (; t->name; t++) {
        if (!strcmp(t->name, name)) {
            return t;
        }
    }
    return NULL;
}

static bool has_members(const BlockOptionDesc *t, const char *prefix)
{
    size_t n = strlen(prefix);
    for (; t->name; t++) {
        if (!strncmp(t->name, prefix, n) && t->name[n] == '.') {
            return true;
        }
    }
    return false;
}

static int type_error(Error **errp, const CheckCtx *cx, const char *name,
                      const char *expected)
{
    error_setg(errp, "Invalid parameter type for '%s%s', expected: %s",
               cx->errprefix, name, expected);
    return -EINVAL;
}

static int check_bool(json_t *obj, const char *key, json_t *v,
                      const CheckCtx *cx, const char *name, Error **errp)
{
    bool b;
    if (json_is_boolean(v)) {
        return 0;
    }
    if (!cx->coerce || !json_is_string(v)) {
        return type_error(errp, cx, name, "boolean");
    }
    if (!parse_bool(json_string_value(v), &b)) {
        error_setg(errp, "Parameter '%s%s' expects 'on' or 'off'", cx->errprefix, name);
        return -EINVAL;
    }
    json_object_set_new(obj, key, json_boolean(b));
    return 0;
}

static int check_int(json_t *obj, const char *key, json_t *v, bool size,
                     const CheckCtx *cx, const char *name, Error **errp)
{
    if (json_is_integer(v)) {
        if (size && json_integer_value(v) < 0) {
            error_setg(errp, "Parameter '%s%s' expects a size", cx->errprefix, name);
            return -EINVAL;
        }
        return 0;
    }
    if (!cx->coerce || !json_is_string(v)) {
        return type_error(errp, cx, name, size ? "size" : "integer");
    }
    const char *s = json_string_value(v);
    uint64_t u;
    char *end;
    long long ll;
    if (size) {
        if (!parse_size(s, &u) || u > INT64_MAX) {
            error_setg(errp, "Parameter '%s%s' expects a size", cx->errprefix, name);
            return -EINVAL;
        }
        ll = (long long)u;
    } else {
        errno = 0;
        ll = strtoll(s, &end, 0);
        if (!*s || *end || errno) {
            error_setg(errp, "Parameter '%s%s' expects an integer", cx->errprefix, name);
            return -EINVAL;
        }
    }
    json_object_set_new(obj, key, json_integer(ll));
    return 0;
}

static int check_enum(json_t *v, const BlockOptionDesc *d, const CheckCtx *cx,
                      const char *name, Error **errp)
{
    if (!json_is_string(v)) {
        return type_error(errp, cx, name, "string");
    }
    for (const char *const *e = d->enum_values; e && *e; e++) {
        if (!strcmp(*e, json_string_value(v))) {
            return 0;
        }
    }
    error_setg(errp, "Parameter '%s%s' does not accept value '%s'",
               cx->errprefix, name, json_string_value(v));
    return -EINVAL;
}

static int check_child(json_t *obj, const char *key, json_t *v,
                       const BlockOptionDesc *d, const CheckCtx *cx,
                       const char *name, Error **errp)
{
    bool nullable = d->type == OPT_CHILD_OR_NULL;
    if (nullable && cx->coerce && json_is_string(v) &&
        !strcmp(json_string_value(v), "null")) {
        json_object_set_new(obj, key, json_null());   /* key=value: backing=null */
        return 0;
    }
    if (json_is_string(v) || (nullable && json_is_null(v))) {
        return 0;
    }
    if (!json_is_object(v)) {
        return type_error(errp, cx, name, "string or object");
    }
    if (!cx->children) {
        return 0;
    }
    char prefix[1024];
    if (snprintf(prefix, sizeof(prefix), "%s%s.", cx->errprefix, name) >=
        (int)sizeof(prefix)) {
        error_setg(errp, "Parameter name too long");
        return -EINVAL;
    }
    return def_check(v, cx->coerce, prefix, errp);
}

/* OPT_JSON: any value, but key=value (coerce) only has strings for it. */
static int check_json(json_t *v, const CheckCtx *cx, const char *name,
                      Error **errp)
{
    if (cx->coerce && json_is_string(v)) {
        error_setg(errp, "Parameter '%s%s' needs the JSON syntax", cx->errprefix,
                   name);
        return -EINVAL;
    }
    return 0;
}

static int check_value(json_t *obj, const char *key, json_t *v,
                       const BlockOptionDesc *d, const CheckCtx *cx,
                       const char *name, Error **errp)
{
    switch (d->type) {
    case OPT_STRING:
        return json_is_string(v) ? 0 : type_error(errp, cx, name, "string");
    case OPT_BOOL:
        return check_bool(obj, key, v, cx, name, errp);
    case OPT_INT:
        return check_int(obj, key, v, false, cx, name, errp);
    case OPT_SIZE:
        return check_int(obj, key, v, true, cx, name, errp);
    case OPT_ENUM:
        return check_enum(v, d, cx, name, errp);
    case OPT_CHILD:
    case OPT_CHILD_OR_NULL:
        return check_child(obj, key, v, d, cx, name, errp);
    case OPT_JSON:
        return check_json(v, cx, name, errp);
    }
    return 0;
}

/* Checks the members of obj, whose dotted path in the table is `path`. */
static int check_members(json_t *obj, const char *path, const CheckCtx *cx,
                         Error **errp)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        char name[512];
        if (snprintf(name, sizeof(name), "%s%s%s", path, *path ? "." : "",
                     key) >= (int)sizeof(name)) {
            error_setg(errp, "Parameter name too long");
            return -EINVAL;
        }
        const BlockOptionDesc *d = find_desc(cx->table, name);
        int ret;
        if (d) {
            ret = check_value(obj, key, v, d, cx, name, errp);
        } else if (has_members(cx->table, name)) {
            ret = json_is_object(v) ? check_members(v, name, cx, errp)
                                    : type_error(errp, cx, name, "object");
        } else {
            error_setg(errp, "Parameter '%s%s' is unexpected", cx->errprefix, name);
            ret = -EINVAL;
        }
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int check_required(json_t *obj, const CheckCtx *cx, Error **errp)
{
    for (const BlockOptionDesc *d = cx->table; d->name; d++) {
        if (d->required && !opt_lookup(obj, d->name)) {
            error_setg(errp, "Parameter '%s%s' is missing", cx->errprefix, d->name);
            return -EINVAL;
        }
    }
    return 0;
}

static int check_with(json_t *obj, const CheckCtx *cx, Error **errp)
{
    if (!json_is_object(obj)) {
        error_setg(errp, "Invalid parameter type for '%s', expected: object",
                   cx->errprefix[0] ? cx->errprefix : "definition");
        return -EINVAL;
    }
    int ret = check_members(obj, "", cx, errp);
    return ret < 0 ? ret : check_required(obj, cx, errp);
}

int opts_check(json_t *obj, const BlockOptionDesc *table, bool coerce,
               Error **errp)
{
    CheckCtx cx = { .table = table, .errprefix = "", .coerce = coerce };
    return check_with(obj, &cx, errp);
}

/* The driver's options after the common ones, in one table. */
static BlockOptionDesc *merged_table(const BlockDriver *drv)
{
    size_t n = 0, m = 0;
    while (bdrv_common_options[n].name) {
        n++;
    }
    while (drv->options && drv->options[m].name) {
        m++;
    }
    BlockOptionDesc *t = calloc(n + m + 1, sizeof(*t));
    if (!t) {
        abort();
    }
    memcpy(t, bdrv_common_options, n * sizeof(*t));
    if (m) {
        memcpy(t + n, drv->options, m * sizeof(*t));
    }
    return t;
}

static int def_check(json_t *def, bool coerce, const char *errprefix, Error **errp)
{
    if (!json_is_object(def)) {
        error_setg(errp, "Invalid parameter type for '%s', expected: object",
                   errprefix[0] ? errprefix : "definition");
        return -EINVAL;
    }
    json_t *jd = json_object_get(def, "driver");
    if (!jd) {
        error_setg(errp, "Parameter '%sdriver' is missing", errprefix);
        return -EINVAL;
    }
    if (!json_is_string(jd)) {
        error_setg(errp, "Invalid parameter type for '%sdriver', expected: string",
                   errprefix);
        return -EINVAL;
    }
    const BlockDriver *drv = driver_lookup(json_string_value(jd));
    if (!drv) {
        error_setg(errp, "Parameter '%sdriver' does not accept value '%s'",
                   errprefix, json_string_value(jd));
        return -EINVAL;
    }
    BlockOptionDesc *table = merged_table(drv);
    CheckCtx cx = { .table = table, .errprefix = errprefix, .coerce = coerce,
                    .children = true };
    int ret = check_with(def, &cx, errp);
    free(table);
    return ret;
}

int blockdev_def_check(json_t *def, bool coerce, Error **errp)
{
    return def_check(def, coerce, "", errp);
}
