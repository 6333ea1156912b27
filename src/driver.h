/*
 * driver.h — the one vtable of every block driver: protocol, format, filter.
 *
 * Each member states three facts:
 *   lock:      needs the global lock (GS) or the graph read lock (I/O)?
 *   in flight: may I/O be in flight on this node while it runs?
 *   threads:   may it run on several threads at once?
 *
 * I/O members are called only by io.c, which has already checked the range
 * against the node's length, aligned it to bl.request_alignment, split it
 * below bl.max_transfer and counted it in the node's in_flight.  A member
 * left NULL means "not supported": io.c turns it into -ENOTSUP, never into a
 * silent pass-through.  A filter that passes a request on says so with an
 * explicit callback.
 *
 * The members are guarded by the capability their class needs, so a call
 * through the pointer is checked by clang like a direct call.
 */
#ifndef DISKSTACK_DRIVER_H
#define DISKSTACK_DRIVER_H

#include "block-common.h"

/*
 * Option table: what a definition (blockdev-add arguments) may contain for
 * this driver.  The core validates a definition against it (unknown key,
 * wrong type, missing required key are errors that name the key) and uses
 * it to give types to the dotted key=value syntax of the command line.
 */
typedef enum BlockOptType {
    OPT_STRING,
    OPT_BOOL,      /* key=value: on/off, true/false, yes/no */
    OPT_INT,       /* integer */
    OPT_SIZE,      /* integer, key=value accepts k/M/G/T suffixes */
    OPT_ENUM,      /* string from enum_values */
    OPT_CHILD,     /* node name (string) or nested definition (object) */
    OPT_CHILD_OR_NULL, /* as OPT_CHILD, JSON null allowed (backing: null) */
    OPT_JSON,      /* any JSON value, checked by the driver; JSON syntax only
                    * (key=value cannot spell it: "Parameter 'x' needs the
                    * JSON syntax"); e.g. the inject filter's "rules" */
} BlockOptType;

typedef struct BlockOptionDesc {
    const char *name;
    BlockOptType type;
    bool required;
    const char *const *enum_values;   /* NULL-terminated, for OPT_ENUM */
    const char *help;
} BlockOptionDesc;

/* One internal snapshot, as a format reports it (snapshot_list). */
typedef struct BdrvSnapshotInfo {
    char id[128];
    char name[1024];
    uint64_t date_sec, date_nsec, vm_clock_nsec, vm_state_size, disk_size;
    uint64_t icount;             /* UINT64_MAX: not recorded */
} BdrvSnapshotInfo;

/* A node being reopened (blockdev-reopen): see reopen_prepare below. */
typedef struct BlockReopenState {
    BlockNode *bs;
    json_t *options;             /* the new definition (validated) */
    bool read_only;              /* the new read-only state */
    void *opaque;                /* the driver's prepared state */
} BlockReopenState;

/* For quiesce_barrier drivers (thread-safe, cheap when nobody waits): call
 * it whenever in_flight_below drops to zero, so that a quiescing waiter
 * re-checks its condition (quiesce.c). */
void bdrv_notify_idle(void);

/* Options every node takes (handled by the core, listed for validation). */
extern const BlockOptionDesc bdrv_common_options[];

struct BlockDriver {
    const char *format_name;
    size_t instance_size;
    bool is_protocol;          /* talks to a file; has no children */
    bool is_format;            /* interprets a "file" child */
    bool is_filter;            /* passes requests to one "file" child */
    /*
     * A filter that queues requests (throttle) is a barrier for quiesced
     * sections (DESIGN rule 2): a section of a node below it raises its
     * quiesce_counter but goes no further up, the filter stops dispatching
     * from its queue while quiesce_counter > 0, and the section waits only
     * for the requests the filter has sent below (co_in_flight_below), not
     * for those it holds.  Queued requests stay queued.
     */
    bool quiesce_barrier;
    /* With quiesce_barrier — lock: none (atomic read); in flight: yes;
     * threads: any.  Requests this node has passed to its child and that
     * have not completed. */
    int (*in_flight_below)(BlockNode *bs);
    /* With quiesce_barrier — lock: GS; in flight: yes (new requests keep
     * arriving and queue); threads: main only.  A section of a node below
     * stopped at this node (begin) / ended (end).  Sections nest: the
     * driver stops dispatching at the first begin and resumes at the last
     * end.  A section of the node itself does not call them: it waits for
     * the node's queue like any node's in-flight requests. */
    void (*quiesce_barrier_begin)(BlockNode *bs) GS_PTR;
    void (*quiesce_barrier_end)(BlockNode *bs) GS_PTR;
    const BlockOptionDesc *options;   /* NULL-terminated by name == NULL */

    /*
     * Probing, for formats: score 0..100 that buf (the image's first bytes)
     * is this format.  Pure function.
     */
    int (*probe)(const uint8_t *buf, int len, const char *filename);

    /*
     * open — lock: GS (runs in a coroutine on the main loop); in flight:
     * none, the node is not reachable yet; threads: main only.
     * Opens children with bdrv_co_open_child(), reads what it needs with
     * bdrv_co_pread() (holding the graph read lock), sets bs->length and
     * bs->bl.  On error returns -errno with *errp set and must have undone
     * everything (the core detaches any children it attached).
     */
    int coroutine_fn (*open)(BlockNode *bs, json_t *options, Error **errp) GS_PTR;

    /*
     * close — lock: GS; in flight: none (the node is drained); threads:
     * main only.  Frees driver state.  Children are detached by the core.
     */
    void coroutine_fn (*close)(BlockNode *bs) GS_PTR;

    /*
     * child_perm — lock: GS; in flight: may be; threads: main only.
     * Given what the node's parents take (perm) and share (shared) on it,
     * says what the node needs (*nperm) and shares (*nshared) on child c.
     */
    void (*child_perm)(BlockNode *bs, BlockChild *c, BdrvChildRole role,
                       uint64_t perm, uint64_t shared,
                       uint64_t *nperm, uint64_t *nshared) GS_PTR;

    /*
     * set_perm — lock: GS; in flight: may be; threads: main only.
     * The cumulative permissions on this node changed (protocols use it for
     * image locking).  Returns -errno with *errp set to refuse; the core
     * then restores the old permissions.
     */
    int (*set_perm)(BlockNode *bs, uint64_t perm, uint64_t shared, Error **errp) GS_PTR;

    /*
     * refresh_limits — lock: GS; in flight: none; threads: main only.
     * Fills bs->bl from the driver's own needs and its children's limits.
     */
    void (*refresh_limits)(BlockNode *bs) GS_PTR;

    /*
     * I/O callbacks — lock: graph read lock (I/O); in flight: yes, any
     * number; threads: yes, on every IOThread at once, so driver state they
     * touch is atomic, per-thread, or under a CoMutex.  Return 0 or -errno.
     */
    int coroutine_fn (*co_preadv)(BlockNode *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset,
                                  BdrvRequestFlags flags) GRAPH_RDLOCK_PTR;
    int coroutine_fn (*co_pwritev)(BlockNode *bs, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset,
                                   BdrvRequestFlags flags) GRAPH_RDLOCK_PTR;
    /* Without it io.c writes a zeroed buffer (unless NO_FALLBACK). */
    int coroutine_fn (*co_pwrite_zeroes)(BlockNode *bs, int64_t offset, int64_t bytes,
                                         BdrvRequestFlags flags) GRAPH_RDLOCK_PTR;
    int coroutine_fn (*co_pdiscard)(BlockNode *bs, int64_t offset,
                                    int64_t bytes) GRAPH_RDLOCK_PTR;
    /* Makes completed writes of this node stable (io.c recurses to children). */
    int coroutine_fn (*co_flush)(BlockNode *bs) GRAPH_RDLOCK_PTR;
    /*
     * Status of [offset, offset+bytes) in this node alone: BDRV_BLOCK_*
     * flags, *pnum > 0 bytes that share it; with OFFSET_VALID, *map and
     * *file say where the data lives.  NULL: everything is DATA|ALLOCATED.
     */
    int coroutine_fn (*co_block_status)(BlockNode *bs, int64_t offset, int64_t bytes,
                                        int64_t *pnum, int64_t *map,
                                        BlockNode **file) GRAPH_RDLOCK_PTR;
    /*
     * truncate — lock: graph read lock; in flight: yes; threads: one
     * resize at a time per node (io.c serialises), I/O continues.
     */
    int coroutine_fn (*co_truncate)(BlockNode *bs, int64_t offset, bool exact,
                                    Error **errp) GRAPH_RDLOCK_PTR;

    /*
     * co_debug_event — lock: graph read lock (I/O); in flight: yes; threads:
     * any, at once.  A format above raised a named event point
     * (bdrv_co_debug_event) in the current coroutine; the next I/O this
     * coroutine sends here is that step's.  Only the inject filter has it.
     */
    void coroutine_fn (*co_debug_event)(BlockNode *bs, BlkDebugEvent ev) GRAPH_RDLOCK_PTR;

    /*
     * Internal snapshots (QMP blockdev-snapshot-internal-sync and
     * -delete-internal-sync, `diskstack snapshot --internal`).
     * lock: GS (a coroutine on the main loop); in flight: may be — the
     * callback quiesces the node itself around the metadata change;
     * threads: main only.  NULL: the format has no internal snapshots.
     * snapshot_list: *out is a calloc'ed array (free() it); returns the
     * count or -errno.
     */
    int coroutine_fn (*snapshot_create)(BlockNode *bs, const char *name,
                                        Error **errp) GS_PTR;
    int coroutine_fn (*snapshot_delete)(BlockNode *bs, const char *id_or_name,
                                        Error **errp) GS_PTR;
    int (*snapshot_list)(BlockNode *bs, BdrvSnapshotInfo **out) GS_PTR;

    /*
     * change_backing_file — rewrites the backing file name and format
     * recorded in the image header; the graph is not changed (QMP
     * change-backing-file).  lock: GS; in flight: may be (the callback
     * serialises with its own metadata updates); threads: main only.
     */
    int coroutine_fn (*change_backing_file)(BlockNode *bs, const char *backing_file,
                                            const char *backing_fmt,
                                            Error **errp) GS_PTR;

    /*
     * Reopen with new options (QMP blockdev-reopen), in three steps so that a
     * reopen of several nodes is all or nothing.
     * reopen_prepare — lock: GS; in flight: none (the core has quiesced the
     * node); threads: main only.  Checks rs->options (already validated
     * against the option table) and rs->read_only, prepares everything that
     * can fail (a new fd, ...) into rs->opaque and changes nothing visible.
     * Returns -errno with *errp set to refuse (e.g. "Cannot change the
     * option 'x'").  NULL: only the core's options may change.
     * reopen_commit / reopen_abort — lock: GS; in flight: none; threads:
     * main only.  Cannot fail; exactly one of them follows a successful
     * prepare and frees rs->opaque.
     */
    int coroutine_fn (*reopen_prepare)(BlockReopenState *rs, Error **errp) GS_PTR;
    void (*reopen_commit)(BlockReopenState *rs) GS_PTR;
    void (*reopen_abort)(BlockReopenState *rs) GS_PTR;
};

#endif
