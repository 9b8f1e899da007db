/* test_event_codec.c: the event envelope codec (nanopb) and its checks. */
#include <CUnit/Basic.h>
#include <stdlib.h>
#include <string.h>

#include <pb_encode.h>

#include "cu_run.h"
#include "event_codec.h"

static const char *const type_names[EVENT_TYPE_COUNT] = {
    "order.created",       "inventory.reserved",       "inventory.failed",  "payment.processed",
    "payment.failed",      "inventory.released",       "order.confirmed",   "order.cancel_requested",
    "payment.refunded",    "order.cancelled",          "notification.sent", "inventory.committed",
    "inventory.stock_set", "inventory.stock_adjusted", "payment.credited",
};

/* Envelopes are ~9 KB: keep them off the stack. */
static choreo_events_v1_Envelope *env_new(void)
{
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    return e;
}

/* Encodes e without any check, as a foreign or buggy producer would. */
static size_t raw_encode(const choreo_events_v1_Envelope *e, uint8_t *buf, size_t cap)
{
    pb_ostream_t os = pb_ostream_from_buffer(buf, cap);
    CU_ASSERT_FATAL(pb_encode(&os, choreo_events_v1_Envelope_fields, e));
    return os.bytes_written;
}

static void fill_payload(choreo_events_v1_Envelope *e, event_type t)
{
    switch (t) {
    case EVENT_ORDER_CREATED:
        strcpy(e->payload.order_created.customer_id, "cust-1");
        e->payload.order_created.items_count = 2;
        strcpy(e->payload.order_created.items[0].sku, "SKU-A");
        e->payload.order_created.items[0].quantity = 2;
        e->payload.order_created.items[0].unit_price_cents = 1250;
        strcpy(e->payload.order_created.items[1].sku, "SKU-\xc3\xa9");
        e->payload.order_created.items[1].quantity = 1;
        e->payload.order_created.items[1].unit_price_cents = 99;
        e->payload.order_created.total_cents = 2599;
        strcpy(e->payload.order_created.idempotency_key, "key-1");
        break;
    case EVENT_INVENTORY_RESERVED:
        strcpy(e->payload.inventory_reserved.customer_id, "cust-1");
        e->payload.inventory_reserved.total_cents = 2599;
        e->payload.inventory_reserved.units = 3;
        e->payload.inventory_reserved.lines_count = 1;
        strcpy(e->payload.inventory_reserved.lines[0].sku, "SKU-A");
        e->payload.inventory_reserved.lines[0].quantity = 3;
        break;
    case EVENT_INVENTORY_FAILED:
        strcpy(e->payload.inventory_failed.sku, "SKU-Z");
        e->payload.inventory_failed.requested = 5;
        e->payload.inventory_failed.available = 0;
        strcpy(e->payload.inventory_failed.reason, "out of stock");
        break;
    case EVENT_PAYMENT_PROCESSED:
        strcpy(e->payload.payment_processed.customer_id, "cust-1");
        e->payload.payment_processed.amount_cents = 2599;
        break;
    case EVENT_PAYMENT_FAILED:
        strcpy(e->payload.payment_failed.customer_id, "cust-1");
        e->payload.payment_failed.amount_cents = 2599;
        e->payload.payment_failed.balance_cents = 10;
        strcpy(e->payload.payment_failed.reason, "insufficient funds");
        break;
    case EVENT_INVENTORY_RELEASED:
        e->payload.inventory_released.units = 3;
        e->payload.inventory_released.restocked = true;
        strcpy(e->payload.inventory_released.reason, "customer cancel");
        break;
    case EVENT_ORDER_CONFIRMED:
        strcpy(e->payload.order_confirmed.customer_id, "cust-1");
        e->payload.order_confirmed.total_cents = 2599;
        break;
    case EVENT_ORDER_CANCEL_REQUESTED:
        strcpy(e->payload.order_cancel_requested.customer_id, "cust-1");
        e->payload.order_cancel_requested.total_cents = 2599;
        strcpy(e->payload.order_cancel_requested.reason, "changed my mind");
        break;
    case EVENT_PAYMENT_REFUNDED:
        strcpy(e->payload.payment_refunded.customer_id, "cust-1");
        e->payload.payment_refunded.amount_cents = 2599;
        break;
    case EVENT_ORDER_CANCELLED:
        strcpy(e->payload.order_cancelled.customer_id, "cust-1");
        strcpy(e->payload.order_cancelled.reason, "payment declined");
        break;
    case EVENT_NOTIFICATION_SENT:
        strcpy(e->payload.notification_sent.customer_id, "cust-1");
        strcpy(e->payload.notification_sent.kind, "order_confirmed");
        strcpy(e->payload.notification_sent.notification_id, "ord-1:order_confirmed");
        break;
    case EVENT_INVENTORY_COMMITTED: e->payload.inventory_committed.units = 3; break;
    case EVENT_INVENTORY_STOCK_SET:
        strcpy(e->payload.inventory_stock_set.sku, "SKU-A");
        e->payload.inventory_stock_set.available = 10;
        e->payload.inventory_stock_set.delta = 10;
        break;
    case EVENT_INVENTORY_STOCK_ADJUSTED:
        strcpy(e->payload.inventory_stock_adjusted.sku, "SKU-A");
        e->payload.inventory_stock_adjusted.delta = -2;
        strcpy(e->payload.inventory_stock_adjusted.idempotency_key, "k-1");
        break;
    case EVENT_PAYMENT_CREDITED:
        strcpy(e->payload.payment_credited.customer_id, "cust-1");
        e->payload.payment_credited.amount_cents = 500;
        break;
    default: CU_FAIL("unknown type"); break;
    }
}

/* A valid order.created envelope. */
static choreo_events_v1_Envelope *valid_env(void)
{
    choreo_events_v1_Envelope *e = env_new();
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_ORDER_CREATED, "ord-1", "req-1", "orders", NULL), CH_OK);
    fill_payload(e, EVENT_ORDER_CREATED);
    return e;
}

/* Decodes buf[0..len) and checks it is refused with a reason containing want. */
static void expect_rejected(const uint8_t *buf, size_t len, const char *want)
{
    choreo_events_v1_Envelope *out = env_new();
    char reason[256] = "";
    CU_ASSERT_EQUAL(event_decode(buf, len, out, reason, sizeof reason), CH_INVALID_ARGUMENT);
    if (!strstr(reason, want)) {
        fprintf(stderr, "\n  reason \"%s\" lacks \"%s\"\n", reason, want);
        CU_FAIL("reason does not match");
    }
    free(out);
}

static void test_event_codec_type_names(void)
{
    for (int i = 0; i < EVENT_TYPE_COUNT; i++) {
        event_type t;
        CU_ASSERT_STRING_EQUAL(event_type_name((event_type)i), type_names[i]);
        CU_ASSERT_EQUAL(event_type_parse(type_names[i], &t), CH_OK);
        CU_ASSERT_EQUAL(t, (event_type)i);
        CU_ASSERT_EQUAL(event_type_from_payload_tag(event_type_payload_tag(t), &t), CH_OK);
        CU_ASSERT_EQUAL(t, (event_type)i);
    }
    event_type t = EVENT_ORDER_CONFIRMED;
    CU_ASSERT_EQUAL(event_type_parse("order.exploded", &t), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(t, EVENT_ORDER_CONFIRMED);
    CU_ASSERT_STRING_EQUAL(event_type_name(EVENT_TYPE_COUNT), "?");
    CU_ASSERT_EQUAL(event_type_payload_tag(EVENT_ORDER_CANCEL_REQUESTED),
                    choreo_events_v1_Envelope_order_cancel_requested_tag);
}

static void test_event_codec_subject_and_msg_id(void)
{
    char buf[EVENT_SUBJECT_MAX];
    CU_ASSERT_EQUAL(event_subject(buf, sizeof buf, EVENT_ORDER_CREATED, "ord-1"), CH_OK);
    CU_ASSERT_STRING_EQUAL(buf, "events.order.created.ord-1");
    CU_ASSERT_EQUAL(event_subject(buf, sizeof buf, EVENT_ORDER_CANCEL_REQUESTED, "ord-2"), CH_OK);
    CU_ASSERT_STRING_EQUAL(buf, "events.order.cancel_requested.ord-2");
    CU_ASSERT_EQUAL(event_subject(buf, sizeof buf, EVENT_INVENTORY_RESERVED, NULL), CH_OK);
    CU_ASSERT_STRING_EQUAL(buf, "events.inventory.reserved.*");
    CU_ASSERT_EQUAL(event_subject(buf, sizeof buf, EVENT_ORDER_CREATED, "bad.id"), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(event_subject(buf, sizeof buf, EVENT_ORDER_CREATED, ""), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(event_subject(buf, 10, EVENT_ORDER_CREATED, "ord-1"), CH_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(event_subject(buf, sizeof buf, EVENT_TYPE_COUNT, "ord-1"), CH_INVALID_ARGUMENT);

    char id[EVENT_MSG_ID_MAX];
    CU_ASSERT_EQUAL(event_msg_id(id, sizeof id, EVENT_PAYMENT_PROCESSED, "ord-9"), CH_OK);
    CU_ASSERT_STRING_EQUAL(id, "ord-9:payment.processed");
    CU_ASSERT_EQUAL(event_msg_id(id, sizeof id, EVENT_PAYMENT_PROCESSED, NULL), CH_INVALID_ARGUMENT);
}

static void test_event_codec_init(void)
{
    choreo_events_v1_Envelope *a = env_new(), *b = env_new();
    CU_ASSERT_EQUAL(event_init(a, EVENT_PAYMENT_FAILED, "ord-1", "evt-0", "payment", "00-abc"), CH_OK);
    CU_ASSERT_EQUAL(event_init(b, EVENT_PAYMENT_FAILED, "ord-1", NULL, NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(strlen(a->event_id), EVENT_ID_LEN);
    CU_ASSERT_EQUAL(strspn(a->event_id, "0123456789abcdef"), EVENT_ID_LEN);
    CU_ASSERT_STRING_NOT_EQUAL(a->event_id, b->event_id);
    CU_ASSERT_STRING_EQUAL(a->type, "payment.failed");
    CU_ASSERT_STRING_EQUAL(a->causation_id, "evt-0");
    CU_ASSERT_STRING_EQUAL(a->traceparent, "00-abc");
    CU_ASSERT_STRING_EQUAL(b->producer, "");
    CU_ASSERT_EQUAL(a->schema_version, EVENT_SCHEMA_VERSION);
    CU_ASSERT_EQUAL(a->which_payload, choreo_events_v1_Envelope_payment_failed_tag);
    CU_ASSERT(a->occurred_at_unix_ns > 1600000000LL * 1000000000LL);
    CU_ASSERT_EQUAL(event_init(a, EVENT_TYPE_COUNT, "ord-1", NULL, NULL, NULL), CH_INVALID_ARGUMENT);
    free(a);
    free(b);
}

#define TRACEPARENT "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
#define TRACE_ID    "0af7651916cd43dd8448eb211c80319c"

static void test_event_codec_init_caused_copies_context(void)
{
    choreo_events_v1_Envelope *cause = env_new(), *e = env_new();
    CU_ASSERT_EQUAL(event_init(cause, EVENT_ORDER_CREATED, "ord-c1", "req-1", "orders", TRACEPARENT), CH_OK);
    CU_ASSERT_EQUAL(event_init_caused(e, EVENT_INVENTORY_RESERVED, cause, "inventory"), CH_OK);
    CU_ASSERT_STRING_EQUAL(e->type, "inventory.reserved");
    CU_ASSERT_EQUAL(e->which_payload, event_type_payload_tag(EVENT_INVENTORY_RESERVED));
    CU_ASSERT_STRING_EQUAL(e->order_id, "ord-c1");
    CU_ASSERT_STRING_EQUAL(e->traceparent, TRACEPARENT);
    CU_ASSERT_STRING_EQUAL(e->causation_id, cause->event_id);
    CU_ASSERT_STRING_EQUAL(e->producer, "inventory");
    CU_ASSERT_EQUAL(strlen(e->event_id), EVENT_ID_LEN);
    CU_ASSERT_STRING_NOT_EQUAL(e->event_id, cause->event_id);
    CU_ASSERT_EQUAL(e->schema_version, EVENT_SCHEMA_VERSION);

    /* No traceparent on the cause: none on the effect. */
    CU_ASSERT_EQUAL(event_init(cause, EVENT_PAYMENT_FAILED, "ord-c2", NULL, "payment", NULL), CH_OK);
    CU_ASSERT_EQUAL(event_init_caused(e, EVENT_INVENTORY_RELEASED, cause, "inventory"), CH_OK);
    CU_ASSERT_STRING_EQUAL(e->order_id, "ord-c2");
    CU_ASSERT_STRING_EQUAL(e->traceparent, "");
    CU_ASSERT_STRING_EQUAL(e->causation_id, cause->event_id);
    CU_ASSERT_EQUAL(event_init_caused(e, EVENT_TYPE_COUNT, cause, "inventory"), CH_INVALID_ARGUMENT);
    free(e);
    free(cause);
}

static void test_event_codec_trace_id(void)
{
    char out[33];
    /* out starts as a terminated string of junk, so a missing write shows */
    memset(out, 'x', sizeof out - 1);
    out[32] = '\0';
    event_trace_id(TRACEPARENT, out);
    CU_ASSERT_STRING_EQUAL(out, TRACE_ID);

    static const char *const malformed[] = {
        "",
        "00",
        "00-0af7651916cd43dd8448eb211c80319c",                      /* no span id */
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",   /* one short */
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-011", /* one long */
        "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  /* bad first dash */
        "00-0af7651916cd43dd8448eb211c80319cXb7ad6b7169203331-01",  /* bad second dash */
        "00-0af7651916cd43dd8448eb211c8031zz-b7ad6b7169203331-01",  /* trace id not hex */
    };
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
        memset(out, 'x', sizeof out - 1);
        event_trace_id(malformed[i], out);
        CU_ASSERT_STRING_EQUAL(out, "");
    }
    memset(out, 'x', sizeof out - 1);
    event_trace_id(NULL, out);
    CU_ASSERT_STRING_EQUAL(out, "");
}

static void test_event_codec_round_trip_every_type(void)
{
    uint8_t *buf = malloc(EVENT_MAX_BYTES);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    for (int i = 0; i < EVENT_TYPE_COUNT; i++) {
        choreo_events_v1_Envelope *e = env_new(), *d = env_new();
        CU_ASSERT_EQUAL(event_init(e, (event_type)i, event_type_has_order((event_type)i) ? "ord-42" : NULL,
                                   "cause-1", "test",
                                   "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                        CH_OK);
        fill_payload(e, (event_type)i);
        size_t len = 0;
        char reason[256] = "";
        CU_ASSERT_EQUAL(event_encode(e, buf, EVENT_MAX_BYTES, &len, reason, sizeof reason), CH_OK);
        CU_ASSERT(len > 0);
        CU_ASSERT_EQUAL(event_decode(buf, len, d, reason, sizeof reason), CH_OK);
        CU_ASSERT_EQUAL(memcmp(e, d, sizeof *e), 0);
        CU_ASSERT_STRING_EQUAL(d->type, type_names[i]);
        event_type t;
        CU_ASSERT_EQUAL(event_type_of(d, &t), CH_OK);
        CU_ASSERT_EQUAL(t, (event_type)i);
        free(e);
        free(d);
    }
    /* The largest envelope (100 items, every string full) fits EVENT_MAX_BYTES. */
    choreo_events_v1_Envelope *e = valid_env();
    e->payload.order_created.items_count = 100;
    for (int i = 0; i < 100; i++) {
        memset(e->payload.order_created.items[i].sku, 'x', 64);
        e->payload.order_created.items[i].quantity = 10000;
        e->payload.order_created.items[i].unit_price_cents = INT64_MAX;
    }
    size_t len = 0;
    CU_ASSERT_EQUAL(event_encode(e, buf, EVENT_MAX_BYTES, &len, NULL, 0), CH_OK);
    CU_ASSERT(len <= EVENT_MAX_BYTES);
    /* and so does the largest reservation (100 lines, every SKU full) */
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_INVENTORY_RESERVED, "ord-1", "c", "inventory", NULL), CH_OK);
    memset(e->payload.inventory_reserved.customer_id, 'c', 64);
    e->payload.inventory_reserved.lines_count = 100;
    for (int i = 0; i < 100; i++) {
        memset(e->payload.inventory_reserved.lines[i].sku, 'x', 64);
        e->payload.inventory_reserved.lines[i].quantity = 1000000;
    }
    CU_ASSERT_EQUAL(event_encode(e, buf, EVENT_MAX_BYTES, &len, NULL, 0), CH_OK);
    CU_ASSERT(len <= EVENT_MAX_BYTES);
    free(e);
    free(buf);
}

/* Events of a SKU or a customer carry no order id; their subject's key is in
 * the payload, and it must be a valid token. */
static void test_event_codec_keyed_types(void)
{
    choreo_events_v1_Envelope *e = env_new();
    uint8_t buf[1024];
    size_t len;
    char reason[256] = "";

    CU_ASSERT_FALSE(event_type_has_order(EVENT_INVENTORY_STOCK_SET));
    CU_ASSERT_FALSE(event_type_has_order(EVENT_PAYMENT_CREDITED));
    CU_ASSERT_TRUE(event_type_has_order(EVENT_INVENTORY_COMMITTED));
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_PAYMENT_CREDITED, NULL, NULL, "payment", NULL), CH_OK);
    fill_payload(e, EVENT_PAYMENT_CREDITED);
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_OK);
    CU_ASSERT_STRING_EQUAL(event_key(e), "cust-1");
    strcpy(e->order_id, "ord-1");
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, "order_id must be empty"));
    e->order_id[0] = '\0';
    strcpy(e->payload.payment_credited.customer_id, "a.b");
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, "valid SKU or customer"));
    /* and an order's event without an order id is refused as before */
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_INVENTORY_COMMITTED, NULL, NULL, "inventory", NULL), CH_OK);
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, "order_id missing"));
    char subject[EVENT_SUBJECT_MAX];
    CU_ASSERT_EQUAL(event_subject(subject, sizeof subject, EVENT_INVENTORY_STOCK_SET, "apple"), CH_OK);
    CU_ASSERT_STRING_EQUAL(subject, "events.inventory.stock_set.apple");
    free(e);
}

static void test_event_codec_rejects_truncated_and_garbage(void)
{
    uint8_t buf[1024];
    choreo_events_v1_Envelope *e = valid_env();
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(event_encode(e, buf, sizeof buf, &len, NULL, 0), CH_OK);
    expect_rejected(buf, len - 3, "undecodable");
    expect_rejected(buf, 1, "undecodable");
    uint8_t garbage[64];
    memset(garbage, 0xff, sizeof garbage);
    expect_rejected(garbage, sizeof garbage, "undecodable");
    expect_rejected(buf, 0, "empty");
    expect_rejected(NULL, 10, "empty");
    /* A string longer than its field (order_id holds 40 bytes): 0x1a = field 3, bytes. */
    uint8_t longstr[2 + 50];
    longstr[0] = 0x1a;
    longstr[1] = 50;
    memset(longstr + 2, 'a', 50);
    expect_rejected(longstr, sizeof longstr, "undecodable");
    free(e);
}

static void test_event_codec_rejects_oversized(void)
{
    uint8_t *big = calloc(1, EVENT_MAX_BYTES + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    expect_rejected(big, EVENT_MAX_BYTES + 1, "oversized: 16385 bytes > 16384");
    free(big);
}

static void test_event_codec_rejects_schema_versions(void)
{
    uint8_t buf[1024];
    choreo_events_v1_Envelope *e = valid_env();
    char reason[128] = "";
    size_t len;
    e->schema_version = 7;
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "schema version 7 is newer than 1");
    e->schema_version = 0;
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "schema version missing");
    free(e);
}

static void test_event_codec_rejects_unknown_type_and_mismatch(void)
{
    uint8_t buf[1024];
    choreo_events_v1_Envelope *e = valid_env();
    char reason[128] = "";
    size_t len;
    strcpy(e->type, "order.exploded");
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, "unknown event type"));
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "unknown event type \"order.exploded\"");

    strcpy(e->type, "payment.failed");
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, "does not match payload"));
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "type payment.failed does not match payload order.created");

    strcpy(e->type, "order.created");
    e->which_payload = 0; /* no payload at all */
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "does not match payload none");
    free(e);
}

static void test_event_codec_rejects_bad_strings_and_ids(void)
{
    uint8_t buf[1024];
    choreo_events_v1_Envelope *e = valid_env();
    char reason[128] = "";
    size_t len;

    strcpy(e->payload.order_created.customer_id, "bad\xff\xfe");
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, "order_created.customer_id: invalid UTF-8"));
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "order_created.customer_id: invalid UTF-8");
    strcpy(e->payload.order_created.customer_id, "cust-1");

    strcpy(e->payload.order_created.items[1].sku, "\xc0\xaf"); /* overlong '/' */
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "items.sku: invalid UTF-8");
    strcpy(e->payload.order_created.items[1].sku, "SKU-B");

    strcpy(e->payload.order_created.idempotency_key, "k\x80");
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "order_created.idempotency_key: invalid UTF-8");
    strcpy(e->payload.order_created.idempotency_key, "key-1");

    strcpy(e->causation_id, "\xed\xa0\x80"); /* surrogate */
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "causation_id: invalid UTF-8");
    strcpy(e->causation_id, "req-1");

    e->event_id[0] = '\0';
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "event_id missing");
    strcpy(e->event_id, "0123456789abcdef0123456789abcdef");

    e->order_id[0] = '\0';
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "order_id missing");

    strcpy(e->order_id, "ord.1");
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "order_id is not a valid token");
    strcpy(e->order_id, "ord 1");
    len = raw_encode(e, buf, sizeof buf);
    expect_rejected(buf, len, "order_id is not a valid token");
    free(e);
}

static void test_event_codec_encode_limits(void)
{
    uint8_t buf[1024];
    choreo_events_v1_Envelope *e = valid_env();
    char reason[128] = "";
    size_t len;
    e->payload.order_created.items_count = 101;
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, "order_created.items: 101 items > 100"));
    e->payload.order_created.items_count = 2;
    /* A buffer too small is a resource error, not a bad event. */
    CU_ASSERT_EQUAL(event_encode(e, buf, 16, &len, reason, sizeof reason), CH_RESOURCE_EXHAUSTED);
    /* A string without its NUL is refused before nanopb reads past it. */
    memset(e->producer, 'p', sizeof e->producer);
    CU_ASSERT_EQUAL(event_encode(e, buf, sizeof buf, &len, reason, sizeof reason), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, "producer: not terminated"));
    free(e);
}

int main(void)
{
    static const cu_test tests[] = {
        {"type names", test_event_codec_type_names},
        {"subject and msg id", test_event_codec_subject_and_msg_id},
        {"init", test_event_codec_init},
        {"init caused copies context", test_event_codec_init_caused_copies_context},
        {"trace id", test_event_codec_trace_id},
        {"round trip every type", test_event_codec_round_trip_every_type},
        {"keyed types", test_event_codec_keyed_types},
        {"rejects truncated and garbage", test_event_codec_rejects_truncated_and_garbage},
        {"rejects oversized", test_event_codec_rejects_oversized},
        {"rejects schema versions", test_event_codec_rejects_schema_versions},
        {"rejects unknown type and mismatch", test_event_codec_rejects_unknown_type_and_mismatch},
        {"rejects bad strings and ids", test_event_codec_rejects_bad_strings_and_ids},
        {"encode limits", test_event_codec_encode_limits},
        {NULL, NULL},
    };

    return cu_run("event_codec", NULL, NULL, tests);
}
