/* test_orders.c: the orders service end to end, against a real nats-server
 * (JetStream, file storage, temp dir, free port) and the real binary. */
#include <CUnit/Basic.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"
#include "choreo/orders/v1/orders.pb-c.h"
#include "cu_run.h"
#include "event_bus.h"
#include "event_codec.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "harness.h"
#include "order_core.h"
#include "relay.h"

#define TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static natsd *nats;
static svc_proc orders;
static bus *reader;

static int suite_init(void)
{
    natsd_options o = {0};
    bus_options bo = {.no_retry_on_failed_connect = true};

    if (natsd_start(&nats, &o) != CH_OK)
        return 1;
    if (svc_start(&orders, "orders", ORDERS_BIN, natsd_url(nats), NULL, 15000) != CH_OK)
        return 1;
    bo.url = natsd_url(nats);
    return bus_create(&reader, &bo) == CH_OK ? 0 : 1;
}

static int suite_cleanup(void)
{
    bus_destroy(reader);
    svc_destroy(&orders);
    natsd_destroy(nats);
    bus_library_shutdown();
    return 0;
}

/* ---- helpers ---- */

static Choreo__Orders__V1__LineItem line(const char *sku, uint32_t qty, int64_t price)
{
    Choreo__Orders__V1__LineItem li = CHOREO__ORDERS__V1__LINE_ITEM__INIT;
    li.sku = (char *)sku;
    li.quantity = qty;
    li.unit_price_cents = price;
    return li;
}

/* CreateOrder with one or two items and a deadline; returns the status and
 * *out (caller frees). */
static ch_status create_within(const char *customer, const char *key, Choreo__Orders__V1__LineItem *items,
                               size_t n, const char *traceparent, int timeout_ms,
                               Choreo__Orders__V1__CreateOrderResponse **out, rpc_client_result *res)
{
    Choreo__Orders__V1__CreateOrderRequest req = CHOREO__ORDERS__V1__CREATE_ORDER_REQUEST__INIT;
    Choreo__Orders__V1__LineItem *ptrs[4];
    rpc_md md[1] = {{"traceparent", traceparent}};

    for (size_t i = 0; i < n; i++)
        ptrs[i] = &items[i];
    req.customer_id = (char *)customer;
    req.idempotency_key = (char *)(key ? key : "");
    req.n_items = n;
    req.items = ptrs;
    return rpc_client_call(orders.client, "/choreo.orders.v1.Orders/CreateOrder", md, traceparent ? 1 : 0,
                           &req.base, &choreo__orders__v1__create_order_response__descriptor,
                           (ProtobufCMessage **)out, timeout_ms, res);
}

static ch_status create(const char *customer, const char *key, Choreo__Orders__V1__LineItem *items, size_t n,
                        const char *traceparent, Choreo__Orders__V1__CreateOrderResponse **out,
                        rpc_client_result *res)
{
    return create_within(customer, key, items, n, traceparent, 5000, out, res);
}

static Choreo__Orders__V1__Order *get(const char *id, ch_status *st)
{
    Choreo__Orders__V1__GetOrderRequest req = CHOREO__ORDERS__V1__GET_ORDER_REQUEST__INIT;
    Choreo__Orders__V1__GetOrderResponse *resp = NULL;
    req.order_id = (char *)id;
    *st = rpc_client_call(orders.client, "/choreo.orders.v1.Orders/GetOrder", NULL, 0, &req.base,
                          &choreo__orders__v1__get_order_response__descriptor, (ProtobufCMessage **)&resp,
                          5000, NULL);
    if (*st != CH_OK)
        return NULL;
    Choreo__Orders__V1__Order *o = resp->order;
    resp->order = NULL;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return o;
}

/* Every order.created of one order in the stream. */
typedef struct found {
    int count;
    char msg_id[96], type[64], traceparent[64];
    choreo_events_v1_Envelope env;
} found;

static ch_status collect(const bus_in_msg *m, void *arg)
{
    found *f = arg;
    const char *h;
    f->count++;
    if ((h = bus_in_msg_header(m, "Nats-Msg-Id")))
        snprintf(f->msg_id, sizeof f->msg_id, "%s", h);
    if ((h = bus_in_msg_header(m, EVENT_HDR_TYPE)))
        snprintf(f->type, sizeof f->type, "%s", h);
    if ((h = bus_in_msg_header(m, EVENT_HDR_TRACEPARENT)))
        snprintf(f->traceparent, sizeof f->traceparent, "%s", h);
    return event_decode(m->data, m->len, &f->env, NULL, 0);
}

static ch_status read_created(const char *order_id, found *f)
{
    char subject[128];
    memset(f, 0, sizeof *f);
    snprintf(subject, sizeof subject, "events.order.created.%s", order_id);
    return bus_replay(reader, EVENT_STREAM_ORDER, subject, 1, collect, f, NULL);
}

/* ---- tests ---- */

static void test_orders_create_publishes_order_created(void)
{
    Choreo__Orders__V1__LineItem items[2] = {line("sku-1", 2, 1500), line("sku-2", 1, 250)};
    Choreo__Orders__V1__CreateOrderResponse *resp = NULL;
    rpc_client_result res;
    found f;

    CU_ASSERT_EQUAL_FATAL(create("cust-1", NULL, items, 2, TRACEPARENT, &resp, &res), CH_OK);
    Choreo__Orders__V1__Order *o = resp->order;
    CU_ASSERT_EQUAL(strncmp(o->order_id, "ord-", 4), 0);
    CU_ASSERT_EQUAL(o->status, CHOREO__ORDERS__V1__ORDER_STATUS__ORDER_STATUS_PENDING);
    CU_ASSERT_EQUAL(o->total_cents, 3250);
    CU_ASSERT_EQUAL(o->n_items, 2);
    CU_ASSERT_FALSE(resp->replayed);
    CU_ASSERT_STRING_EQUAL(rpc_client_result_md(&res, "traceparent"), TRACEPARENT);

    /* the answer came after the event was durable: it is in the stream now */
    CU_ASSERT_EQUAL_FATAL(read_created(o->order_id, &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
    char want_id[96];
    snprintf(want_id, sizeof want_id, "%s:order.created", o->order_id);
    CU_ASSERT_STRING_EQUAL(f.msg_id, want_id);
    CU_ASSERT_STRING_EQUAL(f.type, "order.created");
    CU_ASSERT_STRING_EQUAL(f.traceparent, TRACEPARENT);
    CU_ASSERT_STRING_EQUAL(f.env.order_id, o->order_id);
    CU_ASSERT_STRING_EQUAL(f.env.producer, "orders");
    CU_ASSERT_STRING_EQUAL(f.env.traceparent, TRACEPARENT);
    CU_ASSERT_EQUAL(f.env.schema_version, EVENT_SCHEMA_VERSION);
    CU_ASSERT_EQUAL(f.env.which_payload, choreo_events_v1_Envelope_order_created_tag);
    CU_ASSERT_STRING_EQUAL(f.env.payload.order_created.customer_id, "cust-1");
    CU_ASSERT_EQUAL(f.env.payload.order_created.items_count, 2);
    CU_ASSERT_STRING_EQUAL(f.env.payload.order_created.items[0].sku, "sku-1");
    CU_ASSERT_EQUAL(f.env.payload.order_created.items[0].quantity, 2);
    CU_ASSERT_EQUAL(f.env.payload.order_created.total_cents, 3250);

    ch_status st;
    Choreo__Orders__V1__Order *again = get(o->order_id, &st);
    CU_ASSERT_EQUAL_FATAL(st, CH_OK);
    CU_ASSERT_STRING_EQUAL(again->customer_id, "cust-1");
    CU_ASSERT_EQUAL(again->version, 1);
    protobuf_c_message_free_unpacked(&again->base, NULL);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void test_orders_idempotency_key_returns_same_order(void)
{
    Choreo__Orders__V1__LineItem item = line("sku-1", 1, 100);
    Choreo__Orders__V1__CreateOrderResponse *a = NULL, *b = NULL, *c = NULL;
    found f;

    CU_ASSERT_EQUAL_FATAL(create("cust-2", "retry-me", &item, 1, NULL, &a, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(create("cust-2", "retry-me", &item, 1, NULL, &b, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(create("cust-3", "retry-me", &item, 1, NULL, &c, NULL), CH_OK);
    CU_ASSERT_STRING_EQUAL(a->order->order_id, b->order->order_id);
    CU_ASSERT_FALSE(a->replayed);
    CU_ASSERT_TRUE(b->replayed);
    CU_ASSERT_STRING_NOT_EQUAL(a->order->order_id, c->order->order_id); /* keys are per customer */
    CU_ASSERT_EQUAL(read_created(a->order->order_id, &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
    protobuf_c_message_free_unpacked(&a->base, NULL);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    protobuf_c_message_free_unpacked(&c->base, NULL);
}

static void expect_invalid(const char *customer, Choreo__Orders__V1__LineItem *items, size_t n,
                           const char *field)
{
    Choreo__Orders__V1__CreateOrderResponse *resp = NULL;
    rpc_client_result res;
    CU_ASSERT_EQUAL(create(customer, NULL, items, n, NULL, &resp, &res), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(res.code, 3 /* INVALID_ARGUMENT */);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, field));
    if (!strstr(res.details, field))
        fprintf(stderr, "details were: %s\n", res.details);
}

static void assert_still_serving(void)
{
    Choreo__Orders__V1__LineItem item = line("sku-ok", 1, 1);
    Choreo__Orders__V1__CreateOrderResponse *resp = NULL;
    CU_ASSERT_EQUAL(create("cust-ok", NULL, &item, 1, NULL, &resp, NULL), CH_OK);
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void test_orders_bad_input_is_refused_not_fatal(void)
{
    Choreo__Orders__V1__LineItem good = line("sku-1", 1, 100);
    Choreo__Orders__V1__LineItem zero = line("sku-1", 0, 100);
    Choreo__Orders__V1__LineItem neg = line("sku-1", 1, -5);
    Choreo__Orders__V1__LineItem badsku = line("sku-\xc3\x28", 1, 1);
    rpc_client_result res;
    void *raw = NULL;
    size_t raw_len = 0;

    expect_invalid("", &good, 1, "customer_id");          /* missing field */
    expect_invalid("cust-1", &good, 0, "items");          /* missing items */
    expect_invalid("cust-\xff\xfe", &good, 1, "UTF-8");   /* invalid UTF-8 */
    expect_invalid("cust-1", &badsku, 1, "items[0].sku"); /* invalid UTF-8 in an item */
    expect_invalid("cust-1", &zero, 1, "items[0].quantity");
    expect_invalid("cust-1", &neg, 1, "items[0].unit_price_cents");

    /* malformed bytes: not a protobuf message at all */
    const unsigned char garbage[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x12};
    CU_ASSERT_EQUAL(rpc_client_call_raw(orders.client, "/choreo.orders.v1.Orders/CreateOrder", NULL, 0,
                                        garbage, sizeof garbage, &raw, &raw_len, 5000, &res),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "CreateOrderRequest"));
    free(raw);
    raw = NULL;

    /* oversized: larger than CHOREO_MAX_MESSAGE_BYTES (64 KiB by default) */
    size_t big_len = 200 * 1024;
    char *big = malloc(big_len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'x', big_len);
    big[big_len] = '\0';
    Choreo__Orders__V1__CreateOrderResponse *resp = NULL;
    CU_ASSERT_EQUAL(create(big, NULL, &good, 1, NULL, &resp, &res), CH_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(res.code, 8 /* RESOURCE_EXHAUSTED */);
    free(big);

    /* unknown method */
    CU_ASSERT_EQUAL(rpc_client_call_raw(orders.client, "/choreo.orders.v1.Orders/NoSuchMethod", NULL, 0, "",
                                        0, &raw, &raw_len, 5000, &res),
                    CH_UNIMPLEMENTED);
    free(raw);

    ch_status st;
    CU_ASSERT_PTR_NULL(get("ord-0000000000000000", &st));
    CU_ASSERT_EQUAL(st, CH_NOT_FOUND);
    CU_ASSERT_PTR_NULL(get("not a valid id", &st));
    CU_ASSERT_EQUAL(st, CH_INVALID_ARGUMENT);

    assert_still_serving();
    CU_ASSERT_EQUAL(proc_running(orders.p), 1);
}

/* One ListOrders page of a customer's orders; NULL on error. */
static Choreo__Orders__V1__ListOrdersResponse *list_page(const char *customer, uint32_t size,
                                                         const char *token)
{
    Choreo__Orders__V1__ListOrdersRequest req = CHOREO__ORDERS__V1__LIST_ORDERS_REQUEST__INIT;
    Choreo__Orders__V1__ListOrdersResponse *resp = NULL;
    req.page_size = size;
    req.customer_id = (char *)customer;
    req.page_token = (char *)token;
    rpc_client_result res;
    if (rpc_client_call(orders.client, "/choreo.orders.v1.Orders/ListOrders", NULL, 0, &req.base,
                        &choreo__orders__v1__list_orders_response__descriptor, (ProtobufCMessage **)&resp,
                        5000, &res) != CH_OK) {
        fprintf(stderr, "ListOrders %s: %d %s\n", customer, res.code, res.details);
        return NULL;
    }
    return resp;
}

static void test_orders_list_pages_newest_first(void)
{
    Choreo__Orders__V1__LineItem item = line("sku-1", 1, 100);
    char ids[5][48];
    for (int i = 0; i < 5; i++) {
        Choreo__Orders__V1__CreateOrderResponse *resp = NULL;
        CU_ASSERT_EQUAL_FATAL(create("cust-list", NULL, &item, 1, NULL, &resp, NULL), CH_OK);
        snprintf(ids[i], sizeof ids[i], "%s", resp->order->order_id);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    char token[64] = "";
    int seen = 0;
    do {
        Choreo__Orders__V1__ListOrdersResponse *resp = list_page("cust-list", 2, token);
        CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
        for (size_t i = 0; i < resp->n_orders; i++, seen++)
            CU_ASSERT_STRING_EQUAL(resp->orders[i]->order_id, ids[4 - seen]);
        snprintf(token, sizeof token, "%s", resp->next_page_token);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    } while (token[0] && seen < 10);
    CU_ASSERT_EQUAL(seen, 5);

    Choreo__Orders__V1__ListOrdersRequest bad = CHOREO__ORDERS__V1__LIST_ORDERS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    bad.page_size = 100000;
    CU_ASSERT_EQUAL(rpc_client_call(orders.client, "/choreo.orders.v1.Orders/ListOrders", NULL, 0, &bad.base,
                                    &choreo__orders__v1__list_orders_response__descriptor, &resp, 5000, NULL),
                    CH_INVALID_ARGUMENT);
}

/* 12 orders of 100 line items with 64-byte SKUs are ~90 KB: more than one
 * reply may carry (CHOREO_MAX_MESSAGE_BYTES, 64 KiB). A page of 50 is cut
 * where the reply is full, and its token goes on from there. */
static void test_orders_list_page_too_big_for_one_reply_is_cut(void)
{
    enum { N = 12, ITEMS = 100 };
    static char skus[ITEMS][65];
    Choreo__Orders__V1__LineItem items[ITEMS], *ptrs[ITEMS];
    char ids[N][48], token[64] = "";
    int seen = 0, pages = 0, first_page = 0;

    for (int k = 0; k < ITEMS; k++) {
        snprintf(skus[k], sizeof skus[k], "sku-%060d", k);
        items[k] = line(skus[k], 1, 100);
        ptrs[k] = &items[k];
    }
    for (int i = 0; i < N; i++) {
        Choreo__Orders__V1__CreateOrderRequest req = CHOREO__ORDERS__V1__CREATE_ORDER_REQUEST__INIT;
        Choreo__Orders__V1__CreateOrderResponse *resp = NULL;
        req.customer_id = (char *)"cust-big";
        req.n_items = ITEMS;
        req.items = ptrs;
        CU_ASSERT_EQUAL_FATAL(rpc_client_call(orders.client, "/choreo.orders.v1.Orders/CreateOrder", NULL, 0,
                                              &req.base,
                                              &choreo__orders__v1__create_order_response__descriptor,
                                              (ProtobufCMessage **)&resp, 5000, NULL),
                              CH_OK);
        snprintf(ids[i], sizeof ids[i], "%s", resp->order->order_id);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    do {
        Choreo__Orders__V1__ListOrdersResponse *resp = list_page("cust-big", 50, token);
        CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
        if (pages == 0)
            first_page = (int)resp->n_orders;
        for (size_t i = 0; i < resp->n_orders && seen < N; i++, seen++) {
            CU_ASSERT_STRING_EQUAL(resp->orders[i]->order_id, ids[N - 1 - seen]);
            CU_ASSERT_EQUAL(resp->orders[i]->n_items, ITEMS);
        }
        snprintf(token, sizeof token, "%s", resp->next_page_token);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        pages++;
    } while (token[0] && pages < 20);
    CU_ASSERT_EQUAL(seen, N);
    CU_ASSERT_TRUE(first_page > 0 && first_page < N);
}

static void test_orders_reflection_lists_and_finds_symbols(void)
{
    Grpc__Reflection__V1__ServerReflectionRequest req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rpc_client_stream *st = NULL;
    ProtobufCMessage *msg = NULL;

    req.message_request_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    req.list_services = (char *)"*";
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(orders.client,
                                                 "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                                 NULL, 0, &req.base, 5000, &st),
                          CH_OK);
    CU_ASSERT_EQUAL_FATAL(
        rpc_client_stream_next(st, &grpc__reflection__v1__server_reflection_response__descriptor, &msg, 5000),
        CH_OK);
    Grpc__Reflection__V1__ServerReflectionResponse *r = (Grpc__Reflection__V1__ServerReflectionResponse *)msg;
    CU_ASSERT_EQUAL_FATAL(
        r->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE);
    bool orders_listed = false, health_listed = false;
    for (size_t i = 0; i < r->list_services_response->n_service; i++) {
        orders_listed |= strcmp(r->list_services_response->service[i]->name, "choreo.orders.v1.Orders") == 0;
        health_listed |= strcmp(r->list_services_response->service[i]->name, "grpc.health.v1.Health") == 0;
    }
    CU_ASSERT_TRUE(orders_listed);
    CU_ASSERT_TRUE(health_listed);
    protobuf_c_message_free_unpacked(msg, NULL);
    rpc_client_stream_close(st);

    /* v1alpha too, and file_containing_symbol for a method */
    req.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    req.file_containing_symbol = (char *)"choreo.orders.v1.Orders.CreateOrder";
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(
                              orders.client, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                              NULL, 0, &req.base, 5000, &st),
                          CH_OK);
    CU_ASSERT_EQUAL_FATAL(
        rpc_client_stream_next(st, &grpc__reflection__v1__server_reflection_response__descriptor, &msg, 5000),
        CH_OK);
    r = (Grpc__Reflection__V1__ServerReflectionResponse *)msg;
    CU_ASSERT_EQUAL_FATAL(
        r->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE);
    CU_ASSERT_TRUE(r->file_descriptor_response->n_file_descriptor_proto >= 1);
    /* the first file is orders.proto: its name is in the descriptor bytes */
    ProtobufCBinaryData fd = r->file_descriptor_response->file_descriptor_proto[0];
    CU_ASSERT_PTR_NOT_NULL(memmem(fd.data, fd.len, "choreo/orders/v1/orders.proto", 29));
    protobuf_c_message_free_unpacked(msg, NULL);
    rpc_client_stream_close(st);

    /* an unknown symbol is NOT_FOUND in the response */
    req.file_containing_symbol = (char *)"choreo.nothing.Here";
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(orders.client,
                                                 "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                                 NULL, 0, &req.base, 5000, &st),
                          CH_OK);
    CU_ASSERT_EQUAL_FATAL(
        rpc_client_stream_next(st, &grpc__reflection__v1__server_reflection_response__descriptor, &msg, 5000),
        CH_OK);
    r = (Grpc__Reflection__V1__ServerReflectionResponse *)msg;
    CU_ASSERT_EQUAL(r->message_response_case,
                    GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
    if (r->message_response_case ==
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE)
        CU_ASSERT_EQUAL(r->error_response->error_code, 5 /* NOT_FOUND */);
    protobuf_c_message_free_unpacked(msg, NULL);
    rpc_client_stream_close(st);
}

static void test_orders_health_follows_nats(void)
{
    Choreo__Orders__V1__LineItem item = line("sku-1", 1, 100);
    Choreo__Orders__V1__CreateOrderResponse *resp = NULL;
    rpc_client_result res;

    CU_ASSERT_EQUAL(svc_health(&orders, 2000), 1);
    CU_ASSERT_EQUAL_FATAL(natsd_stop(nats), CH_OK);
    CU_ASSERT_TRUE(svc_wait_health(&orders, 2 /* NOT_SERVING */, 10000));
    /* while NATS is away an order cannot be made durable: refused, not lost */
    CU_ASSERT_EQUAL(create("cust-down", NULL, &item, 1, NULL, &resp, &res), CH_UNAVAILABLE);
    CU_ASSERT_EQUAL_FATAL(natsd_restart(nats), CH_OK);
    CU_ASSERT_TRUE(svc_wait_health(&orders, 1 /* SERVING */, 15000));
    assert_still_serving();
}

static void test_orders_state_survives_restart(void)
{
    Choreo__Orders__V1__LineItem item = line("sku-9", 3, 700);
    Choreo__Orders__V1__CreateOrderResponse *a = NULL, *b = NULL;
    ch_status st;

    CU_ASSERT_EQUAL_FATAL(create("cust-r", "survive", &item, 1, NULL, &a, NULL), CH_OK);
    svc_kill(&orders); /* no graceful goodbye: state must come from the stream */
    CU_ASSERT_EQUAL_FATAL(svc_restart(&orders, 15000), CH_OK);
    Choreo__Orders__V1__Order *o = get(a->order->order_id, &st);
    CU_ASSERT_EQUAL_FATAL(st, CH_OK);
    CU_ASSERT_STRING_EQUAL(o->customer_id, "cust-r");
    CU_ASSERT_EQUAL(o->total_cents, 2100);
    CU_ASSERT_EQUAL(o->status, CHOREO__ORDERS__V1__ORDER_STATUS__ORDER_STATUS_PENDING);
    CU_ASSERT_EQUAL(o->created_at_unix_ms, a->order->created_at_unix_ms);
    protobuf_c_message_free_unpacked(&o->base, NULL);
    /* the idempotency key is remembered across the restart */
    CU_ASSERT_EQUAL_FATAL(create("cust-r", "survive", &item, 1, NULL, &b, NULL), CH_OK);
    CU_ASSERT_STRING_EQUAL(b->order->order_id, a->order->order_id);
    CU_ASSERT_TRUE(b->replayed);
    protobuf_c_message_free_unpacked(&a->base, NULL);
    protobuf_c_message_free_unpacked(&b->base, NULL);
}

/* The client gives up while order.created is stored but its PubAck is
 * late (a relay holds NATS's replies to the service), and retries with the
 * same idempotency key while that PubAck is still on its way: the retry
 * answers with the same order, and the stream holds one order.created. */
static void test_orders_retry_after_a_late_reply_creates_one_order(void)
{
    Choreo__Orders__V1__LineItem item = line("sku-late", 2, 300);
    Choreo__Orders__V1__CreateOrderResponse *a = NULL, *b = NULL;
    rpc_client_result res;
    char want[ORDER_ID_MAX + 1];
    relay *r = NULL;
    int exit_status;
    found f;
    ch_status st;

    CU_ASSERT_EQUAL_FATAL(relay_start(&r, natsd_port(nats)), CH_OK);
    CU_ASSERT_EQUAL_FATAL(svc_restart_against(&orders, relay_url(r), orders.n_extra, NULL, 15000, NULL),
                          CH_OK);

    order_id_from_key(want, "cust-late", "late-key");
    relay_hold_replies_after(r, "events.order.created", 3000);
    CU_ASSERT_EQUAL(create_within("cust-late", "late-key", &item, 1, NULL, 1000, &a, &res), CH_TIMEOUT);
    CU_ASSERT_EQUAL(relay_triggered(r), 1);
    CU_ASSERT_EQUAL_FATAL(create_within("cust-late", "late-key", &item, 1, NULL, 15000, &b, &res), CH_OK);
    CU_ASSERT_STRING_EQUAL(b->order->order_id, want);
    CU_ASSERT_EQUAL(b->order->total_cents, 600);
    CU_ASSERT_EQUAL(read_created(want, &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
    Choreo__Orders__V1__Order *o = get(want, &st);
    CU_ASSERT_EQUAL_FATAL(st, CH_OK);
    CU_ASSERT_EQUAL(o->version, b->order->version);
    protobuf_c_message_free_unpacked(&o->base, NULL);
    protobuf_c_message_free_unpacked(&b->base, NULL);

    CU_ASSERT_EQUAL_FATAL(
        svc_restart_against(&orders, natsd_url(nats), orders.n_extra, NULL, 15000, &exit_status), CH_OK);
    CU_ASSERT_EQUAL(exit_status, 0); /* the abandoned call did not hurt it */
    relay_destroy(r);
}

/* Polls GetOrder (up to 10 s) until the order exists. */
static bool wait_order(const char *id)
{
    long long until = test_now_ms() + 10000;
    do {
        ch_status st;
        Choreo__Orders__V1__Order *o = get(id, &st);
        if (o) {
            protobuf_c_message_free_unpacked(&o->base, NULL);
            return true;
        }
        test_sleep_ms(20);
    } while (test_now_ms() < until);
    return false;
}

/* With order.created's PubAck held past the service's publish timeout, the
 * service answers in time, and tells the client that the order may exist
 * and how to retry; the retry finds it. */
static void test_orders_unconfirmed_create_is_reported_as_such(void)
{
    Choreo__Orders__V1__LineItem item = line("sku-late", 1, 300);
    Choreo__Orders__V1__CreateOrderResponse *a = NULL, *b = NULL;
    char want[ORDER_ID_MAX + 1];
    int n_extra = orders.n_extra;
    rpc_client_result res;
    relay *r = NULL;
    found f;

    CU_ASSERT_EQUAL_FATAL(relay_start(&r, natsd_port(nats)), CH_OK);
    CU_ASSERT_EQUAL_FATAL(
        svc_restart_against(&orders, relay_url(r), n_extra, "CHOREO_PUBLISH_TIMEOUT_MS=500", 15000, NULL),
        CH_OK);

    order_id_from_key(want, "cust-late", "late-key-2");
    relay_hold_replies_after(r, "events.order.created", 2000);
    CU_ASSERT_EQUAL(create_within("cust-late", "late-key-2", &item, 1, NULL, 5000, &a, &res), CH_TIMEOUT);
    CU_ASSERT_PTR_NULL(a);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "may have happened"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "retry with the same idempotency_key"));
    CU_ASSERT_TRUE(wait_order(want)); /* it had: the follower brings it in */
    CU_ASSERT_EQUAL_FATAL(create_within("cust-late", "late-key-2", &item, 1, NULL, 5000, &b, NULL), CH_OK);
    CU_ASSERT_STRING_EQUAL(b->order->order_id, want);
    CU_ASSERT_TRUE(b->replayed);
    CU_ASSERT_EQUAL(read_created(want, &f), CH_OK);
    CU_ASSERT_EQUAL(f.count, 1);
    protobuf_c_message_free_unpacked(&b->base, NULL);

    CU_ASSERT_EQUAL_FATAL(svc_restart_against(&orders, natsd_url(nats), n_extra, NULL, 15000, NULL), CH_OK);
    relay_destroy(r);
}

/* ---- SIGTERM while calls are in flight ---- */

/* Each caller uses a fresh idempotency key per call, so the order id of any
 * call, answered or not, is known (order_id_from_key) and the stream can be
 * asked whether it was made. */
typedef struct caller {
    pthread_t t;
    int index;
    int ok, refused, other;
    char last_ok_key[48];
    char refused_key[48];
} caller;

static volatile int stop_callers;

static void *call_loop(void *arg)
{
    caller *c = arg;
    Choreo__Orders__V1__LineItem item = line("sku-term", 1, 1);
    for (int n = 0; !stop_callers; n++) {
        Choreo__Orders__V1__CreateOrderResponse *resp = NULL;
        rpc_client_result res;
        char key[48];
        snprintf(key, sizeof key, "term-%d-%d", c->index, n);
        ch_status st = create("cust-term", key, &item, 1, NULL, &resp, &res);
        if (st == CH_OK) {
            c->ok++;
            memcpy(c->last_ok_key, key, sizeof key);
            protobuf_c_message_free_unpacked(&resp->base, NULL);
            continue;
        }
        /* The server has gone. gRPC core answers a call that races its
         * GOAWAY with CANCELLED and one after it with UNAVAILABLE; either
         * way the call must have been refused whole (checked below). */
        if (st == CH_UNAVAILABLE || st == CH_CANCELLED) {
            c->refused++;
            memcpy(c->refused_key, key, sizeof key);
        } else {
            c->other++;
            fprintf(stderr, "call ended with %s: %s\n", ch_status_str(st), res.details);
        }
        break;
    }
    return NULL;
}

static int stream_count_for_key(const char *key)
{
    char id[ORDER_ID_MAX + 1];
    found f;
    order_id_from_key(id, "cust-term", key);
    if (read_created(id, &f) != CH_OK)
        return -1;
    return f.count;
}

static void test_orders_sigterm_drains_calls_and_exits_zero(void)
{
    caller callers[6] = {0};
    int exit_status = -1;

    stop_callers = 0;
    for (int i = 0; i < 6; i++) {
        callers[i].index = i;
        pthread_create(&callers[i].t, NULL, call_loop, &callers[i]);
    }
    nanosleep(&(struct timespec){0, 300 * 1000000L}, NULL);
    CU_ASSERT_EQUAL(proc_signal(orders.p, SIGTERM), CH_OK);
    CU_ASSERT_EQUAL(proc_wait(orders.p, 15000, &exit_status), CH_OK);
    CU_ASSERT_EQUAL(exit_status, 0);
    stop_callers = 1;
    int ok = 0, other = 0;
    for (int i = 0; i < 6; i++) {
        pthread_join(callers[i].t, NULL);
        ok += callers[i].ok;
        other += callers[i].other;
        /* an order the client was told about is durable ... */
        if (callers[i].last_ok_key[0])
            CU_ASSERT_EQUAL(stream_count_for_key(callers[i].last_ok_key), 1);
        /* ... and a refused call left nothing behind: never half-done */
        if (callers[i].refused_key[0])
            CU_ASSERT_EQUAL(stream_count_for_key(callers[i].refused_key), 0);
    }
    CU_ASSERT_TRUE(ok > 0);
    CU_ASSERT_EQUAL(other, 0);
}

int main(void)
{
    static const cu_test tests[] = {
        {"create publishes order.created", test_orders_create_publishes_order_created},
        {"idempotency key returns the same order", test_orders_idempotency_key_returns_same_order},
        {"bad input is refused, not fatal", test_orders_bad_input_is_refused_not_fatal},
        {"list pages newest first", test_orders_list_pages_newest_first},
        {"list page too big for one reply is cut", test_orders_list_page_too_big_for_one_reply_is_cut},
        {"reflection lists and finds symbols", test_orders_reflection_lists_and_finds_symbols},
        {"health follows nats", test_orders_health_follows_nats},
        {"state survives a restart", test_orders_state_survives_restart},
        {"retry after a late reply creates one order",
         test_orders_retry_after_a_late_reply_creates_one_order},
        {"unconfirmed create is reported as such", test_orders_unconfirmed_create_is_reported_as_such},
        {"SIGTERM drains calls and exits 0", test_orders_sigterm_drains_calls_and_exits_zero},
        {NULL, NULL},
    };

    return cu_run("orders_integration", suite_init, suite_cleanup, tests);
}
