/* test_event_worker.c: consuming one event type from a real nats-server:
 * decoding, dispatch, dead-lettering what cannot be handled, retries. */
#include <CUnit/Basic.h>
#include <pb_encode.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cu_run.h"
#include "event_bus.h"
#include "event_worker.h"
#include "log.h"
#include "natsd.h"
#include "proc.h"

#define TRACEPARENT "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

static natsd *server;
static bus *b;

/* ---- the handler: records every call ---- */

#define MAX_CALLS 32

typedef struct calls {
    atomic_int n;
    char subject[MAX_CALLS][96];
    char type[MAX_CALLS][40];
    char order_id[MAX_CALLS][48];
    char event_id[MAX_CALLS][40];
    char causation_id[MAX_CALLS][88];
    char traceparent[MAX_CALLS][64];
    char customer_id[MAX_CALLS][72];
    int64_t total_cents[MAX_CALLS];
    uint64_t deliveries[MAX_CALLS];
} calls;

/* Orders whose id starts with "retry-" fail twice, then succeed. */
static bus_verdict record(const choreo_events_v1_Envelope *e, const bus_in_msg *m, void *ctx, char *reason,
                          size_t reason_cap)
{
    calls *c = ctx;
    int i = atomic_load(&c->n);
    if (i < MAX_CALLS) {
        snprintf(c->subject[i], sizeof c->subject[i], "%s", m->subject);
        snprintf(c->type[i], sizeof c->type[i], "%s", e->type);
        snprintf(c->order_id[i], sizeof c->order_id[i], "%s", e->order_id);
        snprintf(c->event_id[i], sizeof c->event_id[i], "%s", e->event_id);
        snprintf(c->causation_id[i], sizeof c->causation_id[i], "%s", e->causation_id);
        snprintf(c->traceparent[i], sizeof c->traceparent[i], "%s", e->traceparent);
        snprintf(c->customer_id[i], sizeof c->customer_id[i], "%s", e->payload.order_created.customer_id);
        c->total_cents[i] = e->payload.order_created.total_cents;
        c->deliveries[i] = m->deliveries;
        atomic_store(&c->n, i + 1);
    }
    if (strncmp(e->order_id, "retry-", 6) == 0 && m->deliveries <= 2) {
        snprintf(reason, reason_cap, "transient");
        return BUS_RETRY;
    }
    return BUS_ACK;
}

static event_worker *start_worker(calls *c)
{
    event_worker_spec spec = {
        .service = "test", .type = EVENT_ORDER_CREATED, .handler = record, .ctx = c, .batch = 16};
    event_worker *w = NULL;
    CU_ASSERT_EQUAL_FATAL(event_worker_start(b, &spec, &w), CH_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    return w;
}

static choreo_events_v1_Envelope *order_created(const char *order_id, const char *customer, int64_t total)
{
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_ORDER_CREATED, order_id, "req-1", "orders", TRACEPARENT),
                          CH_OK);
    choreo_events_v1_OrderCreated *p = &e->payload.order_created;
    snprintf(p->customer_id, sizeof p->customer_id, "%s", customer);
    p->items_count = 1;
    snprintf(p->items[0].sku, sizeof p->items[0].sku, "SKU-A");
    p->items[0].quantity = 1;
    p->items[0].unit_price_cents = total;
    p->total_cents = total;
    return e;
}

static ch_status publish_raw(const char *subject, const void *data, size_t len)
{
    bus_out_msg m = {.subject = subject, .data = data, .len = len};
    return bus_publish(b, &m, 2000, NULL);
}

/* ---- dead-letter collection ---- */

#define MAX_DEAD 16

typedef struct dead {
    int n;
    char orig_subject[MAX_DEAD][96];
    char reason[MAX_DEAD][192];
} dead;

static ch_status collect_dead(const bus_in_msg *m, void *ctx)
{
    dead *d = ctx;
    if (d->n >= MAX_DEAD) {
        return CH_RESOURCE_EXHAUSTED;
    }
    const char *s = bus_in_msg_header(m, BUS_HDR_ORIGINAL_SUBJECT);
    const char *r = bus_in_msg_header(m, BUS_HDR_DEAD_REASON);
    snprintf(d->orig_subject[d->n], sizeof d->orig_subject[d->n], "%s", s ? s : "");
    snprintf(d->reason[d->n], sizeof d->reason[d->n], "%s", r ? r : "");
    d->n++;
    return CH_OK;
}

/* The dead-letter reason recorded for the message first published to subject, or NULL. */
static const char *dead_reason(const dead *d, const char *subject)
{
    for (int i = 0; i < d->n; i++) {
        if (strcmp(d->orig_subject[i], subject) == 0) {
            return d->reason[i];
        }
    }
    return NULL;
}

/* ---- tests ---- */

static void test_event_worker_handles_decoded_events(void)
{
    static const char *const ids[] = {"ord-h1", "ord-h2", "ord-h3"};
    calls *c = calloc(1, sizeof *c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    event_worker *w = start_worker(c);
    char event_ids[3][40];
    for (int i = 0; i < 3; i++) {
        choreo_events_v1_Envelope *e = order_created(ids[i], "cust-7", 100 * (i + 1));
        snprintf(event_ids[i], sizeof event_ids[i], "%s", e->event_id);
        CU_ASSERT_EQUAL(event_publish(b, e, 2000, NULL), CH_OK);
        free(e);
    }
    /* Another type on its own subject: not this worker's business. */
    choreo_events_v1_Envelope *other = calloc(1, sizeof *other);
    CU_ASSERT_PTR_NOT_NULL_FATAL(other);
    CU_ASSERT_EQUAL(event_init(other, EVENT_PAYMENT_PROCESSED, "ord-h1", NULL, "payment", NULL), CH_OK);
    snprintf(other->payload.payment_processed.customer_id,
             sizeof other->payload.payment_processed.customer_id, "cust-7");
    other->payload.payment_processed.amount_cents = 100;
    CU_ASSERT_EQUAL(event_publish(b, other, 2000, NULL), CH_OK);
    free(other);

    CU_ASSERT_EQUAL(test_wait_atomic(&c->n, 3, 5000), 3);
    test_sleep_ms(300); /* nothing more arrives */
    event_worker_stop(w);
    event_worker_stop(NULL);
    CU_ASSERT_EQUAL_FATAL(atomic_load(&c->n), 3);
    for (int i = 0; i < 3; i++) {
        char subject[64];
        snprintf(subject, sizeof subject, "events.order.created.%s", ids[i]);
        CU_ASSERT_STRING_EQUAL(c->subject[i], subject);
        CU_ASSERT_STRING_EQUAL(c->type[i], "order.created");
        CU_ASSERT_STRING_EQUAL(c->order_id[i], ids[i]);
        CU_ASSERT_STRING_EQUAL(c->event_id[i], event_ids[i]);
        CU_ASSERT_STRING_EQUAL(c->causation_id[i], "req-1");
        CU_ASSERT_STRING_EQUAL(c->traceparent[i], TRACEPARENT);
        CU_ASSERT_STRING_EQUAL(c->customer_id[i], "cust-7");
        CU_ASSERT_EQUAL(c->total_cents[i], 100 * (i + 1));
        CU_ASSERT_EQUAL(c->deliveries[i], 1);
    }
    free(c);
}

static void test_event_worker_dead_letters_what_cannot_be_handled(void)
{
    calls *c = calloc(1, sizeof *c);
    dead *d = calloc(1, sizeof *d);
    uint8_t *buf = malloc(EVENT_MAX_BYTES);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    char reason[192] = "";
    size_t len = 0;

    /* 1. Garbage: a length-delimited field longer than the message. */
    static const uint8_t garbage[] = {0x0a, 0x7f, 'x', 'y', 0xff};
    CU_ASSERT_EQUAL(publish_raw("events.order.created.x", garbage, sizeof garbage), CH_OK);

    /* 2. A valid payment.processed envelope on the order.created subject. */
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL(event_init(e, EVENT_PAYMENT_PROCESSED, "ord-mis", NULL, "payment", NULL), CH_OK);
    snprintf(e->payload.payment_processed.customer_id, sizeof e->payload.payment_processed.customer_id, "c");
    e->payload.payment_processed.amount_cents = 1;
    CU_ASSERT_EQUAL(event_encode(e, buf, EVENT_MAX_BYTES, &len, reason, sizeof reason), CH_OK);
    CU_ASSERT_EQUAL(publish_raw("events.order.created.ord-mis", buf, len), CH_OK);
    free(e);

    /* 3. An order.created from the future: schema version 99, encoded by hand
     * (event_encode refuses it). */
    e = order_created("ord-v99", "cust-9", 900);
    e->schema_version = 99;
    pb_ostream_t os = pb_ostream_from_buffer(buf, EVENT_MAX_BYTES);
    CU_ASSERT_FATAL(pb_encode(&os, choreo_events_v1_Envelope_fields, e));
    CU_ASSERT_EQUAL(publish_raw("events.order.created.ord-v99", buf, os.bytes_written), CH_OK);
    free(e);

    /* 4. A good event behind them, then the worker: it must get through. */
    e = order_created("ord-after", "cust-1", 50);
    CU_ASSERT_EQUAL(event_publish(b, e, 2000, NULL), CH_OK);
    free(e);
    event_worker *w = start_worker(c);
    CU_ASSERT_EQUAL(test_wait_atomic(&c->n, 1, 5000), 1);
    long long end = test_now_ms() + 5000;
    do {
        memset(d, 0, sizeof *d);
        CU_ASSERT_EQUAL(bus_replay(b, BUS_DEADLETTER_STREAM, "deadletter.events.order.created.>", 1,
                                   collect_dead, d, NULL),
                        CH_OK);
        if (d->n >= 3) {
            break;
        }
        test_sleep_ms(50);
    } while (test_now_ms() < end);
    test_sleep_ms(200);
    event_worker_stop(w);

    CU_ASSERT_EQUAL_FATAL(atomic_load(&c->n), 1);
    CU_ASSERT_STRING_EQUAL(c->order_id[0], "ord-after");
    CU_ASSERT_EQUAL(c->deliveries[0], 1);
    CU_ASSERT_EQUAL(d->n, 3);
    const char *r = dead_reason(d, "events.order.created.x");
    CU_ASSERT_PTR_NOT_NULL(r);
    CU_ASSERT_PTR_NOT_NULL(r ? strstr(r, "undecodable") : NULL);
    r = dead_reason(d, "events.order.created.ord-mis");
    CU_ASSERT_PTR_NOT_NULL(r);
    CU_ASSERT_PTR_NOT_NULL(r ? strstr(r, "payment.processed does not match consumer of order.created")
                             : NULL);
    r = dead_reason(d, "events.order.created.ord-v99");
    CU_ASSERT_PTR_NOT_NULL(r);
    CU_ASSERT_PTR_NOT_NULL(r ? strstr(r, "schema version 99 is newer than 1") : NULL);
    free(buf);
    free(d);
    free(c);
}

static void test_event_worker_retries_then_acks(void)
{
    calls *c = calloc(1, sizeof *c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    event_worker *w = start_worker(c);
    choreo_events_v1_Envelope *e = order_created("retry-1", "cust-2", 10);
    CU_ASSERT_EQUAL(event_publish(b, e, 2000, NULL), CH_OK);
    free(e);
    CU_ASSERT_EQUAL(test_wait_atomic(&c->n, 3, 10000), 3);
    test_sleep_ms(1500); /* acked on the third delivery: no fourth */
    event_worker_stop(w);
    CU_ASSERT_EQUAL_FATAL(atomic_load(&c->n), 3);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_STRING_EQUAL(c->order_id[i], "retry-1");
        CU_ASSERT_EQUAL(c->deliveries[i], (uint64_t)i + 1);
    }
    /* Nothing of it was dead-lettered. */
    dead *d = calloc(1, sizeof *d);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_EQUAL(bus_replay(b, BUS_DEADLETTER_STREAM, "deadletter.events.order.created.retry-1", 1,
                               collect_dead, d, NULL),
                    CH_OK);
    CU_ASSERT_EQUAL(d->n, 0);
    free(d);
    free(c);
}

static int suite_init(void)
{
    if (natsd_start(&server, NULL) != CH_OK) {
        return 1;
    }
    bus_options o = {.url = natsd_url(server), .name = "test_event_worker"};
    if (bus_create(&b, &o) != CH_OK) {
        return 1;
    }
    return event_bus_ensure_streams(b, 1, 0) == CH_OK ? 0 : 1;
}

static int suite_clean(void)
{
    bus_destroy(b);
    natsd_destroy(server);
    return 0;
}

/* A worker with a flush and no handler: every event of a batch reaches the
 * flush together, its verdicts are applied, and each event gets its line. */
typedef struct flushed {
    atomic_int seen;    /* "flush-" events handed to the flush */
    atomic_int retried; /* deliveries of flush-retry answered with RETRY */
    atomic_int calls;
} flushed;

static void flush_all(bus_staged *items, size_t n, void *ctx)
{
    flushed *f = ctx;
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    char why[128];

    atomic_fetch_add(&f->calls, 1);
    for (size_t i = 0; i < n; i++) {
        items[i].verdict = BUS_ACK;
        if (!e || event_decode(items[i].msg->data, items[i].msg->len, e, why, sizeof why) != CH_OK) {
            items[i].verdict = BUS_DEAD;
            continue;
        }
        if (strncmp(e->order_id, "flush-", 6) != 0)
            continue; /* earlier tests' events, from the start of the stream */
        atomic_fetch_add(&f->seen, 1);
        if (strcmp(e->order_id, "flush-retry") == 0 && items[i].msg->deliveries == 1) {
            atomic_fetch_add(&f->retried, 1);
            items[i].verdict = BUS_RETRY;
            snprintf(items[i].reason, sizeof items[i].reason, "once more");
        }
    }
    free(e);
}

static void test_event_worker_flush_without_handler(void)
{
    static const char *const ids[] = {"flush-1", "flush-2", "flush-retry", "flush-3"};
    flushed *f = calloc(1, sizeof *f);
    event_worker *w = NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);

    event_worker_spec none = {.service = "flushtest", .type = EVENT_ORDER_CREATED};
    CU_ASSERT_EQUAL(event_worker_start(b, &none, &w), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(w);

    event_worker_spec spec = {
        .service = "flushtest", .type = EVENT_ORDER_CREATED, .flush = flush_all, .ctx = f, .batch = 16};
    CU_ASSERT_EQUAL_FATAL(event_worker_start(b, &spec, &w), CH_OK);
    for (int i = 0; i < 4; i++) {
        choreo_events_v1_Envelope *e = order_created(ids[i], "cust-f", 10);
        CU_ASSERT_EQUAL(event_publish(b, e, 2000, NULL), CH_OK);
        free(e);
    }
    /* four events, one of them twice (retried after its backoff) */
    CU_ASSERT_EQUAL(test_wait_atomic(&f->seen, 5, 10000), 5);
    test_sleep_ms(500); /* and nothing more: the rest were acked */
    event_worker_stop(w);
    CU_ASSERT_EQUAL(atomic_load(&f->seen), 5);
    CU_ASSERT_EQUAL(atomic_load(&f->retried), 1);
    CU_ASSERT(atomic_load(&f->calls) >= 2); /* the retry came in a batch of its own */
    free(f);
}

int main(void)
{
    static const cu_test tests[] = {
        {"handles decoded events", test_event_worker_handles_decoded_events},
        {"dead-letters what cannot be handled", test_event_worker_dead_letters_what_cannot_be_handled},
        {"retries then acks", test_event_worker_retries_then_acks},
        {"flush without handler", test_event_worker_flush_without_handler},
        {NULL, NULL},
    };
    log_configure("test_event_worker", getenv("TEST_LOG") ? LOG_DEBUG : LOG_ERROR, 2);
    int rc = cu_run("event_worker", suite_init, suite_clean, tests);
    bus_library_shutdown();
    return rc;
}
