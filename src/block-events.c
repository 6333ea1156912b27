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

/* Main loop (bottom half). */
static void deliver_event(void *opaque)
{
    PostedEvent *ev = opaque;

    global_lock_assert_held();
    if (event_sink) {
        event_sink(ev->name, ev->data);      /* steals data */
    } else {
        json_decref(ev->data);
    }
    free(ev->name);
    free(ev);
}

void block_event_post(const char *name, json_t *data)
{
    PostedEvent *ev = malloc(sizeof(*ev));

    if (!ev || !(ev->name = strdup(name))) {
        free(ev);
        json_decref(data);
        return;
    }
    ev->data = data ? data : json_object();
    loop_schedule(loop_main(), deliver_event, ev);
}
