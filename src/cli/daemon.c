/*
 * daemon.c — start-up and shutdown of a serving diskstack process (mount and
 * serve share it).  The shape is described in cli.h.
 *
 * Why a signalfd: IOThreads must never run a signal handler (it could
 * interrupt a request half way), so the shutdown signals are blocked in every
 * thread before the first IOThread starts (threads inherit the mask) and the
 * main loop reads them as an ordinary readable fd.
 *
 * Why everything goes through the main loop: GS code runs in coroutines on
 * the main loop because it may wait for I/O (probing reads the image,
 * closing flushes it).  Callbacks that arrive outside a coroutine (a signal,
 * an export's "gone") only schedule the shutdown coroutine.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "block-gs.h"
#include "cli/cli.h"
#include "driver.h"   /* before export.h: its option table needs the type */
#include "fuse/export.h"
#include "jobs/job.h"
#include "loop/loop.h"
#include "qmp/server.h"
#include "util/threads.h"

/* Signals after which a third one forces an immediate exit. */
#define FORCE_EXIT_SIGNALS 3

/* The one daemon of this process; main thread only. */
static struct {
    const DaemonConfig *config;
    IOThread **iothreads;
    int n_iothreads;
    int sigfd;
    int signals_seen;
    bool start_done;        /* config->start() has returned */
    bool stop_requested;    /* someone asked for a shutdown */
    bool stopping;          /* the shutdown coroutine has been scheduled */
    int exit_code;
    int ready_fd;           /* --daemonize: tells the parent start() is done */
    int deleting;           /* daemon_co_delete_export() calls in progress */
    CoQueue deleted;        /* shutdown waits here for them */
} d;

/* Main thread, before any other thread exists (threads inherit the mask). */
static void block_shutdown_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, set, NULL);
    /* A reader of our stderr going away must not kill us mid-flush. */
    signal(SIGPIPE, SIG_IGN);
}

/* GS: creates the IOThreads the config asks for; on error the ones created
 * so far stay in d.iothreads for destroy_iothreads(). */
static int create_iothreads(const DaemonConfig *c, Error **errp) GS
{
    int total = c->n_iothreads + c->n_named_iothreads;
    char name[32];

    GS_CODE();
    d.iothreads = calloc(total > 0 ? total : 1, sizeof(*d.iothreads));
    if (!d.iothreads) {
        error_setg(errp, "out of memory");
        return -1;
    }
    for (int i = 0; i < total; i++) {
        const char *id = name;
        if (i < c->n_iothreads) {
            snprintf(name, sizeof(name), "iothread%d", i);
        } else {
            id = c->named_iothreads[i - c->n_iothreads];
        }
        if (iothread_find(id)) {
            error_setg(errp, "IOThread '%s' already exists", id);
            return -1;
        }
        d.iothreads[i] = iothread_create(id);
        if (!d.iothreads[i]) {
            error_setg(errp, "cannot start IOThread '%s'", id);
            return -1;
        }
        d.n_iothreads++;
    }
    return 0;
}

/* GS: stops and joins every IOThread, newest first: the registry holds
 * those created at start-up and those QMP object-add created since (and
 * not those object-del already destroyed, which d.iothreads may still
 * point to). */
static void destroy_iothreads(void) GS
{
    GS_CODE();
    while (iothread_count() > 0) {
        iothread_destroy(iothread_nth(iothread_count() - 1));
    }
    d.n_iothreads = 0;
    free(d.iothreads);
    d.iothreads = NULL;
}

/* GS: deletes every export: each unmounts and waits for its requests. */
static void coroutine_fn delete_exports(void) GS
{
    BlockExport *exp;

    GS_CODE();
    /* block_export_del() unlinks the export before it yields */
    while ((exp = block_export_next(NULL))) {
        block_export_del(exp);
    }
    /* exports that daemon_co_delete_export() took off the list earlier */
    while (d.deleting > 0) {
        co_queue_wait(&d.deleted, NULL);
    }
}

void coroutine_fn daemon_co_delete_export(BlockExport *exp)
{
    GS_CODE();
    d.deleting++;
    block_export_del(exp);
    d.deleting--;
    co_queue_restart_all(&d.deleted);
}

/* Coroutine entry on the main loop (GS): the orderly shutdown. */
static void coroutine_fn shutdown_co(void *opaque)
{
    global_lock_assert_held();
    GS_CODE();
    qmp_server_quiesce();       /* a client sees the shutdown's events */
    /* Before the nodes close: a job still holds its nodes and has requests
     * in flight on them; cancelled, it drains them and lets go (a mirror
     * target is then closed like any node, its metadata written back). */
    job_co_cancel_all();
    delete_exports();
    bdrv_co_close_all();
    qmp_server_stop();
    destroy_iothreads();
    loop_stop(loop_main());
}

/* Bottom half on the main loop (GS): starts the shutdown coroutine outside
 * whatever callback asked for it. */
static void shutdown_bh(void *opaque)
{
    global_lock_assert_held();
    co_spawn(shutdown_co, NULL);
}

void daemon_shutdown(int exit_code)
{
    GS_CODE();
    if (exit_code > d.exit_code) {
        d.exit_code = exit_code;
    }
    d.stop_requested = true;
    /* While start() runs, the graph is half built: it stops when done. */
    if (!d.start_done || d.stopping) {
        return;
    }
    d.stopping = true;
    loop_schedule(loop_main(), shutdown_bh, NULL);
}

bool daemon_stopping(void)
{
    GS_CODE();
    return d.stopping;
}

/* fd handler on the main loop (GS): a shutdown signal arrived. */
static void on_signal(void *opaque)
{
    struct signalfd_siginfo si;

    global_lock_assert_held();
    while (read(d.sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        d.signals_seen++;
        if (d.signals_seen == 1) {
            daemon_shutdown(EXIT_OK);
        } else if (d.signals_seen < FORCE_EXIT_SIGNALS) {
            fprintf(stderr, "diskstack: shutting down; one more signal "
                    "forces an exit (a mount may be left for fusermount3 -u)\n");
        } else {
            fprintf(stderr, "diskstack: forced exit\n");
            _exit(EXIT_ERROR);
        }
    }
}

/*
 * --daemonize, parent side.  Main thread, before any other thread exists.
 * Returns in the child (0) or on fork failure (-1); the parent exits here:
 * 0 when the child reports start-up done, else with the child's exit code.
 */
static int daemonize_fork(void)
{
    int fds[2];
    pid_t pid;
    char ok;
    int status;

    if (pipe2(fds, O_CLOEXEC) < 0 || (pid = fork()) < 0) {
        error_report("--daemonize: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        d.ready_fd = fds[1];
        setsid();
        return 0;
    }
    close(fds[1]);
    if (read(fds[0], &ok, 1) == 1) {
        _exit(EXIT_OK);
    }
    /* start-up failed: the child printed why and is shutting down */
    if (waitpid(pid, &status, 0) == pid && WIFEXITED(status)) {
        _exit(WEXITSTATUS(status));
    }
    _exit(EXIT_ERROR);
}

/* --daemonize, child side (GS): start-up is done; let the parent go and
 * detach from its terminal. */
static void daemonize_ready(void) GS
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);

    GS_CODE();
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
        close(null);
    }
    if (write(d.ready_fd, "1", 1) != 1) {
        /* the parent is gone: nobody to tell */
    }
    close(d.ready_fd);
    d.ready_fd = -1;
}

/* Coroutine entry on the main loop (GS): builds the graph and the exports. */
static void coroutine_fn start_co(void *opaque)
{
    Error *err = NULL;

    global_lock_assert_held();
    GS_CODE();
    if (d.config->start(d.config->opaque, &err) < 0) {
        cli_report_error(err);
        d.exit_code = EXIT_ERROR;
        d.stop_requested = true;
    } else if (d.ready_fd >= 0) {
        daemonize_ready();
    }
    d.start_done = true;
    if (d.stop_requested) {
        daemon_shutdown(d.exit_code);
    }
}

/* Bottom half: the first thing the main loop runs. */
static void start_bh(void *opaque)
{
    global_lock_assert_held();
    co_spawn(start_co, NULL);
}

/* Main thread: signals are read through a signalfd on the main loop. */
static int watch_signals(const sigset_t *set, Error **errp)
{
    d.sigfd = signalfd(-1, set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (d.sigfd < 0) {
        error_setg_errno(errp, errno, "signalfd");
        return -1;
    }
    loop_set_fd_handler(loop_main(), d.sigfd, on_signal, NULL);
    return 0;
}

/* Main thread, after the main loop stopped. */
static void unwatch_signals(void)
{
    if (d.sigfd >= 0) {
        loop_remove_fd_handler(loop_main(), d.sigfd);
        close(d.sigfd);
        d.sigfd = -1;
    }
}

int daemon_run(const DaemonConfig *config)
{
    Error *err = NULL;
    sigset_t set;

    memset(&d, 0, sizeof(d));
    d.config = config;
    d.sigfd = -1;
    d.ready_fd = -1;
    co_queue_init(&d.deleted);
    if (config->daemonize && daemonize_fork() < 0) {
        return EXIT_ERROR;
    }

    threads_init_main();
    global_lock_acquire();
    block_shutdown_signals(&set);   /* before any IOThread exists */
    loop_init_main();
    block_init();
    if (create_iothreads(config, &err) < 0 || watch_signals(&set, &err) < 0) {
        cli_report_error(err);
        destroy_iothreads();
        global_lock_release();
        return EXIT_ERROR;
    }
    loop_schedule(loop_main(), start_bh, NULL);
    loop_run(loop_main());
    unwatch_signals();
    global_lock_release();
    return d.exit_code;
}
