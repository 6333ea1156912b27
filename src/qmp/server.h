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
/* For a shutdown: closes the listener and removes the socket file; the
 * connected clients' further commands are not run (their input stays
 * unread), but events still reach them — a client sees the
 * BLOCK_JOB_CANCELLED and BLOCK_EXPORT_DELETED of the shutdown, as with
 * qemu-storage-daemon.  qmp_server_stop() follows. */
void qmp_server_quiesce(void) GS;
/* Closes the listener, removes the socket file and disconnects the clients
 * (a client whose command is running is closed when it finishes).  Safe to
 * call more than once. */
void qmp_server_stop(void) GS;
/* Sends {"event": name, "data": data, "timestamp": ...} to every client past
 * negotiation.  Steals data (may be NULL: an empty object). */
void qmp_emit_event(const char *name, json_t *data) GS;

/*
 * Sessions: a QMP client without a socket, for tests and fuzzing.  Input
 * goes through the same framing, JSON parsing, envelope, negotiation and
 * argument checks as a socket client's; replies collect in an output buffer
 * (events are not delivered to sessions).  A command for which may_run(name)
 * returns false only has its arguments checked (reply {"return": {}} when
 * they are valid); may_run NULL runs every command.  Commands run in
 * coroutines on the main loop: after qmp_session_input(), iterate the main
 * loop while qmp_session_busy().
 */
typedef struct QmpClient QmpClient;
typedef QmpClient QmpSession;
QmpSession *qmp_session_new(bool (*may_run)(const char *name)) GS;
/* Appends data to the session's input and processes what is complete. */
void qmp_session_input(QmpSession *s, const void *data, size_t len) GS;
bool qmp_session_busy(QmpSession *s) GS;
/* Everything replied so far (not NUL-terminated); valid until the next call. */
const char *qmp_session_output(QmpSession *s, size_t *len) GS;
/* Frees an idle session. */
void qmp_session_free(QmpSession *s) GS;

/* cmd-export.c.  The gone callback (block_export_set_gone_cb) of the
 * exports of a daemon with a QMP socket: main loop (GS).  An export whose
 * mount went away underneath us (fusermount3 -u) is deleted, as
 * qemu-storage-daemon does, so its node is released, and the clients get
 * BLOCK_EXPORT_DELETED; the daemon keeps serving the others. */
typedef struct BlockExport BlockExport;
void qmp_export_gone(BlockExport *exp, void *opaque) GS;

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
