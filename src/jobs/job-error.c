/*
 * job-error.c — error policies of block jobs (on-source-error,
 * on-target-error, on-error) and their QMP spellings; see job.h.
 *
 * The job's coroutine decides the action from the policy, then hands the
 * GS half (the BLOCK_JOB_ERROR event; on stop, a user-visible pause and
 * the io-status) to the main loop and waits until it is done, so that the
 * pause is in place before the job reaches its next pause point.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block-events.h"
#include "jobs/job.h"

static const char *const on_error_names[BLOCKDEV_ON_ERROR__MAX] = {
    "report", "ignore", "enospc", "stop", "auto",
};

const char *job_iostatus_name(JobIoStatus s)
{
    static const char *const names[] = { "ok", "failed", "nospace" };
    return (unsigned)s < ARRAY_SIZE(names) ? names[s] : NULL;
}

const char *block_error_action_name(BlockErrorAction a)
{
    static const char *const names[] = { "ignore", "report", "stop" };
    return (unsigned)a < ARRAY_SIZE(names) ? names[a] : NULL;
}

int blockdev_on_error_parse(const char *name)
{
    for (int i = 0; name && i < BLOCKDEV_ON_ERROR__MAX; i++) {
        if (!strcmp(name, on_error_names[i])) {
            return i;
        }
    }
    return -1;
}

typedef struct JobErrorReport {
    Job *job;
    BlockErrorAction action;
    bool is_read;
    int error;
} JobErrorReport;

/* Main loop (bottom half): the GS half of job_error_action(). */
static void job_error_bh(void *opaque)
{
    JobErrorReport *r = opaque;
    Job *job = r->job;

    global_lock_assert_held();
    block_event_post("BLOCK_JOB_ERROR",
                     json_pack("{s:s,s:s,s:s}", "device", job->id,
                               "operation", r->is_read ? "read" : "write",
                               "action", block_error_action_name(r->action)));
    if (r->action == BLOCK_ERROR_ACTION_STOP) {
        if (!job->user_paused) {
            job->user_paused = true;        /* job-resume goes on */
            job_pause_internal(job);
        }
        if (job->iostatus == JOB_IOSTATUS_OK) {
            job->iostatus = r->error == ENOSPC ? JOB_IOSTATUS_NOSPACE
                                               : JOB_IOSTATUS_FAILED;
        }
    }
}

BlockErrorAction coroutine_fn job_error_action(Job *job, BlockdevOnError on_err,
                                               bool is_read, int error)
{
    JobErrorReport r = { .job = job, .is_read = is_read, .error = abs(error) };

    switch (on_err) {
    case BLOCKDEV_ON_ERROR_ENOSPC:
    case BLOCKDEV_ON_ERROR_AUTO:
        r.action = r.error == ENOSPC ? BLOCK_ERROR_ACTION_STOP
                                     : BLOCK_ERROR_ACTION_REPORT;
        break;
    case BLOCKDEV_ON_ERROR_STOP:
        r.action = BLOCK_ERROR_ACTION_STOP;
        break;
    case BLOCKDEV_ON_ERROR_IGNORE:
        r.action = BLOCK_ERROR_ACTION_IGNORE;
        break;
    default:
        r.action = BLOCK_ERROR_ACTION_REPORT;
        break;
    }
    co_run_on_main_loop(job_error_bh, &r);
    return r.action;
}

