/* inventory_codec.h: inventory's events and the core's entries, both ways.
 *
 * Inventory's events are its record: its state is the fold of its stream
 * (INVENTORY_EVENTS). Each event is one core entry:
 *   inventory.stock_set       STOCK_SET      (keyed by SKU: a SetStock)
 *   inventory.stock_adjusted  STOCK_ADJUSTED (keyed by SKU: an AdjustStock)
 *   inventory.reserved        RESERVED       (an order.created whose units were there)
 *   inventory.failed          REJECTED       (one that was short)
 *   inventory.committed       COMMITTED      (a payment.processed of a held reservation)
 *   inventory.released        RELEASED       (a payment.failed or an order.cancel_requested)
 *
 * Ownership: the caller owns every envelope and entry; an entry read from an
 * event points into that envelope and into the caller's room. Threads:
 * reentrant. */
#ifndef CHOREO_INVENTORY_CODEC_H
#define CHOREO_INVENTORY_CODEC_H

#include "event_codec.h"
#include "inventory_core.h"

#define INVENTORY_CODEC_PRODUCER "inventory" /* the envelope's producer */

/* The entry an inventory event records, into out->entry: its strings point
 * into env, a reservation's lines into out->lines (the envelope's causation
 * id is the entry's cause). CH_INVALID_ARGUMENT for another type of event or
 * a field the core cannot hold. */
ch_status inventory_entry_of(const choreo_events_v1_Envelope *env, inv_decision *out);

/* Fills *out with the event that records e: its type and payload; the
 * envelope's ids are set by event_init with causation_id and traceparent
 * (either may be NULL) and e's order (none for a stock entry). A RESERVED
 * event's units are the sum of its lines; COMMITTED and RELEASED take
 * e->units. CH_INVALID_ARGUMENT for an unknown kind or a field the event
 * cannot hold. */
ch_status inventory_event_of(const inv_entry *e, const char *causation_id, const char *traceparent,
                             choreo_events_v1_Envelope *out);

#endif
