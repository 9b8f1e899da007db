/* test_rpc_client.c: the blocking client helper against a real server in the
 * same process (ephemeral port).
 *
 * Test service "choreo.test.Client" (messages from grpc.health.v1):
 *   Echo   unary; replies with the request, except `service` "meta" -> the
 *          traceparent and idempotency-key request metadata joined by '|',
 *          and "slow" -> reply after 600 ms from another thread.
 *   Trickle server stream; one message after 300 ms, then OK. */
#include <CUnit/Basic.h>
#include <grpc/status.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cu_run.h"
#include "grpc/health/v1/health.pb-c.h"
#include "log.h"
#include "proc.h"
#include "rpc_client.h"
#include "rpc_server.h"

#define ECHO_PATH    "/choreo.test.Client/Echo"
#define TRICKLE_PATH "/choreo.test.Client/Trickle"

typedef Grpc__Health__V1__HealthCheckRequest echo_msg;
#define ECHO_DESC  (&grpc__health__v1__health_check_request__descriptor)
#define COUNT_DESC (&grpc__health__v1__health_check_response__descriptor)

typedef struct fixture {
    rpc_server *server;
    rpc_client *client;
    pthread_mutex_t mu;
    pthread_t slow[8];
    int nslow;
} fixture;

typedef struct slow_job {
    rpc_call *call;
    const ProtobufCMessage *req;
} slow_job;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *slow_main(void *arg)
{
    slow_job *job = arg;
    test_sleep_ms(600);
    rpc_call_reply(job->call, job->req);
    free(job);
    return NULL;
}

static void echo_handler(rpc_call *call, const ProtobufCMessage *req, void *arg)
{
    fixture *f = arg;
    const echo_msg *in = (const echo_msg *)req;
    if (strcmp(in->service, "meta") == 0) {
        const char *tp = rpc_call_metadata(call, "traceparent", NULL);
        const char *ik = rpc_call_metadata(call, "idempotency-key", NULL);
        char buf[256];
        snprintf(buf, sizeof(buf), "%s|%s", tp ? tp : "-", ik ? ik : "-");
        echo_msg out = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
        out.service = buf;
        rpc_call_reply(call, &out.base);
        return;
    }
    if (strcmp(in->service, "slow") == 0) {
        slow_job *job = malloc(sizeof(*job));
        CU_ASSERT_PTR_NOT_NULL_FATAL(job);
        job->call = call;
        job->req = req;
        pthread_mutex_lock(&f->mu);
        if (f->nslow < 8 && pthread_create(&f->slow[f->nslow], NULL, slow_main, job) == 0) {
            f->nslow++;
        } else {
            free(job);
            rpc_call_fail(call, CH_RESOURCE_EXHAUSTED, "too many slow calls");
        }
        pthread_mutex_unlock(&f->mu);
        return;
    }
    rpc_call_reply(call, req);
}

static ch_status trickle_handler(rpc_stream *st, const ProtobufCMessage *req, void *arg)
{
    (void)req;
    (void)arg;
    if (rpc_stream_wait_cancelled(st, 300))
        return CH_CANCELLED;
    Grpc__Health__V1__HealthCheckResponse out = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    out.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    return rpc_stream_send(st, &out.base);
}

static void fixture_up(fixture *f)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    rpc_server_options o = {"127.0.0.1:0", 2, 1 << 20, 4, 2000};
    CU_ASSERT_EQUAL_FATAL(rpc_server_create(&f->server, &o), CH_OK);
    rpc_method echo = {ECHO_PATH, RPC_UNARY, ECHO_DESC, ECHO_DESC, echo_handler, NULL, f};
    rpc_method trickle = {TRICKLE_PATH, RPC_SERVER_STREAM, ECHO_DESC, COUNT_DESC, NULL, trickle_handler, f};
    CU_ASSERT_EQUAL(rpc_server_add_method(f->server, &echo), CH_OK);
    CU_ASSERT_EQUAL(rpc_server_add_method(f->server, &trickle), CH_OK);
    CU_ASSERT_EQUAL_FATAL(rpc_server_start(f->server), CH_OK);
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", rpc_server_port(f->server));
    CU_ASSERT_EQUAL_FATAL(rpc_client_create(&f->client, target), CH_OK);
}

static void fixture_down(fixture *f)
{
    rpc_client_destroy(f->client);
    rpc_server_destroy(f->server);
    for (int i = 0; i < f->nslow; i++)
        pthread_join(f->slow[i], NULL);
    pthread_mutex_destroy(&f->mu);
}

static void test_rpc_client_create_and_bad_arguments(void)
{
    rpc_client *c = NULL;
    CU_ASSERT_EQUAL(rpc_client_create(&c, ""), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(rpc_client_create(NULL, "127.0.0.1:1"), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(c);
    rpc_client_destroy(NULL);
    rpc_client_stream_close(NULL);

    CU_ASSERT_EQUAL_FATAL(rpc_client_create(&c, "127.0.0.1:1"), CH_OK);
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = (ProtobufCMessage *)&req; /* must be cleared */
    rpc_md too_many[RPC_CLIENT_MAX_MD + 1];
    for (size_t i = 0; i < RPC_CLIENT_MAX_MD + 1; i++)
        too_many[i] = (rpc_md){"k", "v"};
    CU_ASSERT_EQUAL(rpc_client_call(c, ECHO_PATH, too_many, RPC_CLIENT_MAX_MD + 1, &req.base, ECHO_DESC,
                                    &resp, 100, NULL),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(resp);
    CU_ASSERT_EQUAL(rpc_client_call(c, NULL, NULL, 0, &req.base, ECHO_DESC, &resp, 100, NULL),
                    CH_INVALID_ARGUMENT);
    rpc_client_destroy(c);
}

static void test_rpc_client_no_server_unavailable(void)
{
    rpc_client *c = NULL;
    CU_ASSERT_EQUAL_FATAL(rpc_client_create(&c, "127.0.0.1:1"), CH_OK);
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    rpc_client_result res;
    int64_t t0 = now_ms();
    ch_status rc = rpc_client_call(c, ECHO_PATH, NULL, 0, &req.base, ECHO_DESC, &resp, 3000, &res);
    CU_ASSERT(rc == CH_UNAVAILABLE || rc == CH_TIMEOUT);
    CU_ASSERT(res.code == GRPC_STATUS_UNAVAILABLE || res.code == GRPC_STATUS_DEADLINE_EXCEEDED);
    CU_ASSERT_PTR_NULL(resp);
    CU_ASSERT(now_ms() - t0 < 4000);
    rpc_client_destroy(c);
}

static void test_rpc_client_metadata_sent(void)
{
    fixture f;
    fixture_up(&f);
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)"meta";
    rpc_md md[] = {{"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
                   {"idempotency-key", "idem-42"}};
    ProtobufCMessage *resp = NULL;
    rpc_client_result res;
    CU_ASSERT_EQUAL(rpc_client_call(f.client, ECHO_PATH, md, 2, &req.base, ECHO_DESC, &resp, 5000, &res),
                    CH_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
    CU_ASSERT_STRING_EQUAL(((echo_msg *)resp)->service,
                           "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01|idem-42");
    protobuf_c_message_free_unpacked(resp, NULL);
    CU_ASSERT_EQUAL(res.code, GRPC_STATUS_OK);
    CU_ASSERT_STRING_EQUAL(res.details, "");
    fixture_down(&f);
}

static void test_rpc_client_raw_round_trip(void)
{
    fixture f;
    fixture_up(&f);
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)"raw bytes";
    uint8_t buf[64];
    size_t n = protobuf_c_message_pack(&req.base, buf);
    void *out = NULL;
    size_t out_len = 0;
    rpc_client_result res;
    CU_ASSERT_EQUAL(rpc_client_call_raw(f.client, ECHO_PATH, NULL, 0, buf, n, &out, &out_len, 5000, &res),
                    CH_OK);
    CU_ASSERT_EQUAL(out_len, n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    CU_ASSERT_EQUAL(memcmp(out, buf, n), 0);
    free(out);
    fixture_down(&f);
}

static void test_rpc_client_deadline_exceeded(void)
{
    fixture f;
    fixture_up(&f);
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)"slow";
    ProtobufCMessage *resp = NULL;
    rpc_client_result res;
    int64_t t0 = now_ms();
    CU_ASSERT_EQUAL(rpc_client_call(f.client, ECHO_PATH, NULL, 0, &req.base, ECHO_DESC, &resp, 100, &res),
                    CH_TIMEOUT);
    int64_t took = now_ms() - t0;
    CU_ASSERT_EQUAL(res.code, GRPC_STATUS_DEADLINE_EXCEEDED);
    CU_ASSERT_PTR_NULL(resp);
    CU_ASSERT(took >= 90 && took < 550);
    fixture_down(&f); /* the late reply lands on a finished call */
}

static void test_rpc_client_stream_next_times_out_then_reads(void)
{
    fixture f;
    fixture_up(&f);
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rpc_client_stream *st = NULL;
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(f.client, TRICKLE_PATH, NULL, 0, &req.base, 5000, &st),
                          CH_OK);
    ProtobufCMessage *m = NULL;
    CU_ASSERT_EQUAL(rpc_client_stream_next(st, COUNT_DESC, &m, 50), CH_TIMEOUT);
    CU_ASSERT_PTR_NULL(m);
    CU_ASSERT_EQUAL(rpc_client_stream_result(st, NULL), CH_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(rpc_client_stream_next(st, COUNT_DESC, &m, 3000), CH_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    CU_ASSERT_EQUAL(((Grpc__Health__V1__HealthCheckResponse *)m)->status,
                    GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    protobuf_c_message_free_unpacked(m, NULL);
    CU_ASSERT_EQUAL(rpc_client_stream_next(st, COUNT_DESC, &m, 3000), CH_OK);
    CU_ASSERT_PTR_NULL(m);
    rpc_client_result res;
    CU_ASSERT_EQUAL(rpc_client_stream_result(st, &res), CH_OK);
    CU_ASSERT_EQUAL(res.code, GRPC_STATUS_OK);
    /* next after the end keeps saying "ended" */
    CU_ASSERT_EQUAL(rpc_client_stream_next(st, COUNT_DESC, &m, 10), CH_OK);
    CU_ASSERT_PTR_NULL(m);
    rpc_client_stream_close(st);
    fixture_down(&f);
}

static void test_rpc_client_stream_unknown_method(void)
{
    fixture f;
    fixture_up(&f);
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rpc_client_stream *st = NULL;
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(f.client, "/no.Such/Stream", NULL, 0, &req.base, 5000, &st),
                          CH_OK);
    ProtobufCMessage *m = NULL;
    CU_ASSERT_EQUAL(rpc_client_stream_next(st, COUNT_DESC, &m, 3000), CH_OK);
    CU_ASSERT_PTR_NULL(m);
    rpc_client_result res;
    CU_ASSERT_EQUAL(rpc_client_stream_result(st, &res), CH_UNIMPLEMENTED);
    CU_ASSERT_EQUAL(res.code, GRPC_STATUS_UNIMPLEMENTED);
    rpc_client_stream_close(st);
    fixture_down(&f);
}

int main(void)
{
    static const cu_test tests[] = {
        {"create and bad arguments", test_rpc_client_create_and_bad_arguments},
        {"no server unavailable", test_rpc_client_no_server_unavailable},
        {"metadata sent", test_rpc_client_metadata_sent},
        {"raw round trip", test_rpc_client_raw_round_trip},
        {"deadline exceeded", test_rpc_client_deadline_exceeded},
        {"stream next times out then reads", test_rpc_client_stream_next_times_out_then_reads},
        {"stream unknown method", test_rpc_client_stream_unknown_method},
        {NULL, NULL},
    };

    rpc_block_signals();
    log_configure("test_rpc_client", LOG_WARN, 2);
    return cu_run("rpc_client", NULL, NULL, tests);
}
