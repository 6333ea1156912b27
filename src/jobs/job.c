/*
 * job.c — the block-job core (see job.h for the contracts).
 *
 * The state machine and the verb table are QEMU's (qemu/job.c, JobSTT and
 * JobVerbTable), so that scripts see the same statuses in the same order.
 *
 * This file is the GS side: the tables, the job list, creation, start and
 * exit, finalization and the verbs.  job-co.c is the coroutine side (pause
 * points, sleeps, the wake-up protocol) and says how the two meet.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block-events.h"
#include "jobs/job-int.h"

/* QEMU's job state transition table: JobSTT[from][to]. */
static const bool JobSTT[JOB_STATUS__MAX][JOB_STATUS__MAX] = {
                              /* U, C, R, P, Y, S, W, D, X, E, N */
    [JOB_STATUS_UNDEFINED] = { 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
    [JOB_STATUS_CREATED]   = { 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1 },
    [JOB_STATUS_RUNNING]   = { 0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0 },
    [JOB_STATUS_PAUSED]    = { 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0 },
    [JOB_STATUS_READY]     = { 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0 },
    [JOB_STATUS_STANDBY]   = { 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0 },
    [JOB_STATUS_WAITING]   = { 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0 },
    [JOB_STATUS_PENDING]   = { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0 },
    [JOB_STATUS_ABORTING]  = { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0 },
    [JOB_STATUS_CONCLUDED] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 },
    [JOB_STATUS_NULL]      = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};

/* QEMU's verb table: JobVerbTable[verb][status]. */
static const bool JobVerbTable[JOB_VERB__MAX][JOB_STATUS__MAX] = {
                              /* U, C, R, P, Y, S, W, D, X, E, N */
    [JOB_VERB_CANCEL]      = { 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0 },
    [JOB_VERB_PAUSE]       = { 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_RESUME]      = { 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_SET_SPEED]   = { 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_COMPLETE]    = { 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0 },
    [JOB_VERB_FINALIZE]    = { 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0 },
    [JOB_VERB_DISMISS]     = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0 },
    [JOB_VERB_CHANGE]      = { 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
};

static const char *const status_names[JOB_STATUS__MAX] = {
    "undefined", "created", "running", "paused", "ready", "standby",
    "waiting", "pending", "aborting", "concluded", "null",
};
static const char *const verb_names[JOB_VERB__MAX] = {
    "cancel", "pause", "resume", "set-speed", "complete", "dismiss",
    "finalize", "change",
};

/* GS: every job not yet dismissed, newest first. */
static Job *jobs GUARDED_BY(global_lock);
/* Coroutines of job_co_cancel_all() waiting for a status change. */
static CoQueue status_waiters;

/* ------------------------------------------------------------ names */

const char *job_status_name(JobStatus s)
{
    return (unsigned)s < JOB_STATUS__MAX ? status_names[s] : NULL;
}

const char *job_verb_name(JobVerb v)
{
    return (unsigned)v < JOB_VERB__MAX ? verb_names[v] : NULL;
}

/* ------------------------------------------------------------ events */

static void job_event_status(Job *job) GS
{
    block_event_post("JOB_STATUS_CHANGE",
                     json_pack("{s:s,s:s}", "id", job->id,
                               "status", job_status_name(job->status)));
}

void job_event_progress(Job *job, const char *name, bool with_error)
{
    json_t *data = json_pack("{s:s,s:s,s:I,s:I,s:I}", "type", job->driver->type,
                             "device", job->id,
                             "len", (json_int_t)atomic_load(&job->progress_total),
                             "offset", (json_int_t)atomic_load(&job->progress_current),
                             "speed", (json_int_t)job->speed);

    if (with_error && job->ret) {
        json_object_set_new(data, "error", json_string(error_get_pretty(job->err)));
    }
    block_event_post(name, data);
}

/* ------------------------------------------------------------ state */

void job_state_transition(Job *job, JobStatus s1)
{
    JobStatus s0 = job->status;

    if (!JobSTT[s0][s1]) {
        fprintf(stderr, "diskstack: job '%s': illegal transition %s -> %s\n",
                job->id, job_status_name(s0), job_status_name(s1));
        abort();
    }
    job->status = s1;
    if (s1 != s0) {
        job_event_status(job);
        co_queue_restart_all(&status_waiters);
    }
}

int job_apply_verb(Job *job, JobVerb verb, Error **errp)
{
    GS_CODE();
    if (JobVerbTable[verb][job->status]) {
        return 0;
    }
    error_setg(errp, "Job '%s' in state '%s' cannot accept command verb '%s'",
               job->id, job_status_name(job->status), job_verb_name(verb));
    return -EPERM;
}

bool job_is_ready(Job *job)
{
    GS_CODE();
    return job->status == JOB_STATUS_READY || job->status == JOB_STATUS_STANDBY;
}

bool job_is_completed(Job *job)
{
    GS_CODE();
    return job->status >= JOB_STATUS_WAITING;
}

/* ------------------------------------------------------------ list, refs */

static bool id_wellformed(const char *id)
{
    if (!((id[0] >= 'a' && id[0] <= 'z') || (id[0] >= 'A' && id[0] <= 'Z'))) {
        return false;
    }
    return strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                      "0123456789-._") == strlen(id);
}

Job *job_get(const char *id)
{
    GS_CODE();
    for (Job *job = jobs; job; job = job->next) {
        if (!strcmp(job->id, id)) {
            return job;
        }
    }
    return NULL;
}

Job *job_next(Job *prev)
{
    GS_CODE();
    return prev ? prev->next : jobs;
}

void job_ref(Job *job)
{
    GS_CODE();
    job->refcnt++;
}

void job_unref(Job *job)
{
    GS_CODE();
    if (--job->refcnt) {
        return;
    }
    if (job->status != JOB_STATUS_NULL) {
        fprintf(stderr, "diskstack: job '%s' freed in state %s\n", job->id,
                job_status_name(job->status));
        abort();
    }
    if (job->driver->free) {
        job->driver->free(job);
    }
    error_free(job->err);
    pthread_mutex_destroy(&job->lock);
    free(job->id);
    free(job);
}

static int job_check_create(const char *id, int64_t speed, Error **errp) GS
{
    if (!id) {
        error_setg(errp, "An explicit job ID is required");
    } else if (!id_wellformed(id)) {
        error_setg(errp, "Invalid job ID '%s'", id);
    } else if (job_get(id)) {
        error_setg(errp, "Job ID '%s' already in use", id);
    } else if (speed < 0) {
        error_setg(errp, "Parameter 'speed' expects a non-negative value");
    } else {
        return 0;
    }
    return -1;
}

Job *job_create(const char *id, const JobDriver *driver, IOThread *iothread,
                int64_t speed, bool auto_finalize, bool auto_dismiss,
                Error **errp)
{
    Job *job;

    GS_CODE();
    if (job_check_create(id, speed, errp) < 0) {
        return NULL;
    }
    job = calloc(1, MAX(driver->instance_size, sizeof(Job)));
    if (!job || !(job->id = strdup(id))) {
        free(job);
        error_setg(errp, "Out of memory");
        return NULL;
    }
    job->driver = driver;
    job->loop = iothread ? iothread_loop(iothread) : loop_main();
    job->auto_finalize = auto_finalize;
    job->auto_dismiss = auto_dismiss;
    job->refcnt = 1;
    job->speed = speed;
    pthread_mutex_init(&job->lock, NULL);
    ratelimit_set_speed(&job->limit, speed, JOB_SLICE_NS);
    job->next = jobs;
    jobs = job;
    job_state_transition(job, JOB_STATUS_CREATED);
    return job;
}

/* ------------------------------------------------------------ finishing */

static void job_do_dismiss(Job *job) GS
{
    Job **p = &jobs;

    while (*p != job) {
        p = &(*p)->next;
    }
    *p = job->next;
    job_state_transition(job, JOB_STATUS_NULL);
    job_unref(job);
}

/* ret from a cancel; the error message; -> aborting on failure. */
static void job_update_rc(Job *job) GS
{
    if (!job->ret && job_is_cancelled(job)) {
        job->ret = -ECANCELED;
    }
    if (job->ret) {
        if (!job->err) {
            error_setg(&job->err, "%s", strerror(-job->ret));
        }
        job_state_transition(job, JOB_STATUS_ABORTING);
    }
}

static void coroutine_fn job_finalize_single(Job *job) GS
{
    const JobDriver *drv = job->driver;

    job_update_rc(job);
    if (!job->ret && drv->commit) {
        drv->commit(job);
    } else if (job->ret && drv->abort) {
        drv->abort(job);
    }
    if (drv->clean) {
        drv->clean(job);
    }
    if (job->layer_clean) {
        job->layer_clean(job);
    }
    if (job->started) {
        if (job_is_cancelled(job)) {
            job_event_progress(job, "BLOCK_JOB_CANCELLED", false);
        } else {
            job_event_progress(job, "BLOCK_JOB_COMPLETED", true);
        }
    }
    job_state_transition(job, JOB_STATUS_CONCLUDED);
    if (job->auto_dismiss || !job->started) {
        job_do_dismiss(job);
    }
}

static void coroutine_fn job_do_finalize(Job *job) GS
{
    job->finalizing = true;
    if (!job->ret && job->driver->prepare) {
        job->ret = job->driver->prepare(job);
        job_update_rc(job);
    }
    job_finalize_single(job);
}

/* The coroutine is done (or never started): on to pending or aborting. */
static void coroutine_fn job_completed(Job *job) GS
{
    job_update_rc(job);
    if (job->ret) {
        job->finalizing = true;
        job_finalize_single(job);
        return;
    }
    job_state_transition(job, JOB_STATUS_WAITING);
    job_state_transition(job, JOB_STATUS_PENDING);
    if (!job->auto_finalize) {
        block_event_post("BLOCK_JOB_PENDING",
                         json_pack("{s:s,s:s}", "type", job->driver->type,
                                   "id", job->id));
        return;
    }
    job_do_finalize(job);
}

/* Main loop, in a coroutine of its own: run returned. */
static void coroutine_fn job_exit_co(void *opaque)
{
    Job *job = opaque;

    global_lock_assert_held();
    job_ref(job);
    job->exited = true;
    job->ret = job->run_ret;
    job->err = job->run_err;
    job->run_err = NULL;
    job_completed(job);
    job_unref(job);
}

void job_exit_bh(void *opaque)
{
    co_spawn(job_exit_co, opaque);
}

void job_start(Job *job)
{
    GS_CODE();
    job->started = true;
    job_state_transition(job, JOB_STATUS_RUNNING);
    loop_schedule(job->loop, job_start_bh, job);
}

void job_early_fail(Job *job)
{
    GS_CODE();
    job_do_dismiss(job);
}

/* ------------------------------------------------------------ verbs */

int job_user_pause(Job *job, Error **errp)
{
    GS_CODE();
    if (job_apply_verb(job, JOB_VERB_PAUSE, errp) < 0) {
        return -EPERM;
    }
    if (job->user_paused) {
        error_setg(errp, "Job is already paused");
        return -EBUSY;
    }
    job->user_paused = true;
    job_pause_internal(job);
    return 0;
}

int job_user_resume(Job *job, Error **errp)
{
    GS_CODE();
    if (!job->user_paused) {
        error_setg(errp, "Can't resume a job that was not paused");
        return -EINVAL;
    }
    if (job_apply_verb(job, JOB_VERB_RESUME, errp) < 0) {
        return -EPERM;
    }
    job->iostatus = JOB_IOSTATUS_OK;
    job->user_paused = false;
    job_resume_internal(job);
    return 0;
}

/* GS: marks the cancel; a user pause ends with it. */
static void job_cancel_async(Job *job, bool force) GS
{
    force = job->driver->cancel ? job->driver->cancel(job, force) : true;
    force |= !job->started;             /* nothing to turn into a completion */
    if (job->user_paused) {
        job->user_paused = false;
        pthread_mutex_lock(&job->lock);
        job->pause_count--;
        pthread_mutex_unlock(&job->lock);
    }
    pthread_mutex_lock(&job->lock);
    /* A soft cancel of a job whose run has returned changes nothing. */
    if (force || job->wait != JOB_WAIT_DONE) {
        job->cancelled = true;
        job->force_cancel |= force;
    }
    pthread_mutex_unlock(&job->lock);
}

static void coroutine_fn job_cancel(Job *job, bool force) GS
{
    if (job->status == JOB_STATUS_CONCLUDED) {
        job_do_dismiss(job);
        return;
    }
    if (job->finalizing) {
        return;                         /* too late: finalization decides */
    }
    job_cancel_async(job, force);
    if (!job->started) {
        job_completed(job);
    } else if (job->exited) {
        if (job_is_cancelled(job)) {
            job->finalizing = true;
            job_finalize_single(job);
        }
    } else {
        job_kick(job, true);
    }
}

int coroutine_fn job_user_cancel(Job *job, bool force, Error **errp)
{
    GS_CODE();
    if (job_apply_verb(job, JOB_VERB_CANCEL, errp) < 0) {
        return -EPERM;
    }
    job_cancel(job, force);
    return 0;
}

int coroutine_fn job_complete(Job *job, Error **errp)
{
    Error *err = NULL;

    GS_CODE();
    if (job_apply_verb(job, JOB_VERB_COMPLETE, errp) < 0) {
        return -EPERM;
    }
    if (job_cancel_requested(job) || !job->driver->complete) {
        error_setg(errp, "The active block job '%s' cannot be completed", job->id);
        return -EINVAL;
    }
    job->driver->complete(job, &err);
    if (err) {
        error_propagate(errp, err);
        return -EINVAL;
    }
    return 0;
}

int coroutine_fn job_finalize(Job *job, Error **errp)
{
    GS_CODE();
    if (job_apply_verb(job, JOB_VERB_FINALIZE, errp) < 0) {
        return -EPERM;
    }
    if (job->finalizing) {
        error_setg(errp, "Job '%s' is already being finalized", job->id);
        return -EBUSY;
    }
    job_ref(job);
    job_do_finalize(job);
    job_unref(job);
    return 0;
}

int job_dismiss(Job *job, Error **errp)
{
    GS_CODE();
    if (job_apply_verb(job, JOB_VERB_DISMISS, errp) < 0) {
        return -EPERM;
    }
    job_do_dismiss(job);
    return 0;
}

int job_set_speed(Job *job, int64_t speed, Error **errp)
{
    int64_t old = job->speed;

    GS_CODE();
    if (job_apply_verb(job, JOB_VERB_SET_SPEED, errp) < 0) {
        return -EPERM;
    }
    if (speed < 0) {
        error_setg(errp, "Parameter 'speed' expects a non-negative value");
        return -EINVAL;
    }
    pthread_mutex_lock(&job->lock);
    ratelimit_set_speed(&job->limit, speed, JOB_SLICE_NS);
    pthread_mutex_unlock(&job->lock);
    job->speed = speed;
    if (!speed || speed > old) {
        job_kick(job, true);            /* a sleeping job re-evaluates */
    }
    return 0;
}

void job_get_info(Job *job, JobInfo *info)
{
    GS_CODE();
    pthread_mutex_lock(&job->lock);
    info->busy = job->started && job->wait == JOB_WAIT_NONE;
    info->paused = job->pause_count > 0;
    pthread_mutex_unlock(&job->lock);
    info->id = job->id;
    info->type = job->driver->type;
    info->status = job->status;
    info->current = atomic_load(&job->progress_current);
    info->total = atomic_load(&job->progress_total);
    info->ready = job_is_ready(job);
    info->speed = job->speed;
    info->iostatus = job->iostatus;
    info->auto_finalize = job->auto_finalize;
    info->auto_dismiss = job->auto_dismiss;
    info->error = job->ret ? error_get_pretty(job->err) : NULL;
}

void coroutine_fn job_co_cancel_all(void)
{
    Job *job;

    GS_CODE();
    while ((job = jobs)) {
        job_ref(job);
        job_cancel(job, true);          /* no-op while it finalizes */
        while (job->status != JOB_STATUS_NULL &&
               job->status != JOB_STATUS_CONCLUDED) {
            co_queue_wait(&status_waiters, NULL);
        }
        job_unref(job);
    }
}
