/*
 * cmd-snapshot.c — QMP commands: blockdev-snapshot, blockdev-snapshot-sync,
 * blockdev-snapshot-internal-sync, blockdev-snapshot-delete-internal-sync,
 * transaction, block_resize, change-backing-file.
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include "qmp/commands.h"

const QmpCommandDef qmp_snapshot_commands[] = {
    { { NULL } },
};
