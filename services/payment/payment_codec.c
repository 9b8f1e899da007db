/* payment_codec.c: payment's events <-> the core's entries. */
#include "payment_codec.h"

#include <stdio.h>
#include <string.h>

/* Copies src into dst[cap]; false when it does not fit. */
static bool copy(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        return false;
    memcpy(dst, src, n + 1);
    return true;
}

#define COPY(dst, src) copy((dst), sizeof(dst), (src))

ch_status payment_entry_of(const choreo_events_v1_Envelope *env, pay_entry *out)
{
    bool ok;
    event_type t;

    memset(out, 0, sizeof *out);
    /* the cause is for the reader only: cut to the core's size */
    snprintf(out->cause_event_id, sizeof out->cause_event_id, "%.*s", (int)sizeof out->cause_event_id - 1,
             env->causation_id);
    if (event_type_of(env, &t) != CH_OK)
        return CH_INVALID_ARGUMENT;
    switch (t) {
    case EVENT_PAYMENT_CREDITED: {
        const choreo_events_v1_PaymentCredited *p = &env->payload.payment_credited;
        out->kind = PAY_ENTRY_CREDIT;
        ok = COPY(out->customer_id, p->customer_id) && COPY(out->idempotency_key, p->idempotency_key);
        out->amount_cents = p->amount_cents;
        break;
    }
    case EVENT_PAYMENT_PROCESSED: {
        const choreo_events_v1_PaymentProcessed *p = &env->payload.payment_processed;
        out->kind = PAY_ENTRY_CHARGE;
        ok = COPY(out->order_id, env->order_id) && COPY(out->customer_id, p->customer_id);
        out->amount_cents = p->amount_cents;
        break;
    }
    case EVENT_PAYMENT_FAILED: {
        const choreo_events_v1_PaymentFailed *p = &env->payload.payment_failed;
        out->kind = PAY_ENTRY_DECLINE;
        ok = COPY(out->order_id, env->order_id) && COPY(out->customer_id, p->customer_id) &&
             COPY(out->reason, p->reason);
        out->amount_cents = p->amount_cents;
        out->balance_cents = p->balance_cents;
        break;
    }
    case EVENT_PAYMENT_REFUNDED: {
        const choreo_events_v1_PaymentRefunded *p = &env->payload.payment_refunded;
        out->kind = PAY_ENTRY_REFUND;
        ok = COPY(out->order_id, env->order_id) && COPY(out->customer_id, p->customer_id);
        out->amount_cents = p->amount_cents;
        break;
    }
    default: return CH_INVALID_ARGUMENT;
    }
    return ok ? CH_OK : CH_INVALID_ARGUMENT;
}

ch_status payment_event_of(const pay_entry *e, const char *causation_id, const char *traceparent,
                           choreo_events_v1_Envelope *out)
{
    event_type t;
    switch (e->kind) {
    case PAY_ENTRY_CREDIT: t = EVENT_PAYMENT_CREDITED; break;
    case PAY_ENTRY_CHARGE: t = EVENT_PAYMENT_PROCESSED; break;
    case PAY_ENTRY_DECLINE: t = EVENT_PAYMENT_FAILED; break;
    case PAY_ENTRY_REFUND: t = EVENT_PAYMENT_REFUNDED; break;
    default: return CH_INVALID_ARGUMENT;
    }
    ch_status st = event_init(out, t, e->kind == PAY_ENTRY_CREDIT ? NULL : e->order_id, causation_id,
                              PAYMENT_CODEC_PRODUCER, traceparent);
    if (st != CH_OK)
        return st;
    switch (e->kind) {
    case PAY_ENTRY_CREDIT: {
        choreo_events_v1_PaymentCredited *p = &out->payload.payment_credited;
        snprintf(p->customer_id, sizeof p->customer_id, "%s", e->customer_id);
        snprintf(p->idempotency_key, sizeof p->idempotency_key, "%s", e->idempotency_key);
        p->amount_cents = e->amount_cents;
        break;
    }
    case PAY_ENTRY_CHARGE: {
        choreo_events_v1_PaymentProcessed *p = &out->payload.payment_processed;
        snprintf(p->customer_id, sizeof p->customer_id, "%s", e->customer_id);
        p->amount_cents = e->amount_cents;
        break;
    }
    case PAY_ENTRY_DECLINE: {
        choreo_events_v1_PaymentFailed *p = &out->payload.payment_failed;
        snprintf(p->customer_id, sizeof p->customer_id, "%s", e->customer_id);
        snprintf(p->reason, sizeof p->reason, "%s", e->reason);
        p->amount_cents = e->amount_cents;
        p->balance_cents = e->balance_cents;
        break;
    }
    default: {
        choreo_events_v1_PaymentRefunded *p = &out->payload.payment_refunded;
        snprintf(p->customer_id, sizeof p->customer_id, "%s", e->customer_id);
        p->amount_cents = e->amount_cents;
        break;
    }
    }
    return CH_OK;
}
