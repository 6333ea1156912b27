/*
 * client.c — the diskstack client verbs: a human front end over QMP.
 *
 *   diskstack [--socket S] graph | nodes | exports
 *   diskstack snapshot create|delete|list ...
 *   diskstack backing set NODE BACKING|none
 *   diskstack export add|del|resume ...
 *   diskstack throttle set|show NODE|GROUP [--iops-total N] [--bps-read B] ...
 *   diskstack qmp '<json>' | NAME [ARGS-JSON]
 *
 * Each verb is one function that sends QEMU's commands (so the verbs work
 * against qemu-storage-daemon as well as against diskstack) and prints a
 * table, a tree or, with --json, the raw reply data.
 *
 * Which socket: --socket S, else the global `diskstack --socket S`, else
 * $DISKSTACK_SOCKET, else the only socket in the runtime directory that
 * accepts a connection (several: an error listing them).
 *
 * The QMP connection, socket discovery and the runtime directory are in
 * qmp-client.c; events are kept aside there, and only `export del` looks
 * at them (it waits for BLOCK_EXPORT_DELETED).
 *
 * Errors: one line "diskstack: ..." on stderr and exit 1; a bad command line
 * exits 2 with the usual hint.
 *
 * Threading: main thread of a short-lived process; no block-layer state.
 */
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/qmp-client.h"
#include "options.h"

/* Seconds `export del` waits for the export to finish going away. */
#define EXPORT_DEL_TIMEOUT_S 60
/* Deepest graph the tree printer descends (a cycle cannot hang it). */
#define MAX_TREE_DEPTH 64

static const char *global_socket;

void client_set_socket(const char *path)
{
    global_socket = path;
}

/* ---------------------------------------------------------------- arguments */

/* Options beyond --socket, --json and --help, one bit each. */
enum {
    ACCEPT_FILE = 1 << 0,        /* --file PATH */
    ACCEPT_NODE_NAME = 1 << 1,   /* --node-name N */
    ACCEPT_FORMAT = 1 << 2,      /* --format F */
    ACCEPT_INTERNAL = 1 << 3,    /* --internal */
    ACCEPT_WRITABLE = 1 << 4,    /* --writable */
    ACCEPT_IOTHREAD = 1 << 5,    /* --iothread X (repeatable) */
    ACCEPT_LIMITS = 1 << 6,      /* --iops-total N, --bps-read B, ... */
};

/*
 * QEMU's ThrottleLimits keys, in the order `throttle show` prints them:
 * X(name, type).  Each is also a `throttle set --NAME VALUE` option.
 */
#define THROTTLE_LIMITS(X) \
    X("iops-total", OPT_INT) X("iops-total-max", OPT_INT) \
    X("iops-total-max-length", OPT_INT) \
    X("iops-read", OPT_INT) X("iops-read-max", OPT_INT) \
    X("iops-read-max-length", OPT_INT) \
    X("iops-write", OPT_INT) X("iops-write-max", OPT_INT) \
    X("iops-write-max-length", OPT_INT) \
    X("bps-total", OPT_SIZE) X("bps-total-max", OPT_SIZE) \
    X("bps-total-max-length", OPT_INT) \
    X("bps-read", OPT_SIZE) X("bps-read-max", OPT_SIZE) \
    X("bps-read-max-length", OPT_INT) \
    X("bps-write", OPT_SIZE) X("bps-write-max", OPT_SIZE) \
    X("bps-write-max-length", OPT_INT) \
    X("iops-size", OPT_SIZE)

#define LIMIT_DESC(n, t) { .name = n, .type = t },
const BlockOptionDesc throttle_limit_options[] = {
    THROTTLE_LIMITS(LIMIT_DESC)
    { .name = NULL },
};

/* getopt codes of the limit options: OPT_LIMIT + index in the table */
#define OPT_LIMIT 1000
#define N_LIMITS ((int)ARRAY_SIZE(throttle_limit_options) - 1)

typedef struct ClientArgs ClientArgs;

typedef struct Verb {
    const char *name;       /* as typed: "snapshot create" */
    const char *synopsis;   /* the arguments, for the usage line */
    const char *help;       /* what it does and its own options */
    unsigned accepts;
    int min_args, max_args;
    /* Optional: checks the arguments before connecting; prints the usage
     * error and returns false when they do not fit together. */
    bool (*check)(const ClientArgs *a);
    /* Does the work; returns 0, or -1 with *errp set. */
    int (*run)(QmpConn *c, const ClientArgs *a, Error **errp);
} Verb;

struct ClientArgs {
    const Verb *verb;
    const char *socket;
    bool json;
    const char *file;
    const char *node_name;
    const char *format;
    bool internal;
    bool writable;
    const char **iothreads;
    int n_iothreads;
    json_t *limits;         /* --iops-total N ...: a ThrottleLimits object */
    char **args;            /* the positional arguments */
    int n_args;
};

static void print_verb_help(const Verb *v)
{
    printf("Usage: diskstack %s [--socket S] [--json] %s\n\n%s"
           "\nCommon options:\n"
           "  --socket S   the daemon's QMP socket (default: $DISKSTACK_SOCKET,\n"
           "               else the only running daemon's socket in the\n"
           "               runtime directory; see diskstack(1))\n"
           "  --json       print the reply data as JSON\n"
           "  -h, --help   show this help\n", v->name, v->synopsis, v->help);
}

static bool verb_accepts(const Verb *v, int c)
{
    switch (c) {
    case 'F': return v->accepts & ACCEPT_FILE;
    case 'N': return v->accepts & ACCEPT_NODE_NAME;
    case 'f': return v->accepts & ACCEPT_FORMAT;
    case 'i': return v->accepts & ACCEPT_INTERNAL;
    case 'w': return v->accepts & ACCEPT_WRITABLE;
    case 'I': return v->accepts & ACCEPT_IOTHREAD;
    default: return c < OPT_LIMIT || (v->accepts & ACCEPT_LIMITS);
    }
}

/* One option into a; false if it is not one. */
static bool take_option(ClientArgs *a, int c)
{
    switch (c) {
    case 'S': a->socket = optarg; return true;
    case 'j': a->json = true; return true;
    case 'F': a->file = optarg; return true;
    case 'N': a->node_name = optarg; return true;
    case 'f': a->format = optarg; return true;
    case 'i': a->internal = true; return true;
    case 'w': a->writable = true; return true;
    case 'I':
        a->iothreads = realloc(a->iothreads,
                               (a->n_iothreads + 1) * sizeof(*a->iothreads));
        a->iothreads[a->n_iothreads++] = optarg;
        return true;
    default:
        return false;
    }
}

/* Pure: a limit option's value into a->limits: a count, or for the bps
 * limits and iops-size a size with a k/M/G suffix.  Prints the usage error
 * and returns false on junk. */
static bool take_limit(ClientArgs *a, int c)
{
    const BlockOptionDesc *d = &throttle_limit_options[c - OPT_LIMIT];
    uint64_t v;
    char *end;

    if (d->type == OPT_SIZE) {
        if (!parse_size(optarg, &v) || v > INT64_MAX) {
            cli_usage_error(a->verb->name, "--%s expects a size (e.g. 10M), "
                            "not '%s'", d->name, optarg);
            return false;
        }
    } else {
        v = strtoull(optarg, &end, 10);
        if (end == optarg || *end || optarg[0] == '-') {
            cli_usage_error(a->verb->name, "--%s expects a number, not '%s'",
                            d->name, optarg);
            return false;
        }
    }
    if (!a->limits) {
        a->limits = json_object();
    }
    json_object_set_new(a->limits, d->name, json_integer((json_int_t)v));
    return true;
}

#define LIMIT_LONGOPT(n, t) { n, required_argument, NULL, 0 },
static const struct option limit_longopts[] = { THROTTLE_LIMITS(LIMIT_LONGOPT) };

/* Parses a verb's command line (argv[0] is the verb's last word); returns -1
 * to go on, else the exit code. */
static int parse_client_args(const Verb *v, int argc, char **argv, ClientArgs *a)
{
    enum { N_COMMON = 9 };
    static struct option longopts[N_COMMON + ARRAY_SIZE(limit_longopts) + 1] = {
        { "socket", required_argument, NULL, 'S' },
        { "json", no_argument, NULL, 'j' },
        { "file", required_argument, NULL, 'F' },
        { "node-name", required_argument, NULL, 'N' },
        { "format", required_argument, NULL, 'f' },
        { "internal", no_argument, NULL, 'i' },
        { "writable", no_argument, NULL, 'w' },
        { "iothread", required_argument, NULL, 'I' },
        { "help", no_argument, NULL, 'h' },
    };
    int c, idx = -1;

    /* the limit options after the common ones, numbered from OPT_LIMIT */
    for (int i = 0; i < N_LIMITS; i++) {
        longopts[N_COMMON + i] = limit_longopts[i];
        longopts[N_COMMON + i].val = OPT_LIMIT + i;
    }
    a->verb = v;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, &idx)) != -1) {
        if (c == 'h') {
            print_verb_help(v);
            return EXIT_OK;
        }
        if (c != '?' && c != ':' && !verb_accepts(v, c)) {
            cli_usage_error(v->name, "option '--%s' does not apply here",
                            longopts[idx].name);
            return EXIT_USAGE;
        }
        if (c >= OPT_LIMIT) {
            if (!take_limit(a, c)) {
                return EXIT_USAGE;
            }
        } else if (!take_option(a, c)) {
            cli_bad_option(v->name, argv, optopt, c == ':');
            return EXIT_USAGE;
        }
        idx = -1;
    }
    a->args = argv + optind;
    a->n_args = argc - optind;
    if (a->n_args < v->min_args) {
        cli_usage_error(v->name, "expects %s", v->synopsis);
        return EXIT_USAGE;
    }
    if (a->n_args > v->max_args) {
        cli_usage_error(v->name, "unexpected argument '%s'", a->args[v->max_args]);
        return EXIT_USAGE;
    }
    return v->check && !v->check(a) ? EXIT_USAGE : -1;
}

const char *client_socket_choice(const char *opt)
{
    const char *env = getenv("DISKSTACK_SOCKET");

    if (opt) {
        return opt;
    }
    if (global_socket) {
        return global_socket;
    }
    return env && *env ? env : NULL;
}

/* The socket the options ask for; NULL: find the one that is running. */
static const char *chosen_socket(const ClientArgs *a)
{
    return client_socket_choice(a->socket);
}

/* Parses, connects, runs the verb; the process exit code. */
static int run_verb(const Verb *v, int argc, char **argv)
{
    ClientArgs a = { 0 };
    QmpConn c;
    Error *err = NULL;
    int ret = parse_client_args(v, argc, argv, &a);

    if (ret >= 0) {
        free(a.iothreads);
        json_decref(a.limits);
        return ret;
    }
    if (qmp_conn_open(&c, chosen_socket(&a), &err) == 0 && v->run(&c, &a, &err) == 0) {
        ret = EXIT_OK;
    } else {
        cli_report_error(err);
        ret = EXIT_ERROR;
    }
    qmp_conn_close(&c);
    free(a.iothreads);
    json_decref(a.limits);
    return ret;
}

/* Finds a sub-verb ("create" of "snapshot") in a NULL-name-terminated list
 * and runs it. */
static int run_sub_verb(const char *cmd, const Verb *verbs, int argc, char **argv)
{
    const char *word = argc > 1 ? argv[1] : NULL;

    if (!word) {
        cli_usage_error(cmd, "missing action");
        return EXIT_USAGE;
    }
    if (!strcmp(word, "--help") || !strcmp(word, "-h")) {
        for (const Verb *v = verbs; v->name; v++) {
            printf("Usage: diskstack %s %s\n", v->name, v->synopsis);
        }
        return EXIT_OK;
    }
    for (const Verb *v = verbs; v->name; v++) {
        const char *last = strrchr(v->name, ' ');
        if (last && !strcmp(last + 1, word)) {
            return run_verb(v, argc - 1, argv + 1);
        }
    }
    cli_usage_error(cmd, "unknown action '%s'", word);
    return EXIT_USAGE;
}

/* ---------------------------------------------------------------- output */

static void print_json(json_t *data)
{
    char *text = json_dumps(data, JSON_INDENT(2) | JSON_ENCODE_ANY);

    if (text) {
        puts(text);
        free(text);
    }
}

/* "16 MiB", "320 KiB", "1000 B"; "-" when the daemon did not say. */
static const char *human_size(json_t *bytes, char *buf, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
    double v;
    int u = 0;

    if (!json_is_integer(bytes)) {
        return "-";
    }
    v = (double)json_integer_value(bytes);
    while (v >= 1024 && u + 1 < (int)ARRAY_SIZE(units)) {
        v /= 1024;
        u++;
    }
    /* one decimal, dropped when it is 0: "192 KiB", "192.5 KiB" */
    if (u == 0 || (long long)(v * 10 + 0.5) % 10 == 0) {
        snprintf(buf, len, "%lld %s", (long long)(v + 0.5), units[u]);
    } else {
        snprintf(buf, len, "%.1f %s", v, units[u]);
    }
    return buf;
}

/* A string member, or "-" when it is missing. */
static const char *str_or_dash(json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s && *s ? s : "-";
}

/* A text table: columns sized to their widest cell, two spaces apart. */
typedef struct Table {
    int ncols;
    int nrows;
    char **cells;           /* nrows * ncols, malloc'ed strings */
} Table;

static void table_add(Table *t, const char *const *row)
{
    t->cells = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(*t->cells));
    for (int i = 0; i < t->ncols; i++) {
        t->cells[t->nrows * t->ncols + i] = strdup(row[i] ? row[i] : "-");
    }
    t->nrows++;
}

/* Prints and frees the table. */
static void table_print(Table *t)
{
    int width[16] = { 0 };

    for (int r = 0; r < t->nrows; r++) {
        for (int i = 0; i < t->ncols && i < 16; i++) {
            int w = (int)strlen(t->cells[r * t->ncols + i]);
            width[i] = w > width[i] ? w : width[i];
        }
    }
    for (int r = 0; r < t->nrows; r++) {
        for (int i = 0; i < t->ncols; i++) {
            const char *cell = t->cells[r * t->ncols + i];
            if (i + 1 < t->ncols) {
                printf("%-*s  ", width[i], cell);
            } else {
                printf("%s\n", cell);
            }
            free(t->cells[r * t->ncols + i]);
        }
    }
    free(t->cells);
}

/* Prints the return value with --json, else the confirmation line. */
static int print_done(const ClientArgs *a, json_t *ret, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int print_done(const ClientArgs *a, json_t *ret, const char *fmt, ...)
{
    va_list ap;

    if (a->json) {
        print_json(ret);
    } else {
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
    }
    json_decref(ret);
    return 0;
}

/* path made absolute against our cwd: the daemon's cwd is not ours.  The
 * file need not exist yet (a snapshot overlay), so no realpath(). */
static char *absolute_path(const char *path)
{
    char cwd[PATH_MAX], *out;

    if (path[0] == '/' || !getcwd(cwd, sizeof(cwd))) {
        return strdup(path);
    }
    return asprintf(&out, "%s/%s", cwd, path) < 0 ? strdup(path) : out;
}

/* ---------------------------------------------------------------- nodes */

/* query-named-block-nodes (flat: one entry per node, no nested backing
 * images) as a list. */
static json_t *query_nodes(QmpConn *c, Error **errp)
{
    return qmp_conn_execute(c, "query-named-block-nodes",
                       json_pack("{s:b}", "flat", 1), errp);
}

/* The entry of the node called name in a query-named-block-nodes list. */
static json_t *find_node(json_t *nodes, const char *name)
{
    size_t i;
    json_t *n;

    json_array_foreach(nodes, i, n) {
        if (!strcmp(str_or_dash(n, "node-name"), name)) {
            return n;
        }
    }
    return NULL;
}

static int verb_nodes(QmpConn *c, const ClientArgs *a, Error **errp)
{
    json_t *nodes = query_nodes(c, errp), *n;
    Table t = { .ncols = 5 };
    char size[32];
    size_t i;

    if (!nodes) {
        return -1;
    }
    if (a->json) {
        print_json(nodes);
        json_decref(nodes);
        return 0;
    }
    table_add(&t, (const char *[]){ "NODE", "DRIVER", "SIZE", "MODE", "FILE" });
    json_array_foreach(nodes, i, n) {
        json_t *image = json_object_get(n, "image");
        table_add(&t, (const char *[]){
            str_or_dash(n, "node-name"), str_or_dash(n, "drv"),
            human_size(json_object_get(image, "virtual-size"), size, sizeof(size)),
            json_is_true(json_object_get(n, "ro")) ? "ro" : "rw",
            str_or_dash(n, "file") });
    }
    table_print(&t);
    json_decref(nodes);
    return 0;
}

/* ---------------------------------------------------------------- exports */

static int verb_exports(QmpConn *c, const ClientArgs *a, Error **errp)
{
    json_t *exports = qmp_conn_execute(c, "query-block-exports", NULL, errp), *e;
    Table t = { .ncols = 4 };
    size_t i;

    if (!exports) {
        return -1;
    }
    if (a->json) {
        print_json(exports);
        json_decref(exports);
        return 0;
    }
    table_add(&t, (const char *[]){ "ID", "TYPE", "NODE", "MOUNTPOINT" });
    json_array_foreach(exports, i, e) {
        table_add(&t, (const char *[]){ str_or_dash(e, "id"), str_or_dash(e, "type"),
                                       str_or_dash(e, "node-name"),
                                       str_or_dash(e, "mountpoint") });
    }
    table_print(&t);
    json_decref(exports);
    return 0;
}

/* ---------------------------------------------------------------- graph */

/* One parent -> child edge between named block nodes. */
typedef struct Edge {
    const char *parent;
    const char *role;
    const char *child;
} Edge;

typedef struct Graph {
    json_t *nodes;      /* query-named-block-nodes */
    json_t *exports;    /* query-block-exports */
    json_t *debug;      /* x-debug-query-block-graph, or NULL */
    json_t *jobs;       /* query-jobs, or NULL */
    Edge *edges;        /* point into debug or nodes */
    int n_edges;
} Graph;

static void add_edge(Graph *g, const char *parent, const char *role,
                     const char *child)
{
    if (!parent || !role || !child) {
        return;
    }
    g->edges = realloc(g->edges, (g->n_edges + 1) * sizeof(*g->edges));
    g->edges[g->n_edges++] = (Edge){ parent, role, child };
}

/* The name of block-driver node id in x-debug-query-block-graph, or NULL
 * (backends and jobs are not block nodes of the tree). */
static const char *debug_node_name(json_t *debug, json_int_t id)
{
    size_t i;
    json_t *n;

    json_array_foreach(json_object_get(debug, "nodes"), i, n) {
        if (json_integer_value(json_object_get(n, "id")) == id) {
            const char *type = json_string_value(json_object_get(n, "type"));
            return type && !strcmp(type, "block-driver") ?
                   json_string_value(json_object_get(n, "name")) : NULL;
        }
    }
    return NULL;
}

/* Edges from x-debug-query-block-graph; without it, from the nodes'
 * "children" lists (newer QEMU reports them); else the tree is flat. */
static void collect_edges(Graph *g)
{
    size_t i, j;
    json_t *e, *n, *child;

    if (g->debug) {
        json_array_foreach(json_object_get(g->debug, "edges"), i, e) {
            add_edge(g, debug_node_name(g->debug,
                         json_integer_value(json_object_get(e, "parent"))),
                     json_string_value(json_object_get(e, "name")),
                     debug_node_name(g->debug,
                         json_integer_value(json_object_get(e, "child"))));
        }
        return;
    }
    json_array_foreach(g->nodes, i, n) {
        json_array_foreach(json_object_get(n, "children"), j, child) {
            add_edge(g, json_string_value(json_object_get(n, "node-name")),
                     json_string_value(json_object_get(child, "child")),
                     json_string_value(json_object_get(child, "node-name")));
        }
    }
}

static int load_graph(QmpConn *c, Graph *g, Error **errp)
{
    if (!(g->nodes = query_nodes(c, errp)) ||
        !(g->exports = qmp_conn_execute(c, "query-block-exports", NULL, errp)) ||
        qmp_conn_execute_optional(c, "x-debug-query-block-graph", NULL,
                             &g->debug, errp) < 0 ||
        qmp_conn_execute_optional(c, "query-jobs", NULL, &g->jobs, errp) < 0) {
        return -1;
    }
    collect_edges(g);
    return 0;
}

static void free_graph(Graph *g)
{
    json_decref(g->nodes);
    json_decref(g->exports);
    json_decref(g->debug);
    json_decref(g->jobs);
    free(g->edges);
}

/* "NAME  DRIVER  SIZE  FILE[  read-only]" for one node. */
static void print_node_line(const Graph *g, const char *role, const char *name)
{
    json_t *n = find_node(g->nodes, name);
    char size[32];

    printf("%s%s%s", role ? role : "", role ? ": " : "", name);
    if (n) {
        printf("  %s  %s  %s%s", str_or_dash(n, "drv"),
               human_size(json_object_get(json_object_get(n, "image"),
                                          "virtual-size"), size, sizeof(size)),
               str_or_dash(n, "file"),
               json_is_true(json_object_get(n, "ro")) ? "  read-only" : "");
    }
    putchar('\n');
}

/* The children of parent, drawn below it with `indent` in front. */
static void print_children(const Graph *g, const char *parent,
                           const char *indent, int depth)
{
    char next[4 * MAX_TREE_DEPTH + 8];
    int last = -1;

    for (int i = 0; i < g->n_edges; i++) {
        if (!strcmp(g->edges[i].parent, parent)) {
            last = i;
        }
    }
    for (int i = 0; i <= last; i++) {
        const Edge *e = &g->edges[i];
        if (strcmp(e->parent, parent)) {
            continue;
        }
        printf("%s%s", indent, i == last ? "`-- " : "|-- ");
        print_node_line(g, e->role, e->child);
        if (depth < MAX_TREE_DEPTH) {
            snprintf(next, sizeof(next), "%s%s", indent, i == last ? "    " : "|   ");
            print_children(g, e->child, next, depth + 1);
        }
    }
}

static void print_subtree(const Graph *g, const char *name, const char *indent)
{
    print_node_line(g, NULL, name);
    print_children(g, name, indent, 1);
}

static bool has_parent(const Graph *g, const char *name)
{
    for (int i = 0; i < g->n_edges; i++) {
        if (!strcmp(g->edges[i].child, name)) {
            return true;
        }
    }
    return false;
}

static bool is_exported(const Graph *g, const char *name)
{
    size_t i;
    json_t *e;

    json_array_foreach(g->exports, i, e) {
        if (!strcmp(str_or_dash(e, "node-name"), name)) {
            return true;
        }
    }
    return false;
}

/* Each export with the tree of its node ("export ID (TYPE)" when the daemon
 * does not say which node it exports). */
static void print_exports_tree(const Graph *g)
{
    size_t i;
    json_t *e;

    json_array_foreach(g->exports, i, e) {
        const char *node = json_string_value(json_object_get(e, "node-name"));
        const char *mp = json_string_value(json_object_get(e, "mountpoint"));
        printf("export %s (%s%s%s)\n", str_or_dash(e, "id"), str_or_dash(e, "type"),
               mp ? " at " : "", mp ? mp : "");
        if (node) {
            printf("`-- ");
            print_subtree(g, node, "    ");
        }
    }
}

/* Block jobs, one line each: "ID  TYPE  STATUS  CURRENT/TOTAL". */
static void print_jobs(const Graph *g)
{
    char cur[32], total[32];
    size_t i;
    json_t *j;

    if (json_array_size(g->jobs) == 0) {
        return;
    }
    printf("jobs:\n");
    json_array_foreach(g->jobs, i, j) {
        printf("  %s  %s  %s  %s / %s\n", str_or_dash(j, "id"),
               str_or_dash(j, "type"), str_or_dash(j, "status"),
               human_size(json_object_get(j, "current-progress"), cur, sizeof(cur)),
               human_size(json_object_get(j, "total-progress"), total, sizeof(total)));
    }
}

static void print_graph(const Graph *g)
{
    size_t i;
    json_t *n;

    print_exports_tree(g);
    /* then every tree that no export holds */
    json_array_foreach(g->nodes, i, n) {
        const char *name = str_or_dash(n, "node-name");
        if (!has_parent(g, name) && !is_exported(g, name)) {
            print_subtree(g, name, "");
        }
    }
    print_jobs(g);
}

static int verb_graph(QmpConn *c, const ClientArgs *a, Error **errp)
{
    Graph g = { 0 };
    int ret = load_graph(c, &g, errp);

    if (ret == 0 && a->json) {
        json_t *all = json_pack("{s:O,s:O,s:O?,s:O?}", "exports", g.exports,
                                "nodes", g.nodes, "graph", g.debug, "jobs", g.jobs);
        print_json(all);
        json_decref(all);
    } else if (ret == 0) {
        print_graph(&g);
    }
    free_graph(&g);
    return ret;
}

/* ---------------------------------------------------------------- snapshot */

/* Verb.check: the external and the internal form take different things. */
static bool check_snapshot_create(const ClientArgs *a)
{
    if (a->internal && (a->n_args != 2 || a->file || a->node_name || a->format)) {
        cli_usage_error("snapshot create", "--internal expects NODE NAME and "
                        "no --file, --node-name or --format");
        return false;
    }
    if (!a->internal && (a->n_args != 1 || !a->file)) {
        cli_usage_error("snapshot create", "expects NODE --file PATH, or "
                        "--internal NODE NAME");
        return false;
    }
    return true;
}

/* Verb.check: deleting an external snapshot is a commit job, not this. */
static bool check_snapshot_delete(const ClientArgs *a)
{
    if (!a->internal) {
        cli_usage_error("snapshot delete", "only internal snapshots can be "
                        "deleted: use --internal NODE NAME");
        return false;
    }
    return true;
}

/* True if the daemon has a node called name (nodes: the flat node list). */
static bool node_exists(json_t *nodes, const char *name)
{
    size_t i;
    json_t *n;

    json_array_foreach(nodes, i, n) {
        if (!strcmp(json_string_value(json_object_get(n, "node-name")) ?: "", name)) {
            return true;
        }
    }
    return false;
}

/* The overlay's node name when --node-name is not given (QMP needs one):
 * NODE-snap1, NODE-snap2, ... the first the daemon does not have. */
static char *default_overlay_name(QmpConn *c, const char *node, Error **errp)
{
    json_t *nodes = qmp_conn_execute(c, "query-named-block-nodes",
                                     json_pack("{s:b}", "flat", true), errp);
    char *name = NULL;

    for (int i = 1; nodes && !name; i++) {
        if (asprintf(&name, "%s-snap%d", node, i) < 0) {
            abort();
        }
        if (node_exists(nodes, name)) {
            free(name);
            name = NULL;
        }
    }
    json_decref(nodes);
    return name;
}

static int verb_snapshot_create(QmpConn *c, const ClientArgs *a, Error **errp)
{
    const char *node = a->args[0];
    json_t *args, *ret;
    char *file;

    if (a->internal) {
        ret = qmp_conn_execute(c, "blockdev-snapshot-internal-sync",
                          json_pack("{s:s,s:s}", "device", node, "name", a->args[1]),
                          errp);
        return ret ? print_done(a, ret, "created internal snapshot '%s' of node '%s'",
                                a->args[1], node) : -1;
    }
    char *overlay = a->node_name ? strdup(a->node_name)
                                 : default_overlay_name(c, node, errp);
    if (!overlay) {
        return -1;
    }
    file = absolute_path(a->file);
    args = json_pack("{s:s,s:s,s:s}", "node-name", node, "snapshot-file", file,
                     "snapshot-node-name", overlay);
    if (a->format) {
        json_object_set_new(args, "format", json_string(a->format));
    }
    ret = qmp_conn_execute(c, "blockdev-snapshot-sync", args, errp);
    if (ret) {
        print_done(a, ret, "node '%s' now writes to the new overlay '%s' (%s)",
                   node, overlay, file);
    }
    free(overlay);
    free(file);
    return ret ? 0 : -1;
}

static int verb_snapshot_delete(QmpConn *c, const ClientArgs *a, Error **errp)
{
    json_t *ret;

    ret = qmp_conn_execute(c, "blockdev-snapshot-delete-internal-sync",
                      json_pack("{s:s,s:s}", "device", a->args[0], "name", a->args[1]),
                      errp);
    return ret ? print_done(a, ret, "deleted internal snapshot '%s' of node '%s'",
                            a->args[1], a->args[0]) : -1;
}

/* "2026-11-22 02:49:26" from a snapshot's date-sec, in local time. */
static const char *snapshot_date(json_t *snap, char *buf, size_t len)
{
    time_t t = (time_t)json_integer_value(json_object_get(snap, "date-sec"));
    struct tm tm;

    if (!json_object_get(snap, "date-sec") || !localtime_r(&t, &tm) ||
        !strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm)) {
        return "-";
    }
    return buf;
}

static void print_snapshots(const char *node, json_t *snaps)
{
    Table t = { .ncols = 4 };
    char date[32], size[32];
    size_t i;
    json_t *s;

    if (json_array_size(snaps) == 0) {
        printf("node '%s' has no internal snapshots\n", node);
        return;
    }
    table_add(&t, (const char *[]){ "ID", "NAME", "VM SIZE", "DATE" });
    json_array_foreach(snaps, i, s) {
        table_add(&t, (const char *[]){ str_or_dash(s, "id"), str_or_dash(s, "name"),
            human_size(json_object_get(s, "vm-state-size"), size, sizeof(size)),
            snapshot_date(s, date, sizeof(date)) });
    }
    table_print(&t);
}

static int verb_snapshot_list(QmpConn *c, const ClientArgs *a, Error **errp)
{
    json_t *nodes = query_nodes(c, errp), *node, *snaps;

    if (!nodes) {
        return -1;
    }
    node = find_node(nodes, a->args[0]);
    if (!node) {
        error_setg(errp, "Cannot find node '%s'", a->args[0]);
        json_decref(nodes);
        return -1;
    }
    snaps = json_object_get(json_object_get(node, "image"), "snapshots");
    snaps = snaps ? json_incref(snaps) : json_array();
    if (a->json) {
        print_json(snaps);
    } else {
        print_snapshots(a->args[0], snaps);
    }
    json_decref(snaps);
    json_decref(nodes);
    return 0;
}

/* ---------------------------------------------------------------- backing */

/*
 * The options blockdev-reopen needs to keep NODE as it is: QEMU resets every
 * option a reopen leaves out, and no query reports a node's definition.  So
 * it is rebuilt from what the queries do report: driver, read-only,
 * cache.direct and cache.no-flush, detect-zeroes, and every child but the
 * backing one by node name (from the graph edges).  Options no query
 * reports (discard, locking, ...) go back to their defaults, as in QEMU.
 */
static json_t *current_definition(const Graph *g, const char *name, Error **errp)
{
    json_t *n = find_node(g->nodes, name), *def, *cache;
    const char *dz;

    if (!n) {
        error_setg(errp, "Cannot find node '%s'", name);
        return NULL;
    }
    if (!g->debug && !json_object_get(n, "children")) {
        error_setg(errp, "the daemon does not report the children of node '%s' "
                   "(no x-debug-query-block-graph)", name);
        return NULL;
    }
    def = json_pack("{s:s,s:s}", "driver", str_or_dash(n, "drv"), "node-name", name);
    for (int i = 0; i < g->n_edges; i++) {
        const Edge *e = &g->edges[i];
        if (!strcmp(e->parent, name) && strcmp(e->role, "backing")) {
            json_object_set_new(def, e->role, json_string(e->child));
        }
    }
    if (json_is_true(json_object_get(n, "ro"))) {
        json_object_set_new(def, "read-only", json_true());
    }
    cache = json_object();
    for (int i = 0; i < 2; i++) {
        const char *key = i ? "no-flush" : "direct";
        if (json_is_true(json_object_get(json_object_get(n, "cache"), key))) {
            json_object_set_new(cache, key, json_true());
        }
    }
    if (json_object_size(cache)) {
        json_object_set(def, "cache", cache);
    }
    json_decref(cache);
    dz = json_string_value(json_object_get(n, "detect_zeroes"));
    if (dz && strcmp(dz, "off")) {
        json_object_set_new(def, "detect-zeroes", json_string(dz));
    }
    return def;
}

static int verb_backing_set(QmpConn *c, const ClientArgs *a, Error **errp)
{
    const char *node = a->args[0], *backing = a->args[1];
    bool none = !strcmp(backing, "none");
    Graph g = { 0 };
    json_t *def = NULL, *ret = NULL;

    if (load_graph(c, &g, errp) == 0 && (def = current_definition(&g, node, errp))) {
        json_object_set_new(def, "backing", none ? json_null() : json_string(backing));
        ret = qmp_conn_execute(c, "blockdev-reopen",
                          json_pack("{s:[o]}", "options", def), errp);
    }
    free_graph(&g);
    if (!ret) {
        return -1;
    }
    return none ? print_done(a, ret, "node '%s' has no backing node now", node)
                : print_done(a, ret, "node '%s' now has backing node '%s'",
                             node, backing);
}

/* ---------------------------------------------------------------- export */

static int verb_export_add(QmpConn *c, const ClientArgs *a, Error **errp)
{
    char *mp = absolute_path(a->args[2]);
    json_t *args, *ret;

    args = json_pack("{s:s,s:s,s:s,s:s}", "type", "fuse", "id", a->args[0],
                     "node-name", a->args[1], "mountpoint", mp);
    if (a->writable) {
        json_object_set_new(args, "writable", json_true());
    }
    if (a->n_iothreads == 1) {
        /* one IOThread as QEMU's plain string, several as our list */
        json_object_set_new(args, "iothread", json_string(a->iothreads[0]));
    } else if (a->n_iothreads > 1) {
        json_t *list = json_array();
        for (int i = 0; i < a->n_iothreads; i++) {
            json_array_append_new(list, json_string(a->iothreads[i]));
        }
        json_object_set_new(args, "iothread", list);
    }
    ret = qmp_conn_execute(c, "block-export-add", args, errp);
    if (ret) {
        print_done(a, ret, "export '%s' serves node '%s' at %s",
                   a->args[0], a->args[1], mp);
    }
    free(mp);
    return ret ? 0 : -1;
}

static int verb_export_del(QmpConn *c, const ClientArgs *a, Error **errp)
{
    json_t *ret = qmp_conn_execute(c, "block-export-del",
                              json_pack("{s:s}", "id", a->args[0]), errp);

    /* QEMU only starts the removal here: the export is gone when
     * BLOCK_EXPORT_DELETED arrives (before or after the reply) */
    if (!ret || qmp_conn_wait_event(c, "BLOCK_EXPORT_DELETED", a->args[0],
                                    EXPORT_DEL_TIMEOUT_S, errp) < 0) {
        if (ret) {
            error_prepend(errp, "waiting for export '%s' to go away: ", a->args[0]);
        }
        json_decref(ret);
        return -1;
    }
    return print_done(a, ret, "export '%s' removed", a->args[0]);
}

static int verb_export_resume(QmpConn *c, const ClientArgs *a, Error **errp)
{
    json_t *ret = qmp_conn_execute(c, "x-diskstack-export-resume",
                                   json_pack("{s:s}", "id", a->args[0]), errp);

    return ret ? print_done(a, ret, "export '%s' resumed", a->args[0]) : -1;
}

/* ---------------------------------------------------------------- throttle */

/* The throttle group of a query-named-block-nodes entry (malloc'ed), or
 * NULL when it is not a throttle node.  diskstack reports it as
 * "throttle-group"; QEMU only inside the node's "json:{...}" filename. */
static char *node_throttle_group(json_t *node)
{
    const char *file = json_string_value(json_object_get(node, "file"));
    const char *tg = json_string_value(json_object_get(node, "throttle-group"));
    json_t *def = NULL;
    char *out = NULL;

    if (!tg && file && !strncmp(file, "json:", 5) &&
        !strcmp(str_or_dash(node, "drv"), "throttle")) {
        def = json_loads(file + 5, 0, NULL);
        tg = json_string_value(json_object_get(def, "throttle-group"));
    }
    out = tg ? strdup(tg) : NULL;
    json_decref(def);
    return out;
}

/* The group of the one throttle node right above node name (mount's
 * "throttle" above "disk"), malloc'ed; NULL when there is none, or with
 * *errp when there are several. */
static char *throttle_parent_group(const Graph *g, const char *name, Error **errp)
{
    char *group = NULL, *tg;

    for (int i = 0; i < g->n_edges; i++) {
        json_t *parent = find_node(g->nodes, g->edges[i].parent);
        if (strcmp(g->edges[i].child, name) || !parent ||
            !(tg = node_throttle_group(parent))) {
            continue;
        }
        if (group) {
            error_setg(errp, "node '%s' has several throttle nodes above it; "
                       "name one of them or its group", name);
            free(group);
            free(tg);
            return NULL;
        }
        group = tg;
    }
    return group;
}

/* The throttle group that NAME means (malloc'ed): the group with that id,
 * else the group of the throttle node NAME, else that of the one throttle
 * node above node NAME.  NULL with *errp. */
static char *throttle_group_named(QmpConn *c, const char *name, Error **errp)
{
    Graph g = { 0 };
    Error *local = NULL;
    json_t *limits, *node;
    char *group = NULL;

    limits = qmp_conn_execute(c, "qom-get", json_pack("{s:s,s:s}", "path", name,
                              "property", "limits"), NULL);
    if (limits) {
        json_decref(limits);
        return strdup(name);
    }
    if (load_graph(c, &g, errp) < 0) {
        free_graph(&g);
        return NULL;
    }
    node = find_node(g.nodes, name);
    if (!node) {
        error_setg(errp, "there is no throttle group or node called '%s'", name);
    } else if (!(group = node_throttle_group(node)) &&
               !(group = throttle_parent_group(&g, name, &local))) {
        if (local) {
            error_propagate(errp, local);
        } else {
            error_setg(errp, "node '%s' is not a throttle node (driver %s) and "
                       "has none above it", name, str_or_dash(node, "drv"));
        }
    }
    free_graph(&g);
    return group;
}

/* Pure: one limit for the table: "100/s", "10 MiB/s", or "-" when unset. */
static const char *limit_cell(json_t *limits, const char *key, bool bytes,
                              char *buf, size_t len)
{
    json_t *v = json_object_get(limits, key);
    char size[32];

    if (json_integer_value(v) <= 0) {
        return "-";
    }
    if (bytes) {
        snprintf(buf, len, "%s/s", human_size(v, size, sizeof(size)));
    } else {
        snprintf(buf, len, "%lld/s", (long long)json_integer_value(v));
    }
    return buf;
}

/* Pure: a burst's length, "-" when there is no burst. */
static const char *burst_length_cell(json_t *limits, const char *base,
                                     char *buf, size_t len)
{
    char key[64];

    snprintf(key, sizeof(key), "%s-max", base);
    if (json_integer_value(json_object_get(limits, key)) <= 0) {
        return "-";
    }
    snprintf(key, sizeof(key), "%s-max-length", base);
    snprintf(buf, len, "%llds",
             (long long)json_integer_value(json_object_get(limits, key)));
    return buf;
}

static void print_limits(const char *group, json_t *limits)
{
    static const char *const bases[] = {
        "iops-total", "iops-read", "iops-write", "bps-total", "bps-read", "bps-write",
    };
    Table t = { .ncols = 4 };
    char rate[48], burst[48], length[32], key[64], size[32];

    printf("throttle group '%s'\n", group);
    table_add(&t, (const char *[]){ "LIMIT", "RATE", "BURST", "BURST-LENGTH" });
    for (size_t i = 0; i < ARRAY_SIZE(bases); i++) {
        bool bytes = bases[i][0] == 'b';
        snprintf(key, sizeof(key), "%s-max", bases[i]);
        table_add(&t, (const char *[]){ bases[i],
            limit_cell(limits, bases[i], bytes, rate, sizeof(rate)),
            limit_cell(limits, key, bytes, burst, sizeof(burst)),
            burst_length_cell(limits, bases[i], length, sizeof(length)) });
    }
    table_print(&t);
    printf("iops-size: %s\n",
           json_integer_value(json_object_get(limits, "iops-size")) > 0
           ? human_size(json_object_get(limits, "iops-size"), size, sizeof(size))
           : "- (every request is one operation)");
}

static int verb_throttle_show(QmpConn *c, const ClientArgs *a, Error **errp)
{
    char *group = throttle_group_named(c, a->args[0], errp);
    json_t *limits = NULL;

    if (group) {
        limits = qmp_conn_execute(c, "qom-get", json_pack("{s:s,s:s}", "path",
                                  group, "property", "limits"), errp);
    }
    if (limits && a->json) {
        print_json(limits);
    } else if (limits) {
        print_limits(group, limits);
    }
    json_decref(limits);
    free(group);
    return limits ? 0 : -1;
}

/* Verb.check: setting nothing is a mistake. */
static bool check_throttle_set(const ClientArgs *a)
{
    if (!a->limits) {
        cli_usage_error("throttle set", "expects at least one limit, "
                        "e.g. --iops-total 100 or --bps-total 10M");
        return false;
    }
    return true;
}

/* qom-set changes only the limits it names; the daemon validates the
 * result as a whole (total with read/write, -max below its base, ...). */
static int verb_throttle_set(QmpConn *c, const ClientArgs *a, Error **errp)
{
    char *group = throttle_group_named(c, a->args[0], errp);
    json_t *ret = NULL;

    if (group) {
        ret = qmp_conn_execute(c, "qom-set", json_pack("{s:s,s:s,s:O}", "path",
                               group, "property", "limits", "value", a->limits),
                               errp);
    }
    if (ret) {
        print_done(a, ret, "throttle group '%s': limits changed", group);
    }
    free(group);
    return ret ? 0 : -1;
}

/* ---------------------------------------------------------------- qmp */

/* The message for `qmp TEXT [ARGS]`: a whole {"execute": ...} object, or a
 * command name with optional arguments.  NULL with *errp on bad JSON. */
static json_t *raw_command(const ClientArgs *a, Error **errp)
{
    json_error_t jerr;
    json_t *msg, *args = NULL;

    if (a->args[0][0] == '{') {
        msg = json_loads(a->args[0], 0, &jerr);
        if (!msg || !json_is_string(json_object_get(msg, "execute")) ||
            a->n_args > 1) {
            error_setg(errp, "expects '{\"execute\": NAME, \"arguments\": {...}}'%s%s",
                       msg ? "" : ": ", msg ? "" : jerr.text);
            json_decref(msg);
            return NULL;
        }
        return msg;
    }
    if (a->n_args > 1) {
        args = json_loads(a->args[1], 0, &jerr);
        if (!json_is_object(args)) {
            error_setg(errp, "the arguments of %s must be a JSON object%s%s",
                       a->args[0], args ? "" : ": ", args ? "" : jerr.text);
            json_decref(args);
            return NULL;
        }
    }
    msg = json_pack("{s:s}", "execute", a->args[0]);
    if (args) {
        json_object_set_new(msg, "arguments", args);
    }
    return msg;
}

/* Verb.check: the JSON of the command line is a usage matter. */
static bool check_qmp(const ClientArgs *a)
{
    Error *err = NULL;
    json_t *msg = raw_command(a, &err);

    if (!msg) {
        cli_usage_error("qmp", "%s", error_get_pretty(err));
        error_free(err);
        return false;
    }
    json_decref(msg);
    return true;
}

/* Prints the whole reply (pretty, or one line with --json); a reply with an
 * error also gives the one-line error and exit 1. */
static int verb_qmp(QmpConn *c, const ClientArgs *a, Error **errp)
{
    json_t *msg = raw_command(a, errp), *reply = NULL, *ret;
    char *text;

    if (!msg) {
        return -1;
    }
    if (qmp_conn_send(c, msg, errp) == 0) {
        reply = qmp_conn_recv_reply(c, errp);
    }
    json_decref(msg);
    if (!reply) {
        return -1;
    }
    text = json_dumps(reply, a->json ? JSON_COMPACT : JSON_INDENT(4));
    if (text) {
        puts(text);
        free(text);
    }
    ret = qmp_conn_reply_return(reply, errp);
    json_decref(ret);
    return ret ? 0 : -1;
}

/* ---------------------------------------------------------------- dispatch */

static const Verb graph_verb = {
    "graph", "",
    "Show the graph as a tree: each export with its node, then node -> children\n"
    "with role, driver, size and file; then the trees no export holds; then the\n"
    "block jobs.\n", 0, 0, 0, NULL, verb_graph,
};

static const Verb nodes_verb = {
    "nodes", "", "List the named block nodes.\n", 0, 0, 0, NULL, verb_nodes,
};

static const Verb exports_verb = {
    "exports", "", "List the exports.\n", 0, 0, 0, NULL, verb_exports,
};

static const Verb snapshot_verbs[] = {
    { "snapshot create",
      "NODE --file PATH [--node-name N] [--format F] | --internal NODE NAME",
      "External: put a new overlay PATH (created, format qcow2 unless --format)\n"
      "on top of NODE (blockdev-snapshot-sync); --node-name names the overlay\n"
      "(default: NODE-snap1, NODE-snap2, ... the first not in use).\n"
      "Internal (--internal): a snapshot NAME inside the image of NODE\n"
      "(blockdev-snapshot-internal-sync).\n",
      ACCEPT_FILE | ACCEPT_NODE_NAME | ACCEPT_FORMAT | ACCEPT_INTERNAL, 1, 2,
      check_snapshot_create, verb_snapshot_create },
    { "snapshot delete", "--internal NODE NAME",
      "Delete the internal snapshot NAME of NODE\n"
      "(blockdev-snapshot-delete-internal-sync).\n",
      ACCEPT_INTERNAL, 2, 2, check_snapshot_delete, verb_snapshot_delete },
    { "snapshot list", "NODE", "List the internal snapshots of NODE.\n",
      0, 1, 1, NULL, verb_snapshot_list },
    { NULL },
};

static const Verb backing_verbs[] = {
    { "backing set", "NODE BACKING|none",
      "Give NODE the backing node BACKING, or none (blockdev-reopen with the\n"
      "node's other options unchanged).\n", 0, 2, 2, NULL, verb_backing_set },
    { NULL },
};

static const Verb export_verbs[] = {
    { "export add", "ID NODE MOUNTPOINT [--writable] [--iothread X]...",
      "Export NODE through FUSE on the existing regular file MOUNTPOINT\n"
      "(block-export-add type=fuse).  --iothread serves it from IOThread X;\n"
      "repeat it to serve from several (multiqueue).\n",
      ACCEPT_WRITABLE | ACCEPT_IOTHREAD, 3, 3, NULL, verb_export_add },
    { "export del", "ID",
      "Remove the export ID and wait until it is unmounted (block-export-del).\n",
      0, 1, 1, NULL, verb_export_del },
    { "export resume", "ID",
      "Resume the export ID that its stop error policy (werror/rerror=stop or\n"
      "enospc) paused: held requests go on, failed ones are retried\n"
      "(x-diskstack-export-resume).\n",
      0, 1, 1, NULL, verb_export_resume },
    { NULL },
};

static const Verb throttle_verbs[] = {
    { "throttle set", "NODE|GROUP [--iops-total N] [--bps-read B] ...",
      "Change the limits of the throttle group GROUP, or of the group of the\n"
      "throttle node NODE (or of the one throttle node above NODE) with\n"
      "qom-set of the group's \"limits\".  Limits not given keep their values,\n"
      "0 removes one.  Limit options (bps-* and --iops-size take sizes such\n"
      "as 10M; -max is a burst rate, -max-length its seconds):\n"
      "  --iops-total N  --iops-read N  --iops-write N\n"
      "  --bps-total B   --bps-read B   --bps-write B\n"
      "  --iops-total-max N, --bps-read-max B, ... (any of the six)\n"
      "  --iops-total-max-length S, ... (any of the six)\n"
      "  --iops-size B   a larger request counts as one op per B bytes\n",
      ACCEPT_LIMITS, 1, 1, check_throttle_set, verb_throttle_set },
    { "throttle show", "NODE|GROUP",
      "Show the limits of the throttle group GROUP, or of the group of the\n"
      "throttle node NODE (or of the one throttle node above NODE): qom-get\n"
      "of the group's \"limits\", as a table or with --json as it is.\n",
      0, 1, 1, NULL, verb_throttle_show },
    { NULL },
};

static const Verb qmp_verb = {
    "qmp", "'{\"execute\": NAME, \"arguments\": {...}}' | NAME [ARGS-JSON]",
    "Send one QMP command and print the whole reply.  Exit 1 if it is an\n"
    "error.  Events are ignored.\n", 0, 1, 2, check_qmp, verb_qmp,
};

int cmd_graph(int argc, char **argv)
{
    return run_verb(&graph_verb, argc, argv);
}

int cmd_nodes(int argc, char **argv)
{
    return run_verb(&nodes_verb, argc, argv);
}

int cmd_exports(int argc, char **argv)
{
    return run_verb(&exports_verb, argc, argv);
}

int cmd_snapshot(int argc, char **argv)
{
    return run_sub_verb("snapshot", snapshot_verbs, argc, argv);
}

int cmd_backing(int argc, char **argv)
{
    return run_sub_verb("backing", backing_verbs, argc, argv);
}

int cmd_export(int argc, char **argv)
{
    return run_sub_verb("export", export_verbs, argc, argv);
}

int cmd_throttle(int argc, char **argv)
{
    return run_sub_verb("throttle", throttle_verbs, argc, argv);
}

int cmd_qmp(int argc, char **argv)
{
    return run_verb(&qmp_verb, argc, argv);
}
