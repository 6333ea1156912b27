/*
 * throttle-group.c — named throttle groups and their members' queues.
 *
 * A group is one ThrottleState (the buckets, throttle-bucket.c) shared by
 * its members, the throttle nodes that name it.  Members may be served by
 * any IOThreads, and one member's requests may come from several at once,
 * so everything is guarded by the group's mutex, held only for short
 * non-blocking sections (never across a yield).
 *
 * A request that cannot go at once waits in its member's queue for its
 * direction.  Who goes next is decided by schedule_next(), always under the
 * lock: starting after the member served last (the direction's token), it
 * takes the first member that has queued requests and is not held by a
 * quiesced section, and asks the buckets about that member's oldest
 * request.  If it may go, it is granted (charged to the buckets, counted as
 * sent below, woken) and the turn moves on; otherwise that request becomes
 * the direction's timer owner.  So members with queued requests take turns
 * one request at a time: a member with a light load waits for at most one
 * request of each other member, never for a heavy member's whole queue.
 *
 * Timers without busy waiting: at most one timer per group direction is
 * armed (QEMU's any_timer_armed), by the owner itself, on its own loop —
 * the coroutine's home loop, where loop timers must be armed and cancelled.
 * The owner sleeps on its CoEvent until the timer fires, then runs
 * schedule_next() again.  Anybody who must re-time the queue from another
 * thread (live limits, a section's end, a member held) revokes the owner
 * and wakes it with co_event_set(), which is thread-safe; the owner cancels
 * its timer on its own thread when it wakes.  A request that arrives while
 * its member has nothing queued, no timer is armed for the direction and
 * the buckets allow it goes without queueing at all.
 *
 * Invariant (under the lock, after every change): either no unheld member
 * has a queued request in a direction, or that direction has a timer
 * owner, or a schedule_next() is about to run.  This is why every change —
 * a request queued, a timer expired, limits changed, a member released —
 * ends with schedule_next().
 *
 * Lifetime: groups are created and deleted by GS code; a group with
 * members cannot be deleted, and a member leaves only when its node is
 * drained, so waiters never outlive their group.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "loop/loop.h"
#include "filters/throttle-int.h"

/* A request waiting in its member's queue; lives on the request's stack. */
struct ThrottleWaiter {
    ThrottleMember *m;
    int dir;
    uint64_t bytes;
    bool granted;                 /* may go: charged and counted */
    int64_t deadline;             /* when owner: the timer's deadline */
    CoEvent ev;                   /* set under the group lock or by its timer */
    ThrottleWaiter *next;
};

struct ThrottleGroup {
    char *id;
    pthread_mutex_t lock;
    ThrottleState ts;                         /* guarded by lock */
    ThrottleMember *members;                  /* guarded by lock */
    int nmembers;                             /* guarded by lock */
    ThrottleMember *token[THROTTLE_DIRS];     /* served last, guarded by lock */
    ThrottleWaiter *owner[THROTTLE_DIRS];     /* armed a timer, guarded by lock */
    ThrottleGroup *next;                      /* GS: all groups */
};

static ThrottleGroup *groups;                 /* GS */

/* ------------------------------------------------------------ scheduling */

/* Both, lock held: the member after m in the circular list. */
static ThrottleMember *member_after(ThrottleGroup *tg, ThrottleMember *m)
{
    return m && m->next ? m->next : tg->members;
}

/* Both, lock held: the first unheld member with a queued request in dir,
 * starting after the one served last. */
static ThrottleMember *next_member(ThrottleGroup *tg, int dir)
{
    ThrottleMember *start = member_after(tg, tg->token[dir]);
    ThrottleMember *m = start;

    if (!m) {
        return NULL;
    }
    do {
        if (m->head[dir] && m->held == 0) {
            return m;
        }
        m = member_after(tg, m);
    } while (m != start);
    return NULL;
}

/* Both, lock held: w goes now. */
static void grant(ThrottleGroup *tg, ThrottleWaiter *w)
{
    ThrottleMember *m = w->m;

    m->head[w->dir] = w->next;
    if (!m->head[w->dir]) {
        m->tail[w->dir] = NULL;
    }
    m->queued[w->dir]--;
    throttle_account(&tg->ts, w->dir == THROTTLE_DIR_WRITE, w->bytes);
    atomic_fetch_add(&m->in_flight_below, 1);
    tg->token[w->dir] = m;
    w->granted = true;
    co_event_set(&w->ev);
}

/* Both, lock held: wakes the timer owner of dir (if any) so that it gives up
 * its timer; the caller then runs schedule_next(). */
static void revoke_owner(ThrottleGroup *tg, int dir)
{
    ThrottleWaiter *w = tg->owner[dir];

    if (w) {
        tg->owner[dir] = NULL;
        w->deadline = 0;
        co_event_set(&w->ev);
    }
}

/* Both, lock held: grants every request the buckets allow, in round-robin
 * order, and makes the next one the timer owner.  Any thread. */
static void schedule_next(ThrottleGroup *tg, int dir)
{
    if (tg->owner[dir]) {
        return;                   /* its timer will call us */
    }
    for (;;) {
        ThrottleMember *m = next_member(tg, dir);
        if (!m) {
            return;
        }
        ThrottleWaiter *w = m->head[dir];
        int64_t now = clock_ns();
        int64_t wait = throttle_wait_ns(&tg->ts, dir == THROTTLE_DIR_WRITE,
                                        w->bytes, now);
        if (wait > 0) {
            w->deadline = now + wait;
            tg->owner[dir] = w;
            co_event_set(&w->ev);     /* it arms the timer on its loop */
            return;
        }
        grant(tg, w);
    }
}

/* Both, lock held: w joins the tail of its member's queue. */
static void enqueue(ThrottleWaiter *w)
{
    ThrottleMember *m = w->m;

    if (m->tail[w->dir]) {
        m->tail[w->dir]->next = w;
    } else {
        m->head[w->dir] = w;
    }
    m->tail[w->dir] = w;
    m->queued[w->dir]++;
}

/* Both, lock held: may a request go without queueing? */
static bool may_go_now(ThrottleGroup *tg, ThrottleMember *m, int dir,
                       uint64_t bytes)
{
    return m->held == 0 && !m->head[dir] && !tg->owner[dir] &&
           throttle_wait_ns(&tg->ts, dir == THROTTLE_DIR_WRITE, bytes,
                            clock_ns()) == 0;
}

/* Timer callback, on the owner's loop: wakes the owner. */
static void owner_timer_cb(void *opaque)
{
    ThrottleWaiter *w = opaque;
    co_event_set(&w->ev);
}

/* I/O, lock held on entry and on return: one wait of w.  As the timer
 * owner it sleeps until its deadline (or until revoked) and then lets
 * schedule_next() decide; otherwise until somebody wakes it. */
static void coroutine_fn wait_once(ThrottleGroup *tg, ThrottleWaiter *w)
{
    bool owner = tg->owner[w->dir] == w;
    int64_t deadline = w->deadline;
    LoopTimer timer;

    /* Every set happens under the lock or from our own timer, so resetting
     * here loses nothing: the state was checked under the same lock. */
    co_event_reset(&w->ev);
    pthread_mutex_unlock(&tg->lock);
    if (owner) {
        loop_timer_init(&timer, loop_current(), owner_timer_cb, w);
        loop_timer_arm(&timer, deadline);
    }
    co_event_wait(&w->ev);
    if (owner) {
        loop_timer_cancel(&timer);
    }
    pthread_mutex_lock(&tg->lock);
    if (tg->owner[w->dir] == w && clock_ns() >= w->deadline) {
        tg->owner[w->dir] = NULL;
        schedule_next(tg, w->dir);
    }
}

void coroutine_fn throttle_member_co_intercept(ThrottleMember *m, bool is_write,
                                               uint64_t bytes)
{
    ThrottleGroup *tg = m->tg;
    int dir = is_write ? THROTTLE_DIR_WRITE : THROTTLE_DIR_READ;
    ThrottleWaiter w = { .m = m, .dir = dir, .bytes = bytes };

    pthread_mutex_lock(&tg->lock);
    if (may_go_now(tg, m, dir, bytes)) {
        throttle_account(&tg->ts, is_write, bytes);
        atomic_fetch_add(&m->in_flight_below, 1);
        tg->token[dir] = m;
        pthread_mutex_unlock(&tg->lock);
        return;
    }
    co_event_init(&w.ev);
    enqueue(&w);
    schedule_next(tg, dir);
    while (!w.granted) {
        wait_once(tg, &w);
    }
    pthread_mutex_unlock(&tg->lock);
}

void throttle_member_sent_done(ThrottleMember *m)
{
    if (atomic_fetch_sub(&m->in_flight_below, 1) == 1 && m->on_idle_below) {
        m->on_idle_below();
    }
}

int throttle_member_queued(ThrottleMember *m)
{
    ThrottleGroup *tg = m->tg;
    int n;

    pthread_mutex_lock(&tg->lock);
    n = m->queued[THROTTLE_DIR_READ] + m->queued[THROTTLE_DIR_WRITE];
    pthread_mutex_unlock(&tg->lock);
    return n;
}

/* ------------------------------------------------------------ quiesce (GS) */

void throttle_member_hold(ThrottleMember *m)
{
    GS_CODE();
    ThrottleGroup *tg = m->tg;

    pthread_mutex_lock(&tg->lock);
    if (m->held++ == 0) {
        /* An owner of this member would grant its own request when its
         * timer fires: hand the timer to another member. */
        for (int dir = 0; dir < THROTTLE_DIRS; dir++) {
            if (tg->owner[dir] && tg->owner[dir]->m == m) {
                revoke_owner(tg, dir);
                schedule_next(tg, dir);
            }
        }
    }
    pthread_mutex_unlock(&tg->lock);
}

void throttle_member_release(ThrottleMember *m)
{
    GS_CODE();
    ThrottleGroup *tg = m->tg;

    pthread_mutex_lock(&tg->lock);
    if (m->held <= 0) {
        abort();
    }
    if (--m->held == 0) {
        for (int dir = 0; dir < THROTTLE_DIRS; dir++) {
            schedule_next(tg, dir);
        }
    }
    pthread_mutex_unlock(&tg->lock);
}

/* ------------------------------------------------------------ membership */

int throttle_member_join(ThrottleMember *m, const char *id, Error **errp)
{
    GS_CODE();
    ThrottleGroup *tg = throttle_group_find(id);

    if (!tg) {
        error_setg(errp, "Throttle group '%s' does not exist", id);
        return -EINVAL;
    }
    memset(m, 0, sizeof(*m));
    m->tg = tg;
    pthread_mutex_lock(&tg->lock);
    m->next = tg->members;
    tg->members = m;
    tg->nmembers++;
    pthread_mutex_unlock(&tg->lock);
    return 0;
}

void throttle_member_leave(ThrottleMember *m)
{
    GS_CODE();
    ThrottleGroup *tg = m->tg;

    if (!tg) {
        return;
    }
    pthread_mutex_lock(&tg->lock);
    if (m->head[THROTTLE_DIR_READ] || m->head[THROTTLE_DIR_WRITE]) {
        abort();                  /* a drained node has no queue */
    }
    for (ThrottleMember **p = &tg->members; *p; p = &(*p)->next) {
        if (*p == m) {
            *p = m->next;
            break;
        }
    }
    tg->nmembers--;
    for (int dir = 0; dir < THROTTLE_DIRS; dir++) {
        if (tg->token[dir] == m) {
            tg->token[dir] = NULL;
        }
    }
    pthread_mutex_unlock(&tg->lock);
    m->tg = NULL;
}

/* ------------------------------------------------------------ groups (GS) */

ThrottleGroup *throttle_group_find(const char *id)
{
    GS_CODE();
    for (ThrottleGroup *tg = groups; tg; tg = tg->next) {
        if (!strcmp(tg->id, id)) {
            return tg;
        }
    }
    return NULL;
}

ThrottleGroup *throttle_group_next(ThrottleGroup *prev)
{
    GS_CODE();
    return prev ? prev->next : groups;
}

const char *throttle_group_id(const ThrottleGroup *tg)
{
    return tg->id;
}

int throttle_group_create(const char *id, json_t *limits, Error **errp)
{
    GS_CODE();
    ThrottleConfig cfg;
    ThrottleGroup *tg;

    if (throttle_group_find(id)) {
        error_setg(errp, "Duplicate ID '%s' for object", id);
        return -EEXIST;
    }
    if (throttle_config_parse(limits, NULL, &cfg, errp) < 0) {
        return -EINVAL;
    }
    tg = calloc(1, sizeof(*tg));
    tg->id = strdup(id);
    pthread_mutex_init(&tg->lock, NULL);
    throttle_state_init(&tg->ts, &cfg, clock_ns());
    tg->next = groups;
    groups = tg;
    return 0;
}

int throttle_group_delete(const char *id, Error **errp)
{
    GS_CODE();
    ThrottleGroup *tg = throttle_group_find(id);

    if (!tg) {
        error_setg(errp, "object '%s' not found", id);
        return -ENOENT;
    }
    /* nmembers changes only in GS code: no lock needed to read it here. */
    if (tg->nmembers > 0) {
        error_setg(errp, "object '%s' is in use, can not be deleted", id);
        return -EBUSY;
    }
    for (ThrottleGroup **p = &groups; *p; p = &(*p)->next) {
        if (*p == tg) {
            *p = tg->next;
            break;
        }
    }
    pthread_mutex_destroy(&tg->lock);
    free(tg->id);
    free(tg);
    return 0;
}

int throttle_group_set_limits(ThrottleGroup *tg, json_t *limits, Error **errp)
{
    GS_CODE();
    ThrottleConfig cur, cfg;

    pthread_mutex_lock(&tg->lock);
    cur = tg->ts.cfg;
    pthread_mutex_unlock(&tg->lock);
    /* Only GS code changes cfg, so cur cannot go stale before we apply. */
    if (throttle_config_parse(limits, &cur, &cfg, errp) < 0) {
        return -EINVAL;
    }
    pthread_mutex_lock(&tg->lock);
    throttle_state_set_config(&tg->ts, &cfg, clock_ns());
    /* Re-time the queues now: a timer armed for the old limits may be far
     * too late (or too early) for the new ones. */
    for (int dir = 0; dir < THROTTLE_DIRS; dir++) {
        revoke_owner(tg, dir);
        schedule_next(tg, dir);
    }
    pthread_mutex_unlock(&tg->lock);
    return 0;
}

json_t *throttle_group_get_limits(ThrottleGroup *tg)
{
    GS_CODE();
    ThrottleConfig cfg;

    pthread_mutex_lock(&tg->lock);
    cfg = tg->ts.cfg;
    pthread_mutex_unlock(&tg->lock);
    return throttle_config_to_json(&cfg);
}
