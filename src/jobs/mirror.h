/*
 * mirror.h — the mirror job (mirror.c) and its filter node (mirror-top.c).
 *
 *   blockdev-mirror / drive-mirror (qmp/cmd-mirror.c) -> mirror_start()
 *
 * While the job runs, a mirror-top node sits above the source: every parent
 * the source had (exports, nodes, other jobs) now reaches it through the
 * filter, which passes I/O through and marks the dirty bitmap after every
 * completed write, write-zeroes and discard.  The job copies dirty regions
 * source -> target; once the bitmap is clean it is ready; job-complete
 * copies what is left inside a quiesced section of the source and moves
 * every parent of mirror-top to the target (the pivot); a cancel moves them
 * back to the source.  Either way mirror-top leaves the graph.
 */
#ifndef DISKSTACK_JOBS_MIRROR_H
#define DISKSTACK_JOBS_MIRROR_H

#include "block-common.h"
#include "jobs/job.h"
#include "loop/loop.h"
#include "util/dirty-bitmap.h"

typedef enum MirrorSyncMode {
    MIRROR_SYNC_TOP,
    MIRROR_SYNC_FULL,
    MIRROR_SYNC_NONE,
} MirrorSyncMode;

typedef struct MirrorParams {
    const char *job_id;          /* required here (QMP defaults it) */
    BlockNode *source, *target;
    MirrorSyncMode sync;
    int64_t speed;               /* bytes/s, 0: unlimited */
    uint32_t granularity;        /* 0: default */
    int64_t buf_size;            /* 0: default */
    BlockdevOnError on_source_error, on_target_error;
    const char *filter_node_name;   /* NULL: an automatic hidden name */
    bool auto_finalize, auto_dismiss;
    bool target_is_zero;         /* x-diskstack-target-is-zero */
    bool write_blocking;         /* copy-mode write-blocking */
    /* replaces: the node the target takes the place of on job-complete
     * instead of the source; it must be the source or below it through
     * filters only (QEMU's bdrv_recurse_can_replace).  NULL: the source. */
    const char *replaces;
    /* unmap=false (QMP's default is true, hence the inversion): zero
     * regions reach the target as write-zeroes without MAY_UNMAP, so the
     * target gets allocated zeroes instead of holes. */
    bool no_unmap;
} MirrorParams;

/* GS, coroutine on the main loop: creates and starts the job (mirror-top
 * inserted).  0, or -errno with *errp set and nothing changed. */
int coroutine_fn mirror_start(const MirrorParams *p, Error **errp) GS;

/* GS, coroutine on the main loop: active commit (QEMU's
 * commit_active_start): a mirror job of type "commit" from p->source (the
 * active layer, top) into p->target (base, in top's backing chain).  The
 * copy takes only what is allocated above base (p->sync is ignored); base
 * is reopened read-write for the job (and grown to top's length), the
 * chain top..base is frozen and held by the job.  job-complete pivots
 * every parent of top to base (base stays read-write: it is the active
 * layer now) and top..above-base leave the chain; a cancel after ready
 * leaves base a consistent copy of what top showed and read-only again.
 * The caller checked that target is below source.  0, or -errno with
 * *errp set and nothing changed. */
int coroutine_fn mirror_start_commit(const MirrorParams *p, Error **errp) GS;

/* GS: block-job-change {copy-mode}: background -> write-blocking (the
 * other way is refused, as QEMU does).  -errno with *errp set. */
int mirror_change_copy_mode(Job *job, bool write_blocking, Error **errp) GS;
/* GS: is job a mirror? */
bool job_is_mirror(Job *job) GS;
/* GS: write-blocking and in sync: every guest write reaches the target
 * before it completes (query-block-jobs "actively-synced"). */
bool mirror_actively_synced(Job *job) GS;

/* A guest request mirror-top passes on. */
typedef enum MirrorReqKind {
    MIRROR_REQ_WRITE, MIRROR_REQ_ZERO, MIRROR_REQ_DISCARD,
} MirrorReqKind;

typedef struct MirrorGuestReq {
    MirrorReqKind kind;
    int64_t offset, bytes;
    IOVector *qiov;              /* MIRROR_REQ_WRITE */
    size_t qiov_offset;
    BdrvRequestFlags flags;      /* the guest's (write, write-zeroes) */
} MirrorGuestReq;

/* I/O, graph read lock, any thread: the guest's request req on src
 * (mirror-top's file child) and, in write-blocking mode (job: the job,
 * else NULL), the same on the target at the same time: data as written,
 * write-zeroes with the guest's MAY_UNMAP unless the job has unmap=false,
 * discard as discard.  Returns the source's result; *clean is true when
 * the target got it too, false when the caller must mark the range dirty
 * (background mode, a copy of an overlapping range in flight, or either
 * side failed). */
int coroutine_fn mirror_co_guest_request(void *job, BlockChild *src,
                                         const MirrorGuestReq *req, bool *clean)
    GRAPH_RDLOCK;

/* ---- mirror-top.c: the filter ---- */
extern const BlockDriver bdrv_mirror_top;
/* GS: the bitmap the filter marks (NULL: none); set before the filter is
 * inserted and cleared after it left the graph. */
void mirror_top_set_bitmap(BlockNode *filter, DirtyBitmap *bitmap) GS;
/* GS (or any thread: atomic): the job whose mirror_co_guest_request() guest
 * writes go through (write-blocking mode), NULL: background mode.
 * Cleared while the filter is quiesced before the job's backends go. */
void mirror_top_set_active(BlockNode *filter, void *job);
/* Any thread: how many guest writes (data, zeroes, discards; not
 * write-unchanged) have entered the filter so far, and (*in_flight) how
 * many of them have not left it yet; the job watches them to give the
 * guest the disks while it writes. */
uint64_t mirror_top_guest_writes(BlockNode *filter, uint64_t *in_flight);

#endif
