/*
 * commands.h — how the QMP command groups register their commands.
 *
 * Each group file (cmd-*.c) defines one NULL-terminated QmpCommandDef array;
 * commands.c lists the groups, checks arguments against each command's
 * argument table and dispatches.  A group owns its commands' handlers and
 * tests; adding a command touches only its group.
 *
 *   cmd-node.c      blockdev-add/-del, query-named-block-nodes,
 *                   x-debug-query-block-graph
 *   cmd-export.c    block-export-add/-del, query-block-exports,
 *                   x-diskstack-export-resume
 *   cmd-object.c    object-add/-del (iothread, throttle-group)
 *   cmd-qom.c       qom-get, qom-set (object properties: throttle limits)
 *   cmd-snapshot.c  blockdev-snapshot, -sync, -internal-sync,
 *                   -delete-internal-sync, transaction, block_resize,
 *                   change-backing-file
 *   cmd-reopen.c    blockdev-reopen
 *   cmd-inject.c    x-diskstack-inject-set/-clear/-query (inject filter)
 *   cmd-job.c       job-*, block-job-*, query-jobs, query-block-jobs
 *   cmd-stream.c    block-stream, block-commit
 *   cmd-mirror.c    blockdev-mirror
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#ifndef DISKSTACK_QMP_COMMANDS_H
#define DISKSTACK_QMP_COMMANDS_H

#include "qmp/server.h"

typedef enum ArgType {
    ARG_STR,
    ARG_BOOL,
    ARG_INT,
    ARG_OBJECT,
    ARG_LIST,
    ARG_ANY,       /* any JSON value; the handler checks it */
} ArgType;

typedef struct QmpArg {
    const char *name;
    ArgType type;
    bool required;
} QmpArg;

typedef struct QmpCommandDef {
    QmpCommand cmd;
    /* NULL-terminated; NULL: any arguments (the handler checks them, as
     * the definition-taking commands do with the option tables) */
    const QmpArg *args;
} QmpCommandDef;

/* Pure: checks args against table, with QEMU's messages ("Parameter 'x' is
 * unexpected", "Parameter 'x' is missing", "Invalid parameter type for 'x',
 * expected: string").  Also for handlers checking nested objects. */
int qmp_check_args(const QmpArg *table, json_t *args, Error **errp);

/* The groups, each ended by an entry with cmd.name == NULL. */
extern const QmpCommandDef qmp_core_commands[];
extern const QmpCommandDef qmp_node_commands[];
extern const QmpCommandDef qmp_export_commands[];
extern const QmpCommandDef qmp_object_commands[];
extern const QmpCommandDef qmp_snapshot_commands[];
extern const QmpCommandDef qmp_reopen_commands[];
extern const QmpCommandDef qmp_qom_commands[];
extern const QmpCommandDef qmp_inject_commands[];
extern const QmpCommandDef qmp_job_commands[];
extern const QmpCommandDef qmp_stream_commands[];
extern const QmpCommandDef qmp_mirror_commands[];

#endif
