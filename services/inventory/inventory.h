/* inventory.h: the inventory service's adapters around its pure core.
 *
 * State lives in a ledger (common/ledger.h): stream INVENTORY, subject
 * inventory.ledger, entries choreo.ledger.v1.InventoryEntry (nanopb). An API
 * change goes: lock `mu` -> decide in the core -> append the entry
 * (compare-and-set; the ledger applies it to the store through
 * inventory_events.c) -> unlock. Events are decided a batch at a time (up to
 * INVENTORY_BATCH, what the worker took from the consumer): lock `mu` ->
 * decide each in the core, applying its entry at once so the next one sees
 * it -> append all the entries as one ledger message (compare-and-set; undone
 * and decided again if another replica wrote first) -> publish the event
 * each recorded decision implies (asynchronously: the incoming event is acked
 * once it is stored) -> unlock. A decision recorded before (a redelivery)
 * only publishes its event again (JetStream drops the duplicate by its
 * Nats-Msg-Id).
 *
 * Ownership: main owns the inventory_service and everything it points to.
 * `mu` guards the store, the ledger and the scratch buffers; it is held
 * across a ledger append (one JetStream round trip per API call or per batch
 * of events). */
#ifndef CHOREO_INVENTORY_H
#define CHOREO_INVENTORY_H

#include <pthread.h>

#include "bus.h"
#include "config.h"
#include "event_worker.h"
#include "inventory_core.h"
#include "ledger.h"
#include "rpc_server.h"

#define INVENTORY_SERVICE_NAME   "choreo.inventory.v1.Inventory"
#define INVENTORY_PRODUCER       "inventory"
#define INVENTORY_LEDGER_STREAM  "INVENTORY"
#define INVENTORY_LEDGER_SUBJECT "inventory.ledger"
#define INVENTORY_CAS_ATTEMPTS   5 /* compare-and-set tries before giving up (retry later) */
#define INVENTORY_WORKERS        4 /* order.created, payment.processed, payment.failed, order.cancel_requested */
#define INVENTORY_BATCH          128 /* events decided together, and recorded in one ledger message */

typedef struct inventory_scratch inventory_scratch; /* ledger encode/decode room, under mu */
typedef struct inventory_handler inventory_handler; /* one per consumed event type */

typedef struct inventory_service {
    const service_config *cfg;
    bus *bus;
    ledger *ledger;
    inv_store *store;
    pthread_mutex_t mu;
    inventory_scratch *scratch;
    inventory_handler *handlers[INVENTORY_WORKERS];
    event_worker *workers[INVENTORY_WORKERS];
} inventory_service;

/* ---- inventory_events.c: the ledger and the event reactions ---- */

/* Opens the ledger (creating the stream on first use) and replays it into
 * svc->store. svc->bus and svc->store must be set. Main thread, before the
 * workers and the gRPC server start. */
ch_status inventory_ledger_open(inventory_service *svc);

/* Closes the ledger and frees the scratch buffers. Accepts a service whose
 * ledger was never opened. */
void inventory_ledger_close(inventory_service *svc);

/* Encodes e and appends it to the ledger (msg_id: Nats-Msg-Id for dedup, may
 * be NULL), which applies it to the store. CH_CONFLICT when another writer
 * appended first (the store has caught up: decide again). Caller holds mu. */
ch_status inventory_append(inventory_service *svc, const inv_entry *e, const char *msg_id, int timeout_ms);

/* Encodes e as a ledger entry into buf (cap bytes), *len its size. Caller
 * holds mu (the encoder's scratch). */
ch_status inventory_encode(inventory_service *svc, const inv_entry *e, uint8_t *buf, size_t cap, size_t *len);

/* Starts one event worker per consumed type. On failure the ones started are
 * stopped again. Main thread. */
ch_status inventory_workers_start(inventory_service *svc);

/* Stops every worker (after its current batch) and frees the handlers.
 * Accepts a service whose workers never started. Main thread. */
void inventory_workers_stop(inventory_service *svc);

/* ---- inventory_rpc.c: the gRPC API ---- */

/* Registers every choreo.inventory.v1.Inventory method on s. */
ch_status inventory_rpc_register(rpc_server *s, inventory_service *svc);

#endif
