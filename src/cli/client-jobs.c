/*
 * client-jobs.c — the block-job client verbs:
 *
 *   diskstack jobs [--json]
 *   diskstack job pause|resume|cancel|complete|dismiss|finalize|wait ID
 *   diskstack mirror SRC-NODE TARGET [-f FMT] [--sync full|top|none]
 *                    [--write-blocking] [--speed S] [--complete] ...
 *   diskstack stream NODE [--base NODE] [--speed S] ...
 *   diskstack commit NODE [--top NODE] [--base NODE] [--speed S] ...
 *
 * The starting verbs send QEMU's block-stream / block-commit /
 * blockdev-mirror / drive-mirror, then follow the job like `job wait`
 * unless --detach.  Following a job:
 *
 *   events arrive on the same QMP connection; qmp-client.c keeps those
 *   that come before a reply aside (c->events).  Every tick (poll() on the
 *   socket and a self-pipe of SIGINT, 200 ms timeout) sends
 *   query-block-jobs, which both gives the progress and pulls in every
 *   event queued before its reply; the events then drive the state.  An
 *   event that arrives right after a reply waits at most one tick.
 *
 *   Output: on a terminal a progress bar redrawn every tick (the rate is
 *   an average of progress deltas over time); otherwise one line per state
 *   change; with --json each event of the job as one JSON line.
 *
 *   SIGINT: on a terminal, ask "Cancel job ID? [y/N]"; otherwise cancel at
 *   once (job-cancel) and keep following until the job concludes.
 *
 * Exit: 0 when the job completed, 1 when it failed or was cancelled (the
 * error on stderr), 2 for a bad command line.
 *
 * Threading: main thread of a short-lived process; the SIGINT handler only
 * sets a flag and writes a byte to a pipe.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/qmp-client.h"
#include "options.h"

/* Milliseconds between two progress polls (and bar redraws). */
#define TICK_MS 200
/* Width of the bar between the brackets. */
#define BAR_WIDTH 30
/* Weight of the newest rate sample in the moving average. */
#define RATE_WEIGHT 0.3

/* ---------------------------------------------------------------- arguments */

/* Options beyond --socket, --json, --help; one bit each. */
enum {
    JOPT_FORMAT = 1 << 0,         /* -f, --format F */
    JOPT_SYNC = 1 << 1,           /* --sync full|top|none */
    JOPT_WRITE_BLOCKING = 1 << 2, /* --write-blocking */
    JOPT_SPEED = 1 << 3,          /* --speed S */
    JOPT_COMPLETE = 1 << 4,       /* --complete */
    JOPT_JOB_ID = 1 << 5,         /* --job-id ID */
    JOPT_DETACH = 1 << 6,         /* --detach */
    JOPT_BASE = 1 << 7,           /* --base NODE */
    JOPT_TOP = 1 << 8,            /* --top NODE */
};
#define JOPT_START (JOPT_SPEED | JOPT_JOB_ID | JOPT_DETACH)

typedef struct JobArgs JobArgs;

typedef struct JobVerb {
    const char *name;       /* as typed: "job pause" */
    const char *synopsis;
    const char *help;
    unsigned accepts;
    int n_args;             /* exact number of positional arguments */
    /* Does the work; the exit code.  Errors are printed already. */
    int (*run)(QmpConn *c, const JobArgs *a);
    const char *qmp;        /* job ACTION: the QMP command */
} JobVerb;

struct JobArgs {
    const JobVerb *verb;
    const char *socket;
    bool json;
    const char *format;
    const char *sync;
    bool write_blocking;
    int64_t speed;          /* -1: not given */
    bool complete;
    const char *job_id;
    bool detach;
    const char *base;
    const char *top;
    char **args;
};

static void print_job_verb_help(const JobVerb *v)
{
    printf("Usage: diskstack %s [--socket S] [--json] %s\n\n%s"
           "\nCommon options:\n"
           "  --socket S   the daemon's QMP socket (see diskstack(1))\n"
           "  --json       JSON output (a followed job: one event per line)\n"
           "  -h, --help   show this help\n", v->name, v->synopsis, v->help);
}

static const struct option job_longopts[] = {
    { "socket", required_argument, NULL, 'S' },
    { "json", no_argument, NULL, 'j' },
    { "help", no_argument, NULL, 'h' },
    { "format", required_argument, NULL, 'f' },
    { "sync", required_argument, NULL, 's' },
    { "write-blocking", no_argument, NULL, 'w' },
    { "speed", required_argument, NULL, 'p' },
    { "complete", no_argument, NULL, 'c' },
    { "job-id", required_argument, NULL, 'i' },
    { "detach", no_argument, NULL, 'd' },
    { "base", required_argument, NULL, 'b' },
    { "top", required_argument, NULL, 't' },
    { NULL, 0, NULL, 0 },
};

/* The accept bit of an option character; 0 for the common ones. */
static unsigned option_bit(int c)
{
    switch (c) {
    case 'f': return JOPT_FORMAT;
    case 's': return JOPT_SYNC;
    case 'w': return JOPT_WRITE_BLOCKING;
    case 'p': return JOPT_SPEED;
    case 'c': return JOPT_COMPLETE;
    case 'i': return JOPT_JOB_ID;
    case 'd': return JOPT_DETACH;
    case 'b': return JOPT_BASE;
    case 't': return JOPT_TOP;
    default: return 0;
    }
}

/* One option into a; false (usage error printed) on a bad value. */
static bool take_job_option(JobArgs *a, int c)
{
    uint64_t v;

    switch (c) {
    case 'S': a->socket = optarg; break;
    case 'j': a->json = true; break;
    case 'f': a->format = optarg; break;
    case 'w': a->write_blocking = true; break;
    case 'c': a->complete = true; break;
    case 'i': a->job_id = optarg; break;
    case 'd': a->detach = true; break;
    case 'b': a->base = optarg; break;
    case 't': a->top = optarg; break;
    case 's':
        if (strcmp(optarg, "full") && strcmp(optarg, "top") && strcmp(optarg, "none")) {
            cli_usage_error(a->verb->name, "--sync expects full, top or none, "
                            "not '%s'", optarg);
            return false;
        }
        a->sync = optarg;
        break;
    case 'p':
        if (!parse_size(optarg, &v) || v > INT64_MAX) {
            cli_usage_error(a->verb->name, "--speed expects bytes per second "
                            "(e.g. 100M), not '%s'", optarg);
            return false;
        }
        a->speed = (int64_t)v;
        break;
    }
    return true;
}

/* Parses a verb's command line; -1 to go on, else the exit code. */
static int parse_job_args(const JobVerb *v, int argc, char **argv, JobArgs *a)
{
    int c, idx = -1;

    a->verb = v;
    a->speed = -1;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:", job_longopts, &idx)) != -1) {
        if (c == 'h') {
            print_job_verb_help(v);
            return EXIT_OK;
        }
        if (c == '?' || c == ':') {
            cli_bad_option(v->name, argv, optopt, c == ':');
            return EXIT_USAGE;
        }
        if (option_bit(c) && !(v->accepts & option_bit(c))) {
            if (idx >= 0) {
                cli_usage_error(v->name, "option '--%s' does not apply here",
                                job_longopts[idx].name);
            } else {
                cli_usage_error(v->name, "option '-%c' does not apply here", c);
            }
            return EXIT_USAGE;
        }
        if (!take_job_option(a, c)) {
            return EXIT_USAGE;
        }
        idx = -1;
    }
    if (a->detach && a->complete) {
        cli_usage_error(v->name, "--complete needs the job followed, not --detach");
        return EXIT_USAGE;
    }
    a->args = argv + optind;
    if (argc - optind < v->n_args) {
        cli_usage_error(v->name, "expects %s", v->synopsis);
        return EXIT_USAGE;
    }
    if (argc - optind > v->n_args) {
        cli_usage_error(v->name, "unexpected argument '%s'", a->args[v->n_args]);
        return EXIT_USAGE;
    }
    return -1;
}

/* Parses, connects, runs; the exit code. */
static int run_job_verb(const JobVerb *v, int argc, char **argv)
{
    JobArgs a = { 0 };
    QmpConn c;
    Error *err = NULL;
    int ret = parse_job_args(v, argc, argv, &a);

    if (ret >= 0) {
        return ret;
    }
    if (qmp_conn_open(&c, client_socket_choice(a.socket), &err) < 0) {
        cli_report_error(err);
        ret = EXIT_ERROR;
    } else {
        ret = v->run(&c, &a);
    }
    qmp_conn_close(&c);
    return ret;
}

/* Prints err (if any) and gives EXIT_ERROR. */
static int fail(Error *err)
{
    if (err) {
        cli_report_error(err);
    }
    return EXIT_ERROR;
}

/* ---------------------------------------------------------------- output */

/* Pure: "1.2 GiB", "512 KiB", "0 B". */
static const char *fmt_bytes(double v, char *buf, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
    int u = 0;

    for (; v >= 1024 && u + 1 < (int)ARRAY_SIZE(units); u++) {
        v /= 1024;
    }
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
    return buf;
}

static int64_t int_member(json_t *o, const char *key)
{
    return (int64_t)json_integer_value(json_object_get(o, key));
}

static const char *str_member(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

/* Pure: progress percent of a BlockJobInfo (0 when the length is 0). */
static int percent_of(int64_t done, int64_t total)
{
    if (total <= 0) {
        return 0;
    }
    return (int)(done >= total ? 100 : done * 100 / total);
}

static void print_line_json(json_t *o)
{
    char *text = json_dumps(o, JSON_COMPACT);

    if (text) {
        puts(text);
        free(text);
    }
    fflush(stdout);
}

/* ---------------------------------------------------------------- jobs */

static int verb_jobs(QmpConn *c, const JobArgs *a)
{
    Error *err = NULL;
    json_t *jobs = qmp_conn_execute(c, "query-block-jobs", NULL, &err), *j;
    char done[32], total[32], speed[40], pct[8];
    size_t i;

    if (!jobs) {
        return fail(err);
    }
    if (a->json) {
        char *text = json_dumps(jobs, JSON_INDENT(2));
        puts(text ? text : "[]");
        free(text);
        json_decref(jobs);
        return EXIT_OK;
    }
    printf("%-16s %-8s %-10s %5s  %-24s %s\n", "ID", "TYPE", "STATUS",
           "DONE", "BYTES", "SPEED");
    json_array_foreach(jobs, i, j) {
        int64_t len = int_member(j, "len"), off = int_member(j, "offset");
        char bytes[64];
        snprintf(pct, sizeof(pct), "%d%%", percent_of(off, len));
        snprintf(bytes, sizeof(bytes), "%s/%s", fmt_bytes(off, done, sizeof(done)),
                 fmt_bytes(len, total, sizeof(total)));
        if (int_member(j, "speed") > 0) {
            fmt_bytes(int_member(j, "speed"), speed, sizeof(speed) - 2);
            strcat(speed, "/s");
        } else {
            strcpy(speed, "unlimited");
        }
        printf("%-16s %-8s %-10s %5s  %-24s %s\n", str_member(j, "device"),
               str_member(j, "type"), str_member(j, "status"), pct, bytes, speed);
    }
    json_decref(jobs);
    return EXIT_OK;
}

/* ---------------------------------------------------------------- following */

static volatile sig_atomic_t interrupted;
static int sigint_pipe[2] = { -1, -1 };

/* Signal handler (async-signal-safe): flag and wake the poll. */
static void on_sigint(int sig)
{
    int saved = errno;
    (void)sig;
    interrupted = 1;
    if (write(sigint_pipe[1], "", 1) < 0) {
        /* the pipe is full: a wake-up is pending anyway */
    }
    errno = saved;
}

/* SA_RESTART: a read of the QMP socket must not fail with EINTR. */
static void install_sigint(void)
{
    struct sigaction sa = { .sa_handler = on_sigint, .sa_flags = SA_RESTART };

    if (pipe(sigint_pipe) == 0) {
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
    }
}

typedef enum Outcome { OUT_RUNNING, OUT_COMPLETED, OUT_FAILED, OUT_CANCELLED } Outcome;

typedef struct Follow {
    QmpConn *c;
    const char *id;
    bool json, tty, complete;
    bool ask;               /* Ctrl-C asks (stdin and stdout a terminal) */
    bool concluded_shown;   /* the conclusion line is out */
    bool complete_sent;
    char status[24];        /* last status seen ("" before the first) */
    Outcome outcome;
    char *error;            /* malloc'ed: BLOCK_JOB_COMPLETED's error */
    bool done;              /* concluded (or gone) */
    bool bar_drawn;
    /* progress: last sample and the moving average of the rate */
    int64_t offset, len;
    double sample_t;
    int64_t sample_off;
    double rate;
} Follow;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Erases the bar line so that a message can be printed. */
static void clear_bar(Follow *f)
{
    if (f->bar_drawn) {
        fputs("\r\033[K", stdout);
        f->bar_drawn = false;
    }
}

/* Pure: the state word: the status, or how the job ended. */
static const char *state_word(const Follow *f)
{
    switch (f->outcome) {
    case OUT_COMPLETED: return "completed";
    case OUT_FAILED: return "failed";
    case OUT_CANCELLED: return "cancelled";
    default: return f->status[0] ? f->status : "starting";
    }
}

/* [#####.....] 45%  1.2 GiB/2.6 GiB  85.0 MiB/s  ETA 0:17  running */
static void draw_bar(Follow *f)
{
    int pct = percent_of(f->offset, f->len), fill = pct * BAR_WIDTH / 100;
    char bar[BAR_WIDTH + 1], done[32], total[32], rate[32], eta[32];

    memset(bar, '#', fill);
    memset(bar + fill, '.', BAR_WIDTH - fill);
    bar[BAR_WIDTH] = 0;
    if (f->rate > 1 && f->len > f->offset) {
        long s = (long)((f->len - f->offset) / f->rate);
        snprintf(eta, sizeof(eta), "%ld:%02ld", s / 60, s % 60);
    } else {
        snprintf(eta, sizeof(eta), f->len && f->offset >= f->len ? "0:00" : "-:--");
    }
    fmt_bytes(f->rate, rate, sizeof(rate));
    printf("\r\033[K[%s] %3d%%  %s/%s  %s/s  ETA %s  %s", bar, pct,
           fmt_bytes(f->offset, done, sizeof(done)),
           fmt_bytes(f->len, total, sizeof(total)), rate, eta, state_word(f));
    fflush(stdout);
    f->bar_drawn = true;
}

/* A new progress sample: the rate is a moving average of the deltas. */
static void take_progress(Follow *f, int64_t offset, int64_t len)
{
    double t = now_s();

    if (f->sample_t > 0 && t > f->sample_t && offset >= f->sample_off) {
        double r = (offset - f->sample_off) / (t - f->sample_t);
        f->rate = f->rate > 0 ? RATE_WEIGHT * r + (1 - RATE_WEIGHT) * f->rate : r;
    }
    f->sample_t = t;
    f->sample_off = offset;
    f->offset = offset;
    f->len = len;
}

/* A state line (not a terminal, no --json). */
static void state_line(Follow *f)
{
    if (f->json || f->tty || f->concluded_shown) {
        return;
    }
    f->concluded_shown = f->outcome != OUT_RUNNING;
    if (f->outcome == OUT_RUNNING) {
        printf("job %s: %s\n", f->id, f->status);
    } else if (f->outcome == OUT_FAILED) {
        printf("job %s: concluded (error: %s)\n", f->id, f->error);
    } else {
        printf("job %s: concluded (%s)\n", f->id, state_word(f));
    }
    fflush(stdout);
}

static void set_status(Follow *f, const char *status)
{
    if (!status || !strcmp(f->status, status)) {
        return;
    }
    snprintf(f->status, sizeof(f->status), "%s", status);
    if (!strcmp(status, "concluded") || !strcmp(status, "null")) {
        f->done = true;
        if (f->outcome == OUT_RUNNING) {
            f->outcome = OUT_COMPLETED;
        }
    }
    if (strcmp(status, "null")) {
        state_line(f);
    }
}

/* job-complete at ready, once (--complete). */
static void maybe_complete(Follow *f)
{
    Error *err = NULL;
    json_t *ret;

    if (!f->complete || f->complete_sent || strcmp(f->status, "ready")) {
        return;
    }
    f->complete_sent = true;
    ret = qmp_conn_execute(f->c, "job-complete", json_pack("{s:s}", "id", f->id), &err);
    if (!ret) {
        clear_bar(f);
        cli_report_error(err);
    }
    json_decref(ret);
}

/* The job's id in an event's data, NULL if it is not a job event. */
static const char *event_job(json_t *data)
{
    const char *id = json_string_value(json_object_get(data, "id"));
    return id ? id : json_string_value(json_object_get(data, "device"));
}

static bool is_job_event(const char *name)
{
    return !strncmp(name, "JOB_", 4) || !strncmp(name, "BLOCK_JOB_", 10);
}

static void handle_event(Follow *f, json_t *e)
{
    const char *name = str_member(e, "event");
    json_t *data = json_object_get(e, "data");
    const char *id = event_job(data);

    if (!id || strcmp(id, f->id) || !is_job_event(name)) {
        return;
    }
    if (f->json) {
        print_line_json(e);
    }
    if (!strcmp(name, "JOB_STATUS_CHANGE")) {
        set_status(f, str_member(data, "status"));
    } else if (!strcmp(name, "BLOCK_JOB_COMPLETED")) {
        json_t *msg = json_object_get(data, "error");
        f->outcome = msg ? OUT_FAILED : OUT_COMPLETED;
        free(f->error);
        f->error = msg ? strdup(json_string_value(msg)) : NULL;
        take_progress(f, int_member(data, "offset"), int_member(data, "len"));
    } else if (!strcmp(name, "BLOCK_JOB_CANCELLED")) {
        f->outcome = OUT_CANCELLED;
    } else if (!strcmp(name, "BLOCK_JOB_ERROR") && !f->json && !f->tty) {
        printf("job %s: %s error, action %s\n", f->id,
               str_member(data, "operation"), str_member(data, "action"));
    }
}

/* Handles the queued events, oldest first, and empties the queue. */
static void drain_events(Follow *f)
{
    size_t i;
    json_t *e;

    json_array_foreach(f->c->events, i, e) {
        handle_event(f, e);
    }
    json_array_clear(f->c->events);
    maybe_complete(f);
}

/* The BlockJobInfo of f->id in a query-block-jobs list, or NULL. */
static json_t *find_job(json_t *jobs, const char *id)
{
    size_t i;
    json_t *j;

    json_array_foreach(jobs, i, j) {
        if (!strcmp(str_member(j, "device"), id)) {
            return j;
        }
    }
    return NULL;
}

/* One tick: query-block-jobs (pulls in the events before its reply), the
 * events, the progress.  -1 with *errp if the daemon went away. */
static int poll_job(Follow *f, Error **errp)
{
    json_t *jobs = qmp_conn_execute(f->c, "query-block-jobs", NULL, errp), *j;

    if (!jobs) {
        return -1;
    }
    drain_events(f);
    j = find_job(jobs, f->id);
    if (j && !f->done) {
        take_progress(f, int_member(j, "offset"), int_member(j, "len"));
        set_status(f, str_member(j, "status"));
        if (!f->done) {
            maybe_complete(f);
        }
    } else if (!j && !f->done) {
        /* dismissed between two ticks with its events not yet read: one
         * more round trip brings them in */
        json_decref(qmp_conn_execute(f->c, "query-block-jobs", NULL, NULL));
        drain_events(f);
        f->done = true;
    }
    if (f->done && f->outcome == OUT_RUNNING) {
        f->outcome = OUT_COMPLETED;
    }
    json_decref(jobs);
    return 0;
}

/* The outcome of a job that concluded before we looked (auto-dismiss
 * off), from its query-block-jobs entry. */
static void take_concluded(Follow *f, json_t *j)
{
    const char *err = json_string_value(json_object_get(j, "error"));

    f->outcome = err ? OUT_FAILED : OUT_COMPLETED;
    f->error = err ? strdup(err) : NULL;
    if (err && (strstr(err, "cancel") || strstr(err, "Cancel"))) {
        f->outcome = OUT_CANCELLED;
    }
}

/* Ctrl-C: ask on a terminal, else cancel at once. */
static void on_interrupt(Follow *f)
{
    char answer[16] = "";
    Error *err = NULL;
    json_t *ret;

    interrupted = 0;
    if (f->ask) {
        clear_bar(f);
        printf("\nCancel job %s? [y/N] ", f->id);
        fflush(stdout);
        if (!fgets(answer, sizeof(answer), stdin) ||
            (answer[0] != 'y' && answer[0] != 'Y')) {
            return;
        }
    }
    ret = qmp_conn_execute(f->c, "job-cancel", json_pack("{s:s}", "id", f->id), &err);
    if (!ret) {
        /* it concluded meanwhile: the events say how */
        error_free(err);
    }
    json_decref(ret);
}

/* Waits for the socket, a signal or the tick. */
static void wait_tick(Follow *f)
{
    struct pollfd fds[2] = {
        { .fd = f->c->fd, .events = POLLIN },
        { .fd = sigint_pipe[0], .events = POLLIN },
    };
    char buf[16];

    if (poll(fds, sigint_pipe[0] >= 0 ? 2 : 1, TICK_MS) > 0 &&
        (fds[1].revents & POLLIN)) {
        if (read(sigint_pipe[0], buf, sizeof(buf)) < 0) {
            /* nothing to drain */
        }
    }
}

/* True if c->events holds an event of job id (a job that ended before
 * its start command's reply). */
static bool has_job_events(QmpConn *c, const char *id)
{
    size_t i;
    json_t *e;

    json_array_foreach(c->events, i, e) {
        const char *eid = event_job(json_object_get(e, "data"));
        if (eid && !strcmp(eid, id) && is_job_event(str_member(e, "event"))) {
            return true;
        }
    }
    return false;
}

/* Follows job id until it concludes; the exit code. */
static int follow_job(QmpConn *c, const char *id, bool json, bool complete)
{
    Follow f = { .c = c, .id = id, .json = json, .complete = complete,
                 .tty = isatty(STDOUT_FILENO) && !json,
                 .ask = isatty(STDOUT_FILENO) && isatty(STDIN_FILENO) };
    Error *err = NULL;
    json_t *jobs = qmp_conn_execute(c, "query-block-jobs", NULL, &err), *j;
    int ret = 0;

    if (!jobs) {
        return fail(err);
    }
    j = find_job(jobs, id);
    if (!j && !has_job_events(c, id)) {
        json_decref(jobs);
        error_setg(&err, "there is no job '%s'", id);
        return fail(err);
    }
    if (j && !strcmp(str_member(j, "status"), "concluded")) {
        take_concluded(&f, j);
    }
    json_decref(jobs);
    install_sigint();
    drain_events(&f);
    while (!f.done && ret == 0) {
        ret = poll_job(&f, &err);
        if (!f.done && ret == 0) {
            if (f.tty) {
                draw_bar(&f);
            }
            wait_tick(&f);
            if (interrupted) {
                on_interrupt(&f);
            }
        }
    }
    if (f.tty && ret == 0) {
        draw_bar(&f);
        putchar('\n');
    } else if (f.outcome != OUT_RUNNING) {
        state_line(&f);   /* unless the conclusion line is out already */
    }
    if (ret < 0) {
        ret = fail(err);
    } else if (f.outcome == OUT_FAILED) {
        error_setg(&err, "job '%s' failed: %s", id, f.error ? f.error : "unknown error");
        ret = fail(err);
    } else if (f.outcome == OUT_CANCELLED) {
        error_setg(&err, "job '%s' was cancelled", id);
        ret = fail(err);
    }
    free(f.error);
    return ret;
}

/* ---------------------------------------------------------------- job ACTION */

static int verb_job_action(QmpConn *c, const JobArgs *a)
{
    Error *err = NULL;
    json_t *ret = qmp_conn_execute(c, a->verb->qmp,
                                   json_pack("{s:s}", "id", a->args[0]), &err);

    if (!ret) {
        return fail(err);
    }
    if (a->json) {
        print_line_json(ret);
    }
    json_decref(ret);
    return EXIT_OK;
}

static int verb_job_wait(QmpConn *c, const JobArgs *a)
{
    return follow_job(c, a->args[0], a->json, false);
}

/* ---------------------------------------------------------------- starting */

/* Starts a job with cmd/args (stolen), then detaches or follows it. */
static int start_job(QmpConn *c, const JobArgs *a, const char *cmd, json_t *args,
                     const char *id)
{
    Error *err = NULL;
    json_t *ret;

    if (a->speed >= 0) {
        json_object_set_new(args, "speed", json_integer(a->speed));
    }
    json_object_set_new(args, "job-id", json_string(id));
    ret = qmp_conn_execute(c, cmd, args, &err);
    if (!ret) {
        return fail(err);
    }
    json_decref(ret);
    if (a->detach) {
        if (a->json) {
            json_t *o = json_pack("{s:s}", "id", id);
            print_line_json(o);
            json_decref(o);
        } else {
            printf("%s\n", id);
        }
        return EXIT_OK;
    }
    return follow_job(c, id, a->json, a->complete);
}

static int verb_stream(QmpConn *c, const JobArgs *a)
{
    json_t *args = json_pack("{s:s}", "device", a->args[0]);

    if (a->base) {
        json_object_set_new(args, "base-node", json_string(a->base));
    }
    return start_job(c, a, "block-stream", args, a->job_id ? a->job_id : a->args[0]);
}

static int verb_commit(QmpConn *c, const JobArgs *a)
{
    json_t *args = json_pack("{s:s}", "device", a->args[0]);

    if (a->top) {
        json_object_set_new(args, "top-node", json_string(a->top));
    }
    if (a->base) {
        json_object_set_new(args, "base-node", json_string(a->base));
    }
    return start_job(c, a, "block-commit", args, a->job_id ? a->job_id : a->args[0]);
}

/* True if the daemon has a node called name. */
static int node_exists(QmpConn *c, const char *name, bool *exists, Error **errp)
{
    json_t *nodes = qmp_conn_execute(c, "query-named-block-nodes",
                                     json_pack("{s:b}", "flat", 1), errp), *n;
    size_t i;

    if (!nodes) {
        return -1;
    }
    *exists = false;
    json_array_foreach(nodes, i, n) {
        *exists |= !strcmp(str_member(n, "node-name"), name);
    }
    json_decref(nodes);
    return 0;
}

/* TARGET as a file: drive-mirror; an existing file is opened (mode
 * existing, format -f or probed), a missing one created (absolute-paths,
 * format -f or the source's).  Relative paths are ours, not the daemon's. */
static json_t *drive_mirror_args(const JobArgs *a)
{
    char cwd[PATH_MAX], *path = NULL;
    struct stat st;
    json_t *args;

    if (a->args[1][0] != '/' && getcwd(cwd, sizeof(cwd)) &&
        asprintf(&path, "%s/%s", cwd, a->args[1]) < 0) {
        path = NULL;
    }
    args = json_pack("{s:s,s:s}", "target", path ? path : a->args[1],
                     "mode", stat(a->args[1], &st) == 0 ? "existing" : "absolute-paths");
    if (a->format) {
        json_object_set_new(args, "format", json_string(a->format));
    }
    free(path);
    return args;
}

static int verb_mirror(QmpConn *c, const JobArgs *a)
{
    Error *err = NULL;
    bool is_node;
    json_t *args;

    if (node_exists(c, a->args[1], &is_node, &err) < 0) {
        return fail(err);
    }
    if (is_node && a->format) {
        error_setg(&err, "'%s' is a node: -f applies only to a target file",
                   a->args[1]);
        return fail(err);
    }
    args = is_node ? json_pack("{s:s}", "target", a->args[1]) : drive_mirror_args(a);
    json_object_set_new(args, "device", json_string(a->args[0]));
    json_object_set_new(args, "sync", json_string(a->sync ? a->sync : "full"));
    if (a->write_blocking) {
        json_object_set_new(args, "copy-mode", json_string("write-blocking"));
    }
    return start_job(c, a, is_node ? "blockdev-mirror" : "drive-mirror", args,
                     a->job_id ? a->job_id : a->args[0]);
}

/* ---------------------------------------------------------------- dispatch */

#define START_HELP \
    "  --speed S         limit the copy to S bytes/s (k/M/G suffixes)\n" \
    "  --job-id ID       the job's id (default: the node's name)\n" \
    "  --detach          print the job id and return once the job started\n" \
    "Without --detach the job is followed: a progress bar on a terminal,\n" \
    "one line per state change otherwise, one event per line with --json.\n" \
    "Ctrl-C asks whether to cancel.  Exit 0 when the job completed, 1 when\n" \
    "it failed or was cancelled.\n"

static const JobVerb jobs_verb = {
    "jobs", "", "List the block jobs: id, type, status, progress, bytes done/total\n"
    "and speed limit (query-block-jobs).\n", 0, 0, verb_jobs, NULL,
};

static const JobVerb job_verbs[] = {
    { "job pause", "ID", "Pause the job at its next pause point (job-pause).\n",
      0, 1, verb_job_action, "job-pause" },
    { "job resume", "ID", "Resume a paused job (job-resume).\n",
      0, 1, verb_job_action, "job-resume" },
    { "job cancel", "ID", "Cancel the job (job-cancel).\n",
      0, 1, verb_job_action, "job-cancel" },
    { "job complete", "ID", "Complete a ready job: a mirror pivots (job-complete).\n",
      0, 1, verb_job_action, "job-complete" },
    { "job dismiss", "ID", "Remove a concluded job (job-dismiss).\n",
      0, 1, verb_job_action, "job-dismiss" },
    { "job finalize", "ID", "Finalize a pending job (job-finalize).\n",
      0, 1, verb_job_action, "job-finalize" },
    { "job wait", "ID", "Follow the job until it concludes, as the job-starting\n"
      "verbs do; exit 0 when it completed, 1 when it failed or was cancelled.\n",
      0, 1, verb_job_wait, NULL },
    { NULL },
};

static const JobVerb mirror_verb = {
    "mirror", "SRC-NODE TARGET [-f FMT] [--sync full|top|none] [--write-blocking]\n"
    "       [--speed S] [--complete] [--job-id ID] [--detach]",
    "Mirror SRC-NODE to TARGET: an existing node (blockdev-mirror), else a file\n"
    "(drive-mirror: opened if it exists, created otherwise).\n"
    "  -f, --format F    the target file's format\n"
    "  --sync MODE       full (default), top or none\n"
    "  --write-blocking  guest writes go to the target synchronously\n"
    "  --complete        pivot to the target once it is in sync (job-complete)\n"
    START_HELP,
    JOPT_FORMAT | JOPT_SYNC | JOPT_WRITE_BLOCKING | JOPT_COMPLETE | JOPT_START,
    2, verb_mirror, NULL,
};

static const JobVerb stream_verb = {
    "stream", "NODE [--base NODE] [--speed S] [--job-id ID] [--detach]",
    "Copy the data of NODE's backing chain (down to --base, which stays) into\n"
    "NODE, then drop the streamed images from the chain (block-stream).\n"
    "  --base NODE       stop at NODE, which stays the backing node\n"
    START_HELP, JOPT_BASE | JOPT_START, 1, verb_stream, NULL,
};

static const JobVerb commit_verb = {
    "commit", "NODE [--top NODE] [--base NODE] [--speed S] [--job-id ID] [--complete] [--detach]",
    "Copy the data of --top (default: NODE) and the images below it down into\n"
    "--base (default: the bottom of the chain), then drop them from NODE's\n"
    "chain (block-commit).\n"
    "  --top NODE        the highest image to commit (default: NODE)\n"
    "  --base NODE       the image to commit into\n"
    "  --complete        active commit (no --top): pivot to the base once it\n"
    "                    is in sync (job-complete)\n"
    START_HELP, JOPT_TOP | JOPT_BASE | JOPT_COMPLETE | JOPT_START, 1, verb_commit, NULL,
};

int cmd_jobs(int argc, char **argv)
{
    return run_job_verb(&jobs_verb, argc, argv);
}

int cmd_job(int argc, char **argv)
{
    const char *word = argc > 1 ? argv[1] : NULL;

    if (!word) {
        cli_usage_error("job", "missing action");
        return EXIT_USAGE;
    }
    if (!strcmp(word, "--help") || !strcmp(word, "-h")) {
        for (const JobVerb *v = job_verbs; v->name; v++) {
            printf("Usage: diskstack %s %s\n", v->name, v->synopsis);
        }
        return EXIT_OK;
    }
    for (const JobVerb *v = job_verbs; v->name; v++) {
        if (!strcmp(v->name + 4, word)) {
            return run_job_verb(v, argc - 1, argv + 1);
        }
    }
    cli_usage_error("job", "unknown action '%s'", word);
    return EXIT_USAGE;
}

int cmd_mirror(int argc, char **argv)
{
    return run_job_verb(&mirror_verb, argc, argv);
}

int cmd_stream(int argc, char **argv)
{
    return run_job_verb(&stream_verb, argc, argv);
}

int cmd_commit(int argc, char **argv)
{
    return run_job_verb(&commit_verb, argc, argv);
}
