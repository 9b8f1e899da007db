/* inventory_codec.c: inventory's events <-> the core's entries. */
#include "inventory_codec.h"

#include <string.h>

/* Copies src (NULL: "") into dst[cap]; false when it does not fit. */
static bool copy(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap)
        return false;
    memcpy(dst, src ? src : "", n + 1);
    return true;
}

#define COPY(dst, src) copy((dst), sizeof(dst), (src))

ch_status inventory_entry_of(const choreo_events_v1_Envelope *env, inv_decision *out)
{
    inv_entry *e = &out->entry;
    event_type t;

    memset(e, 0, sizeof *e);
    if (event_type_of(env, &t) != CH_OK)
        return CH_INVALID_ARGUMENT;
    if (event_type_has_order(t)) {
        e->order_id = env->order_id;
        e->cause_event_id = env->causation_id;
    }
    switch (t) {
    case EVENT_INVENTORY_STOCK_SET: {
        const choreo_events_v1_InventoryStockSet *p = &env->payload.inventory_stock_set;
        e->kind = INV_ENTRY_STOCK_SET;
        e->sku = p->sku;
        e->available = p->available;
        e->delta = p->delta;
        return CH_OK;
    }
    case EVENT_INVENTORY_STOCK_ADJUSTED: {
        const choreo_events_v1_InventoryStockAdjusted *p = &env->payload.inventory_stock_adjusted;
        e->kind = INV_ENTRY_STOCK_ADJUSTED;
        e->sku = p->sku;
        e->delta = p->delta;
        e->idempotency_key = p->idempotency_key;
        return CH_OK;
    }
    case EVENT_INVENTORY_RESERVED: {
        const choreo_events_v1_InventoryReserved *p = &env->payload.inventory_reserved;
        if (p->lines_count > INV_LINES_MAX)
            return CH_INVALID_ARGUMENT;
        for (pb_size_t i = 0; i < p->lines_count; i++) {
            if (!COPY(out->lines[i].sku, p->lines[i].sku))
                return CH_INVALID_ARGUMENT;
            out->lines[i].quantity = p->lines[i].quantity;
        }
        e->kind = INV_ENTRY_RESERVED;
        e->customer_id = p->customer_id;
        e->total_cents = p->total_cents;
        e->lines = out->lines;
        e->n_lines = p->lines_count;
        e->units = p->units;
        return CH_OK;
    }
    case EVENT_INVENTORY_FAILED: {
        const choreo_events_v1_InventoryFailed *p = &env->payload.inventory_failed;
        e->kind = INV_ENTRY_REJECTED;
        e->sku = p->sku;
        e->requested = p->requested;
        e->available = p->available;
        e->reason = p->reason;
        return CH_OK;
    }
    case EVENT_INVENTORY_COMMITTED:
        e->kind = INV_ENTRY_COMMITTED;
        e->units = env->payload.inventory_committed.units;
        return CH_OK;
    case EVENT_INVENTORY_RELEASED: {
        const choreo_events_v1_InventoryReleased *p = &env->payload.inventory_released;
        e->kind = INV_ENTRY_RELEASED;
        e->restocked = p->restocked;
        e->reason = p->reason;
        e->units = p->units;
        return CH_OK;
    }
    default: return CH_INVALID_ARGUMENT;
    }
}

ch_status inventory_event_of(const inv_entry *e, const char *causation_id, const char *traceparent,
                             choreo_events_v1_Envelope *out)
{
    event_type t;
    bool ok = true;

    switch (e->kind) {
    case INV_ENTRY_STOCK_SET: t = EVENT_INVENTORY_STOCK_SET; break;
    case INV_ENTRY_STOCK_ADJUSTED: t = EVENT_INVENTORY_STOCK_ADJUSTED; break;
    case INV_ENTRY_RESERVED: t = EVENT_INVENTORY_RESERVED; break;
    case INV_ENTRY_REJECTED: t = EVENT_INVENTORY_FAILED; break;
    case INV_ENTRY_COMMITTED: t = EVENT_INVENTORY_COMMITTED; break;
    case INV_ENTRY_RELEASED: t = EVENT_INVENTORY_RELEASED; break;
    default: return CH_INVALID_ARGUMENT;
    }
    bool keyed_by_sku = !event_type_has_order(t);
    if (!keyed_by_sku && (!e->order_id || strlen(e->order_id) >= sizeof out->order_id))
        return CH_INVALID_ARGUMENT; /* event_init would cut it */
    ch_status st = event_init(out, t, keyed_by_sku ? NULL : e->order_id, causation_id,
                              INVENTORY_CODEC_PRODUCER, traceparent);
    if (st != CH_OK)
        return st;
    switch (e->kind) {
    case INV_ENTRY_STOCK_SET: {
        choreo_events_v1_InventoryStockSet *p = &out->payload.inventory_stock_set;
        ok = COPY(p->sku, e->sku);
        p->available = e->available;
        p->delta = e->delta;
        break;
    }
    case INV_ENTRY_STOCK_ADJUSTED: {
        choreo_events_v1_InventoryStockAdjusted *p = &out->payload.inventory_stock_adjusted;
        ok = COPY(p->sku, e->sku) && COPY(p->idempotency_key, e->idempotency_key);
        p->delta = e->delta;
        break;
    }
    case INV_ENTRY_RESERVED: {
        choreo_events_v1_InventoryReserved *p = &out->payload.inventory_reserved;
        ok = COPY(p->customer_id, e->customer_id) && e->n_lines <= INV_LINES_MAX && (e->lines || !e->n_lines);
        for (size_t i = 0; ok && i < e->n_lines; i++) {
            ok = COPY(p->lines[i].sku, e->lines[i].sku);
            p->lines[i].quantity = e->lines[i].quantity;
            p->units += e->lines[i].quantity;
        }
        p->lines_count = ok ? (pb_size_t)e->n_lines : 0;
        p->total_cents = e->total_cents;
        break;
    }
    case INV_ENTRY_REJECTED: {
        choreo_events_v1_InventoryFailed *p = &out->payload.inventory_failed;
        ok = COPY(p->sku, e->sku);
        p->requested = e->requested;
        p->available = e->available;
        inv_text_copy(p->reason, sizeof p->reason, e->reason);
        break;
    }
    case INV_ENTRY_COMMITTED: out->payload.inventory_committed.units = e->units; break;
    default: {
        choreo_events_v1_InventoryReleased *p = &out->payload.inventory_released;
        p->units = e->units;
        p->restocked = e->restocked;
        inv_text_copy(p->reason, sizeof p->reason, e->reason);
        break;
    }
    }
    return ok ? CH_OK : CH_INVALID_ARGUMENT;
}
