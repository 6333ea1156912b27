/*
 * cli.h — the diskstack command: shared pieces of its subcommands.
 *
 * main.c parses the command line and dispatches; mount.c and serve.c each
 * parse their own options, then hand a DaemonConfig to daemon_run()
 * (daemon.c), which owns the process-wide start-up and shutdown shape:
 *
 *   threads_init_main, global lock, main loop, block_init, IOThreads,
 *   SIGINT/SIGTERM/SIGHUP through a signalfd on the main loop,
 *   config->start() in a coroutine on the main loop (opens the graph, adds
 *   exports), loop_run(loop_main()).
 *
 *   A signal, daemon_shutdown() (an export's mount went away, a fatal error)
 *   or a failed start() runs the shutdown coroutine: QMP stops running
 *   commands (its events still go out), cancel every job, delete every
 *   export (unmount + drain), bdrv_co_close_all() (flush + close), close
 *   the QMP socket, destroy the IOThreads, stop the main loop.  daemon_run() then returns the exit code.
 *
 * Threading: everything here runs on the main thread.  daemon_run() takes the
 * global lock itself; start() and the callbacks it installs are GS code.
 */
#ifndef DISKSTACK_CLI_H
#define DISKSTACK_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include "block-common.h"

/* Exit codes of the diskstack command. */
enum {
    EXIT_OK = 0,
    EXIT_ERROR = 1,     /* start-up or run-time failure */
    EXIT_USAGE = 2,     /* bad command line */
};

typedef struct DaemonConfig {
    /* IOThreads named "iothread0".."iothreadN-1" */
    int n_iothreads;
    /* plus IOThreads with these ids (serve --object iothread) */
    const char *const *named_iothreads;
    int n_named_iothreads;
    /*
     * GS, in a coroutine on the main loop: builds the graph and adds the
     * exports.  Returns 0, or -1 with *errp set (the daemon prints it as one
     * line, shuts down and exits 1).
     */
    int coroutine_fn (*start)(void *opaque, Error **errp);
    void *opaque;
    /* --daemonize: fork; the parent exits once start() has finished (0 when
     * it succeeded, the child's exit code otherwise); the child runs in its
     * own session with stdin/stdout/stderr on /dev/null after start-up.
     * Unlike QEMU it keeps its working directory, so relative paths in
     * later QMP commands mean what they meant on the command line. */
    bool daemonize;
} DaemonConfig;

/* Runs the daemon until it is stopped; returns the process exit code.
 * Main thread, once per process. */
int daemon_run(const DaemonConfig *config);
/* GS: asks for an orderly shutdown (safe to call more than once, and while
 * start() is still running: the shutdown then follows it).  exit_code is the
 * code the process exits with (an error code wins over 0). */
void daemon_shutdown(int exit_code) GS;
/* GS: true once the shutdown coroutine has been scheduled. */
bool daemon_stopping(void) GS;
/* GS, coroutine: deletes one export while the daemon keeps running; the
 * shutdown waits for deletions in progress before closing the graph. */
typedef struct BlockExport BlockExport;
void coroutine_fn daemon_co_delete_export(BlockExport *exp) GS;

/* Prints err as one line "diskstack: ..." (a multi-line message is joined)
 * and frees it.  Both: any thread. */
void cli_report_error(Error *err);

/* Number of online CPUs (at least 1): the default IOThread count. */
int cli_default_iothreads(void);
/* Parses a positive integer option value ("--iothreads 4"); prints the error
 * and returns false on junk.  Both: pure. */
bool cli_parse_count(const char *cmd, const char *opt, const char *text,
                     int max, int *out);
/* Prints "diskstack CMD: MSG" and the --help hint to stderr (usage errors). */
void cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The getopt_long error for the option at argv[optind - 1]. */
void cli_bad_option(const char *cmd, char **argv, int optopt_char, bool missing_arg);

/* Subcommands: argv[0] is the command name. */
int cmd_mount(int argc, char **argv);
int cmd_serve(int argc, char **argv);

#endif
