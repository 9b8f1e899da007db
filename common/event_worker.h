/* event_worker.h: consuming one type of domain event.
 *
 * A service subscribes to each event type it reacts to with one durable
 * consumer, "<service>-<type>" on events.<aggregate>.<event>.* (nats-server
 * 2.9 has one filter per consumer), shared by all replicas of the service
 * (competing consumers). The worker decodes each message (event_codec.h) and
 * hands the envelope to the service's typed handler; what cannot be decoded
 * (garbage, unknown type, future schema, a payload over its limits, a type
 * that does not match its subject) is dead-lettered with the reason, and the
 * events behind it keep flowing. Every event handled gets one log line:
 * service, type, order id, event id, causation id, trace id, outcome.
 *
 * Handlers ack only after their own effect and outgoing event are durable:
 * return BUS_ACK then; BUS_RETRY for a transient failure (nak with backoff,
 * dead-lettered after max_deliver); BUS_DEAD for an event that can never be
 * handled; or BUS_STAGED to decide it with the rest of its batch in the
 * flush (one ledger write per batch instead of one per event).
 *
 * Ownership: the caller owns the worker (event_worker_stop) and the ctx.
 * Threads: the handler runs on the worker's thread, one event at a time. */
#ifndef CHOREO_EVENT_WORKER_H
#define CHOREO_EVENT_WORKER_H

#include "bus.h"
#include "event_codec.h"

typedef bus_verdict (*event_handler_fn)(const choreo_events_v1_Envelope *e, const bus_in_msg *m, void *ctx,
                                        char *reason, size_t reason_cap);

/* Decides the events a handler staged (returned BUS_STAGED for) together,
 * once per batch: items[i].msg is the i-th staged message (valid, decodes
 * with event_decode, the same type); the flush sets each item's verdict and
 * reason, and may publish with bus_publish_deferred on items[i].msg. The log
 * line of each staged event is written after the flush, with its verdict.
 * Runs on the worker's thread. */
typedef void (*event_flush_fn)(bus_staged *items, size_t n, void *ctx);

typedef struct event_worker_spec {
    const char *service;      /* "inventory": names the durable "inventory-order_created" */
    event_type type;          /* the one type consumed */
    event_handler_fn handler; /* NULL with a flush: every event is decided in its batch's flush */
    event_flush_fn flush;     /* required if handler may return BUS_STAGED (or is NULL); called with ctx */
    void *ctx;
    int batch;       /* 0: 128 */
    int max_deliver; /* 0: 8 */
    int ack_wait_ms; /* 0: 10000 */
} event_worker_spec;

typedef struct event_worker event_worker;

/* Ensures the durable consumer and starts the worker thread. */
ch_status event_worker_start(bus *b, const event_worker_spec *spec, event_worker **out);

/* Stops the worker after its current batch and frees it. Accepts NULL. */
void event_worker_stop(event_worker *w);

/* Stops n workers together (each waits out at most one fetch, in parallel)
 * and frees them; the array entries are set to NULL. Accepts NULL entries. */
void event_workers_stop(event_worker **ws, size_t n);

#endif
