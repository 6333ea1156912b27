/*
 * server.c — the QMP control socket: listener, clients, framing, greeting,
 * capability negotiation, dispatch and events.
 *
 * One client handles one command at a time, like QEMU's monitor: while a
 * command runs (in its own coroutine on the main loop) the client's fd is not
 * watched, so replies keep the order of requests and a flooding client is
 * throttled by its own socket buffer.  Other clients and the rest of the main
 * loop carry on: a slow command only blocks its own client.
 *
 * Lifetime: a client is freed when it has disconnected (or the server stops)
 * and no command of its is running; the command coroutine holds a reference.
 *
 * Threading: everything is GS (main thread, global lock, main loop); fd
 * handlers and bottom halves run on the main loop with the lock held.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "loop/loop.h"
#include "qmp/server.h"

#define QMP_MAX_LINE (1024 * 1024)   /* bytes in one request line */
#define QMP_MAX_DEPTH 64             /* nesting of arrays and objects */
#define QMP_READ_CHUNK 65536

typedef struct QmpClient {
    int fd;
    char *buf;              /* received bytes not yet processed */
    size_t len, cap;
    bool discarding;        /* dropping the rest of an over-long line */
    bool negotiated;
    bool busy;              /* a command is running: the fd is not watched */
    bool closed;            /* disconnected or server stopping */
    int refcnt;
    struct QmpClient *next;
} QmpClient;

static struct {
    int listen_fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    QmpClient *clients;
} qs = { .listen_fd = -1 };

static void client_on_readable(void *opaque);

/* ------------------------------------------------------------ sending */

/* GS: writes one JSON value and a newline.  A client that went away is
 * noticed by the reader; errors here are ignored. */
static void client_send(QmpClient *c, json_t *msg) GS
{
    char *text;
    size_t len, off = 0;

    GS_CODE();
    if (c->closed) {
        return;
    }
    text = json_dumps(msg, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        return;
    }
    len = strlen(text);
    text[len++] = '\n';   /* overwrites the NUL: json_dumps' buffer is ours */
    while (off < len) {
        ssize_t n = send(c->fd, text + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            /* The socket is blocking for writes; this is only a guard. */
            continue;
        }
        if (n <= 0) {
            break;
        }
        off += n;
    }
    free(text);
}

/* Pure: {"error": {"class", "desc"}} plus the id if any (steals nothing). */
static json_t *error_reply(const char *cls, const char *desc, json_t *id)
{
    json_t *r = json_pack("{s:{s:s,s:s}}", "error", "class", cls ? cls : "GenericError",
                          "desc", desc);
    if (id) {
        json_object_set(r, "id", id);
    }
    return r;
}

static void send_error(QmpClient *c, const char *cls, const char *desc,
                       json_t *id) GS
{
    json_t *r = error_reply(cls, desc, id);

    GS_CODE();
    client_send(c, r);
    json_decref(r);
}

void qmp_emit_event(const char *name, json_t *data)
{
    struct timeval tv;
    json_t *ev;

    GS_CODE();
    gettimeofday(&tv, NULL);
    ev = json_pack("{s:s,s:o,s:{s:I,s:I}}", "event", name,
                   "data", data ? data : json_object(),
                   "timestamp", "seconds", (json_int_t)tv.tv_sec,
                   "microseconds", (json_int_t)tv.tv_usec);
    for (QmpClient *c = qs.clients; c; c = c->next) {
        if (c->negotiated) {
            client_send(c, ev);
        }
    }
    json_decref(ev);
}

/* ------------------------------------------------------------ lifetime */

static void client_unlink(QmpClient *c) GS
{
    GS_CODE();
    for (QmpClient **p = &qs.clients; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            return;
        }
    }
}

static void client_unref(QmpClient *c) GS
{
    GS_CODE();
    if (--c->refcnt > 0) {
        return;
    }
    client_unlink(c);
    close(c->fd);
    free(c->buf);
    free(c);
}

/* GS: the client is gone (EOF, error, server stop): stop watching it and
 * drop the connection's reference. */
static void client_close(QmpClient *c) GS
{
    GS_CODE();
    if (c->closed) {
        return;
    }
    c->closed = true;
    if (!c->busy) {
        loop_remove_fd_handler(loop_main(), c->fd);
    }
    client_unref(c);
}

/* ------------------------------------------------------------ requests */

/* Pure: true if text nests arrays/objects deeper than QMP_MAX_DEPTH (strings
 * are skipped, so brackets inside them do not count). */
static bool too_deep(const char *text, size_t len)
{
    int depth = 0;
    bool in_str = false;

    for (size_t i = 0; i < len; i++) {
        char ch = text[i];
        if (in_str) {
            if (ch == '\\') {
                i++;
            } else if (ch == '"') {
                in_str = false;
            }
        } else if (ch == '"') {
            in_str = true;
        } else if (ch == '[' || ch == '{') {
            if (++depth > QMP_MAX_DEPTH) {
                return true;
            }
        } else if (ch == ']' || ch == '}') {
            depth--;
        }
    }
    return false;
}

typedef struct QmpRequest {
    QmpClient *client;
    const QmpCommand *cmd;
    json_t *args;
    json_t *id;
} QmpRequest;

static void client_resume_bh(void *opaque);

/* Coroutine entry on the main loop (GS): runs one command and replies. */
static void coroutine_fn command_co(void *opaque)
{
    QmpRequest *req = opaque;
    QmpClient *c = req->client;
    Error *err = NULL;
    json_t *ret;

    global_lock_assert_held();
    GS_CODE();
    ret = qmp_dispatch(req->cmd, req->args, &err);
    if (ret) {
        json_t *reply = json_pack("{s:o}", "return", ret);
        if (req->id) {
            json_object_set(reply, "id", req->id);
        }
        client_send(c, reply);
        json_decref(reply);
        if (!strcmp(req->cmd->name, "qmp_capabilities")) {
            c->negotiated = true;
        }
    } else {
        send_error(c, err ? err->cls : NULL,
                   err ? error_get_pretty(err) : "command failed", req->id);
        error_free(err);
    }
    json_decref(req->args);
    json_decref(req->id);
    free(req);
    /* Resume reading outside this coroutine: it may be about to end. */
    loop_schedule(loop_main(), client_resume_bh, c);
}

/* GS: checks the request's envelope; on success starts its command (the
 * client becomes busy) and returns true. */
static bool handle_request(QmpClient *c, json_t *msg) GS
{
    json_t *id = json_object_get(msg, "id");
    json_t *exec, *args;
    const char *key, *name;
    const QmpCommand *cmd;
    QmpRequest *req;
    json_t *val;

    GS_CODE();
    if (!json_is_object(msg)) {
        send_error(c, NULL, "QMP input must be a JSON object", NULL);
        return false;
    }
    json_object_foreach(msg, key, val) {
        if (strcmp(key, "execute") && strcmp(key, "arguments") && strcmp(key, "id")) {
            char desc[160];
            snprintf(desc, sizeof(desc), "QMP input member '%.100s' is unexpected", key);
            send_error(c, NULL, desc, id);
            return false;
        }
    }
    exec = json_object_get(msg, "execute");
    args = json_object_get(msg, "arguments");
    if (!json_is_string(exec)) {
        send_error(c, NULL, exec ? "QMP input member 'execute' must be a string"
                               : "QMP input lacks member 'execute'", id);
        return false;
    }
    if (args && !json_is_object(args)) {
        send_error(c, NULL, "QMP input member 'arguments' must be an object", id);
        return false;
    }
    name = json_string_value(exec);
    cmd = qmp_find_command(name);
    if (!c->negotiated && (!cmd || strcmp(cmd->name, "qmp_capabilities"))) {
        send_error(c, "CommandNotFound",
                   "Expecting capabilities negotiation with 'qmp_capabilities'", id);
        return false;
    }
    if (!cmd) {
        char desc[200];
        snprintf(desc, sizeof(desc), "The command %.150s has not been found", name);
        send_error(c, "CommandNotFound", desc, id);
        return false;
    }
    if (c->negotiated && !strcmp(cmd->name, "qmp_capabilities")) {
        send_error(c, "CommandNotFound",
                   "Capabilities negotiation is already complete, command ignored", id);
        return false;
    }
    req = calloc(1, sizeof(*req));
    req->client = c;
    req->cmd = cmd;
    req->args = args ? json_incref(args) : json_object();
    req->id = json_incref(id);
    c->busy = true;
    c->refcnt++;
    loop_remove_fd_handler(loop_main(), c->fd);
    co_spawn(command_co, req);
    return true;
}

/* GS: one complete line (without its newline). Returns true if a command
 * was started. */
static bool handle_line(QmpClient *c, char *line, size_t len) GS
{
    json_error_t jerr;
    json_t *msg;
    bool started;

    GS_CODE();
    while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t')) {
        len--;
    }
    if (len == 0) {
        return false;
    }
    if (too_deep(line, len)) {
        send_error(c, NULL, "JSON parse error, nesting too deep "
                   "(more than 64 levels); request dropped", NULL);
        return false;
    }
    msg = json_loadb(line, len, JSON_DECODE_ANY, &jerr);
    if (!msg) {
        char desc[300];
        snprintf(desc, sizeof(desc), "JSON parse error, %s", jerr.text);
        send_error(c, NULL, desc, NULL);
        return false;
    }
    started = handle_request(c, msg);
    json_decref(msg);
    return started;
}

/* GS: handles the buffered complete lines until one starts a command. */
static void client_process(QmpClient *c) GS
{
    size_t start = 0;

    GS_CODE();
    while (!c->closed && !c->busy) {
        char *nl = memchr(c->buf + start, '\n', c->len - start);
        size_t linelen;
        if (!nl) {
            break;
        }
        linelen = nl - (c->buf + start);
        if (c->discarding) {
            c->discarding = false;   /* the tail of an over-long line */
        } else if (linelen > QMP_MAX_LINE) {
            /* arrived whole, within one read past the limit */
            send_error(c, NULL, "JSON parse error, request line longer than "
                       "1 MiB; request dropped", NULL);
        } else {
            handle_line(c, c->buf + start, linelen);
        }
        start += linelen + 1;
    }
    if (c->closed) {
        return;
    }
    memmove(c->buf, c->buf + start, c->len - start);
    c->len -= start;
    if (c->len > QMP_MAX_LINE) {
        /* No newline within the limit: drop what we have, and the rest of
         * the line when it arrives. */
        if (!c->discarding) {
            send_error(c, NULL, "JSON parse error, request line longer than "
                       "1 MiB; request dropped", NULL);
        }
        c->discarding = true;
        c->len = 0;
    }
}

/* Bottom half on the main loop (GS): a command finished; carry on with the
 * client's buffered lines, then watch its fd again. */
static void client_resume_bh(void *opaque)
{
    QmpClient *c = opaque;

    global_lock_assert_held();
    c->busy = false;
    if (!c->closed) {
        client_process(c);
        if (!c->busy && !c->closed) {
            loop_set_fd_handler(loop_main(), c->fd, client_on_readable, c);
        }
    }
    client_unref(c);
}

/* fd handler on the main loop (GS): bytes or EOF from a client. */
static void client_on_readable(void *opaque)
{
    QmpClient *c = opaque;
    ssize_t n;

    global_lock_assert_held();
    if (c->cap - c->len < QMP_READ_CHUNK) {
        c->cap = c->len + QMP_READ_CHUNK * 2;
        c->buf = realloc(c->buf, c->cap);
    }
    n = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
    }
    if (n <= 0) {
        client_close(c);
        return;
    }
    c->len += n;
    client_process(c);
}

/* ------------------------------------------------------------ listener */

static json_t *greeting(void)
{
    return json_pack("{s:{s:o,s:[]}}", "QMP", "version", qmp_version_json(),
                     "capabilities");
}

/* fd handler on the main loop (GS): a new connection. */
static void on_accept(void *opaque)
{
    QmpClient *c;
    json_t *g;
    int fd;

    global_lock_assert_held();
    fd = accept4(qs.listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        return;
    }
    c = calloc(1, sizeof(*c));
    c->fd = fd;
    c->refcnt = 1;
    c->next = qs.clients;
    qs.clients = c;
    g = greeting();
    client_send(c, g);
    json_decref(g);
    loop_set_fd_handler(loop_main(), fd, client_on_readable, c);
}

/* Main thread: true if path is a socket nobody listens on. */
static bool is_stale_socket(const char *path, const struct sockaddr_un *addr)
{
    struct stat st;
    bool stale;
    int fd;

    if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        return false;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    stale = fd >= 0 && connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0 &&
            errno == ECONNREFUSED;
    if (fd >= 0) {
        close(fd);
    }
    return stale;
}

int qmp_server_start(const char *path, Error **errp)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    mode_t old_mask;
    int fd, ret;

    GS_CODE();
    if (strlen(path) >= sizeof(addr.sun_path)) {
        error_setg(errp, "QMP socket path '%s' is too long", path);
        return -1;
    }
    strcpy(addr.sun_path, path);
    if (access(path, F_OK) == 0) {
        if (!is_stale_socket(path, &addr)) {
            error_setg(errp, "QMP socket '%s': the path exists and is not a "
                       "stale socket", path);
            return -1;
        }
        unlink(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        error_setg_errno(errp, errno, "QMP socket '%s'", path);
        return -1;
    }
    old_mask = umask(0177);   /* the socket is created 0600 */
    ret = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    umask(old_mask);
    if (ret < 0 || listen(fd, 16) < 0) {
        error_setg_errno(errp, errno, "QMP socket '%s'", path);
        close(fd);
        return -1;
    }
    qs.listen_fd = fd;
    snprintf(qs.path, sizeof(qs.path), "%s", path);
    loop_set_fd_handler(loop_main(), fd, on_accept, NULL);
    return 0;
}

void qmp_server_stop(void)
{
    GS_CODE();
    if (qs.listen_fd >= 0) {
        loop_remove_fd_handler(loop_main(), qs.listen_fd);
        close(qs.listen_fd);
        qs.listen_fd = -1;
        unlink(qs.path);
    }
    while (qs.clients) {
        QmpClient *c = qs.clients;
        /* A busy client stays listed until its command ends: unlink it now
         * so this loop terminates; client_unref() tolerates that. */
        qs.clients = c->next;
        c->next = NULL;
        client_close(c);
    }
}
