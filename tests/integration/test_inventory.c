/* test_inventory.c: the inventory service end to end, against a real
 * nats-server (JetStream, file storage, temp dir, free port) and the real
 * binary. Events are driven by publishing envelopes as the other services
 * would (to their streams), and inventory's are read back from its own
 * stream, INVENTORY_EVENTS, which is also its record. */
#include <CUnit/CUnit.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"
#include "choreo/inventory/v1/inventory.pb-c.h"
#include "cu_run.h"
#include "event_bus.h"
#include "event_codec.h"
#include "harness.h"
#include "relay.h"

#define TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define SVC         "/choreo.inventory.v1.Inventory/"
#define WAIT_MS     10000

static natsd *nats;
static svc_proc inv;
static bus *pub;
static natsConnection *nc; /* consumer info, to know when a consumer is idle */
static jsCtx *js;
static choreo_events_v1_Envelope *env; /* big: kept off the stack */

static int suite_init(void)
{
    bus_options bo = {.no_retry_on_failed_connect = true};

    env = calloc(1, sizeof *env);
    if (!env || natsd_start(&nats, NULL) != CH_OK)
        return 1;
    if (svc_start(&inv, "inventory", INVENTORY_BIN, natsd_url(nats), NULL, 15000) != CH_OK)
        return 1;
    bo.url = natsd_url(nats);
    if (bus_create(&pub, &bo) != CH_OK)
        return 1;
    if (natsConnection_ConnectTo(&nc, natsd_url(nats)) != NATS_OK ||
        natsConnection_JetStream(&js, nc, NULL) != NATS_OK)
        return 1;
    return 0;
}

static int suite_cleanup(void)
{
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    bus_destroy(pub);
    svc_destroy(&inv);
    natsd_destroy(nats);
    bus_library_shutdown();
    free(env);
    return 0;
}

static void sleep_ms(int ms)
{
    nanosleep(&(struct timespec){ms / 1000, (long)(ms % 1000) * 1000000L}, NULL);
}

/* ---- the gRPC API ---- */

typedef struct level {
    int64_t available, reserved, sold, total_in;
} level;

static ch_status call(const char *method, const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
                      ProtobufCMessage **resp, rpc_client_result *res)
{
    char path[128];
    snprintf(path, sizeof path, SVC "%s", method);
    return rpc_client_call(inv.client, path, NULL, 0, req, desc, resp, 5000, res);
}

static level level_of(const Choreo__Inventory__V1__StockLevel *s)
{
    level l = {s->available, s->reserved, s->sold, s->total_in};
    CU_ASSERT_EQUAL(l.available + l.reserved + l.sold, l.total_in); /* conservation, on every read */
    return l;
}

static ch_status set_stock(const char *sku, int64_t available, level *out, rpc_client_result *res)
{
    Choreo__Inventory__V1__SetStockRequest req = CHOREO__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    Choreo__Inventory__V1__SetStockResponse *resp = NULL;
    req.sku = (char *)sku;
    req.available = available;
    ch_status st = call("SetStock", &req.base, &choreo__inventory__v1__set_stock_response__descriptor,
                        (ProtobufCMessage **)&resp, res);
    if (st == CH_OK) {
        if (out)
            *out = level_of(resp->stock);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return st;
}

/* AdjustStock with an idempotency key ("" for none). */
static ch_status adjust_stock_key(const char *sku, int64_t delta, const char *key, level *out,
                                  rpc_client_result *res)
{
    Choreo__Inventory__V1__AdjustStockRequest req = CHOREO__INVENTORY__V1__ADJUST_STOCK_REQUEST__INIT;
    Choreo__Inventory__V1__AdjustStockResponse *resp = NULL;
    req.sku = (char *)sku;
    req.delta = delta;
    req.idempotency_key = (char *)key;
    ch_status st = call("AdjustStock", &req.base, &choreo__inventory__v1__adjust_stock_response__descriptor,
                        (ProtobufCMessage **)&resp, res);
    if (st == CH_OK) {
        if (out)
            *out = level_of(resp->stock);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return st;
}

static ch_status adjust_stock(const char *sku, int64_t delta, level *out, rpc_client_result *res)
{
    return adjust_stock_key(sku, delta, "", out, res);
}

static ch_status get_stock(const char *sku, level *out, rpc_client_result *res)
{
    Choreo__Inventory__V1__GetStockRequest req = CHOREO__INVENTORY__V1__GET_STOCK_REQUEST__INIT;
    Choreo__Inventory__V1__GetStockResponse *resp = NULL;
    req.sku = (char *)sku;
    ch_status st = call("GetStock", &req.base, &choreo__inventory__v1__get_stock_response__descriptor,
                        (ProtobufCMessage **)&resp, res);
    if (st == CH_OK) {
        *out = level_of(resp->stock);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return st;
}

static void expect_level(const char *sku, int64_t available, int64_t reserved, int64_t sold, int64_t total_in)
{
    level l = {-1, -1, -1, -1};
    CU_ASSERT_EQUAL_FATAL(get_stock(sku, &l, NULL), CH_OK);
    CU_ASSERT_EQUAL(l.available, available);
    CU_ASSERT_EQUAL(l.reserved, reserved);
    CU_ASSERT_EQUAL(l.sold, sold);
    CU_ASSERT_EQUAL(l.total_in, total_in);
    if (l.available != available || l.reserved != reserved || l.sold != sold || l.total_in != total_in)
        fprintf(stderr, "\n%s: got %lld/%lld/%lld/%lld, want %lld/%lld/%lld/%lld\n", sku,
                (long long)l.available, (long long)l.reserved, (long long)l.sold, (long long)l.total_in,
                (long long)available, (long long)reserved, (long long)sold, (long long)total_in);
}

/* The reservation of an order (caller frees), or NULL with *st set. */
static Choreo__Inventory__V1__Reservation *get_reservation(const char *order_id, ch_status *st,
                                                           rpc_client_result *res)
{
    Choreo__Inventory__V1__GetReservationRequest req = CHOREO__INVENTORY__V1__GET_RESERVATION_REQUEST__INIT;
    Choreo__Inventory__V1__GetReservationResponse *resp = NULL;
    req.order_id = (char *)order_id;
    *st = call("GetReservation", &req.base, &choreo__inventory__v1__get_reservation_response__descriptor,
               (ProtobufCMessage **)&resp, res);
    if (*st != CH_OK)
        return NULL;
    Choreo__Inventory__V1__Reservation *r = resp->reservation;
    resp->reservation = NULL;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return r;
}

static int reservation_status(const char *order_id)
{
    ch_status st;
    Choreo__Inventory__V1__Reservation *r = get_reservation(order_id, &st, NULL);
    if (!r)
        return -1;
    int s = (int)r->status;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return s;
}

static bool wait_reservation_status(const char *order_id, int want)
{
    for (int waited = 0; waited < WAIT_MS; waited += 20) {
        if (reservation_status(order_id) == want)
            return true;
        sleep_ms(20);
    }
    fprintf(stderr, "\n%s: reservation status %d, want %d\n", order_id, reservation_status(order_id), want);
    return false;
}

/* ---- events in and out ---- */

/* Fills the shared envelope as order.created from orders. */
static void created(const char *order_id, const char *customer, const char *const *skus, const uint32_t *qty,
                    size_t n, int64_t total)
{
    CU_ASSERT_EQUAL_FATAL(event_init(env, EVENT_ORDER_CREATED, order_id, "rpc-test", "orders", TRACEPARENT),
                          CH_OK);
    choreo_events_v1_OrderCreated *c = &env->payload.order_created;
    snprintf(c->customer_id, sizeof c->customer_id, "%s", customer);
    c->items_count = (pb_size_t)n;
    for (size_t i = 0; i < n; i++) {
        snprintf(c->items[i].sku, sizeof c->items[i].sku, "%s", skus[i]);
        c->items[i].quantity = qty[i];
        c->items[i].unit_price_cents = 1;
    }
    c->total_cents = total;
}

/* Fills the shared envelope as a payment or cancel event for order_id. */
static void saga_event(event_type t, const char *order_id, const char *reason)
{
    const char *producer = t == EVENT_ORDER_CANCEL_REQUESTED ? "orders" : "payment";
    CU_ASSERT_EQUAL_FATAL(event_init(env, t, order_id, "test-cause", producer, TRACEPARENT), CH_OK);
    if (t == EVENT_PAYMENT_FAILED)
        snprintf(env->payload.payment_failed.reason, sizeof env->payload.payment_failed.reason, "%s", reason);
    if (t == EVENT_ORDER_CANCEL_REQUESTED)
        snprintf(env->payload.order_cancel_requested.reason,
                 sizeof env->payload.order_cancel_requested.reason, "%s", reason);
}

/* Publishes the shared envelope with its deterministic msg id; *dup tells
 * whether JetStream dropped it as a duplicate. */
static void publish(bool *dup)
{
    bus_pub_ack ack = {0};
    CU_ASSERT_EQUAL_FATAL(event_publish(pub, env, 5000, &ack), CH_OK);
    if (dup)
        *dup = ack.duplicate;
}

/* Publishes the shared envelope as a fresh event (new event id) under a
 * different Nats-Msg-Id, so JetStream stores it again: only the handler's
 * own idempotency stands between it and a second effect. */
static void publish_again_under_new_msg_id(const char *tag)
{
    uint8_t data[EVENT_MAX_BYTES];
    char subject[EVENT_SUBJECT_MAX], msg_id[EVENT_MSG_ID_MAX + 32];
    size_t len = 0;
    event_type t;
    bus_pub_ack ack = {0};

    CU_ASSERT_EQUAL_FATAL(event_type_of(env, &t), CH_OK);
    static unsigned fresh;
    snprintf(env->event_id, sizeof env->event_id, "feed%028x", ++fresh);
    CU_ASSERT_EQUAL_FATAL(event_encode(env, data, sizeof data, &len, NULL, 0), CH_OK);
    CU_ASSERT_EQUAL_FATAL(event_subject(subject, sizeof subject, t, env->order_id), CH_OK);
    snprintf(msg_id, sizeof msg_id, "%s:%s:again-%s", env->order_id, env->type, tag);
    bus_out_msg m = {.subject = subject, .data = data, .len = len, .msg_id = msg_id};
    m.headers[m.nheaders++] = (bus_header){EVENT_HDR_TYPE, env->type};
    CU_ASSERT_EQUAL_FATAL(bus_publish(pub, &m, 5000, &ack), CH_OK);
    CU_ASSERT_FALSE(ack.duplicate);
}

/* Every event of one type for one order in the stream. */
typedef struct found {
    int count;
    char msg_id[96];
    choreo_events_v1_Envelope env; /* the last one */
} found;

static ch_status collect(const bus_in_msg *m, void *arg)
{
    found *f = arg;
    const char *h = bus_in_msg_header(m, "Nats-Msg-Id");
    f->count++;
    snprintf(f->msg_id, sizeof f->msg_id, "%s", h ? h : "");
    return event_decode(m->data, m->len, &f->env, NULL, 0);
}

/* key: the order id, or the SKU of a stock event */
static ch_status read_events(event_type t, const char *order_id, found *f)
{
    char subject[EVENT_SUBJECT_MAX];
    memset(f, 0, sizeof *f);
    if (event_subject(subject, sizeof subject, t, order_id) != CH_OK)
        return CH_INVALID_ARGUMENT;
    return bus_replay(pub, event_stream_of(t), subject, 1, collect, f, NULL);
}

/* Waits until the stream holds at least one event of type t for order_id. */
static bool wait_event(event_type t, const char *order_id, found *f)
{
    for (int waited = 0; waited < WAIT_MS; waited += 20) {
        if (read_events(t, order_id, f) == CH_OK && f->count > 0)
            return true;
        sleep_ms(20);
    }
    fprintf(stderr, "\nno %s for %s\n", event_type_name(t), order_id);
    svc_dump_log(&inv, 20);
    return false;
}

/* Waits for the one event of type t inventory recorded for order_id, caused
 * by the event cause and carrying the saga's trace, into *f. */
static void expect_recorded(event_type t, const char *order_id, const char *cause, found *f)
{
    char msg_id[EVENT_MSG_ID_MAX];
    CU_ASSERT_TRUE_FATAL(wait_event(t, order_id, f));
    CU_ASSERT_EQUAL(f->count, 1);
    snprintf(msg_id, sizeof msg_id, "%s:%s", order_id, event_type_name(t));
    CU_ASSERT_STRING_EQUAL(f->msg_id, msg_id);
    CU_ASSERT_STRING_EQUAL(f->env.producer, "inventory");
    CU_ASSERT_STRING_EQUAL(f->env.causation_id, cause);
    CU_ASSERT_STRING_EQUAL(f->env.traceparent, TRACEPARENT);
}

/* Waits until inventory's consumer of type t has handled and acked
 * everything published so far. */
static bool wait_idle(event_type t)
{
    char durable[64], *p;
    snprintf(durable, sizeof durable, "inventory-%s", event_type_name(t));
    while ((p = strchr(durable, '.')))
        *p = '_';
    for (int waited = 0; waited < WAIT_MS; waited += 20) {
        jsConsumerInfo *ci = NULL;
        if (js_GetConsumerInfo(&ci, js, event_stream_of(t), durable, NULL, NULL) == NATS_OK) {
            bool idle = ci->NumPending == 0 && ci->NumAckPending == 0;
            jsConsumerInfo_Destroy(ci);
            if (idle)
                return true;
        }
        sleep_ms(20);
    }
    fprintf(stderr, "\nconsumer %s never idle\n", durable);
    return false;
}

static void expect_invalid(ch_status st, const rpc_client_result *res, ch_status want, const char *field)
{
    CU_ASSERT_EQUAL(st, want);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->details, field));
    if (st != want || !strstr(res->details, field))
        fprintf(stderr, "\nwanted %s naming %s, got %s: %s\n", ch_status_str(want), field, ch_status_str(st),
                res->details);
}

/* ---- tests ---- */

static void test_inventory_stock_api_and_validation(void)
{
    rpc_client_result res;
    level l;
    ch_status st;

    CU_ASSERT_EQUAL(get_stock("sku-api", &l, &res), CH_NOT_FOUND);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "sku"));
    CU_ASSERT_EQUAL_FATAL(set_stock("sku-api", 10, &l, NULL), CH_OK);
    CU_ASSERT_EQUAL(l.available, 10);
    CU_ASSERT_EQUAL(l.total_in, 10);
    CU_ASSERT_EQUAL_FATAL(adjust_stock("sku-api", 5, &l, NULL), CH_OK);
    CU_ASSERT_EQUAL(l.available, 15);
    CU_ASSERT_EQUAL(l.total_in, 15);
    CU_ASSERT_EQUAL_FATAL(adjust_stock("sku-api", -15, &l, NULL), CH_OK);
    CU_ASSERT_EQUAL(l.available, 0);
    CU_ASSERT_EQUAL(l.total_in, 0);
    expect_level("sku-api", 0, 0, 0, 0);
    /* AdjustStock never makes available negative */
    st = adjust_stock("sku-api", -1, NULL, &res);
    expect_invalid(st, &res, CH_FAILED_PRECONDITION, "delta");
    st = adjust_stock("sku-never", -1, NULL, &res);
    expect_invalid(st, &res, CH_FAILED_PRECONDITION, "delta");
    CU_ASSERT_EQUAL(get_stock("sku-never", &l, NULL), CH_NOT_FOUND);
    /* a positive adjustment creates a SKU */
    CU_ASSERT_EQUAL_FATAL(adjust_stock("sku-adjusted", 3, &l, NULL), CH_OK);
    expect_level("sku-adjusted", 3, 0, 0, 3);

    /* bad input names the field */
    st = set_stock("", 1, NULL, &res);
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "sku: required");
    st = set_stock("sku-\xc3\x28", 1, NULL, &res);
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "sku");
    st = set_stock("sku with space", 1, NULL, &res);
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "sku");
    char longsku[80];
    memset(longsku, 'x', sizeof longsku - 1);
    longsku[sizeof longsku - 1] = '\0';
    st = set_stock(longsku, 1, NULL, &res);
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "sku");
    st = set_stock("sku-api", -1, NULL, &res);
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "available");
    st = set_stock("sku-api", 1000000001, NULL, &res);
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "available");
    st = adjust_stock("sku-api", 0, NULL, &res);
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "delta");
    st = adjust_stock("sku-api", 1000000001, NULL, &res);
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "delta");
    st = get_stock("", &l, &res);
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "sku");
    CU_ASSERT_PTR_NULL(get_reservation("", &st, &res));
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "order_id");
    CU_ASSERT_PTR_NULL(get_reservation("ord.bad", &st, &res));
    expect_invalid(st, &res, CH_INVALID_ARGUMENT, "order_id");
    CU_ASSERT_PTR_NULL(get_reservation("ord-nobody", &st, &res));
    expect_invalid(st, &res, CH_NOT_FOUND, "order_id");

    /* bytes that are not a request */
    const unsigned char garbage[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f};
    void *raw = NULL;
    size_t raw_len = 0;
    CU_ASSERT_EQUAL(rpc_client_call_raw(inv.client, SVC "SetStock", NULL, 0, garbage, sizeof garbage, &raw,
                                        &raw_len, 5000, &res),
                    CH_INVALID_ARGUMENT);
    free(raw);
    expect_level("sku-api", 0, 0, 0, 0); /* nothing changed, still serving */
}

/* SetStock and AdjustStock are recorded as events of their SKU in
 * inventory's stream; a write that changes nothing, or is refused, records
 * nothing. */
static void test_inventory_stock_writes_are_events(void)
{
    char want[EVENT_MSG_ID_MAX];
    rpc_client_result res;
    level l;
    found f;

    CU_ASSERT_EQUAL_FATAL(set_stock("sku-ev", 8, NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(read_events(EVENT_INVENTORY_STOCK_SET, "sku-ev", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
    CU_ASSERT_STRING_EQUAL(f.env.order_id, ""); /* keyed by its SKU */
    CU_ASSERT_STRING_EQUAL(f.env.producer, "inventory");
    CU_ASSERT_STRING_EQUAL(f.env.causation_id, SVC "SetStock");
    CU_ASSERT_STRING_EQUAL(f.env.payload.inventory_stock_set.sku, "sku-ev");
    CU_ASSERT_EQUAL(f.env.payload.inventory_stock_set.available, 8);
    CU_ASSERT_EQUAL(f.env.payload.inventory_stock_set.delta, 8);
    snprintf(want, sizeof want, "sku-ev:inventory.stock_set:%s", f.env.event_id);
    CU_ASSERT_STRING_EQUAL(f.msg_id, want);
    CU_ASSERT_EQUAL_FATAL(set_stock("sku-ev", 3, NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_STOCK_SET, "sku-ev", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 2);
    CU_ASSERT_EQUAL(f.env.payload.inventory_stock_set.available, 3);
    CU_ASSERT_EQUAL(f.env.payload.inventory_stock_set.delta, -5);
    /* the level it has already: answered, nothing recorded */
    CU_ASSERT_EQUAL_FATAL(set_stock("sku-ev", 3, &l, NULL), CH_OK);
    CU_ASSERT_EQUAL(l.available, 3);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_STOCK_SET, "sku-ev", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 2);

    CU_ASSERT_EQUAL_FATAL(adjust_stock_key("sku-ev", 4, "ev-1", &l, NULL), CH_OK);
    CU_ASSERT_EQUAL(l.available, 7);
    CU_ASSERT_EQUAL_FATAL(read_events(EVENT_INVENTORY_STOCK_ADJUSTED, "sku-ev", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
    CU_ASSERT_STRING_EQUAL(f.env.order_id, "");
    CU_ASSERT_STRING_EQUAL(f.env.causation_id, SVC "AdjustStock");
    CU_ASSERT_STRING_EQUAL(f.env.payload.inventory_stock_adjusted.sku, "sku-ev");
    CU_ASSERT_EQUAL(f.env.payload.inventory_stock_adjusted.delta, 4);
    CU_ASSERT_STRING_EQUAL(f.env.payload.inventory_stock_adjusted.idempotency_key, "ev-1");
    /* a retry with the same key, and a refused adjustment: nothing recorded */
    CU_ASSERT_EQUAL_FATAL(adjust_stock_key("sku-ev", 4, "ev-1", &l, NULL), CH_OK);
    CU_ASSERT_EQUAL(l.available, 7);
    expect_invalid(adjust_stock("sku-ev", -100, NULL, &res), &res, CH_FAILED_PRECONDITION, "delta");
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_STOCK_ADJUSTED, "sku-ev", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
    /* without a key, every call is one */
    CU_ASSERT_EQUAL_FATAL(adjust_stock("sku-ev", -2, NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_STOCK_ADJUSTED, "sku-ev", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 2);
    CU_ASSERT_EQUAL(f.env.payload.inventory_stock_adjusted.delta, -2);
    CU_ASSERT_STRING_EQUAL(f.env.payload.inventory_stock_adjusted.idempotency_key, "");
    expect_level("sku-ev", 5, 0, 0, 5);
}

static void test_inventory_list_pages_in_byte_order(void)
{
    const char *mine[] = {"list-c", "list-a", "list-E", "list-b", "list-d"};
    rpc_client_result res;
    char token[256] = "", prev[80] = "";
    int seen_mine = 0, pages = 0;

    for (size_t i = 0; i < 5; i++)
        CU_ASSERT_EQUAL_FATAL(set_stock(mine[i], (int64_t)i + 1, NULL, NULL), CH_OK);
    do {
        Choreo__Inventory__V1__ListStockRequest req = CHOREO__INVENTORY__V1__LIST_STOCK_REQUEST__INIT;
        Choreo__Inventory__V1__ListStockResponse *resp = NULL;
        req.page_size = 2;
        req.page_token = token;
        CU_ASSERT_EQUAL_FATAL(call("ListStock", &req.base,
                                   &choreo__inventory__v1__list_stock_response__descriptor,
                                   (ProtobufCMessage **)&resp, NULL),
                              CH_OK);
        CU_ASSERT_TRUE(resp->n_stock <= 2);
        for (size_t i = 0; i < resp->n_stock; i++) {
            level_of(resp->stock[i]);
            CU_ASSERT_TRUE(strcmp(prev, resp->stock[i]->sku) < 0); /* strictly increasing bytes */
            snprintf(prev, sizeof prev, "%s", resp->stock[i]->sku);
            seen_mine += strncmp(prev, "list-", 5) == 0;
        }
        snprintf(token, sizeof token, "%s", resp->next_page_token);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        pages++;
    } while (token[0] && pages < 100);
    CU_ASSERT_EQUAL(seen_mine, 5);
    CU_ASSERT_TRUE(pages >= 3);

    Choreo__Inventory__V1__ListStockRequest bad = CHOREO__INVENTORY__V1__LIST_STOCK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    bad.page_size = 501;
    expect_invalid(
        call("ListStock", &bad.base, &choreo__inventory__v1__list_stock_response__descriptor, &resp, &res),
        &res, CH_INVALID_ARGUMENT, "page_size");
    bad.page_size = 0;
    bad.page_token = (char *)"not-a-token";
    expect_invalid(
        call("ListStock", &bad.base, &choreo__inventory__v1__list_stock_response__descriptor, &resp, &res),
        &res, CH_INVALID_ARGUMENT, "page_token");
}

/* With CHOREO_MAX_MESSAGE_BYTES=2048, 40 SKUs of 64 bytes (~3.8 KB) do not
 * fit in one reply: a page of 100 is cut where the reply is full, and its
 * token goes on from there, in byte order, each SKU once. */
static void test_inventory_list_page_too_big_for_one_reply_is_cut(void)
{
    enum { N = 40 };
    char sku[65], token[256] = "", prev[80] = "";
    int n_extra = inv.n_extra, seen_mine = 0, pages = 0, cut = 0;

    CU_ASSERT_EQUAL_FATAL(
        svc_restart_against(&inv, inv.nats_url, n_extra, "CHOREO_MAX_MESSAGE_BYTES=2048", 15000, NULL),
        CH_OK);
    for (int i = 0; i < N; i++) {
        snprintf(sku, sizeof sku, "fit-%060d", i);
        CU_ASSERT_EQUAL(set_stock(sku, 1, NULL, NULL), CH_OK);
    }
    do { /* no FATAL until the service is back to its settings */
        Choreo__Inventory__V1__ListStockRequest req = CHOREO__INVENTORY__V1__LIST_STOCK_REQUEST__INIT;
        Choreo__Inventory__V1__ListStockResponse *resp = NULL;
        req.page_size = 100;
        req.page_token = token;
        ch_status st = call("ListStock", &req.base, &choreo__inventory__v1__list_stock_response__descriptor,
                            (ProtobufCMessage **)&resp, NULL);
        CU_ASSERT_EQUAL(st, CH_OK);
        if (st != CH_OK)
            break;
        for (size_t i = 0; i < resp->n_stock; i++) {
            CU_ASSERT_TRUE(strcmp(prev, resp->stock[i]->sku) < 0); /* strictly increasing bytes */
            snprintf(prev, sizeof prev, "%s", resp->stock[i]->sku);
            seen_mine += strncmp(prev, "fit-", 4) == 0;
        }
        cut += resp->n_stock < 100 && resp->next_page_token[0];
        snprintf(token, sizeof token, "%s", resp->next_page_token);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        pages++;
    } while (token[0] && pages < 100);
    CU_ASSERT_EQUAL(seen_mine, N);
    CU_ASSERT_TRUE(cut > 0);
    CU_ASSERT_EQUAL_FATAL(svc_restart_against(&inv, inv.nats_url, n_extra, NULL, 15000, NULL), CH_OK);
}

static void test_inventory_reserves_all_or_nothing(void)
{
    found f;
    ch_status st;

    CU_ASSERT_EQUAL_FATAL(set_stock("sku-r1", 5, NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(set_stock("sku-r2", 5, NULL, NULL), CH_OK);

    /* the same SKU twice: summed */
    const char *skus[] = {"sku-r1", "sku-r2", "sku-r1"};
    const uint32_t qty[] = {2, 1, 1};
    created("ord-r1", "cust-9", skus, qty, 3, 999);
    char cause[EVENT_ID_LEN + 1];
    snprintf(cause, sizeof cause, "%s", env->event_id);
    publish(NULL);
    expect_recorded(EVENT_INVENTORY_RESERVED, "ord-r1", cause, &f); /* "ord-r1:inventory.reserved" */
    CU_ASSERT_STRING_EQUAL(f.env.payload.inventory_reserved.customer_id, "cust-9");
    CU_ASSERT_EQUAL(f.env.payload.inventory_reserved.total_cents, 999);
    CU_ASSERT_EQUAL(f.env.payload.inventory_reserved.units, 4);
    expect_level("sku-r1", 2, 3, 0, 5);
    expect_level("sku-r2", 4, 1, 0, 5);
    Choreo__Inventory__V1__Reservation *r = get_reservation("ord-r1", &st, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(r->status, CHOREO__INVENTORY__V1__RESERVATION_STATUS__RESERVATION_STATUS_RESERVED);
    CU_ASSERT_EQUAL_FATAL(r->n_lines, 2);
    CU_ASSERT_STRING_EQUAL(r->lines[0]->sku, "sku-r1");
    CU_ASSERT_EQUAL(r->lines[0]->quantity, 3);
    CU_ASSERT_STRING_EQUAL(r->lines[1]->sku, "sku-r2");
    CU_ASSERT_EQUAL(r->lines[1]->quantity, 1);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* short on the second SKU: nothing is held, not even the first */
    const char *skus2[] = {"sku-r2", "sku-r1"};
    const uint32_t q2[] = {3, 3};
    created("ord-r2", "cust-9", skus2, q2, 2, 600);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_FAILED, "ord-r2", &f));
    CU_ASSERT_EQUAL(f.count, 1);
    CU_ASSERT_STRING_EQUAL(f.env.payload.inventory_failed.sku, "sku-r1");
    CU_ASSERT_EQUAL(f.env.payload.inventory_failed.requested, 3);
    CU_ASSERT_EQUAL(f.env.payload.inventory_failed.available, 2);
    CU_ASSERT_STRING_EQUAL(f.env.payload.inventory_failed.reason, "out of stock: sku-r1 needs 3, has 2");
    expect_level("sku-r1", 2, 3, 0, 5);
    expect_level("sku-r2", 4, 1, 0, 5);
    r = get_reservation("ord-r2", &st, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(r->status, CHOREO__INVENTORY__V1__RESERVATION_STATUS__RESERVATION_STATUS_REJECTED);
    CU_ASSERT_STRING_EQUAL(r->reason, "out of stock: sku-r1 needs 3, has 2");
    CU_ASSERT_EQUAL(r->n_lines, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_RESERVED, "ord-r2", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 0);

    /* a SKU never stocked is short with 0, and is not created */
    const char *ghost[] = {"sku-ghost"};
    const uint32_t one[] = {1};
    created("ord-r3", "cust-9", ghost, one, 1, 1);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_FAILED, "ord-r3", &f));
    CU_ASSERT_EQUAL(f.env.payload.inventory_failed.available, 0);
    level l;
    CU_ASSERT_EQUAL(get_stock("sku-ghost", &l, NULL), CH_NOT_FOUND);
}

static void test_inventory_duplicates_change_nothing(void)
{
    found f;
    bool dup = false;

    /* order.created for ord-r1 again: same msg id (dropped by JetStream),
     * a fresh event under another msg id, and another order.created for
     * the same order with other items: one reservation per order */
    const char *skus[] = {"sku-r1", "sku-r2", "sku-r1"};
    const uint32_t qty[] = {2, 1, 1};
    created("ord-r1", "cust-9", skus, qty, 3, 999);
    publish(&dup);
    CU_ASSERT_TRUE(dup);
    publish_again_under_new_msg_id("a");
    const char *other[] = {"sku-r2"};
    const uint32_t four[] = {4};
    created("ord-r1", "cust-9", other, four, 1, 5);
    publish_again_under_new_msg_id("b");
    /* and the rejected order: stays rejected */
    const char *skus2[] = {"sku-r2", "sku-r1"};
    const uint32_t q2[] = {3, 3};
    created("ord-r2", "cust-9", skus2, q2, 2, 600);
    publish_again_under_new_msg_id("c");
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_ORDER_CREATED));

    expect_level("sku-r1", 2, 3, 0, 5);
    expect_level("sku-r2", 4, 1, 0, 5);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_RESERVED, "ord-r1", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1); /* the re-published event was a duplicate too */
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_FAILED, "ord-r2", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_RESERVED, "ord-r2", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 0);
    CU_ASSERT_EQUAL(reservation_status("ord-r2"),
                    CHOREO__INVENTORY__V1__RESERVATION_STATUS__RESERVATION_STATUS_REJECTED);
}

static void test_inventory_payment_processed_commits_once(void)
{
    found f;

    saga_event(EVENT_PAYMENT_PROCESSED, "ord-r1", NULL);
    char cause[EVENT_ID_LEN + 1];
    snprintf(cause, sizeof cause, "%s", env->event_id);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_reservation_status(
        "ord-r1", CHOREO__INVENTORY__V1__RESERVATION_STATUS__RESERVATION_STATUS_COMMITTED));
    expect_level("sku-r1", 2, 0, 3, 5);
    expect_level("sku-r2", 4, 0, 1, 5);
    /* the commit is inventory's record: inventory.committed, once */
    expect_recorded(EVENT_INVENTORY_COMMITTED, "ord-r1", cause, &f);
    CU_ASSERT_EQUAL(f.env.payload.inventory_committed.units, 4);
    /* again, under another msg id */
    publish_again_under_new_msg_id("d");
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_PAYMENT_PROCESSED));
    expect_level("sku-r1", 2, 0, 3, 5);
    expect_level("sku-r2", 4, 0, 1, 5);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_COMMITTED, "ord-r1", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
    /* a commit releases nothing */
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_RELEASED, "ord-r1", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 0);
    /* payment.failed after the commit contradicts it: nothing released */
    saga_event(EVENT_PAYMENT_FAILED, "ord-r1", "late");
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_PAYMENT_FAILED));
    expect_level("sku-r1", 2, 0, 3, 5);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_RELEASED, "ord-r1", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 0);
}

static void test_inventory_payment_failed_releases_once(void)
{
    const char *skus[] = {"sku-f"};
    const uint32_t three[] = {3};
    ch_status st;
    found f;

    CU_ASSERT_EQUAL_FATAL(set_stock("sku-f", 4, NULL, NULL), CH_OK);
    created("ord-f1", "cust-poor", skus, three, 1, 300);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_RESERVED, "ord-f1", &f));
    expect_level("sku-f", 1, 3, 0, 4);

    saga_event(EVENT_PAYMENT_FAILED, "ord-f1", "balance 0 < 300");
    char cause[EVENT_ID_LEN + 1];
    snprintf(cause, sizeof cause, "%s", env->event_id);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_RELEASED, "ord-f1", &f));
    CU_ASSERT_EQUAL(f.count, 1);
    CU_ASSERT_STRING_EQUAL(f.env.causation_id, cause);
    CU_ASSERT_EQUAL(f.env.payload.inventory_released.units, 3);
    CU_ASSERT_FALSE(f.env.payload.inventory_released.restocked);
    CU_ASSERT_STRING_EQUAL(f.env.payload.inventory_released.reason, "payment failed: balance 0 < 300");
    expect_level("sku-f", 4, 0, 0, 4);
    Choreo__Inventory__V1__Reservation *r = get_reservation("ord-f1", &st, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(r->status, CHOREO__INVENTORY__V1__RESERVATION_STATUS__RESERVATION_STATUS_RELEASED);
    CU_ASSERT_STRING_EQUAL(r->reason, "payment failed: balance 0 < 300");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* again under another msg id, and a late payment.processed: no effect */
    publish_again_under_new_msg_id("e");
    saga_event(EVENT_PAYMENT_PROCESSED, "ord-f1", NULL);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_PAYMENT_FAILED));
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_PAYMENT_PROCESSED));
    expect_level("sku-f", 4, 0, 0, 4);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_RELEASED, "ord-f1", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
}

static void test_inventory_cancel_restocks_once(void)
{
    found f;

    /* after the commit: sold -> available */
    saga_event(EVENT_ORDER_CANCEL_REQUESTED, "ord-r1", "changed my mind");
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_RELEASED, "ord-r1", &f));
    CU_ASSERT_EQUAL(f.env.payload.inventory_released.units, 4);
    CU_ASSERT_TRUE(f.env.payload.inventory_released.restocked);
    CU_ASSERT_STRING_EQUAL(f.env.payload.inventory_released.reason,
                           "cancelled by the customer: changed my mind");
    expect_level("sku-r1", 5, 0, 0, 5);
    expect_level("sku-r2", 5, 0, 0, 5);
    publish_again_under_new_msg_id("f");
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_ORDER_CANCEL_REQUESTED));
    expect_level("sku-r1", 5, 0, 0, 5);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_RELEASED, "ord-r1", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);

    /* cancel seen before the commit: reserved -> available; the late commit changes nothing */
    const char *skus[] = {"sku-c"};
    const uint32_t two[] = {2};
    CU_ASSERT_EQUAL_FATAL(set_stock("sku-c", 2, NULL, NULL), CH_OK);
    created("ord-c2", "cust-c", skus, two, 1, 20);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_RESERVED, "ord-c2", &f));
    saga_event(EVENT_ORDER_CANCEL_REQUESTED, "ord-c2", "");
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_RELEASED, "ord-c2", &f));
    CU_ASSERT_TRUE(f.env.payload.inventory_released.restocked);
    expect_level("sku-c", 2, 0, 0, 2);
    saga_event(EVENT_PAYMENT_PROCESSED, "ord-c2", NULL);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_PAYMENT_PROCESSED));
    expect_level("sku-c", 2, 0, 0, 2);
    CU_ASSERT_EQUAL(reservation_status("ord-c2"),
                    CHOREO__INVENTORY__V1__RESERVATION_STATUS__RESERVATION_STATUS_RELEASED);
}

static void test_inventory_set_stock_keeps_reserved_and_sold(void)
{
    const char *skus[] = {"sku-s"};
    const uint32_t four[] = {4}, two[] = {2};
    rpc_client_result res;
    level l;
    found f;

    CU_ASSERT_EQUAL_FATAL(set_stock("sku-s", 10, NULL, NULL), CH_OK);
    created("ord-s1", "cust-s", skus, four, 1, 4);
    publish(NULL);
    created("ord-s2", "cust-s", skus, two, 1, 2);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_RESERVED, "ord-s2", &f));
    saga_event(EVENT_PAYMENT_PROCESSED, "ord-s2", NULL);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_reservation_status(
        "ord-s2", CHOREO__INVENTORY__V1__RESERVATION_STATUS__RESERVATION_STATUS_COMMITTED));
    expect_level("sku-s", 4, 4, 2, 10);
    CU_ASSERT_EQUAL_FATAL(set_stock("sku-s", 1, &l, NULL), CH_OK);
    CU_ASSERT_EQUAL(l.available, 1);
    CU_ASSERT_EQUAL(l.reserved, 4);
    CU_ASSERT_EQUAL(l.sold, 2);
    CU_ASSERT_EQUAL(l.total_in, 7);
    expect_invalid(adjust_stock("sku-s", -2, NULL, &res), &res, CH_FAILED_PRECONDITION, "delta");
    expect_level("sku-s", 1, 4, 2, 7);
}

static void test_inventory_poison_event_is_dead_lettered(void)
{
    found f;
    const char *skus[] = {"sku-p"};
    const uint32_t zero[] = {0}, one[] = {1};

    CU_ASSERT_EQUAL_FATAL(set_stock("sku-p", 5, NULL, NULL), CH_OK);
    created("ord-poison", "cust-p", skus, zero, 1, 0); /* decodes, but no order has quantity 0 */
    publish(NULL);
    created("ord-after-poison", "cust-p", skus, one, 1, 1);
    publish(NULL);
    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_RESERVED, "ord-after-poison", &f));
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_ORDER_CREATED));
    CU_ASSERT_EQUAL(reservation_status("ord-poison"), -1);
    expect_level("sku-p", 4, 1, 0, 5);

    /* the poison went to the dead-letter subject */
    int copies = 0;
    for (int waited = 0; waited < WAIT_MS && copies == 0; waited += 20) {
        found d;
        memset(&d, 0, sizeof d);
        if (bus_replay(pub, BUS_DEADLETTER_STREAM, "deadletter.events.order.created.ord-poison", 1, collect,
                       &d, NULL) == CH_OK)
            copies = d.count;
        if (!copies)
            sleep_ms(20);
    }
    CU_ASSERT_EQUAL(copies, 1);
}

/* Every stock level, page by page, into out (cap entries); returns the count. */
static size_t list_all(Choreo__Inventory__V1__StockLevel *out, char (*skus)[80], size_t cap)
{
    char token[256] = "";
    size_t n = 0;
    do {
        Choreo__Inventory__V1__ListStockRequest req = CHOREO__INVENTORY__V1__LIST_STOCK_REQUEST__INIT;
        Choreo__Inventory__V1__ListStockResponse *resp = NULL;
        req.page_token = token;
        if (call("ListStock", &req.base, &choreo__inventory__v1__list_stock_response__descriptor,
                 (ProtobufCMessage **)&resp, NULL) != CH_OK)
            return 0;
        for (size_t i = 0; i < resp->n_stock && n < cap; i++, n++) {
            out[n] = *resp->stock[i];
            snprintf(skus[n], sizeof skus[n], "%s", resp->stock[i]->sku);
            out[n].sku = skus[n];
            level_of(&out[n]); /* conservation for every SKU */
        }
        snprintf(token, sizeof token, "%s", resp->next_page_token);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    } while (token[0]);
    return n;
}

static void test_inventory_state_survives_kill_and_restart(void)
{
    enum { CAP = 64 };
    Choreo__Inventory__V1__StockLevel before[CAP], after[CAP];
    char skus_before[CAP][80], skus_after[CAP][80];
    found f;

    size_t n = list_all(before, skus_before, CAP);
    CU_ASSERT_TRUE_FATAL(n >= 10);
    svc_kill(&inv); /* no goodbye: the state must come from its stream */

    /* events that arrive while it is down wait in its durable consumers */
    const char *skus[] = {"sku-k"};
    const uint32_t one[] = {1};
    created("ord-k1", "cust-k", skus, one, 1, 7);
    publish(NULL);
    CU_ASSERT_EQUAL_FATAL(svc_restart(&inv, 15000), CH_OK);

    size_t m = list_all(after, skus_after, CAP);
    CU_ASSERT_EQUAL_FATAL(m, n);
    for (size_t i = 0; i < n; i++) {
        CU_ASSERT_STRING_EQUAL(before[i].sku, after[i].sku);
        CU_ASSERT_EQUAL(before[i].available, after[i].available);
        CU_ASSERT_EQUAL(before[i].reserved, after[i].reserved);
        CU_ASSERT_EQUAL(before[i].sold, after[i].sold);
        CU_ASSERT_EQUAL(before[i].total_in, after[i].total_in);
    }
    CU_ASSERT_EQUAL(reservation_status("ord-r1"),
                    CHOREO__INVENTORY__V1__RESERVATION_STATUS__RESERVATION_STATUS_RELEASED);
    CU_ASSERT_EQUAL(reservation_status("ord-r2"),
                    CHOREO__INVENTORY__V1__RESERVATION_STATUS__RESERVATION_STATUS_REJECTED);
    CU_ASSERT_EQUAL(reservation_status("ord-s1"),
                    CHOREO__INVENTORY__V1__RESERVATION_STATUS__RESERVATION_STATUS_RESERVED);
    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_FAILED, "ord-k1", &f)); /* sku-k was never stocked */

    /* after the restart the dedup window is no defence any more than before:
     * a redelivered order.created still changes nothing */
    const char *rs[] = {"sku-s"};
    const uint32_t four[] = {4};
    created("ord-s1", "cust-s", rs, four, 1, 4);
    publish_again_under_new_msg_id("g");
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_ORDER_CREATED));
    expect_level("sku-s", 1, 4, 2, 7);
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_RESERVED, "ord-s1", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
}

/* Publishes the shared envelope to the service's own stream with the
 * compare-and-set it uses, as the service would have before a crash. */
static void record_as_inventory(void)
{
    uint64_t last = 0;
    event_out *o = malloc(sizeof *o); /* ~16 KB */
    bus_pub_ack ack = {0};

    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    CU_ASSERT_EQUAL_FATAL(event_prepare(o, env), CH_OK);
    CU_ASSERT_EQUAL_FATAL(bus_stream_info(pub, EVENT_STREAM_INVENTORY, NULL, &last), CH_OK);
    o->m.expect_seq = true;
    o->m.expect_last_seq = last;
    CU_ASSERT_EQUAL(bus_publish(pub, &o->m, 5000, &ack), CH_OK);
    CU_ASSERT_FALSE(ack.duplicate);
    free(o);
}

static void test_inventory_decision_recorded_before_a_crash_is_published(void)
{
    found f;

    /* the service decided and recorded its decisions (the record is the
     * event), then died before acking what caused them */
    svc_kill(&inv);
    CU_ASSERT_EQUAL_FATAL(event_init(env, EVENT_INVENTORY_STOCK_SET, NULL, SVC "SetStock", "inventory", NULL),
                          CH_OK);
    snprintf(env->payload.inventory_stock_set.sku, sizeof env->payload.inventory_stock_set.sku, "sku-crash");
    env->payload.inventory_stock_set.available = 5;
    env->payload.inventory_stock_set.delta = 5;
    record_as_inventory();
    CU_ASSERT_EQUAL_FATAL(event_init(env, EVENT_INVENTORY_RESERVED, "ord-crash",
                                     "feed0000000000000000000000000000", "inventory", TRACEPARENT),
                          CH_OK);
    choreo_events_v1_InventoryReserved *r = &env->payload.inventory_reserved;
    snprintf(r->customer_id, sizeof r->customer_id, "cust-x");
    r->total_cents = 42;
    r->units = 2;
    r->lines_count = 1;
    snprintf(r->lines[0].sku, sizeof r->lines[0].sku, "sku-crash");
    r->lines[0].quantity = 2;
    record_as_inventory();
    /* the order.created it had not acked comes again */
    const char *skus[] = {"sku-crash"};
    const uint32_t two[] = {2};
    created("ord-crash", "cust-x", skus, two, 1, 42);
    publish(NULL);
    CU_ASSERT_EQUAL_FATAL(svc_restart(&inv, 15000), CH_OK);

    CU_ASSERT_TRUE_FATAL(wait_event(EVENT_INVENTORY_RESERVED, "ord-crash", &f));
    CU_ASSERT_EQUAL(f.count, 1);
    CU_ASSERT_STRING_EQUAL(f.env.payload.inventory_reserved.customer_id, "cust-x");
    CU_ASSERT_EQUAL(f.env.payload.inventory_reserved.total_cents, 42);
    CU_ASSERT_EQUAL(f.env.payload.inventory_reserved.units, 2);
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_ORDER_CREATED));
    expect_level("sku-crash", 3, 2, 0, 5); /* reserved once, not twice */
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_RESERVED, "ord-crash", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1); /* and recorded once */
}

static void test_inventory_adjust_key_adjusts_once_across_restart(void)
{
    rpc_client_result res;
    char long_key[130]; /* 129 bytes: one past the 128 allowed */
    level l;

    CU_ASSERT_EQUAL_FATAL(set_stock("sku-idem", 10, NULL, NULL), CH_OK);
    /* the same key twice: total_in and available change once */
    CU_ASSERT_EQUAL_FATAL(adjust_stock_key("sku-idem", 5, "retry-1", &l, &res), CH_OK);
    CU_ASSERT_EQUAL(l.available, 15);
    CU_ASSERT_EQUAL(l.total_in, 15);
    CU_ASSERT_EQUAL_FATAL(adjust_stock_key("sku-idem", 5, "retry-1", &l, &res), CH_OK);
    CU_ASSERT_EQUAL(l.available, 15);
    CU_ASSERT_EQUAL(l.total_in, 15);
    expect_level("sku-idem", 15, 0, 0, 15);
    /* another key adjusts again */
    CU_ASSERT_EQUAL_FATAL(adjust_stock_key("sku-idem", -3, "retry-2", &l, &res), CH_OK);
    CU_ASSERT_EQUAL(l.available, 12);
    CU_ASSERT_EQUAL(l.total_in, 12);
    /* bad keys are refused, naming the field */
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    expect_invalid(adjust_stock_key("sku-idem", 1, long_key, NULL, &res), &res, CH_INVALID_ARGUMENT,
                   "idempotency_key");
    expect_invalid(adjust_stock_key("sku-idem", 1, "a\tb", NULL, &res), &res, CH_INVALID_ARGUMENT,
                   "idempotency_key");
    expect_level("sku-idem", 12, 0, 0, 12);

    /* after kill -9 and a restart the stream remembers the keys */
    svc_kill(&inv);
    CU_ASSERT_EQUAL_FATAL(svc_restart(&inv, 15000), CH_OK);
    expect_level("sku-idem", 12, 0, 0, 12);
    CU_ASSERT_EQUAL_FATAL(adjust_stock_key("sku-idem", 5, "retry-1", &l, &res), CH_OK);
    CU_ASSERT_EQUAL(l.available, 12);
    CU_ASSERT_EQUAL(l.total_in, 12);
    CU_ASSERT_EQUAL_FATAL(adjust_stock_key("sku-idem", -3, "retry-2", &l, &res), CH_OK);
    CU_ASSERT_EQUAL(l.available, 12);
    expect_level("sku-idem", 12, 0, 0, 12);
    /* a new key still adjusts */
    CU_ASSERT_EQUAL_FATAL(adjust_stock_key("sku-idem", 1, "retry-3", &l, &res), CH_OK);
    CU_ASSERT_EQUAL(l.available, 13);
    CU_ASSERT_EQUAL(l.total_in, 13);
}

/* Polls GetStock (up to WAIT_MS) until the SKU's total put in is total_in. */
static bool wait_total_in(const char *sku, int64_t total_in)
{
    long long until = test_now_ms() + WAIT_MS;
    do {
        level l = {-1, -1, -1, -1};
        if (get_stock(sku, &l, NULL) == CH_OK && l.total_in == total_in)
            return true;
        sleep_ms(20);
    } while (test_now_ms() < until);
    return false;
}

/* NATS stores an AdjustStock, then a SetStock, but its answer comes after
 * the service's publish timeout (a relay holds NATS's replies to the
 * service): the caller is told that the change may have happened, and the
 * retry the answer advises changes nothing more. */
static void test_inventory_unconfirmed_writes_are_reported_as_such(void)
{
    int n_extra = inv.n_extra;
    rpc_client_result res;
    level l = {-1, -1, -1, -1};
    relay *r = NULL;

    CU_ASSERT_EQUAL_FATAL(set_stock("sku-late", 10, NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(relay_start(&r, natsd_port(nats)), CH_OK);
    CU_ASSERT_EQUAL_FATAL(
        svc_restart_against(&inv, relay_url(r), n_extra, "CHOREO_PUBLISH_TIMEOUT_MS=500", 15000, NULL),
        CH_OK);

    relay_hold_replies_after(r, "events.inventory.stock_adjusted.sku-late", 2000);
    CU_ASSERT_EQUAL(adjust_stock_key("sku-late", 5, "late-adj", NULL, &res), CH_TIMEOUT);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "may have happened"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "retry with the same idempotency_key"));
    CU_ASSERT_TRUE(wait_total_in("sku-late", 15)); /* it had: a read catches up with the stream */
    CU_ASSERT_EQUAL(adjust_stock_key("sku-late", 5, "late-adj", &l, NULL), CH_OK);
    CU_ASSERT_EQUAL(l.available, 15);

    /* SetStock the same way: the retry it advises sets the same level again */
    relay_hold_replies_after(r, "events.inventory.stock_set.sku-late", 2000);
    CU_ASSERT_EQUAL(set_stock("sku-late", 40, NULL, &res), CH_TIMEOUT);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "may have happened"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "it sets an absolute level"));
    CU_ASSERT_TRUE(wait_total_in("sku-late", 40));
    CU_ASSERT_EQUAL(set_stock("sku-late", 40, &l, NULL), CH_OK);
    CU_ASSERT_EQUAL(l.available, 40);

    CU_ASSERT_EQUAL_FATAL(svc_restart_against(&inv, natsd_url(nats), n_extra, NULL, 15000, NULL), CH_OK);
    relay_destroy(r);
    expect_level("sku-late", 40, 0, 0, 40); /* the stream replays each change once */
}

/* One replica's share of a race: n AdjustStocks of +1, each with its own
 * key, retried with that key until one answer says it is done. */
typedef struct racer {
    svc_proc *svc;
    char tag;
    int n, done, retries;
} racer;

static ch_status adjust_on(svc_proc *s, const char *sku, int64_t delta, const char *key)
{
    Choreo__Inventory__V1__AdjustStockRequest req = CHOREO__INVENTORY__V1__ADJUST_STOCK_REQUEST__INIT;
    Choreo__Inventory__V1__AdjustStockResponse *resp = NULL;
    req.sku = (char *)sku;
    req.delta = delta;
    req.idempotency_key = (char *)key;
    ch_status st = rpc_client_call(s->client, SVC "AdjustStock", NULL, 0, &req.base,
                                   &choreo__inventory__v1__adjust_stock_response__descriptor,
                                   (ProtobufCMessage **)&resp, 10000, NULL);
    if (st == CH_OK)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return st;
}

static void *race_adjust(void *arg)
{
    racer *r = arg;
    char key[32];
    for (int i = 0; i < r->n; i++) {
        snprintf(key, sizeof key, "race-%c-%d", r->tag, i);
        for (int tries = 0; tries < 10; tries++) {
            if (adjust_on(r->svc, "sku-race", 1, key) == CH_OK) {
                r->done++;
                break;
            }
            r->retries++;
        }
    }
    return NULL;
}

static level stock_on(svc_proc *s, const char *sku)
{
    Choreo__Inventory__V1__GetStockRequest req = CHOREO__INVENTORY__V1__GET_STOCK_REQUEST__INIT;
    Choreo__Inventory__V1__GetStockResponse *resp = NULL;
    level l = {-1, -1, -1, -1};
    req.sku = (char *)sku;
    if (rpc_client_call(s->client, SVC "GetStock", NULL, 0, &req.base,
                        &choreo__inventory__v1__get_stock_response__descriptor, (ProtobufCMessage **)&resp,
                        5000, NULL) == CH_OK) {
        l = level_of(resp->stock);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return l;
}

/* Two replicas write one stream: API calls on both, and the orders of a
 * shared consumer, at once. Each replica decides on the state it has and
 * loses a compare-and-set when the other wrote first (undo, catch up,
 * decide again): every write counts once, no unit is held twice, and both
 * replicas read the same state. */
static void test_inventory_two_replicas_count_each_write_once(void)
{
    enum { ADJUSTS = 150, ORDERS = 40, UNITS = 30 };
    svc_proc second;
    racer r[2] = {{.svc = &inv, .tag = 'a', .n = ADJUSTS}, {.svc = &second, .tag = 'b', .n = ADJUSTS}};
    pthread_t t[2];
    const char *skus[] = {"sku-race2"};
    const uint32_t one[] = {1};
    char order_id[32];
    found f;

    memset(&second, 0, sizeof second);
    CU_ASSERT_EQUAL_FATAL(svc_start(&second, "inventory-2", INVENTORY_BIN, natsd_url(nats), NULL, 15000),
                          CH_OK);
    CU_ASSERT_EQUAL_FATAL(set_stock("sku-race2", UNITS, NULL, NULL), CH_OK);
    for (int i = 0; i < 2; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, race_adjust, &r[i]), 0);
    for (int i = 0; i < ORDERS; i++) {
        snprintf(order_id, sizeof order_id, "ord-race-%d", i);
        created(order_id, "cust-race", skus, one, 1, 1);
        publish(NULL);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CU_ASSERT_EQUAL(r[0].done, ADJUSTS);
    CU_ASSERT_EQUAL(r[1].done, ADJUSTS);
    CU_ASSERT_TRUE_FATAL(wait_idle(EVENT_ORDER_CREATED));

    for (int k = 0; k < 2; k++) {
        svc_proc *s = k == 0 ? &inv : &second;
        level a = stock_on(s, "sku-race"), b = stock_on(s, "sku-race2");
        CU_ASSERT_EQUAL(a.available, 2 * ADJUSTS);
        CU_ASSERT_EQUAL(a.total_in, 2 * ADJUSTS);
        CU_ASSERT_EQUAL(b.available, 0);
        CU_ASSERT_EQUAL(b.reserved, UNITS);
        CU_ASSERT_EQUAL(b.total_in, UNITS);
    }
    CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_STOCK_ADJUSTED, "sku-race", &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 2 * ADJUSTS);
    int reserved = 0, failed = 0;
    for (int i = 0; i < ORDERS; i++) {
        snprintf(order_id, sizeof order_id, "ord-race-%d", i);
        CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_RESERVED, order_id, &f), CH_OK);
        reserved += f.count;
        int one_event = f.count;
        CU_ASSERT_EQUAL(read_events(EVENT_INVENTORY_FAILED, order_id, &f), CH_OK);
        failed += f.count;
        CU_ASSERT_EQUAL(one_event + f.count, 1); /* one decision per order */
    }
    CU_ASSERT_EQUAL(reserved, UNITS);
    CU_ASSERT_EQUAL(failed, ORDERS - UNITS);
    if (r[0].retries || r[1].retries)
        fprintf(stderr, "\n(race: %d and %d retries)\n", r[0].retries, r[1].retries);
    svc_destroy(&second);
}

static void test_inventory_sigterm_exits_zero(void)
{
    int exit_status = -1;
    CU_ASSERT_EQUAL(svc_stop(&inv, 15000, &exit_status), CH_OK);
    CU_ASSERT_EQUAL(exit_status, 0);
}

int main(void)
{
    static const cu_test tests[] = {
        {"stock API and validation", test_inventory_stock_api_and_validation},
        {"stock writes are events", test_inventory_stock_writes_are_events},
        {"list pages in byte order", test_inventory_list_pages_in_byte_order},
        {"list page too big for one reply is cut", test_inventory_list_page_too_big_for_one_reply_is_cut},
        {"reserves all or nothing", test_inventory_reserves_all_or_nothing},
        {"duplicates change nothing", test_inventory_duplicates_change_nothing},
        {"payment.processed commits once", test_inventory_payment_processed_commits_once},
        {"payment.failed releases once", test_inventory_payment_failed_releases_once},
        {"cancel restocks once", test_inventory_cancel_restocks_once},
        {"SetStock keeps reserved and sold", test_inventory_set_stock_keeps_reserved_and_sold},
        {"poison event is dead-lettered", test_inventory_poison_event_is_dead_lettered},
        {"state survives kill -9 and restart", test_inventory_state_survives_kill_and_restart},
        {"a decision recorded before a crash is published",
         test_inventory_decision_recorded_before_a_crash_is_published},
        {"AdjustStock key adjusts once across restart",
         test_inventory_adjust_key_adjusts_once_across_restart},
        {"unconfirmed AdjustStock and SetStock are reported as such",
         test_inventory_unconfirmed_writes_are_reported_as_such},
        {"two replicas count each write once", test_inventory_two_replicas_count_each_write_once},
        {"SIGTERM exits 0", test_inventory_sigterm_exits_zero},
        {NULL, NULL},
    };

    return cu_run("inventory_integration", suite_init, suite_cleanup, tests);
}
