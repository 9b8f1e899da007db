/* orders.h: the orders service's adapters around its pure core.
 *
 * Data flows one way: gRPC request -> orders_rpc.c (decode, validate through
 * the core) -> orders_events.c (append the event to JetStream) -> core
 * (apply the event to the store) -> orders_rpc.c (reply). On start-up,
 * orders_events.c replays the stream into the store (event sourcing).
 *
 * Ownership: main owns the orders_service and everything it points to. The
 * store is guarded by `mu`; the adapters hold it only around store calls and
 * reply packing, never across a publish. */
#ifndef CHOREO_ORDERS_H
#define CHOREO_ORDERS_H

#include <pthread.h>

#include "bus.h"
#include "config.h"
#include "event_codec.h"
#include "event_worker.h"
#include "order_core.h"
#include "rpc_server.h"

#define ORDERS_SERVICE_NAME "choreo.orders.v1.Orders"
#define ORDERS_PRODUCER     "orders"
#define ORDERS_HISTORY_MAX  64
#define ORDERS_CONSUMED     6 /* event types the saga makes orders react to */

typedef struct orders_service {
    const service_config *cfg;
    bus *bus;
    order_store *store;
    pthread_mutex_t mu;
    event_worker *workers[ORDERS_CONSUMED];
    bus_follower *follower; /* keeps the store up to date with other replicas */
    void *follow_ctx;
    uint64_t rebuilt_to; /* last stream sequence folded in at start-up */
} orders_service;

/* A request to create, checked by the core and given its id. */
typedef struct orders_new {
    order_create_req req;
    char id[ORDER_ID_MAX + 1];
    const char *traceparent; /* the call's W3C trace context */
    const char *causation_id;
} orders_new;

/* ---- orders_events.c: wire events <-> core events ---- */

/* Converts a decoded envelope into a core event (pointing into env and
 * items_buf, which must hold ORDER_ITEMS_MAX items). CH_INVALID_ARGUMENT for
 * a payload the core cannot take. */
ch_status orders_event_from_envelope(const choreo_events_v1_Envelope *env, uint64_t seq, order_event *out,
                                     order_item *items_buf);

/* Told once whether an order.created reached the stream: st CH_OK once it
 * is stored and folded into the store, replayed when the stream had it
 * already (a retry under the same idempotency key); otherwise the publish
 * error. Runs on a NATS thread: must not block. */
typedef void (*orders_created_fn)(ch_status st, bool replayed, void *arg);

/* Appends order.created for n to the stream without waiting (n is copied):
 * fn(arg) runs once JetStream answers, or with CH_TIMEOUT after the
 * configured publish timeout without an answer. CH_OK means fn will run;
 * any other status means nothing was sent and fn will not run. Any
 * thread. */
ch_status orders_append_created(orders_service *svc, const orders_new *n, orders_created_fn fn, void *arg);

/* Appends order.cancel_requested for a CONFIRMED order and applies it.
 * CH_FAILED_PRECONDITION (err says why) while the saga runs; CH_OK without
 * publishing when the order is already CANCELLING or CANCELLED. */
ch_status orders_append_cancel(orders_service *svc, const char *order_id, const char *reason,
                               const char *traceparent, const char *causation_id, int timeout_ms, char *err,
                               size_t errlen);

/* Follows the stream from where the rebuild stopped (so the store also
 * learns what other replicas did) and starts one event worker per consumed
 * type (the saga reactions). */
ch_status orders_events_start(orders_service *svc);

/* Stops the workers (before the bus goes). */
void orders_events_stop(orders_service *svc);

/* Rebuilds the store from every event in the stream (start-up). */
ch_status orders_rebuild(orders_service *svc, uint64_t *events_read);

/* One entry of an order's timeline, read back from the stream. */
typedef struct orders_history_entry {
    uint64_t seq;
    char event_id[EVENT_ID_LEN + 1];
    char type[33];
    char causation_id[81];
    char producer[33];
    int64_t occurred_at_ns;
    order_status status_after;
    char summary[256];
} orders_history_entry;

/* Reads every event of one order (events.*.*.<id>) and folds it with the
 * reducer. *n gets the count (at most cap). CH_NOT_FOUND when there is none. */
ch_status orders_history(orders_service *svc, const char *order_id, orders_history_entry *out, size_t cap,
                         size_t *n);

/* ---- orders_rpc.c: the gRPC API ---- */

/* Registers every choreo.orders.v1.Orders method on s. */
ch_status orders_rpc_register(rpc_server *s, orders_service *svc);

#endif
