/* test_event_bus.c: publishing domain events (codec + bus) to a real nats-server. */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_run.h"
#include "event_bus.h"
#include "log.h"
#include "natsd.h"

static natsd *server;
static bus *b;

typedef struct got {
    int n;
    char subject[8][96];
    char msg_id[8][96];
    char type[8][40];
    char traceparent[8][64];
    choreo_events_v1_Envelope env[2];
    ch_status decoded[8];
} got;

static void hdr(char *dst, size_t cap, const bus_in_msg *m, const char *key)
{
    const char *v = bus_in_msg_header(m, key);
    snprintf(dst, cap, "%s", v ? v : "");
}

static ch_status collect(const bus_in_msg *m, void *ctx)
{
    got *g = ctx;
    if (g->n >= 8) {
        return CH_RESOURCE_EXHAUSTED;
    }
    int i = g->n++;
    snprintf(g->subject[i], sizeof g->subject[i], "%s", m->subject);
    hdr(g->msg_id[i], sizeof g->msg_id[i], m, "Nats-Msg-Id");
    hdr(g->type[i], sizeof g->type[i], m, EVENT_HDR_TYPE);
    hdr(g->traceparent[i], sizeof g->traceparent[i], m, EVENT_HDR_TRACEPARENT);
    if (i < 2) {
        char reason[128];
        g->decoded[i] = event_decode(m->data, m->len, &g->env[i], reason, sizeof reason);
    }
    return CH_OK;
}

static void test_event_bus_publish_headers_and_dedup(void)
{
    const char *tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    got *g = calloc(1, sizeof *g);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_ORDER_CANCEL_REQUESTED, "ord-7", "req-1", "orders", tp), CH_OK);
    strcpy(e->payload.order_cancel_requested.customer_id, "cust-1");
    e->payload.order_cancel_requested.total_cents = 500;
    bus_pub_ack ack = {0};
    CU_ASSERT_EQUAL(event_publish(b, e, 2000, &ack), CH_OK);
    CU_ASSERT_FALSE(ack.duplicate);
    uint64_t first = ack.seq;

    /* A re-run handler publishes the same event again (new event id): JetStream drops it. */
    char old_id[sizeof e->event_id];
    strcpy(old_id, e->event_id);
    CU_ASSERT_EQUAL(event_init(e, EVENT_ORDER_CANCEL_REQUESTED, "ord-7", "req-1", "orders", tp), CH_OK);
    CU_ASSERT_EQUAL(event_publish(b, e, 2000, &ack), CH_OK);
    CU_ASSERT_TRUE(ack.duplicate);
    CU_ASSERT_EQUAL(ack.seq, first);

    uint64_t last = 0;
    CU_ASSERT_EQUAL(bus_replay(b, EVENT_STREAM_ORDER, "events.order.*.ord-7", 1, collect, g, &last), CH_OK);
    CU_ASSERT_EQUAL_FATAL(g->n, 1);
    CU_ASSERT_STRING_EQUAL(g->subject[0], "events.order.cancel_requested.ord-7");
    CU_ASSERT_STRING_EQUAL(g->msg_id[0], "ord-7:order.cancel_requested");
    CU_ASSERT_STRING_EQUAL(g->type[0], "order.cancel_requested");
    CU_ASSERT_STRING_EQUAL(g->traceparent[0], tp);
    CU_ASSERT_EQUAL(g->decoded[0], CH_OK);
    CU_ASSERT_STRING_EQUAL(g->env[0].event_id, old_id);
    CU_ASSERT_EQUAL(g->env[0].payload.order_cancel_requested.total_cents, 500);
    free(e);
    free(g);
}

static void test_event_bus_rejects_invalid(void)
{
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_ORDER_CONFIRMED, "ord-8", NULL, "orders", NULL), CH_OK);
    strcpy(e->type, "payment.processed"); /* does not match the payload */
    uint64_t before = 0, after = 0;
    CU_ASSERT_EQUAL(bus_stream_info(b, EVENT_STREAM_ORDER, &before, NULL), CH_OK);
    CU_ASSERT_EQUAL(event_publish(b, e, 2000, NULL), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(event_publish_async(b, e), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(bus_stream_info(b, EVENT_STREAM_ORDER, &after, NULL), CH_OK);
    CU_ASSERT_EQUAL(before, after);
    /* Without a traceparent the header is absent; async path stores it. */
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_ORDER_CONFIRMED, "ord-8", NULL, "orders", NULL), CH_OK);
    CU_ASSERT_EQUAL(event_publish_async(b, e), CH_OK);
    uint64_t failed = 1;
    CU_ASSERT_EQUAL(bus_publish_async_wait(b, 5000, &failed), CH_OK);
    CU_ASSERT_EQUAL(failed, 0);
    got *g = calloc(1, sizeof *g);
    CU_ASSERT_EQUAL(bus_replay(b, EVENT_STREAM_ORDER, "events.order.confirmed.ord-8", 1, collect, g, NULL),
                    CH_OK);
    CU_ASSERT_EQUAL(g->n, 1);
    CU_ASSERT_STRING_EQUAL(g->traceparent[0], "");
    CU_ASSERT_STRING_EQUAL(g->type[0], "order.confirmed");
    free(g);
    free(e);
}

/* Each producer writes a stream of its own; the stream of a type or subject
 * is found from its aggregate. */
static void test_event_bus_one_stream_per_producer(void)
{
    static const struct {
        event_type t;
        const char *stream, *subject;
    } cases[] = {
        {EVENT_ORDER_CREATED, EVENT_STREAM_ORDER, "events.order.created.x"},
        {EVENT_INVENTORY_COMMITTED, EVENT_STREAM_INVENTORY, "events.inventory.committed.x"},
        {EVENT_PAYMENT_CREDITED, EVENT_STREAM_PAYMENT, "events.payment.credited.x"},
        {EVENT_NOTIFICATION_SENT, EVENT_STREAM_NOTIFICATION, "events.notification.sent.x"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CU_ASSERT_STRING_EQUAL(event_stream_of(cases[i].t), cases[i].stream);
        CU_ASSERT_STRING_EQUAL(event_stream_of_subject(cases[i].subject), cases[i].stream);
        CU_ASSERT_EQUAL(bus_stream_info(b, cases[i].stream, NULL, NULL), CH_OK); /* provisioned */
    }
    CU_ASSERT_PTR_NULL(event_stream_of_subject("events.shipping.sent.x"));
    CU_ASSERT_PTR_NULL(event_stream_of_subject("deadletter.events.order.created.x"));
    CU_ASSERT_PTR_NULL(event_stream_of(EVENT_TYPE_COUNT));
}

/* An event of a SKU or customer: empty order id, the key in its subject, a
 * message id of its own (two stock settings of a SKU are two events). */
static void test_event_bus_keyed_events(void)
{
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    got *g = calloc(1, sizeof *g);
    bus_pub_ack a1 = {0}, a2 = {0};

    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_INVENTORY_STOCK_SET, NULL, "req", "inventory", NULL),
                              CH_OK);
        strcpy(e->payload.inventory_stock_set.sku, "apple");
        e->payload.inventory_stock_set.available = 5 + i;
        CU_ASSERT_EQUAL(event_publish(b, e, 2000, i ? &a2 : &a1), CH_OK);
    }
    CU_ASSERT_FALSE(a2.duplicate);
    CU_ASSERT_EQUAL(a2.seq, a1.seq + 1);
    CU_ASSERT_EQUAL(
        bus_replay(b, EVENT_STREAM_INVENTORY, "events.inventory.stock_set.apple", 1, collect, g, NULL),
        CH_OK);
    CU_ASSERT_EQUAL_FATAL(g->n, 2);
    CU_ASSERT_STRING_EQUAL(g->subject[1], "events.inventory.stock_set.apple");
    CU_ASSERT_PTR_NOT_NULL(strstr(g->msg_id[1], "apple:inventory.stock_set:"));
    CU_ASSERT_STRING_EQUAL(g->env[1].order_id, "");
    CU_ASSERT_STRING_EQUAL(event_key(&g->env[1]), "apple");
    /* an order id in a SKU's event is refused, as is a SKU's event without a SKU */
    strcpy(e->order_id, "ord-1");
    CU_ASSERT_EQUAL(event_publish(b, e, 2000, NULL), CH_INVALID_ARGUMENT);
    e->order_id[0] = '\0';
    e->payload.inventory_stock_set.sku[0] = '\0';
    CU_ASSERT_EQUAL(event_publish(b, e, 2000, NULL), CH_INVALID_ARGUMENT);
    free(g);
    free(e);
}

/* An order's events from every stream, in the order they happened; a SKU
 * named like the order is not the order. */
typedef struct read_log {
    int n;
    char type[8][40];
    char stream[8][32];
} read_log;

static ch_status log_read(const choreo_events_v1_Envelope *e, const char *stream, uint64_t seq, void *ctx)
{
    read_log *r = ctx;
    (void)seq;
    if (r->n < 8) {
        snprintf(r->type[r->n], sizeof r->type[r->n], "%s", e->type);
        snprintf(r->stream[r->n], sizeof r->stream[r->n], "%s", stream);
        r->n++;
    }
    return CH_OK;
}

static void test_event_bus_reads_an_order_across_streams(void)
{
    static const event_type order[] = {EVENT_ORDER_CREATED, EVENT_INVENTORY_RESERVED, EVENT_PAYMENT_PROCESSED,
                                       EVENT_ORDER_CONFIRMED, EVENT_NOTIFICATION_SENT};
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    read_log r = {0};

    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    /* published newest first, stamped oldest first: the read sorts by time */
    for (int i = 4; i >= 0; i--) {
        CU_ASSERT_EQUAL_FATAL(event_init(e, order[i], "ord-x", NULL, "test", NULL), CH_OK);
        e->occurred_at_unix_ns = 1000 + i;
        if (order[i] == EVENT_ORDER_CREATED) {
            strcpy(e->payload.order_created.customer_id, "c");
            e->payload.order_created.items_count = 1;
            strcpy(e->payload.order_created.items[0].sku, "s");
            e->payload.order_created.items[0].quantity = 1;
        }
        if (order[i] == EVENT_NOTIFICATION_SENT)
            strcpy(e->payload.notification_sent.kind, "order_confirmed");
        CU_ASSERT_EQUAL(event_publish(b, e, 2000, NULL), CH_OK);
    }
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_INVENTORY_STOCK_SET, NULL, NULL, "test", NULL), CH_OK);
    strcpy(e->payload.inventory_stock_set.sku, "ord-x");
    CU_ASSERT_EQUAL(event_publish(b, e, 2000, NULL), CH_OK);

    CU_ASSERT_EQUAL(event_read_order(b, "ord-x", 0, log_read, &r), CH_OK);
    CU_ASSERT_EQUAL_FATAL(r.n, 5);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_STRING_EQUAL(r.type[i], event_type_name(order[i]));
    CU_ASSERT_STRING_EQUAL(r.stream[2], EVENT_STREAM_PAYMENT);
    memset(&r, 0, sizeof r);
    CU_ASSERT_EQUAL(event_read_order(b, "ord-x", 2, log_read, &r), CH_OK);
    CU_ASSERT_EQUAL(r.n, 2); /* the first two */
    CU_ASSERT_STRING_EQUAL(r.type[1], "inventory.reserved");
    CU_ASSERT_EQUAL(event_read_order(b, "ord-none", 0, log_read, &r), CH_NOT_FOUND);
    CU_ASSERT_EQUAL(event_read_order(b, "a.b", 0, log_read, &r), CH_INVALID_ARGUMENT);
    free(e);
}

/* A store written by an earlier choreo (one EVENTS stream) is refused, not
 * misread; the message says what to do. */
static void test_event_bus_refuses_an_old_store(void)
{
    natsd *old = NULL;
    bus *ob = NULL;
    CU_ASSERT_EQUAL_FATAL(natsd_start(&old, NULL), CH_OK);
    bus_options o = {.url = natsd_url(old)};
    CU_ASSERT_EQUAL_FATAL(bus_create(&ob, &o), CH_OK);
    bus_stream_spec legacy = {.name = "EVENTS", .subjects = {"events.>"}};
    CU_ASSERT_EQUAL_FATAL(bus_ensure_stream(ob, &legacy), CH_OK);
    CU_ASSERT_EQUAL(event_bus_ensure_streams(ob, 1, 0), CH_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(bus_stream_info(ob, EVENT_STREAM_ORDER, NULL, NULL), CH_NOT_FOUND); /* nothing made */
    bus_destroy(ob);
    natsd_destroy(old);
}

static int suite_init(void)
{
    if (natsd_start(&server, NULL) != CH_OK) {
        return 1;
    }
    bus_options o = {.url = natsd_url(server)};
    if (bus_create(&b, &o) != CH_OK) {
        return 1;
    }
    if (event_bus_ensure_streams(b, 1, 0) != CH_OK || event_bus_ensure_streams(b, 1, 0) != CH_OK) {
        return 1;
    }
    return 0;
}

static int suite_clean(void)
{
    bus_destroy(b);
    natsd_destroy(server);
    return 0;
}

int main(void)
{
    static const cu_test tests[] = {
        {"publish headers and dedup", test_event_bus_publish_headers_and_dedup},
        {"rejects invalid", test_event_bus_rejects_invalid},
        {"one stream per producer", test_event_bus_one_stream_per_producer},
        {"keyed events", test_event_bus_keyed_events},
        {"reads an order across streams", test_event_bus_reads_an_order_across_streams},
        {"refuses an old store", test_event_bus_refuses_an_old_store},
        {NULL, NULL},
    };

    log_configure("test_event_bus", LOG_ERROR, 2);
    int rc = cu_run("event_bus", suite_init, suite_clean, tests);
    bus_library_shutdown();
    return rc;
}
