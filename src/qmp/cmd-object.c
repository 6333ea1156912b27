/*
 * cmd-object.c — QMP commands: object-add, object-del (iothread; throttle-group later).
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include "qmp/commands.h"

const QmpCommandDef qmp_object_commands[] = {
    { { NULL } },
};
