/*
 * main.c — the diskstack command: global options and dispatch to the
 * subcommands (mount.c, serve.c, img*.c, and the client verbs of client.c).  Usage errors print one line plus a hint
 * and exit 2; nothing here touches the block layer.
 *
 * Threading: main thread, before any runtime exists (pure argument work).
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli-version.h"
#include "cli/client.h"
#include "cli/img.h"

typedef struct Command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} Command;

static const Command commands[] = {
    { "mount", cmd_mount, "export an image as a regular file until unmounted" },
    { "serve", cmd_serve, "serve a graph of --blockdev nodes and --export mounts" },
    { "img", cmd_img, "offline image work: create, info, check, map, snapshot, ..." },
    /* client verbs (client.c): talk QMP to a running serve or mount */
    { "graph", cmd_graph, "show a running daemon's exports, nodes and jobs as a tree" },
    { "nodes", cmd_nodes, "list a running daemon's block nodes" },
    { "exports", cmd_exports, "list a running daemon's exports" },
    { "snapshot", cmd_snapshot, "snapshot create|delete|list: external and internal" },
    { "backing", cmd_backing, "backing set NODE BACKING|none: change a backing node" },
    { "export", cmd_export, "export add|del|resume: add, remove or resume a FUSE export" },
    { "throttle", cmd_throttle, "throttle set|show: a throttle group's limits" },
    /* block jobs (client-jobs.c) */
    { "jobs", cmd_jobs, "list a running daemon's block jobs with their progress" },
    { "job", cmd_job, "job pause|resume|cancel|complete|dismiss|finalize|wait ID" },
    { "mirror", cmd_mirror, "copy a live node to a new image and pivot to it" },
    { "stream", cmd_stream, "pull backing data up into a node (block-stream)" },
    { "commit", cmd_commit, "push a node's data down into its base (block-commit)" },
    { "qmp", cmd_qmp, "send one raw QMP command and print the reply" },
};

static void print_help(void)
{
    printf("Usage: diskstack [--socket S] COMMAND [OPTION]... [ARG]...\n"
           "       diskstack --help | --version\n"
           "\n"
           "A virtual disk stack: block driver nodes (file, raw, ...) form a\n"
           "graph whose root is exported as a regular file through FUSE.\n"
           "\n"
           "Commands:\n");
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        printf("  %-9s %s\n", commands[i].name, commands[i].summary);
    }
    printf("\n"
           "Global option:\n"
           "  --socket S   the QMP socket the client verbs use (as their own --socket)\n"
           "\n"
           "Run 'diskstack COMMAND --help' for the options of a command;\n"
           "see diskstack(1) for the definition syntaxes and examples.\n");
}

static void print_version(void)
{
    printf("diskstack %s\n", DISKSTACK_VERSION);
}

void cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "diskstack%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'diskstack%s%s --help' for more information.\n",
            cmd ? " " : "", cmd ? cmd : "");
}

/*
 * Prints err as ONE line "diskstack: ...", as the command promises: messages
 * that carry a hint on a line of its own (QEMU's lock error does) are
 * joined into a sentence.  Frees err.
 */
void cli_report_error(Error *err)
{
    const char *msg = error_get_pretty(err);

    fputs("diskstack: ", stderr);
    for (const char *p = msg; *p; p++) {
        if (*p != '\n') {
            fputc(*p, stderr);
        } else if (p[1]) {
            fputs(p > msg && strchr(".?!:;", p[-1]) ? " " : ". ", stderr);
        }
    }
    fputc('\n', stderr);
    error_free(err);
}

void cli_bad_option(const char *cmd, char **argv, int optopt_char, bool missing_arg)
{
    const char *arg = argv[optind - 1];

    if (missing_arg) {
        cli_usage_error(cmd, "option '%s' requires an argument", arg);
    } else if (optopt_char) {
        cli_usage_error(cmd, "invalid option -- '%c'", optopt_char);
    } else {
        cli_usage_error(cmd, "unrecognized option '%s'", arg);
    }
}

bool cli_parse_count(const char *cmd, const char *opt, const char *text,
                     int max, int *out)
{
    char *end;
    long v;

    v = strtol(text, &end, 10);
    if (end == text || *end || v < 1 || v > max) {
        cli_usage_error(cmd, "%s expects a number from 1 to %d, not '%s'",
                        opt, max, text);
        return false;
    }
    *out = (int)v;
    return true;
}

int cli_default_iothreads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static const Command *find_command(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        if (!strcmp(commands[i].name, name)) {
            return &commands[i];
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "socket", required_argument, NULL, 'S' },
        { NULL, 0, NULL, 0 },
    };
    const Command *cmd;
    int c;

    opterr = 0;   /* we print our own one-line errors */
    /* '+': stop at the command name; its options are its own. */
    while ((c = getopt_long(argc, argv, "+:hV", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            print_help();
            return EXIT_OK;
        case 'V':
            print_version();
            return EXIT_OK;
        case 'S':
            client_set_socket(optarg);
            break;
        default:
            cli_bad_option(NULL, argv, optopt, c == ':');
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        cli_usage_error(NULL, "missing command");
        return EXIT_USAGE;
    }
    cmd = find_command(argv[optind]);
    if (!cmd) {
        cli_usage_error(NULL, "unknown command '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    argc -= optind;
    argv += optind;
    optind = 0;   /* 0 re-initialises getopt for the command's options */
    return cmd->run(argc, argv);
}
