/*
 * qmp-client.h — a small QMP client over a unix socket, for the client
 * verbs (client.c).  See qmp-client.c for the protocol facts it relies on.
 *
 * Threading: main thread of a short-lived process; not thread-safe.
 */
#ifndef DISKSTACK_CLI_QMP_CLIENT_H
#define DISKSTACK_CLI_QMP_CLIENT_H

#include <jansson.h>
#include "block-common.h"

typedef struct QmpConn {
    int fd;
    FILE *in;
    json_t *events;    /* events that arrived while we waited for replies */
} QmpConn;

/*
 * Connects to path, or (path NULL) to the only socket in the runtime
 * directory that accepts a connection (none or several: an error naming
 * them), then reads the greeting and negotiates capabilities.  On error
 * *c is still safe to qmp_conn_close().
 */
int qmp_conn_open(QmpConn *c, const char *path, Error **errp);
void qmp_conn_close(QmpConn *c);

/* Sends one message (a JSON object) as one line. */
int qmp_conn_send(QmpConn *c, json_t *msg, Error **errp);
/* The next message that is not an event; events go to c->events. */
json_t *qmp_conn_recv_reply(QmpConn *c, Error **errp);
/* Sends {"execute": cmd, "arguments": args} (args stolen, may be NULL) and
 * returns the whole reply: {"return": ...} or {"error": ...}. */
json_t *qmp_conn_call(QmpConn *c, const char *cmd, json_t *args, Error **errp);
/* A reply's "return" value (new reference), or NULL with *errp set to its
 * error's desc (class CommandNotFound kept, every other GenericError).
 * Frees reply. */
json_t *qmp_conn_reply_return(json_t *reply, Error **errp);
/* Runs a command: its return value (new reference) or NULL with *errp. */
json_t *qmp_conn_execute(QmpConn *c, const char *cmd, json_t *args, Error **errp);
/* Like qmp_conn_execute, for a command the daemon may not have (yet): *out
 * is NULL and 0 is returned when it answers CommandNotFound. */
int qmp_conn_execute_optional(QmpConn *c, const char *cmd, json_t *args,
                              json_t **out, Error **errp);
/* Waits up to timeout_s seconds for the event `name` whose data.id is id
 * (it may have arrived already, before a reply). */
int qmp_conn_wait_event(QmpConn *c, const char *name, const char *id,
                        int timeout_s, Error **errp);

#endif
