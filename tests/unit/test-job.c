/*
 * test-job.c — the block-job core (src/jobs/job.c) and its QMP commands
 * (src/qmp/cmd-job.c, compiled into this test).
 *
 * A test-only job type drives every transition: it does `steps` units of
 * work with a pause point before each, may hold at one step (a long sleep
 * only a kick ends, announced by a TEST_HOLD event), may go ready and wait
 * for job-complete, may hit an I/O error with a policy, and logs its
 * finalization callbacks.  Jobs run on an IOThread unless a test says
 * otherwise.  Tests wait for events (the sink below sets a flag when the
 * awaited one arrives), never for time; the expected event sequences are
 * QEMU's (qemu/job.c: JobSTT, job_completed, job_finalize_single).  The
 * rate limiter is checked on a simulated clock.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "block-events.h"
#include "jobs/job.h"
#include "qmp/commands.h"
#include "test-util.h"

#define STEP 65536
#define HOUR (3600LL * 1000000000LL)

/* ------------------------------------------------------------ events */

static json_t *events;              /* [{event, data}], in arrival order */
static Job *current;                /* the test's job, referenced */
static size_t cursor;               /* wait_event() looks from here */
static const char *want_name, *want_status;
static _Atomic bool want_seen;

static bool event_matches(size_t i, const char *name, const char *status)
{
    json_t *e = json_array_get(events, i);
    const char *st = json_string_value(json_object_get(
        json_object_get(e, "data"), "status"));

    return !strcmp(json_string_value(json_object_get(e, "event")), name) &&
           (!status || (st && !strcmp(st, status)));
}

/* Main loop: the block-events sink. */
static void sink(const char *name, json_t *data)
{
    json_array_append_new(events, json_pack("{s:s,s:o}", "event", name, "data", data));
    if (want_name && event_matches(json_array_size(events) - 1, want_name,
                                   want_status)) {
        atomic_store(&want_seen, true);
    }
}

static json_t *find_event(const char *name, const char *status)
{
    for (size_t i = cursor; i < json_array_size(events); i++) {
        if (event_matches(i, name, status)) {
            cursor = i + 1;
            return json_object_get(json_array_get(events, i), "data");
        }
    }
    return NULL;
}

/* Waits for the next event name (with data.status == status unless NULL)
 * after the last one waited for; returns its data. */
static json_t *wait_event(const char *name, const char *status)
{
    json_t *data = find_event(name, status);

    if (!data) {
        want_name = name;
        want_status = status;
        atomic_store(&want_seen, false);
        cr_assert(wait_flag_guarded(&want_seen), "no event %s %s", name,
                  status ? status : "");
        want_name = NULL;
        data = find_event(name, status);
    }
    return data;
}

/* "created running ... null": statuses, other events by name (test
 * markers left out). */
static const char *sequence(void)
{
    static char buf[1024];
    size_t n = 0;

    buf[0] = 0;
    for (size_t i = 0; i < json_array_size(events); i++) {
        json_t *e = json_array_get(events, i);
        const char *name = json_string_value(json_object_get(e, "event"));
        const char *st = json_string_value(json_object_get(
            json_object_get(e, "data"), "status"));

        if (!strncmp(name, "TEST_", 5)) {
            continue;
        }
        n += snprintf(buf + n, sizeof(buf) - n, "%s%s", n ? " " : "",
                      strcmp(name, "JOB_STATUS_CHANGE") ? name : st);
    }
    return buf;
}

static void setup(void) ACQUIRE(global_lock);
static void setup(void)
{
    test_runtime_init();
    events = json_array();
    cursor = 0;
    current = NULL;
    block_event_set_sink(sink);
}

/* Drops the test's reference on its job once the job is gone (a test may
 * look at its TestJob after the null event until then). */
static void teardown(void)
{
    global_lock_assert_held();
    if (current && current->status == JOB_STATUS_NULL) {
        job_unref(current);
    }
}

TestSuite(job, .init = setup, .fini = teardown, .timeout = 30);

/* ------------------------------------------------------------ the test job */

typedef struct TestJob {
    Job job;
    int steps;
    int hold_at;                 /* step that sleeps until kicked; -1 none */
    bool go_ready;               /* after the steps: ready until completed */
    int ret;                     /* run's result */
    int prepare_ret;
    /* an I/O error at step err_at, err_times times */
    int err_at, err_times, err_errno;
    BlockdevOnError on_err;
    _Atomic bool should_complete;
    _Atomic int steps_done;
    char log[128];               /* finalization callbacks, GS */
} TestJob;

static int coroutine_fn tj_error(TestJob *t, Error **errp)
{
    BlockErrorAction a;

    t->err_times--;
    a = job_error_action(&t->job, t->on_err, false, t->err_errno);
    if (a == BLOCK_ERROR_ACTION_REPORT) {
        error_setg(errp, "test job: write error");
        return -t->err_errno;
    }
    return a == BLOCK_ERROR_ACTION_STOP ? 1 : 0;   /* 1: retry the step */
}

/* The job's coroutine. */
static int coroutine_fn tj_run(Job *job, Error **errp)
{
    TestJob *t = (TestJob *)job;

    job_progress_set_remaining(job, (uint64_t)t->steps * STEP);
    for (int i = 0; i < t->steps; i++) {
        int r = 0;
        if (i == t->hold_at) {
            block_event_post("TEST_HOLD", NULL);
            if (job_sleep_ns(job, HOUR)) {
                return 0;
            }
        } else if (job_pause_point(job)) {
            return 0;
        }
        if (i == t->err_at && t->err_times > 0 && (r = tj_error(t, errp))) {
            if (r < 0) {
                return r;
            }
            i--;                            /* stopped: retry after resume */
            continue;
        }
        job_progress_update(job, STEP);
        atomic_fetch_add(&t->steps_done, 1);
    }
    if (t->go_ready) {
        job_transition_to_ready(job);
        while (!atomic_load(&t->should_complete)) {
            if (job_sleep_ns(job, HOUR)) {
                break;
            }
        }
    }
    return t->ret;
}

static void tj_log(Job *job, const char *what)
{
    TestJob *t = (TestJob *)job;
    size_t n = strlen(t->log);
    snprintf(t->log + n, sizeof(t->log) - n, "%s%s", n ? "," : "", what);
}

/* GS: as mirror, a soft cancel of a ready job completes it. */
static bool tj_cancel(Job *job, bool force)
{
    global_lock_assert_held();
    return force || !job_is_ready(job);
}

static void coroutine_fn tj_complete(Job *job, Error **errp)
{
    global_lock_assert_held();
    atomic_store(&((TestJob *)job)->should_complete, true);
    job_enter(job);
}

static int coroutine_fn tj_prepare(Job *job)
{
    tj_log(job, "prepare");
    return ((TestJob *)job)->prepare_ret;
}

static void coroutine_fn tj_commit(Job *job) { tj_log(job, "commit"); }
static void coroutine_fn tj_abort(Job *job) { tj_log(job, "abort"); }
static void coroutine_fn tj_clean(Job *job) { tj_log(job, "clean"); }

static const JobDriver test_job_driver = {
    .type = "test",
    .instance_size = sizeof(TestJob),
    .run = tj_run,
    .cancel = tj_cancel,
    .complete = tj_complete,
    .prepare = tj_prepare,
    .commit = tj_commit,
    .abort = tj_abort,
    .clean = tj_clean,
};

static IOThread *iothread;

/* A test job (created, not started), on an IOThread unless main_loop. */
static TestJob *tj_create(const char *id, bool main_loop, bool auto_finalize,
                          bool auto_dismiss) GS
{
    Error *err = NULL;
    TestJob *t;

    if (!main_loop && !iothread) {
        iothread = iothread_create("jobs");
    }
    t = (TestJob *)job_create(id, &test_job_driver, main_loop ? NULL : iothread,
                              0, auto_finalize, auto_dismiss, &err);
    cr_assert_not_null(t, "%s", err ? error_get_pretty(err) : "");
    t->steps = 3;
    t->hold_at = -1;
    t->err_at = -1;
    return t;
}

/* The test's job "j", referenced by the test so that it can be inspected
 * after it is gone. */
static TestJob *tj_new_on(bool main_loop, bool auto_finalize, bool auto_dismiss)
    GS
{
    TestJob *t = tj_create("j", main_loop, auto_finalize, auto_dismiss);

    job_ref(&t->job);
    current = &t->job;
    return t;
}

static TestJob *tj_new(bool auto_finalize, bool auto_dismiss) GS
{
    return tj_new_on(false, auto_finalize, auto_dismiss);
}

/* Waits until the job is gone (the test's reference keeps t readable). */
static void tj_wait_gone(TestJob *t) GS
{
    wait_event("JOB_STATUS_CHANGE", "null");
    cr_assert_null(job_get("j"));
    cr_assert_eq(t->job.status, JOB_STATUS_NULL);
}

/* ------------------------------------------------------------ verbs */

typedef struct VerbCall {
    Job *job;
    JobVerb verb;
    bool force;
    int64_t speed;
    int ret;
    char msg[256];
} VerbCall;

static void coroutine_fn verb_co(void *opaque)
{
    VerbCall *v = opaque;
    Error *err = NULL;

    global_lock_assert_held();
    switch (v->verb) {
    case JOB_VERB_PAUSE: v->ret = job_user_pause(v->job, &err); break;
    case JOB_VERB_RESUME: v->ret = job_user_resume(v->job, &err); break;
    case JOB_VERB_CANCEL: v->ret = job_user_cancel(v->job, v->force, &err); break;
    case JOB_VERB_COMPLETE: v->ret = job_complete(v->job, &err); break;
    case JOB_VERB_FINALIZE: v->ret = job_finalize(v->job, &err); break;
    case JOB_VERB_DISMISS: v->ret = job_dismiss(v->job, &err); break;
    case JOB_VERB_SET_SPEED: v->ret = job_set_speed(v->job, v->speed, &err); break;
    default: v->ret = -ENOSYS; break;
    }
    snprintf(v->msg, sizeof(v->msg), "%s", err ? error_get_pretty(err) : "");
    error_free(err);
}

/* Applies a verb as QMP would (in a coroutine on the main loop); returns
 * its error message, "" on success. */
static const char *verb_full(TestJob *t, JobVerb verb, bool force, int64_t speed)
{
    static VerbCall v;

    v = (VerbCall){ .job = &t->job, .verb = verb, .force = force, .speed = speed };
    run_co(verb_co, &v);
    cr_assert_eq(v.ret < 0, v.msg[0] != 0, "%s: ret %d, message '%s'",
                 job_verb_name(verb), v.ret, v.msg);
    return v.msg;
}

static const char *verb(TestJob *t, JobVerb verb)
{
    return verb_full(t, verb, true, 0);
}

static void verb_ok(TestJob *t, JobVerb v)
{
    const char *msg = verb(t, v);
    cr_assert_str_eq(msg, "", "%s: %s", job_verb_name(v), msg);
}

static void verb_refused(TestJob *t, JobVerb v, const char *state)
{
    char want[256];

    snprintf(want, sizeof(want),
             "Job 'j' in state '%s' cannot accept command verb '%s'", state,
             job_verb_name(v));
    cr_assert_str_eq(verb(t, v), want);
}

static JobStatus status_of(TestJob *t) GS
{
    return t->job.status;
}

/* ------------------------------------------------------------ runs */

static void check_simple_run(bool main_loop) GS
{
    TestJob *t = tj_new_on(main_loop, true, true);
    json_t *done;

    job_start(&t->job);
    done = wait_event("BLOCK_JOB_COMPLETED", NULL);
    tj_wait_gone(t);
    cr_assert_str_eq(sequence(), "created running waiting pending "
                     "BLOCK_JOB_COMPLETED concluded null");
    cr_assert_str_eq(json_string_value(json_object_get(done, "type")), "test");
    cr_assert_str_eq(json_string_value(json_object_get(done, "device")), "j");
    cr_assert_eq(json_integer_value(json_object_get(done, "len")), 3 * STEP);
    cr_assert_eq(json_integer_value(json_object_get(done, "offset")), 3 * STEP);
    cr_assert_eq(json_integer_value(json_object_get(done, "speed")), 0);
    cr_assert_null(json_object_get(done, "error"));
}

Test(job, run_on_iothread_auto_finalize_dismiss)
{
    global_lock_assert_held();
    check_simple_run(false);
}

Test(job, run_on_main_loop_auto_finalize_dismiss)
{
    global_lock_assert_held();
    check_simple_run(true);
}

Test(job, manual_finalize_and_dismiss)
{
    global_lock_assert_held();
    TestJob *t = tj_new(false, false);
    json_t *pending;
    JobInfo info;

    job_start(&t->job);
    pending = wait_event("BLOCK_JOB_PENDING", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(pending, "id")), "j");
    cr_assert_str_eq(json_string_value(json_object_get(pending, "type")), "test");
    cr_assert_eq(status_of(t), JOB_STATUS_PENDING);
    cr_assert_str_eq(t->log, "");
    verb_refused(t, JOB_VERB_DISMISS, "pending");
    verb_refused(t, JOB_VERB_PAUSE, "pending");
    verb_refused(t, JOB_VERB_COMPLETE, "pending");
    verb_ok(t, JOB_VERB_FINALIZE);
    cr_assert_eq(status_of(t), JOB_STATUS_CONCLUDED);
    cr_assert_str_eq(t->log, "prepare,commit,clean");
    job_get_info(&t->job, &info);
    cr_assert_null(info.error);
    cr_assert_eq(info.current, 3 * STEP);
    verb_refused(t, JOB_VERB_FINALIZE, "concluded");
    verb_refused(t, JOB_VERB_CANCEL, "concluded");
    verb_ok(t, JOB_VERB_DISMISS);
    tj_wait_gone(t);
    cr_assert_str_eq(sequence(), "created running waiting pending BLOCK_JOB_PENDING "
                     "BLOCK_JOB_COMPLETED concluded null");
}

Test(job, pause_and_resume_while_running)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);
    JobInfo info;

    t->hold_at = 1;
    job_start(&t->job);
    wait_event("TEST_HOLD", NULL);
    verb_ok(t, JOB_VERB_PAUSE);
    wait_event("JOB_STATUS_CHANGE", "paused");
    cr_assert_str_eq(verb(t, JOB_VERB_PAUSE), "Job is already paused");
    job_get_info(&t->job, &info);
    cr_assert(info.paused);
    cr_assert_not(info.busy);
    cr_assert_eq(atomic_load(&t->steps_done), 1);
    verb_refused(t, JOB_VERB_COMPLETE, "paused");
    verb_ok(t, JOB_VERB_RESUME);
    cr_assert_eq(status_of(t), JOB_STATUS_RUNNING);
    tj_wait_gone(t);
    cr_assert_eq(atomic_load(&t->steps_done), 3);
    cr_assert_str_eq(sequence(), "created running paused running waiting pending "
                     "BLOCK_JOB_COMPLETED concluded null");
}

Test(job, resume_refused_unless_paused)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);

    t->hold_at = 0;
    job_start(&t->job);
    wait_event("TEST_HOLD", NULL);
    cr_assert_str_eq(verb(t, JOB_VERB_RESUME), "Can't resume a job that was not paused");
    verb_ok(t, JOB_VERB_CANCEL);
    tj_wait_gone(t);
}

Test(job, pause_before_start_parks_at_first_pause_point)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);

    verb_ok(t, JOB_VERB_PAUSE);
    job_start(&t->job);
    wait_event("JOB_STATUS_CHANGE", "paused");
    cr_assert_eq(atomic_load(&t->steps_done), 0);
    verb_ok(t, JOB_VERB_RESUME);
    tj_wait_gone(t);
    cr_assert_str_eq(sequence(), "created running paused running waiting pending "
                     "BLOCK_JOB_COMPLETED concluded null");
}

Test(job, ready_standby_complete)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);
    json_t *ready;
    JobInfo info;

    t->go_ready = true;
    job_start(&t->job);
    ready = wait_event("BLOCK_JOB_READY", NULL);
    cr_assert_eq(json_integer_value(json_object_get(ready, "offset")), 3 * STEP);
    cr_assert_str_eq(json_string_value(json_object_get(ready, "device")), "j");
    verb_ok(t, JOB_VERB_PAUSE);
    wait_event("JOB_STATUS_CHANGE", "standby");
    job_get_info(&t->job, &info);
    cr_assert(info.ready);
    cr_assert(info.paused);
    /* QEMU 7.1 and later: complete is accepted on standby and takes
     * effect once the job resumes */
    verb_ok(t, JOB_VERB_COMPLETE);
    cr_assert_eq(status_of(t), JOB_STATUS_STANDBY);
    cr_assert_str_eq(t->log, "");
    verb_ok(t, JOB_VERB_RESUME);
    tj_wait_gone(t);
    cr_assert_str_eq(t->log, "prepare,commit,clean");
    cr_assert_str_eq(sequence(), "created running ready BLOCK_JOB_READY standby "
                     "ready waiting pending BLOCK_JOB_COMPLETED concluded null");
}

Test(job, complete_refused_while_running_and_without_callback)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);

    t->hold_at = 0;
    job_start(&t->job);
    wait_event("TEST_HOLD", NULL);
    verb_refused(t, JOB_VERB_COMPLETE, "running");
    verb_refused(t, JOB_VERB_FINALIZE, "running");
    verb_refused(t, JOB_VERB_DISMISS, "running");
    verb_ok(t, JOB_VERB_CANCEL);
    tj_wait_gone(t);
}

/* ------------------------------------------------------------ cancel */

Test(job, cancel_created)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);

    verb_ok(t, JOB_VERB_CANCEL);
    tj_wait_gone(t);
    cr_assert_str_eq(t->log, "abort,clean");
    cr_assert_str_eq(sequence(), "created aborting concluded null");
}

static void check_cancel_running(bool main_loop) GS
{
    TestJob *t = tj_new_on(main_loop, true, true);

    t->hold_at = 1;
    job_start(&t->job);
    wait_event("TEST_HOLD", NULL);
    verb_ok(t, JOB_VERB_CANCEL);
    tj_wait_gone(t);
    cr_assert_str_eq(t->log, "abort,clean");
    cr_assert_str_eq(sequence(), "created running aborting BLOCK_JOB_CANCELLED "
                     "concluded null");
}

Test(job, cancel_running)
{
    global_lock_assert_held();
    check_cancel_running(false);
}

Test(job, cancel_running_on_main_loop)
{
    global_lock_assert_held();
    check_cancel_running(true);
}

Test(job, cancel_paused)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);
    json_t *cancelled;

    t->hold_at = 1;
    job_start(&t->job);
    wait_event("TEST_HOLD", NULL);
    verb_ok(t, JOB_VERB_PAUSE);
    wait_event("JOB_STATUS_CHANGE", "paused");
    verb_ok(t, JOB_VERB_CANCEL);
    cancelled = wait_event("BLOCK_JOB_CANCELLED", NULL);
    cr_assert_eq(json_integer_value(json_object_get(cancelled, "offset")), STEP);
    cr_assert_eq(json_integer_value(json_object_get(cancelled, "len")), 3 * STEP);
    tj_wait_gone(t);
    cr_assert_str_eq(sequence(), "created running paused running aborting "
                     "BLOCK_JOB_CANCELLED concluded null");
}

Test(job, cancel_ready)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);

    t->go_ready = true;
    job_start(&t->job);
    wait_event("BLOCK_JOB_READY", NULL);
    verb_ok(t, JOB_VERB_CANCEL);
    tj_wait_gone(t);
    cr_assert_str_eq(t->log, "abort,clean");
    cr_assert_str_eq(sequence(), "created running ready BLOCK_JOB_READY aborting "
                     "BLOCK_JOB_CANCELLED concluded null");
}

Test(job, cancel_standby)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);

    t->go_ready = true;
    job_start(&t->job);
    wait_event("BLOCK_JOB_READY", NULL);
    verb_ok(t, JOB_VERB_PAUSE);
    wait_event("JOB_STATUS_CHANGE", "standby");
    verb_ok(t, JOB_VERB_CANCEL);
    tj_wait_gone(t);
    cr_assert_str_eq(sequence(), "created running ready BLOCK_JOB_READY standby "
                     "ready aborting BLOCK_JOB_CANCELLED concluded null");
}

Test(job, soft_cancel_of_ready_job_completes_it)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);

    t->go_ready = true;
    job_start(&t->job);
    wait_event("BLOCK_JOB_READY", NULL);
    cr_assert_str_eq(verb_full(t, JOB_VERB_CANCEL, false, 0), "");
    tj_wait_gone(t);
    cr_assert_str_eq(t->log, "prepare,commit,clean");
    cr_assert_str_eq(sequence(), "created running ready BLOCK_JOB_READY waiting "
                     "pending BLOCK_JOB_COMPLETED concluded null");
}

Test(job, cancel_pending)
{
    global_lock_assert_held();
    TestJob *t = tj_new(false, true);

    job_start(&t->job);
    wait_event("BLOCK_JOB_PENDING", NULL);
    verb_ok(t, JOB_VERB_CANCEL);
    tj_wait_gone(t);
    cr_assert_str_eq(t->log, "abort,clean");
    cr_assert_str_eq(sequence(), "created running waiting pending BLOCK_JOB_PENDING "
                     "aborting BLOCK_JOB_CANCELLED concluded null");
}

/* ------------------------------------------------------------ failures */

Test(job, failed_run_reports_error)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, false);
    json_t *done;
    JobInfo info;

    t->ret = -EIO;
    job_start(&t->job);
    done = wait_event("BLOCK_JOB_COMPLETED", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(done, "error")),
                     strerror(EIO));
    wait_event("JOB_STATUS_CHANGE", "concluded");
    job_get_info(&t->job, &info);
    cr_assert_str_eq(info.error, strerror(EIO));
    cr_assert_str_eq(t->log, "abort,clean");
    verb_ok(t, JOB_VERB_DISMISS);
    tj_wait_gone(t);
    cr_assert_str_eq(sequence(), "created running aborting BLOCK_JOB_COMPLETED "
                     "concluded null");
}

Test(job, failed_prepare_aborts)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);
    json_t *done;

    t->prepare_ret = -EINVAL;
    job_start(&t->job);
    done = wait_event("BLOCK_JOB_COMPLETED", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(done, "error")),
                     strerror(EINVAL));
    tj_wait_gone(t);
    cr_assert_str_eq(t->log, "prepare,abort,clean");
    cr_assert_str_eq(sequence(), "created running waiting pending aborting "
                     "BLOCK_JOB_COMPLETED concluded null");
}

static TestJob *tj_new_failing(BlockdevOnError policy, int err) GS
{
    TestJob *t = tj_new(true, true);

    t->err_at = 1;
    t->err_times = 1;
    t->err_errno = err;
    t->on_err = policy;
    return t;
}

static void check_error_event(json_t *e, const char *action)
{
    cr_assert_str_eq(json_string_value(json_object_get(e, "device")), "j");
    cr_assert_str_eq(json_string_value(json_object_get(e, "operation")), "write");
    cr_assert_str_eq(json_string_value(json_object_get(e, "action")), action);
}

static void check_stop_then_resume(BlockdevOnError policy, int err,
                                   JobIoStatus iostatus) GS
{
    TestJob *t = tj_new_failing(policy, err);
    JobInfo info;

    job_start(&t->job);
    check_error_event(wait_event("BLOCK_JOB_ERROR", NULL), "stop");
    wait_event("JOB_STATUS_CHANGE", "paused");
    job_get_info(&t->job, &info);
    cr_assert_eq(info.iostatus, iostatus);
    cr_assert(info.paused);
    cr_assert_eq(atomic_load(&t->steps_done), 1);
    verb_ok(t, JOB_VERB_RESUME);
    job_get_info(&t->job, &info);
    cr_assert_eq(info.iostatus, JOB_IOSTATUS_OK);
    tj_wait_gone(t);
    cr_assert_eq(atomic_load(&t->steps_done), 3);
    cr_assert_str_eq(sequence(), "created running BLOCK_JOB_ERROR paused running "
                     "waiting pending BLOCK_JOB_COMPLETED concluded null");
}

Test(job, error_policy_stop_then_resume)
{
    global_lock_assert_held();
    check_stop_then_resume(BLOCKDEV_ON_ERROR_STOP, EIO, JOB_IOSTATUS_FAILED);
}

Test(job, error_policy_enospc_stops_on_enospc)
{
    global_lock_assert_held();
    check_stop_then_resume(BLOCKDEV_ON_ERROR_ENOSPC, -ENOSPC, JOB_IOSTATUS_NOSPACE);
}

Test(job, error_policy_enospc_reports_other_errors)
{
    global_lock_assert_held();
    TestJob *t = tj_new_failing(BLOCKDEV_ON_ERROR_ENOSPC, EIO);
    json_t *done;

    job_start(&t->job);
    check_error_event(wait_event("BLOCK_JOB_ERROR", NULL), "report");
    done = wait_event("BLOCK_JOB_COMPLETED", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(done, "error")),
                     "test job: write error");
    tj_wait_gone(t);
    cr_assert_str_eq(sequence(), "created running BLOCK_JOB_ERROR aborting "
                     "BLOCK_JOB_COMPLETED concluded null");
}

Test(job, error_policy_ignore_goes_on)
{
    global_lock_assert_held();
    TestJob *t = tj_new_failing(BLOCKDEV_ON_ERROR_IGNORE, EIO);

    job_start(&t->job);
    check_error_event(wait_event("BLOCK_JOB_ERROR", NULL), "ignore");
    tj_wait_gone(t);
    cr_assert_eq(atomic_load(&t->steps_done), 3);
    cr_assert_str_eq(sequence(), "created running BLOCK_JOB_ERROR waiting pending "
                     "BLOCK_JOB_COMPLETED concluded null");
}

Test(job, on_error_names)
{
    cr_assert_eq(blockdev_on_error_parse("report"), BLOCKDEV_ON_ERROR_REPORT);
    cr_assert_eq(blockdev_on_error_parse("ignore"), BLOCKDEV_ON_ERROR_IGNORE);
    cr_assert_eq(blockdev_on_error_parse("enospc"), BLOCKDEV_ON_ERROR_ENOSPC);
    cr_assert_eq(blockdev_on_error_parse("stop"), BLOCKDEV_ON_ERROR_STOP);
    cr_assert_eq(blockdev_on_error_parse("auto"), BLOCKDEV_ON_ERROR_AUTO);
    cr_assert_eq(blockdev_on_error_parse("Stop"), -1);
    cr_assert_eq(blockdev_on_error_parse(NULL), -1);
}

/* ------------------------------------------------------------ pauses */

Test(job, internal_and_user_pauses_count_apart)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);

    t->hold_at = 1;
    job_start(&t->job);
    wait_event("TEST_HOLD", NULL);
    job_pause_internal(&t->job);            /* a quiesced section */
    wait_event("JOB_STATUS_CHANGE", "paused");
    verb_ok(t, JOB_VERB_PAUSE);
    job_pause_internal(&t->job);            /* a nested one */
    verb_ok(t, JOB_VERB_RESUME);
    job_resume_internal(&t->job);
    cr_assert_eq(status_of(t), JOB_STATUS_PAUSED);
    job_resume_internal(&t->job);
    cr_assert_eq(status_of(t), JOB_STATUS_RUNNING);
    tj_wait_gone(t);
    cr_assert_str_eq(sequence(), "created running paused running waiting pending "
                     "BLOCK_JOB_COMPLETED concluded null");
}

static void coroutine_fn cancel_all_co(void *opaque)
{
    global_lock_assert_held();
    job_co_cancel_all();
}

Test(job, cancel_all_at_exit)
{
    global_lock_assert_held();
    TestJob *held = tj_create("held", false, true, true);
    TestJob *ready = tj_create("ready", true, true, true);
    TestJob *pending = tj_create("pending", false, false, false);
    TestJob *done = tj_create("done", false, true, false);

    held->hold_at = 1;
    ready->go_ready = true;
    job_start(&held->job);
    job_start(&ready->job);
    job_start(&pending->job);
    job_start(&done->job);
    tj_create("created", false, true, true);
    /* in any order */
    for (const char **e = (const char *[]){ "TEST_HOLD", "BLOCK_JOB_READY",
                                            "BLOCK_JOB_PENDING", NULL }; *e; e++) {
        cursor = 0;
        wait_event(*e, NULL);
    }
    cursor = 0;
    wait_event("JOB_STATUS_CHANGE", "concluded");
    cursor = 0;
    run_co(cancel_all_co, NULL);
    cr_assert_null(job_next(NULL));
    for (int i = 0; i < 5; i++) {
        wait_event("JOB_STATUS_CHANGE", "null");
    }
}

Test(job, create_refuses_bad_ids_and_speed)
{
    global_lock_assert_held();
    Error *err = NULL;
    TestJob *t = tj_new(true, true);

    cr_assert_null(job_create("j", &test_job_driver, NULL, 0, true, true, &err));
    cr_assert_str_eq(error_get_pretty(err), "Job ID 'j' already in use");
    error_free(err);
    err = NULL;
    cr_assert_null(job_create("1x", &test_job_driver, NULL, 0, true, true, &err));
    cr_assert_str_eq(error_get_pretty(err), "Invalid job ID '1x'");
    error_free(err);
    err = NULL;
    cr_assert_null(job_create(NULL, &test_job_driver, NULL, 0, true, true, &err));
    cr_assert_str_eq(error_get_pretty(err), "An explicit job ID is required");
    error_free(err);
    err = NULL;
    cr_assert_null(job_create("k", &test_job_driver, NULL, -1, true, true, &err));
    cr_assert_str_eq(error_get_pretty(err),
                     "Parameter 'speed' expects a non-negative value");
    error_free(err);
    job_early_fail(&t->job);
    tj_wait_gone(t);
    cr_assert_str_eq(sequence(), "created null");
}

/* ------------------------------------------------------------ rate limit */

/* Simulates a job that dispatches chunk bytes, then sleeps as told (plus
 * work_ns per chunk), for window_ns of simulated time; returns bytes/s. */
static double simulate(uint64_t speed, uint64_t chunk, int64_t work_ns,
                       int64_t window_ns)
{
    RateLimit rl = { 0 };
    int64_t now = 1000;             /* any start */
    int64_t start = now;
    uint64_t bytes = 0;

    ratelimit_set_speed(&rl, speed, JOB_SLICE_NS);
    while (now - start < window_ns) {
        int64_t delay = ratelimit_delay_ns(&rl, now, chunk);
        cr_assert_geq(delay, 0);
        bytes += chunk;
        now += delay + work_ns;
    }
    return bytes * 1e9 / (now - start);
}

static void check_rate(uint64_t speed, uint64_t chunk, int64_t work_ns)
{
    double rate = simulate(speed, chunk, work_ns, 20LL * 1000000000LL);
    cr_assert(rate > speed * 0.9 && rate < speed * 1.1,
              "speed %lu chunk %lu: %.0f bytes/s", (unsigned long)speed,
              (unsigned long)chunk, rate);
}

Test(job, ratelimit_keeps_the_speed_on_a_simulated_clock)
{
    check_rate(1 << 20, 64 << 10, 0);          /* chunks below the quota */
    check_rate(1 << 20, 64 << 10, 1000000);    /* ... with 1 ms work each */
    check_rate(100 << 10, 1 << 20, 0);         /* chunks of ten slices */
    check_rate(10 << 20, 4096, 10000);         /* small chunks */
    check_rate(1000, 512, 0);                  /* 1000 bytes/s */
}

Test(job, ratelimit_unlimited_and_idle_credit)
{
    RateLimit rl = { 0 };

    ratelimit_set_speed(&rl, 0, JOB_SLICE_NS);
    cr_assert_eq(ratelimit_delay_ns(&rl, 5, UINT32_MAX), 0);
    /* 1 MiB/s: an idle second buys no more than one slice's quota */
    ratelimit_set_speed(&rl, 1 << 20, JOB_SLICE_NS);
    cr_assert_eq(ratelimit_delay_ns(&rl, 1000000000, 64 << 10), 0);
    cr_assert_gt(ratelimit_delay_ns(&rl, 1000000000, 64 << 10), 0);
}

Test(job, set_speed_verb)
{
    global_lock_assert_held();
    TestJob *t = tj_new(false, true);
    JobInfo info;

    t->hold_at = 0;
    job_start(&t->job);
    wait_event("TEST_HOLD", NULL);
    verb_ok(t, JOB_VERB_PAUSE);
    wait_event("JOB_STATUS_CHANGE", "paused");
    cr_assert_str_eq(verb_full(t, JOB_VERB_SET_SPEED, true, -5),
                     "Parameter 'speed' expects a non-negative value");
    cr_assert_str_eq(verb_full(t, JOB_VERB_SET_SPEED, true, 1 << 20), "");
    job_get_info(&t->job, &info);
    cr_assert_eq(info.speed, 1 << 20);
    /* 1 MiB/s, 100 ms slices: the second 100 KiB chunk must wait */
    cr_assert_eq(job_ratelimit_delay_ns(&t->job, 100 << 10), 0);
    cr_assert_gt(job_ratelimit_delay_ns(&t->job, 100 << 10), 0);
    cr_assert_str_eq(verb_full(t, JOB_VERB_SET_SPEED, true, 0), "");
    cr_assert_eq(job_ratelimit_delay_ns(&t->job, 1 << 30), 0);
    verb_ok(t, JOB_VERB_RESUME);
    wait_event("BLOCK_JOB_PENDING", NULL);
    cr_assert_str_eq(verb_full(t, JOB_VERB_SET_SPEED, true, 5),
                     "Job 'j' in state 'pending' cannot accept command verb "
                     "'set-speed'");
    verb_ok(t, JOB_VERB_FINALIZE);
    tj_wait_gone(t);
}

Test(job, faster_speed_ends_a_sleep)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, true);

    t->hold_at = 0;
    job_start(&t->job);
    wait_event("TEST_HOLD", NULL);
    cr_assert_str_eq(verb_full(t, JOB_VERB_SET_SPEED, true, 1 << 20), "");
    tj_wait_gone(t);
    cr_assert_eq(atomic_load(&t->steps_done), 3);
}

/* ------------------------------------------------------------ QMP */

typedef struct QmpCall {
    const char *name;
    json_t *args;
    json_t *ret;
    char cls[64], desc[256];
} QmpCall;

static void coroutine_fn qmp_call_co(void *opaque)
{
    QmpCall *c = opaque;
    Error *err = NULL;
    const QmpCommandDef *d = qmp_job_commands;

    while (d->cmd.name && strcmp(d->cmd.name, c->name)) {
        d++;
    }
    cr_assert_not_null(d->cmd.name, "no command %s", c->name);
    c->ret = d->cmd.handler(c->args, &err);
    if (err) {
        snprintf(c->cls, sizeof(c->cls), "%s", err->cls ? err->cls : "GenericError");
        snprintf(c->desc, sizeof(c->desc), "%s", error_get_pretty(err));
        error_free(err);
    }
}

/* Runs a command of cmd-job.c with args (JSON text); returns its "return"
 * value (caller owns it), or NULL with the error in c. */
static json_t *qmp(QmpCall *c, const char *name, const char *args)
{
    *c = (QmpCall){ .name = name, .args = json_loads(args, 0, NULL) };
    cr_assert_not_null(c->args);
    run_co(qmp_call_co, c);
    json_decref(c->args);
    return c->ret;
}

static void qmp_ok(const char *name, const char *args)
{
    QmpCall c;
    json_t *r = qmp(&c, name, args);
    cr_assert_not_null(r, "%s: %s", name, c.desc);
    json_decref(r);
}

static void qmp_err(const char *name, const char *args, const char *cls,
                    const char *desc)
{
    QmpCall c;
    cr_assert_null(qmp(&c, name, args));
    cr_assert_str_eq(c.cls, cls);
    cr_assert_str_eq(c.desc, desc);
}

Test(job, qmp_unknown_jobs)
{
    global_lock_assert_held();
    qmp_err("job-pause", "{\"id\": \"x\"}", "GenericError", "Job not found");
    qmp_err("job-dismiss", "{\"id\": \"x\"}", "GenericError", "Job not found");
    qmp_err("block-job-cancel", "{\"device\": \"x\"}", "DeviceNotActive",
            "Block job 'x' not found");
    qmp_err("block-job-finalize", "{\"id\": \"x\"}", "DeviceNotActive",
            "Block job 'x' not found");
    qmp_err("block-job-set-speed", "{\"device\": \"x\", \"speed\": 1}",
            "DeviceNotActive", "Block job 'x' not found");
}

Test(job, qmp_queries_and_verbs)
{
    global_lock_assert_held();
    TestJob *t = tj_new(true, false);
    QmpCall c;
    json_t *r, *j;

    t->hold_at = 1;
    job_start(&t->job);
    wait_event("TEST_HOLD", NULL);
    qmp_ok("block-job-pause", "{\"device\": \"j\"}");
    wait_event("JOB_STATUS_CHANGE", "paused");
    qmp_ok("block-job-set-speed", "{\"device\": \"j\", \"speed\": 4096}");

    r = qmp(&c, "query-jobs", "{}");
    cr_assert_eq(json_array_size(r), 1);
    j = json_array_get(r, 0);
    cr_assert_str_eq(json_string_value(json_object_get(j, "id")), "j");
    cr_assert_str_eq(json_string_value(json_object_get(j, "type")), "test");
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "paused");
    cr_assert_eq(json_integer_value(json_object_get(j, "current-progress")), STEP);
    cr_assert_eq(json_integer_value(json_object_get(j, "total-progress")), 3 * STEP);
    cr_assert_null(json_object_get(j, "error"));
    json_decref(r);

    r = qmp(&c, "query-block-jobs", "{}");
    j = json_array_get(r, 0);
    cr_assert_not_null(j);
    cr_assert_eq(json_object_size(j), 12, "%s", json_dumps(j, 0));
    cr_assert_str_eq(json_string_value(json_object_get(j, "device")), "j");
    cr_assert_eq(json_integer_value(json_object_get(j, "len")), 3 * STEP);
    cr_assert_eq(json_integer_value(json_object_get(j, "offset")), STEP);
    cr_assert(json_is_false(json_object_get(j, "busy")));
    cr_assert(json_is_true(json_object_get(j, "paused")));
    cr_assert_eq(json_integer_value(json_object_get(j, "speed")), 4096);
    cr_assert_str_eq(json_string_value(json_object_get(j, "io-status")), "ok");
    cr_assert(json_is_false(json_object_get(j, "ready")));
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "paused");
    cr_assert(json_is_true(json_object_get(j, "auto-finalize")));
    cr_assert(json_is_false(json_object_get(j, "auto-dismiss")));
    json_decref(r);

    qmp_err("block-job-cancel", "{\"device\": \"j\"}", "GenericError",
            "The block job for device 'j' is currently paused");
    qmp_err("job-complete", "{\"id\": \"j\"}", "GenericError",
            "Job 'j' in state 'paused' cannot accept command verb 'complete'");
    qmp_ok("job-resume", "{\"id\": \"j\"}");
    qmp_ok("job-cancel", "{\"id\": \"j\"}");
    wait_event("JOB_STATUS_CHANGE", "concluded");
    r = qmp(&c, "query-jobs", "{}");
    j = json_array_get(r, 0);
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "concluded");
    cr_assert_str_eq(json_string_value(json_object_get(j, "error")),
                     strerror(ECANCELED));
    json_decref(r);
    qmp_ok("block-job-dismiss", "{\"id\": \"j\"}");
    tj_wait_gone(t);
    r = qmp(&c, "query-block-jobs", "{}");
    cr_assert_eq(json_array_size(r), 0);
    json_decref(r);
}
