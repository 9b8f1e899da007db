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
    CU_ASSERT_EQUAL(bus_replay(b, EVENT_STREAM, "events.*.*.ord-7", 1, collect, g, &last), CH_OK);
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
    CU_ASSERT_EQUAL(bus_stream_info(b, EVENT_STREAM, &before, NULL), CH_OK);
    CU_ASSERT_EQUAL(event_publish(b, e, 2000, NULL), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(event_publish_async(b, e), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(bus_stream_info(b, EVENT_STREAM, &after, NULL), CH_OK);
    CU_ASSERT_EQUAL(before, after);
    /* Without a traceparent the header is absent; async path stores it. */
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_ORDER_CONFIRMED, "ord-8", NULL, "orders", NULL), CH_OK);
    CU_ASSERT_EQUAL(event_publish_async(b, e), CH_OK);
    uint64_t failed = 1;
    CU_ASSERT_EQUAL(bus_publish_async_wait(b, 5000, &failed), CH_OK);
    CU_ASSERT_EQUAL(failed, 0);
    got *g = calloc(1, sizeof *g);
    CU_ASSERT_EQUAL(bus_replay(b, EVENT_STREAM, "events.order.confirmed.ord-8", 1, collect, g, NULL), CH_OK);
    CU_ASSERT_EQUAL(g->n, 1);
    CU_ASSERT_STRING_EQUAL(g->traceparent[0], "");
    CU_ASSERT_STRING_EQUAL(g->type[0], "order.confirmed");
    free(g);
    free(e);
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
        {NULL, NULL},
    };

    log_configure("test_event_bus", LOG_ERROR, 2);
    int rc = cu_run("event_bus", suite_init, suite_clean, tests);
    bus_library_shutdown();
    return rc;
}
