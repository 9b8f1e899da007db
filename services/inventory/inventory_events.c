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

/* The ledger's apply function; runs under mu (inside ledger_open, _append
 * or _catch_up, which the service only calls holding it). */
static ch_status ledger_apply(const uint8_t *data, size_t len, uint64_t seq, void *ctx)
{
    inventory_service *svc = ctx;
    inventory_scratch *sc = svc->scratch;
    pb_istream_t in = pb_istream_from_buffer(data, len);
    inv_entry e;

    (void)seq;
    memset(&sc->pb, 0, sizeof sc->pb);
    if (!pb_decode(&in, choreo_ledger_v1_InventoryEntry_fields, &sc->pb)) {
        log_warn("ledger entry undecodable", "error", PB_GET_ERROR(&in), NULL);
        return CH_INVALID_ARGUMENT;
    }
    if (entry_from_pb(&sc->pb, &e, sc->lines) != CH_OK)
        return CH_INVALID_ARGUMENT;
    return inv_apply(svc->store, &e, NULL);
}

ch_status inventory_append(inventory_service *svc, const inv_entry *e, const char *msg_id, int timeout_ms)
{
    inventory_scratch *sc = svc->scratch;

    entry_to_pb(e, &sc->pb);
    pb_ostream_t out = pb_ostream_from_buffer(sc->buf, sizeof sc->buf);
    if (!pb_encode(&out, choreo_ledger_v1_InventoryEntry_fields, &sc->pb)) {
        log_error("ledger entry not encoded", "error", PB_GET_ERROR(&out), NULL);
        return CH_INTERNAL;
    }
    return ledger_append(svc->ledger, sc->buf, out.bytes_written, msg_id, timeout_ms, NULL);
}

ch_status inventory_ledger_open(inventory_service *svc)
{
    ledger_spec spec = {
        .stream = INVENTORY_LEDGER_STREAM,
        .subject = INVENTORY_LEDGER_SUBJECT,
        .replicas = svc->cfg ? svc->cfg->stream_replicas : 1,
        .apply = ledger_apply,
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
    choreo_events_v1_Envelope out; /* the event to publish; one event at a time per worker */
};

/* Decides on e in the core (under mu). Fills the ledger msg id. */
static ch_status handler_decide(inventory_handler *h, const choreo_events_v1_Envelope *e, inv_outcome *out,
                                char *msg_id, size_t msg_id_cap, char *err, size_t errlen)
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
        snprintf(msg_id, msg_id_cap, "%s:reservation", e->order_id);
        return inv_decide_reserve(s, &r, &h->d, out, err, errlen);
    }
    case EVENT_PAYMENT_PROCESSED:
        snprintf(msg_id, msg_id_cap, "%s:commit", e->order_id);
        return inv_decide_commit(s, e->order_id, e->event_id, &h->d, out);
    case EVENT_PAYMENT_FAILED:
        snprintf(msg_id, msg_id_cap, "%s:release", e->order_id);
        return inv_decide_release(s, e->order_id, false, e->payload.payment_failed.reason, e->event_id, &h->d,
                                  out);
    case EVENT_ORDER_CANCEL_REQUESTED:
        snprintf(msg_id, msg_id_cap, "%s:release", e->order_id);
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

static bus_verdict on_event(const choreo_events_v1_Envelope *e, const bus_in_msg *m, void *ctx, char *reason,
                            size_t reason_cap)
{
    inventory_handler *h = ctx;
    inventory_service *svc = h->svc;
    int timeout = svc->cfg ? svc->cfg->publish_timeout_ms : 5000;
    char msg_id[INV_ORDER_ID_MAX + 32];
    inv_outcome out = INV_NOOP;
    bool caught_up = false, publish = false;
    int attempts = 0;
    ch_status st;

    pthread_mutex_lock(&svc->mu);
    for (;;) {
        st = handler_decide(h, e, &out, msg_id, sizeof msg_id, reason, reason_cap);
        if (st == CH_NOT_FOUND && !caught_up) {
            /* Another replica may have reserved it: learn its entries, look again. */
            caught_up = true;
            st = ledger_catch_up(svc->ledger);
            if (st == CH_OK)
                continue;
        }
        if (st != CH_OK || out != INV_APPEND)
            break;
        st = inventory_append(svc, &h->d.entry, msg_id, timeout);
        if (st != CH_CONFLICT || ++attempts >= INVENTORY_CAS_ATTEMPTS)
            break;
    }
    if (st == CH_OK)
        st = handler_outgoing(h, e, out == INV_DECIDED, &publish, reason, reason_cap);
    if (out == INV_NOOP)
        publish = false; /* nothing was decided, so nothing is implied */
    pthread_mutex_unlock(&svc->mu);

    switch (st) {
    case CH_OK: break;
    case CH_INVALID_ARGUMENT:
        if (!reason[0])
            snprintf(reason, reason_cap, "ledger: %s", ch_status_str(st));
        return BUS_DEAD; /* reason names the field */
    case CH_NOT_FOUND:
        snprintf(reason, reason_cap, "no reservation for order %s (yet)", e->order_id);
        return BUS_RETRY;
    case CH_CONFLICT:
        snprintf(reason, reason_cap, "ledger: compare-and-set lost %d times", attempts);
        return BUS_RETRY;
    default: snprintf(reason, reason_cap, "ledger: %s", ch_status_str(st)); return BUS_RETRY;
    }
    if (publish) {
        /* The decision is durable; now the event it implies. A crash or a
         * failure here means a redelivery, which publishes it again. */
        st = event_publish_deferred(m, &h->out); /* acked once stored */
        if (st != CH_OK) {
            snprintf(reason, reason_cap, "publish %s: %s", h->out.type, ch_status_str(st));
            return BUS_RETRY;
        }
    }
    return BUS_ACK;
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
            .handler = on_event,
            .ctx = h,
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
