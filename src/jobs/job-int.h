/*
 * job-int.h — what job.c (GS side) and job-co.c (coroutine side) share.
 * Not for job types: they use job.h.
 */
#ifndef DISKSTACK_JOBS_JOB_INT_H
#define DISKSTACK_JOBS_JOB_INT_H

#include "jobs/job.h"

/* GS: status change (must be in QEMU's transition table, else abort),
 * with its JOB_STATUS_CHANGE event. */
void job_state_transition(Job *job, JobStatus s1) GS;
/* GS: BLOCK_JOB_READY / _COMPLETED / _CANCELLED with the progress fields
 * (and the job's error, with_error and failed). */
void job_event_progress(Job *job, const char *name, bool with_error) GS;
/* GS: wakes the coroutine if it is parked and may go on, or (wake_sleeper)
 * if it sleeps; a kick for a sleep that has not begun yet is kept for it,
 * so that none is lost between a job's check and its sleep. */
void job_kick(Job *job, bool wake_sleeper) GS;

/* The job's loop (bottom half, scheduled by job_start()): creates the
 * coroutine there and enters it. */
void job_start_bh(void *opaque);
/* Main loop (bottom half, scheduled by the coroutine when run returned):
 * finalization, in a coroutine of its own. */
void job_exit_bh(void *opaque);

#endif
