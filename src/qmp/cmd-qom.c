/*
 * cmd-qom.c — QMP qom-get and qom-set on the user-created objects.
 *
 * QEMU exposes every object as a tree of paths with typed properties; the
 * objects a user creates live under /objects.  We have only the objects of
 * object-add (cmd-object.c): IOThreads and throttle groups, so a path is
 * "/objects/ID" or, as QEMU's partial paths allow, just "ID".  Properties:
 *
 *   type                 every object: its qom-type (read-only)
 *   limits               throttle-group: the whole ThrottleLimits object;
 *                        qom-set changes only the keys it names
 *   x-iops-total, ...    throttle-group: one limit (read-only here: QEMU
 *                        refuses to set them after creation too)
 *
 * Errors as qemu-storage-daemon 7.2 words them: an unknown path is class
 * DeviceNotFound "Device 'P' not found"; an unknown property is "Property
 * 'TYPE.P' not found"; a read-only one "Property 'TYPE.P' is not writable".
 * The limits' own validation (and its messages) is throttle-group.c's.
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include <stdio.h>
#include <string.h>

#include "block-gs.h"
#include "filters/throttle.h"
#include "loop/loop.h"
#include "qmp/commands.h"

#define OBJECTS_DIR "/objects"

/* What a path names: an object of one of our types, or the container
 * /objects itself. */
typedef struct QomObject {
    const char *type;          /* "throttle-group", "iothread", "container" */
    ThrottleGroup *tg;         /* for a throttle-group */
} QomObject;

/* Pure: the object id in path ("/objects/ID" or "ID"), or NULL for a path
 * outside /objects. */
static const char *object_id_of(const char *path)
{
    const char *prefix = OBJECTS_DIR "/";

    if (!strncmp(path, prefix, strlen(prefix))) {
        return path + strlen(prefix);
    }
    return strchr(path, '/') ? NULL : path;
}

/* GS: resolves path; false with QEMU's DeviceNotFound error. */
static bool resolve_path(const char *path, QomObject *obj, Error **errp) GS
{
    const char *id = object_id_of(path);

    GS_CODE();
    *obj = (QomObject){ NULL };
    if (!strcmp(path, OBJECTS_DIR)) {
        obj->type = "container";
    } else if (id && *id && (obj->tg = throttle_group_find(id))) {
        obj->type = "throttle-group";
    } else if (id && *id && iothread_find(id)) {
        obj->type = "iothread";
    } else {
        error_set_class(errp, "DeviceNotFound", "Device '%s' not found", path);
        return false;
    }
    return true;
}

/* Pure: QEMU's error for a property the object does not have. */
static void property_not_found(const QomObject *obj, const char *prop, Error **errp)
{
    error_setg(errp, "Property '%s.%s' not found", obj->type, prop);
}

/* GS: the value of one limit property "x-NAME" of a group (new reference),
 * or NULL when the group has no limit NAME. */
static json_t *legacy_limit(ThrottleGroup *tg, const char *prop) GS
{
    json_t *limits, *v = NULL;

    GS_CODE();
    if (strncmp(prop, "x-", 2)) {
        return NULL;
    }
    limits = throttle_group_get_limits(tg);
    v = json_object_get(limits, prop + 2);
    json_incref(v);
    json_decref(limits);
    return v;
}

static json_t *coroutine_fn qom_get(json_t *args, Error **errp)
{
    const char *prop = json_string_value(json_object_get(args, "property"));
    QomObject obj;
    json_t *v;

    global_lock_assert_held();
    GS_CODE();
    if (!resolve_path(json_string_value(json_object_get(args, "path")), &obj, errp)) {
        return NULL;
    }
    if (!strcmp(prop, "type")) {
        return json_string(obj.type);
    }
    if (obj.tg && !strcmp(prop, "limits")) {
        return throttle_group_get_limits(obj.tg);
    }
    if (obj.tg && (v = legacy_limit(obj.tg, prop))) {
        return v;
    }
    property_not_found(&obj, prop, errp);
    return NULL;
}

static json_t *coroutine_fn qom_set(json_t *args, Error **errp)
{
    const char *prop = json_string_value(json_object_get(args, "property"));
    json_t *value = json_object_get(args, "value");
    QomObject obj;
    json_t *v;

    global_lock_assert_held();
    GS_CODE();
    if (!resolve_path(json_string_value(json_object_get(args, "path")), &obj, errp)) {
        return NULL;
    }
    if (!strcmp(prop, "type")) {
        error_setg(errp, "Property '%s.type' is not writable", obj.type);
        return NULL;
    }
    if (obj.tg && !strcmp(prop, "limits")) {
        if (!json_is_object(value)) {
            error_setg(errp, "Invalid parameter type for 'limits', expected: object");
            return NULL;
        }
        return throttle_group_set_limits(obj.tg, value, errp) < 0 ? NULL
                                                                   : json_object();
    }
    if (obj.tg && (v = legacy_limit(obj.tg, prop))) {
        /* QEMU's words: the x- limits are creation-time properties */
        json_decref(v);
        error_setg(errp, "Property cannot be set after initialization");
        return NULL;
    }
    property_not_found(&obj, prop, errp);
    return NULL;
}

static const QmpArg qom_get_args[] = {
    { "path", ARG_STR, true },
    { "property", ARG_STR, true },
    { NULL },
};

static const QmpArg qom_set_args[] = {
    { "path", ARG_STR, true },
    { "property", ARG_STR, true },
    { "value", ARG_ANY, true },
    { NULL },
};

const QmpCommandDef qmp_qom_commands[] = {
    { { "qom-get", qom_get, "read a property of an object (limits, type)" },
      qom_get_args },
    { { "qom-set", qom_set, "change a property of an object (limits)" },
      qom_set_args },
    { { NULL } },
};
