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
 * Input framing follows QEMU's streaming JSON parser, not lines: a request
 * may arrive split over several reads, several may arrive in one read, and
 * newlines between them are optional.  The framer only tracks strings and
 * bracket depth to find where a value ends; jansson parses the value.  Bad
 * input costs its sender at most one error reply per line (later errors on
 * the same line are not answered; valid requests on it still run).  A raw
 * control character inside a value (a newline inside a string, a NUL) is
 * an error at once, so stray garbage cannot swallow the lines after it.
 * A value larger than QMP_MAX_MESSAGE or nested deeper than QMP_MAX_DEPTH
 * is answered once and the input is then dropped up to the next newline, so
 * a 10 MiB garbage line is one error and the client stays usable.
 * (qemu-storage-daemon answers such input with one error per bad token:
 * thousands of replies.)  The error texts are QEMU's where QEMU has one.
 *
 * Output never blocks the main loop: replies and events are queued in the
 * client's output buffer and sent with non-blocking sends; what the socket
 * does not take is sent by a writer coroutine waiting for POLLOUT.  A client
 * whose undelivered backlog exceeds QMP_MAX_BACKLOG (it does not read its
 * events) is dropped with a warning on stderr.
 *
 * Connections: at most QMP_MAX_CLIENTS at once (each may hold up to
 * QMP_MAX_MESSAGE of input and QMP_MAX_BACKLOG of output); one more is
 * accepted, told so in one error line instead of the greeting, and closed.
 * (QEMU's monitor socket serves one client at a time and leaves the others
 * waiting in the listen backlog.)  The socket is created 0600: only its
 * owner, the user running the daemon, may connect.
 *
 * Lifetime: a client is freed when it has disconnected (or the server stops)
 * and neither a command nor the writer of its is running; each holds a
 * reference.  Errors while sending never free a client on the spot: the
 * socket is shut down and the reader then closes it through the usual path.
 *
 * Sessions (qmp_session_new) are clients without a socket, for tests and the
 * fuzzer: same framing, parsing, envelope and argument checks.
 *
 * Threading: everything is GS (main thread, global lock, main loop); fd
 * handlers, bottom halves and the coroutines run on the main loop with the
 * lock held.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "loop/loop.h"
#include "qmp/commands.h"
#include "qmp/server.h"
#include "block-events.h"

#define QMP_MAX_MESSAGE (1024 * 1024)          /* bytes in one request */
#define QMP_MAX_DEPTH 1024                     /* as QEMU's parser */
#define QMP_MAX_BACKLOG (16 * 1024 * 1024)     /* undelivered output */
#define QMP_READ_CHUNK 65536
#define QMP_MAX_CLIENTS 100                    /* connected at once */

/* Where the framer is between two bytes. */
typedef enum FrameState {
    FRAME_TOP,       /* between values: whitespace is skipped */
    FRAME_VALUE,     /* inside an object, array or top-level string */
    FRAME_SCALAR,    /* a bare token at top level (42, true, garbage) */
    FRAME_DISCARD,   /* dropping input up to the next newline */
} FrameState;

/* Received bytes: buf[start..len) is not consumed yet, buf[start..scan)
 * has been looked at by the framer. */
typedef struct QmpInput {
    char *buf;
    size_t start, scan, len, cap;
    FrameState state;
    int depth;
    bool in_str, esc;
    bool line_answered;     /* this line already got its one input error */
} QmpInput;

/* Bytes not yet sent: buf[off..len). */
typedef struct QmpOutput {
    char *buf;
    size_t off, len, cap;
} QmpOutput;

struct QmpClient {
    int fd;                 /* -1: a session without a socket */
    QmpInput in;
    QmpOutput out;
    bool negotiated;
    bool busy;              /* a command is running: the fd is not watched */
    bool writing;           /* the writer coroutine is waiting for POLLOUT */
    bool eof;               /* the peer will send nothing more */
    bool dropped;           /* output failed or overflowed: no more replies */
    bool closed;            /* disconnected or server stopping */
    bool (*may_run)(const char *name);   /* sessions: NULL runs everything */
    int refcnt;
    struct QmpClient *next;
};

static struct {
    int listen_fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    QmpClient *clients;
    int nclients;           /* connected (socket) clients on the list */
    bool quiesced;          /* shutting down: no new commands, events go on */
} qs = { .listen_fd = -1 };

static void client_on_readable(void *opaque);
static void client_maybe_finish(QmpClient *c) GS;

/* ------------------------------------------------------------ framing */

typedef enum FrameResult {
    FRAME_NEED_MORE,
    FRAME_MESSAGE,   /* *msg, *len: one complete value */
    FRAME_ERROR,     /* *err: a framing error to report */
} FrameResult;

static bool is_json_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

static bool ends_scalar(char ch)
{
    return is_json_space(ch) || strchr("{}[]\",:", ch) != NULL;
}

/* Pure: from FRAME_TOP, what byte ch at in->scan starts. */
static FrameResult frame_top(QmpInput *in, char ch, const char **err)
{
    if (is_json_space(ch)) {
        in->start = ++in->scan;
        if (ch == '\n') {
            in->line_answered = false;
        }
        return FRAME_NEED_MORE;
    }
    in->start = in->scan++;
    in->depth = 0;
    in->in_str = in->esc = false;
    if (ch == '{' || ch == '[') {
        in->state = FRAME_VALUE;
        in->depth = 1;
    } else if (ch == '"') {
        in->state = FRAME_VALUE;
        in->in_str = true;
    } else if (ch == '}' || ch == ']') {
        in->start = in->scan;
        *err = "JSON parse error, expecting value";
        return FRAME_ERROR;
    } else {
        in->state = FRAME_SCALAR;
    }
    return FRAME_NEED_MORE;
}

/*
 * Pure: a raw control character inside a value is invalid JSON (strings
 * must escape them; between tokens only whitespace is allowed).  A newline
 * in a string is left unconsumed, so that it ends the dropped line and the
 * next line is read afresh: garbage with a stray quote costs one error,
 * not the requests that follow it.
 */
static FrameResult frame_control(QmpInput *in, char ch, const char **err)
{
    if (ch == '\n') {
        in->scan--;
        *err = "JSON parse error, newline inside a string; input dropped up "
               "to the newline";
    } else {
        *err = "JSON parse error, invalid control character; input dropped "
               "up to the next newline";
    }
    return FRAME_ERROR;
}

/* Pure: byte ch at in->scan inside a value; FRAME_MESSAGE when it ends it. */
static FrameResult frame_value(QmpInput *in, char ch, const char **err)
{
    in->scan++;
    if ((unsigned char)ch < 0x20 && (in->in_str || !is_json_space(ch))) {
        return frame_control(in, ch, err);
    }
    if (in->in_str) {
        if (in->esc) {
            in->esc = false;
        } else if (ch == '\\') {
            in->esc = true;
        } else if (ch == '"') {
            in->in_str = false;
            return in->depth == 0 ? FRAME_MESSAGE : FRAME_NEED_MORE;
        }
        return FRAME_NEED_MORE;
    }
    if (ch == '"') {
        in->in_str = true;
    } else if (ch == '{' || ch == '[') {
        if (++in->depth > QMP_MAX_DEPTH) {
            *err = "JSON nesting depth limit exceeded; input dropped up to "
                   "the next newline";
            return FRAME_ERROR;
        }
    } else if (ch == '}' || ch == ']') {
        if (--in->depth == 0) {
            return FRAME_MESSAGE;
        }
    }
    return FRAME_NEED_MORE;
}

/*
 * Pure: scans the unscanned input for the next complete value or framing
 * error.  On FRAME_MESSAGE, buf[*msg_start .. *msg_start + *msg_len) is the
 * value and it counts as consumed.
 */
static FrameResult frame_next(QmpInput *in, size_t *msg_start, size_t *msg_len,
                              const char **err)
{
    while (in->scan < in->len) {
        char ch = in->buf[in->scan];
        FrameResult r = FRAME_NEED_MORE;

        switch (in->state) {
        case FRAME_DISCARD: {
            char *nl = memchr(in->buf + in->scan, '\n', in->len - in->scan);
            in->scan = nl ? (size_t)(nl - in->buf) + 1 : in->len;
            in->start = in->scan;
            if (nl) {
                in->state = FRAME_TOP;
                in->line_answered = false;
            }
            continue;
        }
        case FRAME_TOP:
            r = frame_top(in, ch, err);
            break;
        case FRAME_VALUE:
            r = frame_value(in, ch, err);
            break;
        case FRAME_SCALAR:
            if (ends_scalar(ch)) {
                /* the delimiter is not part of the token */
                r = FRAME_MESSAGE;
            } else {
                in->scan++;
            }
            break;
        }
        if (r == FRAME_NEED_MORE && in->state != FRAME_TOP &&
            in->scan - in->start > QMP_MAX_MESSAGE) {
            *err = "JSON parse error, request larger than 1 MiB; input "
                   "dropped up to the next newline";
            r = FRAME_ERROR;
        }
        if (r == FRAME_MESSAGE) {
            *msg_start = in->start;
            *msg_len = in->scan - in->start;
            in->start = in->scan;
            in->state = FRAME_TOP;
            return r;
        }
        if (r == FRAME_ERROR) {
            /* an error inside a value drops the rest of its line */
            in->state = in->state == FRAME_TOP ? FRAME_TOP : FRAME_DISCARD;
            in->start = in->scan;
            return r;
        }
    }
    return FRAME_NEED_MORE;
}

/* Pure: drops the consumed bytes so the buffer holds only what is left. */
static void input_compact(QmpInput *in)
{
    if (in->start == 0) {
        return;
    }
    memmove(in->buf, in->buf + in->start, in->len - in->start);
    in->len -= in->start;
    in->scan -= in->start;
    in->start = 0;
}

/* Pure: room for at least `more` bytes at the end of the buffer. */
static void input_reserve(QmpInput *in, size_t more)
{
    if (in->cap - in->len >= more) {
        return;
    }
    in->cap = in->len + more + QMP_READ_CHUNK;
    in->buf = realloc(in->buf, in->cap);
    if (!in->buf) {
        fprintf(stderr, "diskstack: qmp: out of memory\n");
        abort();
    }
}

/* ------------------------------------------------------------ sending */

/* GS: the client gets nothing more; the reader sees EOF and closes it. */
static void client_drop_output(QmpClient *c) GS
{
    GS_CODE();
    c->dropped = true;
    c->out.off = c->out.len = 0;
    if (c->fd >= 0) {
        /* wakes a writer waiting for POLLOUT and the reader alike */
        shutdown(c->fd, SHUT_RDWR);
    }
}

/* GS: sends what the socket takes now, without blocking.  Returns true
 * when the buffer is empty. */
static bool client_flush(QmpClient *c) GS
{
    QmpOutput *o = &c->out;

    GS_CODE();
    while (o->off < o->len) {
        ssize_t n = send(c->fd, o->buf + o->off, o->len - o->off,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return false;
        }
        if (n <= 0) {
            client_drop_output(c);   /* the peer is gone */
            return true;
        }
        o->off += n;
    }
    o->off = o->len = 0;
    return true;
}

static void client_unref(QmpClient *c) GS;

/* Coroutine on the main loop (GS): sends the backlog as the socket drains. */
static void coroutine_fn writer_co(void *opaque)
{
    QmpClient *c = opaque;

    global_lock_assert_held();
    GS_CODE();
    while (!c->closed && !c->dropped && !client_flush(c)) {
        if (co_poll_fd(c->fd, POLLOUT) < 0) {
            client_drop_output(c);
        }
    }
    c->writing = false;
    client_maybe_finish(c);
    client_unref(c);
}

/* GS: queues bytes for the client and sends what can go now. */
static void client_queue(QmpClient *c, const char *data, size_t len) GS
{
    QmpOutput *o = &c->out;

    GS_CODE();
    if (c->closed || c->dropped) {
        return;
    }
    if (o->len - o->off + len > QMP_MAX_BACKLOG) {
        fprintf(stderr, "diskstack: qmp: dropping a client that does not read "
                "its replies and events (more than %d MiB undelivered)\n",
                QMP_MAX_BACKLOG >> 20);
        client_drop_output(c);
        return;
    }
    if (o->cap - o->len < len) {
        if (o->off) {   /* reuse the space already sent */
            memmove(o->buf, o->buf + o->off, o->len - o->off);
            o->len -= o->off;
            o->off = 0;
        }
        if (o->cap - o->len < len) {
            o->cap = (o->len + len) * 2;
            o->buf = realloc(o->buf, o->cap);
            if (!o->buf) {
                fprintf(stderr, "diskstack: qmp: out of memory\n");
                abort();
            }
        }
    }
    memcpy(o->buf + o->len, data, len);
    o->len += len;
    if (c->fd < 0 || c->writing || client_flush(c)) {
        return;
    }
    c->writing = true;
    c->refcnt++;
    co_spawn(writer_co, c);
}

/* GS: queues one JSON value and a newline. */
static void client_send(QmpClient *c, json_t *msg) GS
{
    char *text;
    size_t len;

    GS_CODE();
    if (c->closed || c->dropped) {
        return;
    }
    text = json_dumps(msg, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        return;
    }
    len = strlen(text);
    text[len++] = '\n';   /* overwrites the NUL: json_dumps' buffer is ours */
    client_queue(c, text, len);
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

/* GS: {"return": ret} plus the id; steals ret. */
static void send_return(QmpClient *c, json_t *ret, json_t *id) GS
{
    json_t *reply = json_pack("{s:o}", "return", ret);

    GS_CODE();
    if (id) {
        json_object_set(reply, "id", id);
    }
    client_send(c, reply);
    json_decref(reply);
}

/* GS: an error about the input itself (no request, so no id).  One per
 * line: the rest of a garbage line is parsed on, silently, so 10 MiB of
 * garbage costs one reply, not a storm of them. */
static void input_error(QmpClient *c, const char *desc) GS
{
    GS_CODE();
    if (!c->in.line_answered) {
        c->in.line_answered = true;
        send_error(c, NULL, desc, NULL);
    }
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
    /* client_send() never frees a client, so the walk is safe */
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
    if (c->fd >= 0) {
        qs.nclients--;
    }
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
    if (c->fd >= 0) {
        close(c->fd);
    }
    free(c->in.buf);
    free(c->out.buf);
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
    if (c->fd >= 0) {
        if (!c->busy && !c->eof) {
            loop_remove_fd_handler(loop_main(), c->fd);
        }
        if (c->writing) {
            shutdown(c->fd, SHUT_RDWR);   /* ends the writer's wait */
        }
    }
    client_unref(c);
}

/* GS: a client that sent EOF is closed once its last command has run and
 * its replies are out (so `cmd | socat - UNIX-CONNECT:sock` gets them). */
static void client_maybe_finish(QmpClient *c) GS
{
    GS_CODE();
    if (c->eof && !c->busy && !c->writing && !c->closed && c->fd >= 0) {
        client_close(c);
    }
}

/* ------------------------------------------------------------ requests */

typedef struct QmpRequest {
    QmpClient *client;
    const QmpCommand *cmd;
    json_t *args;
    json_t *id;
} QmpRequest;

static void client_resume_bh(void *opaque);

/* Coroutine entry on the main loop (GS): runs one command and replies.  A
 * client that left meanwhile still has its command completed; the reply is
 * dropped. */
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
        send_return(c, ret, req->id);
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

/* GS: a session command its owner does not let run: only the arguments are
 * checked (the fuzzer exercises validation without side effects). */
static void validate_only(QmpClient *c, const QmpCommand *cmd, json_t *args,
                          json_t *id) GS
{
    const QmpCommandDef *def = (const QmpCommandDef *)cmd;
    Error *err = NULL;

    GS_CODE();
    if (def->args && qmp_check_args(def->args, args, &err) < 0) {
        send_error(c, err->cls, error_get_pretty(err), id);
        error_free(err);
        return;
    }
    send_return(c, json_object(), id);
}

/* Pure: the envelope's problem as QEMU words it, or NULL when it is fine. */
static const char *envelope_error(json_t *msg, char *buf, size_t len)
{
    json_t *exec = json_object_get(msg, "execute");
    json_t *args = json_object_get(msg, "arguments");
    const char *key;
    json_t *val;

    json_object_foreach(msg, key, val) {
        if (strcmp(key, "execute") && strcmp(key, "arguments") && strcmp(key, "id")) {
            snprintf(buf, len, "QMP input member '%.100s' is unexpected", key);
            return buf;
        }
    }
    if (!exec) {
        return "QMP input lacks member 'execute'";
    }
    if (!json_is_string(exec)) {
        return "QMP input member 'execute' must be a string";
    }
    if (args && !json_is_object(args)) {
        return "QMP input member 'arguments' must be an object";
    }
    return NULL;
}

/* GS: the command named in a valid envelope, or NULL after replying with
 * the error QEMU gives (unknown command, negotiation state). */
static const QmpCommand *lookup_command(QmpClient *c, const char *name,
                                        json_t *id) GS
{
    const QmpCommand *cmd = qmp_find_command(name);
    bool is_caps = cmd && !strcmp(cmd->name, "qmp_capabilities");
    char desc[200];

    GS_CODE();
    if (!c->negotiated && !is_caps) {
        send_error(c, "CommandNotFound",
                   "Expecting capabilities negotiation with 'qmp_capabilities'", id);
        return NULL;
    }
    if (!cmd) {
        snprintf(desc, sizeof(desc), "The command %.150s has not been found", name);
        send_error(c, "CommandNotFound", desc, id);
        return NULL;
    }
    if (c->negotiated && is_caps) {
        send_error(c, "CommandNotFound",
                   "Capabilities negotiation is already complete, command ignored", id);
        return NULL;
    }
    return cmd;
}

/* GS: checks the request's envelope; on success starts its command (the
 * client becomes busy) and returns true. */
static bool handle_request(QmpClient *c, json_t *msg) GS
{
    json_t *id = json_object_get(msg, "id");
    json_t *args = json_object_get(msg, "arguments");
    const QmpCommand *cmd;
    const char *problem;
    QmpRequest *req;
    char buf[160];

    GS_CODE();
    if (!json_is_object(msg)) {
        input_error(c, "QMP input must be a JSON object");
        return false;
    }
    problem = envelope_error(msg, buf, sizeof(buf));
    if (problem) {
        send_error(c, NULL, problem, id);
        return false;
    }
    cmd = lookup_command(c, json_string_value(json_object_get(msg, "execute")), id);
    if (!cmd) {
        return false;
    }
    if (c->may_run && !c->may_run(cmd->name)) {
        json_t *checked = args ? json_incref(args) : json_object();
        validate_only(c, cmd, checked, id);
        json_decref(checked);
        return false;
    }
    req = calloc(1, sizeof(*req));
    req->client = c;
    req->cmd = cmd;
    req->args = args ? json_incref(args) : json_object();
    req->id = json_incref(id);
    c->busy = true;
    c->refcnt++;
    if (c->fd >= 0 && !c->eof) {
        loop_remove_fd_handler(loop_main(), c->fd);
    }
    co_spawn(command_co, req);
    return true;
}

/* GS: a bare top-level token that is no JSON value: QEMU's wording. */
static void reply_bad_token(QmpClient *c, const char *tok, size_t len) GS
{
    char desc[160];

    GS_CODE();
    snprintf(desc, sizeof(desc), "JSON parse error, invalid keyword '%.*s%s'",
             (int)(len > 64 ? 64 : len), tok, len > 64 ? "..." : "");
    input_error(c, desc);
}

/* GS: one complete value.  Returns true if a command was started. */
static bool handle_message(QmpClient *c, const char *text, size_t len) GS
{
    json_error_t jerr;
    json_t *msg;
    bool started;

    GS_CODE();
    msg = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!msg) {
        char desc[300];
        if (text[0] != '{' && text[0] != '[' && text[0] != '"') {
            reply_bad_token(c, text, len);
            return false;
        }
        snprintf(desc, sizeof(desc), "JSON parse error, %s", jerr.text);
        input_error(c, desc);
        return false;
    }
    started = handle_request(c, msg);
    json_decref(msg);
    return started;
}

/* GS: handles the buffered input until a command starts or it runs out. */
static void client_process(QmpClient *c) GS
{
    GS_CODE();
    while (!c->closed && !c->busy && !c->dropped && !qs.quiesced) {
        size_t start, len;
        const char *err = NULL;
        FrameResult r = frame_next(&c->in, &start, &len, &err);

        if (r == FRAME_NEED_MORE) {
            break;
        }
        if (r == FRAME_ERROR) {
            input_error(c, err);
        } else {
            handle_message(c, c->in.buf + start, len);
        }
    }
    input_compact(&c->in);
}

/* Bottom half on the main loop (GS): a command finished; carry on with the
 * client's buffered input, then watch its fd again. */
static void client_resume_bh(void *opaque)
{
    QmpClient *c = opaque;

    global_lock_assert_held();
    c->busy = false;
    if (!c->closed) {
        client_process(c);
        if (!c->busy && c->fd >= 0 && !c->eof) {
            loop_set_fd_handler(loop_main(), c->fd, client_on_readable, c);
        }
        client_maybe_finish(c);
    }
    client_unref(c);
}

/* fd handler on the main loop (GS): bytes or EOF from a client. */
static void client_on_readable(void *opaque)
{
    QmpClient *c = opaque;
    ssize_t n;

    global_lock_assert_held();
    input_reserve(&c->in, QMP_READ_CHUNK);
    n = recv(c->fd, c->in.buf + c->in.len, c->in.cap - c->in.len, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
    }
    if (n <= 0) {
        /* EOF (or a reset): run what is complete, then close */
        c->eof = true;
        loop_remove_fd_handler(loop_main(), c->fd);
        client_process(c);
        if (n < 0) {
            client_drop_output(c);
        }
        client_maybe_finish(c);
        return;
    }
    c->in.len += n;
    client_process(c);
}

/* ------------------------------------------------------------ sessions */

QmpSession *qmp_session_new(bool (*may_run)(const char *name))
{
    QmpClient *c = calloc(1, sizeof(*c));

    GS_CODE();
    c->fd = -1;
    c->refcnt = 1;
    c->may_run = may_run;
    return c;
}

void qmp_session_input(QmpSession *s, const void *data, size_t len)
{
    GS_CODE();
    input_reserve(&s->in, len);
    memcpy(s->in.buf + s->in.len, data, len);
    s->in.len += len;
    if (!s->busy) {
        client_process(s);
    }
}

bool qmp_session_busy(QmpSession *s)
{
    GS_CODE();
    return s->busy;
}

const char *qmp_session_output(QmpSession *s, size_t *len)
{
    GS_CODE();
    *len = s->out.len - s->out.off;
    return s->out.buf ? s->out.buf + s->out.off : "";
}

void qmp_session_free(QmpSession *s)
{
    GS_CODE();
    assert(!s->busy);
    s->closed = true;
    client_unref(s);
}

/* ------------------------------------------------------------ listener */

static json_t *greeting(void)
{
    return json_pack("{s:{s:o,s:[]}}", "QMP", "version", qmp_version_json(),
                     "capabilities");
}

/* Main thread: one error line (best effort, never blocking) instead of
 * the greeting, then the connection is closed. */
static void refuse_client(int fd)
{
    char line[160];
    int n = snprintf(line, sizeof(line),
                     "{\"error\": {\"class\": \"GenericError\", \"desc\": "
                     "\"Too many QMP clients (at most %d at once)\"}}\n",
                     QMP_MAX_CLIENTS);

    if (send(fd, line, n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
        /* the peer is gone or not reading: nothing more to tell it */
    }
    close(fd);
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
    if (qs.nclients >= QMP_MAX_CLIENTS) {
        refuse_client(fd);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    c->fd = fd;
    c->refcnt = 1;
    c->next = qs.clients;
    qs.clients = c;
    qs.nclients++;
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

/*
 * Main thread: binds fd to path (mode 0600) and listens.  Where the name
 * fits, the socket is bound under a temporary name and renamed into place
 * once it listens: whoever waits for the path to appear can connect at once
 * (between bind() and listen() a connect() would be refused).
 */
static int bind_and_listen(int fd, const char *path, Error **errp)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int n = snprintf(addr.sun_path, sizeof(addr.sun_path), "%s.tmp%d", path,
                     (int)getpid());
    bool renamed = n > 0 && (size_t)n < sizeof(addr.sun_path);
    mode_t old_mask;
    int ret;

    if (renamed) {
        unlink(addr.sun_path);   /* left by a crashed process with our pid */
    } else {
        snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
    }
    old_mask = umask(0177);   /* the socket is created 0600 */
    ret = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    umask(old_mask);
    if (ret == 0 && listen(fd, 16) == 0 &&
        (!renamed || rename(addr.sun_path, path) == 0)) {
        return 0;
    }
    error_setg_errno(errp, errno, "QMP socket '%s'", path);
    if (ret == 0) {
        unlink(addr.sun_path);
    }
    return -1;
}

int qmp_server_start(const char *path, Error **errp)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int fd;

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
    if (bind_and_listen(fd, path, errp) < 0) {
        close(fd);
        return -1;
    }
    qs.listen_fd = fd;
    snprintf(qs.path, sizeof(qs.path), "%s", path);
    loop_set_fd_handler(loop_main(), fd, on_accept, NULL);
    block_event_set_sink(qmp_emit_event);
    return 0;
}

/* GS: no new clients; the socket file goes. */
static void close_listener(void) GS
{
    GS_CODE();
    if (qs.listen_fd >= 0) {
        loop_remove_fd_handler(loop_main(), qs.listen_fd);
        close(qs.listen_fd);
        qs.listen_fd = -1;
        unlink(qs.path);
    }
}

void qmp_server_quiesce(void)
{
    GS_CODE();
    qs.quiesced = true;
    close_listener();
}

void qmp_server_stop(void)
{
    GS_CODE();
    block_event_set_sink(NULL);
    close_listener();
    while (qs.clients) {
        QmpClient *c = qs.clients;
        /* A busy client stays listed until its command ends: unlink it now
         * so this loop terminates; client_unref() tolerates that. */
        qs.clients = c->next;
        c->next = NULL;
        client_close(c);
    }
}
