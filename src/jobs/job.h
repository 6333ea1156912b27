/*
 * job.h — the block-job core: QEMU's job state machine, its verbs, pause
 * points, a rate limiter, progress and error policies.
 *
 * Contracts first.
 *
 *   Where a job runs.  A job's work (JobDriver.run) is one coroutine on the
 *   job's loop: an IOThread's, or the main loop.  Everything else — state
 *   changes, verbs, events, finalization — is GS: main thread, global lock.
 *   The coroutine never changes job->status itself: when it parks at a pause
 *   point, goes ready, hits an error or returns, it schedules a bottom half
 *   on the main loop that does the transition.  So GS code reads the status
 *   and the other GS fields without locks, and clang checks that the
 *   coroutine side does not touch them (GUARDED_BY(global_lock)).
 *
 *   What the two sides share.  job->lock guards the few fields both sides
 *   use: the pause counter, the cancel flags, what the coroutine is waiting
 *   for (nothing, a sleep, a pause) and the rate limiter.  Progress counters
 *   are atomics written by the coroutine.
 *
 *   Pause points.  The coroutine calls job_pause_point() (or job_sleep_ns(),
 *   which is a pause point that also sleeps) between units of work, holding
 *   no request in flight and no lock.  It parks there while the job is
 *   paused (a user pause, an error-policy stop, or an internal pause of a
 *   quiesced section) and returns true once the job is asked to cancel;
 *   the job then returns from run soon.  A sleep is cut short by a pause,
 *   a cancel, a faster speed or job_enter().
 *
 *   Finalization.  When run returns, the job moves (GS, in a coroutine on
 *   the main loop) through waiting -> pending -> [prepare] -> commit or
 *   abort -> clean -> concluded -> null, as QEMU's single-job transactions
 *   do; auto-finalize=false stops in pending until job_finalize(),
 *   auto-dismiss=false stops in concluded until job_dismiss().  Verbs that
 *   may finalize (cancel, finalize) are coroutine_fn: the driver's
 *   finalization callbacks may quiesce nodes and change the graph.
 *
 *   Events (QEMU's names and fields), delivered through block_event_post()
 *   in the order they happen: JOB_STATUS_CHANGE {id, status} on every
 *   change, BLOCK_JOB_READY, BLOCK_JOB_PENDING (auto-finalize=false only),
 *   BLOCK_JOB_COMPLETED {type, device, len, offset, speed, error?},
 *   BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR {device, operation, action}.
 *
 *   Quiesced sections.  A BlockChildClass of a job's backend pauses the job
 *   with job_pause_internal() in quiesce_begin and resumes it with
 *   job_resume_internal() in quiesce_end: the job parks at its next pause
 *   point.  Internal pauses are counted apart from the user's (one user
 *   pause at a time, any number of internal ones), as QEMU's
 *   pause_count/user_paused.
 *
 * Files: job.c (GS side: tables, list, lifecycle, finalization, verbs),
 * job-co.c (coroutine side: pause points, sleeps, wake-ups), job-error.c
 * (error policies), ratelimit.c (the speed limit); QMP in qmp/cmd-job.c.
 */
#ifndef DISKSTACK_JOBS_JOB_H
#define DISKSTACK_JOBS_JOB_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include "block-common.h"
#include "jobs/ratelimit.h"
#include "loop/loop.h"

/* QEMU's JobStatus, in its order. */
typedef enum JobStatus {
    JOB_STATUS_UNDEFINED,
    JOB_STATUS_CREATED,
    JOB_STATUS_RUNNING,
    JOB_STATUS_PAUSED,
    JOB_STATUS_READY,
    JOB_STATUS_STANDBY,
    JOB_STATUS_WAITING,
    JOB_STATUS_PENDING,
    JOB_STATUS_ABORTING,
    JOB_STATUS_CONCLUDED,
    JOB_STATUS_NULL,
    JOB_STATUS__MAX,
} JobStatus;

/* QEMU's JobVerb, in its order. */
typedef enum JobVerb {
    JOB_VERB_CANCEL,
    JOB_VERB_PAUSE,
    JOB_VERB_RESUME,
    JOB_VERB_SET_SPEED,
    JOB_VERB_COMPLETE,
    JOB_VERB_DISMISS,
    JOB_VERB_FINALIZE,
    JOB_VERB_CHANGE,
    JOB_VERB__MAX,
} JobVerb;

/* QEMU's BlockdevOnError (on-source-error, on-target-error, on-error). */
typedef enum BlockdevOnError {
    BLOCKDEV_ON_ERROR_REPORT,
    BLOCKDEV_ON_ERROR_IGNORE,
    BLOCKDEV_ON_ERROR_ENOSPC,
    BLOCKDEV_ON_ERROR_STOP,
    BLOCKDEV_ON_ERROR_AUTO,
    BLOCKDEV_ON_ERROR__MAX,
} BlockdevOnError;

/* QEMU's BlockErrorAction. */
typedef enum BlockErrorAction {
    BLOCK_ERROR_ACTION_IGNORE,
    BLOCK_ERROR_ACTION_REPORT,
    BLOCK_ERROR_ACTION_STOP,
} BlockErrorAction;

/* QEMU's BlockDeviceIoStatus ("io-status" of query-block-jobs). */
typedef enum JobIoStatus {
    JOB_IOSTATUS_OK,
    JOB_IOSTATUS_FAILED,
    JOB_IOSTATUS_NOSPACE,
} JobIoStatus;

/* Pure: QMP spellings; NULL for an out-of-range value. */
const char *job_status_name(JobStatus s);
const char *job_verb_name(JobVerb v);
const char *job_iostatus_name(JobIoStatus s);
const char *block_error_action_name(BlockErrorAction a);
/* Pure: "report", "ignore", "enospc", "stop", "auto" -> the value, or -1. */
int blockdev_on_error_parse(const char *name);

typedef struct Job Job;
typedef struct JobDriver JobDriver;

/* What the coroutine waits for (job->wait). */
typedef enum JobWait {
    JOB_WAIT_NONE,      /* busy, or not started */
    JOB_WAIT_SLEEP,     /* in job_sleep_ns(): a kick ends the sleep */
    JOB_WAIT_PARK,      /* parked at a pause point until it may go on */
    JOB_WAIT_DONE,      /* run returned */
} JobWait;

/*
 * A job.  A job type embeds it as the first member of its own state
 * (JobDriver.instance_size).  Fields are the core's: drivers use the
 * functions below.
 */
struct Job {
    /* Constant after job_create(). */
    char *id;
    const JobDriver *driver;
    Loop *loop;                  /* where the coroutine runs */
    bool auto_finalize, auto_dismiss;

    /* GS. */
    JobStatus status GUARDED_BY(global_lock);
    int refcnt GUARDED_BY(global_lock);
    bool user_paused GUARDED_BY(global_lock);
    bool started GUARDED_BY(global_lock);       /* job_start() ran */
    bool exited GUARDED_BY(global_lock);        /* run returned, seen by GS */
    bool finalizing GUARDED_BY(global_lock);    /* finalization under way */
    int ret GUARDED_BY(global_lock);
    Error *err GUARDED_BY(global_lock);
    int64_t speed GUARDED_BY(global_lock);
    JobIoStatus iostatus GUARDED_BY(global_lock);
    Job *next GUARDED_BY(global_lock);

    /* Shared: under lock. */
    pthread_mutex_t lock;
    int pause_count;             /* user pause + internal pauses */
    bool cancelled;              /* a cancel was asked for */
    bool force_cancel;           /* ... and it is a real cancel (not a
                                  * soft cancel a ready job turns into a
                                  * completion) */
    JobWait wait;
    bool kicked;                 /* a kick came while the coroutine was busy */
    RateLimit limit;

    /* Constant after creation: the block-job layer's own clean step
     * (block-job.c drops its backends), run after the driver's clean. */
    void coroutine_fn (*layer_clean)(Job *job) GS_PTR;

    /* The coroutine's own (its loop's thread). */
    Coroutine *co;
    LoopTimer sleep_timer;
    int run_ret;                 /* run's result, for the exit bottom half */
    Error *run_err;

    /* Written by the coroutine, read anywhere. */
    _Atomic uint64_t progress_current, progress_total;
};

/*
 * A job type.  Each member states lock / in flight / threads.  The GS
 * members are guarded so that clang checks their callers.
 */
struct JobDriver {
    const char *type;            /* QEMU's JobType: "mirror", "stream", ... */
    size_t instance_size;        /* >= sizeof(Job); Job is the first member */

    /* run — lock: none (requests take the graph read lock on their own);
     * in flight: the job's own requests; threads: the job's loop only, in
     * the job's coroutine.  The job proper.  Calls job_pause_point() or
     * job_sleep_ns() between units of work and returns soon after either
     * reports a cancel.  Returns 0 or -errno (with *errp set, or the core
     * uses strerror). */
    int coroutine_fn (*run)(Job *job, Error **errp);
    /* pause / resume — lock: none; in flight: none of the job's (it is at
     * a pause point); threads: the job's coroutine.  Optional: called just
     * before the coroutine parks and just after it goes on. */
    void coroutine_fn (*pause)(Job *job);
    void coroutine_fn (*resume)(Job *job);
    /* cancel — lock: GS; in flight: yes (the coroutine may be running);
     * threads: main.  Optional.  Returns whether the cancel is forced: a job
     * that turns a soft cancel (block-job-cancel force=false) into
     * something else returns false (mirror after ready: complete without
     * pivoting).  Without it every cancel is forced. */
    bool (*cancel)(Job *job, bool force) GS_PTR;
    /* complete — lock: GS, in a coroutine on the main loop; in flight: yes;
     * threads: main.  job-complete in READY: tell the coroutine to finish
     * (set a flag, job_enter()).  NULL: the job cannot be completed. */
    void coroutine_fn (*complete)(Job *job, Error **errp) GS_PTR;
    /* Finalization, in this order, all — lock: GS, in a coroutine on the
     * main loop (they may quiesce nodes and change the graph); in flight:
     * none of the job's (run has returned); threads: main.  prepare (only
     * when the job succeeded so far) may still fail it (return -errno);
     * then commit (success) or abort (failure or cancel); then clean
     * (always).  All optional. */
    int coroutine_fn (*prepare)(Job *job) GS_PTR;
    void coroutine_fn (*commit)(Job *job) GS_PTR;
    void coroutine_fn (*abort)(Job *job) GS_PTR;
    void coroutine_fn (*clean)(Job *job) GS_PTR;
    /* free — lock: GS; in flight: none; threads: main.  Optional: frees
     * what the type allocated, just before the job is freed. */
    void (*free)(Job *job) GS_PTR;
};

/* ---------------------------------------------------------------- GS */

/*
 * Creates a job in state "created" (JOB_STATUS_CHANGE created).  id is
 * required, well formed (a letter, then letters, digits, '-', '.', '_')
 * and not in use; iothread NULL runs the job on the main loop; speed in
 * bytes/s, 0 unlimited.  QEMU's messages: "Invalid job ID 'x'", "Job ID
 * 'x' already in use", "An explicit job ID is required", "Parameter
 * 'speed' expects a non-negative value".  The job list holds the
 * reference the caller gets to use; a creator that fails before
 * job_start() calls job_early_fail().
 */
Job *job_create(const char *id, const JobDriver *driver, IOThread *iothread,
                int64_t speed, bool auto_finalize, bool auto_dismiss,
                Error **errp) GS;
/* created -> running, and the coroutine starts on the job's loop. */
void job_start(Job *job) GS;
/* Dismantles a created job that was never started (null, freed). */
void job_early_fail(Job *job) GS;

Job *job_get(const char *id) GS;
Job *job_next(Job *prev) GS;       /* NULL: the first */
void job_ref(Job *job) GS;
void job_unref(Job *job) GS;       /* frees in state null only */

/* 0, or -EPERM with QEMU's "Job 'x' in state 'y' cannot accept command
 * verb 'z'". */
int job_apply_verb(Job *job, JobVerb verb, Error **errp) GS;

/* The verbs, each checking the verb table first (QEMU's messages). */
int job_user_pause(Job *job, Error **errp) GS;
int job_user_resume(Job *job, Error **errp) GS;
/* force: job-cancel (always) and block-job-cancel force=true.  May finish
 * the job (and free it) before returning. */
int coroutine_fn job_user_cancel(Job *job, bool force, Error **errp) GS;
int coroutine_fn job_complete(Job *job, Error **errp) GS;
int coroutine_fn job_finalize(Job *job, Error **errp) GS;
int job_dismiss(Job *job, Error **errp) GS;
int job_set_speed(Job *job, int64_t speed, Error **errp) GS;

/* Cancels every job (forced) and waits until all are gone (concluded ones
 * dismissed): for the daemon's exit. */
void coroutine_fn job_co_cancel_all(void) GS;

/* Counted pauses of a quiesced section (any number, nesting). */
void job_pause_internal(Job *job) GS;
void job_resume_internal(Job *job) GS;
/* Wakes the coroutine from a sleep (and from a pause point it may leave). */
void job_enter(Job *job) GS;

/* A snapshot for query-jobs / query-block-jobs. */
typedef struct JobInfo {
    const char *id, *type;
    JobStatus status;
    uint64_t current, total;
    bool busy;                   /* the coroutine is running (not waiting) */
    bool paused;                 /* some pause is asked for */
    bool ready;                  /* ready or standby */
    int64_t speed;
    JobIoStatus iostatus;
    bool auto_finalize, auto_dismiss;
    const char *error;           /* set once the job failed; valid while the
                                  * job is unchanged */
} JobInfo;
void job_get_info(Job *job, JobInfo *info) GS;
bool job_is_ready(Job *job) GS;
bool job_is_completed(Job *job) GS;

/* ---------------------------------------------- the job's coroutine */

/* A safe point: parks while the job is paused; true once a cancel was
 * asked for (the job should return soon). */
bool coroutine_fn job_pause_point(Job *job);
/* Sleeps ns (on the job's loop), cut short by a pause, a cancel, a faster
 * speed or job_enter(); then a pause point (its result).  A kick that came
 * while the coroutine was busy is kept: the next sleep returns at once, so
 * a job that checks a flag (should_complete) and then sleeps never misses
 * the job_enter() that follows the flag. */
bool coroutine_fn job_sleep_ns(Job *job, int64_t ns);
/* Thread-safe: has a cancel been asked for (forced or not)? */
bool job_cancel_requested(Job *job);
/* Thread-safe: has a forced cancel been asked for? */
bool job_is_cancelled(Job *job);
/* running -> ready (BLOCK_JOB_READY), on the main loop soon. */
void coroutine_fn job_transition_to_ready(Job *job);

/* Progress in bytes, thread-safe. */
void job_progress_update(Job *job, uint64_t done);
void job_progress_set_remaining(Job *job, uint64_t remaining);
void job_progress_increase_remaining(Job *job, uint64_t delta);

/* Thread-safe: accounts bytes against the speed; ns to sleep before the
 * next dispatch (0 when unlimited).  Use as job_sleep_ns(job, delay). */
int64_t job_ratelimit_delay_ns(Job *job, uint64_t bytes);

/*
 * An I/O error hit the job (error: errno, either sign).  Returns what the
 * policy says: report (fail the job), ignore, or stop; enospc and auto stop
 * on ENOSPC and report otherwise.  Emits BLOCK_JOB_ERROR {device,
 * operation: read|write, action}.  On stop the job is paused as a user
 * pause (job-resume goes on), io-status becomes failed or nospace; the
 * caller goes to job_pause_point() and retries.  Waits for the main loop.
 */
BlockErrorAction coroutine_fn job_error_action(Job *job, BlockdevOnError on_err,
                                               bool is_read, int error);

#endif
