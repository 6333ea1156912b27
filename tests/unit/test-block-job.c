/*
 * test-block-job.c — the nodes a block job holds (src/jobs/block-job.c):
 * the job's backends name it in permission conflicts, a quiesced section of
 * a held node parks the job at its next pause point until the section
 * ends, and the backends go away when the job does.
 *
 * The job type loops on job_sleep_ns() (a pause point) until cancelled.
 * Tests wait for the job's status events, never for time.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "block-events.h"
#include "jobs/block-job.h"
#include "fake-drivers.h"
#include "test-util.h"

#define HOUR (3600LL * 1000000000LL)

static char want_status[32];
static _Atomic bool status_seen;

/* Main loop: the block-events sink; flags the awaited JOB_STATUS_CHANGE. */
static void sink(const char *name, json_t *data)
{
    const char *st = json_string_value(json_object_get(data, "status"));

    if (!strcmp(name, "JOB_STATUS_CHANGE") && st && !strcmp(st, want_status)) {
        atomic_store(&status_seen, true);
    }
    json_decref(data);
}

static void expect_status(const char *status)
{
    snprintf(want_status, sizeof(want_status), "%s", status);
    atomic_store(&status_seen, false);
}

static void setup(void) ACQUIRE(global_lock);
static void setup(void)
{
    test_runtime_init();
    fake_drivers_register();
    block_event_set_sink(sink);
}

TestSuite(block_job, .init = setup, .timeout = 30);

typedef struct IdleJob {
    BlockJob common;
} IdleJob;

/* The job's coroutine: idles at pause points until cancelled. */
static int coroutine_fn idle_run(Job *job, Error **errp)
{
    while (!job_sleep_ns(job, HOUR)) {
    }
    return 0;
}

static const JobDriver idle_driver = {
    .type = "stream",
    .instance_size = sizeof(IdleJob),
    .run = idle_run,
};

typedef struct CreateArgs {
    const char *id;
    BlockNode *bs;
    uint64_t perm, shared;
    BlockJob *job;
    char err[512];
} CreateArgs;

static void coroutine_fn create_co(void *opaque)
{
    CreateArgs *a = opaque;
    Error *err = NULL;

    global_lock_assert_held();
    a->job = block_job_create(a->id, &idle_driver, a->bs, a->perm, a->shared,
                              0, true, true, NULL, &err);
    if (err) {
        snprintf(a->err, sizeof(a->err), "%s", error_get_pretty(err));
        error_free(err);
    }
}

static void coroutine_fn cancel_co(void *opaque)
{
    Job *job = opaque;

    global_lock_assert_held();
    job_user_cancel(job, true, NULL);
}

static int parent_count(BlockNode *bs) GS
{
    int n = 0;

    bdrv_graph_rdlock_main_loop();
    for (BlockChild *c = bs->parents; c; c = c->next_parent) {
        n++;
    }
    bdrv_graph_rdunlock_main_loop();
    return n;
}

Test(block_job, section_pauses_job_and_backends_go_with_it)
{
    global_lock_assert_held();
    BlockNode *m = test_open_node("driver=mem,node-name=m0,size=1M");
    CreateArgs a = { .id = "j0", .bs = m, .perm = BLK_PERM_CONSISTENT_READ,
                     .shared = BLK_PERM_ALL };

    run_co(create_co, &a);
    cr_assert_not_null(a.job, "%s", a.err);
    cr_assert_eq(parent_count(m), 1);
    expect_status("running");
    job_start(&a.job->job);
    cr_assert(wait_flag_guarded(&status_seen));

    /* A section of the held node parks the job; its end lets it go on. */
    expect_status("paused");
    test_quiesce_begin_now(m);
    cr_assert(wait_flag_guarded(&status_seen));
    expect_status("running");
    bdrv_quiesce_end(m);
    cr_assert(wait_flag_guarded(&status_seen));

    expect_status("null");
    run_co(cancel_co, &a.job->job);
    cr_assert(wait_flag_guarded(&status_seen));
    cr_assert_eq(parent_count(m), 0, "the job's backend is gone");
}

Test(block_job, conflict_names_the_job)
{
    global_lock_assert_held();
    BlockNode *m = test_open_node("driver=mem,node-name=m1,size=1M");
    CreateArgs a = { .id = "writer", .bs = m,
                     .perm = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                     .shared = BLK_PERM_CONSISTENT_READ };
    CreateArgs b = a;

    run_co(create_co, &a);
    cr_assert_not_null(a.job, "%s", a.err);
    b.id = "second";
    run_co(create_co, &b);
    cr_assert_null(b.job);
    cr_assert(strstr(b.err, "job 'writer'") || strstr(b.err, "job 'second'"),
              "error names a job: %s", b.err);
    cr_assert_null(job_get("second"), "a refused job leaves nothing");
    cr_assert_eq(parent_count(m), 1);

    expect_status("null");
    run_co(cancel_co, &a.job->job);     /* cancel of a created job */
    cr_assert(wait_flag_guarded(&status_seen));
    cr_assert_eq(parent_count(m), 0);
}
