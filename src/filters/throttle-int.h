/*
 * throttle-int.h — the member API between throttle.c (the filter driver)
 * and throttle-group.c (the groups).  Not for other users.
 *
 * A member is one throttle node's place in its group.  Its requests go
 * through throttle_member_co_intercept(), which returns when the group's
 * buckets allow the request and it is the member's turn; the caller then
 * sends it below and calls throttle_member_sent_done() once it completed.
 *
 * Threads: intercept and sent_done are I/O (any thread, in a coroutine);
 * join/leave/hold/release are GS.  Everything a member shares with its
 * group is guarded by the group's mutex.
 */
#ifndef DISKSTACK_FILTERS_THROTTLE_INT_H
#define DISKSTACK_FILTERS_THROTTLE_INT_H

#include "filters/throttle.h"

typedef struct ThrottleWaiter ThrottleWaiter;

/* Reads and writes are queued and timed separately (as QEMU). */
enum { THROTTLE_DIR_READ, THROTTLE_DIR_WRITE, THROTTLE_DIRS };

struct ThrottleMember {
    ThrottleGroup *tg;                       /* set by join, GS */
    /* The fields below are guarded by the group's mutex. */
    ThrottleWaiter *head[THROTTLE_DIRS], *tail[THROTTLE_DIRS];
    int queued[THROTTLE_DIRS];
    int held;                                /* barrier sections (quiesce) */
    ThrottleMember *next;                    /* in the group's member list */
    /* Requests granted and not yet completed below (atomic). */
    _Atomic int in_flight_below;
    /* Called (any thread, group lock not held) when in_flight_below drops
     * to zero: quiesce.c's waiter re-checks its condition. */
    void (*on_idle_below)(void);
};

/* GS: m joins the group named id; refuses an unknown group with QEMU's
 * message. */
int throttle_member_join(ThrottleMember *m, const char *id, Error **errp) GS;
/* GS: m leaves its group; its queues must be empty (the node is drained). */
void throttle_member_leave(ThrottleMember *m) GS;

/* I/O: waits until the request may go (buckets and round-robin turn), and
 * counts it in m->in_flight_below before returning. */
void coroutine_fn throttle_member_co_intercept(ThrottleMember *m, bool is_write,
                                               uint64_t bytes);
/* I/O or GS: a request intercept() let through has completed below. */
void throttle_member_sent_done(ThrottleMember *m);

/* GS: a quiesced section below the member's node begins / ends.  While held
 * (the sections nest), nothing of m's queues is dispatched and its new
 * requests queue; at the end dispatch resumes at the group's rate. */
void throttle_member_hold(ThrottleMember *m) GS;
void throttle_member_release(ThrottleMember *m) GS;

/* Thread-safe: requests of m queued now (both directions), for tests and
 * for refusing to drop a queue. */
int throttle_member_queued(ThrottleMember *m);

/* throttle.c, thread-safe: requests queued in throttle node bs now. */
int throttle_node_queued(BlockNode *bs);

#endif
