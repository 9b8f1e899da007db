/* payment_codec.h: payment's events and the core's entries, both ways.
 *
 * Payment's events are its record: its state is the fold of its stream
 * (PAYMENT_EVENTS). Each event is one core entry:
 *   payment.credited   CREDIT  (keyed by customer: a CreditAccount)
 *   payment.processed  CHARGE  (an inventory.reserved covered by the balance)
 *   payment.failed     DECLINE (one that was not)
 *   payment.refunded   REFUND  (an order.cancel_requested of a charged order)
 *
 * Ownership: the caller owns every envelope and entry. Threads: reentrant. */
#ifndef CHOREO_PAYMENT_CODEC_H
#define CHOREO_PAYMENT_CODEC_H

#include "event_codec.h"
#include "payment_core.h"

#define PAYMENT_CODEC_PRODUCER "payment" /* the envelope's producer */

/* The entry a payment event records into *out (the envelope's cause is the
 * entry's cause). CH_INVALID_ARGUMENT for another type of event or a field
 * too long for the core. */
ch_status payment_entry_of(const choreo_events_v1_Envelope *env, pay_entry *out);

/* Fills *out with the event that records e: its type and payload; the
 * envelope's ids are set by event_init with causation_id and traceparent
 * (either may be NULL) and e's order (empty for a credit). */
ch_status payment_event_of(const pay_entry *e, const char *causation_id, const char *traceparent,
                           choreo_events_v1_Envelope *out);

#endif
