/*
 * export.h — block exports (type fuse): a node's content as one regular file.
 *
 * GS API: main thread, global lock, called from coroutines on the main loop.
 * The export's requests are served by the IOThreads it was given, one cloned
 * /dev/fuse fd per IOThread, each request in its own coroutine (I/O code).
 */
#ifndef DISKSTACK_FUSE_EXPORT_H
#define DISKSTACK_FUSE_EXPORT_H

#include "block-common.h"
#include "driver.h"      /* BlockOptionDesc, for fuse_export_options */
#include "loop/loop.h"

typedef struct BlockExport BlockExport;

/*
 * block-export-add with type "fuse".  def holds QMP's arguments: id,
 * node-name, mountpoint, writable (default false), writethrough, growable,
 * allow-other ("on"|"off"|"auto", default "off"), iothread (a name or a list
 * of names; default: every IOThread), plus direct-io (bool, default true)
 * and the error policy rerror / werror ("report"|"ignore"|"enospc"|"stop"|
 * "auto", default "report"; see diskstack-fuse(7)).
 * Fails with a one-line message (mountpoint missing, is a directory, already
 * mounted, no permission for /dev/fuse, node unknown, permission conflict).
 */
BlockExport *coroutine_fn block_export_add(json_t *def, Error **errp) GS;
/* Unmounts, drains, releases the node, then posts BLOCK_EXPORT_DELETED
 * (block-events.h).  Returns when no request is left. */
void coroutine_fn block_export_del(BlockExport *exp) GS;
BlockExport *block_export_find(const char *id) GS;
BlockExport *block_export_next(BlockExport *prev) GS;
const char *block_export_id(const BlockExport *exp);
/* The node the export serves now (its backend's root; a snapshot moves it). */
const char *block_export_node_name(BlockExport *exp) GS;
/* The absolute path the export is mounted on. */
const char *block_export_mountpoint(const BlockExport *exp) GS;
/* True if one of the export's queues runs in IOThread t. */
bool block_export_uses_iothread(const BlockExport *exp, IOThread *t) GS;
/*
 * x-diskstack-export-resume: ends the pause the stop policy began; the held
 * requests go on and the failed ones are retried (one that fails again
 * pauses again).  Fails with "Export 'ID' is not paused" otherwise.
 */
int coroutine_fn block_export_resume(BlockExport *exp, Error **errp) GS;
/* query-block-exports' io-status: "ok", or while paused by an error
 * "nospace" (ENOSPC) or "failed" (any other errno). */
const char *block_export_io_status(const BlockExport *exp) GS;
/* Called (on the main loop) when the mount went away underneath us
 * (fusermount -u, umount) so the owner can clean up and maybe exit. */
void block_export_set_gone_cb(BlockExport *exp, void (*cb)(BlockExport *, void *),
                              void *opaque) GS;
/* Option table of the fuse export, for the key=value command-line syntax. */
extern const struct BlockOptionDesc fuse_export_options[];

#endif
