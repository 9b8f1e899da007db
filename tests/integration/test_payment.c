/* test_payment.c: the payment service end to end, against a real nats-server
 * (JetStream, file storage, temp dir, free port) and the real binary: its
 * gRPC API, its reactions to inventory.reserved and order.cancel_requested
 * (published here as the other services would), duplicates, poison events,
 * and a kill -9 restart. */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"
#include "choreo/payment/v1/payment.pb-c.h"
#include "cu_run.h"
#include "event_bus.h"
#include "event_codec.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "harness.h"
#include "log.h"
#include "payment_core.h"
#include "relay.h"

#define SVC         "/choreo.payment.v1.Payment/"
#define TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

typedef Choreo__Payment__V1__Account pb_account;
typedef Choreo__Payment__V1__PaymentRecord pb_payment;

static natsd *nats;
static svc_proc pay;
static bus *pub;
static choreo_events_v1_Envelope env; /* big: one shared, single-threaded test */

static int suite_init(void)
{
    natsd_options o = {0};
    bus_options bo = {.no_retry_on_failed_connect = true};

    log_configure("test_payment", LOG_WARN, 2); /* the service's log is the one to read */
    if (natsd_start(&nats, &o) != CH_OK)
        return 1;
    if (svc_start(&pay, "payment", PAYMENT_BIN, natsd_url(nats), NULL, 15000) != CH_OK)
        return 1;
    bo.url = natsd_url(nats);
    return bus_create(&pub, &bo) == CH_OK ? 0 : 1;
}

static int suite_cleanup(void)
{
    bus_destroy(pub);
    svc_destroy(&pay);
    natsd_destroy(nats);
    bus_library_shutdown();
    return 0;
}

static void sleep_ms(long ms)
{
    nanosleep(&(struct timespec){ms / 1000, (ms % 1000) * 1000000L}, NULL);
}

/* ---- gRPC helpers ---- */

/* CreditAccount; *out (may be NULL) gets the account (caller frees). */
static ch_status credit(const char *customer, int64_t amount, const char *key, pb_account **out,
                        rpc_client_result *res)
{
    Choreo__Payment__V1__CreditAccountRequest req = CHOREO__PAYMENT__V1__CREDIT_ACCOUNT_REQUEST__INIT;
    Choreo__Payment__V1__CreditAccountResponse *resp = NULL;
    req.customer_id = (char *)customer;
    req.amount_cents = amount;
    req.idempotency_key = (char *)(key ? key : "");
    ch_status st = rpc_client_call(pay.client, SVC "CreditAccount", NULL, 0, &req.base,
                                   &choreo__payment__v1__credit_account_response__descriptor,
                                   (ProtobufCMessage **)&resp, 5000, res);
    if (out)
        *out = NULL;
    if (st == CH_OK) {
        if (out) {
            *out = resp->account;
            resp->account = NULL;
        }
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return st;
}

static pb_account *get_account(const char *customer, ch_status *st, rpc_client_result *res)
{
    Choreo__Payment__V1__GetAccountRequest req = CHOREO__PAYMENT__V1__GET_ACCOUNT_REQUEST__INIT;
    Choreo__Payment__V1__GetAccountResponse *resp = NULL;
    req.customer_id = (char *)customer;
    *st = rpc_client_call(pay.client, SVC "GetAccount", NULL, 0, &req.base,
                          &choreo__payment__v1__get_account_response__descriptor, (ProtobufCMessage **)&resp,
                          5000, res);
    if (*st != CH_OK)
        return NULL;
    pb_account *a = resp->account;
    resp->account = NULL;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return a;
}

static pb_payment *get_payment(const char *order, ch_status *st, rpc_client_result *res)
{
    Choreo__Payment__V1__GetPaymentRequest req = CHOREO__PAYMENT__V1__GET_PAYMENT_REQUEST__INIT;
    Choreo__Payment__V1__GetPaymentResponse *resp = NULL;
    req.order_id = (char *)order;
    *st = rpc_client_call(pay.client, SVC "GetPayment", NULL, 0, &req.base,
                          &choreo__payment__v1__get_payment_response__descriptor, (ProtobufCMessage **)&resp,
                          5000, res);
    if (*st != CH_OK)
        return NULL;
    pb_payment *p = resp->payment;
    resp->payment = NULL;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return p;
}

/* Polls GetPayment until the order's payment has status `want` (0: any). */
static pb_payment *wait_payment(const char *order, int want, int timeout_ms)
{
    long long until = test_now_ms() + timeout_ms;
    ch_status st;
    do {
        pb_payment *p = get_payment(order, &st, NULL);
        if (p && (want == 0 || (int)p->status == want))
            return p;
        if (p)
            protobuf_c_message_free_unpacked(&p->base, NULL);
        sleep_ms(20);
    } while (test_now_ms() < until);
    return NULL;
}

/* Asserts an account's numbers and the conservation equation. */
static void assert_account(const char *customer, int64_t balance, int64_t credited, int64_t charged,
                           int64_t refunded)
{
    ch_status st;
    pb_account *a = get_account(customer, &st, NULL);
    CU_ASSERT_EQUAL_FATAL(st, CH_OK);
    CU_ASSERT_STRING_EQUAL(a->customer_id, customer);
    CU_ASSERT_EQUAL(a->balance_cents, balance);
    CU_ASSERT_EQUAL(a->credited_cents, credited);
    CU_ASSERT_EQUAL(a->charged_cents, charged);
    CU_ASSERT_EQUAL(a->refunded_cents, refunded);
    CU_ASSERT_EQUAL(a->balance_cents + a->charged_cents - a->refunded_cents, a->credited_cents);
    protobuf_c_message_free_unpacked(&a->base, NULL);
}

/* ---- event helpers ---- */

static void make_reserved(const char *order, const char *customer, int64_t total)
{
    CU_ASSERT_EQUAL_FATAL(event_init(&env, EVENT_INVENTORY_RESERVED, order, "test", "inventory", TRACEPARENT),
                          CH_OK);
    snprintf(env.payload.inventory_reserved.customer_id, sizeof env.payload.inventory_reserved.customer_id,
             "%s", customer);
    env.payload.inventory_reserved.total_cents = total;
    env.payload.inventory_reserved.units = 1;
}

static void make_cancel(const char *order, const char *customer, int64_t total)
{
    CU_ASSERT_EQUAL_FATAL(
        event_init(&env, EVENT_ORDER_CANCEL_REQUESTED, order, "test", "orders", TRACEPARENT), CH_OK);
    snprintf(env.payload.order_cancel_requested.customer_id,
             sizeof env.payload.order_cancel_requested.customer_id, "%s", customer);
    env.payload.order_cancel_requested.total_cents = total;
    snprintf(env.payload.order_cancel_requested.reason, sizeof env.payload.order_cancel_requested.reason,
             "customer cancelled");
}

/* Publishes env with its deterministic msg id (msg_id NULL) or with msg_id. */
static void publish_env(const char *msg_id)
{
    event_type t;
    uint8_t buf[EVENT_MAX_BYTES];
    char subject[EVENT_SUBJECT_MAX];
    size_t len;

    if (!msg_id) {
        CU_ASSERT_EQUAL_FATAL(event_publish(pub, &env, 5000, NULL), CH_OK);
        return;
    }
    CU_ASSERT_EQUAL_FATAL(event_type_of(&env, &t), CH_OK);
    CU_ASSERT_EQUAL_FATAL(event_encode(&env, buf, sizeof buf, &len, NULL, 0), CH_OK);
    CU_ASSERT_EQUAL_FATAL(event_subject(subject, sizeof subject, t, env.order_id), CH_OK);
    bus_out_msg m = {.subject = subject, .data = buf, .len = len, .msg_id = msg_id};
    m.headers[0] = (bus_header){EVENT_HDR_TYPE, env.type};
    m.nheaders = 1;
    CU_ASSERT_EQUAL_FATAL(bus_publish(pub, &m, 5000, NULL), CH_OK);
}

/* What the service published for one order. */
typedef struct seen {
    int processed, failed, refunded;
    char msg_id[96], traceparent[64];
    choreo_events_v1_Envelope last;
} seen;

static ch_status collect(const bus_in_msg *m, void *arg)
{
    seen *s = arg;
    const char *h;
    event_type t;

    if (event_decode(m->data, m->len, &s->last, NULL, 0) != CH_OK || event_type_of(&s->last, &t) != CH_OK)
        return CH_INTERNAL;
    s->processed += t == EVENT_PAYMENT_PROCESSED;
    s->failed += t == EVENT_PAYMENT_FAILED;
    s->refunded += t == EVENT_PAYMENT_REFUNDED;
    if ((h = bus_in_msg_header(m, "Nats-Msg-Id")))
        snprintf(s->msg_id, sizeof s->msg_id, "%s", h);
    if ((h = bus_in_msg_header(m, EVENT_HDR_TRACEPARENT)))
        snprintf(s->traceparent, sizeof s->traceparent, "%s", h);
    return CH_OK;
}

static seen *published_for(const char *order)
{
    static seen s;
    char subject[128];
    memset(&s, 0, sizeof s);
    snprintf(subject, sizeof subject, "events.payment.*.%s", order);
    CU_ASSERT_EQUAL(bus_replay(pub, event_stream_of_subject(subject), subject, 1, collect, &s, NULL), CH_OK);
    return &s;
}

static ch_status count_msgs(const bus_in_msg *m, void *arg)
{
    (*(int *)arg)++;
    return CH_OK;
}

/* Each consumer handles its events in order: once a marker order published
 * after some events is decided, those events were handled too. */
static void barrier_reserved(const char *marker)
{
    make_reserved(marker, "cust-marker", 0);
    publish_env(NULL);
    pb_payment *p = wait_payment(marker, 0, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    protobuf_c_message_free_unpacked(&p->base, NULL);
}

/* ---- tests ---- */

static void test_payment_credit_and_get_account(void)
{
    pb_account *a = NULL;
    rpc_client_result res;
    ch_status st;

    CU_ASSERT_EQUAL_FATAL(credit("cust-a", 5000, NULL, &a, NULL), CH_OK);
    CU_ASSERT_STRING_EQUAL(a->customer_id, "cust-a");
    CU_ASSERT_EQUAL(a->balance_cents, 5000);
    CU_ASSERT_EQUAL(a->credited_cents, 5000);
    protobuf_c_message_free_unpacked(&a->base, NULL);
    CU_ASSERT_EQUAL_FATAL(credit("cust-a", 250, NULL, NULL, NULL), CH_OK);
    assert_account("cust-a", 5250, 5250, 0, 0);

    /* the credits are payment's events, in its stream */
    uint64_t msgs = 0;
    CU_ASSERT_EQUAL(bus_stream_info(pub, EVENT_STREAM_PAYMENT, &msgs, NULL), CH_OK);
    CU_ASSERT_TRUE(msgs >= 2);

    CU_ASSERT_PTR_NULL(get_account("cust-never", &st, &res));
    CU_ASSERT_EQUAL(st, CH_NOT_FOUND);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "customer_id"));
}

static void expect_credit_invalid(const char *customer, int64_t amount, const char *key, const char *field)
{
    rpc_client_result res;
    CU_ASSERT_EQUAL(credit(customer, amount, key, NULL, &res), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(res.code, 3 /* INVALID_ARGUMENT */);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, field));
    if (!strstr(res.details, field))
        fprintf(stderr, "details were: %s\n", res.details);
}

static void test_payment_bad_input_is_refused_not_fatal(void)
{
    char longkey[PAY_KEY_MAX + 2];
    rpc_client_result res;
    void *raw = NULL;
    size_t raw_len = 0;
    ch_status st;

    expect_credit_invalid("", 100, NULL, "customer_id: required");
    expect_credit_invalid("cust-\xff\xfe", 100, NULL, "customer_id: not valid UTF-8");
    expect_credit_invalid("has space", 100, NULL, "customer_id");
    expect_credit_invalid("cust-b", 0, NULL, "amount_cents: must be 1..100000000000");
    expect_credit_invalid("cust-b", -1, NULL, "amount_cents");
    expect_credit_invalid("cust-b", PAY_CREDIT_MAX + 1, NULL, "amount_cents");
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    expect_credit_invalid("cust-b", 100, longkey, "idempotency_key");
    expect_credit_invalid("cust-b", 100, "a\r\nInjected: header", "idempotency_key");
    CU_ASSERT_PTR_NULL(get_account("cust-b", &st, NULL)); /* nothing was credited */
    CU_ASSERT_EQUAL(st, CH_NOT_FOUND);

    CU_ASSERT_PTR_NULL(get_account("", &st, &res));
    CU_ASSERT_EQUAL(st, CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "customer_id"));
    CU_ASSERT_PTR_NULL(get_payment("", &st, &res));
    CU_ASSERT_EQUAL(st, CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "order_id: required"));
    CU_ASSERT_PTR_NULL(get_payment("not a valid id", &st, &res));
    CU_ASSERT_EQUAL(st, CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(get_payment("ord-none", &st, &res));
    CU_ASSERT_EQUAL(st, CH_NOT_FOUND);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "order_id"));

    /* malformed bytes */
    const unsigned char garbage[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x12};
    CU_ASSERT_EQUAL(rpc_client_call_raw(pay.client, SVC "CreditAccount", NULL, 0, garbage, sizeof garbage,
                                        &raw, &raw_len, 5000, &res),
                    CH_INVALID_ARGUMENT);
    free(raw);
    CU_ASSERT_EQUAL(proc_running(pay.p), 1);
    CU_ASSERT_EQUAL(svc_health(&pay, 2000), 1);
}

static void test_payment_credit_key_credits_once(void)
{
    pb_account *a = NULL, *b = NULL;

    CU_ASSERT_EQUAL_FATAL(credit("cust-k", 1000, "top-up-1", &a, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(credit("cust-k", 1000, "top-up-1", &b, NULL), CH_OK);
    CU_ASSERT_EQUAL(a->credited_cents, 1000);
    CU_ASSERT_EQUAL(b->credited_cents, 1000); /* the retry answers with the account as it is */
    protobuf_c_message_free_unpacked(&a->base, NULL);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    CU_ASSERT_EQUAL(credit("cust-k", 1000, "top-up-2", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(credit("cust-k2", 1000, "top-up-1", NULL, NULL), CH_OK); /* keys are per customer */
    assert_account("cust-k", 2000, 2000, 0, 0);
    assert_account("cust-k2", 1000, 1000, 0, 0);
}

/* Polls GetAccount (up to 10 s) until the customer has been credited
 * `credited` cents in all. */
static bool wait_credited(const char *customer, int64_t credited)
{
    long long until = test_now_ms() + 10000;
    do {
        ch_status st;
        pb_account *a = get_account(customer, &st, NULL);
        bool done = a && a->credited_cents == credited;
        if (a)
            protobuf_c_message_free_unpacked(&a->base, NULL);
        if (done)
            return true;
        sleep_ms(20);
    } while (test_now_ms() < until);
    return false;
}

/* NATS stores a credit but its answer comes after the service's publish
 * timeout (a relay holds NATS's replies to the service): the caller is told
 * that the credit may have happened, not that it did not. A retry with the
 * same key credits nothing more; a credit sent without a key shows up once. */
static void test_payment_unconfirmed_credit_is_reported_as_such(void)
{
    int n_extra = pay.n_extra;
    rpc_client_result res;
    pb_account *a = NULL;
    relay *r = NULL;

    CU_ASSERT_EQUAL_FATAL(relay_start(&r, natsd_port(nats)), CH_OK);
    CU_ASSERT_EQUAL_FATAL(
        svc_restart_against(&pay, relay_url(r), n_extra, "CHOREO_PUBLISH_TIMEOUT_MS=500", 15000, NULL),
        CH_OK);

    relay_hold_replies_after(r, "events.payment.credited", 2000);
    CU_ASSERT_EQUAL(credit("cust-late", 700, "late-1", NULL, &res), CH_TIMEOUT);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "may have happened"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "retry with the same idempotency_key"));
    CU_ASSERT_TRUE(wait_credited("cust-late", 700)); /* it had: the read catches up with the stream */
    CU_ASSERT_EQUAL_FATAL(credit("cust-late", 700, "late-1", &a, NULL), CH_OK);
    CU_ASSERT_EQUAL(a->credited_cents, 700);
    protobuf_c_message_free_unpacked(&a->base, NULL);

    relay_hold_replies_after(r, "events.payment.credited", 2000);
    CU_ASSERT_EQUAL(credit("cust-late", 300, NULL, NULL, &res), CH_TIMEOUT);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "read the account before retrying"));
    CU_ASSERT_TRUE(wait_credited("cust-late", 1000));
    assert_account("cust-late", 1000, 1000, 0, 0);

    CU_ASSERT_EQUAL_FATAL(svc_restart_against(&pay, natsd_url(nats), n_extra, NULL, 15000, NULL), CH_OK);
    relay_destroy(r);
    assert_account("cust-late", 1000, 1000, 0, 0); /* the stream folds each credit once */
}

static void test_payment_charge_publishes_processed(void)
{
    CU_ASSERT_EQUAL_FATAL(credit("cust-c", 10000, NULL, NULL, NULL), CH_OK);
    make_reserved("ord-c1", "cust-c", 3000);
    char cause_id[EVENT_ID_LEN + 1];
    snprintf(cause_id, sizeof cause_id, "%s", env.event_id);
    publish_env(NULL);

    pb_payment *p = wait_payment("ord-c1", 0, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(p->status, CHOREO__PAYMENT__V1__PAYMENT_STATUS__PAYMENT_STATUS_CHARGED);
    CU_ASSERT_EQUAL(p->amount_cents, 3000);
    CU_ASSERT_STRING_EQUAL(p->customer_id, "cust-c");
    CU_ASSERT_STRING_EQUAL(p->reason, "");
    protobuf_c_message_free_unpacked(&p->base, NULL);
    assert_account("cust-c", 7000, 10000, 3000, 0);

    /* payment.processed is durable by the time the payment is visible: the
     * handler publishes before it acks, and GetPayment reads the state that
     * its event made; allow the publish a moment */
    seen *s = NULL;
    for (int i = 0; i < 100 && (!s || s->processed == 0); i++, sleep_ms(20))
        s = published_for("ord-c1");
    CU_ASSERT_EQUAL_FATAL(s->processed, 1);
    CU_ASSERT_EQUAL(s->failed + s->refunded, 0);
    CU_ASSERT_STRING_EQUAL(s->msg_id, "ord-c1:payment.processed");
    CU_ASSERT_STRING_EQUAL(s->traceparent, TRACEPARENT);
    CU_ASSERT_STRING_EQUAL(s->last.producer, "payment");
    CU_ASSERT_STRING_EQUAL(s->last.causation_id, cause_id);
    CU_ASSERT_STRING_EQUAL(s->last.traceparent, TRACEPARENT);
    CU_ASSERT_STRING_EQUAL(s->last.payload.payment_processed.customer_id, "cust-c");
    CU_ASSERT_EQUAL(s->last.payload.payment_processed.amount_cents, 3000);
}

static void test_payment_decline_publishes_failed(void)
{
    CU_ASSERT_EQUAL_FATAL(credit("cust-d", 500, NULL, NULL, NULL), CH_OK);
    make_reserved("ord-d1", "cust-d", 3000);
    publish_env(NULL);
    make_reserved("ord-d2", "cust-never-credited", 1);
    publish_env(NULL);

    pb_payment *p = wait_payment("ord-d1", 0, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(p->status, CHOREO__PAYMENT__V1__PAYMENT_STATUS__PAYMENT_STATUS_DECLINED);
    CU_ASSERT_STRING_EQUAL(p->reason, "insufficient funds: balance 500 < total 3000");
    protobuf_c_message_free_unpacked(&p->base, NULL);
    assert_account("cust-d", 500, 500, 0, 0); /* nothing charged */

    p = wait_payment("ord-d2", 0, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(p->status, CHOREO__PAYMENT__V1__PAYMENT_STATUS__PAYMENT_STATUS_DECLINED);
    CU_ASSERT_STRING_EQUAL(p->reason, "insufficient funds: balance 0 < total 1");
    protobuf_c_message_free_unpacked(&p->base, NULL);
    ch_status st;
    CU_ASSERT_PTR_NULL(get_account("cust-never-credited", &st, NULL));
    CU_ASSERT_EQUAL(st, CH_NOT_FOUND);

    seen *s = NULL;
    for (int i = 0; i < 100 && (!s || s->failed == 0); i++, sleep_ms(20))
        s = published_for("ord-d1");
    CU_ASSERT_EQUAL_FATAL(s->failed, 1);
    CU_ASSERT_EQUAL(s->processed, 0);
    CU_ASSERT_STRING_EQUAL(s->msg_id, "ord-d1:payment.failed");
    CU_ASSERT_STRING_EQUAL(s->last.payload.payment_failed.customer_id, "cust-d");
    CU_ASSERT_EQUAL(s->last.payload.payment_failed.amount_cents, 3000);
    CU_ASSERT_EQUAL(s->last.payload.payment_failed.balance_cents, 500);
    CU_ASSERT_STRING_EQUAL(s->last.payload.payment_failed.reason,
                           "insufficient funds: balance 500 < total 3000");
}

static void test_payment_duplicates_charge_once(void)
{
    CU_ASSERT_EQUAL_FATAL(credit("cust-dup", 10000, NULL, NULL, NULL), CH_OK);
    make_reserved("ord-dup", "cust-dup", 4000);
    publish_env(NULL);
    publish_env(NULL);             /* same Nats-Msg-Id: JetStream drops it */
    publish_env("another-msg-id"); /* same event, new id: stored, delivered, must change nothing */
    env.payload.inventory_reserved.total_cents = 100;
    publish_env("a-third-msg-id"); /* even a different total: the first decision stands */

    int stored = 0;
    CU_ASSERT_EQUAL(bus_replay(pub, EVENT_STREAM_INVENTORY, "events.inventory.reserved.ord-dup", 1,
                               count_msgs, &stored, NULL),
                    CH_OK);
    CU_ASSERT_EQUAL(stored, 3);
    barrier_reserved("ord-dup-marker");

    assert_account("cust-dup", 6000, 10000, 4000, 0);
    seen *s = published_for("ord-dup");
    CU_ASSERT_EQUAL(s->processed, 1); /* re-published, and dropped as a duplicate */
    CU_ASSERT_EQUAL(s->failed, 0);
    ch_status st;
    pb_payment *p = get_payment("ord-dup", &st, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(p->amount_cents, 4000);
    protobuf_c_message_free_unpacked(&p->base, NULL);
}

static void test_payment_refund_on_cancel_once(void)
{
    CU_ASSERT_EQUAL_FATAL(credit("cust-r", 10000, NULL, NULL, NULL), CH_OK);
    make_reserved("ord-r1", "cust-r", 2500);
    publish_env(NULL);
    make_reserved("ord-r2", "cust-r", 1000);
    publish_env(NULL);
    make_reserved("ord-r3", "cust-r", 99999); /* declined */
    publish_env(NULL);
    pb_payment *p = wait_payment("ord-r3", 0, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    assert_account("cust-r", 6500, 10000, 3500, 0);

    make_cancel("ord-r1", "cust-r", 2500);
    publish_env(NULL);
    publish_env("cancel-again");            /* a duplicate with another id */
    make_cancel("ord-r3", "cust-r", 99999); /* declined: nothing to refund */
    publish_env(NULL);
    make_cancel("ord-r-unknown", "cust-r", 1); /* no payment at all */
    publish_env(NULL);
    make_cancel("ord-r2", "cust-r", 1000); /* marker: handled after all the above */
    publish_env(NULL);

    p = wait_payment("ord-r2", CHOREO__PAYMENT__V1__PAYMENT_STATUS__PAYMENT_STATUS_REFUNDED, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    ch_status st;
    p = get_payment("ord-r1", &st, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(p->status, CHOREO__PAYMENT__V1__PAYMENT_STATUS__PAYMENT_STATUS_REFUNDED);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    p = get_payment("ord-r3", &st, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(p->status, CHOREO__PAYMENT__V1__PAYMENT_STATUS__PAYMENT_STATUS_DECLINED);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    assert_account("cust-r", 10000, 10000, 3500, 3500);

    seen *s = published_for("ord-r1");
    CU_ASSERT_EQUAL(s->processed, 1);
    CU_ASSERT_EQUAL(s->refunded, 1);
    CU_ASSERT_STRING_EQUAL(s->msg_id, "ord-r1:payment.refunded");
    CU_ASSERT_STRING_EQUAL(s->last.payload.payment_refunded.customer_id, "cust-r");
    CU_ASSERT_EQUAL(s->last.payload.payment_refunded.amount_cents, 2500);
    s = published_for("ord-r3");
    CU_ASSERT_EQUAL(s->refunded, 0);
    s = published_for("ord-r-unknown");
    CU_ASSERT_EQUAL(s->processed + s->failed + s->refunded, 0);
}

static void test_payment_poison_event_is_dead_lettered(void)
{
    make_reserved("ord-poison", "cust-c", -5); /* a total no order can have */
    publish_env(NULL);
    make_reserved("ord-poison2", "", 5); /* no customer */
    publish_env(NULL);
    barrier_reserved("ord-poison-marker"); /* the events behind them keep flowing */

    int dead = 0;
    CU_ASSERT_EQUAL(bus_replay(pub, BUS_DEADLETTER_STREAM, "deadletter.events.inventory.reserved.ord-poison",
                               1, count_msgs, &dead, NULL),
                    CH_OK);
    CU_ASSERT_EQUAL(dead, 1);
    CU_ASSERT_EQUAL(bus_replay(pub, BUS_DEADLETTER_STREAM, "deadletter.events.inventory.reserved.ord-poison2",
                               1, count_msgs, &dead, NULL),
                    CH_OK);
    CU_ASSERT_EQUAL(dead, 2);
    ch_status st;
    CU_ASSERT_PTR_NULL(get_payment("ord-poison", &st, NULL));
    CU_ASSERT_EQUAL(st, CH_NOT_FOUND);
    CU_ASSERT_EQUAL(proc_running(pay.p), 1);
}

/* One ListPayments page of a customer's payments; NULL on error. */
static Choreo__Payment__V1__ListPaymentsResponse *list_page(const char *customer, uint32_t size,
                                                            const char *token)
{
    Choreo__Payment__V1__ListPaymentsRequest req = CHOREO__PAYMENT__V1__LIST_PAYMENTS_REQUEST__INIT;
    Choreo__Payment__V1__ListPaymentsResponse *resp = NULL;
    rpc_client_result res;
    req.page_size = size;
    req.customer_id = (char *)customer;
    req.page_token = (char *)token;
    if (rpc_client_call(pay.client, SVC "ListPayments", NULL, 0, &req.base,
                        &choreo__payment__v1__list_payments_response__descriptor, (ProtobufCMessage **)&resp,
                        5000, &res) != CH_OK) {
        fprintf(stderr, "ListPayments %s: %d %s\n", customer, res.code, res.details);
        return NULL;
    }
    return resp;
}

static void test_payment_list_pages_newest_first(void)
{
    char order[32], token[64] = "";
    int seen_n = 0;

    CU_ASSERT_EQUAL_FATAL(credit("cust-list", 100000, NULL, NULL, NULL), CH_OK);
    for (int i = 0; i < 5; i++) {
        snprintf(order, sizeof order, "ord-list-%d", i);
        make_reserved(order, "cust-list", 10 + i);
        publish_env(NULL);
    }
    pb_payment *p = wait_payment("ord-list-4", 0, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    do {
        Choreo__Payment__V1__ListPaymentsResponse *resp = list_page("cust-list", 2, token);
        CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
        CU_ASSERT_TRUE(resp->n_payments <= 2);
        for (size_t i = 0; i < resp->n_payments; i++, seen_n++) {
            snprintf(order, sizeof order, "ord-list-%d", 4 - seen_n);
            CU_ASSERT_STRING_EQUAL(resp->payments[i]->order_id, order);
            CU_ASSERT_STRING_EQUAL(resp->payments[i]->customer_id, "cust-list");
        }
        snprintf(token, sizeof token, "%s", resp->next_page_token);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    } while (token[0] && seen_n < 10);
    CU_ASSERT_EQUAL(seen_n, 5);

    /* every customer: at least these five and the others */
    Choreo__Payment__V1__ListPaymentsRequest all = CHOREO__PAYMENT__V1__LIST_PAYMENTS_REQUEST__INIT;
    Choreo__Payment__V1__ListPaymentsResponse *resp = NULL;
    CU_ASSERT_EQUAL_FATAL(rpc_client_call(pay.client, SVC "ListPayments", NULL, 0, &all.base,
                                          &choreo__payment__v1__list_payments_response__descriptor,
                                          (ProtobufCMessage **)&resp, 5000, NULL),
                          CH_OK);
    CU_ASSERT_TRUE(resp->n_payments > 5);
    CU_ASSERT_STRING_EQUAL(resp->payments[0]->order_id, "ord-list-4");
    protobuf_c_message_free_unpacked(&resp->base, NULL);

    rpc_client_result res;
    ProtobufCMessage *none = NULL;
    all.page_size = PAY_PAGE_MAX + 1;
    CU_ASSERT_EQUAL(rpc_client_call(pay.client, SVC "ListPayments", NULL, 0, &all.base,
                                    &choreo__payment__v1__list_payments_response__descriptor, &none, 5000,
                                    &res),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "page_size"));
    all.page_size = 0;
    all.page_token = (char *)"bogus";
    CU_ASSERT_EQUAL(rpc_client_call(pay.client, SVC "ListPayments", NULL, 0, &all.base,
                                    &choreo__payment__v1__list_payments_response__descriptor, &none, 5000,
                                    &res),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "page_token"));
}

/* 480 declined payments of ~165 bytes are ~79 KB: more than one reply may
 * carry (CHOREO_MAX_MESSAGE_BYTES, 64 KiB). A page of 500 is cut where the
 * reply is full, and its token goes on from there. */
static void test_payment_list_page_too_big_for_one_reply_is_cut(void)
{
    enum { N = 480 };
    char customer[65], order[41], token[64] = "";
    int seen_n = 0, pages = 0, first_page = 0;

    memset(customer, 'p', 64);
    customer[64] = '\0';
    CU_ASSERT_EQUAL_FATAL(credit(customer, 1, NULL, NULL, NULL), CH_OK);
    for (int i = 0; i < N; i++) {
        snprintf(order, sizeof order, "ord-bigpay-%029d", i);
        make_reserved(order, customer, 100000000 + i); /* declined: the reason makes it long */
        publish_env(NULL);
    }
    pb_payment *p = wait_payment(order, 0, 15000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    do {
        Choreo__Payment__V1__ListPaymentsResponse *resp = list_page(customer, 500, token);
        CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
        if (pages == 0)
            first_page = (int)resp->n_payments;
        for (size_t i = 0; i < resp->n_payments && seen_n < N; i++, seen_n++) {
            snprintf(order, sizeof order, "ord-bigpay-%029d", N - 1 - seen_n);
            CU_ASSERT_STRING_EQUAL(resp->payments[i]->order_id, order);
        }
        snprintf(token, sizeof token, "%s", resp->next_page_token);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        pages++;
    } while (token[0] && pages < 20);
    CU_ASSERT_EQUAL(seen_n, N);
    CU_ASSERT_TRUE(first_page > 0 && first_page < N);
}

static void test_payment_state_survives_kill_and_restart(void)
{
    pb_account *a = NULL;

    CU_ASSERT_EQUAL_FATAL(credit("cust-s", 8000, "restart-key", NULL, NULL), CH_OK);
    make_reserved("ord-s1", "cust-s", 3000);
    publish_env(NULL);
    pb_payment *p = wait_payment("ord-s1", 0, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    protobuf_c_message_free_unpacked(&p->base, NULL);

    svc_kill(&pay); /* no goodbye: the state must come back from the stream */
    /* events published while it is down wait in the stream */
    make_reserved("ord-s2", "cust-s", 9000); /* above the balance before and after the refund */
    publish_env(NULL);
    make_reserved("ord-s1", "cust-s", 3000); /* a redelivered duplicate */
    publish_env("ord-s1-again");
    make_cancel("ord-s1", "cust-s", 3000);
    publish_env(NULL);
    CU_ASSERT_EQUAL_FATAL(svc_restart(&pay, 15000), CH_OK);

    p = wait_payment("ord-s1", CHOREO__PAYMENT__V1__PAYMENT_STATUS__PAYMENT_STATUS_REFUNDED, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    p = wait_payment("ord-s2", 0, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(p->status, CHOREO__PAYMENT__V1__PAYMENT_STATUS__PAYMENT_STATUS_DECLINED);
    CU_ASSERT_PTR_NOT_NULL(strstr(p->reason, "insufficient funds: balance "));
    protobuf_c_message_free_unpacked(&p->base, NULL);
    assert_account("cust-s", 8000, 8000, 3000, 3000);
    /* accounts from before, and the idempotency key, survived */
    assert_account("cust-c", 7000, 10000, 3000, 0);
    assert_account("cust-r", 10000, 10000, 3500, 3500);
    CU_ASSERT_EQUAL(credit("cust-s", 8000, "restart-key", &a, NULL), CH_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(a->credited_cents, 8000);
    protobuf_c_message_free_unpacked(&a->base, NULL);
    seen *s = published_for("ord-s1");
    CU_ASSERT_EQUAL(s->processed, 1);
    CU_ASSERT_EQUAL(s->refunded, 1);
}

static void test_payment_health_and_reflection(void)
{
    Grpc__Reflection__V1__ServerReflectionRequest req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rpc_client_stream *st = NULL;
    ProtobufCMessage *msg = NULL;
    bool listed = false;

    CU_ASSERT_EQUAL(svc_health(&pay, 2000), 1 /* SERVING */);
    req.message_request_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    req.list_services = (char *)"*";
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(pay.client,
                                                 "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                                 NULL, 0, &req.base, 5000, &st),
                          CH_OK);
    CU_ASSERT_EQUAL(
        rpc_client_stream_next(st, &grpc__reflection__v1__server_reflection_response__descriptor, &msg, 5000),
        CH_OK);
    Grpc__Reflection__V1__ServerReflectionResponse *r = (Grpc__Reflection__V1__ServerReflectionResponse *)msg;
    if (r && r->message_response_case ==
                 GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE)
        for (size_t i = 0; i < r->list_services_response->n_service; i++)
            listed |= strcmp(r->list_services_response->service[i]->name, "choreo.payment.v1.Payment") == 0;
    CU_ASSERT_TRUE(listed);
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
    rpc_client_stream_close(st);
}

static void test_payment_sigterm_exits_zero(void)
{
    int exit_status = -1;
    CU_ASSERT_EQUAL(svc_stop(&pay, 15000, &exit_status), CH_OK);
    CU_ASSERT_EQUAL(exit_status, 0);
}

int main(void)
{
    static const cu_test tests[] = {
        {"credit and get account", test_payment_credit_and_get_account},
        {"bad input is refused, not fatal", test_payment_bad_input_is_refused_not_fatal},
        {"credit key credits once", test_payment_credit_key_credits_once},
        {"unconfirmed credit is reported as such", test_payment_unconfirmed_credit_is_reported_as_such},
        {"charge publishes payment.processed", test_payment_charge_publishes_processed},
        {"decline publishes payment.failed", test_payment_decline_publishes_failed},
        {"duplicates charge once", test_payment_duplicates_charge_once},
        {"refund on cancel, once", test_payment_refund_on_cancel_once},
        {"poison event is dead-lettered", test_payment_poison_event_is_dead_lettered},
        {"list pages newest first", test_payment_list_pages_newest_first},
        {"list page too big for one reply is cut", test_payment_list_page_too_big_for_one_reply_is_cut},
        {"state survives kill -9 and restart", test_payment_state_survives_kill_and_restart},
        {"health and reflection", test_payment_health_and_reflection},
        {"SIGTERM exits 0", test_payment_sigterm_exits_zero},
        {NULL, NULL},
    };
    return cu_run("payment_integration", suite_init, suite_cleanup, tests);
}
