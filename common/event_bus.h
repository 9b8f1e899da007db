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

/* Each producer's own stream: only that service writes it, and its events
 * are its record (its state is their fold). */
#define EVENT_STREAM_ORDER        "ORDER_EVENTS"        /* events.order.> */
#define EVENT_STREAM_INVENTORY    "INVENTORY_EVENTS"    /* events.inventory.> */
#define EVENT_STREAM_PAYMENT      "PAYMENT_EVENTS"      /* events.payment.> */
#define EVENT_STREAM_NOTIFICATION "NOTIFICATION_EVENTS" /* events.notification.> */

/* The stream of the service that produces events of type t; NULL for a bad
 * type. */
const char *event_stream_of(event_type t);

/* The stream whose subjects hold subject ("events.payment.refunded.ord-1"
 * is PAYMENT_EVENTS's); NULL when none does. */
const char *event_stream_of_subject(const char *subject);

/* One event of an order, read back (event_read_order): decoded, with the
 * stream it came from and its sequence there. */
typedef ch_status (*event_each_fn)(const choreo_events_v1_Envelope *e, const char *stream, uint64_t seq,
                                   void *ctx);

/* Reads every event of one order (events.<aggregate>.*.<order_id>) from every
 * producer's stream and hands them to fn in the order they happened (their
 * occurred_at, then stream and sequence), at most max (0: 256) of them: the
 * first max. Events that do not decode, and events of a SKU or customer
 * whose key happens to equal order_id, are left out. fn returning non-OK
 * stops the walk with that status. CH_NOT_FOUND when there is none. Any
 * thread; blocks (one replay per stream). */
ch_status event_read_order(bus *b, const char *order_id, size_t max, event_each_fn fn, void *ctx);

/* Ensures every producer's stream (file storage) with the given replicas (0:
 * 1) and max age in ms (0: forever), and the DEADLETTER stream. Idempotent;
 * call at start-up. CH_FAILED_PRECONDITION (and an error line that says
 * what to do) when the store holds the streams of an earlier choreo. */
ch_status event_bus_ensure_streams(bus *b, int replicas, int64_t max_age_ms);

/* An outgoing event ready for the bus: its bytes, subject, message id and
 * headers (m points into the struct; keep it on a thread stack: ~16 KB). */
typedef struct event_out {
    uint8_t data[EVENT_MAX_BYTES];
    char subject[EVENT_SUBJECT_MAX];
    char msg_id[EVENT_MSG_ID_MAX];
    bus_out_msg m;
} event_out;

/* Encodes e into o with its subject, deterministic message id and headers.
 * CH_INVALID_ARGUMENT (with a log line naming why) for an envelope that does
 * not encode. Any thread. */
ch_status event_prepare(event_out *o, const choreo_events_v1_Envelope *e);

/* The one log line per event published: st CH_OK with outcome ("sent",
 * "stored", "duplicate") and seq (may be NULL), or the failure. */
void event_log_published(const choreo_events_v1_Envelope *e, ch_status st, const char *seq,
                         const char *outcome);

/* Encodes e (rejecting invalid envelopes with CH_INVALID_ARGUMENT and a log
 * line), publishes it with its deterministic message id and headers, and
 * waits up to timeout_ms for the PubAck (ack may be NULL; ack->duplicate is
 * true when JetStream already had it, which callers treat as success). Errors
 * as bus_publish. Logs one info line per event published. Any thread. */
ch_status event_publish(bus *b, const choreo_events_v1_Envelope *e, int timeout_ms, bus_pub_ack *ack);

/* Like event_publish through bus_publish_async (confirm with
 * bus_publish_async_wait). Same thread rules as bus_publish_async. */
ch_status event_publish_async(bus *b, const choreo_events_v1_Envelope *e);

#endif
