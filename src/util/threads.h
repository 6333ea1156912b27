/*
 * threads.h — the global lock and thread identity.
 *
 * The global lock is a role held by the main thread while it runs GS code
 * (see annotations.h).  IOThreads never take it.  It is a real mutex so the
 * run-time check can tell "held by me" apart from "held by someone".
 */
#ifndef DISKSTACK_THREADS_H
#define DISKSTACK_THREADS_H

#include "annotations.h"

/* Marks the calling thread as the main thread (once, at start-up). */
void threads_init_main(void);
void global_lock_acquire(void) ACQUIRE(global_lock);
void global_lock_release(void) RELEASE(global_lock);

#endif
