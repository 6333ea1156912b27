/*
 * cmd-object.c — QMP commands on user-created objects: object-add,
 * object-del, query-iothreads.
 *
 * Object types: "iothread" and "throttle-group" (add a row to
 * object_types for another).  An IOThread's poll-max-ns,
 * poll-grow, poll-shrink and aio-max-batch are accepted, validated as QEMU
 * does and reported by query-iothreads, but change nothing: our loops wait
 * in io_uring and never busy-poll (see IOThreadParams in loop.h).
 *
 * object-del refuses an IOThread an export is served by, with QEMU's
 * "is in use" wording; qemu-storage-daemon 7.2 deletes it and crashes later.
 *
 * A throttle-group takes its limits as QEMU's ThrottleLimits object
 * ("limits": {"iops-total": 100, ...}) and, as QEMU still does, as the
 * legacy top-level "x-iops-total"-style keys; both may be given, and a key
 * in "limits" wins over its x- twin (qemu-storage-daemon 7.2 does the same).
 * Validation and the groups themselves are filters/throttle-group.c's.
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "driver.h"   /* before export.h: its option table needs the type */
#include "filters/throttle.h"
#include "fuse/export.h"
#include "loop/loop.h"
#include "qmp/commands.h"

typedef struct ObjectType {
    const char *name;
    const QmpArg *args;            /* includes qom-type and id */
    /* GS: creates object id from checked args; -1 with *errp set. */
    int (*add)(const char *id, json_t *args, Error **errp);
    /* GS: true if this type has an object called id. */
    bool (*exists)(const char *id);
    /* GS: deletes object id (it exists); -1 with *errp set. */
    int (*del)(const char *id, Error **errp);
} ObjectType;

/* ------------------------------------------------------------ iothread */

static const QmpArg iothread_args[] = {
    { "qom-type", ARG_STR, true },
    { "id", ARG_STR, true },
    { "poll-max-ns", ARG_INT, false },
    { "poll-grow", ARG_INT, false },
    { "poll-shrink", ARG_INT, false },
    { "aio-max-batch", ARG_INT, false },
    { NULL },
};

/* Pure: reads one tuning knob, refusing a negative value as QEMU does. */
static int read_param(json_t *args, const char *name, int64_t *out, Error **errp)
{
    json_t *v = json_object_get(args, name);

    if (!v) {
        return 0;
    }
    if (json_integer_value(v) < 0) {
        error_setg(errp, "%s value must be in range [0, %lld]", name,
                   (long long)INT64_MAX);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

static int iothread_add(const char *id, json_t *args, Error **errp) GS
{
    IOThreadParams p = { .poll_max_ns = IOTHREAD_POLL_MAX_NS_DEFAULT };
    IOThread *t;

    GS_CODE();
    if (read_param(args, "poll-max-ns", &p.poll_max_ns, errp) < 0 ||
        read_param(args, "poll-grow", &p.poll_grow, errp) < 0 ||
        read_param(args, "poll-shrink", &p.poll_shrink, errp) < 0 ||
        read_param(args, "aio-max-batch", &p.aio_max_batch, errp) < 0) {
        return -1;
    }
    /* Waits only until the new thread runs its loop: milliseconds. */
    t = iothread_create(id);
    iothread_set_params(t, &p);
    return 0;
}

static bool iothread_exists(const char *id) GS
{
    GS_CODE();
    return iothread_find(id) != NULL;
}

/* GS: the export served by t, or NULL. */
static BlockExport *export_using(IOThread *t) GS
{
    GS_CODE();
    for (BlockExport *e = block_export_next(NULL); e; e = block_export_next(e)) {
        if (block_export_uses_iothread(e, t)) {
            return e;
        }
    }
    return NULL;
}

static int iothread_del(const char *id, Error **errp) GS
{
    IOThread *t = iothread_find(id);

    GS_CODE();
    if (export_using(t)) {
        error_setg(errp, "object '%s' is in use, can not be deleted", id);
        return -1;
    }
    iothread_destroy(t);
    return 0;
}

/* ------------------------------------------------------------ throttle-group */

/* The legacy keys are ThrottleLimits' names with "x-" in front. */
#define LEGACY_LIMIT(name) { "x-" name, ARG_INT, false }

static const QmpArg throttle_group_args[] = {
    { "qom-type", ARG_STR, true },
    { "id", ARG_STR, true },
    { "limits", ARG_OBJECT, false },
    LEGACY_LIMIT("iops-total"), LEGACY_LIMIT("iops-total-max"),
    LEGACY_LIMIT("iops-total-max-length"),
    LEGACY_LIMIT("iops-read"), LEGACY_LIMIT("iops-read-max"),
    LEGACY_LIMIT("iops-read-max-length"),
    LEGACY_LIMIT("iops-write"), LEGACY_LIMIT("iops-write-max"),
    LEGACY_LIMIT("iops-write-max-length"),
    LEGACY_LIMIT("bps-total"), LEGACY_LIMIT("bps-total-max"),
    LEGACY_LIMIT("bps-total-max-length"),
    LEGACY_LIMIT("bps-read"), LEGACY_LIMIT("bps-read-max"),
    LEGACY_LIMIT("bps-read-max-length"),
    LEGACY_LIMIT("bps-write"), LEGACY_LIMIT("bps-write-max"),
    LEGACY_LIMIT("bps-write-max-length"),
    LEGACY_LIMIT("iops-size"),
    { NULL },
};

/* Pure: one ThrottleLimits object from the checked arguments: the x- keys
 * first, then "limits" over them (new reference). */
static json_t *merged_limits(json_t *args)
{
    json_t *limits = json_object();
    const char *key;
    json_t *val;

    json_object_foreach(args, key, val) {
        if (!strncmp(key, "x-", 2)) {
            json_object_set(limits, key + 2, val);
        }
    }
    json_object_update(limits, json_object_get(args, "limits"));
    return limits;
}

static int throttle_group_add(const char *id, json_t *args, Error **errp) GS
{
    json_t *limits = merged_limits(args);
    int ret;

    GS_CODE();
    ret = throttle_group_create(id, limits, errp);
    json_decref(limits);
    return ret;
}

static bool throttle_group_exists(const char *id) GS
{
    GS_CODE();
    return throttle_group_find(id) != NULL;
}

/* throttle_group_delete refuses a group a throttle node uses. */
static int throttle_group_del(const char *id, Error **errp) GS
{
    GS_CODE();
    return throttle_group_delete(id, errp);
}

static const ObjectType object_types[] = {
    { "iothread", iothread_args, iothread_add, iothread_exists, iothread_del },
    { "throttle-group", throttle_group_args, throttle_group_add,
      throttle_group_exists, throttle_group_del },
};

/* ------------------------------------------------------------ commands */

static const ObjectType *find_type(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(object_types); i++) {
        if (!strcmp(object_types[i].name, name)) {
            return &object_types[i];
        }
    }
    return NULL;
}

/* GS: the type that has an object called id, or NULL. */
static const ObjectType *type_of_object(const char *id) GS
{
    GS_CODE();
    for (size_t i = 0; i < ARRAY_SIZE(object_types); i++) {
        if (object_types[i].exists(id)) {
            return &object_types[i];
        }
    }
    return NULL;
}

static json_t *coroutine_fn object_add(json_t *args, Error **errp)
{
    static const QmpArg type_arg[] = { { "qom-type", ARG_STR, true }, { NULL } };
    json_t *qom_type = json_object_get(args, "qom-type");
    json_t *type_only = json_object();
    const ObjectType *type;
    const char *id;
    int ret;

    global_lock_assert_held();
    GS_CODE();
    /* qom-type first: it decides which other arguments exist */
    if (qom_type) {
        json_object_set(type_only, "qom-type", qom_type);
    }
    ret = qmp_check_args(type_arg, type_only, errp);
    json_decref(type_only);
    if (ret < 0) {
        return NULL;
    }
    type = find_type(json_string_value(json_object_get(args, "qom-type")));
    if (!type) {
        error_setg(errp, "Parameter 'qom-type' does not accept value '%s'",
                   json_string_value(json_object_get(args, "qom-type")));
        return NULL;
    }
    if (qmp_check_args(type->args, args, errp) < 0) {
        return NULL;
    }
    id = json_string_value(json_object_get(args, "id"));
    if (type_of_object(id)) {
        error_setg(errp, "attempt to add duplicate property '%s' to object "
                   "(type 'container')", id);
        return NULL;
    }
    return type->add(id, args, errp) < 0 ? NULL : json_object();
}

static json_t *coroutine_fn object_del(json_t *args, Error **errp)
{
    const char *id = json_string_value(json_object_get(args, "id"));
    const ObjectType *type;

    global_lock_assert_held();
    GS_CODE();
    type = type_of_object(id);
    if (!type) {
        error_setg(errp, "object '%s' not found", id);
        return NULL;
    }
    return type->del(id, errp) < 0 ? NULL : json_object();
}

/* GS: one IOThreadInfo. */
static json_t *iothread_info(IOThread *t) GS
{
    IOThreadParams p;

    GS_CODE();
    iothread_get_params(t, &p);
    return json_pack("{s:s,s:i,s:I,s:I,s:I,s:I}", "id", iothread_id(t),
                     "thread-id", (int)iothread_thread_id(t),
                     "poll-max-ns", (json_int_t)p.poll_max_ns,
                     "poll-grow", (json_int_t)p.poll_grow,
                     "poll-shrink", (json_int_t)p.poll_shrink,
                     "aio-max-batch", (json_int_t)p.aio_max_batch);
}

static json_t *coroutine_fn query_iothreads(json_t *args, Error **errp)
{
    json_t *list = json_array();

    global_lock_assert_held();
    GS_CODE();
    for (int i = 0; i < iothread_count(); i++) {
        json_array_append_new(list, iothread_info(iothread_nth(i)));
    }
    return list;
}

static const QmpArg no_args[] = { { NULL } };
static const QmpArg id_arg[] = { { "id", ARG_STR, true }, { NULL } };

const QmpCommandDef qmp_object_commands[] = {
    /* arguments depend on qom-type: object_add checks them */
    { { "object-add", object_add, "create an object (iothread, throttle-group)" }, NULL },
    { { "object-del", object_del, "delete an object nothing uses" }, id_arg },
    { { "query-iothreads", query_iothreads, "the IOThreads" }, no_args },
    { { NULL } },
};
