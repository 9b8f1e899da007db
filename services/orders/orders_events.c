/* orders_events.c: the orders service's event adapter and its writer:
 * envelopes to core events, its own stream folded in, the other services'
 * steps followed, the outcomes they make due published. */
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
    out->event_id = env->event_id;
    out->traceparent = env->traceparent;
    out->seq = seq;
    out->time_ms = env->occurred_at_unix_ns / 1000000;
    switch (t) {
    case EVENT_ORDER_CREATED: {
        const choreo_events_v1_OrderCreated *c = &env->payload.order_created;
        if (c->items_count == 0 || c->items_count > ORDER_ITEMS_MAX || !items_buf)
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
    case EVENT_INVENTORY_COMMITTED:
    case EVENT_INVENTORY_STOCK_SET:
    case EVENT_INVENTORY_STOCK_ADJUSTED:
    case EVENT_PAYMENT_CREDITED: return CH_NOT_FOUND; /* no step of an order's saga */
    case EVENT_TYPE_COUNT: break;
    }
    return CH_INVALID_ARGUMENT;
}

/* ---- the own stream ---- */

static ch_status fold(void *ctx, const choreo_events_v1_Envelope *env, uint64_t seq)
{
    orders_service *svc = ctx;
    order_event e;
    bool changed;
    ch_status st = orders_event_from_envelope(env, seq, &e, svc->items);

    if (st == CH_OK)
        st = order_store_apply(svc->store, &e, NULL, &changed);
    if (st != CH_OK && st != CH_NO_MEMORY)
        svc->skipped++; /* the writer logs it */
    return st;
}

static void undo(void *ctx, const void *data, size_t len)
{
    orders_service *svc = ctx;
    ch_status st = len == sizeof(order_undo) ? order_store_undo(svc->store, data) : CH_INVALID_ARGUMENT;

    if (st != CH_OK)
        log_error("order decision not undone", "status", ch_status_str(st), NULL);
}

ch_status orders_record(orders_service *svc, writer *w, const choreo_events_v1_Envelope *env)
{
    order_event e;
    order_undo u;
    bool changed = false;
    ch_status st = orders_event_from_envelope(env, 0, &e, svc->items);

    if (st != CH_OK)
        return st == CH_NOT_FOUND ? CH_INVALID_ARGUMENT : st;
    const order *o = order_store_get(svc->store, env->order_id);
    order_undo_record(&u, o, env->order_id, e.kind == ORDER_EV_CREATED);
    st = order_store_apply(svc->store, &e, NULL, &changed);
    if (st != CH_OK || !changed)
        return st == CH_OK ? CH_INTERNAL : st; /* decided, so it must change the order */
    st = writer_emit(w, env, &u, sizeof u);
    if (st != CH_OK)
        order_store_undo(svc->store, &u);
    return st;
}

/* Publishes what o's state makes due (order.confirmed, then order.cancelled
 * when both are), caused by the step that made it due. */
static ch_status react(orders_service *svc, writer *w, const order *o)
{
    choreo_events_v1_Envelope env;
    ch_status st = CH_OK;

    for (order_reaction r; st == CH_OK && (r = order_next_reaction(o)) != ORDER_REACT_NONE;) {
        event_type t = r == ORDER_REACT_CONFIRM ? EVENT_ORDER_CONFIRMED : EVENT_ORDER_CANCELLED;
        st = event_init(&env, t, o->id, o->outcome_cause[0] ? o->outcome_cause : NULL, ORDERS_PRODUCER,
                        o->traceparent);
        if (st != CH_OK)
            break;
        if (t == EVENT_ORDER_CONFIRMED) {
            choreo_events_v1_OrderConfirmed *c = &env.payload.order_confirmed;
            snprintf(c->customer_id, sizeof c->customer_id, "%s", o->customer_id);
            c->total_cents = o->total_cents;
        } else {
            choreo_events_v1_OrderCancelled *c = &env.payload.order_cancelled;
            snprintf(c->customer_id, sizeof c->customer_id, "%s", o->customer_id);
            snprintf(c->reason, sizeof c->reason, "%s", o->reason ? o->reason : "");
        }
        st = orders_record(svc, w, &env);
    }
    return st;
}

/* A step of another service, folded in; the outcome it makes due published. */
static ch_status on_step(orders_service *svc, writer *w, writer_input *in)
{
    const order *o = NULL;
    order_event e;
    bool changed;
    ch_status st = orders_event_from_envelope(in->env, in->msg->stream_seq, &e, svc->items);

    if (st == CH_NOT_FOUND || (st == CH_OK && e.kind == ORDER_EV_OTHER))
        return CH_OK; /* no step of an order */
    if (st == CH_OK)
        st = order_store_apply(svc->store, &e, &o, &changed);
    if (st == CH_NOT_FOUND)
        /* kept until its order.created is folded in: another replica
         * created it, perhaps; once caught up, the step waits in the store */
        return in->caught_up ? CH_OK : CH_NOT_FOUND;
    if (st == CH_NO_MEMORY)
        return st;
    if (st != CH_OK) {
        svc->skipped++;
        log_warn("step not folded in", "type", in->env->type, "order_id", in->env->order_id, "event_id",
                 in->env->event_id, "status", ch_status_str(st), NULL);
        return CH_OK;
    }
    return react(svc, w, o);
}

static ch_status decide(void *ctx, writer *w, writer_input *in)
{
    orders_service *svc = ctx;
    return in->kind == WRITER_CALL ? orders_call_decide(svc, w, in) : on_step(svc, w, in);
}

static void finish(void *ctx, writer_input *in, ch_status st)
{
    if (in->kind == WRITER_CALL)
        orders_call_finish(ctx, in, st);
}

ch_status orders_events_start(orders_service *svc)
{
    static const writer_ops ops = {fold, decide, undo, finish};
    writer_spec spec = {
        .service = ORDERS_PRODUCER,
        .stream = EVENT_STREAM_ORDER,
        .ops = &ops,
        .ctx = svc,
        /* the steps of an order's saga; stock, credit and commit events are dropped unread */
        .follows = {{EVENT_STREAM_INVENTORY,
                     {EVENT_INVENTORY_RESERVED, EVENT_INVENTORY_FAILED, EVENT_INVENTORY_RELEASED},
                     3},
                    {EVENT_STREAM_PAYMENT,
                     {EVENT_PAYMENT_PROCESSED, EVENT_PAYMENT_FAILED, EVENT_PAYMENT_REFUNDED},
                     3}},
        .n_follows = 2,
        .publish_timeout_ms = svc->cfg->publish_timeout_ms,
    };
    ch_status st = writer_start(svc->bus, &spec, &svc->writer);
    if (st == CH_OK) {
        char orders[24], skipped[24];
        snprintf(orders, sizeof orders, "%zu", order_store_count(svc->store));
        snprintf(skipped, sizeof skipped, "%" PRIu64, svc->skipped);
        log_info("orders folded from the streams", "orders", orders, "skipped", skipped, NULL);
    }
    return st;
}

void orders_events_stop(orders_service *svc)
{
    writer_destroy(svc->writer);
    svc->writer = NULL;
}

/* ---- history ---- */

typedef struct history_ctx {
    orders_history_entry *out;
    size_t cap, n;
    order folded;
    order_item items[ORDER_ITEMS_MAX];
} history_ctx;

static ch_status history_one(const choreo_events_v1_Envelope *env, const char *stream, uint64_t seq,
                             void *arg)
{
    history_ctx *hc = arg;
    order_event e;
    bool changed;

    (void)stream;
    if (hc->n == hc->cap)
        return CH_RESOURCE_EXHAUSTED;
    ch_status st = orders_event_from_envelope(env, seq, &e, hc->items);
    if (st == CH_OK)
        order_apply(&hc->folded, &e, &changed);
    else if (st != CH_NOT_FOUND)
        return CH_OK; /* poison is the dead-letter path's business, not history's */
    orders_history_entry *h = &hc->out[hc->n++];
    memset(h, 0, sizeof *h);
    h->seq = seq;
    snprintf(h->event_id, sizeof h->event_id, "%s", env->event_id);
    snprintf(h->type, sizeof h->type, "%s", env->type);
    snprintf(h->causation_id, sizeof h->causation_id, "%s", env->causation_id);
    snprintf(h->producer, sizeof h->producer, "%s", env->producer);
    h->occurred_at_ns = env->occurred_at_unix_ns;
    h->status_after = hc->folded.status;
    event_summary(env, h->summary, sizeof h->summary);
    return CH_OK;
}

ch_status orders_history(orders_service *svc, const char *order_id, orders_history_entry *out, size_t cap,
                         size_t *n)
{
    history_ctx *hc = calloc(1, sizeof *hc);
    ch_status st;

    *n = 0;
    if (!hc)
        return CH_NO_MEMORY;
    hc->out = out;
    hc->cap = cap;
    st = event_read_order(svc->bus, order_id, cap, history_one, hc);
    if (st == CH_RESOURCE_EXHAUSTED)
        st = CH_OK; /* the first cap entries */
    *n = hc->n;
    order_clear(&hc->folded);
    free(hc);
    return st;
}
