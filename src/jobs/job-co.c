/*
 * job-co.c — the coroutine side of a job (see job.h): pause points,
 * sleeps, going ready, progress, and how the coroutine and GS code wake
 * each other.
 *
 * GS code owns job->status; the coroutine only ever asks the main loop for
 * a change: parking at a pause point schedules job_parked_bh (running ->
 * paused, ready -> standby), going ready schedules job_ready_bh, an error
 * waits for job_error_bh (job-error.c), returning schedules job_exit_bh
 * (job.c).  A bottom half scheduled by the coroutine runs before any it
 * scheduled later (the main loop runs them in order), so the exit always
 * comes last and the job is never freed under a pending one.
 *
 * Waking the coroutine goes through job_kick() (GS): under job->lock it
 * takes the coroutine out of its wait (a sleep, or a park it may leave),
 * puts the status back (paused -> running, standby -> ready) and
 * co_wake()s it.  The coroutine enters a wait under the same lock after
 * checking the pause counter, the cancel flag and the kept kick, so a wake
 * and a wait that race resolve to exactly one wake-up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/job-int.h"

bool job_cancel_requested(Job *job)
{
    bool c;

    pthread_mutex_lock(&job->lock);
    c = job->cancelled;
    pthread_mutex_unlock(&job->lock);
    return c;
}

bool job_is_cancelled(Job *job)
{
    bool c;

    pthread_mutex_lock(&job->lock);
    c = job->cancelled && job->force_cancel;
    pthread_mutex_unlock(&job->lock);
    return c;
}

/* ------------------------------------------------------------ waking */

/* GS: puts the status back when a parked coroutine goes on. */
static void job_unpark_status(Job *job) GS
{
    if (job->status == JOB_STATUS_PAUSED) {
        job_state_transition(job, JOB_STATUS_RUNNING);
    } else if (job->status == JOB_STATUS_STANDBY) {
        job_state_transition(job, JOB_STATUS_READY);
    }
}

void job_kick(Job *job, bool wake_sleeper)
{
    JobWait was;
    bool go;

    GS_CODE();
    pthread_mutex_lock(&job->lock);
    was = job->wait;
    go = (was == JOB_WAIT_SLEEP && wake_sleeper) ||
         (was == JOB_WAIT_PARK && (!job->pause_count || job->cancelled));
    if (go) {
        job->wait = JOB_WAIT_NONE;
    } else if (was == JOB_WAIT_NONE && wake_sleeper) {
        job->kicked = true;             /* its next sleep ends at once */
    }
    pthread_mutex_unlock(&job->lock);
    if (go) {
        if (was == JOB_WAIT_PARK) {
            job_unpark_status(job);
        }
        co_wake(job->co);
    }
}

void job_enter(Job *job)
{
    GS_CODE();
    job_kick(job, true);
}

void job_pause_internal(Job *job)
{
    GS_CODE();
    pthread_mutex_lock(&job->lock);
    job->pause_count++;
    pthread_mutex_unlock(&job->lock);
    job_kick(job, true);            /* a sleeping job parks now */
}

void job_resume_internal(Job *job)
{
    GS_CODE();
    pthread_mutex_lock(&job->lock);
    if (job->pause_count <= 0) {
        fprintf(stderr, "diskstack: job '%s' resumed more than paused\n", job->id);
        abort();
    }
    job->pause_count--;
    pthread_mutex_unlock(&job->lock);
    job_kick(job, false);
}

/* ------------------------------------------------------------ coroutine */

/* Main loop (bottom half): the coroutine parked; show it if it still is. */
static void job_parked_bh(void *opaque)
{
    Job *job = opaque;
    bool parked;

    global_lock_assert_held();
    pthread_mutex_lock(&job->lock);
    parked = job->wait == JOB_WAIT_PARK;
    pthread_mutex_unlock(&job->lock);
    if (parked && job->status == JOB_STATUS_RUNNING) {
        job_state_transition(job, JOB_STATUS_PAUSED);
    } else if (parked && job->status == JOB_STATUS_READY) {
        job_state_transition(job, JOB_STATUS_STANDBY);
    }
}

bool coroutine_fn job_pause_point(Job *job)
{
    bool park;

    pthread_mutex_lock(&job->lock);
    park = job->pause_count > 0 && !job->cancelled;
    pthread_mutex_unlock(&job->lock);
    if (!park) {
        return job_cancel_requested(job);
    }
    if (job->driver->pause) {
        job->driver->pause(job);
    }
    pthread_mutex_lock(&job->lock);
    park = job->pause_count > 0 && !job->cancelled;
    if (park) {
        job->wait = JOB_WAIT_PARK;
        job->kicked = false;            /* the resume is the wake-up */
    }
    pthread_mutex_unlock(&job->lock);
    if (park) {
        loop_schedule(loop_main(), job_parked_bh, job);
        co_yield();                         /* job_kick() wakes us */
    }
    if (job->driver->resume) {
        job->driver->resume(job);
    }
    return job_cancel_requested(job);
}

/* The job's loop (timer): the sleep is over unless a kick ended it. */
static void job_sleep_timer_cb(void *opaque)
{
    Job *job = opaque;
    bool wake;

    pthread_mutex_lock(&job->lock);
    wake = job->wait == JOB_WAIT_SLEEP;
    if (wake) {
        job->wait = JOB_WAIT_NONE;
    }
    pthread_mutex_unlock(&job->lock);
    if (wake) {
        co_wake(job->co);
    }
}

bool coroutine_fn job_sleep_ns(Job *job, int64_t ns)
{
    bool sleep;

    pthread_mutex_lock(&job->lock);
    sleep = !job->pause_count && !job->cancelled && !job->kicked;
    job->kicked = false;
    if (sleep) {
        job->wait = JOB_WAIT_SLEEP;
    }
    pthread_mutex_unlock(&job->lock);
    if (sleep) {
        loop_timer_arm(&job->sleep_timer, clock_ns() + MAX(ns, (int64_t)0));
        co_yield();                     /* the timer or job_kick() wakes us */
        loop_timer_cancel(&job->sleep_timer);
    }
    return job_pause_point(job);
}

/* Main loop (bottom half): running -> ready. */
static void job_ready_bh(void *opaque)
{
    Job *job = opaque;

    global_lock_assert_held();
    if (job->status == JOB_STATUS_RUNNING) {
        job_state_transition(job, JOB_STATUS_READY);
        job_event_progress(job, "BLOCK_JOB_READY", false);
    }
}

void coroutine_fn job_transition_to_ready(Job *job)
{
    loop_schedule(loop_main(), job_ready_bh, job);
}

void job_progress_update(Job *job, uint64_t done)
{
    atomic_fetch_add(&job->progress_current, done);
}

void job_progress_set_remaining(Job *job, uint64_t remaining)
{
    atomic_store(&job->progress_total, atomic_load(&job->progress_current) + remaining);
}

void job_progress_increase_remaining(Job *job, uint64_t delta)
{
    atomic_fetch_add(&job->progress_total, delta);
}

int64_t job_ratelimit_delay_ns(Job *job, uint64_t bytes)
{
    int64_t ns;

    pthread_mutex_lock(&job->lock);
    ns = ratelimit_delay_ns(&job->limit, clock_ns(), bytes);
    pthread_mutex_unlock(&job->lock);
    return ns;
}

/* ------------------------------------------------------------ start, end */

/* The job's coroutine: a first pause point (a job paused before it
 * started parks there), run, then the exit on the main loop. */
static void coroutine_fn job_co_entry(void *opaque)
{
    Job *job = opaque;
    Error *err = NULL;
    int ret;

    job_pause_point(job);
    ret = job->driver->run(job, &err);
    if (ret >= 0) {
        error_free(err);
        err = NULL;
        ret = 0;
    } else if (!err) {
        error_setg(&err, "%s", strerror(-ret));
    }
    job->run_ret = ret;
    job->run_err = err;
    pthread_mutex_lock(&job->lock);
    job->wait = JOB_WAIT_DONE;
    pthread_mutex_unlock(&job->lock);
    loop_schedule(loop_main(), job_exit_bh, job);
}

void job_start_bh(void *opaque)
{
    Job *job = opaque;

    loop_timer_init(&job->sleep_timer, loop_current(), job_sleep_timer_cb, job);
    job->co = co_create(job_co_entry, job);
    co_enter(job->co);
}
