/*
 * cmd-reopen.c — QMP commands: blockdev-reopen.
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include "qmp/commands.h"

const QmpCommandDef qmp_reopen_commands[] = {
    { { NULL } },
};
