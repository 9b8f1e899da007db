/* test_health.c: grpc.health.v1.Health on a real rpc_server, called through
 * rpc_client: Check, Watch with changes from another thread, the end of a
 * Watch on client cancel and on server stop, and the bounds of health_set. */
#include <CUnit/Basic.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cu_run.h"
#include "grpc/health/v1/health.pb-c.h"
#include "health.h"
#include "log.h"
#include "rpc_client.h"
#include "rpc_server.h"

#define CHECK_PATH  "/grpc.health.v1.Health/Check"
#define WATCH_PATH  "/grpc.health.v1.Health/Watch"
#define SERVING     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define UNKNOWN_SVC GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN
#define NO_STATUS   (-1)

typedef Grpc__Health__V1__HealthCheckRequest check_req;
typedef Grpc__Health__V1__HealthCheckResponse check_resp;

/* A server with health only, on an ephemeral port, and a client to it. */
typedef struct fixture {
    health *h;
    rpc_server *s;
    rpc_client *c;
} fixture;

static void fixture_start(fixture *f, int max_streams, int grace_ms)
{
    rpc_server_options opts = {.listen_addr = "127.0.0.1:0",
                               .workers = 1,
                               .max_message_bytes = 1 << 20,
                               .max_streams = max_streams,
                               .grace_ms = grace_ms};
    char target[64];

    memset(f, 0, sizeof(*f));
    CU_ASSERT_EQUAL_FATAL(health_create(&f->h), CH_OK);
    CU_ASSERT_EQUAL_FATAL(rpc_server_create(&f->s, &opts), CH_OK);
    CU_ASSERT_EQUAL_FATAL(health_register(f->h, f->s), CH_OK);
    CU_ASSERT_EQUAL_FATAL(rpc_server_start(f->s), CH_OK);
    snprintf(target, sizeof(target), "127.0.0.1:%d", rpc_server_port(f->s));
    CU_ASSERT_EQUAL_FATAL(rpc_client_create(&f->c, target), CH_OK);
}

static void fixture_stop(fixture *f)
{
    rpc_client_destroy(f->c);
    rpc_server_destroy(f->s);
    health_destroy(f->h);
}

/* Check(service): the serving status, or NO_STATUS with *st set. */
static int check(fixture *f, const char *service, ch_status *st)
{
    check_req req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int status = NO_STATUS;

    req.service = (char *)service;
    *st = rpc_client_call(f->c, CHECK_PATH, NULL, 0, &req.base,
                          &grpc__health__v1__health_check_response__descriptor, &resp, 5000, NULL);
    if (resp) {
        status = ((check_resp *)resp)->status;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return status;
}

static rpc_client_stream *watch(fixture *f, const char *service)
{
    check_req req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rpc_client_stream *w = NULL;

    req.service = (char *)service;
    CU_ASSERT_EQUAL(rpc_client_stream_open(f->c, WATCH_PATH, NULL, 0, &req.base, 20000, &w), CH_OK);
    return w;
}

/* Next status on a Watch, or NO_STATUS when the stream ended or nothing
 * came within timeout_ms. */
static int next_status(rpc_client_stream *w, int timeout_ms)
{
    ProtobufCMessage *msg = NULL;
    int status = NO_STATUS;

    if (rpc_client_stream_next(w, &grpc__health__v1__health_check_response__descriptor, &msg, timeout_ms) ==
            CH_OK &&
        msg) {
        status = ((check_resp *)msg)->status;
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    return status;
}

static void test_health_check_follows_set(void)
{
    fixture f;
    ch_status st;

    fixture_start(&f, 4, 1000);
    CU_ASSERT_EQUAL(check(&f, "", &st), SERVING);
    CU_ASSERT_EQUAL(st, CH_OK);
    health_set(f.h, "", false);
    CU_ASSERT_EQUAL(check(&f, "", &st), NOT_SERVING);
    CU_ASSERT_FALSE(health_serving(f.h, ""));
    CU_ASSERT_FALSE(health_serving(f.h, NULL));
    health_set(f.h, NULL, true);
    CU_ASSERT_EQUAL(check(&f, "", &st), SERVING);

    health_set(f.h, "choreo.orders.v1.Orders", true);
    CU_ASSERT_EQUAL(check(&f, "choreo.orders.v1.Orders", &st), SERVING);
    CU_ASSERT_TRUE(health_serving(f.h, "choreo.orders.v1.Orders"));
    health_set(f.h, "choreo.orders.v1.Orders", false);
    CU_ASSERT_EQUAL(check(&f, "choreo.orders.v1.Orders", &st), NOT_SERVING);
    CU_ASSERT_EQUAL(check(&f, "", &st), SERVING); /* one service does not change another */
    fixture_stop(&f);
}

static void test_health_check_rejects_unknown_and_bad_names(void)
{
    fixture f;
    ch_status st = CH_OK;
    char longname[HEALTH_MAX_SERVICE + 2];

    fixture_start(&f, 4, 1000);
    CU_ASSERT_EQUAL(check(&f, "no.such.Service", &st), NO_STATUS);
    CU_ASSERT_EQUAL(st, CH_NOT_FOUND);
    CU_ASSERT_FALSE(health_serving(f.h, "no.such.Service"));

    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = 0;
    CU_ASSERT_EQUAL(check(&f, longname, &st), NO_STATUS);
    CU_ASSERT_EQUAL(st, CH_INVALID_ARGUMENT);
    longname[HEALTH_MAX_SERVICE] = 0; /* exactly at the cap: allowed, just unknown */
    CU_ASSERT_EQUAL(check(&f, longname, &st), NO_STATUS);
    CU_ASSERT_EQUAL(st, CH_NOT_FOUND);
    CU_ASSERT_EQUAL(check(&f, "bad\xc0\xafutf8", &st), NO_STATUS);
    CU_ASSERT_EQUAL(st, CH_INVALID_ARGUMENT);
    fixture_stop(&f);
}

typedef struct delayed_set {
    health *h;
    const char *service;
    bool serving;
} delayed_set;

static void *set_later(void *arg)
{
    delayed_set *d = arg;
    struct timespec pause = {0, 200 * 1000000L};

    nanosleep(&pause, NULL);
    health_set(d->h, d->service, d->serving);
    return NULL;
}

static void test_health_watch_sees_changes_from_another_thread(void)
{
    fixture f;
    pthread_t t;
    rpc_client_stream *w;
    delayed_set d;

    fixture_start(&f, 4, 1000);
    health_set(f.h, "svc", true);
    w = watch(&f, "svc");
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(next_status(w, 5000), SERVING);
    CU_ASSERT_EQUAL(next_status(w, 300), NO_STATUS); /* nothing changed, nothing sent */

    d = (delayed_set){f.h, "svc", false};
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, set_later, &d), 0);
    CU_ASSERT_EQUAL(next_status(w, 5000), NOT_SERVING);
    pthread_join(t, NULL);

    /* Changes to other services are not sent on this watch. */
    health_set(f.h, "other", false);
    health_set(f.h, "svc", true);
    CU_ASSERT_EQUAL(next_status(w, 5000), SERVING);
    rpc_client_stream_close(w);

    /* An unknown name: SERVICE_UNKNOWN, and the call stays open until the
     * name becomes known. */
    w = watch(&f, "later");
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(next_status(w, 5000), UNKNOWN_SVC);
    d = (delayed_set){f.h, "later", true};
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, set_later, &d), 0);
    CU_ASSERT_EQUAL(next_status(w, 5000), SERVING);
    pthread_join(t, NULL);
    rpc_client_stream_close(w);
    fixture_stop(&f);
}

/* With room for a single stream, a second Watch can only start once the
 * first one's handler has returned: that proves a cancel ends it. */
static void test_health_watch_ends_on_client_cancel(void)
{
    fixture f;
    rpc_client_stream *w;
    rpc_client_result res;
    int status = NO_STATUS;

    fixture_start(&f, 1, 1000);
    w = watch(&f, "");
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(next_status(w, 5000), SERVING);

    /* The slot is taken while the first watch runs. */
    rpc_client_stream *busy = watch(&f, "");
    CU_ASSERT_PTR_NOT_NULL_FATAL(busy);
    CU_ASSERT_EQUAL(next_status(busy, 5000), NO_STATUS);
    CU_ASSERT_EQUAL(rpc_client_stream_result(busy, &res), CH_RESOURCE_EXHAUSTED);
    rpc_client_stream_close(busy);

    rpc_client_stream_close(w); /* cancels */
    for (int i = 0; i < 40 && status == NO_STATUS; i++) {
        struct timespec pause = {0, 50 * 1000000L};
        w = watch(&f, "");
        CU_ASSERT_PTR_NOT_NULL_FATAL(w);
        status = next_status(w, 5000);
        rpc_client_stream_close(w);
        if (status == NO_STATUS)
            nanosleep(&pause, NULL);
    }
    CU_ASSERT_EQUAL(status, SERVING);
    fixture_stop(&f);
}

static void test_health_watch_ends_on_server_stop(void)
{
    fixture f;
    rpc_client_stream *w;
    rpc_client_result res;
    struct timespec t0, t1;
    long ms;

    fixture_start(&f, 4, 10000); /* a long grace: the watch must end by itself */
    w = watch(&f, "");
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(next_status(w, 5000), SERVING);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rpc_server_shutdown(f.s);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    CU_ASSERT_TRUE(ms < 3000);
    CU_ASSERT_EQUAL(next_status(w, 5000), NO_STATUS);
    CU_ASSERT_NOT_EQUAL(rpc_client_stream_result(w, &res), CH_OK);
    rpc_client_stream_close(w);
    fixture_stop(&f);
}

static void test_health_set_bounds(void)
{
    health *h = NULL;
    char name[HEALTH_MAX_SERVICE + 2];

    health_destroy(NULL);
    CU_ASSERT_EQUAL_FATAL(health_create(&h), CH_OK);
    CU_ASSERT_TRUE(health_serving(h, "")); /* the whole server starts SERVING */

    memset(name, 'y', sizeof(name) - 1);
    name[sizeof(name) - 1] = 0;
    health_set(h, name, true); /* too long: ignored */
    CU_ASSERT_FALSE(health_serving(h, name));

    /* Past the table's size new names are ignored, known ones still change. */
    for (int i = 0; i < HEALTH_MAX_SERVICES + 5; i++) {
        snprintf(name, sizeof(name), "svc-%d", i);
        health_set(h, name, true);
    }
    CU_ASSERT_TRUE(health_serving(h, "svc-0"));
    snprintf(name, sizeof(name), "svc-%d", HEALTH_MAX_SERVICES - 2);
    CU_ASSERT_TRUE(health_serving(h, name));
    snprintf(name, sizeof(name), "svc-%d", HEALTH_MAX_SERVICES + 4);
    CU_ASSERT_FALSE(health_serving(h, name));
    health_set(h, "svc-0", false);
    CU_ASSERT_FALSE(health_serving(h, "svc-0"));
    health_destroy(h);
}

int main(void)
{
    static const cu_test tests[] = {
        {"check follows health_set", test_health_check_follows_set},
        {"check rejects unknown and bad names", test_health_check_rejects_unknown_and_bad_names},
        {"watch sees changes from another thread", test_health_watch_sees_changes_from_another_thread},
        {"watch ends on client cancel", test_health_watch_ends_on_client_cancel},
        {"watch ends on server stop", test_health_watch_ends_on_server_stop},
        {"health_set bounds", test_health_set_bounds},
        {NULL, NULL},
    };

    log_configure("test_health", LOG_ERROR, 2); /* the bounds test logs warnings on purpose */
    return cu_run("health", NULL, NULL, tests);
}
