/*
 * qmp-client.c — the client side of QMP for the diskstack client verbs:
 * connecting (to a given socket, or to the one daemon whose socket in the
 * runtime directory accepts), the greeting and capabilities negotiation,
 * commands and their replies, events kept aside; and the runtime directory
 * itself, which the daemons use for their default sockets.
 *
 * QMP sends one JSON object per line; a reply is the next message that is
 * not an event ({"event": ...}).  Waiting has no time limit once connected
 * (a snapshot under load may take a while), except for the greeting of a
 * socket that accepted us and for qmp_conn_wait_event().
 *
 * Threading: main thread of a short-lived process (or of a daemon before
 * its runtime starts, for the runtime directory); no block-layer state.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli/client.h"
#include "cli/qmp-client.h"

/* Seconds to wait for the greeting of a daemon that accepted us. */
#define HANDSHAKE_TIMEOUT_S 10

/* ---------------------------------------------------------------- runtime dir */

/* The path of the runtime directory (malloc'ed), or NULL without memory. */
static char *runtime_dir_path(void)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    char *path = NULL;

    if (xdg && *xdg) {
        return asprintf(&path, "%s/diskstack", xdg) < 0 ? NULL : path;
    }
    if (geteuid() == 0) {
        return strdup("/run/diskstack");
    }
    return asprintf(&path, "/tmp/diskstack-%u", (unsigned)geteuid()) < 0 ?
           NULL : path;
}

/* The directory must be ours: another user's directory, or a symlink planted
 * in /tmp, would let someone else see or replace our sockets. */
static int check_runtime_dir(const char *path, Error **errp)
{
    struct stat st;

    if (lstat(path, &st) < 0) {
        error_setg_errno(errp, errno, "cannot use runtime directory '%s'", path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        error_setg(errp, "runtime directory '%s' is not a directory", path);
        return -1;
    }
    if (st.st_uid != geteuid()) {
        error_setg(errp, "runtime directory '%s' belongs to another user", path);
        return -1;
    }
    return 0;
}

char *cli_runtime_dir(bool create, Error **errp)
{
    char *path = runtime_dir_path();

    if (!path) {
        error_setg(errp, "out of memory");
        return NULL;
    }
    if (create && mkdir(path, 0700) < 0 && errno != EEXIST) {
        error_setg_errno(errp, errno, "cannot create runtime directory '%s'", path);
        free(path);
        return NULL;
    }
    if (check_runtime_dir(path, errp) < 0) {
        free(path);
        return NULL;
    }
    /* ours, but maybe made by hand with a umask that lets others look in */
    if (create && chmod(path, 0700) < 0) {
        error_setg_errno(errp, errno, "cannot chmod runtime directory '%s'", path);
        free(path);
        return NULL;
    }
    return path;
}

char *cli_default_qmp_path(const char *kind, Error **errp)
{
    char *dir = cli_runtime_dir(true, errp);
    char *path = NULL;

    if (dir && asprintf(&path, "%s/%s-%d.qmp", dir, kind, (int)getpid()) < 0) {
        error_setg(errp, "out of memory");
        path = NULL;
    }
    free(dir);
    return path;
}

/* ---------------------------------------------------------------- QMP connection */

/* A connected unix stream socket, or -1 with *errp set. */
static int unix_connect(const char *path, Error **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        error_setg(errp, "socket path '%s' is too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        error_setg_errno(errp, errno, "socket");
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        error_setg_errno(errp, errno, "cannot connect to '%s'", path);
        close(fd);
        return -1;
    }
    return fd;
}

/* 0 seconds: block for ever (commands may legitimately take long). */
static void set_recv_timeout(int fd, int seconds)
{
    struct timeval tv = { .tv_sec = seconds };

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* The next message from the daemon (a JSON object), or NULL with *errp. */
static json_t *qmp_recv(QmpConn *c, Error **errp)
{
    char *line = NULL;
    size_t cap = 0;
    json_error_t jerr;
    json_t *msg;

    errno = 0;
    if (getline(&line, &cap, c->in) <= 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            error_setg(errp, "the daemon did not answer in time");
        } else if (errno) {
            error_setg_errno(errp, errno, "cannot read from the daemon");
        } else {
            error_setg(errp, "the daemon closed the connection");
        }
        free(line);
        return NULL;
    }
    msg = json_loads(line, 0, &jerr);
    free(line);
    if (!json_is_object(msg)) {
        error_setg(errp, "the daemon sent something that is not QMP: %s",
                   msg ? "not a JSON object" : jerr.text);
        json_decref(msg);
        return NULL;
    }
    return msg;
}

/* The next message that is not an event; events go to c->events. */
json_t *qmp_conn_recv_reply(QmpConn *c, Error **errp)
{
    json_t *msg;

    while ((msg = qmp_recv(c, errp)) && json_object_get(msg, "event")) {
        json_array_append_new(c->events, msg);
    }
    return msg;
}

/* Sends one message (a JSON object) as one line. */
int qmp_conn_send(QmpConn *c, json_t *msg, Error **errp)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    size_t len, done = 0;
    ssize_t n;

    if (!text) {
        error_setg(errp, "cannot encode the command as JSON");
        return -1;
    }
    len = strlen(text);
    text[len++] = '\n';   /* json_dumps's NUL becomes the line end */
    while (done < len) {
        n = send(c->fd, text + done, len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            error_setg_errno(errp, errno, "cannot send to the daemon");
            free(text);
            return -1;
        }
        done += n;
    }
    free(text);
    return 0;
}

/* Sends {"execute": cmd, "arguments": args} (args stolen, may be NULL) and
 * returns the whole reply: {"return": ...} or {"error": ...}. */
json_t *qmp_conn_call(QmpConn *c, const char *cmd, json_t *args, Error **errp)
{
    json_t *msg = json_pack("{s:s}", "execute", cmd);
    int ret;

    if (args) {
        json_object_set_new(msg, "arguments", args);
    }
    ret = qmp_conn_send(c, msg, errp);
    json_decref(msg);
    return ret < 0 ? NULL : qmp_conn_recv_reply(c, errp);
}

/* Takes a reply apart: its "return" value (new reference), or NULL with
 * *errp set to the error's desc.  The class is kept only as far as the
 * callers care: CommandNotFound or GenericError.  Frees reply. */
json_t *qmp_conn_reply_return(json_t *reply, Error **errp)
{
    json_t *ret = json_incref(json_object_get(reply, "return"));
    json_t *err = json_object_get(reply, "error");
    const char *cls = json_string_value(json_object_get(err, "class"));
    const char *desc = json_string_value(json_object_get(err, "desc"));

    if (!ret) {
        error_set_class(errp, cls && !strcmp(cls, "CommandNotFound") ?
                        "CommandNotFound" : "GenericError",
                        "%s", desc ? desc : "the daemon sent a reply without "
                        "'return' or 'error'");
    }
    json_decref(reply);
    return ret;
}

/* Runs a command: its return value (new reference) or NULL with *errp. */
json_t *qmp_conn_execute(QmpConn *c, const char *cmd, json_t *args, Error **errp)
{
    json_t *reply = qmp_conn_call(c, cmd, args, errp);

    return reply ? qmp_conn_reply_return(reply, errp) : NULL;
}

/* Like qmp_conn_execute, for a command the daemon may not have (yet): *out is
 * NULL and 0 is returned when it answers CommandNotFound. */
int qmp_conn_execute_optional(QmpConn *c, const char *cmd, json_t *args,
                              json_t **out, Error **errp)
{
    Error *err = NULL;

    *out = qmp_conn_execute(c, cmd, args, &err);
    if (*out) {
        return 0;
    }
    if (err->cls && !strcmp(err->cls, "CommandNotFound")) {
        error_free(err);
        return 0;
    }
    error_propagate(errp, err);
    return -1;
}

/* Greeting and capabilities negotiation on a connected fd (taken over). */
static int qmp_handshake(QmpConn *c, int fd, const char *path, Error **errp)
{
    Error *err = NULL;
    json_t *msg;

    c->fd = fd;
    c->in = fdopen(fd, "r");
    c->events = json_array();
    if (!c->in) {
        close(fd);
        c->fd = -1;
        error_setg_errno(errp, errno, "fdopen");
        return -1;
    }
    set_recv_timeout(fd, HANDSHAKE_TIMEOUT_S);
    msg = qmp_recv(c, &err);
    if (msg && !json_object_get(msg, "QMP")) {
        error_setg(&err, "not a QMP socket (no greeting)");
    }
    json_decref(msg);
    if (!err) {
        json_decref(qmp_conn_execute(c, "qmp_capabilities", NULL, &err));
    }
    if (err) {
        error_prepend(&err, "%s: ", path);
        error_propagate(errp, err);
        return -1;
    }
    set_recv_timeout(fd, 0);
    return 0;
}

void qmp_conn_close(QmpConn *c)
{
    if (c->in) {
        fclose(c->in);    /* closes c->fd */
    } else if (c->fd >= 0) {
        close(c->fd);
    }
    json_decref(c->events);
}

/* ---------------------------------------------------------------- which socket */

/* Appends "a, b" style to a malloc'ed list (for the several-sockets error). */
static void list_append(char **list, const char *item)
{
    char *out;

    if (asprintf(&out, "%s%s%s", *list ? *list : "", *list ? ", " : "", item) >= 0) {
        free(*list);
        *list = out;
    }
}

/* A connection to path if it is a socket that accepts one, else -1.  A
 * stale socket (its daemon was killed) refuses: it does not count. */
static int connect_if_live(const char *path)
{
    struct stat st;

    if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        return -1;
    }
    return unix_connect(path, NULL);
}

/* Connects to the one socket in dir that accepts; sets *fd and *path.
 * Entries are tried in name order so the error lists them stably. */
static int discover_in(const char *dir, int *fd, char **path, Error **errp)
{
    struct dirent **names;
    char *list = NULL, *p;
    int n = scandir(dir, &names, NULL, alphasort), count = 0, s;

    *fd = -1;
    *path = NULL;
    for (int i = 0; i < n; i++) {
        if (asprintf(&p, "%s/%s", dir, names[i]->d_name) >= 0) {
            if ((s = connect_if_live(p)) >= 0) {
                list_append(&list, p);
                if (count++ == 0) {
                    *fd = s;
                    *path = strdup(p);
                } else {
                    close(s);   /* only counted, for the error */
                }
            }
            free(p);
        }
        free(names[i]);
    }
    free(n >= 0 ? names : NULL);
    if (count == 0) {
        error_setg(errp, "no diskstack daemon is running (no socket in %s "
                   "accepts a connection); give --socket or set "
                   "DISKSTACK_SOCKET", dir);
    } else if (count > 1) {
        error_setg(errp, "%d daemons are running; choose one with --socket: %s",
                   count, list);
        close(*fd);
        free(*path);
    }
    free(list);
    return count == 1 ? 0 : -1;
}

int qmp_conn_open(QmpConn *c, const char *path, Error **errp)
{
    char *dir, *found = NULL;
    int fd, ret;

    c->fd = -1;
    c->in = NULL;
    c->events = NULL;
    if (path) {
        fd = unix_connect(path, errp);
        return fd < 0 ? -1 : qmp_handshake(c, fd, path, errp);
    }
    dir = runtime_dir_path();
    if (!dir) {
        error_setg(errp, "out of memory");
        return -1;
    }
    if (access(dir, F_OK) == 0 && check_runtime_dir(dir, errp) < 0) {
        free(dir);
        return -1;
    }
    ret = discover_in(dir, &fd, &found, errp);
    free(dir);
    if (ret == 0) {
        ret = qmp_handshake(c, fd, found, errp);
        free(found);
    }
    return ret;
}

/* True if c->events holds `name` whose data.id is id (and drops it). */
static bool take_event(QmpConn *c, const char *name, const char *id)
{
    size_t i;
    json_t *e;

    json_array_foreach(c->events, i, e) {
        const char *ename = json_string_value(json_object_get(e, "event"));
        const char *eid = json_string_value(json_object_get(json_object_get(e, "data"),
                                                            "id"));
        if (ename && !strcmp(ename, name) && eid && !strcmp(eid, id)) {
            json_array_remove(c->events, i);
            return true;
        }
    }
    return false;
}

int qmp_conn_wait_event(QmpConn *c, const char *name, const char *id,
                        int timeout_s, Error **errp)
{
    json_t *msg;

    set_recv_timeout(c->fd, timeout_s);
    while (!take_event(c, name, id)) {
        msg = qmp_recv(c, errp);
        if (!msg) {
            return -1;
        }
        json_array_append_new(c->events, msg);
    }
    set_recv_timeout(c->fd, 0);
    return 0;
}
