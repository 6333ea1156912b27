/*
 * serve.c — `diskstack serve [--blockdev DEF]... [--export DEF]...
 * [--object DEF]... [--iothreads N] [--pidfile F] [--qmp SOCKET]`: a graph built from
 * definitions, served until a signal.
 *
 * A DEF is JSON or QEMU's dotted key=value (defn_parse) and means exactly
 * what the same QMP command would: --blockdev is blockdev-add, --export is
 * block-export-add, --object is object-add.  Key=value strings are coerced
 * to the types of the option tables, so `cache.direct=on` and
 * {"cache": {"direct": true}} are the same definition.
 *
 * Order: --object IOThreads exist before anything else; then the --object
 * throttle groups (through QMP object-add itself, so both mean the same);
 * then the --blockdev nodes in command-line order (later ones may name
 * earlier ones as children, throttle nodes their group); then the exports.
 * Any failure is one line and exit 1.
 *
 * --object throttle-group,id=g0,limits.iops-total=100,limits.bps-read=10M
 * takes the limits dotted (sizes with suffixes) or as JSON, and QEMU's
 * legacy x-iops-total=100 keys.
 *
 * The QMP socket is --qmp SOCKET, or <runtime dir>/serve-<pid>.qmp (client.h)
 * when none is given; either way its path is printed once it listens.
 *
 * IOThreads: --iothreads N creates "iothread0".."iothreadN-1".  Without it,
 * one per CPU — unless --object iothread is given, in which case exactly the
 * named ones exist (as with qemu-storage-daemon).
 *
 * Threading: functions marked GS run in coroutines on the main loop with the
 * global lock; the others run on the main thread before the runtime exists
 * (argument parsing) or after it stopped (cleanup).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block-gs.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "driver.h"   /* before export.h: its option table needs the type */
#include "fuse/export.h"
#include "loop/loop.h"
#include "options.h"
#include "qmp/server.h"

#define MAX_IOTHREADS 1024

typedef struct ServeArgs {
    const char **blockdevs;
    int n_blockdevs;
    const char **exports;
    int n_exports;
    const char **iothread_ids;   /* from --object iothread */
    int n_iothread_ids;
    json_t **objects;            /* every --object, checked */
    const char **object_texts;   /* ... as given, for messages */
    int n_objects;
    int iothreads;               /* -1: default */
    const char *pidfile;
    const char *qmp_path;        /* --qmp: the control socket */
    char *qmp_default;           /* without --qmp: in the runtime dir */
    char pidfile_abs[PATH_MAX];
    bool wrote_pidfile;
    bool daemonize;
} ServeArgs;

/* What --object qom-type=iothread accepts.  The poll and batch settings of
 * QEMU's iothread object are accepted so its command lines work, and have no
 * effect: our loops never busy-poll. */
static const BlockOptionDesc iothread_object_options[] = {
    { .name = "qom-type", .type = OPT_STRING, .required = true },
    { .name = "id", .type = OPT_STRING, .required = true },
    { .name = "poll-max-ns", .type = OPT_INT, .help = "accepted, no effect" },
    { .name = "poll-grow", .type = OPT_INT, .help = "accepted, no effect" },
    { .name = "poll-shrink", .type = OPT_INT, .help = "accepted, no effect" },
    { .name = "aio-max-batch", .type = OPT_INT, .help = "accepted, no effect" },
    { .name = NULL },
};

/* What --object qom-type=throttle-group accepts: the limits as
 * limits.KEY or QEMU's legacy x-KEY, for every key of
 * throttle_limit_options (client.c).  Built once (main thread, parsing). */
static const BlockOptionDesc *throttle_group_object_options(void)
{
    enum { N = 64 };
    static BlockOptionDesc table[3 + 2 * N];
    static char names[2 * N][64];
    int n = 0;

    if (table[0].name) {
        return table;
    }
    table[n++] = (BlockOptionDesc){ .name = "qom-type", .type = OPT_STRING,
                                    .required = true };
    table[n++] = (BlockOptionDesc){ .name = "id", .type = OPT_STRING,
                                    .required = true };
    for (int i = 0; i < N && throttle_limit_options[i].name; i++) {
        for (int legacy = 0; legacy < 2; legacy++) {
            char *name = names[2 * i + legacy];
            snprintf(name, sizeof(names[0]), "%s%s", legacy ? "x-" : "limits.",
                     throttle_limit_options[i].name);
            table[n++] = (BlockOptionDesc){ .name = name,
                                            .type = throttle_limit_options[i].type };
        }
    }
    return table;
}

static void print_serve_help(void)
{
    printf("Usage: diskstack serve [OPTION]...\n"
           "\n"
           "Build a graph of block nodes from definitions and serve its exports\n"
           "until SIGINT or SIGTERM.  A DEF is JSON ('{\"driver\": \"file\", ...}')\n"
           "or dotted key=value ('driver=file,node-name=f0,filename=a.raw').\n"
           "\n"
           "Options:\n"
           "  --blockdev DEF   add a node (as QMP blockdev-add); in order, so a\n"
           "                   later node may use an earlier one as a child\n"
           "  --export DEF     add an export (as QMP block-export-add), e.g.\n"
           "                   type=fuse,id=e0,node-name=disk,mountpoint=F,writable=on\n"
           "  --object DEF     add an object (as QMP object-add): iothread,id=NAME\n"
           "                   or throttle-group,id=G,limits.iops-total=N,...\n"
           "  --iothreads N    create N IOThreads (default: one per CPU, or none\n"
           "                   besides the --object ones when those are given)\n"
           "  --pidfile FILE   write the process id to FILE once every export\n"
           "                   serves; removed at exit\n"
           "  --qmp SOCKET     accept QMP commands on the unix socket SOCKET\n"
           "                   (mode 0600, removed at exit; default:\n"
           "                   <runtime dir>/serve-PID.qmp, see diskstack(1))\n"
           "  --daemonize      run in the background; return once every export\n"
           "                   serves (exit 0) or start-up failed (exit 1)\n"
           "  -h, --help       show this help\n");
}

/* Pure: QEMU lets --object start with the type alone ("iothread,id=io0"):
 * returns the definition with "qom-type=" made explicit (to free). */
static char *object_with_implied_type(const char *text)
{
    size_t head = strcspn(text, ",=");
    char *out;

    if (text[0] == '{' || text[head] == '=' ||
        asprintf(&out, "qom-type=%s", text) < 0) {
        return strdup(text);
    }
    return out;
}

static bool object_is_iothread(json_t *obj)
{
    return !strcmp(json_string_value(json_object_get(obj, "qom-type")) ?: "",
                   "iothread");
}

/* Pure: parses and checks one --object definition.  Prints one line and
 * returns NULL on error. */
static json_t *parse_object(const char *text)
{
    Error *err = NULL;
    char *full = object_with_implied_type(text);
    json_t *obj = defn_parse(full, &err);
    const char *type;

    free(full);

    if (!obj) {
        error_prepend(&err, "--object %s: ", text);
        cli_report_error(err);
        return NULL;
    }
    type = json_string_value(json_object_get(obj, "qom-type"));
    if (type && strcmp(type, "iothread") && strcmp(type, "throttle-group")) {
        error_report("--object %s: Object type '%s' is not supported yet",
                     text, type);
        json_decref(obj);
        return NULL;
    }
    if (opts_check(obj, object_is_iothread(obj) ? iothread_object_options
                                                 : throttle_group_object_options(),
                   !defn_is_json(text), &err) < 0) {
        error_prepend(&err, "--object %s: ", text);
        cli_report_error(err);
        json_decref(obj);
        return NULL;
    }
    return obj;
}

static void append(const char ***list, int *n, const char *item)
{
    *list = realloc(*list, (*n + 1) * sizeof(**list));
    (*list)[(*n)++] = item;
}

static bool add_object(ServeArgs *s, const char *text)
{
    json_t *obj = parse_object(text);

    if (!obj) {
        return false;
    }
    s->objects = realloc(s->objects, (s->n_objects + 1) * sizeof(*s->objects));
    s->objects[s->n_objects] = obj;
    s->object_texts = realloc(s->object_texts,
                              (s->n_objects + 1) * sizeof(*s->object_texts));
    s->object_texts[s->n_objects++] = text;
    if (object_is_iothread(obj)) {
        /* the daemon creates these before start() */
        append(&s->iothread_ids, &s->n_iothread_ids,
               json_string_value(json_object_get(obj, "id")));
    }
    return true;
}

static void free_serve_args(ServeArgs *s)
{
    for (int i = 0; i < s->n_objects; i++) {
        json_decref(s->objects[i]);
    }
    free(s->objects);
    free(s->object_texts);
    free(s->iothread_ids);
    free(s->blockdevs);
    free(s->exports);
    free(s->qmp_default);
}

/* GS: the --object throttle groups, as QMP object-add would create them.
 * key=value gave a nested "limits" object already (limits.KEY). */
static int coroutine_fn add_throttle_groups(ServeArgs *s, Error **errp) GS
{
    const QmpCommand *object_add = qmp_find_command("object-add");

    GS_CODE();
    for (int i = 0; i < s->n_objects; i++) {
        json_t *ret;
        if (object_is_iothread(s->objects[i])) {
            continue;
        }
        ret = qmp_dispatch(object_add, s->objects[i], errp);
        if (!ret) {
            error_prepend(errp, "--object %s: ", s->object_texts[i]);
            return -1;
        }
        json_decref(ret);
    }
    return 0;
}

/* GS: one --blockdev: parse, check (coercing key=value strings only), open. */
static int coroutine_fn open_blockdev(const char *text, Error **errp) GS
{
    json_t *def = defn_parse(text, errp);
    BlockNode *bs = NULL;

    GS_CODE();
    if (def && blockdev_def_check(def, !defn_is_json(text), errp) == 0) {
        bs = bdrv_co_open_blockdev(def, errp);
    }
    json_decref(def);
    if (!bs) {
        error_prepend(errp, "--blockdev %s: ", text);
        return -1;
    }
    return 0;
}

/* GS: one --export: parse, check (coercing key=value strings only), add. */
static int coroutine_fn add_export(const char *text, Error **errp) GS
{
    json_t *def = defn_parse(text, errp);
    BlockExport *exp = NULL;

    GS_CODE();
    /* block_export_add checks the definition (iothread may be a list) */
    if (def) {
        exp = block_export_add(def, errp);
    }
    json_decref(def);
    if (!exp) {
        error_prepend(errp, "--export %s: ", text);
        return -1;
    }
    block_export_set_gone_cb(exp, qmp_export_gone, NULL);
    return 0;
}

/* Written once everything serves, so a script may wait for it; via a
 * temporary name so a reader never sees a half-written file. */
static int write_pidfile(ServeArgs *s, Error **errp)
{
    char tmp[PATH_MAX + 8];
    FILE *f;

    snprintf(tmp, sizeof(tmp), "%s.tmp", s->pidfile_abs);
    f = fopen(tmp, "w");
    if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0 ||
        rename(tmp, s->pidfile_abs) < 0) {
        error_setg_errno(errp, errno, "cannot write pidfile '%s'", s->pidfile);
        unlink(tmp);
        return -1;
    }
    s->wrote_pidfile = true;
    return 0;
}

/* GS: the control socket: --qmp, else <runtime dir>/serve-<pid>.qmp.  The
 * default is made here, in the process that serves (--daemonize forked). */
static int start_qmp(ServeArgs *s, Error **errp) GS
{
    const char *path = s->qmp_path;

    GS_CODE();
    if (!path && !(path = s->qmp_default = cli_default_qmp_path("serve", errp))) {
        return -1;
    }
    if (qmp_server_start(path, errp) < 0) {
        return -1;
    }
    fprintf(stderr, "diskstack: QMP socket: %s\n", path);
    return 0;
}

/* DaemonConfig.start (GS, coroutine on the main loop). */
static int coroutine_fn serve_start(void *opaque, Error **errp) GS
{
    ServeArgs *s = opaque;

    GS_CODE();
    if (add_throttle_groups(s, errp) < 0) {
        return -1;
    }
    for (int i = 0; i < s->n_blockdevs; i++) {
        if (open_blockdev(s->blockdevs[i], errp) < 0) {
            return -1;
        }
    }
    for (int i = 0; i < s->n_exports; i++) {
        if (add_export(s->exports[i], errp) < 0) {
            return -1;
        }
    }
    if (start_qmp(s, errp) < 0) {
        return -1;
    }
    if (s->pidfile && write_pidfile(s, errp) < 0) {
        return -1;
    }
    return 0;
}

/* The pidfile path made absolute now, while the cwd is the user's. */
static bool resolve_pidfile(ServeArgs *s)
{
    char cwd[PATH_MAX];
    int n;

    if (s->pidfile[0] == '/') {
        n = snprintf(s->pidfile_abs, sizeof(s->pidfile_abs), "%s", s->pidfile);
    } else if (getcwd(cwd, sizeof(cwd))) {
        n = snprintf(s->pidfile_abs, sizeof(s->pidfile_abs), "%s/%s", cwd, s->pidfile);
    } else {
        fprintf(stderr, "diskstack: getcwd: %s\n", strerror(errno));
        return false;
    }
    if (n >= (int)sizeof(s->pidfile_abs)) {
        fprintf(stderr, "diskstack: pidfile path '%s' is too long\n", s->pidfile);
        return false;
    }
    return true;
}

/* Parses the options; returns -1 to continue, else the exit code. */
static int parse_serve_args(int argc, char **argv, ServeArgs *s)
{
    enum { OPT_BLOCKDEV = 256, OPT_EXPORT, OPT_OBJECT, OPT_IOTHREADS, OPT_PIDFILE,
           OPT_QMP, OPT_DAEMONIZE };
    static const struct option longopts[] = {
        { "blockdev", required_argument, NULL, OPT_BLOCKDEV },
        { "export", required_argument, NULL, OPT_EXPORT },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "iothreads", required_argument, NULL, OPT_IOTHREADS },
        { "pidfile", required_argument, NULL, OPT_PIDFILE },
        { "qmp", required_argument, NULL, OPT_QMP },
        { "daemonize", no_argument, NULL, OPT_DAEMONIZE },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    s->iothreads = -1;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_BLOCKDEV: append(&s->blockdevs, &s->n_blockdevs, optarg); break;
        case OPT_EXPORT: append(&s->exports, &s->n_exports, optarg); break;
        case OPT_PIDFILE: s->pidfile = optarg; break;
        case OPT_QMP: s->qmp_path = optarg; break;
        case OPT_DAEMONIZE: s->daemonize = true; break;
        case OPT_OBJECT:
            if (!add_object(s, optarg)) {
                return EXIT_ERROR;
            }
            break;
        case OPT_IOTHREADS:
            if (!cli_parse_count("serve", "--iothreads", optarg,
                                 MAX_IOTHREADS, &s->iothreads)) {
                return EXIT_USAGE;
            }
            break;
        case 'h':
            print_serve_help();
            return EXIT_OK;
        default:
            cli_bad_option("serve", argv, optopt, c == ':');
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cli_usage_error("serve", "unexpected argument '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    if (s->iothreads < 0) {
        s->iothreads = s->n_iothread_ids ? 0 : cli_default_iothreads();
    }
    if (s->pidfile && !resolve_pidfile(s)) {
        return EXIT_ERROR;
    }
    return -1;
}

int cmd_serve(int argc, char **argv)
{
    ServeArgs s = { 0 };
    DaemonConfig config = { 0 };
    int ret = parse_serve_args(argc, argv, &s);

    if (ret < 0) {
        config.n_iothreads = s.iothreads;
        config.named_iothreads = s.iothread_ids;
        config.n_named_iothreads = s.n_iothread_ids;
        config.start = serve_start;
        config.opaque = &s;
        config.daemonize = s.daemonize;
        ret = daemon_run(&config);
    }
    if (s.wrote_pidfile) {
        unlink(s.pidfile_abs);
    }
    free_serve_args(&s);
    return ret;
}
