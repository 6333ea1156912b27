/*
 * block-events.h — events raised by I/O code for the control socket.
 *
 * A driver or an export running on an IOThread notices something the
 * clients must hear about (BLOCK_IMAGE_CORRUPTED, BLOCK_IO_ERROR) but may not
 * call the QMP server, which is GS.  It posts the event here; the event is
 * delivered on the main loop, in posting order per thread, to the sink the
 * QMP server registered (qmp_emit_event).  Without a sink (unit tests, a
 * mount without --qmp) events are dropped.
 */
#ifndef DISKSTACK_BLOCK_EVENTS_H
#define DISKSTACK_BLOCK_EVENTS_H

#include <jansson.h>
#include "annotations.h"

typedef void BlockEventSink(const char *name, json_t *data);

/* I/O or GS, any thread.  Steals data (a fresh object nobody else holds;
 * NULL means an empty object).  Never blocks.  From GS code the event is
 * delivered before the call returns (so before the reply of the command
 * that caused it); from any other thread, on the main loop soon. */
void block_event_post(const char *name, json_t *data);

/* GS.  Where events go from now on (NULL: dropped).  Events already posted
 * are delivered to the sink current when they reach the main loop. */
void block_event_set_sink(BlockEventSink *sink) GS;

#endif
