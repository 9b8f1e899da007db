/* payment_events.c: the payment service's ledger and its event reactions:
 * inventory.reserved -> charge or decline, order.cancel_requested -> refund. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event_bus.h"
#include "event_worker.h"
#include "log.h"
#include "payment.h"

/* ---- the ledger ---- */

/* Folds one stored entry into the state; runs under mu (inside ledger_open,
 * ledger_append or ledger_catch_up). */
static ch_status apply_entry(const uint8_t *data, size_t len, uint64_t seq, void *ctx)
{
    payment_service *svc = ctx;
    pay_entry e;
    ch_status st = payment_entry_decode(data, len, &e);

    if (st == CH_OK)
        st = payment_apply(svc->state, &e, NULL);
    if (st != CH_OK && st != CH_NO_MEMORY) {
        char seq_s[24];
        snprintf(seq_s, sizeof seq_s, "%" PRIu64, seq);
        log_warn("ledger entry refused by the reducer", "seq", seq_s, "order_id", e.order_id, "customer_id",
                 e.customer_id, "status", ch_status_str(st), NULL);
        svc->skipped_entries++;
    }
    return st;
}

/* The ledger's revert function: undoes an entry of a batch that could not
 * be stored. Under mu (inside ledger_decide_batch). */
static ch_status revert_entry(const uint8_t *data, size_t len, void *ctx)
{
    payment_service *svc = ctx;
    pay_entry e;
    ch_status st = payment_entry_decode(data, len, &e);

    return st == CH_OK ? payment_revert(svc->state, &e) : st;
}

ch_status payment_ledger_open(payment_service *svc)
{
    ledger_spec spec = {
        .stream = PAYMENT_LEDGER_STREAM,
        .subject = PAYMENT_LEDGER_SUBJECT,
        .replicas = svc->cfg->stream_replicas,
        .apply = apply_entry,
        .revert = revert_entry,
        .ctx = svc,
        .follow_lock = &svc->mu, /* other replicas' entries reach this one's reads */
    };
    char entries[24], accounts[24], payments[24], skipped[24];
    ch_status st;

    pthread_mutex_lock(&svc->mu);
    st = ledger_open(&svc->ledger, svc->bus, &spec);
    if (st == CH_OK) {
        snprintf(entries, sizeof entries, "%" PRIu64, ledger_last_seq(svc->ledger));
        snprintf(accounts, sizeof accounts, "%zu", payment_account_count(svc->state));
        snprintf(payments, sizeof payments, "%zu", payment_count(svc->state));
        snprintf(skipped, sizeof skipped, "%" PRIu64, svc->skipped_entries);
    }
    pthread_mutex_unlock(&svc->mu);
    if (st != CH_OK) {
        log_error("cannot open the payment ledger", "status", ch_status_str(st), NULL);
        return st;
    }
    log_info("payment state rebuilt from the ledger", "last_seq", entries, "accounts", accounts, "payments",
             payments, "skipped", skipped, NULL);
    return CH_OK;
}

ch_status payment_ledger_append(payment_service *svc, const pay_entry *e, const char *msg_id)
{
    uint8_t buf[PAY_ENTRY_MAX_BYTES];
    size_t len = 0;
    ch_status st = payment_entry_encode(e, buf, sizeof buf, &len);

    if (st != CH_OK)
        return st;
    return ledger_append(svc->ledger, buf, len, msg_id, svc->cfg->publish_timeout_ms, NULL);
}

/* ---- the reactions: decided a batch at a time ---- */

/* One per consumed event type: the worker's batch while it is flushed. */
struct payment_handler {
    payment_service *svc;
    event_type type;               /* inventory.reserved or order.cancel_requested */
    bus_staged *batch;             /* the batch being flushed */
    choreo_events_v1_Envelope in;  /* a staged event, decoded again */
    choreo_events_v1_Envelope out; /* the event its decision implies */
    ch_status status[PAYMENT_BATCH];
    bool again[PAYMENT_BATCH]; /* decided before this delivery */
};

/* ledger_decide_batch's decide: charge or decline (inventory.reserved), or
 * refund (order.cancel_requested), once per order. Under mu. */
static ch_status decide_item(size_t i, void *ctx, uint8_t *buf, size_t cap, size_t *len)
{
    payment_handler *h = ctx;
    bus_staged *it = &h->batch[i];
    const choreo_events_v1_Envelope *env = &h->in;
    pay_entry e;
    ch_status st;

    *len = 0;
    h->again[i] = false;
    st = event_decode(it->msg->data, it->msg->len, &h->in, it->reason, sizeof it->reason);
    if (st != CH_OK)
        return st;
    if (h->type == EVENT_INVENTORY_RESERVED) {
        const choreo_events_v1_InventoryReserved *r = &env->payload.inventory_reserved;
        st = payment_decide_charge(h->svc->state, env->order_id, r->customer_id, r->total_cents,
                                   env->event_id, &e, it->reason, sizeof it->reason);
    } else {
        st = payment_decide_refund(h->svc->state, env->order_id, env->event_id, &e);
    }
    if (st == CH_ALREADY_EXISTS || (h->type != EVENT_INVENTORY_RESERVED && st == CH_FAILED_PRECONDITION)) {
        h->again[i] = st == CH_ALREADY_EXISTS; /* only publish again / nothing to refund */
        it->reason[0] = '\0';
        return CH_OK;
    }
    if (st != CH_OK)
        return st;
    return payment_entry_encode(&e, buf, cap, len);
}

/* Fills h->out with event t for payment p, caused by h->in. */
static ch_status outgoing(payment_handler *h, event_type t, const pay_payment *p)
{
    ch_status st = event_init_caused(&h->out, t, &h->in, PAYMENT_PRODUCER);

    if (st != CH_OK)
        return st;
    switch (t) {
    case EVENT_PAYMENT_PROCESSED:
        snprintf(h->out.payload.payment_processed.customer_id,
                 sizeof h->out.payload.payment_processed.customer_id, "%s", p->customer_id);
        h->out.payload.payment_processed.amount_cents = p->amount_cents;
        break;
    case EVENT_PAYMENT_FAILED:
        snprintf(h->out.payload.payment_failed.customer_id, sizeof h->out.payload.payment_failed.customer_id,
                 "%s", p->customer_id);
        h->out.payload.payment_failed.amount_cents = p->amount_cents;
        h->out.payload.payment_failed.balance_cents = p->balance_cents;
        snprintf(h->out.payload.payment_failed.reason, sizeof h->out.payload.payment_failed.reason, "%s",
                 p->reason);
        break;
    default:
        snprintf(h->out.payload.payment_refunded.customer_id,
                 sizeof h->out.payload.payment_refunded.customer_id, "%s", p->customer_id);
        h->out.payload.payment_refunded.amount_cents = p->amount_cents;
        break;
    }
    return CH_OK;
}

/* After the batch is recorded: the verdict of item i, publishing the event
 * its payment implies (acked once stored). Under mu. */
static bus_verdict settle_item(payment_handler *h, size_t i, ch_status st)
{
    bus_staged *it = &h->batch[i];
    const pay_payment *p = NULL;
    event_type t = EVENT_PAYMENT_REFUNDED;
    char why[BUS_REASON_MAX];

    /* decoded again for its order id and what its decision implies */
    if (event_decode(it->msg->data, it->msg->len, &h->in, why, sizeof why) != CH_OK && st == CH_OK)
        st = CH_INTERNAL; /* decoded before, so it cannot fail now */
    if (st == CH_OK)
        p = payment_get(h->svc->state, h->in.order_id);
    if (h->type == EVENT_ORDER_CANCEL_REQUESTED &&
        (st == CH_NOT_FOUND || (st == CH_OK && !p) || (st == CH_OK && p->status != PAY_REFUNDED))) {
        log_info("nothing to refund", "order_id", h->in.order_id, "event_id", h->in.event_id, "reason",
                 p ? "payment was declined" : "no payment for this order", NULL);
        return BUS_ACK;
    }
    if (st == CH_INVALID_ARGUMENT) {
        if (!it->reason[0])
            snprintf(it->reason, sizeof it->reason, "ledger: %s", ch_status_str(st));
        return BUS_DEAD; /* the reason names the field */
    }
    if (st == CH_OK && !p)
        st = CH_INTERNAL; /* recorded, so it must be in the state */
    if (st != CH_OK) {
        snprintf(it->reason, sizeof it->reason, "ledger: %s", ch_status_str(st));
        return BUS_RETRY;
    }
    if (h->type == EVENT_INVENTORY_RESERVED)
        t = p->status == PAY_DECLINED ? EVENT_PAYMENT_FAILED : EVENT_PAYMENT_PROCESSED;
    st = outgoing(h, t, p);
    if (st == CH_OK)
        st = event_publish_deferred(it->msg, &h->out);
    if (st != CH_OK) {
        snprintf(it->reason, sizeof it->reason, "publish %s: %s", event_type_name(t), ch_status_str(st));
        return st == CH_INVALID_ARGUMENT ? BUS_DEAD : BUS_RETRY;
    }
    if (h->again[i])
        snprintf(it->reason, sizeof it->reason, "decided before: published again");
    return BUS_ACK;
}

/* The bus flush: decides the batch in the core, records every decision in
 * one ledger message, then publishes what each implies. */
static void flush_batch(bus_staged *items, size_t n, void *ctx)
{
    payment_handler *h = ctx;
    payment_service *svc = h->svc;

    pthread_mutex_lock(&svc->mu);
    h->batch = items;
    memset(h->again, 0, n * sizeof h->again[0]);
    ledger_decide_batch(svc->ledger, n, decide_item, h, h->status, svc->cfg->publish_timeout_ms);
    for (size_t i = 0; i < n; i++) /* statuses per item, also when nothing could be decided */
        items[i].verdict = settle_item(h, i, h->status[i]);
    h->batch = NULL;
    pthread_mutex_unlock(&svc->mu);
}

/* ---- wiring ---- */

ch_status payment_events_start(payment_service *svc)
{
    static const event_type types[2] = {EVENT_INVENTORY_RESERVED, EVENT_ORDER_CANCEL_REQUESTED};
    event_worker **workers[2] = {&svc->reserved_worker, &svc->cancel_worker};
    ch_status st = CH_OK;

    for (size_t i = 0; i < 2 && st == CH_OK; i++) {
        payment_handler *h = calloc(1, sizeof *h);
        if (!h)
            return CH_NO_MEMORY;
        h->svc = svc;
        h->type = types[i];
        svc->handlers[i] = h;
        event_worker_spec ws = {
            .service = PAYMENT_PRODUCER,
            .type = types[i],
            .flush = flush_batch, /* no handler: every event is decided in its batch */
            .ctx = h,
            .batch = PAYMENT_BATCH,
        };
        st = event_worker_start(svc->bus, &ws, workers[i]);
    }
    return st; /* the worker logged why */
}

void payment_events_stop(payment_service *svc)
{
    event_worker *ws[] = {svc->reserved_worker, svc->cancel_worker};
    event_workers_stop(ws, 2);
    svc->reserved_worker = NULL;
    svc->cancel_worker = NULL;
    for (size_t i = 0; i < 2; i++) {
        free(svc->handlers[i]);
        svc->handlers[i] = NULL;
    }
    ledger_close(svc->ledger);
    svc->ledger = NULL;
}
