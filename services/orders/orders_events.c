/* orders_events.c: the orders service's event adapter: envelopes to core
 * events and back, appending to the stream, rebuilding from it. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event_bus.h"
#include "log.h"
#include "orders.h"

static void items_from_envelope(const choreo_events_v1_OrderCreated *c, order_item *items)
{
    for (pb_size_t i = 0; i < c->items_count; i++) {
        snprintf(items[i].sku, sizeof items[i].sku, "%s", c->items[i].sku);
        items[i].quantity = c->items[i].quantity;
        items[i].unit_price_cents = c->items[i].unit_price_cents;
    }
}

ch_status orders_event_from_envelope(const choreo_events_v1_Envelope *env, uint64_t seq, order_event *out,
                                     order_item *items_buf)
{
    event_type t;

    if (event_type_of(env, &t) != CH_OK)
        return CH_INVALID_ARGUMENT;
    memset(out, 0, sizeof *out);
    out->order_id = env->order_id;
    out->seq = seq;
    out->time_ms = env->occurred_at_unix_ns / 1000000;
    switch (t) {
    case EVENT_ORDER_CREATED: {
        const choreo_events_v1_OrderCreated *c = &env->payload.order_created;
        if (c->items_count == 0 || c->items_count > ORDER_ITEMS_MAX)
            return CH_INVALID_ARGUMENT;
        items_from_envelope(c, items_buf);
        out->kind = ORDER_EV_CREATED;
        out->customer_id = c->customer_id;
        out->items = items_buf;
        out->n_items = c->items_count;
        out->idempotency_key = c->idempotency_key;
        return CH_OK;
    }
    case EVENT_INVENTORY_RESERVED: out->kind = ORDER_EV_INVENTORY_RESERVED; return CH_OK;
    case EVENT_INVENTORY_FAILED:
        out->kind = ORDER_EV_INVENTORY_FAILED;
        out->reason = env->payload.inventory_failed.reason;
        return CH_OK;
    case EVENT_PAYMENT_PROCESSED: out->kind = ORDER_EV_PAYMENT_PROCESSED; return CH_OK;
    case EVENT_PAYMENT_FAILED:
        out->kind = ORDER_EV_PAYMENT_FAILED;
        out->reason = env->payload.payment_failed.reason;
        return CH_OK;
    case EVENT_INVENTORY_RELEASED: out->kind = ORDER_EV_INVENTORY_RELEASED; return CH_OK;
    case EVENT_ORDER_CONFIRMED: out->kind = ORDER_EV_CONFIRMED; return CH_OK;
    case EVENT_ORDER_CANCEL_REQUESTED:
        out->kind = ORDER_EV_CANCEL_REQUESTED;
        out->reason = env->payload.order_cancel_requested.reason;
        return CH_OK;
    case EVENT_PAYMENT_REFUNDED: out->kind = ORDER_EV_PAYMENT_REFUNDED; return CH_OK;
    case EVENT_ORDER_CANCELLED:
        out->kind = ORDER_EV_CANCELLED;
        out->reason = env->payload.order_cancelled.reason;
        return CH_OK;
    case EVENT_NOTIFICATION_SENT: out->kind = ORDER_EV_OTHER; return CH_OK;
    case EVENT_TYPE_COUNT: break;
    }
    return CH_INVALID_ARGUMENT;
}

/* Fills an order.created envelope from a checked request. */
static ch_status created_envelope(const orders_new *n, choreo_events_v1_Envelope *env)
{
    ch_status st =
        event_init(env, EVENT_ORDER_CREATED, n->id, n->causation_id, ORDERS_PRODUCER, n->traceparent);
    if (st != CH_OK)
        return st;
    choreo_events_v1_OrderCreated *c = &env->payload.order_created;
    snprintf(c->customer_id, sizeof c->customer_id, "%s", n->req.customer_id);
    if (n->req.idempotency_key)
        snprintf(c->idempotency_key, sizeof c->idempotency_key, "%s", n->req.idempotency_key);
    c->items_count = (pb_size_t)n->req.n_items;
    for (size_t i = 0; i < n->req.n_items; i++) {
        snprintf(c->items[i].sku, sizeof c->items[i].sku, "%s", n->req.items[i].sku);
        c->items[i].quantity = n->req.items[i].quantity;
        c->items[i].unit_price_cents = n->req.items[i].unit_price_cents;
    }
    c->total_cents = order_total(n->req.items, n->req.n_items);
    return CH_OK;
}

ch_status orders_append_created(orders_service *svc, const orders_new *n, int timeout_ms, bool *replayed)
{
    choreo_events_v1_Envelope env;
    bus_pub_ack ack = {0};
    order_event e;
    bool changed;
    ch_status st;

    *replayed = false;
    st = created_envelope(n, &env);
    if (st != CH_OK)
        return st;
    st = event_publish(svc->bus, &env, timeout_ms, &ack);
    if (st != CH_OK)
        return st;

    e = (order_event){
        .kind = ORDER_EV_CREATED,
        .order_id = n->id,
        .seq = ack.seq,
        .time_ms = env.occurred_at_unix_ns / 1000000,
        .customer_id = n->req.customer_id,
        .items = n->req.items,
        .n_items = n->req.n_items,
        .idempotency_key = n->req.idempotency_key,
    };
    pthread_mutex_lock(&svc->mu);
    st = order_store_apply(svc->store, &e, NULL, &changed);
    pthread_mutex_unlock(&svc->mu);
    *replayed = ack.duplicate || !changed;
    return st;
}

typedef struct rebuild_ctx {
    orders_service *svc;
    uint64_t events;
    uint64_t skipped;
    choreo_events_v1_Envelope env; /* big: kept off the stack */
    order_item items[ORDER_ITEMS_MAX];
} rebuild_ctx;

static ch_status rebuild_one(const bus_in_msg *m, void *arg)
{
    rebuild_ctx *rc = arg;
    char reason[160];
    order_event e;
    bool changed;

    rc->events++;
    if (event_decode(m->data, m->len, &rc->env, reason, sizeof reason) != CH_OK ||
        orders_event_from_envelope(&rc->env, m->stream_seq, &e, rc->items) != CH_OK) {
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, m->stream_seq);
        log_warn("rebuild: event skipped", "subject", m->subject, "seq", seq, "reason", reason, NULL);
        rc->skipped++;
        return CH_OK;
    }
    ch_status st = order_store_apply(rc->svc->store, &e, NULL, &changed);
    if (st == CH_NO_MEMORY)
        return st;
    if (st != CH_OK)
        rc->skipped++; /* events of orders this stream never created, or out of order: nothing to fold */
    return CH_OK;
}

ch_status orders_rebuild(orders_service *svc, uint64_t *events_read)
{
    rebuild_ctx *rc = calloc(1, sizeof *rc);
    uint64_t last = 0;
    ch_status st;

    if (!rc)
        return CH_NO_MEMORY;
    rc->svc = svc;
    pthread_mutex_lock(&svc->mu);
    st = bus_replay(svc->bus, EVENT_STREAM, "events.>", 1, rebuild_one, rc, &last);
    pthread_mutex_unlock(&svc->mu);
    if (events_read)
        *events_read = rc->events;
    if (st == CH_OK) {
        char events[24], orders[24], skipped[24];
        snprintf(events, sizeof events, "%" PRIu64, rc->events);
        snprintf(orders, sizeof orders, "%zu", order_store_count(svc->store));
        snprintf(skipped, sizeof skipped, "%" PRIu64, rc->skipped);
        log_info("orders rebuilt from the event stream", "events", events, "orders", orders, "skipped",
                 skipped, NULL);
    }
    free(rc);
    return st;
}

/* ---- history ---- */

typedef struct history_ctx {
    orders_history_entry *out;
    size_t cap, n;
    order folded;
    choreo_events_v1_Envelope env;
    order_item items[ORDER_ITEMS_MAX];
} history_ctx;

static void summarize(const choreo_events_v1_Envelope *env, char *buf, size_t cap)
{
    event_type t = EVENT_TYPE_COUNT;
    event_type_of(env, &t);
    switch (t) {
    case EVENT_ORDER_CREATED:
        snprintf(buf, cap, "%u items, total %" PRId64 " cents, customer %s",
                 (unsigned)env->payload.order_created.items_count, env->payload.order_created.total_cents,
                 env->payload.order_created.customer_id);
        break;
    case EVENT_INVENTORY_RESERVED:
        snprintf(buf, cap, "reserved %u units", (unsigned)env->payload.inventory_reserved.units);
        break;
    case EVENT_INVENTORY_FAILED: snprintf(buf, cap, "%s", env->payload.inventory_failed.reason); break;
    case EVENT_PAYMENT_PROCESSED:
        snprintf(buf, cap, "charged %" PRId64 " cents", env->payload.payment_processed.amount_cents);
        break;
    case EVENT_PAYMENT_FAILED: snprintf(buf, cap, "%s", env->payload.payment_failed.reason); break;
    case EVENT_INVENTORY_RELEASED:
        snprintf(buf, cap, "%s %u units",
                 env->payload.inventory_released.restocked ? "restocked" : "released",
                 (unsigned)env->payload.inventory_released.units);
        break;
    case EVENT_PAYMENT_REFUNDED:
        snprintf(buf, cap, "refunded %" PRId64 " cents", env->payload.payment_refunded.amount_cents);
        break;
    case EVENT_ORDER_CANCEL_REQUESTED:
    case EVENT_ORDER_CANCELLED:
        snprintf(buf, cap, "%s",
                 t == EVENT_ORDER_CANCELLED ? env->payload.order_cancelled.reason
                                            : env->payload.order_cancel_requested.reason);
        break;
    case EVENT_NOTIFICATION_SENT:
        snprintf(buf, cap, "notified %s", env->payload.notification_sent.customer_id);
        break;
    default: buf[0] = '\0';
    }
}

static ch_status history_one(const bus_in_msg *m, void *arg)
{
    history_ctx *hc = arg;
    order_event e;
    bool changed;

    if (hc->n == hc->cap)
        return CH_RESOURCE_EXHAUSTED;
    if (event_decode(m->data, m->len, &hc->env, NULL, 0) != CH_OK ||
        orders_event_from_envelope(&hc->env, m->stream_seq, &e, hc->items) != CH_OK)
        return CH_OK; /* poison in the stream is the dead-letter path's business, not history's */
    order_apply(&hc->folded, &e, &changed);

    orders_history_entry *h = &hc->out[hc->n++];
    memset(h, 0, sizeof *h);
    h->seq = m->stream_seq;
    snprintf(h->event_id, sizeof h->event_id, "%s", hc->env.event_id);
    snprintf(h->type, sizeof h->type, "%s", hc->env.type);
    snprintf(h->causation_id, sizeof h->causation_id, "%s", hc->env.causation_id);
    snprintf(h->producer, sizeof h->producer, "%s", hc->env.producer);
    h->occurred_at_ns = hc->env.occurred_at_unix_ns;
    h->status_after = hc->folded.status;
    summarize(&hc->env, h->summary, sizeof h->summary);
    return CH_OK;
}

ch_status orders_history(orders_service *svc, const char *order_id, orders_history_entry *out, size_t cap,
                         size_t *n)
{
    char filter[EVENT_SUBJECT_MAX];
    history_ctx *hc;
    ch_status st;

    *n = 0;
    if (snprintf(filter, sizeof filter, "events.*.*.%s", order_id) >= (int)sizeof filter)
        return CH_INVALID_ARGUMENT;
    hc = calloc(1, sizeof *hc);
    if (!hc)
        return CH_NO_MEMORY;
    hc->out = out;
    hc->cap = cap;
    st = bus_replay(svc->bus, EVENT_STREAM, filter, 1, history_one, hc, NULL);
    if (st == CH_RESOURCE_EXHAUSTED)
        st = CH_OK; /* the first cap entries */
    *n = hc->n;
    order_clear(&hc->folded);
    free(hc);
    if (st == CH_OK && *n == 0)
        return CH_NOT_FOUND;
    return st;
}
