/*
 * cmd-job.c — QMP commands of the block-job core (src/jobs/job.h), with
 * QEMU's names, arguments, replies and messages:
 *
 *   job-pause, job-resume, job-cancel, job-complete, job-finalize,
 *   job-dismiss {id}            unknown id: GenericError "Job not found"
 *   block-job-pause, -resume, -complete {device}, block-job-cancel
 *   {device, force?}, block-job-set-speed {device, speed},
 *   block-job-finalize, -dismiss {id}
 *                               unknown id: DeviceNotActive "Block job 'x'
 *                               not found"
 *   query-jobs                  -> [JobInfo]
 *   query-block-jobs            -> [BlockJobInfo]
 *
 * job-cancel is a forced cancel; block-job-cancel is soft unless force
 * (a ready mirror completes without pivoting), and refuses a paused job
 * without force, as QEMU does.
 *
 * Threading: handlers are GS, each in its own coroutine on the main loop.
 */
#include "jobs/job.h"
#include "jobs/mirror.h"
#include "qmp/commands.h"

/* GS: the job named by args[key]; errors as job-* (generic) or as
 * block-job-* (DeviceNotActive) commands word them. */
static Job *find_job(json_t *args, const char *key, bool block, Error **errp) GS
{
    const char *id = json_string_value(json_object_get(args, key));
    Job *job = job_get(id);

    GS_CODE();
    if (!job && block) {
        error_set_class(errp, "DeviceNotActive", "Block job '%s' not found", id);
    } else if (!job) {
        error_setg(errp, "Job not found");
    }
    return job;
}

static json_t *done(int ret)
{
    return ret < 0 ? NULL : json_object();
}

/* The verbs, one handler per (verb, naming) pair. */
#define JOB_VERB_HANDLER(fn, key, block, call)                              \
    static json_t *coroutine_fn fn(json_t *args, Error **errp)              \
    {                                                                        \
        Job *job;                                                            \
        global_lock_assert_held();                                           \
        if (!(job = find_job(args, key, block, errp))) {                    \
            return NULL;                                                     \
        }                                                                    \
        return done(call);                                                   \
    }

JOB_VERB_HANDLER(job_pause_cmd, "id", false, job_user_pause(job, errp))
JOB_VERB_HANDLER(job_resume_cmd, "id", false, job_user_resume(job, errp))
JOB_VERB_HANDLER(job_cancel_cmd, "id", false, job_user_cancel(job, true, errp))
JOB_VERB_HANDLER(job_complete_cmd, "id", false, job_complete(job, errp))
JOB_VERB_HANDLER(job_finalize_cmd, "id", false, job_finalize(job, errp))
JOB_VERB_HANDLER(job_dismiss_cmd, "id", false, job_dismiss(job, errp))
JOB_VERB_HANDLER(block_job_pause_cmd, "device", true, job_user_pause(job, errp))
JOB_VERB_HANDLER(block_job_resume_cmd, "device", true, job_user_resume(job, errp))
JOB_VERB_HANDLER(block_job_complete_cmd, "device", true, job_complete(job, errp))
JOB_VERB_HANDLER(block_job_finalize_cmd, "id", true, job_finalize(job, errp))
JOB_VERB_HANDLER(block_job_dismiss_cmd, "id", true, job_dismiss(job, errp))

static json_t *coroutine_fn block_job_cancel_cmd(json_t *args, Error **errp)
{
    bool force = json_is_true(json_object_get(args, "force"));
    Job *job;

    global_lock_assert_held();
    if (!(job = find_job(args, "device", true, errp))) {
        return NULL;
    }
    if (job->user_paused && !force) {
        error_setg(errp, "The block job for device '%s' is currently paused",
                   job->id);
        return NULL;
    }
    return done(job_user_cancel(job, force, errp));
}

static json_t *coroutine_fn block_job_set_speed_cmd(json_t *args, Error **errp)
{
    json_int_t speed = json_integer_value(json_object_get(args, "speed"));
    Job *job;

    global_lock_assert_held();
    if (!(job = find_job(args, "device", true, errp))) {
        return NULL;
    }
    return done(job_set_speed(job, speed, errp));
}

/* GS: QEMU's JobInfo. */
static json_t *job_info_json(Job *job) GS
{
    JobInfo i;
    json_t *o;

    job_get_info(job, &i);
    o = json_pack("{s:s,s:s,s:s,s:I,s:I}", "id", i.id, "type", i.type,
                  "status", job_status_name(i.status),
                  "current-progress", (json_int_t)i.current,
                  "total-progress", (json_int_t)i.total);
    if (i.error) {
        json_object_set_new(o, "error", json_string(i.error));
    }
    return o;
}

/* GS: QEMU's BlockJobInfo. */
static json_t *block_job_info_json(Job *job) GS
{
    JobInfo i;
    json_t *o;

    job_get_info(job, &i);
    o = json_pack("{s:s,s:s,s:I,s:I,s:b,s:b,s:I,s:s,s:b,s:s,s:b,s:b}",
                  "type", i.type, "device", i.id,
                  "len", (json_int_t)i.total, "offset", (json_int_t)i.current,
                  "busy", i.busy, "paused", i.paused, "speed", (json_int_t)i.speed,
                  "io-status", job_iostatus_name(i.iostatus), "ready", i.ready,
                  "status", job_status_name(i.status),
                  "auto-finalize", i.auto_finalize, "auto-dismiss", i.auto_dismiss);
    if (i.error) {
        json_object_set_new(o, "error", json_string(i.error));
    }
    if (job_is_mirror(job)) {    /* QEMU's BlockJobInfoMirror */
        json_object_set_new(o, "actively-synced",
                            json_boolean(mirror_actively_synced(job)));
    }
    return o;
}

/* Newest first, as QEMU lists them. */
static json_t *job_list_json(json_t *(*info)(Job *job)) GS
{
    json_t *list = json_array();

    for (Job *job = job_next(NULL); job; job = job_next(job)) {
        json_array_append_new(list, info(job));
    }
    return list;
}

static json_t *coroutine_fn query_jobs(json_t *args, Error **errp)
{
    global_lock_assert_held();
    return job_list_json(job_info_json);
}

static json_t *coroutine_fn query_block_jobs(json_t *args, Error **errp)
{
    global_lock_assert_held();
    return job_list_json(block_job_info_json);
}

static const QmpArg id_args[] = { { "id", ARG_STR, true }, { NULL } };
static const QmpArg device_args[] = { { "device", ARG_STR, true }, { NULL } };
static const QmpArg cancel_args[] = {
    { "device", ARG_STR, true },
    { "force", ARG_BOOL, false },
    { NULL },
};
static const QmpArg speed_args[] = {
    { "device", ARG_STR, true },
    { "speed", ARG_INT, true },
    { NULL },
};
static const QmpArg no_args[] = { { NULL } };

const QmpCommandDef qmp_job_commands[] = {
    { { "job-pause", job_pause_cmd, "pause a job at its next safe point" }, id_args },
    { { "job-resume", job_resume_cmd, "resume a paused job" }, id_args },
    { { "job-cancel", job_cancel_cmd, "cancel a job" }, id_args },
    { { "job-complete", job_complete_cmd, "complete a ready job" }, id_args },
    { { "job-finalize", job_finalize_cmd, "finalize a pending job" }, id_args },
    { { "job-dismiss", job_dismiss_cmd, "remove a concluded job" }, id_args },
    { { "block-job-pause", block_job_pause_cmd, "job-pause by device" }, device_args },
    { { "block-job-resume", block_job_resume_cmd, "job-resume by device" }, device_args },
    { { "block-job-cancel", block_job_cancel_cmd,
        "cancel a block job (soft unless force)" }, cancel_args },
    { { "block-job-complete", block_job_complete_cmd, "job-complete by device" },
      device_args },
    { { "block-job-finalize", block_job_finalize_cmd, "job-finalize" }, id_args },
    { { "block-job-dismiss", block_job_dismiss_cmd, "job-dismiss" }, id_args },
    { { "block-job-set-speed", block_job_set_speed_cmd,
        "change a block job's speed limit (bytes/s, 0 unlimited)" }, speed_args },
    { { "query-jobs", query_jobs, "the jobs, with status and progress" }, no_args },
    { { "query-block-jobs", query_block_jobs, "the block jobs (QEMU's BlockJobInfo)" },
      no_args },
    { { NULL } },
};
