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

ch_status payment_ledger_open(payment_service *svc)
{
    ledger_spec spec = {
        .stream = PAYMENT_LEDGER_STREAM,
        .subject = PAYMENT_LEDGER_SUBJECT,
        .replicas = svc->cfg->stream_replicas,
        .apply = apply_entry,
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

/* ---- publishing what a decision implies ---- */

/* Publishes event t (payment.processed, payment.failed or payment.refunded)
 * for payment p, caused by `cause`. BUS_ACK once JetStream has it (also as a
 * duplicate), BUS_RETRY otherwise. */
static bus_verdict publish_for(payment_service *svc, const bus_in_msg *m,
                               const choreo_events_v1_Envelope *cause, event_type t, const pay_payment *p,
                               char *reason, size_t reason_cap)
{
    choreo_events_v1_Envelope *out = malloc(sizeof *out); /* ~9 KB: off the worker's stack */
    ch_status st;

    if (!out) {
        snprintf(reason, reason_cap, "out of memory");
        return BUS_RETRY;
    }
    st = event_init_caused(out, t, cause, PAYMENT_PRODUCER);
    if (st == CH_OK) {
        switch (t) {
        case EVENT_PAYMENT_PROCESSED:
            snprintf(out->payload.payment_processed.customer_id,
                     sizeof out->payload.payment_processed.customer_id, "%s", p->customer_id);
            out->payload.payment_processed.amount_cents = p->amount_cents;
            break;
        case EVENT_PAYMENT_FAILED:
            snprintf(out->payload.payment_failed.customer_id, sizeof out->payload.payment_failed.customer_id,
                     "%s", p->customer_id);
            out->payload.payment_failed.amount_cents = p->amount_cents;
            out->payload.payment_failed.balance_cents = p->balance_cents;
            snprintf(out->payload.payment_failed.reason, sizeof out->payload.payment_failed.reason, "%s",
                     p->reason);
            break;
        default:
            snprintf(out->payload.payment_refunded.customer_id,
                     sizeof out->payload.payment_refunded.customer_id, "%s", p->customer_id);
            out->payload.payment_refunded.amount_cents = p->amount_cents;
            break;
        }
        st = event_publish_deferred(m, out); /* the incoming event is acked once this is stored */
    }
    free(out);
    if (st != CH_OK) {
        snprintf(reason, reason_cap, "publish %s: %s", event_type_name(t), ch_status_str(st));
        return st == CH_INVALID_ARGUMENT ? BUS_DEAD : BUS_RETRY;
    }
    return BUS_ACK;
}

/* After a successful append the decision is normally in the state; if the
 * ledger dropped our entry as a duplicate of another writer's, catch up so
 * the state holds the decision that was actually stored. Under mu. */
static const pay_payment *stored_payment(payment_service *svc, const char *order_id, pay_status want)
{
    const pay_payment *p = payment_get(svc->state, order_id);
    if ((!p || (want && p->status != want)) && ledger_catch_up(svc->ledger) == CH_OK)
        p = payment_get(svc->state, order_id);
    return p;
}

/* ---- inventory.reserved: charge or decline, once per order ---- */

static bus_verdict on_inventory_reserved(const choreo_events_v1_Envelope *env, const bus_in_msg *m, void *ctx,
                                         char *reason, size_t reason_cap)
{
    payment_service *svc = ctx;
    const choreo_events_v1_InventoryReserved *r = &env->payload.inventory_reserved;
    char err[256] = "", msg_id[EVENT_MSG_ID_MAX];
    pay_payment decided;
    bool have = false;
    pay_entry e;
    ch_status st = CH_OK;

    snprintf(msg_id, sizeof msg_id, "%s:payment", env->order_id);
    pthread_mutex_lock(&svc->mu);
    for (int attempt = 0; attempt < PAYMENT_APPEND_TRIES; attempt++) {
        const pay_payment *p = payment_get(svc->state, env->order_id);
        if (p) { /* decided before (a duplicate, a redelivery): only re-publish */
            decided = *p;
            have = true;
            break;
        }
        st = payment_decide_charge(svc->state, env->order_id, r->customer_id, r->total_cents, env->event_id,
                                   &e, err, sizeof err);
        if (st != CH_OK)
            break;
        st = payment_ledger_append(svc, &e, msg_id);
        if (st == CH_CONFLICT)
            continue; /* another writer got there first; the state is fresh now */
        if (st != CH_OK)
            break;
        if ((p = stored_payment(svc, env->order_id, PAY_UNSPECIFIED))) {
            decided = *p;
            have = true;
        } else {
            st = CH_INTERNAL;
        }
        break;
    }
    pthread_mutex_unlock(&svc->mu);

    if (!have) {
        if (st == CH_INVALID_ARGUMENT) {
            snprintf(reason, reason_cap, "inventory.reserved: %s", err);
            return BUS_DEAD;
        }
        snprintf(reason, reason_cap, "ledger: %s", ch_status_str(st));
        return BUS_RETRY;
    }
    return publish_for(svc, m, env,
                       decided.status == PAY_DECLINED ? EVENT_PAYMENT_FAILED : EVENT_PAYMENT_PROCESSED,
                       &decided, reason, reason_cap);
}

/* ---- order.cancel_requested: refund a charged payment, once ---- */

static bus_verdict on_cancel_requested(const choreo_events_v1_Envelope *env, const bus_in_msg *m, void *ctx,
                                       char *reason, size_t reason_cap)
{
    payment_service *svc = ctx;
    char msg_id[EVENT_MSG_ID_MAX];
    const char *nothing = NULL;
    pay_payment refunded;
    bool have = false;
    pay_entry e;
    ch_status st = CH_OK;

    snprintf(msg_id, sizeof msg_id, "%s:refund", env->order_id);
    pthread_mutex_lock(&svc->mu);
    for (int attempt = 0; attempt < PAYMENT_APPEND_TRIES; attempt++) {
        const pay_payment *p;
        if (attempt == 0 && !payment_get(svc->state, env->order_id) &&
            (st = ledger_catch_up(svc->ledger)) != CH_OK)
            break; /* another replica may have charged it: cannot tell now */
        st = payment_decide_refund(svc->state, env->order_id, env->event_id, &e);
        if (st == CH_NOT_FOUND || st == CH_FAILED_PRECONDITION) {
            nothing = st == CH_NOT_FOUND ? "no payment for this order" : "payment was declined";
            st = CH_OK;
            break;
        }
        if (st == CH_ALREADY_EXISTS) { /* refunded before: only re-publish */
            refunded = *payment_get(svc->state, env->order_id);
            have = true;
            break;
        }
        st = payment_ledger_append(svc, &e, msg_id);
        if (st == CH_CONFLICT)
            continue;
        if (st != CH_OK)
            break;
        p = stored_payment(svc, env->order_id, PAY_REFUNDED);
        if (p && p->status == PAY_REFUNDED) {
            refunded = *p;
            have = true;
        } else {
            st = CH_INTERNAL;
        }
        break;
    }
    pthread_mutex_unlock(&svc->mu);

    if (nothing) {
        log_info("nothing to refund", "order_id", env->order_id, "event_id", env->event_id, "reason", nothing,
                 NULL);
        return BUS_ACK;
    }
    if (!have) {
        snprintf(reason, reason_cap, "ledger: %s", ch_status_str(st));
        return BUS_RETRY;
    }
    return publish_for(svc, m, env, EVENT_PAYMENT_REFUNDED, &refunded, reason, reason_cap);
}

/* ---- wiring ---- */

ch_status payment_events_start(payment_service *svc)
{
    event_worker_spec ws = {
        .service = PAYMENT_PRODUCER,
        .type = EVENT_INVENTORY_RESERVED,
        .handler = on_inventory_reserved,
        .ctx = svc,
    };
    ch_status st = event_worker_start(svc->bus, &ws, &svc->reserved_worker);

    if (st == CH_OK) {
        ws.type = EVENT_ORDER_CANCEL_REQUESTED;
        ws.handler = on_cancel_requested;
        st = event_worker_start(svc->bus, &ws, &svc->cancel_worker);
    }
    return st; /* the worker logged why */
}

void payment_events_stop(payment_service *svc)
{
    event_worker *ws[] = {svc->reserved_worker, svc->cancel_worker};
    event_workers_stop(ws, 2);
    svc->reserved_worker = NULL;
    svc->cancel_worker = NULL;
    ledger_close(svc->ledger);
    svc->ledger = NULL;
}
