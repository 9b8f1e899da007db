/* payment_rpc.c: the choreo.payment.v1.Payment gRPC API, a thin adapter: a
 * request is checked on the gRPC thread, then decided (CreditAccount) or read
 * (the rest) by the writer on its thread, which answers once the state is
 * current (writer.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "choreo/payment/v1/payment.pb-c.h"
#include "log.h"
#include "payment.h"
#include "service.h"
#include "utf8.h"

typedef enum payment_method {
    CALL_CREDIT = 0,
    CALL_GET_ACCOUNT,
    CALL_GET_PAYMENT,
    CALL_LIST,
} payment_method;

/* Hands a checked request to the writer (service.h). gRPC thread. */
static void submit(payment_service *svc, rpc_call *call, payment_method m, const ProtobufCMessage *req)
{
    service_call *sc = service_call_new(sizeof *sc, call, m, req);
    if (sc)
        service_call_submit(svc->writer, sc);
}

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

/* Replies with the customer's account. Writer thread. */
static void reply_account(rpc_call *call, payment_service *svc, const char *customer_id, bool credit)
{
    const pay_account *a = pay_account_get(svc->state, customer_id);
    Choreo__Payment__V1__Account pb;

    if (!a) {
        rpc_call_prepare_fail(call, CH_NOT_FOUND, "customer_id: no account for %s (never credited)",
                              customer_id);
        return;
    }
    pb_account_fill(&pb, a);
    if (credit) {
        Choreo__Payment__V1__CreditAccountResponse resp = CHOREO__PAYMENT__V1__CREDIT_ACCOUNT_RESPONSE__INIT;
        resp.account = &pb;
        rpc_call_prepare_reply(call, &resp.base);
    } else {
        Choreo__Payment__V1__GetAccountResponse resp = CHOREO__PAYMENT__V1__GET_ACCOUNT_RESPONSE__INIT;
        resp.account = &pb;
        rpc_call_prepare_reply(call, &resp.base);
    }
}

/* ---- handlers (gRPC threads): check, then hand to the writer ---- */

static void credit_account(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Payment__V1__CreditAccountRequest *r =
        (const Choreo__Payment__V1__CreditAccountRequest *)msg;
    char err[256];
    ch_status st = pay_validate_credit(r->customer_id, r->amount_cents, r->idempotency_key, err, sizeof err);

    if (st != CH_OK) {
        rpc_call_fail(call, st, "%s", err);
        return;
    }
    submit(ctx, call, CALL_CREDIT, msg);
}

static void get_account(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Payment__V1__GetAccountRequest *r = (const Choreo__Payment__V1__GetAccountRequest *)msg;

    if (!r->customer_id[0]) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "customer_id: required");
        return;
    }
    if (!utf8_valid_token(r->customer_id, PAY_CUSTOMER_MAX)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "customer_id: must be 1..%d bytes of UTF-8 with no spaces",
                      PAY_CUSTOMER_MAX);
        return;
    }
    submit(ctx, call, CALL_GET_ACCOUNT, msg);
}

static void get_payment(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Payment__V1__GetPaymentRequest *r = (const Choreo__Payment__V1__GetPaymentRequest *)msg;

    if (!r->order_id[0]) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "order_id: required");
        return;
    }
    if (!utf8_valid_token(r->order_id, PAY_ORDER_ID_MAX)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "order_id: not a valid order id (at most %d bytes)",
                      PAY_ORDER_ID_MAX);
        return;
    }
    submit(ctx, call, CALL_GET_PAYMENT, msg);
}

static void list_payments(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Payment__V1__ListPaymentsRequest *r = (const Choreo__Payment__V1__ListPaymentsRequest *)msg;

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
    submit(ctx, call, CALL_LIST, msg);
}

/* ---- in the writer ---- */

/* ListPayments' reply, a page cut to fit in one message. */
static void reply_list(payment_service *svc, rpc_call *call,
                       const Choreo__Payment__V1__ListPaymentsRequest *r)
{
    size_t size = r->page_size ? r->page_size : PAY_PAGE_DEFAULT;
    const pay_payment **page = calloc(size, sizeof *page);
    Choreo__Payment__V1__PaymentRecord *pbs = calloc(size, sizeof *pbs), **ptrs = calloc(size, sizeof *ptrs);
    char next[PAY_TOKEN_MAX];
    size_t n = 0;

    if (!page || !pbs || !ptrs) {
        rpc_call_prepare_fail(call, CH_NO_MEMORY, "out of memory");
        goto cleanup;
    }
    if (pay_payment_list(svc->state, r->page_token, r->customer_id, page, size, &n, next) != CH_OK) {
        rpc_call_prepare_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        pb_payment_fill(&pbs[i], page[i]);
        ptrs[i] = &pbs[i];
    }
    Choreo__Payment__V1__ListPaymentsResponse resp = CHOREO__PAYMENT__V1__LIST_PAYMENTS_RESPONSE__INIT;
    size_t fit = rpc_call_fit_items(call, &resp.base, PAY_TOKEN_MAX, (ProtobufCMessage *const *)ptrs, n);
    if (fit < n) /* the same first `fit`, and the token after them */
        pay_payment_list(svc->state, r->page_token, r->customer_id, page, fit, &n, next);
    resp.n_payments = n;
    resp.payments = ptrs;
    resp.next_page_token = next;
    rpc_call_prepare_reply(call, &resp.base);

cleanup:
    free(page);
    free(pbs);
    free(ptrs);
}

static void reply_payment(payment_service *svc, rpc_call *call, const char *order_id)
{
    const pay_payment *p = pay_payment_get(svc->state, order_id);
    Choreo__Payment__V1__PaymentRecord pb;

    if (!p) {
        rpc_call_prepare_fail(call, CH_NOT_FOUND, "order_id: no payment for order %s", order_id);
        return;
    }
    pb_payment_fill(&pb, p);
    Choreo__Payment__V1__GetPaymentResponse resp = CHOREO__PAYMENT__V1__GET_PAYMENT_RESPONSE__INIT;
    resp.payment = &pb;
    rpc_call_prepare_reply(call, &resp.base);
}

/* The answer to a call, as the state is at its place among the decisions:
 * prepared now, sent once everything before it is stored (finish). */
static void prepare_answer(payment_service *svc, service_call *sc)
{
    switch ((payment_method)sc->method) {
    case CALL_CREDIT:
        reply_account(sc->call, svc,
                      ((const Choreo__Payment__V1__CreditAccountRequest *)sc->req)->customer_id, true);
        break;
    case CALL_GET_ACCOUNT:
        reply_account(sc->call, svc, ((const Choreo__Payment__V1__GetAccountRequest *)sc->req)->customer_id,
                      false);
        break;
    case CALL_GET_PAYMENT:
        reply_payment(svc, sc->call, ((const Choreo__Payment__V1__GetPaymentRequest *)sc->req)->order_id);
        break;
    case CALL_LIST:
        reply_list(svc, sc->call, (const Choreo__Payment__V1__ListPaymentsRequest *)sc->req);
        break;
    }
}

ch_status payment_call_decide(payment_service *svc, writer *w, writer_input *in)
{
    service_call *sc = in->call;
    pay_entry e;
    ch_status st = CH_OK;

    if (sc->method == CALL_CREDIT) {
        const Choreo__Payment__V1__CreditAccountRequest *r =
            (const Choreo__Payment__V1__CreditAccountRequest *)sc->req;
        st = pay_decide_credit(svc->state, r->customer_id, r->amount_cents, r->idempotency_key, &e, sc->err,
                               sizeof sc->err);
        if (st == CH_ALREADY_EXISTS)
            st = CH_OK; /* a retry with the same key: credited once, answered with the account */
        else if (st == CH_OK)
            st = payment_record(svc, w, &e, rpc_call_method(sc->call), NULL);
    }
    if (st == CH_OK)
        prepare_answer(svc, sc);
    return st;
}

void payment_call_finish(payment_service *svc, writer_input *in, ch_status st)
{
    service_call *sc = in->call;
    bool credit = sc->method == CALL_CREDIT;
    const char *key =
        credit ? ((const Choreo__Payment__V1__CreditAccountRequest *)sc->req)->idempotency_key : "";
    const char *retry = key[0] ? "retry with the same idempotency_key"
                               : "read the account before retrying (an idempotency_key makes retries safe)";

    if (credit && (st == CH_TIMEOUT || st == CH_UNAVAILABLE))
        log_warn("credit not confirmed", "status", ch_status_str(st), NULL);
    /* what is left: lost every race, or no memory; nothing was stored */
    if (!service_call_answer(sc, st, credit ? "credit" : NULL, retry))
        rpc_call_fail(sc->call, CH_UNAVAILABLE, "%s not stored (%s): retry", credit ? "credit" : "read",
                      ch_status_str(st));
    free(sc);
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
