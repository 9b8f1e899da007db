/* health.c: grpc.health.v1.Health. A fixed table of names under one mutex; a
 * generation counter and a condition variable wake the Watch streams. */
#include "health.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "log.h"
#include "utf8.h"

#define HEALTH_POLL_MS 100 /* how often a Watch checks for cancellation */

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus serving_status;

typedef struct health_entry {
    char name[HEALTH_MAX_SERVICE + 1];
    bool serving;
} health_entry;

struct health {
    pthread_mutex_t mu;
    pthread_cond_t changed; /* CLOCK_MONOTONIC */
    uint64_t generation;    /* bumped by every health_set */
    health_entry entries[HEALTH_MAX_SERVICES];
    size_t count;
    rpc_server *server; /* set by health_register */
};

ch_status health_create(health **out)
{
    pthread_condattr_t attr;
    health *h;

    *out = NULL;
    h = calloc(1, sizeof(*h));
    if (!h)
        return CH_NO_MEMORY;
    if (pthread_condattr_init(&attr) != 0) {
        free(h);
        return CH_NO_MEMORY;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (pthread_cond_init(&h->changed, &attr) != 0) {
        pthread_condattr_destroy(&attr);
        free(h);
        return CH_NO_MEMORY;
    }
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&h->mu, NULL);
    h->entries[0].name[0] = 0; /* "": the whole server */
    h->entries[0].serving = true;
    h->count = 1;
    *out = h;
    return CH_OK;
}

void health_destroy(health *h)
{
    if (!h)
        return;
    pthread_cond_destroy(&h->changed);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

/* Entry for name, or NULL. Caller holds mu. */
static health_entry *health__find(health *h, const char *name)
{
    for (size_t i = 0; i < h->count; i++)
        if (strcmp(h->entries[i].name, name) == 0)
            return &h->entries[i];
    return NULL;
}

void health_set(health *h, const char *service, bool serving)
{
    health_entry *e;
    size_t len;

    if (!service)
        service = "";
    len = strnlen(service, HEALTH_MAX_SERVICE + 1);
    if (len > HEALTH_MAX_SERVICE) {
        log_warn("health: service name too long, ignored", NULL);
        return;
    }
    pthread_mutex_lock(&h->mu);
    e = health__find(h, service);
    if (!e && h->count < HEALTH_MAX_SERVICES) {
        e = &h->entries[h->count++];
        memcpy(e->name, service, len + 1);
    }
    if (e) {
        e->serving = serving;
        h->generation++;
        pthread_cond_broadcast(&h->changed);
    }
    pthread_mutex_unlock(&h->mu);
    if (!e)
        log_warn("health: too many service names, ignored", "service", service, NULL);
}

bool health_serving(health *h, const char *service)
{
    health_entry *e;
    bool serving;

    pthread_mutex_lock(&h->mu);
    e = health__find(h, service ? service : "");
    serving = e && e->serving;
    pthread_mutex_unlock(&h->mu);
    return serving;
}

/* Current status of name: SERVICE_UNKNOWN when unknown. */
static serving_status health__status(health *h, const char *name, uint64_t *generation)
{
    serving_status s;
    health_entry *e;

    pthread_mutex_lock(&h->mu);
    e = health__find(h, name);
    if (!e)
        s = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    else if (e->serving)
        s = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    else
        s = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    *generation = h->generation;
    pthread_mutex_unlock(&h->mu);
    return s;
}

static bool health__name_ok(const char *name)
{
    size_t len = strnlen(name, HEALTH_MAX_SERVICE + 1);
    return len <= HEALTH_MAX_SERVICE && utf8_valid(name, len);
}

static void health_check(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Grpc__Health__V1__HealthCheckRequest *req = (const Grpc__Health__V1__HealthCheckRequest *)msg;
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    const char *name = req->service ? req->service : "";
    uint64_t generation;

    if (!health__name_ok(name)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "service: must be UTF-8 of at most %d bytes",
                      HEALTH_MAX_SERVICE);
        return;
    }
    resp.status = health__status(ctx, name, &generation);
    if (resp.status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN) {
        rpc_call_fail(call, CH_NOT_FOUND, "unknown service: %s", name);
        return;
    }
    rpc_call_reply(call, &resp.base);
}

static ch_status health_watch(rpc_stream *st, const ProtobufCMessage *msg, void *ctx)
{
    const Grpc__Health__V1__HealthCheckRequest *req = (const Grpc__Health__V1__HealthCheckRequest *)msg;
    const char *name = req->service ? req->service : "";
    health *h = ctx;
    serving_status last = (serving_status)-1;
    uint64_t generation;

    if (!health__name_ok(name)) {
        rpc_stream_set_error(st, "service: must be UTF-8 of at most %d bytes", HEALTH_MAX_SERVICE);
        return CH_INVALID_ARGUMENT;
    }
    for (;;) {
        Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        struct timespec until;

        resp.status = health__status(h, name, &generation);
        if (resp.status != last) {
            if (rpc_stream_send(st, &resp.base) != CH_OK)
                return CH_CANCELLED;
            last = resp.status;
        }

        /* Sleep until a health_set or the poll interval, whichever first. */
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += HEALTH_POLL_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&h->mu);
        while (h->generation == generation)
            if (pthread_cond_timedwait(&h->changed, &h->mu, &until) == ETIMEDOUT)
                break;
        pthread_mutex_unlock(&h->mu);

        if (h->server && rpc_server_stopping(h->server)) {
            rpc_stream_set_error(st, "server stopping");
            return CH_UNAVAILABLE;
        }
        if (rpc_stream_wait_cancelled(st, 0))
            return CH_CANCELLED;
    }
}

ch_status health_register(health *h, rpc_server *s)
{
    rpc_method check = {
        .path = "/grpc.health.v1.Health/Check",
        .kind = RPC_UNARY,
        .request = &grpc__health__v1__health_check_request__descriptor,
        .response = &grpc__health__v1__health_check_response__descriptor,
        .unary = health_check,
        .ctx = h,
    };
    rpc_method watch = {
        .path = "/grpc.health.v1.Health/Watch",
        .kind = RPC_SERVER_STREAM,
        .request = &grpc__health__v1__health_check_request__descriptor,
        .response = &grpc__health__v1__health_check_response__descriptor,
        .stream = health_watch,
        .ctx = h,
    };
    ch_status st;

    if (h->server && h->server != s)
        return CH_FAILED_PRECONDITION;
    h->server = s;
    if ((st = rpc_server_add_method(s, &check)) != CH_OK ||
        (st = rpc_server_add_method(s, &watch)) != CH_OK) {
        log_error("health: cannot register methods", "status", ch_status_str(st), NULL);
        return st;
    }
    return CH_OK;
}
