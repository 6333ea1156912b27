/*
 * cmd-reopen.c — QMP commands: blockdev-reopen.
 *
 * blockdev-reopen {options: [BlockdevOptions, ...]}: each element names an
 * existing node by node-name and gives its whole new definition; all are
 * reopened at once or none is (src/reopen.c).  Differences from QEMU 7.2:
 * an empty list is a no-op (qemu-storage-daemon 7.2 aborts on it), and a
 * node listed twice is refused (QEMU merges the two definitions).
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include "block-gs.h"
#include "qmp/commands.h"

static json_t *coroutine_fn blockdev_reopen(json_t *args, Error **errp)
{
    global_lock_assert_held();
    GS_CODE();
    if (bdrv_co_reopen_multiple(json_object_get(args, "options"), errp) < 0) {
        return NULL;
    }
    return json_object();
}

static const QmpArg reopen_args[] = {
    { "options", ARG_LIST, true },
    { NULL },
};

const QmpCommandDef qmp_reopen_commands[] = {
    { { "blockdev-reopen", blockdev_reopen,
        "reopen nodes with new definitions, all or nothing" }, reopen_args },
    { { NULL } },
};
