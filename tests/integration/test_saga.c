/* test_saga.c: the whole choreographed saga, end to end: a real nats-server
 * (JetStream, file storage, temp dir, free port) and the four real service
 * binaries, driven over gRPC. Each test proves one guarantee of SAGA.md. */
#include <CUnit/CUnit.h>
#include <pb_encode.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"
#include "cu_run.h"
#include "choreo/notifications/v1/notifications.pb-c.h"
#include "choreo/orders/v1/orders.pb-c.h"
#include "event_bus.h"
#include "harness.h"
#include "order_core.h"
#include "relay.h"
#include "saga_client.h"

enum { ORDERS, INVENTORY, PAYMENT, NOTIFICATIONS, NSVC };
static const char *const svc_names[NSVC] = {"orders", "inventory", "payment", "notifications"};
static const char *const svc_bins[NSVC] = {ORDERS_BIN, INVENTORY_BIN, PAYMENT_BIN, NOTIFICATIONS_BIN};

static natsd *nats;
static svc_proc svc[NSVC];
static bus *reader;

static int suite_init(void)
{
    bus_options bo = {.no_retry_on_failed_connect = true};
    const char *env[] = {"CHOREO_SHUTDOWN_GRACE_MS=3000", NULL};

    if (natsd_start(&nats, NULL) != CH_OK)
        return 1;
    for (int i = 0; i < NSVC; i++)
        if (svc_start(&svc[i], svc_names[i], svc_bins[i], natsd_url(nats), env, 15000) != CH_OK)
            return 1;
    bo.url = natsd_url(nats);
    return bus_create(&reader, &bo) == CH_OK ? 0 : 1;
}

static int suite_cleanup(void)
{
    bus_destroy(reader);
    for (int i = NSVC - 1; i >= 0; i--)
        svc_destroy(&svc[i]);
    natsd_destroy(nats);
    bus_library_shutdown();
    return 0;
}

/* ---- calls ---- */

static ch_status call(int s, const char *method, const ProtobufCMessage *req,
                      const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                      rpc_client_result *res)
{
    static const char *const api[NSVC] = {SC_ORDERS_API, SC_INVENTORY_API, SC_PAYMENT_API,
                                          SC_NOTIFICATIONS_API};
    return sc_call(svc[s].client, api[s], method, req, resp_desc, resp, res);
}

static void set_stock(const char *sku, int64_t n)
{
    CU_ASSERT_EQUAL_FATAL(sc_set_stock(svc[INVENTORY].client, sku, n), CH_OK);
}

typedef sc_stock stock;

static stock get_stock(const char *sku)
{
    stock s;
    sc_get_stock(svc[INVENTORY].client, sku, &s);
    return s;
}

/* Asserts that every unit of sku is back on the shelf after a compensation:
 * `available` available, none reserved, none sold. */
static void assert_all_available(const char *sku, int64_t available)
{
    stock s = get_stock(sku);
    CU_ASSERT_EQUAL(s.available, available);
    CU_ASSERT_EQUAL(s.reserved, 0);
    CU_ASSERT_EQUAL(s.sold, 0);
}

static void credit(const char *customer, int64_t cents)
{
    CU_ASSERT_EQUAL_FATAL(sc_credit(svc[PAYMENT].client, customer, cents), CH_OK);
}

typedef sc_account account;

static account get_account(const char *customer)
{
    account a;
    sc_get_account(svc[PAYMENT].client, customer, &a);
    return a;
}

/* CreateOrder with one item, retried (same idempotency key) while orders is
 * unavailable; the order id goes into id. */
static ch_status place(const char *customer, const char *key, const char *sku, uint32_t qty, int64_t price,
                       char id[ORDER_ID_MAX + 1])
{
    const sc_order o = {customer, key, sku, qty, price};
    return sc_place(&svc[ORDERS].client, 1, &o, 200, 100, id, ORDER_ID_MAX + 1);
}

/* The order's status and reason (reason may be NULL). -1 when unknown. */
static int status_of(const char *id, char *reason, size_t cap)
{
    return sc_order_status(svc[ORDERS].client, id, reason, cap);
}

/* Polls until the order reaches status want (an OrderStatus number). */
static bool wait_status(const char *id, int want, int timeout_ms)
{
    long long end = test_now_ms() + timeout_ms;
    do {
        if (status_of(id, NULL, 0) == want)
            return true;
        test_sleep_ms(20);
    } while (test_now_ms() < end);
    return false;
}

#define CONFIRMED  CHOREO__ORDERS__V1__ORDER_STATUS__ORDER_STATUS_CONFIRMED
#define CANCELLED  CHOREO__ORDERS__V1__ORDER_STATUS__ORDER_STATUS_CANCELLED
#define RESERVED   CHOREO__ORDERS__V1__ORDER_STATUS__ORDER_STATUS_RESERVED
#define CANCELLING CHOREO__ORDERS__V1__ORDER_STATUS__ORDER_STATUS_CANCELLING

/* Number of notifications of one kind (0: any) recorded for an order. */
static int notifications_of(const char *order_id, int kind)
{
    return sc_notifications_of(svc[NOTIFICATIONS].client, order_id, kind);
}

static bool wait_notifications(const char *order_id, int kind, int want, int timeout_ms)
{
    long long end = test_now_ms() + timeout_ms;
    do {
        if (notifications_of(order_id, kind) == want)
            return true;
        test_sleep_ms(20);
    } while (test_now_ms() < end);
    return false;
}

#define N_CONFIRMED CHOREO__NOTIFICATIONS__V1__NOTIFICATION_KIND__NOTIFICATION_KIND_ORDER_CONFIRMED
#define N_CANCELLED CHOREO__NOTIFICATIONS__V1__NOTIFICATION_KIND__NOTIFICATION_KIND_ORDER_CANCELLED

/* A whole saga placed and finished: every consumer has handled what was
 * published before it, so it marks "everything earlier is processed". */
static void sentinel_saga(void)
{
    static int n;
    char key[32], id[ORDER_ID_MAX + 1];
    if (n == 0) {
        set_stock("sentinel-sku", 1000000);
        credit("sentinel", 1000000000);
    }
    snprintf(key, sizeof key, "sentinel-%d", n++);
    CU_ASSERT_EQUAL_FATAL(place("sentinel", key, "sentinel-sku", 1, 1, id), CH_OK);
    CU_ASSERT_TRUE(wait_status(id, CONFIRMED, 15000));
    CU_ASSERT_TRUE(wait_notifications(id, N_CONFIRMED, 1, 5000));
}

/* ---- the four paths ---- */

static void test_saga_happy_path(void)
{
    char id[ORDER_ID_MAX + 1];
    set_stock("apple", 10);
    credit("alice", 10000);
    CU_ASSERT_EQUAL_FATAL(place("alice", "", "apple", 2, 1500, id), CH_OK);
    CU_ASSERT_TRUE_FATAL(wait_status(id, CONFIRMED, 10000));
    stock s = get_stock("apple");
    CU_ASSERT_EQUAL(s.available, 8);
    CU_ASSERT_EQUAL(s.reserved, 0);
    CU_ASSERT_EQUAL(s.sold, 2);
    CU_ASSERT_EQUAL(s.total_in, 10);
    account a = get_account("alice");
    CU_ASSERT_EQUAL(a.balance, 7000);
    CU_ASSERT_EQUAL(a.charged, 3000);
    CU_ASSERT_TRUE(wait_notifications(id, N_CONFIRMED, 1, 5000));

    /* the timeline, read back from the stream */
    Choreo__Orders__V1__GetOrderHistoryRequest req = CHOREO__ORDERS__V1__GET_ORDER_HISTORY_REQUEST__INIT;
    Choreo__Orders__V1__GetOrderHistoryResponse *h = NULL;
    req.order_id = id;
    CU_ASSERT_EQUAL_FATAL(call(ORDERS, "GetOrderHistory", &req.base,
                               &choreo__orders__v1__get_order_history_response__descriptor,
                               (ProtobufCMessage **)&h, NULL),
                          CH_OK);
    /* the saga's path, in order; beside it inventory records the commit
     * (inventory.committed) and notifications the notice */
    const char *want[] = {"order.created", "inventory.reserved", "payment.processed", "order.confirmed"};
    Choreo__Orders__V1__HistoryEntry *path[4];
    size_t k = 0;
    for (size_t i = 0; i < h->n_entries && k < 4; i++)
        if (strcmp(h->entries[i]->type, "inventory.committed") != 0 &&
            strcmp(h->entries[i]->type, "notification.sent") != 0)
            path[k++] = h->entries[i];
    CU_ASSERT_EQUAL_FATAL(k, 4);
    for (int i = 0; i < 4; i++)
        CU_ASSERT_STRING_EQUAL(path[i]->type, want[i]);
    /* each event was caused by the one before it */
    for (int i = 1; i < 4; i++)
        CU_ASSERT_STRING_EQUAL(path[i]->causation_id, path[i - 1]->event_id);
    CU_ASSERT_EQUAL(path[3]->status_after, CONFIRMED);
    protobuf_c_message_free_unpacked(&h->base, NULL);
}

static void test_saga_out_of_stock(void)
{
    char id[ORDER_ID_MAX + 1], reason[256];
    set_stock("unicorn", 0);
    credit("carol", 100000);
    CU_ASSERT_EQUAL_FATAL(place("carol", "", "unicorn", 1, 500, id), CH_OK);
    CU_ASSERT_TRUE_FATAL(wait_status(id, CANCELLED, 10000));
    status_of(id, reason, sizeof reason);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, "unicorn"));
    CU_ASSERT_EQUAL(get_account("carol").balance, 100000); /* never charged */
    stock s = get_stock("unicorn");
    CU_ASSERT_EQUAL(s.available + s.reserved + s.sold, 0);
    CU_ASSERT_TRUE(wait_notifications(id, N_CANCELLED, 1, 5000));
}

static void test_saga_payment_declined_releases_reservation(void)
{
    char id[ORDER_ID_MAX + 1], reason[256];
    set_stock("pear", 5);
    credit("bob", 500);
    CU_ASSERT_EQUAL_FATAL(place("bob", "", "pear", 3, 1000, id), CH_OK);
    CU_ASSERT_TRUE_FATAL(wait_status(id, CANCELLED, 10000));
    status_of(id, reason, sizeof reason);
    CU_ASSERT_TRUE(reason[0] != '\0');
    assert_all_available("pear", 5); /* released */
    account a = get_account("bob");
    CU_ASSERT_EQUAL(a.balance, 500);
    CU_ASSERT_EQUAL(a.charged, 0);
    CU_ASSERT_TRUE(wait_notifications(id, N_CANCELLED, 1, 5000));
    CU_ASSERT_EQUAL(notifications_of(id, N_CONFIRMED), 0);
}

static ch_status cancel(const char *id, rpc_client_result *res)
{
    Choreo__Orders__V1__CancelOrderRequest req = CHOREO__ORDERS__V1__CANCEL_ORDER_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    req.order_id = (char *)id;
    req.reason = (char *)"changed my mind";
    ch_status st = call(ORDERS, "CancelOrder", &req.base,
                        &choreo__orders__v1__cancel_order_response__descriptor, &resp, res);
    protobuf_c_message_free_unpacked(resp, NULL);
    return st;
}

static void test_saga_cancel_after_confirmation_refunds_and_restocks(void)
{
    char id[ORDER_ID_MAX + 1], reason[256];
    set_stock("plum", 4);
    credit("dave", 2000);
    CU_ASSERT_EQUAL_FATAL(place("dave", "", "plum", 2, 400, id), CH_OK);
    CU_ASSERT_TRUE_FATAL(wait_status(id, CONFIRMED, 10000));
    CU_ASSERT_EQUAL(get_account("dave").balance, 1200);
    CU_ASSERT_EQUAL(cancel(id, NULL), CH_OK);
    CU_ASSERT_TRUE_FATAL(wait_status(id, CANCELLED, 10000));
    status_of(id, reason, sizeof reason);
    CU_ASSERT_STRING_EQUAL(reason, "changed my mind");
    account a = get_account("dave");
    CU_ASSERT_EQUAL(a.balance, 2000);
    CU_ASSERT_EQUAL(a.refunded, 800);
    assert_all_available("plum", 4);
    CU_ASSERT_TRUE(wait_notifications(id, N_CONFIRMED, 1, 5000));
    CU_ASSERT_TRUE(wait_notifications(id, N_CANCELLED, 1, 5000));
    CU_ASSERT_EQUAL(cancel(id, NULL), CH_OK); /* again: nothing more happens */
    sentinel_saga();
    CU_ASSERT_EQUAL(get_account("dave").refunded, 800);
}

/* Orders reaches NATS through a relay that holds the answer to its
 * order.cancel_requested past its publish timeout: the client is told that
 * the cancel may have happened, retries as told, and the order is refunded
 * and restocked once. */
static void test_saga_unconfirmed_cancel_refunds_once(void)
{
    char id[ORDER_ID_MAX + 1];
    int n_extra = svc[ORDERS].n_extra;
    rpc_client_result res;
    relay *r = NULL;

    set_stock("quince", 5);
    credit("fay", 3000);
    CU_ASSERT_EQUAL_FATAL(relay_start(&r, natsd_port(nats)), CH_OK);
    CU_ASSERT_EQUAL_FATAL(svc_restart_against(&svc[ORDERS], relay_url(r), n_extra,
                                              "CHOREO_PUBLISH_TIMEOUT_MS=500", 15000, NULL),
                          CH_OK);
    CU_ASSERT_EQUAL_FATAL(place("fay", "", "quince", 2, 700, id), CH_OK);
    CU_ASSERT_TRUE_FATAL(wait_status(id, CONFIRMED, 10000));

    relay_hold_replies_after(r, "events.order.cancel_requested", 2000);
    CU_ASSERT_EQUAL(cancel(id, &res), CH_TIMEOUT);
    CU_ASSERT_EQUAL(relay_triggered(r), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "may have happened"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "a second cancel changes nothing"));
    CU_ASSERT_TRUE(wait_status(id, CANCELLED, 15000)); /* it had */
    CU_ASSERT_EQUAL(cancel(id, NULL), CH_OK);          /* the retry */
    sentinel_saga();
    account a = get_account("fay");
    CU_ASSERT_EQUAL(a.refunded, 1400);
    CU_ASSERT_EQUAL(a.balance, 3000);
    assert_all_available("quince", 5);
    CU_ASSERT_TRUE(wait_notifications(id, N_CANCELLED, 1, 5000));
    CU_ASSERT_EQUAL(notifications_of(id, 0), 2); /* confirmed, then cancelled */

    CU_ASSERT_EQUAL_FATAL(svc_restart_against(&svc[ORDERS], natsd_url(nats), n_extra, NULL, 15000, NULL),
                          CH_OK);
    relay_destroy(r);
}

static void test_saga_cancel_refused_while_saga_runs(void)
{
    char id[ORDER_ID_MAX + 1];
    rpc_client_result res;
    int exit_status;
    set_stock("fig", 3);
    credit("erin", 5000);
    /* without payment the saga stops at RESERVED: deterministic "still running" */
    CU_ASSERT_EQUAL_FATAL(svc_stop(&svc[PAYMENT], 10000, &exit_status), CH_OK);
    CU_ASSERT_EQUAL(exit_status, 0);
    CU_ASSERT_EQUAL_FATAL(place("erin", "", "fig", 1, 100, id), CH_OK);
    CU_ASSERT_TRUE(wait_status(id, RESERVED, 10000));
    CU_ASSERT_EQUAL(cancel(id, &res), CH_FAILED_PRECONDITION);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "RESERVED"));
    CU_ASSERT_EQUAL_FATAL(svc_restart(&svc[PAYMENT], 15000), CH_OK);
    CU_ASSERT_TRUE(wait_status(id, CONFIRMED, 10000)); /* the saga resumes where it stopped */
}

/* ---- duplicates ---- */

typedef struct raw_event {
    uint8_t data[EVENT_MAX_BYTES];
    size_t len;
    char subject[EVENT_SUBJECT_MAX];
    char msg_id[EVENT_MSG_ID_MAX];
    int found;
} raw_event;

static ch_status keep_raw(const bus_in_msg *m, void *arg)
{
    raw_event *r = arg;
    const char *id = bus_in_msg_header(m, "Nats-Msg-Id");
    memcpy(r->data, m->data, m->len);
    r->len = m->len;
    snprintf(r->subject, sizeof r->subject, "%s", m->subject);
    snprintf(r->msg_id, sizeof r->msg_id, "%s", id ? id : "");
    r->found++;
    return CH_OK;
}

/* Publishes an event of order id again, as stored, under msg_id. */
static void republish(const char *id, event_type t, const char *msg_id)
{
    raw_event *r = calloc(1, sizeof *r);
    char subject[EVENT_SUBJECT_MAX];
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    event_subject(subject, sizeof subject, t, id);
    CU_ASSERT_EQUAL(bus_replay(reader, event_stream_of(t), subject, 1, keep_raw, r, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(r->found, 1);
    bus_out_msg m = {
        .subject = r->subject, .data = r->data, .len = r->len, .msg_id = msg_id ? msg_id : r->msg_id};
    CU_ASSERT_EQUAL(bus_publish(reader, &m, 5000, NULL), CH_OK);
    free(r);
}

static void test_saga_duplicates_change_nothing(void)
{
    char id[ORDER_ID_MAX + 1];
    set_stock("kiwi", 10);
    credit("fred", 5000);
    CU_ASSERT_EQUAL_FATAL(place("fred", "", "kiwi", 2, 1000, id), CH_OK);
    CU_ASSERT_TRUE_FATAL(wait_status(id, CONFIRMED, 10000));
    CU_ASSERT_TRUE_FATAL(wait_notifications(id, N_CONFIRMED, 1, 5000));

    /* the same events again: same Nats-Msg-Id (JetStream drops them) and a
     * different one (stored: the handlers must see they are done) */
    const event_type again[] = {EVENT_ORDER_CREATED, EVENT_INVENTORY_RESERVED, EVENT_PAYMENT_PROCESSED,
                                EVENT_ORDER_CONFIRMED};
    for (size_t i = 0; i < sizeof again / sizeof again[0]; i++) {
        republish(id, again[i], NULL);
        republish(id, again[i], "a-fresh-message-id");
    }
    sentinel_saga();
    stock s = get_stock("kiwi");
    CU_ASSERT_EQUAL(s.available, 8);
    CU_ASSERT_EQUAL(s.sold, 2);
    CU_ASSERT_EQUAL(s.reserved, 0);
    account a = get_account("fred");
    CU_ASSERT_EQUAL(a.balance, 3000);
    CU_ASSERT_EQUAL(a.charged, 2000);
    CU_ASSERT_EQUAL(notifications_of(id, 0), 1);
    CU_ASSERT_EQUAL(status_of(id, NULL, 0), CONFIRMED);
}

static void test_saga_consumer_replayed_from_start_changes_nothing(void)
{
    int exit_status;
    stock before = get_stock("kiwi");
    account fred = get_account("fred");

    /* stop the service, forget where its consumers were, start it again:
     * every event of the stream is delivered to it once more */
    for (int s = INVENTORY; s <= PAYMENT; s++)
        CU_ASSERT_EQUAL_FATAL(svc_stop(&svc[s], 10000, &exit_status), CH_OK);
    /* each durable lives on the stream of the events it consumes */
    static const struct {
        const char *durable;
        event_type type;
    } consumers[] = {
        {"inventory-order_created", EVENT_ORDER_CREATED},
        {"inventory-payment_processed", EVENT_PAYMENT_PROCESSED},
        {"inventory-payment_failed", EVENT_PAYMENT_FAILED},
        {"inventory-order_cancel_requested", EVENT_ORDER_CANCEL_REQUESTED},
        {"payment-inventory_reserved", EVENT_INVENTORY_RESERVED},
        {"payment-order_cancel_requested", EVENT_ORDER_CANCEL_REQUESTED},
    };
    for (size_t i = 0; i < sizeof consumers / sizeof consumers[0]; i++)
        CU_ASSERT_EQUAL(bus_delete_consumer(reader, event_stream_of(consumers[i].type), consumers[i].durable),
                        CH_OK);
    for (int s = INVENTORY; s <= PAYMENT; s++)
        CU_ASSERT_EQUAL_FATAL(svc_restart(&svc[s], 15000), CH_OK);
    sentinel_saga();
    stock after = get_stock("kiwi");
    CU_ASSERT_EQUAL(after.available, before.available);
    CU_ASSERT_EQUAL(after.sold, before.sold);
    CU_ASSERT_EQUAL(get_account("fred").balance, fred.balance);
    CU_ASSERT_EQUAL(get_account("fred").charged, fred.charged);
    CU_ASSERT_EQUAL(get_account("dave").refunded, 800);
}

/* ---- poison events ---- */

/* Minimal protobuf writer, so the test can build what our encoder refuses. */
typedef struct pbw {
    uint8_t buf[4096];
    size_t n;
} pbw;

static void pbw_varint(pbw *w, uint64_t v)
{
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        w->buf[w->n++] = b | (v ? 0x80 : 0);
    } while (v);
}

static void pbw_bytes(pbw *w, int field, const void *p, size_t len)
{
    pbw_varint(w, (uint64_t)field << 3 | 2);
    pbw_varint(w, len);
    memcpy(w->buf + w->n, p, len);
    w->n += len;
}

static void pbw_str(pbw *w, int field, const char *s)
{
    pbw_bytes(w, field, s, strlen(s));
}

static void envelope_bytes(pbw *w, const char *type, const char *order_id, uint32_t version,
                           const pbw *payload)
{
    w->n = 0;
    pbw_str(w, 1, "0123456789abcdef0123456789abcdef");
    pbw_str(w, 2, type);
    pbw_str(w, 3, order_id);
    pbw_str(w, 5, "test");
    pbw_varint(w, 7 << 3);
    pbw_varint(w, version);
    if (payload)
        pbw_bytes(w, 20, payload->buf, payload->n); /* order_created */
}

static void publish_bytes(const char *subject, const void *data, size_t len)
{
    bus_out_msg m = {.subject = subject, .data = data, .len = len};
    CU_ASSERT_EQUAL(bus_publish(reader, &m, 5000, NULL), CH_OK);
}

typedef struct dead {
    int n;
    char reasons[8][256];
} dead;

static ch_status collect_dead(const bus_in_msg *m, void *arg)
{
    dead *d = arg;
    const char *r = bus_in_msg_header(m, BUS_HDR_DEAD_REASON);
    if (d->n < 8)
        snprintf(d->reasons[d->n], sizeof d->reasons[0], "%s", r ? r : "");
    d->n++;
    return CH_OK;
}

static bool dead_contains(const dead *d, const char *needle)
{
    for (int i = 0; i < d->n && i < 8; i++)
        if (strstr(d->reasons[i], needle))
            return true;
    return false;
}

static void test_saga_poison_events_are_dead_lettered(void)
{
    pbw env = {0}, payload = {0};
    dead *d = calloc(1, sizeof *d);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);

    const char garbage[] = "\xff\xfe this is not an envelope";
    publish_bytes("events.order.created.ord-poison1", garbage, sizeof garbage - 1);
    pbw_str(&payload, 1, "cust");
    envelope_bytes(&env, "order.exploded", "ord-poison2", 1, &payload); /* unknown type */
    publish_bytes("events.order.created.ord-poison2", env.buf, env.n);
    envelope_bytes(&env, "order.created", "ord-poison3", 7, &payload); /* schema from the future */
    publish_bytes("events.order.created.ord-poison3", env.buf, env.n);
    char huge[300];
    memset(huge, 'x', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    payload.n = 0;
    pbw_str(&payload, 1, huge); /* customer id over its 64-byte limit */
    envelope_bytes(&env, "order.created", "ord-poison4", 1, &payload);
    publish_bytes("events.order.created.ord-poison4", env.buf, env.n);

    sentinel_saga(); /* the events behind them keep flowing */
    long long end = test_now_ms() + 5000;
    do {
        memset(d, 0, sizeof *d);
        CU_ASSERT_EQUAL(bus_replay(reader, BUS_DEADLETTER_STREAM, "deadletter.events.order.created.*", 1,
                                   collect_dead, d, NULL),
                        CH_OK);
    } while (d->n < 4 && test_now_ms() < end && (test_sleep_ms(50), 1));
    CU_ASSERT_EQUAL(d->n, 4);
    CU_ASSERT_TRUE(dead_contains(d, "undecodable"));
    CU_ASSERT_TRUE(dead_contains(d, "order.exploded"));
    CU_ASSERT_TRUE(dead_contains(d, "schema version 7"));
    for (int i = 0; i < d->n && i < 8; i++)
        if (!d->reasons[i][0])
            CU_FAIL("a dead letter without a reason");
    free(d);
}

/* ---- retry with backoff ---- */

static void test_saga_transient_failure_is_retried_then_succeeds(void)
{
    char id[ORDER_ID_MAX + 1], expect[ORDER_ID_MAX + 1];
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);

    /* inventory.failed for an order orders has not seen yet (its id is known
     * from the idempotency key): orders keeps the step until the order is
     * created, then folds it in */
    set_stock("ghost", 0);
    order_id_from_key(expect, "gina", "early-bird");
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_INVENTORY_FAILED, expect, "test", "inventory", NULL), CH_OK);
    snprintf(e->payload.inventory_failed.sku, sizeof e->payload.inventory_failed.sku, "ghost");
    snprintf(e->payload.inventory_failed.reason, sizeof e->payload.inventory_failed.reason,
             "out of stock: ghost");
    e->payload.inventory_failed.requested = 1;
    CU_ASSERT_EQUAL(event_publish(reader, e, 5000, NULL), CH_OK);
    test_sleep_ms(300); /* at least one failed delivery */
    CU_ASSERT_EQUAL_FATAL(place("gina", "early-bird", "ghost", 1, 100, id), CH_OK);
    CU_ASSERT_STRING_EQUAL(id, expect);
    CU_ASSERT_TRUE(wait_status(id, CANCELLED, 10000));
    free(e);
}

static void test_saga_permanent_failure_is_dead_lettered_after_bounded_deliveries(void)
{
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    dead *d = calloc(1, sizeof *d);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    /* a payment for an order that will never exist: inventory has no
     * reservation to commit (not even after catching up); retried, then
     * given up */
    CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_PAYMENT_PROCESSED, "ord-never", "test", "payment", NULL),
                          CH_OK);
    snprintf(e->payload.payment_processed.customer_id, sizeof e->payload.payment_processed.customer_id,
             "nobody");
    e->payload.payment_processed.amount_cents = 1;
    CU_ASSERT_EQUAL(event_publish(reader, e, 5000, NULL), CH_OK);
    long long end = test_now_ms() + 30000;
    do {
        memset(d, 0, sizeof *d);
        bus_replay(reader, BUS_DEADLETTER_STREAM, "deadletter.events.payment.processed.ord-never", 1,
                   collect_dead, d, NULL);
    } while (d->n == 0 && test_now_ms() < end && (test_sleep_ms(200), 1));
    CU_ASSERT_EQUAL(d->n, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(d->reasons[0], "ord-never"));
    free(d);
    free(e);
}

/* ---- late replies ---- */

#define LATE_ORDERS 40

/* Lines of service s's log that hold needle. */
static int log_lines_with(const svc_proc *s, const char *needle)
{
    FILE *f = fopen(s->log_path, "r");
    char line[4096];
    int n = 0;

    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

/* Milliseconds until end, 0 once it has passed. */
static int ms_left(long long end)
{
    long long now = test_now_ms();
    return end > now ? (int)(end - now) : 0;
}

/* Inventory and payment reach NATS through relays. The first decisions
 * each writes to its stream are stored, but the server's replies are held
 * past their publish timeout: each undoes them, catches up with its stream
 * (finding them stored) and decides again. Every saga still ends, and each
 * effect happened once: stock sold and money charged match the orders
 * exactly. */
static void test_saga_write_stored_but_unacknowledged_happens_once(void)
{
    relay *late[2] = {NULL, NULL};
    const int moved[2] = {INVENTORY, PAYMENT};
    const char *const first_write[2] = {"events.inventory.reserved", "events.payment.processed"};
    int n_extra[2];
    char ids[LATE_ORDERS][ORDER_ID_MAX + 1];
    int64_t qty_sum = 0;

    for (int k = 0; k < 2; k++) {
        CU_ASSERT_EQUAL_FATAL(relay_start(&late[k], natsd_port(nats)), CH_OK);
        n_extra[k] = svc[moved[k]].n_extra;
        CU_ASSERT_EQUAL_FATAL(svc_restart_against(&svc[moved[k]], relay_url(late[k]), n_extra[k],
                                                  "CHOREO_PUBLISH_TIMEOUT_MS=500", 15000, NULL),
                              CH_OK);
    }
    set_stock("late-sku", 1000);
    credit("late-cust", 10000000);
    for (int k = 0; k < 2; k++)
        relay_hold_replies_after(late[k], first_write[k], 2000); /* past the 500 ms timeout */

    for (int i = 0; i < LATE_ORDERS; i++) {
        char key[32];
        uint32_t qty = 1 + (uint32_t)(i % 3);
        snprintf(key, sizeof key, "late-%d", i);
        CU_ASSERT_EQUAL_FATAL(place("late-cust", key, "late-sku", qty, 100, ids[i]), CH_OK);
        qty_sum += qty;
    }
    long long end = test_now_ms() + 30000; /* for them all */
    for (int i = 0; i < LATE_ORDERS; i++)
        if (!wait_status(ids[i], CONFIRMED, ms_left(end)))
            CU_FAIL("an order did not end CONFIRMED");
    /* The held writes time out 500 ms after they were sent and are decided
     * again. The orders need not wait for that: the writes were stored, so
     * the saga can end before the timeout fires (it did, under load). */
    const char *timed_out = "events not confirmed; catching up and deciding again";
    end = test_now_ms() + 10000;
    for (int k = 0; k < 2; k++) {
        CU_ASSERT_EQUAL(relay_triggered(late[k]), 1);
        while (log_lines_with(&svc[moved[k]], timed_out) == 0 && test_now_ms() < end)
            test_sleep_ms(50);
        if (log_lines_with(&svc[moved[k]], timed_out) == 0) {
            CU_FAIL("no write timed out");
            svc_dump_log(&svc[moved[k]], 40);
        }
    }

    stock st = get_stock("late-sku");
    end = test_now_ms() + 15000;
    while (st.reserved != 0 && test_now_ms() < end) {
        test_sleep_ms(100);
        st = get_stock("late-sku");
    }
    CU_ASSERT_EQUAL(st.sold, qty_sum);
    CU_ASSERT_EQUAL(st.reserved, 0);
    CU_ASSERT_EQUAL(st.available, 1000 - qty_sum);
    account a = get_account("late-cust");
    CU_ASSERT_EQUAL(a.charged, qty_sum * 100);
    CU_ASSERT_EQUAL(a.balance, 10000000 - qty_sum * 100);
    end = test_now_ms() + 10000;
    for (int i = 0; i < LATE_ORDERS; i++)
        if (!wait_notifications(ids[i], N_CONFIRMED, 1, ms_left(end)) || notifications_of(ids[i], 0) != 1)
            CU_FAIL("an order without exactly one notification");

    /* Restarted (straight to NATS again), they fold their streams into the
     * same state: the writes stored late count once there too. */
    for (int k = 0; k < 2; k++) {
        CU_ASSERT_EQUAL_FATAL(
            svc_restart_against(&svc[moved[k]], natsd_url(nats), n_extra[k], NULL, 15000, NULL), CH_OK);
        relay_destroy(late[k]);
    }
    st = get_stock("late-sku");
    CU_ASSERT_EQUAL(st.sold, qty_sum);
    CU_ASSERT_EQUAL(st.available, 1000 - qty_sum);
    a = get_account("late-cust");
    CU_ASSERT_EQUAL(a.charged, qty_sum * 100);
    CU_ASSERT_EQUAL(a.balance, 10000000 - qty_sum * 100);
}

/* ---- crashes ---- */

#define CRASH_ORDERS    300
#define CRASH_CUSTOMERS 6
#define CRASH_SKUS      4

typedef struct placer {
    pthread_t t;
    int index;
    int placed;
    char ids[CRASH_ORDERS][ORDER_ID_MAX + 1];
    ch_status last_error;
} placer;

static void *place_loop(void *arg)
{
    placer *p = arg;
    for (int i = 0; i < CRASH_ORDERS / 3; i++) {
        char key[32], customer[16], sku[16];
        snprintf(key, sizeof key, "crash-%d-%d", p->index, i);
        snprintf(customer, sizeof customer, "crash-c%d", (p->index * 7 + i) % CRASH_CUSTOMERS);
        snprintf(sku, sizeof sku, "crash-s%d", i % CRASH_SKUS);
        /* customer crash-c5 is poor: some of its orders are declined */
        ch_status st = place(customer, key, sku, 1 + (uint32_t)(i % 3), 250, p->ids[p->placed]);
        if (st == CH_OK)
            p->placed++;
        else
            p->last_error = st;
    }
    return NULL;
}

static void test_saga_survives_crashes_and_conserves(void)
{
    placer placers[3] = {0};
    char name[16];

    for (int s = 0; s < CRASH_SKUS; s++) {
        snprintf(name, sizeof name, "crash-s%d", s);
        set_stock(name, s == CRASH_SKUS - 1 ? 20 : 100000); /* one SKU runs out */
    }
    for (int c = 0; c < CRASH_CUSTOMERS; c++) {
        snprintf(name, sizeof name, "crash-c%d", c);
        credit(name, c == CRASH_CUSTOMERS - 1 ? 3000 : 10000000);
    }
    for (int i = 0; i < 3; i++) {
        placers[i].index = i;
        pthread_create(&placers[i].t, NULL, place_loop, &placers[i]);
    }
    /* kill -9 each service in turn while orders flow, then NATS itself */
    for (int s = INVENTORY; s < NSVC; s++) {
        test_sleep_ms(150);
        svc_kill(&svc[s]);
        test_sleep_ms(100);
        CU_ASSERT_EQUAL(svc_restart(&svc[s], 15000), CH_OK);
    }
    test_sleep_ms(150);
    svc_kill(&svc[ORDERS]);
    CU_ASSERT_EQUAL(svc_restart(&svc[ORDERS], 15000), CH_OK);
    for (int i = 0; i < 3; i++)
        pthread_join(placers[i].t, NULL);
    CU_ASSERT_EQUAL_FATAL(natsd_restart(nats), CH_OK);
    for (int s = 0; s < NSVC; s++)
        CU_ASSERT_TRUE(svc_wait_health(&svc[s], 1, 15000));

    int confirmed = 0, cancelled = 0, total = 0;
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(placers[i].placed, CRASH_ORDERS / 3);
        for (int k = 0; k < placers[i].placed; k++, total++) {
            const char *id = placers[i].ids[k];
            long long end = test_now_ms() + 30000;
            int st;
            while ((st = status_of(id, NULL, 0)) != CONFIRMED && st != CANCELLED && test_now_ms() < end)
                test_sleep_ms(50);
            if (st == CONFIRMED)
                confirmed++;
            else if (st == CANCELLED)
                cancelled++;
            else
                fprintf(stderr, "order %s stuck in status %d\n", id, st);
        }
    }
    CU_ASSERT_EQUAL(confirmed + cancelled, total); /* every saga ended */
    CU_ASSERT_TRUE(confirmed > 0);
    CU_ASSERT_TRUE(cancelled > 0);

    sentinel_saga();
    for (int s = 0; s < CRASH_SKUS; s++) {
        snprintf(name, sizeof name, "crash-s%d", s);
        stock st = get_stock(name);
        CU_ASSERT_EQUAL(st.available + st.reserved + st.sold, st.total_in);
        /* A commit a killed inventory had fetched but not acked comes back
         * only after its AckWait (10 s): the last effects are eventual. */
        long long end = test_now_ms() + 30000;
        while (st.reserved != 0 && test_now_ms() < end) {
            test_sleep_ms(200);
            st = get_stock(name);
            CU_ASSERT_EQUAL(st.available + st.reserved + st.sold, st.total_in); /* at every moment */
        }
        CU_ASSERT_EQUAL(st.reserved, 0); /* no saga holds stock any more */
    }
    for (int c = 0; c < CRASH_CUSTOMERS; c++) {
        snprintf(name, sizeof name, "crash-c%d", c);
        account a = get_account(name);
        CU_ASSERT_EQUAL(a.balance + a.charged - a.refunded, a.credited);
    }
    /* one notification per order, of its final kind */
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < placers[i].placed; k++) {
            const char *id = placers[i].ids[k];
            int kind = status_of(id, NULL, 0) == CONFIRMED ? N_CONFIRMED : N_CANCELLED;
            if (!wait_notifications(id, kind, 1, 20000) || notifications_of(id, 0) != 1)
                CU_FAIL("an order without exactly one notification");
        }
}

int main(void)
{
    static const cu_test tests[] = {
        {"happy path", test_saga_happy_path},
        {"out of stock", test_saga_out_of_stock},
        {"payment declined releases the reservation", test_saga_payment_declined_releases_reservation},
        {"cancel after confirmation refunds and restocks",
         test_saga_cancel_after_confirmation_refunds_and_restocks},
        {"unconfirmed cancel refunds once", test_saga_unconfirmed_cancel_refunds_once},
        {"cancel refused while the saga runs", test_saga_cancel_refused_while_saga_runs},
        {"duplicates change nothing", test_saga_duplicates_change_nothing},
        {"consumer replayed from the start changes nothing",
         test_saga_consumer_replayed_from_start_changes_nothing},
        {"poison events are dead-lettered", test_saga_poison_events_are_dead_lettered},
        {"transient failure is retried then succeeds", test_saga_transient_failure_is_retried_then_succeeds},
        {"permanent failure is dead-lettered after bounded deliveries",
         test_saga_permanent_failure_is_dead_lettered_after_bounded_deliveries},
        {"write stored but unacknowledged happens once",
         test_saga_write_stored_but_unacknowledged_happens_once},
        {"survives crashes and conserves", test_saga_survives_crashes_and_conserves},
        {NULL, NULL},
    };

    return cu_run("saga", suite_init, suite_cleanup, tests);
}
