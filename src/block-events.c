/*
 * block-events.c — posting events from I/O code to the main loop (see
 * block-events.h).  Each post is one bottom half on the main loop: events
 * are rare (errors), so there is no queue to manage.
 */
#include <stdlib.h>
#include <string.h>

#include "block-events.h"
#include "loop/loop.h"

typedef struct PostedEvent {
    char *name;
    json_t *data;
} PostedEvent;

/* Written and read on the main loop only. */
static BlockEventSink *event_sink;

void block_event_set_sink(BlockEventSink *sink)
{
    GS_CODE();
    event_sink = sink;
}

/* GS: hands the event to the sink (which steals data). */
static void emit_now(const char *name, json_t *data) GS
{
    if (event_sink) {
        event_sink(name, data);
    } else {
        json_decref(data);
    }
}

/* Main loop (bottom half). */
static void deliver_event(void *opaque)
{
    PostedEvent *ev = opaque;

    global_lock_assert_held();
    emit_now(ev->name, ev->data);
    free(ev->name);
    free(ev);
}

void block_event_post(const char *name, json_t *data)
{
    PostedEvent *ev;

    data = data ? data : json_object();
    if (in_main_thread() && global_lock_held()) {
        /* GS code (a job's state change, a command): deliver now, so the
         * event reaches the clients before the reply of the command that
         * caused it, as QEMU's do. */
        global_lock_assert_held();
        emit_now(name, data);
        return;
    }
    ev = malloc(sizeof(*ev));
    if (!ev || !(ev->name = strdup(name))) {
        free(ev);
        json_decref(data);
        return;
    }
    ev->data = data;
    loop_schedule(loop_main(), deliver_event, ev);
}
