/* orders.h: the orders service's adapters around its pure core.
 *
 * An order is the fold of its events: orders' own (order.created,
 * .cancel_requested, .confirmed, .cancelled, in its stream ORDER_EVENTS) and
 * the other services' steps (inventory's and payment's streams, which orders
 * follows: every event, no acks). One writer (common/writer.h) owns the
 * store: calls and followed events go through its queue and are decided on
 * its thread.
 *
 *   CreateOrder   -> order.created (the reply once it is stored)
 *   CancelOrder   -> order.cancel_requested
 *   a step folded in (reserved, paid, declined, released, refunded) that
 *                    makes the order's outcome due -> order.confirmed or
 *                    order.cancelled, caused by that step
 *   GetOrder, ListOrders: read once the state is current
 *   GetOrderHistory: read from the streams themselves (every producer's)
 *
 * Outcomes are derived from the state, not from a consumer's delivery: any
 * replica that folds the step publishes, and the compare-and-set on the
 * stream lets one of them through (the other learns it by catching up).
 *
 * Ownership: main owns the orders_service; the writer's thread owns the
 * store while the writer runs. */
#ifndef CHOREO_ORDERS_H
#define CHOREO_ORDERS_H

#include "bus.h"
#include "config.h"
#include "event_codec.h"
#include "order_core.h"
#include "rpc_server.h"
#include "writer.h"

#define ORDERS_SERVICE_NAME "choreo.orders.v1.Orders"
#define ORDERS_PRODUCER     "orders"
#define ORDERS_HISTORY_MAX  64

typedef struct orders_service {
    const service_config *cfg;
    bus *bus;
    writer *writer;
    order_store *store;                /* the writer thread's */
    uint64_t skipped;                  /* events folded in that the reducer refused (logged) */
    order_item items[ORDER_ITEMS_MAX]; /* the writer thread's: a decoded event's items */
} orders_service;

/* ---- orders_events.c: events <-> the core; the writer ---- */

/* Converts a decoded envelope into a core event (pointing into env and
 * items_buf, which must hold ORDER_ITEMS_MAX items; NULL for other types).
 * CH_INVALID_ARGUMENT for a payload the core cannot take; CH_NOT_FOUND for
 * an event that concerns no order step (inventory.committed, stock and
 * credit events). */
ch_status orders_event_from_envelope(const choreo_events_v1_Envelope *env, uint64_t seq, order_event *out,
                                     order_item *items_buf);

/* Folds orders' stream into svc->store, then starts the writer and its
 * followers; returns once the followers have folded in what the other
 * streams held at start (so the first reads see it). Main thread. */
ch_status orders_events_start(orders_service *svc);

/* Stops the writer. Accepts a service that never started. */
void orders_events_stop(orders_service *svc);

/* From a decide: applies the event of type t that orders decided to o (or,
 * for order.created, creates the order) and emits env. On failure nothing is
 * applied. Writer thread. */
ch_status orders_record(orders_service *svc, writer *w, const choreo_events_v1_Envelope *env);

/* One entry of an order's timeline, read back from the streams. */
typedef struct orders_history_entry {
    uint64_t seq; /* in its producer's stream */
    char event_id[EVENT_ID_LEN + 1];
    char type[33];
    char causation_id[81];
    char producer[33];
    int64_t occurred_at_ns;
    order_status status_after;
    char summary[256];
} orders_history_entry;

/* Reads every event of one order from every producer's stream in the order
 * they happened and folds them with the reducer. *n gets the count (at most
 * cap). CH_NOT_FOUND when there is none. Any thread; blocks on NATS. */
ch_status orders_history(orders_service *svc, const char *order_id, orders_history_entry *out, size_t cap,
                         size_t *n);

/* ---- orders_rpc.c: the gRPC API ---- */

/* Registers every choreo.orders.v1.Orders method on s. */
ch_status orders_rpc_register(rpc_server *s, orders_service *svc);

/* A call in the writer: decided and answered on its thread. */
ch_status orders_call_decide(orders_service *svc, writer *w, writer_input *in);
void orders_call_finish(orders_service *svc, writer_input *in, ch_status st);

#endif
