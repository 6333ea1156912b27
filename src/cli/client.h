/*
 * client.h — the diskstack client verbs (graph, nodes, exports, snapshot,
 * backing, export, throttle, qmp) and the runtime directory where the
 * daemons put their default QMP sockets.
 *
 * The verbs talk QMP over a unix socket to `diskstack serve`, `diskstack
 * mount` or qemu-storage-daemon; they never touch the block layer of their
 * own process.
 *
 * Threading: everything here runs on the main thread of a short-lived
 * process (the verbs) or on the main thread before the daemon's runtime
 * starts (cli_default_qmp_path), so nothing is GS or I/O code.
 */
#ifndef DISKSTACK_CLI_CLIENT_H
#define DISKSTACK_CLI_CLIENT_H

#include <stdbool.h>
#include "block-common.h"
#include "driver.h"

/*
 * The directory holding the daemons' default sockets:
 * $XDG_RUNTIME_DIR/diskstack, else /run/diskstack for root, else
 * /tmp/diskstack-$UID.  With create, it is made (mode 0700) when missing.
 * An existing directory must be ours and not a symlink.  Returns a
 * malloc'ed path, or NULL with *errp set.
 */
char *cli_runtime_dir(bool create, Error **errp);
/* "<runtime dir>/<kind>-<pid>.qmp" (malloc'ed), creating the directory;
 * NULL with *errp set.  kind is "serve" or "mount". */
char *cli_default_qmp_path(const char *kind, Error **errp);

/* The global `diskstack --socket S VERB` option: the socket the verbs use
 * when they have no --socket of their own. */
void client_set_socket(const char *path);
/* The socket a verb uses: opt (its own --socket), else the global one, else
 * $DISKSTACK_SOCKET; NULL: discover the running daemon. */
const char *client_socket_choice(const char *opt);

/* The verbs: argv[0] is the verb.  Exit codes as in cli.h. */
int cmd_graph(int argc, char **argv);
int cmd_nodes(int argc, char **argv);
int cmd_exports(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_backing(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_qmp(int argc, char **argv);
/* `throttle set|show NODE|GROUP`: a throttle group's limits (qom-set /
 * qom-get of its "limits"). */
int cmd_throttle(int argc, char **argv);
/* client-jobs.c: `jobs`, `job ACTION ID`, and the job-starting verbs
 * `mirror`, `stream`, `commit`, which follow their job in the foreground
 * (progress bar on a terminal) unless --detach. */
int cmd_jobs(int argc, char **argv);
int cmd_job(int argc, char **argv);
int cmd_mirror(int argc, char **argv);
int cmd_stream(int argc, char **argv);
int cmd_commit(int argc, char **argv);

/*
 * QEMU's ThrottleLimits keys as an option table, for the command lines that
 * take limits as key=value (mount --throttle, serve --object
 * throttle-group,limits.KEY=...): iops-* are integers, bps-* and iops-size
 * sizes (k/M/G suffixes), *-max-length seconds.  Coercion only: the limits'
 * rules are throttle_config_parse()'s.
 */
extern const BlockOptionDesc throttle_limit_options[];

#endif
