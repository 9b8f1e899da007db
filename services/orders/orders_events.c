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
    out->event_id = env->event_id;
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

/* An order.created on its way to the stream, and what folding it in needs. */
typedef struct created_pending {
    orders_service *svc;
    orders_created_fn fn;
    void *arg;
    int64_t time_ms;
    char id[ORDER_ID_MAX + 1];
    char customer_id[ORDER_CUSTOMER_MAX + 1];
    char key[ORDER_IDEMPOTENCY_KEY_MAX + 1];
    size_t n_items;
    order_item items[]; /* n_items */
} created_pending;

/* PubAck of an order.created (cnats thread): fold it in, tell the caller. */
static void on_created_stored(ch_status st, const bus_pub_ack *ack, void *arg)
{
    created_pending *p = arg;
    bool changed;

    if (st == CH_OK) {
        order_event e = {
            .kind = ORDER_EV_CREATED,
            .order_id = p->id,
            .seq = ack->seq,
            .time_ms = p->time_ms,
            .customer_id = p->customer_id,
            .items = p->items,
            .n_items = p->n_items,
            .idempotency_key = p->key[0] ? p->key : NULL,
        };
        pthread_mutex_lock(&p->svc->mu);
        st = order_store_apply(p->svc->store, &e, NULL, &changed);
        pthread_mutex_unlock(&p->svc->mu);
    }
    /* replayed: not !changed, the follower may have folded it in first */
    p->fn(st, st == CH_OK && ack->duplicate, p->arg);
    free(p);
}

ch_status orders_append_created(orders_service *svc, const orders_new *n, orders_created_fn fn, void *arg)
{
    choreo_events_v1_Envelope envelope; /* ~9 KB on a thread stack of 8 MB; a malloc per order costs more */
    choreo_events_v1_Envelope *env = &envelope;
    created_pending *p = malloc(sizeof *p + n->req.n_items * sizeof *p->items);
    ch_status st = p ? created_envelope(n, env) : CH_NO_MEMORY;

    if (st == CH_OK) {
        *p = (created_pending){.svc = svc, .fn = fn, .arg = arg, .n_items = n->req.n_items};
        p->time_ms = (int64_t)(env->occurred_at_unix_ns / 1000000);
        snprintf(p->id, sizeof p->id, "%s", n->id);
        snprintf(p->customer_id, sizeof p->customer_id, "%s", n->req.customer_id);
        snprintf(p->key, sizeof p->key, "%s", n->req.idempotency_key ? n->req.idempotency_key : "");
        memcpy(p->items, n->req.items, n->req.n_items * sizeof *p->items);
        st = event_publish_cb(svc->bus, env, on_created_stored, p);
    }
    if (st != CH_OK)
        free(p); /* its callback will not run */
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
        log_warn("event not folded into the store", "subject", m->subject, "seq", seq, "reason", reason,
                 NULL);
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

/* Folds every event of the stream matching filter into the store; the
 * caller holds mu. */
static ch_status replay_into_store(orders_service *svc, const char *filter, rebuild_ctx **out, uint64_t *last)
{
    rebuild_ctx *rc = calloc(1, sizeof *rc);

    if (!rc)
        return CH_NO_MEMORY;
    rc->svc = svc;
    ch_status st = bus_replay(svc->bus, EVENT_STREAM, filter, 1, rebuild_one, rc, last);
    if (out)
        *out = rc;
    else
        free(rc);
    return st;
}

ch_status orders_rebuild(orders_service *svc, uint64_t *events_read)
{
    rebuild_ctx *rc = NULL;

    pthread_mutex_lock(&svc->mu);
    ch_status st = replay_into_store(svc, "events.>", &rc, &svc->rebuilt_to);
    pthread_mutex_unlock(&svc->mu);
    if (!rc)
        return st;
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

/* ---- the saga: reacting to other services' events ---- */

/* What a reaction needs from the order, copied under the lock. */
typedef struct reaction {
    order_reaction what;
    char customer_id[ORDER_CUSTOMER_MAX + 1];
    int64_t total_cents;
    char reason[ORDER_REASON_MAX + 1];
} reaction;

/* Publishes the reaction, deferred: the incoming event is acked once it is
 * stored. The store learns it is published when the follower folds it in;
 * until then a redelivery publishes it again, which JetStream drops by its
 * message id. */
static ch_status publish_reaction(const reaction *r, const bus_in_msg *m,
                                  const choreo_events_v1_Envelope *cause)
{
    choreo_events_v1_Envelope envelope; /* ~9 KB on the worker's stack: no malloc per event */
    choreo_events_v1_Envelope *out = &envelope;
    event_type t = r->what == ORDER_REACT_CONFIRM ? EVENT_ORDER_CONFIRMED : EVENT_ORDER_CANCELLED;
    ch_status st = event_init_caused(out, t, cause, ORDERS_PRODUCER);
    if (st == CH_OK && t == EVENT_ORDER_CONFIRMED) {
        snprintf(out->payload.order_confirmed.customer_id, sizeof out->payload.order_confirmed.customer_id,
                 "%s", r->customer_id);
        out->payload.order_confirmed.total_cents = r->total_cents;
    } else if (st == CH_OK) {
        snprintf(out->payload.order_cancelled.customer_id, sizeof out->payload.order_cancelled.customer_id,
                 "%s", r->customer_id);
        snprintf(out->payload.order_cancelled.reason, sizeof out->payload.order_cancelled.reason, "%s",
                 r->reason);
    }
    if (st == CH_OK)
        st = event_publish_deferred(m, out);
    return st;
}

static bus_verdict on_saga_event(const choreo_events_v1_Envelope *e, const bus_in_msg *m, void *ctx,
                                 char *why, size_t why_cap)
{
    orders_service *svc = ctx;
    const order *o = NULL;
    order_event ev;
    reaction r = {0};
    bool changed;

    if (orders_event_from_envelope(e, m->stream_seq, &ev, NULL) != CH_OK) {
        snprintf(why, why_cap, "payload of %s is not usable", e->type);
        return BUS_DEAD;
    }
    pthread_mutex_lock(&svc->mu);
    ch_status st = order_store_apply(svc->store, &ev, &o, &changed);
    if (st == CH_OK) {
        r.what = order_reaction_to(o, e->event_id);
        snprintf(r.customer_id, sizeof r.customer_id, "%s", o->customer_id);
        r.total_cents = o->total_cents;
        snprintf(r.reason, sizeof r.reason, "%s", o->reason ? o->reason : "");
    } else if (st == CH_FAILED_PRECONDITION) {
        snprintf(why, why_cap, "%s contradicts what order %s recorded before (it is %s)", e->type, e->order_id,
                 order_status_name(o ? o->status : ORDER_UNSPECIFIED));
    } else {
        snprintf(why, why_cap, "cannot apply: %s", ch_status_str(st));
    }
    pthread_mutex_unlock(&svc->mu);

    if (st == CH_NOT_FOUND) {
        /* Its order.created is not folded in here yet (the store keeps the
         * step meanwhile): the follower brings it (also from other
         * replicas) before the retry. */
        snprintf(why, why_cap, "no order %s (yet)", e->order_id);
        return BUS_RETRY;
    }
    if (st == CH_FAILED_PRECONDITION)
        return BUS_DEAD; /* no redelivery can make it fit */
    if (st != CH_OK)
        return BUS_RETRY;
    if (r.what == ORDER_REACT_NONE)
        return BUS_ACK;
    st = publish_reaction(&r, m, e);
    if (st != CH_OK) {
        snprintf(why, why_cap, "reaction not published: %s", ch_status_str(st));
        return BUS_RETRY;
    }
    return BUS_ACK;
}

ch_status orders_events_start(orders_service *svc)
{
    rebuild_ctx *fc = calloc(1, sizeof *fc);
    if (!fc)
        return CH_NO_MEMORY;
    fc->svc = svc;
    svc->follow_ctx = fc;
    /* the follower folds each new event in, holding mu around each batch */
    ch_status fst = bus_follow_start_locked(svc->bus, EVENT_STREAM, "events.>", svc->rebuilt_to + 1,
                                            rebuild_one, fc, &svc->mu, &svc->follower);
    if (fst != CH_OK)
        return fst;
    static const event_type consumed[ORDERS_CONSUMED] = {
        EVENT_INVENTORY_RESERVED, EVENT_INVENTORY_FAILED,   EVENT_PAYMENT_PROCESSED,
        EVENT_PAYMENT_FAILED,     EVENT_INVENTORY_RELEASED, EVENT_PAYMENT_REFUNDED,
    };
    for (int i = 0; i < ORDERS_CONSUMED; i++) {
        event_worker_spec spec = {
            .service = ORDERS_PRODUCER, .type = consumed[i], .handler = on_saga_event, .ctx = svc};
        ch_status st = event_worker_start(svc->bus, &spec, &svc->workers[i]);
        if (st != CH_OK)
            return st;
    }
    return CH_OK;
}

void orders_events_stop(orders_service *svc)
{
    event_workers_stop(svc->workers, ORDERS_CONSUMED);
    bus_follow_stop(svc->follower);
    svc->follower = NULL;
    free(svc->follow_ctx);
    svc->follow_ctx = NULL;
}

/* ---- customer cancel ---- */

ch_status orders_append_cancel(orders_service *svc, const char *order_id, const char *reason,
                               const char *traceparent, const char *causation_id, int timeout_ms, char *err,
                               size_t errlen)
{
    choreo_events_v1_Envelope *env = NULL;
    bus_pub_ack ack = {0};
    order_event ev;
    bool changed;
    ch_status st;

    pthread_mutex_lock(&svc->mu);
    const order *o = order_store_get(svc->store, order_id);
    if (!o) {
        pthread_mutex_unlock(&svc->mu);
        snprintf(err, errlen, "order_id: no order %s", order_id);
        return CH_NOT_FOUND;
    }
    st = order_check_cancel(o, err, errlen);
    if (st != CH_OK) {
        pthread_mutex_unlock(&svc->mu);
        return st == CH_ALREADY_EXISTS ? CH_OK : st;
    }
    env = malloc(sizeof *env);
    if (!env) {
        pthread_mutex_unlock(&svc->mu);
        return CH_NO_MEMORY;
    }
    st = event_init(env, EVENT_ORDER_CANCEL_REQUESTED, order_id, causation_id, ORDERS_PRODUCER, traceparent);
    choreo_events_v1_OrderCancelRequested *c = &env->payload.order_cancel_requested;
    snprintf(c->customer_id, sizeof c->customer_id, "%s", o->customer_id);
    c->total_cents = o->total_cents;
    snprintf(c->reason, sizeof c->reason, "%s", reason && reason[0] ? reason : "cancelled by the customer");
    pthread_mutex_unlock(&svc->mu);

    if (st == CH_OK)
        st = event_publish(svc->bus, env, timeout_ms, &ack);
    if (st == CH_OK) {
        ev = (order_event){.kind = ORDER_EV_CANCEL_REQUESTED,
                           .order_id = order_id,
                           .seq = ack.seq,
                           .time_ms = env->occurred_at_unix_ns / 1000000,
                           .reason = c->reason};
        pthread_mutex_lock(&svc->mu);
        st = order_store_apply(svc->store, &ev, NULL, &changed);
        pthread_mutex_unlock(&svc->mu);
    }
    free(env);
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
    event_summary(&hc->env, h->summary, sizeof h->summary);
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
