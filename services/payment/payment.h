/* payment.h: the payment service's adapters around its pure core.
 *
 * State lives in a ledger (stream PAYMENT, subject payment.ledger): every
 * change is an entry decided by the core, appended with compare-and-set, and
 * applied by the core's reducer; on start-up the ledger is replayed.
 *
 *   CreditAccount -> payment_rpc.c (validate, decide) -> ledger entry -> reply
 *   inventory.reserved -> payment_events.c (decide charge/decline) -> ledger
 *       entry -> payment.processed | payment.failed -> ack
 *   order.cancel_requested -> refund a CHARGED payment -> ledger entry ->
 *       payment.refunded -> ack
 *
 * Events are decided a batch at a time (what the worker took from its
 * consumer, up to PAYMENT_BATCH): every decision of the batch goes into one
 * ledger message (ledger_decide_batch), then each event's outcome is
 * published asynchronously and the incoming event acked once it is stored.
 *
 * A handler that finds its decision already in the state decides nothing and
 * only re-publishes the event that decision implies (JetStream drops the
 * duplicate by its deterministic message id), so redeliveries and crashes
 * never charge or refund twice.
 *
 * Ownership: main owns the payment_service and everything it points to.
 * `mu` guards the state and the ledger (its appends apply to the state); it
 * is held across a ledger append (one round trip per API call or per batch of
 * events) and while the batch's events are queued for publishing. */
#ifndef CHOREO_PAYMENT_H
#define CHOREO_PAYMENT_H

#include <pthread.h>

#include "bus.h"
#include "config.h"
#include "event_codec.h"
#include "event_worker.h"
#include "ledger.h"
#include "payment_core.h"
#include "rpc_server.h"

#define PAYMENT_SERVICE_NAME   "choreo.payment.v1.Payment"
#define PAYMENT_PRODUCER       "payment"
#define PAYMENT_LEDGER_STREAM  "PAYMENT"
#define PAYMENT_LEDGER_SUBJECT "payment.ledger"
#define PAYMENT_APPEND_TRIES   5   /* compare-and-set attempts before giving up (retry later) */
#define PAYMENT_BATCH          128 /* events decided together, and recorded in one ledger message */

typedef struct payment_handler payment_handler; /* one per consumed event type */

typedef struct payment_service {
    const service_config *cfg;
    bus *bus;
    ledger *ledger;
    payment_state *state;
    pthread_mutex_t mu;
    event_worker *reserved_worker; /* inventory.reserved */
    event_worker *cancel_worker;   /* order.cancel_requested */
    payment_handler *handlers[2];  /* their batch state */
    uint64_t skipped_entries;      /* ledger entries the reducer refused (logged) */
} payment_service;

/* ---- payment_events.c: the ledger and the event reactions ---- */

/* Opens the ledger (replaying it into svc->state). Call once at start-up,
 * before any other thread uses svc. */
ch_status payment_ledger_open(payment_service *svc);

/* Encodes e and appends it to the ledger with msg_id (NULL: none), under mu
 * (the caller holds it), retrying nothing: CH_CONFLICT means the state was
 * brought up to date and the caller must decide again. */
ch_status payment_ledger_append(payment_service *svc, const pay_entry *e, const char *msg_id);

/* Starts one worker per consumed event type. */
ch_status payment_events_start(payment_service *svc);

/* Stops the workers and closes the ledger. Safe on a partly started svc. */
void payment_events_stop(payment_service *svc);

/* ---- payment_rpc.c: the gRPC API ---- */

/* Registers every choreo.payment.v1.Payment method on s. */
ch_status payment_rpc_register(rpc_server *s, payment_service *svc);

#endif
