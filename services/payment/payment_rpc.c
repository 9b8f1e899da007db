/* payment_rpc.c: the choreo.payment.v1.Payment gRPC API, a thin adapter: it
 * turns requests into core decisions and ledger entries, and the state into
 * replies. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "choreo/payment/v1/payment.pb-c.h"
#include "log.h"
#include "payment.h"
#include "service.h"
#include "utf8.h"

/* ---- state -> reply ---- */

/* Fills pb from a; strings point into a (pack before unlocking). */
static void pb_account_fill(Choreo__Payment__V1__Account *pb, const pay_account *a)
{
    *pb = (Choreo__Payment__V1__Account)CHOREO__PAYMENT__V1__ACCOUNT__INIT;
    pb->customer_id = (char *)a->customer_id;
    pb->balance_cents = a->balance_cents;
    pb->credited_cents = a->credited_cents;
    pb->charged_cents = a->charged_cents;
    pb->refunded_cents = a->refunded_cents;
}

static void pb_payment_fill(Choreo__Payment__V1__PaymentRecord *pb, const pay_payment *p)
{
    *pb = (Choreo__Payment__V1__PaymentRecord)CHOREO__PAYMENT__V1__PAYMENT_RECORD__INIT;
    pb->order_id = (char *)p->order_id;
    pb->customer_id = (char *)p->customer_id;
    pb->amount_cents = p->amount_cents;
    pb->status = (Choreo__Payment__V1__PaymentStatus)p->status;
    pb->reason = (char *)p->reason;
}

/* Replies with the customer's account; under mu (the caller holds it). */
static void reply_account_locked(rpc_call *call, payment_service *svc, const char *customer_id, bool credit)
{
    const pay_account *a = payment_account_get(svc->state, customer_id);
    Choreo__Payment__V1__Account pb;

    if (!a) {
        rpc_call_fail(call, CH_NOT_FOUND, "customer_id: no account for %s (never credited)", customer_id);
        return;
    }
    pb_account_fill(&pb, a);
    if (credit) {
        Choreo__Payment__V1__CreditAccountResponse resp = CHOREO__PAYMENT__V1__CREDIT_ACCOUNT_RESPONSE__INIT;
        resp.account = &pb;
        rpc_call_reply(call, &resp.base);
    } else {
        Choreo__Payment__V1__GetAccountResponse resp = CHOREO__PAYMENT__V1__GET_ACCOUNT_RESPONSE__INIT;
        resp.account = &pb;
        rpc_call_reply(call, &resp.base);
    }
}

/* ---- handlers ---- */

static void credit_account(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Payment__V1__CreditAccountRequest *r =
        (const Choreo__Payment__V1__CreditAccountRequest *)msg;
    payment_service *svc = ctx;
    char err[256], msg_id[PAY_CUSTOMER_MAX + PAY_KEY_MAX + 16];
    const char *key = r->idempotency_key;
    pay_entry e;
    ch_status st;

    st = payment_validate_credit(r->customer_id, r->amount_cents, key, err, sizeof err);
    if (st != CH_OK) {
        rpc_call_fail(call, st, "%s", err);
        return;
    }
    if (key[0])
        /* the id's length keeps "a:b"+"c" apart from "a"+"b:c" */
        snprintf(msg_id, sizeof msg_id, "credit:%zu:%s:%s", strlen(r->customer_id), r->customer_id, key);

    pthread_mutex_lock(&svc->mu);
    for (int attempt = 0; attempt < PAYMENT_APPEND_TRIES; attempt++) {
        st = payment_decide_credit(svc->state, r->customer_id, r->amount_cents, key, &e, err, sizeof err);
        if (st != CH_OK)
            break;
        st = payment_ledger_append(svc, &e, key[0] ? msg_id : NULL);
        if (st != CH_CONFLICT)
            break;
    }
    /* A retry whose first try was stored by another replica (or before a
     * restart, within the dedup window) comes back as a duplicate: catch up
     * so the reply shows the credit. */
    if (st == CH_OK && key[0] && !payment_credit_key_known(svc->state, r->customer_id, key))
        ledger_catch_up(svc->ledger);
    if (st == CH_OK || st == CH_ALREADY_EXISTS) {
        reply_account_locked(call, svc, r->customer_id, true);
        pthread_mutex_unlock(&svc->mu);
        return;
    }
    pthread_mutex_unlock(&svc->mu);

    if (st == CH_INVALID_ARGUMENT || st == CH_FAILED_PRECONDITION) {
        rpc_call_fail(call, st, "%s", err);
        return;
    }
    log_warn("credit not confirmed", "customer_id", r->customer_id, "status", ch_status_str(st), NULL);
    if (st == CH_TIMEOUT || st == CH_UNAVAILABLE)
        service_fail_unconfirmed(
            call, st, "credit",
            key[0] ? "retry with the same idempotency_key"
                   : "read the account before retrying (an idempotency_key makes retries safe)");
    else /* CH_CONFLICT after every try, or no memory: nothing was stored */
        rpc_call_fail(call, CH_UNAVAILABLE, "credit not stored (%s): retry", ch_status_str(st));
}

static void get_account(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Payment__V1__GetAccountRequest *r = (const Choreo__Payment__V1__GetAccountRequest *)msg;
    payment_service *svc = ctx;

    if (!r->customer_id[0]) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "customer_id: required");
        return;
    }
    if (!utf8_valid_token(r->customer_id, PAY_CUSTOMER_MAX)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "customer_id: must be 1..%d bytes of UTF-8 with no spaces",
                      PAY_CUSTOMER_MAX);
        return;
    }
    pthread_mutex_lock(&svc->mu);
    reply_account_locked(call, svc, r->customer_id, false);
    pthread_mutex_unlock(&svc->mu);
}

static void get_payment(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Payment__V1__GetPaymentRequest *r = (const Choreo__Payment__V1__GetPaymentRequest *)msg;
    payment_service *svc = ctx;
    Choreo__Payment__V1__PaymentRecord pb;

    if (!r->order_id[0]) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "order_id: required");
        return;
    }
    if (!utf8_valid_token(r->order_id, PAY_ORDER_ID_MAX)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "order_id: not a valid order id (at most %d bytes)",
                      PAY_ORDER_ID_MAX);
        return;
    }
    pthread_mutex_lock(&svc->mu);
    const pay_payment *p = payment_get(svc->state, r->order_id);
    if (!p) {
        pthread_mutex_unlock(&svc->mu);
        rpc_call_fail(call, CH_NOT_FOUND, "order_id: no payment for order %s", r->order_id);
        return;
    }
    pb_payment_fill(&pb, p);
    Choreo__Payment__V1__GetPaymentResponse resp = CHOREO__PAYMENT__V1__GET_PAYMENT_RESPONSE__INIT;
    resp.payment = &pb;
    rpc_call_reply(call, &resp.base);
    pthread_mutex_unlock(&svc->mu);
}

static void list_payments(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Payment__V1__ListPaymentsRequest *r = (const Choreo__Payment__V1__ListPaymentsRequest *)msg;
    payment_service *svc = ctx;
    size_t size = r->page_size ? r->page_size : PAY_PAGE_DEFAULT;
    const pay_payment **page = NULL;
    Choreo__Payment__V1__PaymentRecord *pbs = NULL, **ptrs = NULL;
    char next[PAY_TOKEN_MAX];
    size_t n = 0;

    if (r->page_size > PAY_PAGE_MAX) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_size: must be 0..%d, got %u", PAY_PAGE_MAX,
                      r->page_size);
        return;
    }
    if (strlen(r->page_token) >= PAY_TOKEN_MAX) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        return;
    }
    if (r->customer_id[0] && !utf8_valid_token(r->customer_id, PAY_CUSTOMER_MAX)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "customer_id: must be 1..%d bytes of UTF-8 with no spaces",
                      PAY_CUSTOMER_MAX);
        return;
    }
    page = calloc(size, sizeof *page);
    pbs = calloc(size, sizeof *pbs);
    ptrs = calloc(size, sizeof *ptrs);
    if (!page || !pbs || !ptrs) {
        rpc_call_fail(call, CH_NO_MEMORY, "out of memory");
        goto cleanup;
    }
    pthread_mutex_lock(&svc->mu);
    if (payment_list(svc->state, r->page_token, r->customer_id, page, size, &n, next) != CH_OK) {
        pthread_mutex_unlock(&svc->mu);
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        pb_payment_fill(&pbs[i], page[i]);
        ptrs[i] = &pbs[i];
    }
    Choreo__Payment__V1__ListPaymentsResponse resp = CHOREO__PAYMENT__V1__LIST_PAYMENTS_RESPONSE__INIT;
    size_t fit = rpc_call_fit_items(call, &resp.base, PAY_TOKEN_MAX, (ProtobufCMessage *const *)ptrs, n);
    if (fit < n) /* the same first `fit`, and the token after them */
        payment_list(svc->state, r->page_token, r->customer_id, page, fit, &n, next);
    resp.n_payments = n;
    resp.payments = ptrs;
    resp.next_page_token = next;
    rpc_call_reply(call, &resp.base);
    pthread_mutex_unlock(&svc->mu);

cleanup:
    free(page);
    free(pbs);
    free(ptrs);
}

ch_status payment_rpc_register(rpc_server *s, payment_service *svc)
{
    static const rpc_handler handlers[] = {
        {"CreditAccount", RPC_UNARY, credit_account, NULL},
        {"GetAccount", RPC_UNARY, get_account, NULL},
        {"GetPayment", RPC_UNARY, get_payment, NULL},
        {"ListPayments", RPC_UNARY, list_payments, NULL},
    };
    return rpc_server_add_service(s, &choreo__payment__v1__payment__descriptor, handlers,
                                  sizeof handlers / sizeof handlers[0], svc);
}
