/* inventory_events.c: the inventory service's ledger (entries <-> core) and
 * its reactions to the saga's events. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "choreo/ledger/v1/inventory_ledger.pb.h"
#include "event_bus.h"
#include "inventory.h"
#include "log.h"

struct inventory_scratch {
    choreo_ledger_v1_InventoryEntry pb; /* encode and decode */
    inv_line lines[INV_LINES_MAX];      /* decode: the lines of a RESERVED entry */
    uint8_t buf[choreo_ledger_v1_InventoryEntry_size];
};

/* ---- ledger entries: core <-> nanopb ---- */

#define COPY(dst, src) snprintf((dst), sizeof(dst), "%s", (src) ? (src) : "")

static void entry_to_pb(const inv_entry *e, choreo_ledger_v1_InventoryEntry *pb)
{
    memset(pb, 0, sizeof *pb);
    switch (e->kind) {
    case INV_ENTRY_STOCK_SET:
        pb->which_entry = choreo_ledger_v1_InventoryEntry_stock_set_tag;
        COPY(pb->entry.stock_set.sku, e->sku);
        pb->entry.stock_set.available = e->available;
        pb->entry.stock_set.delta = e->delta;
        break;
    case INV_ENTRY_STOCK_ADJUSTED:
        pb->which_entry = choreo_ledger_v1_InventoryEntry_stock_adjusted_tag;
        COPY(pb->entry.stock_adjusted.sku, e->sku);
        pb->entry.stock_adjusted.delta = e->delta;
        COPY(pb->entry.stock_adjusted.idempotency_key, e->idempotency_key);
        break;
    case INV_ENTRY_RESERVED: {
        choreo_ledger_v1_InventoryReservationMade *r = &pb->entry.reserved;
        pb->which_entry = choreo_ledger_v1_InventoryEntry_reserved_tag;
        COPY(r->order_id, e->order_id);
        COPY(r->customer_id, e->customer_id);
        COPY(r->cause_event_id, e->cause_event_id);
        r->total_cents = e->total_cents;
        r->lines_count = (pb_size_t)e->n_lines;
        for (size_t i = 0; i < e->n_lines; i++) {
            COPY(r->lines[i].sku, e->lines[i].sku);
            r->lines[i].quantity = e->lines[i].quantity;
        }
        break;
    }
    case INV_ENTRY_REJECTED: {
        choreo_ledger_v1_InventoryReservationRejected *r = &pb->entry.rejected;
        pb->which_entry = choreo_ledger_v1_InventoryEntry_rejected_tag;
        COPY(r->order_id, e->order_id);
        COPY(r->sku, e->sku);
        COPY(r->cause_event_id, e->cause_event_id);
        r->requested = e->requested;
        r->available = e->available;
        inv_text_copy(r->reason, sizeof r->reason, e->reason);
        break;
    }
    case INV_ENTRY_COMMITTED:
        pb->which_entry = choreo_ledger_v1_InventoryEntry_committed_tag;
        COPY(pb->entry.committed.order_id, e->order_id);
        COPY(pb->entry.committed.cause_event_id, e->cause_event_id);
        break;
    case INV_ENTRY_RELEASED:
        pb->which_entry = choreo_ledger_v1_InventoryEntry_released_tag;
        COPY(pb->entry.released.order_id, e->order_id);
        COPY(pb->entry.released.cause_event_id, e->cause_event_id);
        pb->entry.released.restocked = e->restocked;
        inv_text_copy(pb->entry.released.reason, sizeof pb->entry.released.reason, e->reason);
        break;
    }
}

/* Points e into pb (and lines); CH_INVALID_ARGUMENT for an unknown entry. */
static ch_status entry_from_pb(const choreo_ledger_v1_InventoryEntry *pb, inv_entry *e, inv_line *lines)
{
    memset(e, 0, sizeof *e);
    switch (pb->which_entry) {
    case choreo_ledger_v1_InventoryEntry_stock_set_tag:
        e->kind = INV_ENTRY_STOCK_SET;
        e->sku = pb->entry.stock_set.sku;
        e->available = pb->entry.stock_set.available;
        e->delta = pb->entry.stock_set.delta;
        return CH_OK;
    case choreo_ledger_v1_InventoryEntry_stock_adjusted_tag:
        e->kind = INV_ENTRY_STOCK_ADJUSTED;
        e->sku = pb->entry.stock_adjusted.sku;
        e->delta = pb->entry.stock_adjusted.delta;
        e->idempotency_key = pb->entry.stock_adjusted.idempotency_key;
        return CH_OK;
    case choreo_ledger_v1_InventoryEntry_reserved_tag: {
        const choreo_ledger_v1_InventoryReservationMade *r = &pb->entry.reserved;
        e->kind = INV_ENTRY_RESERVED;
        e->order_id = r->order_id;
        e->customer_id = r->customer_id;
        e->cause_event_id = r->cause_event_id;
        e->total_cents = r->total_cents;
        for (pb_size_t i = 0; i < r->lines_count && i < INV_LINES_MAX; i++) {
            COPY(lines[i].sku, r->lines[i].sku);
            lines[i].quantity = r->lines[i].quantity;
        }
        e->lines = lines;
        e->n_lines = r->lines_count;
        return CH_OK;
    }
    case choreo_ledger_v1_InventoryEntry_rejected_tag: {
        const choreo_ledger_v1_InventoryReservationRejected *r = &pb->entry.rejected;
        e->kind = INV_ENTRY_REJECTED;
        e->order_id = r->order_id;
        e->cause_event_id = r->cause_event_id;
        e->sku = r->sku;
        e->requested = r->requested;
        e->available = r->available;
        e->reason = r->reason;
        return CH_OK;
    }
    case choreo_ledger_v1_InventoryEntry_committed_tag:
        e->kind = INV_ENTRY_COMMITTED;
        e->order_id = pb->entry.committed.order_id;
        e->cause_event_id = pb->entry.committed.cause_event_id;
        return CH_OK;
    case choreo_ledger_v1_InventoryEntry_released_tag:
        e->kind = INV_ENTRY_RELEASED;
        e->order_id = pb->entry.released.order_id;
        e->cause_event_id = pb->entry.released.cause_event_id;
        e->restocked = pb->entry.released.restocked;
        e->reason = pb->entry.released.reason;
        return CH_OK;
    }
    return CH_INVALID_ARGUMENT;
}

/* Decodes a stored entry into e (pointing into the scratch). Under mu. */
static ch_status entry_decode(inventory_service *svc, const uint8_t *data, size_t len, inv_entry *e)
{
    inventory_scratch *sc = svc->scratch;
    pb_istream_t in = pb_istream_from_buffer(data, len);

    memset(&sc->pb, 0, sizeof sc->pb);
    if (!pb_decode(&in, choreo_ledger_v1_InventoryEntry_fields, &sc->pb)) {
        log_warn("ledger entry undecodable", "error", PB_GET_ERROR(&in), NULL);
        return CH_INVALID_ARGUMENT;
    }
    return entry_from_pb(&sc->pb, e, sc->lines);
}

/* The ledger's apply function; runs under mu (inside ledger_open, _append,
 * _decide_batch or _catch_up, which the service only calls holding it). */
static ch_status ledger_apply(const uint8_t *data, size_t len, uint64_t seq, void *ctx)
{
    inventory_service *svc = ctx;
    inv_entry e;
    ch_status st = entry_decode(svc, data, len, &e);

    (void)seq;
    return st == CH_OK ? inv_apply(svc->store, &e, NULL) : st;
}

/* The ledger's revert function (a batch that could not be stored). Under mu. */
static ch_status ledger_revert(const uint8_t *data, size_t len, void *ctx)
{
    inventory_service *svc = ctx;
    inv_entry e;
    ch_status st = entry_decode(svc, data, len, &e);

    return st == CH_OK ? inv_revert(svc->store, &e) : st;
}

ch_status inventory_encode(inventory_service *svc, const inv_entry *e, uint8_t *buf, size_t cap, size_t *len)
{
    inventory_scratch *sc = svc->scratch;

    entry_to_pb(e, &sc->pb);
    pb_ostream_t out = pb_ostream_from_buffer(buf, cap);
    if (!pb_encode(&out, choreo_ledger_v1_InventoryEntry_fields, &sc->pb)) {
        log_error("ledger entry not encoded", "error", PB_GET_ERROR(&out), NULL);
        return CH_INTERNAL;
    }
    *len = out.bytes_written;
    return CH_OK;
}

ch_status inventory_append(inventory_service *svc, const inv_entry *e, const char *msg_id, int timeout_ms)
{
    inventory_scratch *sc = svc->scratch;
    size_t len = 0;
    ch_status st = inventory_encode(svc, e, sc->buf, sizeof sc->buf, &len);

    if (st != CH_OK)
        return st;
    return ledger_append(svc->ledger, sc->buf, len, msg_id, timeout_ms, NULL);
}

ch_status inventory_ledger_open(inventory_service *svc)
{
    ledger_spec spec = {
        .stream = INVENTORY_LEDGER_STREAM,
        .subject = INVENTORY_LEDGER_SUBJECT,
        .replicas = svc->cfg ? svc->cfg->stream_replicas : 1,
        .apply = ledger_apply,
        .revert = ledger_revert,
        .ctx = svc,
        .follow_lock = &svc->mu, /* other replicas' entries reach this one's reads */
    };
    char skus[24], reservations[24];
    ch_status st;

    svc->scratch = calloc(1, sizeof *svc->scratch);
    if (!svc->scratch)
        return CH_NO_MEMORY;
    pthread_mutex_lock(&svc->mu);
    st = ledger_open(&svc->ledger, svc->bus, &spec);
    snprintf(skus, sizeof skus, "%zu", inv_store_sku_count(svc->store));
    snprintf(reservations, sizeof reservations, "%zu", inv_store_reservation_count(svc->store));
    pthread_mutex_unlock(&svc->mu);
    if (st == CH_OK)
        log_info("inventory state rebuilt from the ledger", "skus", skus, "reservations", reservations, NULL);
    return st;
}

void inventory_ledger_close(inventory_service *svc)
{
    ledger_close(svc->ledger);
    svc->ledger = NULL;
    free(svc->scratch);
    svc->scratch = NULL;
}

/* ---- event reactions ---- */

struct inventory_handler {
    inventory_service *svc;
    event_type type;
    inv_decision d;
    inv_line items[INV_LINES_MAX];
    choreo_events_v1_Envelope in;  /* a staged event, decoded again */
    choreo_events_v1_Envelope out; /* the event to publish; one event at a time per worker */
    bus_staged *batch;             /* the batch being flushed */
    ch_status status[INVENTORY_BATCH];
    inv_outcome outcome[INVENTORY_BATCH];
};

/* Decides on e in the core (under mu). */
static ch_status handler_decide(inventory_handler *h, const choreo_events_v1_Envelope *e, inv_outcome *out,
                                char *err, size_t errlen)
{
    const inv_store *s = h->svc->store;

    switch (h->type) {
    case EVENT_ORDER_CREATED: {
        const choreo_events_v1_OrderCreated *c = &e->payload.order_created;
        size_t n = c->items_count; /* the codec bounds it; the core checks it */
        for (size_t i = 0; i < n && i < INV_LINES_MAX; i++) {
            COPY(h->items[i].sku, c->items[i].sku);
            h->items[i].quantity = c->items[i].quantity;
        }
        inv_reserve_req r = {
            .order_id = e->order_id,
            .customer_id = c->customer_id,
            .cause_event_id = e->event_id,
            .total_cents = c->total_cents,
            .items = h->items,
            .n_items = n,
        };
        return inv_decide_reserve(s, &r, &h->d, out, err, errlen);
    }
    case EVENT_PAYMENT_PROCESSED: return inv_decide_commit(s, e->order_id, e->event_id, &h->d, out);
    case EVENT_PAYMENT_FAILED:
        return inv_decide_release(s, e->order_id, false, e->payload.payment_failed.reason, e->event_id, &h->d,
                                  out);
    case EVENT_ORDER_CANCEL_REQUESTED:
        return inv_decide_release(s, e->order_id, true, e->payload.order_cancel_requested.reason, e->event_id,
                                  &h->d, out);
    default: snprintf(err, errlen, "inventory does not handle %s", event_type_name(h->type)); break;
    }
    return CH_INVALID_ARGUMENT;
}

/* Fills h->out with the event the recorded decision on e's order implies
 * (under mu). *publish false: nothing to publish. Writes a short note on the
 * outcome into note ("again: ..." for a decision taken before). */
static ch_status handler_outgoing(inventory_handler *h, const choreo_events_v1_Envelope *e, bool again,
                                  bool *publish, char *note, size_t note_cap)
{
    const inv_reservation *r = inv_store_reservation(h->svc->store, e->order_id);
    const char *pre = again ? "again: " : "";
    ch_status st;

    *publish = false;
    if (!r)
        return CH_NOT_FOUND; /* recorded, yet not applied: retry */
    if (h->type == EVENT_PAYMENT_PROCESSED) {
        snprintf(note, note_cap, "reservation %s", inv_res_status_name(r->status));
        return CH_OK;
    }
    if (h->type == EVENT_ORDER_CREATED && r->status == INV_RES_REJECTED) {
        st = event_init_caused(&h->out, EVENT_INVENTORY_FAILED, e, INVENTORY_PRODUCER);
        choreo_events_v1_InventoryFailed *f = &h->out.payload.inventory_failed;
        COPY(f->sku, r->short_sku);
        f->requested = r->requested;
        f->available = r->available;
        inv_text_copy(f->reason, sizeof f->reason, r->reason);
        snprintf(note, note_cap, "%s%s", pre, f->reason);
    } else if (h->type == EVENT_ORDER_CREATED) {
        st = event_init_caused(&h->out, EVENT_INVENTORY_RESERVED, e, INVENTORY_PRODUCER);
        choreo_events_v1_InventoryReserved *v = &h->out.payload.inventory_reserved;
        COPY(v->customer_id, r->customer_id);
        v->total_cents = r->total_cents;
        v->units = r->units;
        snprintf(note, note_cap, "%sreserved %" PRIu32 " units", pre, r->units);
    } else if (r->status == INV_RES_RELEASED) {
        st = event_init_caused(&h->out, EVENT_INVENTORY_RELEASED, e, INVENTORY_PRODUCER);
        choreo_events_v1_InventoryReleased *v = &h->out.payload.inventory_released;
        v->units = r->units;
        v->restocked = r->restocked;
        inv_text_copy(v->reason, sizeof v->reason, r->reason);
        snprintf(note, note_cap, "%s%s %" PRIu32 " units", pre, r->was_committed ? "restocked" : "released",
                 r->units);
    } else {
        snprintf(note, note_cap, "nothing to release: reservation %s", inv_res_status_name(r->status));
        return CH_OK;
    }
    *publish = st == CH_OK;
    return st;
}

/* ledger_decide_batch's decide: item i of the staged batch, decided in the
 * core; the entry to record (if any) is encoded into buf. Under mu. */
static ch_status decide_item(size_t i, void *ctx, uint8_t *buf, size_t cap, size_t *len)
{
    inventory_handler *h = ctx;
    bus_staged *it = &h->batch[i];
    ch_status st;

    *len = 0;
    h->outcome[i] = INV_NOOP;
    st = event_decode(it->msg->data, it->msg->len, &h->in, it->reason, sizeof it->reason);
    if (st == CH_OK)
        st = handler_decide(h, &h->in, &h->outcome[i], it->reason, sizeof it->reason);
    if (st != CH_OK || h->outcome[i] != INV_APPEND)
        return st;
    return inventory_encode(h->svc, &h->d.entry, buf, cap, len);
}

/* The bus flush: decides the batch in the core, records every decision in
 * one ledger message, then publishes the event each decision implies (each
 * incoming event is acked once its outgoing one is stored). */
static void flush_batch(bus_staged *items, size_t n, void *ctx)
{
    inventory_handler *h = ctx;
    inventory_service *svc = h->svc;
    int timeout = svc->cfg ? svc->cfg->publish_timeout_ms : 5000;

    pthread_mutex_lock(&svc->mu);
    h->batch = items;
    for (size_t i = 0; i < n; i++)
        h->outcome[i] = INV_NOOP;
    ledger_decide_batch(svc->ledger, n, decide_item, h, h->status, timeout); /* statuses per item */
    for (size_t i = 0; i < n; i++) {
        bus_staged *it = &items[i];
        bool publish = false;
        ch_status ist = h->status[i];
        char why[BUS_REASON_MAX];

        /* decoded again for its order id and what its decision implies */
        if (event_decode(it->msg->data, it->msg->len, &h->in, why, sizeof why) != CH_OK && ist == CH_OK)
            ist = CH_INTERNAL; /* decoded before, so it cannot fail now */
        if (ist == CH_OK)
            ist = handler_outgoing(h, &h->in, h->outcome[i] == INV_DECIDED, &publish, it->reason,
                                   sizeof it->reason);
        if (h->outcome[i] == INV_NOOP)
            publish = false; /* nothing was decided, so nothing is implied */
        if (ist == CH_OK && publish && (ist = event_publish_deferred(it->msg, &h->out)) != CH_OK)
            snprintf(it->reason, sizeof it->reason, "publish %s: %s", h->out.type, ch_status_str(ist));
        switch (ist) {
        case CH_OK: it->verdict = BUS_ACK; break;
        case CH_INVALID_ARGUMENT:
            if (!it->reason[0])
                snprintf(it->reason, sizeof it->reason, "ledger: %s", ch_status_str(ist));
            it->verdict = BUS_DEAD; /* the reason names the field */
            break;
        case CH_NOT_FOUND:
            snprintf(it->reason, sizeof it->reason, "no reservation for order %s (yet)", h->in.order_id);
            it->verdict = BUS_RETRY;
            break;
        default:
            if (!publish || !it->reason[0])
                snprintf(it->reason, sizeof it->reason, "ledger: %s", ch_status_str(ist));
            it->verdict = BUS_RETRY;
            break;
        }
    }
    h->batch = NULL;
    pthread_mutex_unlock(&svc->mu);
}

static const event_type consumed[INVENTORY_WORKERS] = {
    EVENT_ORDER_CREATED,
    EVENT_PAYMENT_PROCESSED,
    EVENT_PAYMENT_FAILED,
    EVENT_ORDER_CANCEL_REQUESTED,
};

ch_status inventory_workers_start(inventory_service *svc)
{
    ch_status st = CH_OK;

    for (size_t i = 0; i < INVENTORY_WORKERS && st == CH_OK; i++) {
        inventory_handler *h = calloc(1, sizeof *h);
        if (!h) {
            st = CH_NO_MEMORY;
            break;
        }
        h->svc = svc;
        h->type = consumed[i];
        svc->handlers[i] = h;
        event_worker_spec spec = {
            .service = INVENTORY_PRODUCER,
            .type = consumed[i],
            .flush = flush_batch, /* no handler: every event is decided in its batch */
            .ctx = h,
            .batch = INVENTORY_BATCH,
        };
        st = event_worker_start(svc->bus, &spec, &svc->workers[i]);
    }
    if (st != CH_OK)
        inventory_workers_stop(svc);
    return st;
}

void inventory_workers_stop(inventory_service *svc)
{
    event_workers_stop(svc->workers, INVENTORY_WORKERS);
    for (size_t i = 0; i < INVENTORY_WORKERS; i++) {
        free(svc->handlers[i]);
        svc->handlers[i] = NULL;
    }
}
