/* payment_events.c: the payment service's writer: its stream folded into the
 * state, and its reactions: inventory.reserved -> charge or decline,
 * order.cancel_requested -> refund. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event_bus.h"
#include "log.h"
#include "payment.h"

enum { CONSUME_RESERVED = 0, CONSUME_CANCEL, CONSUMED };

/* ---- the stream ---- */

static ch_status fold(void *ctx, const choreo_events_v1_Envelope *env, uint64_t seq)
{
    payment_service *svc = ctx;
    pay_entry e;
    ch_status st = payment_entry_of(env, &e);

    (void)seq;
    if (st == CH_OK)
        st = pay_apply(svc->state, &e, NULL);
    if (st != CH_OK && st != CH_NO_MEMORY)
        svc->skipped++; /* the writer logs it */
    return st;
}

static void undo(void *ctx, const void *data, size_t len)
{
    payment_service *svc = ctx;
    ch_status st = len == sizeof(pay_entry) ? pay_revert(svc->state, data) : CH_INVALID_ARGUMENT;

    if (st != CH_OK)
        log_error("payment decision not undone", "status", ch_status_str(st), NULL);
}

ch_status payment_record(payment_service *svc, writer *w, const pay_entry *e, const char *causation_id,
                         const char *traceparent)
{
    choreo_events_v1_Envelope env;
    bool changed = false;
    ch_status st = payment_event_of(e, causation_id, traceparent, &env);

    if (st == CH_OK)
        st = pay_apply(svc->state, e, &changed);
    if (st != CH_OK || !changed)
        return st == CH_OK ? CH_INTERNAL : st; /* decided, so it must change the state */
    st = writer_emit(w, &env, e, sizeof *e);
    if (st != CH_OK)
        pay_revert(svc->state, e);
    return st;
}

/* ---- the reactions ---- */

/* inventory.reserved: charge or decline, once per order. */
static ch_status on_reserved(payment_service *svc, writer *w, writer_input *in)
{
    const choreo_events_v1_Envelope *env = in->env;
    const choreo_events_v1_InventoryReserved *r = &env->payload.inventory_reserved;
    pay_entry e;
    ch_status st = pay_decide_charge(svc->state, env->order_id, r->customer_id, r->total_cents, env->event_id,
                                     &e, in->reason, sizeof in->reason);

    if (st == CH_ALREADY_EXISTS) {
        snprintf(in->reason, sizeof in->reason, "decided before");
        return CH_OK;
    }
    if (st == CH_INVALID_ARGUMENT) {
        in->verdict = BUS_DEAD; /* the reason names the field */
        return CH_OK;
    }
    if (st != CH_OK)
        return st;
    return payment_record(svc, w, &e, env->event_id, env->traceparent);
}

/* order.cancel_requested: refund a charge, once. */
static ch_status on_cancel(payment_service *svc, writer *w, writer_input *in)
{
    const choreo_events_v1_Envelope *env = in->env;
    pay_entry e;
    ch_status st = pay_decide_refund(svc->state, env->order_id, env->event_id, &e);

    if (st == CH_NOT_FOUND && !in->caught_up)
        return st; /* perhaps another replica charged it: after a catch-up */
    if (st == CH_ALREADY_EXISTS) {
        snprintf(in->reason, sizeof in->reason, "refunded before");
        return CH_OK;
    }
    if (st == CH_FAILED_PRECONDITION || st == CH_NOT_FOUND) {
        snprintf(in->reason, sizeof in->reason, "nothing to refund: %s",
                 st == CH_NOT_FOUND ? "no payment for this order" : "payment was declined");
        return CH_OK;
    }
    if (st != CH_OK)
        return st;
    return payment_record(svc, w, &e, env->event_id, env->traceparent);
}

static ch_status decide(void *ctx, writer *w, writer_input *in)
{
    payment_service *svc = ctx;

    if (in->kind == WRITER_CALL)
        return payment_call_decide(svc, w, in);
    return in->source == CONSUME_RESERVED ? on_reserved(svc, w, in) : on_cancel(svc, w, in);
}

static void finish(void *ctx, writer_input *in, ch_status st)
{
    if (in->kind == WRITER_CALL)
        payment_call_finish(ctx, in, st);
}

ch_status payment_events_start(payment_service *svc)
{
    static const writer_ops ops = {fold, decide, undo, finish};
    writer_spec spec = {
        .service = PAYMENT_PRODUCER,
        .stream = EVENT_STREAM_PAYMENT,
        .ops = &ops,
        .ctx = svc,
        .consumers = {[CONSUME_RESERVED] = {EVENT_INVENTORY_RESERVED},
                      [CONSUME_CANCEL] = {EVENT_ORDER_CANCEL_REQUESTED}},
        .n_consumers = CONSUMED,
        .publish_timeout_ms = svc->cfg->publish_timeout_ms,
    };
    ch_status st = writer_start(svc->bus, &spec, &svc->writer);
    if (st == CH_OK) {
        char accounts[24], payments[24], skipped[24];
        snprintf(accounts, sizeof accounts, "%zu", pay_account_count(svc->state));
        snprintf(payments, sizeof payments, "%zu", pay_payment_count(svc->state));
        snprintf(skipped, sizeof skipped, "%" PRIu64, svc->skipped);
        log_info("payment state folded from its stream", "accounts", accounts, "payments", payments,
                 "skipped", skipped, NULL);
    }
    return st;
}

void payment_events_stop(payment_service *svc)
{
    writer_destroy(svc->writer);
    svc->writer = NULL;
}
