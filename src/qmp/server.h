/*
 * server.h — the QMP control socket (QEMU Machine Protocol, JSON lines on a
 * unix socket), as in qemu-storage-daemon's --monitor.
 *
 * server.c owns the listener, the clients, the greeting, capability
 * negotiation, framing and event broadcast; commands.c owns the command
 * table.  Everything is GS: main thread, global lock, main loop.  Each
 * command runs in its own coroutine on the main loop.
 */
#ifndef DISKSTACK_QMP_SERVER_H
#define DISKSTACK_QMP_SERVER_H

#include <jansson.h>
#include "block-common.h"

/* Listens on a unix socket at path (mode 0600).  Refuses a path that exists
 * unless it is a stale socket (nobody accepts on it). */
int qmp_server_start(const char *path, Error **errp) GS;
/* Closes the listener, removes the socket file and disconnects the clients
 * (a client whose command is running is closed when it finishes).  Safe to
 * call more than once. */
void qmp_server_stop(void) GS;
/* Sends {"event": name, "data": data, "timestamp": ...} to every client past
 * negotiation.  Steals data (may be NULL: an empty object). */
void qmp_emit_event(const char *name, json_t *data) GS;

/* commands.c */

/* A handler: args is the "arguments" object (never NULL; already checked
 * against the argument table).  Returns the "return" value (new reference),
 * or NULL with *errp set; the error class is the Error's class (GenericError
 * when none). */
typedef json_t *coroutine_fn QmpHandler(json_t *args, Error **errp);

typedef struct QmpCommand {
    const char *name;
    QmpHandler *handler;
    const char *doc;
} QmpCommand;

/* The command called name, or NULL. */
const QmpCommand *qmp_find_command(const char *name);
/* Runs cmd with args (GS, coroutine). */
json_t *coroutine_fn qmp_dispatch(const QmpCommand *cmd, json_t *args,
                                  Error **errp) GS;
/* For query-version and the greeting. */
json_t *qmp_version_json(void);

#endif
