/* test_rpc_server.c: the gRPC server runtime, driven by the real C client in
 * the same process on an ephemeral port.
 *
 * Test service "choreo.test.Echo" (messages from grpc.health.v1):
 *   Echo  unary HealthCheckRequest -> HealthCheckRequest; `service` selects:
 *         "fail" -> NOT_FOUND, "md" -> metadata in/out, "defer:N" -> reply
 *         from another thread after N ms, anything else -> echo.
 *   Count server stream; "N" -> N messages, "wait" -> one message, then wait
 *         for the client to cancel. */
#include <CUnit/Basic.h>
#include <grpc/status.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cu_run.h"
#include "grpc/health/v1/health.pb-c.h"
#include "log.h"
#include "proc.h"
#include "rpc_client.h"
#include "rpc_server.h"

#define ECHO_PATH  "/choreo.test.Echo/Echo"
#define COUNT_PATH "/choreo.test.Echo/Count"
#define MAX_MSG    4096
#define MAX_DEFER  64

typedef Grpc__Health__V1__HealthCheckRequest echo_msg;
typedef Grpc__Health__V1__HealthCheckResponse count_msg;
#define ECHO_DESC  (&grpc__health__v1__health_check_request__descriptor)
#define COUNT_DESC (&grpc__health__v1__health_check_response__descriptor)

typedef struct test_ctx {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t deferred[MAX_DEFER];
    int ndeferred;
    int deferred_entered;
    int deferred_replied;
    bool stream_cancel_seen;
    bool stream_early_cancel;
    bool stream_waiting;
} test_ctx;

typedef struct defer_job {
    rpc_call *call;
    const ProtobufCMessage *req;
    int delay_ms;
    test_ctx *ctx;
} defer_job;

static test_ctx g_ctx; /* test fixture only; handlers get it through ctx */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *defer_main(void *arg)
{
    defer_job *job = arg;
    test_sleep_ms(job->delay_ms);
    rpc_call_reply(job->call, job->req);
    pthread_mutex_lock(&job->ctx->mu);
    job->ctx->deferred_replied++;
    pthread_cond_broadcast(&job->ctx->cv);
    pthread_mutex_unlock(&job->ctx->mu);
    free(job);
    return NULL;
}

static void echo_handler(rpc_call *call, const ProtobufCMessage *req, void *arg)
{
    test_ctx *ctx = arg;
    const echo_msg *in = (const echo_msg *)req;
    if (strcmp(in->service, "fail") == 0) {
        rpc_call_fail(call, CH_NOT_FOUND, "order %s not found", "ord-1");
        return;
    }
    if (strcmp(in->service, "md") == 0) {
        size_t len = 0;
        const char *trace = rpc_call_metadata(call, "x-trace", &len);
        char remaining[32];
        snprintf(remaining, sizeof(remaining), "%lld", (long long)rpc_call_remaining_ms(call));
        rpc_call_add_metadata(call, "x-reply", "pong");
        rpc_call_add_metadata(call, "x-remaining", remaining);
        rpc_call_add_metadata(call, "x-method", rpc_call_method(call));
        echo_msg out = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
        out.service = (char *)(trace && len == strlen(trace) ? trace : "missing");
        rpc_call_reply(call, &out.base);
        return;
    }
    if (strncmp(in->service, "defer:", 6) == 0) {
        defer_job *job = calloc(1, sizeof(*job));
        CU_ASSERT_PTR_NOT_NULL_FATAL(job);
        job->call = call;
        job->req = req;
        job->delay_ms = atoi(in->service + 6);
        job->ctx = ctx;
        pthread_mutex_lock(&ctx->mu);
        if (ctx->ndeferred < MAX_DEFER &&
            pthread_create(&ctx->deferred[ctx->ndeferred], NULL, defer_main, job) == 0) {
            ctx->ndeferred++;
            ctx->deferred_entered++;
            pthread_cond_broadcast(&ctx->cv);
        } else {
            free(job);
            rpc_call_fail(call, CH_RESOURCE_EXHAUSTED, "too many deferred calls");
        }
        pthread_mutex_unlock(&ctx->mu);
        return;
    }
    rpc_call_reply(call, req);
}

static ch_status count_handler(rpc_stream *st, const ProtobufCMessage *req, void *arg)
{
    test_ctx *ctx = arg;
    const echo_msg *in = (const echo_msg *)req;
    count_msg out = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    out.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    bool early = rpc_stream_wait_cancelled(st, 30);
    pthread_mutex_lock(&ctx->mu);
    ctx->stream_early_cancel |= early;
    pthread_mutex_unlock(&ctx->mu);
    if (strcmp(in->service, "wait") == 0) {
        if (rpc_stream_send(st, &out.base) != CH_OK)
            return CH_CANCELLED;
        pthread_mutex_lock(&ctx->mu);
        ctx->stream_waiting = true;
        pthread_cond_broadcast(&ctx->cv);
        pthread_mutex_unlock(&ctx->mu);
        bool seen = false;
        for (int i = 0; i < 50 && !seen; i++)
            seen = rpc_stream_wait_cancelled(st, 100);
        pthread_mutex_lock(&ctx->mu);
        ctx->stream_cancel_seen = seen;
        pthread_cond_broadcast(&ctx->cv);
        pthread_mutex_unlock(&ctx->mu);
        return CH_CANCELLED;
    }
    int n = atoi(in->service);
    if (n < 0 || n > 100) {
        rpc_stream_set_error(st, "count %d out of range", n);
        return CH_INVALID_ARGUMENT;
    }
    for (int i = 0; i < n; i++) {
        if (rpc_stream_send(st, &out.base) != CH_OK)
            return CH_CANCELLED;
    }
    return CH_OK;
}

/* Starts a server with the test methods; NULL (and a failed assertion) on error. */
static rpc_server *server_start(int workers, int max_streams, int grace_ms)
{
    rpc_server_options o = {"127.0.0.1:0", workers, MAX_MSG, max_streams, grace_ms};
    rpc_server *s = NULL;
    CU_ASSERT_EQUAL_FATAL(rpc_server_create(&s, &o), CH_OK);
    rpc_method echo = {ECHO_PATH, RPC_UNARY, ECHO_DESC, ECHO_DESC, echo_handler, NULL, &g_ctx};
    rpc_method count = {COUNT_PATH, RPC_SERVER_STREAM, ECHO_DESC, COUNT_DESC, NULL, count_handler, &g_ctx};
    CU_ASSERT_EQUAL(rpc_server_add_method(s, &echo), CH_OK);
    CU_ASSERT_EQUAL(rpc_server_add_method(s, &count), CH_OK);
    CU_ASSERT_EQUAL_FATAL(rpc_server_start(s), CH_OK);
    CU_ASSERT(rpc_server_port(s) > 0);
    return s;
}

static rpc_client *client_for(const rpc_server *s)
{
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", rpc_server_port(s));
    rpc_client *c = NULL;
    CU_ASSERT_EQUAL_FATAL(rpc_client_create(&c, target), CH_OK);
    return c;
}

/* Echoes text; returns the call status and checks the echo on OK. */
static ch_status echo(rpc_client *c, const char *text, int timeout_ms, rpc_client_result *res)
{
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)text;
    ProtobufCMessage *resp = NULL;
    ch_status rc = rpc_client_call(c, ECHO_PATH, NULL, 0, &req.base, ECHO_DESC, &resp, timeout_ms, res);
    if (rc == CH_OK) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
        CU_ASSERT_STRING_EQUAL(((echo_msg *)resp)->service, text);
    } else {
        CU_ASSERT_PTR_NULL(resp);
    }
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

static void ctx_join_deferred(void)
{
    pthread_mutex_lock(&g_ctx.mu);
    int n = g_ctx.ndeferred;
    g_ctx.ndeferred = 0;
    pthread_mutex_unlock(&g_ctx.mu);
    for (int i = 0; i < n; i++)
        pthread_join(g_ctx.deferred[i], NULL);
}

static void ctx_reset(void)
{
    ctx_join_deferred();
    pthread_mutex_lock(&g_ctx.mu);
    g_ctx.deferred_entered = 0;
    g_ctx.deferred_replied = 0;
    g_ctx.stream_cancel_seen = false;
    g_ctx.stream_early_cancel = false;
    g_ctx.stream_waiting = false;
    pthread_mutex_unlock(&g_ctx.mu);
}

/* Waits until *flag (an int or bool read by pred) holds, up to ms. */
static bool ctx_wait(bool (*pred)(void), int ms)
{
    int64_t end = now_ms() + ms;
    pthread_mutex_lock(&g_ctx.mu);
    bool ok;
    while (!(ok = pred()) && now_ms() < end) {
        pthread_mutex_unlock(&g_ctx.mu);
        test_sleep_ms(5);
        pthread_mutex_lock(&g_ctx.mu);
    }
    pthread_mutex_unlock(&g_ctx.mu);
    return ok;
}

static bool pred_deferred_entered(void)
{
    return g_ctx.deferred_entered > 0;
}

static bool pred_deferred_replied(void)
{
    return g_ctx.deferred_replied > 0;
}

static bool pred_stream_waiting(void)
{
    return g_ctx.stream_waiting;
}

static bool pred_cancel_seen(void)
{
    return g_ctx.stream_cancel_seen;
}

/* ---- tests ---- */

static void test_rpc_server_echo_round_trip(void)
{
    ctx_reset();
    rpc_server *s = server_start(2, 4, 1000);
    rpc_client *c = client_for(s);
    rpc_client_result res;
    CU_ASSERT_EQUAL(echo(c, "hello", 5000, &res), CH_OK);
    CU_ASSERT_EQUAL(res.code, GRPC_STATUS_OK);
    CU_ASSERT_EQUAL(echo(c, "", 5000, &res), CH_OK);
    size_t n = 0;
    const char *const *svc = rpc_server_services(s, &n);
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_STRING_EQUAL(svc[0], "choreo.test.Echo");
    rpc_client_destroy(c);
    rpc_server_destroy(s);
}

static void test_rpc_server_metadata_in_and_out(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 1000);
    rpc_client *c = client_for(s);
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)"md";
    rpc_md md[] = {{"x-trace", "00-abc-01"}, {"idempotency-key", "k1"}};
    rpc_client_result res;
    ProtobufCMessage *resp = NULL;
    CU_ASSERT_EQUAL(rpc_client_call(c, ECHO_PATH, md, 2, &req.base, ECHO_DESC, &resp, 5000, &res), CH_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
    CU_ASSERT_STRING_EQUAL(((echo_msg *)resp)->service, "00-abc-01");
    protobuf_c_message_free_unpacked(resp, NULL);
    const char *v = rpc_client_result_md(&res, "x-reply");
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    CU_ASSERT_STRING_EQUAL(v, "pong");
    v = rpc_client_result_md(&res, "x-method");
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    CU_ASSERT_STRING_EQUAL(v, ECHO_PATH);
    v = rpc_client_result_md(&res, "x-remaining");
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    long long left = atoll(v);
    /* grpc-timeout is sent rounded up (to 10 ms steps here), so allow a little */
    CU_ASSERT(left > 3000 && left <= 5100);
    rpc_client_destroy(c);
    rpc_server_destroy(s);
}

static void test_rpc_server_error_status_reaches_client(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 1000);
    rpc_client *c = client_for(s);
    rpc_client_result res;
    CU_ASSERT_EQUAL(echo(c, "fail", 5000, &res), CH_NOT_FOUND);
    CU_ASSERT_EQUAL(res.code, GRPC_STATUS_NOT_FOUND);
    CU_ASSERT_STRING_EQUAL(res.details, "order ord-1 not found");
    rpc_client_destroy(c);
    rpc_server_destroy(s);
}

static void test_rpc_server_deferred_reply(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 1000);
    rpc_client *c = client_for(s);
    rpc_client_result res;
    int64_t t0 = now_ms();
    CU_ASSERT_EQUAL(echo(c, "defer:50", 5000, &res), CH_OK);
    CU_ASSERT(now_ms() - t0 >= 45);
    /* the worker was free while the reply was pending */
    CU_ASSERT_EQUAL(echo(c, "after", 5000, &res), CH_OK);
    rpc_client_destroy(c);
    rpc_server_destroy(s);
    ctx_join_deferred();
}

static void test_rpc_server_unknown_method_unimplemented(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 1000);
    rpc_client *c = client_for(s);
    rpc_client_result res;
    int64_t t0 = now_ms();
    ch_status rc = rpc_client_call_raw(c, "/no.Such/Method", NULL, 0, "", 0, NULL, NULL, 5000, &res);
    int64_t took = now_ms() - t0;
    CU_ASSERT_EQUAL(rc, CH_UNIMPLEMENTED);
    CU_ASSERT_EQUAL(res.code, GRPC_STATUS_UNIMPLEMENTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.details, "/no.Such/Method"));
    CU_ASSERT(took < 1000);
    rpc_client_destroy(c);
    rpc_server_destroy(s);
}

static void test_rpc_server_malformed_request_invalid_argument(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 1000);
    rpc_client *c = client_for(s);
    rpc_client_result res;
    const unsigned char junk[] = {0xff, 0xff, 0xff, 0xff, 0xff};
    CU_ASSERT_EQUAL(rpc_client_call_raw(c, ECHO_PATH, NULL, 0, junk, sizeof(junk), NULL, NULL, 5000, &res),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(res.code, GRPC_STATUS_INVALID_ARGUMENT);
    CU_ASSERT_STRING_EQUAL(res.details, "request is not a valid grpc.health.v1.HealthCheckRequest");
    CU_ASSERT_EQUAL(echo(c, "still serving", 5000, &res), CH_OK);
    rpc_client_destroy(c);
    rpc_server_destroy(s);
}

static void test_rpc_server_oversized_request_resource_exhausted(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 1000);
    rpc_client *c = client_for(s);
    rpc_client_result res;
    size_t big = MAX_MSG * 2;
    char *buf = calloc(1, big);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL(rpc_client_call_raw(c, ECHO_PATH, NULL, 0, buf, big, NULL, NULL, 5000, &res),
                    CH_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(res.code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    free(buf);
    CU_ASSERT_EQUAL(echo(c, "still serving", 5000, &res), CH_OK);
    rpc_client_destroy(c);
    rpc_server_destroy(s);
}

static void test_rpc_server_busy_port_unavailable(void)
{
    ctx_reset();
    rpc_server *a = server_start(1, 4, 1000);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", rpc_server_port(a));
    rpc_server_options o = {addr, 1, MAX_MSG, 4, 1000};
    rpc_server *b = NULL;
    CU_ASSERT_EQUAL_FATAL(rpc_server_create(&b, &o), CH_OK);
    rpc_method echo_m = {ECHO_PATH, RPC_UNARY, ECHO_DESC, ECHO_DESC, echo_handler, NULL, &g_ctx};
    CU_ASSERT_EQUAL(rpc_server_add_method(b, &echo_m), CH_OK);
    CU_ASSERT_EQUAL(rpc_server_start(b), CH_UNAVAILABLE);
    CU_ASSERT_EQUAL(rpc_server_port(b), 0);
    rpc_server_destroy(b);
    rpc_client *c = client_for(a);
    rpc_client_result res;
    CU_ASSERT_EQUAL(echo(c, "a still serves", 5000, &res), CH_OK);
    rpc_client_destroy(c);
    rpc_server_destroy(a);
}

static void test_rpc_server_add_method_after_start_refused(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 1000);
    rpc_method late = {"/choreo.test.Late/Late", RPC_UNARY, ECHO_DESC, ECHO_DESC, echo_handler, NULL, &g_ctx};
    CU_ASSERT_EQUAL(rpc_server_add_method(s, &late), CH_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(rpc_server_start(s), CH_FAILED_PRECONDITION);
    rpc_server_destroy(s);

    /* bad options and methods are refused before anything starts */
    rpc_server_options bad = {"127.0.0.1:0", 0, MAX_MSG, 4, 1000};
    CU_ASSERT_EQUAL(rpc_server_create(&s, &bad), CH_INVALID_ARGUMENT);
    rpc_server_options ok = {"127.0.0.1:0", 1, MAX_MSG, 4, 1000};
    CU_ASSERT_EQUAL_FATAL(rpc_server_create(&s, &ok), CH_OK);
    rpc_method nopath = {"noslash", RPC_UNARY, ECHO_DESC, ECHO_DESC, echo_handler, NULL, NULL};
    CU_ASSERT_EQUAL(rpc_server_add_method(s, &nopath), CH_INVALID_ARGUMENT);
    rpc_method nohandler = {ECHO_PATH, RPC_SERVER_STREAM, ECHO_DESC, ECHO_DESC, echo_handler, NULL, NULL};
    CU_ASSERT_EQUAL(rpc_server_add_method(s, &nohandler), CH_INVALID_ARGUMENT);
    rpc_method echo_m = {ECHO_PATH, RPC_UNARY, ECHO_DESC, ECHO_DESC, echo_handler, NULL, NULL};
    CU_ASSERT_EQUAL(rpc_server_add_method(s, &echo_m), CH_OK);
    CU_ASSERT_EQUAL(rpc_server_add_method(s, &echo_m), CH_ALREADY_EXISTS);
    rpc_server_destroy(s); /* never started */
}

static ch_status no_stream(rpc_stream *st, const ProtobufCMessage *req, void *ctx)
{
    return CH_UNIMPLEMENTED;
}

static void test_rpc_server_add_service_serves_every_method(void)
{
    rpc_server_options ok = {"127.0.0.1:0", 1, MAX_MSG, 4, 1000};
    const rpc_handler partial[] = {{"Check", RPC_UNARY, echo_handler, NULL}};
    const rpc_handler wrong[] = {{"Check", RPC_UNARY, echo_handler, NULL},
                                 {"Watch", RPC_SERVER_STREAM, NULL, no_stream},
                                 {"Nope", RPC_UNARY, echo_handler, NULL}};
    const rpc_handler full[] = {{"Check", RPC_UNARY, echo_handler, NULL},
                                {"Watch", RPC_SERVER_STREAM, NULL, no_stream}};
    rpc_server *s = NULL;
    size_t n = 0;

    CU_ASSERT_EQUAL_FATAL(rpc_server_create(&s, &ok), CH_OK);
    /* a method of the .proto without a handler, or a handler of no method: refused */
    CU_ASSERT_EQUAL(rpc_server_add_service(s, &grpc__health__v1__health__descriptor, partial, 1, &g_ctx),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(rpc_server_add_service(s, &grpc__health__v1__health__descriptor, wrong, 3, &g_ctx),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(rpc_server_add_service(s, &grpc__health__v1__health__descriptor, full, 2, &g_ctx), CH_OK);
    const char *const *names = rpc_server_services(s, &n);
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_STRING_EQUAL(names[0], "grpc.health.v1.Health");
    rpc_server_destroy(s);
}

static void test_rpc_server_server_stream_three_then_ok(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 1000);
    rpc_client *c = client_for(s);
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)"3";
    rpc_client_stream *st = NULL;
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(c, COUNT_PATH, NULL, 0, &req.base, 5000, &st), CH_OK);
    int got = 0;
    for (;;) {
        ProtobufCMessage *m = NULL;
        ch_status rc = rpc_client_stream_next(st, COUNT_DESC, &m, 5000);
        CU_ASSERT_EQUAL_FATAL(rc, CH_OK);
        if (!m)
            break;
        CU_ASSERT_EQUAL(((count_msg *)m)->status,
                        GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
        protobuf_c_message_free_unpacked(m, NULL);
        got++;
        CU_ASSERT_FATAL(got <= 3);
    }
    CU_ASSERT_EQUAL(got, 3);
    rpc_client_result res;
    CU_ASSERT_EQUAL(rpc_client_stream_result(st, &res), CH_OK);
    CU_ASSERT_EQUAL(res.code, GRPC_STATUS_OK);
    rpc_client_stream_close(st);

    /* handler error with its message */
    req.service = (char *)"1000";
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(c, COUNT_PATH, NULL, 0, &req.base, 5000, &st), CH_OK);
    ProtobufCMessage *m = NULL;
    CU_ASSERT_EQUAL(rpc_client_stream_next(st, COUNT_DESC, &m, 5000), CH_OK);
    CU_ASSERT_PTR_NULL(m);
    CU_ASSERT_EQUAL(rpc_client_stream_result(st, &res), CH_INVALID_ARGUMENT);
    CU_ASSERT_STRING_EQUAL(res.details, "count 1000 out of range");
    rpc_client_stream_close(st);

    pthread_mutex_lock(&g_ctx.mu);
    CU_ASSERT_FALSE(g_ctx.stream_early_cancel); /* half-close is not a cancel */
    pthread_mutex_unlock(&g_ctx.mu);
    rpc_client_destroy(c);
    rpc_server_destroy(s);
}

static void test_rpc_server_client_cancel_seen_by_stream(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 1, 1000);
    rpc_client *c = client_for(s);
    echo_msg req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)"wait";
    rpc_client_stream *st = NULL;
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(c, COUNT_PATH, NULL, 0, &req.base, 10000, &st), CH_OK);
    ProtobufCMessage *m = NULL;
    CU_ASSERT_EQUAL(rpc_client_stream_next(st, COUNT_DESC, &m, 5000), CH_OK);
    CU_ASSERT_PTR_NOT_NULL(m);
    protobuf_c_message_free_unpacked(m, NULL);
    CU_ASSERT(ctx_wait(pred_stream_waiting, 2000));

    /* max_streams is 1: a second stream is refused */
    req.service = (char *)"1";
    rpc_client_stream *st2 = NULL;
    CU_ASSERT_EQUAL_FATAL(rpc_client_stream_open(c, COUNT_PATH, NULL, 0, &req.base, 5000, &st2), CH_OK);
    m = NULL;
    CU_ASSERT_EQUAL(rpc_client_stream_next(st2, COUNT_DESC, &m, 5000), CH_OK);
    CU_ASSERT_PTR_NULL(m);
    rpc_client_result res;
    CU_ASSERT_EQUAL(rpc_client_stream_result(st2, &res), CH_RESOURCE_EXHAUSTED);
    rpc_client_stream_close(st2);

    int64_t t0 = now_ms();
    rpc_client_stream_close(st); /* cancels */
    CU_ASSERT(ctx_wait(pred_cancel_seen, 3000));
    CU_ASSERT(now_ms() - t0 < 1500);
    rpc_client_destroy(c);
    rpc_server_destroy(s);
}

typedef struct call_job {
    rpc_client *c;
    const char *text;
    int timeout_ms;
    ch_status rc;
    int code;
    int ok_calls;
} call_job;

static void *call_main(void *arg)
{
    call_job *j = arg;
    rpc_client_result res;
    j->rc = echo(j->c, j->text, j->timeout_ms, &res);
    j->code = res.code;
    return NULL;
}

static void test_rpc_server_graceful_shutdown_completes_deferred_call(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 3000);
    rpc_client *c = client_for(s);
    call_job j = {c, "defer:300", 10000, CH_INTERNAL, -1, 0};
    pthread_t t;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, call_main, &j), 0);
    CU_ASSERT_FATAL(ctx_wait(pred_deferred_entered, 3000));
    int64_t t0 = now_ms();
    rpc_server_shutdown(s);
    int64_t took = now_ms() - t0;
    CU_ASSERT(rpc_server_stopping(s));
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(j.rc, CH_OK);
    CU_ASSERT_EQUAL(j.code, GRPC_STATUS_OK);
    CU_ASSERT(took < 2500); /* ended with the call, not at the grace limit */
    rpc_server_shutdown(s); /* idempotent */
    rpc_client_destroy(c);
    rpc_server_destroy(s);
    ctx_join_deferred();
}

static void test_rpc_server_late_reply_after_shutdown_is_safe(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 100);
    rpc_client *c = client_for(s);
    call_job j = {c, "defer:700", 10000, CH_INTERNAL, -1, 0};
    pthread_t t;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, call_main, &j), 0);
    CU_ASSERT_FATAL(ctx_wait(pred_deferred_entered, 3000));
    int64_t t0 = now_ms();
    rpc_server_destroy(s); /* grace 100 ms, then the call is cancelled */
    CU_ASSERT(now_ms() - t0 < 650);
    pthread_join(t, NULL);
    CU_ASSERT_NOT_EQUAL(j.rc, CH_OK);
    CU_ASSERT(ctx_wait(pred_deferred_replied, 3000)); /* the late reply ran */
    rpc_client_destroy(c);
    ctx_join_deferred();
}

static void *kill_main(void *arg)
{
    (void)arg;
    test_sleep_ms(100);
    kill(getpid(), SIGTERM);
    return NULL;
}

static void test_rpc_server_run_stops_on_sigterm(void)
{
    ctx_reset();
    rpc_server *s = server_start(1, 4, 1000);
    pthread_t t;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, kill_main, NULL), 0);
    CU_ASSERT_EQUAL(rpc_server_run(s), SIGTERM); /* blocked in every thread, so only sigwait sees it */
    CU_ASSERT(rpc_server_stopping(s));
    pthread_join(t, NULL);
    rpc_server_destroy(s);
}

#define CONC_THREADS 4
#define CONC_CALLS   150

static void *many_main(void *arg)
{
    call_job *j = arg;
    for (int i = 0; i < CONC_CALLS; i++) {
        char text[64];
        snprintf(text, sizeof(text), "%s-%d", j->text, i);
        rpc_client_result res;
        if (echo(j->c, text, 10000, &res) == CH_OK)
            j->ok_calls++;
    }
    return NULL;
}

static void test_rpc_server_many_concurrent_calls(void)
{
    ctx_reset();
    rpc_server *s = server_start(2, 4, 1000);
    rpc_client *c = client_for(s);
    pthread_t t[CONC_THREADS];
    call_job j[CONC_THREADS];
    const char *names[CONC_THREADS] = {"a", "b", "c", "d"};
    for (int i = 0; i < CONC_THREADS; i++) {
        j[i] = (call_job){c, names[i], 10000, CH_OK, 0, 0};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, many_main, &j[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < CONC_THREADS; i++) {
        pthread_join(t[i], NULL);
        total += j[i].ok_calls;
    }
    CU_ASSERT_EQUAL(total, CONC_THREADS * CONC_CALLS);
    rpc_client_destroy(c);
    rpc_server_destroy(s);
}

int main(void)
{
    static const cu_test tests[] = {
        {"echo round trip", test_rpc_server_echo_round_trip},
        {"add_service serves every method", test_rpc_server_add_service_serves_every_method},
        {"metadata in and out", test_rpc_server_metadata_in_and_out},
        {"error status reaches client", test_rpc_server_error_status_reaches_client},
        {"deferred reply", test_rpc_server_deferred_reply},
        {"unknown method unimplemented", test_rpc_server_unknown_method_unimplemented},
        {"malformed request", test_rpc_server_malformed_request_invalid_argument},
        {"oversized request", test_rpc_server_oversized_request_resource_exhausted},
        {"busy port unavailable", test_rpc_server_busy_port_unavailable},
        {"add method after start refused", test_rpc_server_add_method_after_start_refused},
        {"server stream three then ok", test_rpc_server_server_stream_three_then_ok},
        {"client cancel seen by stream", test_rpc_server_client_cancel_seen_by_stream},
        {"graceful shutdown completes deferred call",
         test_rpc_server_graceful_shutdown_completes_deferred_call},
        {"late reply after shutdown is safe", test_rpc_server_late_reply_after_shutdown_is_safe},
        {"many concurrent calls", test_rpc_server_many_concurrent_calls},
        {"run stops on sigterm", test_rpc_server_run_stops_on_sigterm},
        {NULL, NULL},
    };

    rpc_block_signals();
    log_configure("test_rpc_server", LOG_WARN, 2);
    pthread_mutex_init(&g_ctx.mu, NULL);
    pthread_cond_init(&g_ctx.cv, NULL);
    int rc = cu_run("rpc_server", NULL, NULL, tests);
    pthread_cond_destroy(&g_ctx.cv);
    pthread_mutex_destroy(&g_ctx.mu);
    return rc;
}
