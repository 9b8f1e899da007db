/* event_codec.h: the domain event envelope on the wire (nanopb).
 *
 * Every saga event is a choreo_events_v1_Envelope (proto/choreo/events/v1/)
 * encoded with nanopb; all its strings and arrays are fixed-size members, so
 * an envelope is one flat struct (about 9 KB with 100 items: keep it off small
 * stacks in hot loops or reuse one). This module names the event types, builds
 * subjects and deterministic message ids, and encodes/decodes with every
 * check a reader needs (size, schema version, type/payload match, UTF-8, ids).
 *
 * Ownership: the caller owns every buffer and envelope; nothing is allocated.
 * Threads: every function is reentrant. */
#ifndef CHOREO_EVENT_CODEC_H
#define CHOREO_EVENT_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "choreo/events/v1/envelope.pb.h"
#include "status.h"

#define EVENT_SCHEMA_VERSION 1
#define EVENT_MAX_BYTES      16384
#define EVENT_SUBJECT_MAX    128 /* enough for any subject event_subject builds */
#define EVENT_MSG_ID_MAX     160 /* enough for any message id of an event */
#define EVENT_ID_LEN         32  /* hex digits of an event_id */
#define EVENT_ORDER_ID_MAX   40  /* bytes of an order id (order_id[41]) */
#define EVENT_KEY_MAX        64  /* bytes of a subject's key: an order id, a SKU or a customer */

typedef enum event_type {
    EVENT_ORDER_CREATED = 0,        /* "order.created" */
    EVENT_INVENTORY_RESERVED,       /* "inventory.reserved" */
    EVENT_INVENTORY_FAILED,         /* "inventory.failed" */
    EVENT_PAYMENT_PROCESSED,        /* "payment.processed" */
    EVENT_PAYMENT_FAILED,           /* "payment.failed" */
    EVENT_INVENTORY_RELEASED,       /* "inventory.released" */
    EVENT_ORDER_CONFIRMED,          /* "order.confirmed" */
    EVENT_ORDER_CANCEL_REQUESTED,   /* "order.cancel_requested" */
    EVENT_PAYMENT_REFUNDED,         /* "payment.refunded" */
    EVENT_ORDER_CANCELLED,          /* "order.cancelled" */
    EVENT_NOTIFICATION_SENT,        /* "notification.sent" */
    EVENT_INVENTORY_COMMITTED,      /* "inventory.committed" */
    EVENT_INVENTORY_STOCK_SET,      /* "inventory.stock_set": keyed by SKU */
    EVENT_INVENTORY_STOCK_ADJUSTED, /* "inventory.stock_adjusted": keyed by SKU */
    EVENT_PAYMENT_CREDITED,         /* "payment.credited": keyed by customer */
    EVENT_TYPE_COUNT
} event_type;

/* "order.created" etc.; "?" for an out-of-range value. Never NULL. */
const char *event_type_name(event_type t);

/* Parses a type name; CH_INVALID_ARGUMENT (and *out unchanged) if unknown. */
ch_status event_type_parse(const char *name, event_type *out);

/* The Envelope oneof tag of t's payload (choreo_events_v1_Envelope_*_tag), or
 * 0 for an out-of-range value. */
pb_size_t event_type_payload_tag(event_type t);

/* The event type whose payload has this tag; CH_INVALID_ARGUMENT if none. */
ch_status event_type_from_payload_tag(pb_size_t tag, event_type *out);

/* True for the types that concern an order (the envelope's order_id is
 * their key); false for those keyed by a SKU or a customer named in their
 * payload (inventory.stock_set, inventory.stock_adjusted, payment.credited),
 * whose order_id is empty. */
bool event_type_has_order(event_type t);

/* The key of an event's subject: its order id, or the SKU or customer its
 * payload names (see event_type_has_order). "" when unknown. */
const char *event_key(const choreo_events_v1_Envelope *e);

/* Writes "events.<aggregate>.<event>.<key>" (e.g.
 * "events.order.cancel_requested.ord-1", "events.inventory.stock_set.apple")
 * into buf. key NULL writes the type-wide wildcard "events.order.created.*".
 * CH_RESOURCE_EXHAUSTED if cap is too small, CH_INVALID_ARGUMENT for a bad
 * type or a key that is not a valid token. */
ch_status event_subject(char *buf, size_t cap, event_type t, const char *key);

/* Writes the deterministic Nats-Msg-Id "<order_id>:<type>" into buf, so a
 * re-run handler's publish is dropped by JetStream as a duplicate. Same errors
 * as event_subject. */
ch_status event_msg_id(char *buf, size_t cap, event_type t, const char *order_id);

/* Zeroes *e and fills type, a fresh random event_id (32 lowercase hex),
 * occurred_at (now, ns), schema_version, which_payload, and copies order_id,
 * causation_id, producer and traceparent (each may be NULL; too long is cut
 * to the field size, which encode/decode then check). The payload itself is
 * left zeroed for the caller to fill. CH_INVALID_ARGUMENT for a bad type. */
ch_status event_init(choreo_events_v1_Envelope *e, event_type t, const char *order_id,
                     const char *causation_id, const char *producer, const char *traceparent);

/* Fills e as an event of type t caused by `cause`: same order id and
 * traceparent, causation id = cause's event id, producer = producer (all as
 * event_init). The payload is left zeroed for the caller. */
ch_status event_init_caused(choreo_events_v1_Envelope *e, event_type t,
                            const choreo_events_v1_Envelope *cause, const char *producer);

/* Writes the 32-hex trace id inside a W3C traceparent
 * ("00-<trace id>-<span id>-<flags>") into out; "" when absent or malformed. */
void event_trace_id(const char *traceparent, char out[33]);

/* Encodes e into buf[0..cap), *len gets the size. Checks first what decode
 * checks (type known and matching the payload, schema version set, ids
 * present and valid, strings UTF-8, items_count within bounds); on failure
 * returns CH_INVALID_ARGUMENT (CH_RESOURCE_EXHAUSTED if cap is too small) and
 * writes the reason into reason (may be NULL). */
ch_status event_encode(const choreo_events_v1_Envelope *e, uint8_t *buf, size_t cap, size_t *len,
                       char *reason, size_t reason_cap);

/* Decodes and validates buf[0..len) into *out. CH_INVALID_ARGUMENT with a
 * reason for: empty input, oversized ("oversized: N bytes > 16384"),
 * undecodable bytes (nanopb's error text), schema version 0 or newer than
 * EVENT_SCHEMA_VERSION ("schema version 7 is newer than 1"), unknown type,
 * type not matching the payload, missing event_id/order_id, invalid UTF-8,
 * order_id not a valid token. *out is unspecified on failure. */
ch_status event_decode(const uint8_t *buf, size_t len, choreo_events_v1_Envelope *out, char *reason,
                       size_t reason_cap);

/* The type of a valid (decoded or initialised) envelope; CH_INVALID_ARGUMENT
 * if e->type is unknown. */
ch_status event_type_of(const choreo_events_v1_Envelope *e, event_type *out);

/* One readable line about the event's payload, e.g. "reserved 3 units" or
 * the reason of a failure, for logs, timelines and the CLI. */
void event_summary(const choreo_events_v1_Envelope *e, char *buf, size_t cap);

#endif
