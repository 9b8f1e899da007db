/* test_notifications.c: the notifications service end to end, against a real
 * nats-server (JetStream, file storage, temp dir, free port) and the real
 * binary. The test plays the orders service: it publishes order.confirmed and
 * order.cancelled envelopes itself and reads back what notifications did. */
#include <CUnit/CUnit.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"
#include "choreo/notifications/v1/notifications.pb-c.h"
#include "cu_run.h"
#include "event_bus.h"
#include "event_codec.h"
#include "harness.h"

#define TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define SVC         "/choreo.notifications.v1.Notifications/"
#define MAX_STREAMS 4
#define WAIT_MS     15000

typedef Choreo__Notifications__V1__Notification pb_notification;
typedef Choreo__Notifications__V1__ListNotificationsResponse pb_list;

static natsd *nats;
static svc_proc notif;
static bus *pub;
static choreo_events_v1_Envelope env; /* big: one, reused by the helpers */

static int suite_init(void)
{
    natsd_options o = {0};
    bus_options bo = {.no_retry_on_failed_connect = true};
    const char *extra[] = {"CHOREO_MAX_STREAMS=4", NULL};

    if (natsd_start(&nats, &o) != CH_OK)
        return 1;
    if (svc_start(&notif, "notifications", NOTIFICATIONS_BIN, natsd_url(nats), extra, 15000) != CH_OK)
        return 1;
    bo.url = natsd_url(nats);
    return bus_create(&pub, &bo) == CH_OK ? 0 : 1;
}

static int suite_cleanup(void)
{
    bus_destroy(pub);
    svc_destroy(&notif);
    natsd_destroy(nats);
    bus_library_shutdown();
    return 0;
}

static void sleep_ms(long ms)
{
    nanosleep(&(struct timespec){ms / 1000, (ms % 1000) * 1000000L}, NULL);
}

/* ---- publishing what orders would publish ---- */

static void make_confirmed(const char *order_id, const char *customer_id, int64_t total)
{
    CU_ASSERT_EQUAL_FATAL(
        event_init(&env, EVENT_ORDER_CONFIRMED, order_id, "test-cause", "orders", TRACEPARENT), CH_OK);
    snprintf(env.payload.order_confirmed.customer_id, sizeof env.payload.order_confirmed.customer_id, "%s",
             customer_id);
    env.payload.order_confirmed.total_cents = total;
}

static void make_cancelled(const char *order_id, const char *customer_id, const char *reason)
{
    CU_ASSERT_EQUAL_FATAL(
        event_init(&env, EVENT_ORDER_CANCELLED, order_id, "test-cause", "orders", TRACEPARENT), CH_OK);
    snprintf(env.payload.order_cancelled.customer_id, sizeof env.payload.order_cancelled.customer_id, "%s",
             customer_id);
    snprintf(env.payload.order_cancelled.reason, sizeof env.payload.order_cancelled.reason, "%s", reason);
}

/* Publishes env with its deterministic Nats-Msg-Id; *duplicate (may be NULL)
 * tells whether JetStream dropped it. */
static void publish_env(bool *duplicate)
{
    bus_pub_ack ack = {0};
    CU_ASSERT_EQUAL_FATAL(event_publish(pub, &env, 5000, &ack), CH_OK);
    if (duplicate)
        *duplicate = ack.duplicate;
}

/* Publishes env under another Nats-Msg-Id, as a re-run producer with a
 * different id scheme would: JetStream keeps it, the service must not. */
static void publish_env_with_msg_id(const char *msg_id)
{
    static uint8_t buf[EVENT_MAX_BYTES];
    char subject[EVENT_SUBJECT_MAX];
    size_t len = 0;
    event_type t;
    bus_pub_ack ack = {0};

    CU_ASSERT_EQUAL_FATAL(event_encode(&env, buf, sizeof buf, &len, NULL, 0), CH_OK);
    CU_ASSERT_EQUAL_FATAL(event_type_of(&env, &t), CH_OK);
    CU_ASSERT_EQUAL_FATAL(event_subject(subject, sizeof subject, t, env.order_id), CH_OK);
    bus_out_msg m = {.subject = subject, .data = buf, .len = len, .msg_id = msg_id};
    m.headers[m.nheaders++] = (bus_header){EVENT_HDR_TYPE, env.type};
    CU_ASSERT_EQUAL_FATAL(bus_publish(pub, &m, 5000, &ack), CH_OK);
    CU_ASSERT_FALSE(ack.duplicate);
}

/* ---- reading back ---- */

/* ListNotifications on one replica. */
static ch_status list_at(rpc_client *client, const char *customer_id, const char *order_id,
                         uint32_t page_size, const char *token, pb_list **out, rpc_client_result *res)
{
    Choreo__Notifications__V1__ListNotificationsRequest req =
        CHOREO__NOTIFICATIONS__V1__LIST_NOTIFICATIONS_REQUEST__INIT;
    req.customer_id = (char *)customer_id;
    req.order_id = (char *)order_id;
    req.page_size = page_size;
    req.page_token = (char *)token;
    *out = NULL;
    return rpc_client_call(client, SVC "ListNotifications", NULL, 0, &req.base,
                           &choreo__notifications__v1__list_notifications_response__descriptor,
                           (ProtobufCMessage **)out, 5000, res);
}

static ch_status list(const char *customer_id, const char *order_id, uint32_t page_size, const char *token,
                      pb_list **out, rpc_client_result *res)
{
    return list_at(notif.client, customer_id, order_id, page_size, token, out, res);
}

/* Notifications (first page of 500) of a customer or an order on one
 * replica; -1 on error. */
static int count_at(rpc_client *client, const char *customer_id, const char *order_id)
{
    pb_list *l = NULL;
    if (list_at(client, customer_id, order_id, 500, "", &l, NULL) != CH_OK)
        return -1;
    int n = (int)l->n_notifications;
    protobuf_c_message_free_unpacked(&l->base, NULL);
    return n;
}

static int count_of(const char *customer_id, const char *order_id)
{
    return count_at(notif.client, customer_id, order_id);
}

/* Polls until order_id has `want` notifications (the worker is asynchronous). */
static bool wait_count(const char *order_id, int want)
{
    long long end = test_now_ms() + WAIT_MS;
    while (test_now_ms() < end) {
        if (count_of("", order_id) == want)
            return true;
        sleep_ms(20);
    }
    return false;
}

/* Publishes a fresh order.confirmed and waits for its notification: the
 * order.confirmed consumer handles its events in order, so everything
 * published before it has been handled too. */
static void barrier(void)
{
    static int n;
    char order_id[32];
    snprintf(order_id, sizeof order_id, "ord-barrier-%d", n++);
    make_confirmed(order_id, "cust-barrier", 1);
    publish_env(NULL);
    CU_ASSERT_TRUE_FATAL(wait_count(order_id, 1));
}

typedef struct sent_events {
    int count;
    char msg_id[2][96];
    choreo_events_v1_Envelope env[2];
} sent_events;

static ch_status collect_sent(const bus_in_msg *m, void *arg)
{
    sent_events *s = arg;
    if (s->count < 2) {
        const char *h = bus_in_msg_header(m, "Nats-Msg-Id");
        snprintf(s->msg_id[s->count], sizeof s->msg_id[0], "%s", h ? h : "");
        if (event_decode(m->data, m->len, &s->env[s->count], NULL, 0) != CH_OK)
            return CH_INTERNAL;
    }
    s->count++;
    return CH_OK;
}

/* Every notification.sent of one order in the service's own stream. */
static void read_sent(const char *order_id, sent_events *s)
{
    char subject[EVENT_SUBJECT_MAX];
    memset(s, 0, sizeof *s);
    CU_ASSERT_EQUAL_FATAL(event_subject(subject, sizeof subject, EVENT_NOTIFICATION_SENT, order_id), CH_OK);
    CU_ASSERT_EQUAL(bus_replay(pub, EVENT_STREAM_NOTIFICATION, subject, 1, collect_sent, s, NULL), CH_OK);
}

static ch_status count_msgs(const bus_in_msg *m, void *arg)
{
    (void)m;
    (*(int *)arg)++;
    return CH_OK;
}

/* ---- tests ---- */

static void test_notifications_records_one_per_event_and_publishes_sent(void)
{
    sent_events s;
    pb_list *l = NULL;

    make_confirmed("ord-n1", "cust-n1", 3000);
    char cause[EVENT_ID_LEN + 1];
    snprintf(cause, sizeof cause, "%s", env.event_id);
    publish_env(NULL);
    /* the two kinds have a worker each: wait, so "oldest first" is known */
    CU_ASSERT_TRUE_FATAL(wait_count("ord-n1", 1));
    make_cancelled("ord-n2", "cust-n1", "out of stock: sku-9 (wanted 3, had 1)");
    publish_env(NULL);
    CU_ASSERT_TRUE_FATAL(wait_count("ord-n2", 1));

    /* by customer: both, oldest first */
    CU_ASSERT_EQUAL_FATAL(list("cust-n1", "", 0, "", &l, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(l->n_notifications, 2);
    pb_notification *c = l->notifications[0], *x = l->notifications[1];
    CU_ASSERT_STRING_EQUAL(c->notification_id, "ord-n1.order_confirmed");
    CU_ASSERT_STRING_EQUAL(c->order_id, "ord-n1");
    CU_ASSERT_STRING_EQUAL(c->customer_id, "cust-n1");
    CU_ASSERT_EQUAL(c->kind, CHOREO__NOTIFICATIONS__V1__NOTIFICATION_KIND__NOTIFICATION_KIND_ORDER_CONFIRMED);
    CU_ASSERT_STRING_EQUAL(c->message, "Your order ord-n1 is confirmed: total 30.00");
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    long long now = (long long)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
    CU_ASSERT_TRUE(c->sent_at_unix_ms > now - 60000 && c->sent_at_unix_ms <= now);
    CU_ASSERT_STRING_EQUAL(x->notification_id, "ord-n2.order_cancelled");
    CU_ASSERT_EQUAL(x->kind, CHOREO__NOTIFICATIONS__V1__NOTIFICATION_KIND__NOTIFICATION_KIND_ORDER_CANCELLED);
    CU_ASSERT_STRING_EQUAL(x->message,
                           "Your order ord-n2 was cancelled: out of stock: sku-9 (wanted 3, had 1)");
    CU_ASSERT_STRING_EQUAL(l->next_page_token, "");
    int64_t sent_at = c->sent_at_unix_ms;
    protobuf_c_message_free_unpacked(&l->base, NULL);

    /* the record: one notification.sent, caused by the order event */
    read_sent("ord-n1", &s);
    CU_ASSERT_EQUAL_FATAL(s.count, 1);
    CU_ASSERT_STRING_EQUAL(s.msg_id[0], "ord-n1:notification.sent:order_confirmed");
    CU_ASSERT_STRING_EQUAL(s.env[0].producer, "notifications");
    CU_ASSERT_STRING_EQUAL(s.env[0].causation_id, cause);
    CU_ASSERT_STRING_EQUAL(s.env[0].traceparent, TRACEPARENT);
    CU_ASSERT_STRING_EQUAL(s.env[0].payload.notification_sent.customer_id, "cust-n1");
    CU_ASSERT_STRING_EQUAL(s.env[0].payload.notification_sent.kind, "order_confirmed");
    CU_ASSERT_STRING_EQUAL(s.env[0].payload.notification_sent.notification_id, "ord-n1.order_confirmed");
    CU_ASSERT_STRING_EQUAL(s.env[0].payload.notification_sent.message,
                           "Your order ord-n1 is confirmed: total 30.00");
    CU_ASSERT_EQUAL(s.env[0].occurred_at_unix_ns / 1000000, sent_at);
}

static void test_notifications_both_kinds_of_one_order_are_kept(void)
{
    sent_events s;
    pb_list *l = NULL;

    make_confirmed("ord-n3", "cust-n3", 12345);
    publish_env(NULL);
    CU_ASSERT_TRUE_FATAL(wait_count("ord-n3", 1));
    make_cancelled("ord-n3", "cust-n3", "cancelled by the customer");
    publish_env(NULL);
    CU_ASSERT_TRUE_FATAL(wait_count("ord-n3", 2));

    CU_ASSERT_EQUAL_FATAL(list("", "ord-n3", 0, "", &l, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(l->n_notifications, 2);
    CU_ASSERT_STRING_EQUAL(l->notifications[0]->notification_id, "ord-n3.order_confirmed");
    CU_ASSERT_STRING_EQUAL(l->notifications[1]->notification_id, "ord-n3.order_cancelled");
    CU_ASSERT_STRING_EQUAL(l->notifications[0]->message, "Your order ord-n3 is confirmed: total 123.45");
    protobuf_c_message_free_unpacked(&l->base, NULL);

    /* both records are in the stream: the msg id carries the kind */
    read_sent("ord-n3", &s);
    CU_ASSERT_EQUAL(s.count, 2);
    CU_ASSERT_STRING_EQUAL(s.msg_id[0], "ord-n3:notification.sent:order_confirmed");
    CU_ASSERT_STRING_EQUAL(s.msg_id[1], "ord-n3:notification.sent:order_cancelled");
}

static void test_notifications_duplicates_make_one_notification(void)
{
    sent_events s;
    bool dup = false;

    make_confirmed("ord-d1", "cust-d1", 500);
    publish_env(&dup);
    CU_ASSERT_FALSE(dup);
    publish_env(&dup); /* same Nats-Msg-Id: JetStream drops it */
    CU_ASSERT_TRUE(dup);
    publish_env_with_msg_id("another-id-1");  /* stored twice: the service must dedup */
    make_confirmed("ord-d1", "cust-d1", 500); /* a re-run producer: new event id, same order */
    publish_env_with_msg_id("another-id-2");
    barrier();

    CU_ASSERT_EQUAL(count_of("", "ord-d1"), 1);
    CU_ASSERT_EQUAL(count_of("cust-d1", ""), 1);
    read_sent("ord-d1", &s);
    CU_ASSERT_EQUAL(s.count, 1);
}

static void test_notifications_list_pages_oldest_first(void)
{
    char ids[5][32], token[64] = "";
    int seen = 0, pages = 0;

    for (int i = 0; i < 5; i++) {
        snprintf(ids[i], sizeof ids[i], "ord-p%d", i);
        make_confirmed(ids[i], "cust-pages", 100 + i);
        publish_env(NULL);
        CU_ASSERT_TRUE_FATAL(wait_count(ids[i], 1)); /* one at a time: the order is known */
    }
    do {
        pb_list *l = NULL;
        CU_ASSERT_EQUAL_FATAL(list("cust-pages", "", 2, token, &l, NULL), CH_OK);
        CU_ASSERT_TRUE(l->n_notifications <= 2);
        for (size_t i = 0; i < l->n_notifications && seen < 5; i++, seen++)
            CU_ASSERT_STRING_EQUAL(l->notifications[i]->order_id, ids[seen]);
        snprintf(token, sizeof token, "%s", l->next_page_token);
        protobuf_c_message_free_unpacked(&l->base, NULL);
        pages++;
    } while (token[0] && pages < 10);
    CU_ASSERT_EQUAL(seen, 5);
    CU_ASSERT_EQUAL(pages, 3);
}

/* 200 notifications of ~450 bytes are 90 KB: more than one reply may carry
 * (CHOREO_MAX_MESSAGE_BYTES, 64 KiB). A page of 500 is cut where the reply
 * is full, and its token goes on from there: nothing lost, nothing twice. */
static void test_notifications_list_page_too_big_for_one_reply_is_cut(void)
{
    enum { N = 200 };
    char customer[65], reason[201], order_id[41], token[64] = "";
    int seen = 0, pages = 0, first_page = 0;

    memset(customer, 'c', 64);
    customer[64] = '\0';
    memset(reason, 'r', 200);
    reason[200] = '\0';
    for (int i = 0; i < N; i++) {
        snprintf(order_id, sizeof order_id, "ord-big-%032d", i);
        make_cancelled(order_id, customer, reason);
        publish_env(NULL);
    }
    CU_ASSERT_TRUE_FATAL(wait_count(order_id, 1)); /* the last one: the worker goes in order */
    do {
        pb_list *l = NULL;
        rpc_client_result res;
        ch_status st = list(customer, "", 500, token, &l, &res);
        CU_ASSERT_EQUAL_FATAL(st, CH_OK);
        if (pages == 0)
            first_page = (int)l->n_notifications;
        for (size_t i = 0; i < l->n_notifications; i++, seen++) {
            snprintf(order_id, sizeof order_id, "ord-big-%032d", seen);
            CU_ASSERT_STRING_EQUAL(l->notifications[i]->order_id, order_id);
        }
        snprintf(token, sizeof token, "%s", l->next_page_token);
        protobuf_c_message_free_unpacked(&l->base, NULL);
        pages++;
    } while (token[0] && pages < 20);
    CU_ASSERT_EQUAL(seen, N);
    CU_ASSERT_TRUE(first_page > 0 && first_page < N);
    CU_ASSERT_TRUE(pages >= 2);
}

static void expect_invalid(const char *customer_id, const char *order_id, uint32_t page_size,
                           const char *token, const char *field)
{
    pb_list *l = NULL;
    rpc_client_result res;
    CU_ASSERT_EQUAL(list(customer_id, order_id, page_size, token, &l, &res), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(res.code, 3 /* INVALID_ARGUMENT */);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, field));
    if (!strstr(res.details, field))
        fprintf(stderr, "details were: %s\n", res.details);
}

static void test_notifications_bad_input_is_refused_not_fatal(void)
{
    char long_order[64];
    memset(long_order, 'o', 41);
    long_order[41] = '\0';

    expect_invalid("", "", 0, "", "customer_id, order_id: one of the two is required");
    expect_invalid("cust-1", "ord-1", 0, "", "customer_id, order_id");
    expect_invalid("", long_order, 0, "", "order_id");
    expect_invalid("cust \xff", "", 0, "", "customer_id");
    expect_invalid("cust-1", "", 501, "", "page_size");
    expect_invalid("cust-1", "", 0, "not-a-token", "page_token");

    /* malformed bytes */
    const unsigned char garbage[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x12};
    rpc_client_result res;
    void *raw = NULL;
    size_t raw_len = 0;
    CU_ASSERT_EQUAL(rpc_client_call_raw(notif.client, SVC "ListNotifications", NULL, 0, garbage,
                                        sizeof garbage, &raw, &raw_len, 5000, &res),
                    CH_INVALID_ARGUMENT);
    free(raw);

    /* a watch with a bad filter ends at once, naming the field */
    Choreo__Notifications__V1__WatchNotificationsRequest w =
        CHOREO__NOTIFICATIONS__V1__WATCH_NOTIFICATIONS_REQUEST__INIT;
    rpc_client_stream *st = NULL;
    ProtobufCMessage *msg = NULL;
    w.customer_id = (char *)"has space";
    CU_ASSERT_EQUAL_FATAL(
        rpc_client_stream_open(notif.client, SVC "WatchNotifications", NULL, 0, &w.base, 5000, &st), CH_OK);
    CU_ASSERT_EQUAL(
        rpc_client_stream_next(st, &choreo__notifications__v1__notification__descriptor, &msg, 5000), CH_OK);
    CU_ASSERT_PTR_NULL(msg);
    CU_ASSERT_EQUAL(rpc_client_stream_result(st, &res), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "customer_id"));
    rpc_client_stream_close(st);

    /* an event the core refuses (no customer) is dead-lettered, not retried forever */
    make_confirmed("ord-poison", "", 100);
    publish_env(NULL);
    barrier();
    int dead = 0;
    CU_ASSERT_EQUAL(bus_replay(pub, BUS_DEADLETTER_STREAM, "deadletter.events.order.confirmed.ord-poison", 1,
                               count_msgs, &dead, NULL),
                    CH_OK);
    CU_ASSERT_EQUAL(dead, 1);
    CU_ASSERT_EQUAL(count_of("", "ord-poison"), 0);
    CU_ASSERT_EQUAL(proc_running(notif.p), 1);
}

static void test_notifications_watch_streams_new_notifications(void)
{
    Choreo__Notifications__V1__WatchNotificationsRequest all =
        CHOREO__NOTIFICATIONS__V1__WATCH_NOTIFICATIONS_REQUEST__INIT;
    Choreo__Notifications__V1__WatchNotificationsRequest mine =
        CHOREO__NOTIFICATIONS__V1__WATCH_NOTIFICATIONS_REQUEST__INIT;
    rpc_client_stream *st_all = NULL, *st_mine = NULL;
    pb_notification *msg = NULL;

    mine.customer_id = (char *)"cust-w";
    CU_ASSERT_EQUAL_FATAL(
        rpc_client_stream_open(notif.client, SVC "WatchNotifications", NULL, 0, &all.base, 30000, &st_all),
        CH_OK);
    CU_ASSERT_EQUAL_FATAL(
        rpc_client_stream_open(notif.client, SVC "WatchNotifications", NULL, 0, &mine.base, 30000, &st_mine),
        CH_OK);
    sleep_ms(500); /* let the server-side handlers take their starting point */

    make_confirmed("ord-w0", "cust-other", 100);
    publish_env(NULL);
    make_cancelled("ord-w1", "cust-w", "payment declined: balance 0.00 < 1.00");
    publish_env(NULL);

    /* the filtered watcher sees only cust-w's */
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_next(st_mine,
                                                 &choreo__notifications__v1__notification__descriptor,
                                                 (ProtobufCMessage **)&msg, WAIT_MS),
                          CH_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(msg);
    CU_ASSERT_STRING_EQUAL(msg->notification_id, "ord-w1.order_cancelled");
    CU_ASSERT_STRING_EQUAL(msg->message,
                           "Your order ord-w1 was cancelled: payment declined: balance 0.00 < 1.00");
    protobuf_c_message_free_unpacked(&msg->base, NULL);

    /* the unfiltered one sees both (the two kinds run on two workers: any order) */
    int got = 0;
    bool w0 = false, w1 = false;
    while (got < 2) {
        msg = NULL;
        if (rpc_client_stream_next(st_all, &choreo__notifications__v1__notification__descriptor,
                                   (ProtobufCMessage **)&msg, WAIT_MS) != CH_OK ||
            !msg)
            break;
        w0 |= strcmp(msg->order_id, "ord-w0") == 0;
        w1 |= strcmp(msg->order_id, "ord-w1") == 0;
        got++;
        protobuf_c_message_free_unpacked(&msg->base, NULL);
    }
    CU_ASSERT_EQUAL(got, 2);
    CU_ASSERT_TRUE(w0 && w1);

    /* nothing more for cust-w: the stream stays open and quiet */
    msg = NULL;
    CU_ASSERT_EQUAL(rpc_client_stream_next(st_mine, &choreo__notifications__v1__notification__descriptor,
                                           (ProtobufCMessage **)&msg, 300),
                    CH_TIMEOUT);
    rpc_client_stream_close(st_all);
    rpc_client_stream_close(st_mine);
}

static void test_notifications_watchers_are_capped(void)
{
    Choreo__Notifications__V1__WatchNotificationsRequest req =
        CHOREO__NOTIFICATIONS__V1__WATCH_NOTIFICATIONS_REQUEST__INIT;
    rpc_client_stream *st[MAX_STREAMS + 1] = {0};
    ProtobufCMessage *msg = NULL;
    rpc_client_result res;

    sleep_ms(500); /* the previous test's closed streams are gone at the server */
    for (int i = 0; i < MAX_STREAMS; i++)
        CU_ASSERT_EQUAL_FATAL(
            rpc_client_stream_open(notif.client, SVC "WatchNotifications", NULL, 0, &req.base, 30000, &st[i]),
            CH_OK);
    sleep_ms(500);
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(notif.client, SVC "WatchNotifications", NULL, 0, &req.base,
                                                 5000, &st[MAX_STREAMS]),
                          CH_OK);
    CU_ASSERT_EQUAL(rpc_client_stream_next(st[MAX_STREAMS],
                                           &choreo__notifications__v1__notification__descriptor, &msg, 5000),
                    CH_OK);
    CU_ASSERT_PTR_NULL(msg);
    CU_ASSERT_EQUAL(rpc_client_stream_result(st[MAX_STREAMS], &res), CH_RESOURCE_EXHAUSTED);
    for (int i = 0; i <= MAX_STREAMS; i++)
        rpc_client_stream_close(st[i]);

    /* the slots come back once the clients are gone */
    sleep_ms(800);
    CU_ASSERT_EQUAL_FATAL(
        rpc_client_stream_open(notif.client, SVC "WatchNotifications", NULL, 0, &req.base, 5000, &st[0]),
        CH_OK);
    CU_ASSERT_EQUAL(
        rpc_client_stream_next(st[0], &choreo__notifications__v1__notification__descriptor, &msg, 700),
        CH_TIMEOUT);
    rpc_client_stream_close(st[0]);
}

/* Opens a watch of customer_id's notifications (60 s at most) and waits
 * until the server has taken it: a client's calls move on only while it
 * waits on one of them. NULL on failure. */
static rpc_client_stream *watch_started(rpc_client *client, const char *customer_id)
{
    Choreo__Notifications__V1__WatchNotificationsRequest req =
        CHOREO__NOTIFICATIONS__V1__WATCH_NOTIFICATIONS_REQUEST__INIT;
    rpc_client_stream *st = NULL;
    ProtobufCMessage *none = NULL;

    req.customer_id = (char *)customer_id;
    if (rpc_client_stream_open(client, SVC "WatchNotifications", NULL, 0, &req.base, 60000, &st) != CH_OK)
        return NULL;
    CU_ASSERT_EQUAL(
        rpc_client_stream_next(st, &choreo__notifications__v1__notification__descriptor, &none, 300),
        CH_TIMEOUT);
    return st;
}

/* Reads one watch until it has sent `want` notifications of the orders
 * "<prefix><i>", i < want, each once, each as its stored notification.sent
 * says; then nothing more. */
static void expect_watched(rpc_client_stream *st, const char *prefix, int want)
{
    bool seen[64] = {false};
    int got = 0;

    CU_ASSERT_FATAL(want <= 64);
    while (got < want) {
        pb_notification *msg = NULL;
        sent_events s;
        if (rpc_client_stream_next(st, &choreo__notifications__v1__notification__descriptor,
                                   (ProtobufCMessage **)&msg, WAIT_MS) != CH_OK ||
            !msg)
            break;
        int i = -1;
        if (strncmp(msg->order_id, prefix, strlen(prefix)) == 0)
            i = atoi(msg->order_id + strlen(prefix));
        CU_ASSERT_TRUE(i >= 0 && i < want && !seen[i]);
        if (i >= 0 && i < want)
            seen[i] = true;
        read_sent(msg->order_id, &s);
        CU_ASSERT_EQUAL(s.count, 1);
        CU_ASSERT_EQUAL(s.env[0].occurred_at_unix_ns / 1000000, msg->sent_at_unix_ms);
        CU_ASSERT_STRING_EQUAL(s.env[0].payload.notification_sent.message, msg->message);
        protobuf_c_message_free_unpacked(&msg->base, NULL);
        got++;
    }
    CU_ASSERT_EQUAL(got, want);
    pb_notification *more = NULL;
    CU_ASSERT_EQUAL(rpc_client_stream_next(st, &choreo__notifications__v1__notification__descriptor,
                                           (ProtobufCMessage **)&more, 600),
                    CH_TIMEOUT);
}

/* Two replicas share the consumers and the stream, and race to write it:
 * whichever stored a notification, a watcher on either replica sends it,
 * once, as it was stored; and either replica lists it. */
static void test_notifications_watch_sees_what_another_replica_stored(void)
{
    enum { N = 40 };
    const char *extra[] = {"CHOREO_MAX_STREAMS=4", NULL};
    svc_proc other = {0};
    char order_id[32];
    int exit_status = -1;

    CU_ASSERT_EQUAL_FATAL(
        svc_start(&other, "notifications-b", NOTIFICATIONS_BIN, natsd_url(nats), extra, 15000), CH_OK);
    rpc_client_stream *st_a = watch_started(notif.client, "cust-r");
    rpc_client_stream *st_b = watch_started(other.client, "cust-r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(st_a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(st_b);
    sleep_ms(300);

    for (int i = 0; i < N; i++) {
        snprintf(order_id, sizeof order_id, "ord-r%d", i);
        if (i % 2)
            make_confirmed(order_id, "cust-r", i);
        else
            make_cancelled(order_id, "cust-r", "out of stock");
        publish_env(NULL);
    }
    expect_watched(st_a, "ord-r", N);
    expect_watched(st_b, "ord-r", N);
    CU_ASSERT_EQUAL(count_at(notif.client, "cust-r", ""), N);
    CU_ASSERT_EQUAL(count_at(other.client, "cust-r", ""), N);

    rpc_client_stream_close(st_a);
    rpc_client_stream_close(st_b);
    CU_ASSERT_EQUAL(svc_stop(&other, 15000, &exit_status), CH_OK);
    CU_ASSERT_EQUAL(exit_status, 0);
    svc_destroy(&other);
}

/* Deletes a durable consumer of the orders' stream, so that the service's
 * next start recreates it and JetStream delivers every event of its type
 * again. */
static ch_status delete_consumer(const char *durable)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsErrCode jerr = 0;
    ch_status st = CH_INTERNAL;

    if (natsConnection_ConnectTo(&nc, natsd_url(nats)) != NATS_OK)
        goto cleanup;
    if (natsConnection_JetStream(&js, nc, NULL) != NATS_OK)
        goto cleanup;
    if (js_DeleteConsumer(js, EVENT_STREAM_ORDER, durable, NULL, &jerr) == NATS_OK)
        st = CH_OK;

cleanup:
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return st;
}

static void test_notifications_survive_kill_and_replayed_events(void)
{
    pb_list *before = NULL, *after = NULL;
    int sent_before = 0, sent_after = 0;

    CU_ASSERT_EQUAL_FATAL(list("cust-n1", "", 0, "", &before, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(before->n_notifications, 2);
    CU_ASSERT_EQUAL(bus_replay(pub, EVENT_STREAM_NOTIFICATION, "events.notification.sent.*", 1, count_msgs,
                               &sent_before, NULL),
                    CH_OK);

    svc_kill(&notif); /* no goodbye: the store must come back from the stream */
    /* while it is down: every order event is to be delivered again from the start */
    CU_ASSERT_EQUAL(delete_consumer("notifications-order_confirmed"), CH_OK);
    CU_ASSERT_EQUAL(delete_consumer("notifications-order_cancelled"), CH_OK);
    CU_ASSERT_EQUAL_FATAL(svc_restart(&notif, 15000), CH_OK);

    CU_ASSERT_EQUAL_FATAL(list("cust-n1", "", 0, "", &after, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(after->n_notifications, 2);
    for (size_t i = 0; i < 2; i++) {
        CU_ASSERT_STRING_EQUAL(after->notifications[i]->notification_id,
                               before->notifications[i]->notification_id);
        CU_ASSERT_STRING_EQUAL(after->notifications[i]->message, before->notifications[i]->message);
        CU_ASSERT_EQUAL(after->notifications[i]->sent_at_unix_ms, before->notifications[i]->sent_at_unix_ms);
        CU_ASSERT_EQUAL(after->notifications[i]->kind, before->notifications[i]->kind);
    }
    protobuf_c_message_free_unpacked(&before->base, NULL);
    protobuf_c_message_free_unpacked(&after->base, NULL);

    /* a redelivered event (new msg id, so JetStream keeps it) changes nothing */
    make_confirmed("ord-n1", "cust-n1", 3000);
    publish_env_with_msg_id("redelivered-ord-n1");
    barrier(); /* also: every replayed order.confirmed has been handled */
    CU_ASSERT_EQUAL(count_of("", "ord-n1"), 1);
    CU_ASSERT_EQUAL(count_of("", "ord-n3"), 2);
    CU_ASSERT_EQUAL(count_of("", "ord-d1"), 1);
    /* no second record either: only the barrier's own notification.sent is new */
    CU_ASSERT_EQUAL(bus_replay(pub, EVENT_STREAM_NOTIFICATION, "events.notification.sent.*", 1, count_msgs,
                               &sent_after, NULL),
                    CH_OK);
    CU_ASSERT_EQUAL(sent_after, sent_before + 1);
}

static void test_notifications_sigterm_ends_watchers_and_exits_zero(void)
{
    Choreo__Notifications__V1__WatchNotificationsRequest req =
        CHOREO__NOTIFICATIONS__V1__WATCH_NOTIFICATIONS_REQUEST__INIT;
    rpc_client_stream *st = NULL;
    ProtobufCMessage *msg = NULL;
    int exit_status = -1;

    CU_ASSERT_EQUAL_FATAL(
        rpc_client_stream_open(notif.client, SVC "WatchNotifications", NULL, 0, &req.base, 30000, &st),
        CH_OK);
    sleep_ms(300);
    long long t0 = test_now_ms();
    CU_ASSERT_EQUAL_FATAL(proc_signal(notif.p, SIGTERM), CH_OK);
    /* the watcher (a client reading its stream) is ended at once with
     * UNAVAILABLE, not cancelled at the end of the 5 s shutdown grace */
    CU_ASSERT_EQUAL(
        rpc_client_stream_next(st, &choreo__notifications__v1__notification__descriptor, &msg, 4000), CH_OK);
    CU_ASSERT_PTR_NULL(msg);
    rpc_client_result res;
    CU_ASSERT_EQUAL(rpc_client_stream_result(st, &res), CH_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "stopping"));
    CU_ASSERT_EQUAL(proc_wait(notif.p, 15000, &exit_status), CH_OK);
    CU_ASSERT_EQUAL(exit_status, 0);
    CU_ASSERT_TRUE(test_now_ms() - t0 < 4000);
    rpc_client_stream_close(st);
}

int main(void)
{
    static const cu_test tests[] = {
        {"records one per event and publishes notification.sent",
         test_notifications_records_one_per_event_and_publishes_sent},
        {"both kinds of one order are kept", test_notifications_both_kinds_of_one_order_are_kept},
        {"duplicates make one notification", test_notifications_duplicates_make_one_notification},
        {"list pages oldest first", test_notifications_list_pages_oldest_first},
        {"list page too big for one reply is cut", test_notifications_list_page_too_big_for_one_reply_is_cut},
        {"bad input is refused, not fatal", test_notifications_bad_input_is_refused_not_fatal},
        {"watch streams new notifications", test_notifications_watch_streams_new_notifications},
        {"watchers are capped", test_notifications_watchers_are_capped},
        {"watch sees what another replica stored", test_notifications_watch_sees_what_another_replica_stored},
        {"survive kill -9 and replayed events", test_notifications_survive_kill_and_replayed_events},
        {"SIGTERM ends watchers and exits 0", test_notifications_sigterm_ends_watchers_and_exits_zero},
        {NULL, NULL},
    };

    return cu_run("notifications_integration", suite_init, suite_cleanup, tests);
}
