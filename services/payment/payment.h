/* payment.h: the payment service's adapters around its pure core.
 *
 * State: customer accounts and one payment per order, the fold of the
 * service's own stream PAYMENT_EVENTS (payment_codec.h: each event is one
 * core entry). One writer (common/writer.h) owns the state: every event and
 * every call goes through its queue, is decided by the core on its thread,
 * and each decision is one event, published with compare-and-set:
 *
 *   inventory.reserved     -> charge or decline -> payment.processed | .failed
 *   order.cancel_requested -> refund a charge   -> payment.refunded
 *   CreditAccount          -> credit            -> payment.credited
 *   GetAccount, GetPayment, ListPayments: read once the state is current
 *
 * A decision found in the state already (a redelivery, a retry with the
 * same idempotency key) publishes nothing again, so nothing is charged,
 * refunded or credited twice; replicas race through the compare-and-set.
 *
 * Ownership: main owns the payment_service; the writer's thread owns the
 * state while the writer runs. */
#ifndef CHOREO_PAYMENT_H
#define CHOREO_PAYMENT_H

#include "bus.h"
#include "config.h"
#include "payment_codec.h"
#include "payment_core.h"
#include "rpc_server.h"
#include "writer.h"

#define PAYMENT_SERVICE_NAME "choreo.payment.v1.Payment"
#define PAYMENT_PRODUCER     PAYMENT_CODEC_PRODUCER

typedef struct payment_service {
    const service_config *cfg;
    bus *bus;
    writer *writer;
    pay_state *state; /* the writer thread's */
    uint64_t skipped; /* events of the stream the reducer refused (logged) */
} payment_service;

/* ---- payment_events.c: the writer, the reactions ---- */

/* Folds the stream into svc->state and starts the writer with its
 * consumers. Main thread, at start-up. */
ch_status payment_events_start(payment_service *svc);

/* Stops the writer (finishing what it holds). Accepts a service that never
 * started. */
void payment_events_stop(payment_service *svc);

/* From a decide: applies e to the state and emits its event, caused by
 * causation_id (traceparent may be NULL). On failure nothing is applied.
 * Writer thread. */
ch_status payment_record(payment_service *svc, writer *w, const pay_entry *e, const char *causation_id,
                         const char *traceparent);

/* ---- payment_rpc.c: the gRPC API ---- */

/* Registers every choreo.payment.v1.Payment method on s. */
ch_status payment_rpc_register(rpc_server *s, payment_service *svc);

/* A call in the writer: decided and answered on its thread. */
ch_status payment_call_decide(payment_service *svc, writer *w, writer_input *in);
void payment_call_finish(payment_service *svc, writer_input *in, ch_status st);

#endif
