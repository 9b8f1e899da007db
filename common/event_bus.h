/* event_bus.h: publishing domain events, the codec and the bus together.
 *
 * An outgoing event is encoded (event_codec.h), sent to its subject
 * events.<aggregate>.<event>.<order_id> with the headers Nats-Msg-Id (the
 * deterministic "<order_id>:<type>"), Choreo-Event-Type and traceparent (when
 * set), and acknowledged by JetStream before the call returns.
 *
 * Ownership: nothing is kept; the caller owns the envelope and the bus.
 * Threads: any thread (the bus is thread-safe for synchronous publishing). */
#ifndef CHOREO_EVENT_BUS_H
#define CHOREO_EVENT_BUS_H

#include "bus.h"
#include "event_codec.h"

#define EVENT_HDR_TYPE        "Choreo-Event-Type"
#define EVENT_HDR_TRACEPARENT "traceparent"

/* The stream that holds every domain event ("events.>"). */
#define EVENT_STREAM "EVENTS"

/* Ensures the EVENTS stream on "events.>" (file storage) with the given
 * replicas (0: 1) and max age in ms (0: forever), and the DEADLETTER stream.
 * Idempotent; call at start-up. */
ch_status event_bus_ensure_streams(bus *b, int replicas, int64_t max_age_ms);

/* Encodes e (rejecting invalid envelopes with CH_INVALID_ARGUMENT and a log
 * line), publishes it with its deterministic message id and headers, and
 * waits up to timeout_ms for the PubAck (ack may be NULL; ack->duplicate is
 * true when JetStream already had it, which callers treat as success). Errors
 * as bus_publish. Logs one info line per event published. Any thread. */
ch_status event_publish(bus *b, const choreo_events_v1_Envelope *e, int timeout_ms, bus_pub_ack *ack);

/* From a worker handler: publishes e with bus_publish_deferred, so the
 * incoming message m is acked only once e (and the rest of its batch's
 * publishes) is stored. Logs one line per event published. */
ch_status event_publish_deferred(const bus_in_msg *m, const choreo_events_v1_Envelope *e);

/* Like event_publish, without waiting: fn(arg) runs with the outcome once
 * JetStream answers, or with CH_TIMEOUT after the bus's publish timeout
 * (bus_publish_cb). CH_OK means fn will run. Logs one line per event
 * published. Any thread. */
ch_status event_publish_cb(bus *b, const choreo_events_v1_Envelope *e, bus_pub_fn fn, void *arg);

/* Like event_publish through bus_publish_async (confirm with
 * bus_publish_async_wait). Same thread rules as bus_publish_async. */
ch_status event_publish_async(bus *b, const choreo_events_v1_Envelope *e);

#endif
