/* inventory.h: the inventory service's adapters around its pure core.
 *
 * State: stock per SKU and one reservation per order, the fold of the
 * service's own stream INVENTORY_EVENTS (inventory_codec.h: each event is
 * one core entry). One writer (common/writer.h) owns the state: every event
 * and every call goes through its queue, is decided by the core on its
 * thread, and each decision is one event, published with compare-and-set:
 *
 *   order.created          -> reserve or reject -> inventory.reserved | .failed
 *   payment.processed      -> commit (sell)     -> inventory.committed
 *   payment.failed         -> release           -> inventory.released
 *   order.cancel_requested -> release, restock  -> inventory.released
 *   SetStock, AdjustStock  -> set, adjust       -> inventory.stock_set | .stock_adjusted
 *   GetStock, ListStock, GetReservation: read once the state is current
 *
 * A decision found in the state already (a redelivery, a retry with the
 * same idempotency key, a SetStock to the level the SKU has) publishes
 * nothing, so nothing is reserved, sold or released twice; replicas race
 * through the compare-and-set.
 *
 * Ownership: main owns the inventory_service; the writer's thread owns the
 * store and the room while the writer runs. */
#ifndef CHOREO_INVENTORY_H
#define CHOREO_INVENTORY_H

#include "bus.h"
#include "config.h"
#include "inventory_codec.h"
#include "inventory_core.h"
#include "rpc_server.h"
#include "writer.h"

#define INVENTORY_SERVICE_NAME "choreo.inventory.v1.Inventory"
#define INVENTORY_PRODUCER     INVENTORY_CODEC_PRODUCER

/* The writer thread's room for one decision or one fold (about 40 KB: kept
 * off the stack). */
typedef struct inventory_room {
    inv_decision d;                /* a decision, or the entry an event is folded from */
    inv_line items[INV_LINES_MAX]; /* an order.created's items */
    choreo_events_v1_Envelope out; /* the event a decision emits */
} inventory_room;

typedef struct inventory_service {
    const service_config *cfg;
    bus *bus;
    writer *writer;
    inv_store *store;     /* the writer thread's */
    inventory_room *room; /* the writer thread's */
    uint64_t skipped;     /* events of the stream the reducer refused (logged) */
} inventory_service;

/* ---- inventory_events.c: the writer, the reactions ---- */

/* Folds the stream into svc->store and starts the writer with its
 * consumers. svc->cfg, bus and store must be set. Main thread, at start-up. */
ch_status inventory_events_start(inventory_service *svc);

/* Stops the writer (finishing what it holds) and frees the room. Accepts a
 * service that never started. Main thread, before the bus goes. */
void inventory_events_stop(inventory_service *svc);

/* From a decide: applies e to the store and emits its event, caused by
 * causation_id (traceparent may be NULL). A SetStock to the level the SKU
 * has changes nothing and emits nothing; any other entry that changes
 * nothing was not decided new: CH_INTERNAL. On failure nothing is applied.
 * Writer thread. */
ch_status inventory_record(inventory_service *svc, writer *w, const inv_entry *e, const char *causation_id,
                           const char *traceparent);

/* ---- inventory_rpc.c: the gRPC API ---- */

/* Registers every choreo.inventory.v1.Inventory method on s. */
ch_status inventory_rpc_register(rpc_server *s, inventory_service *svc);

/* A call in the writer: decided and answered on its thread. */
ch_status inventory_call_decide(inventory_service *svc, writer *w, writer_input *in);
void inventory_call_finish(inventory_service *svc, writer_input *in, ch_status st);

#endif
