/* bus.c: the connection: NATS JetStream over cnats 3.4.1, created,
 * reconnected and destroyed; its state; the conversion of cnats statuses
 * (bus_internal.h). Streams and consumers are in bus_stream.c, publishing
 * in bus_pub.c, subscriptions and settling in bus_sub.c.
 *
 * Notes on choices:
 * - SendAsap is always on: without it every request (PubAck, Fetch) waits for
 *   the flusher (~1 ms).
 * - Publishing while disconnected fails fast with CH_UNAVAILABLE instead of
 *   filling the reconnect buffer; requests in flight fail on disconnect
 *   (FailRequestsOnDisconnect). Callers retry; Nats-Msg-Id makes it safe. */
#include "bus_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "log.h"
#include "url_list.h"

#define BUS_DEFAULT_URL "nats://127.0.0.1:4222"

/* ---- status conversion ------------------------------------------------------- */

ch_status bus__status(natsStatus s, jsErrCode ec)
{
    switch (s) {
    case NATS_OK: return CH_OK;
    case NATS_TIMEOUT: return CH_TIMEOUT;
    case NATS_NO_RESPONDERS:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
    case NATS_STALE_CONNECTION:
    case NATS_IO_ERROR:
    case NATS_NO_SERVER:
    case NATS_DRAINING: return CH_UNAVAILABLE;
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT: return CH_INVALID_ARGUMENT;
    case NATS_NO_MEMORY: return CH_NO_MEMORY;
    case NATS_NOT_FOUND: return CH_NOT_FOUND;
    case NATS_MAX_PAYLOAD: return CH_RESOURCE_EXHAUSTED;
    default: break;
    }
    switch ((int)ec) {
    case JSStreamNotFoundErr:
    case JSConsumerNotFoundErr: return CH_NOT_FOUND;
    case JSStreamMessageExceedsMaximumErr: return CH_RESOURCE_EXHAUSTED;
    case JSStreamWrongLastSequenceErr:
    case JSStreamWrongLastMsgIDErr: return CH_CONFLICT;
    case JSNotEnabledErr: return CH_UNAVAILABLE;
    case JSStreamInvalidConfig:
    case JSStreamUpdateErr:
    case JSStreamNameExistErr: return CH_FAILED_PRECONDITION;
    default: break;
    }
    return ec != 0 ? CH_FAILED_PRECONDITION : CH_INTERNAL;
}

ch_status bus__fail(const char *what, const char *name, natsStatus s, jsErrCode ec)
{
    ch_status st = bus__status(s, ec);
    char code[32];
    snprintf(code, sizeof code, "%d", (int)ec);
    const char *text = nats_GetLastError(NULL);
    log_warn(what, "name", name, "nats_status", natsStatus_GetText(s), "js_err_code", ec ? code : NULL,
             "detail", text, "status", ch_status_str(st), NULL);
    return st;
}

void bus__sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int64_t bus__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- connection -------------------------------------------------------------- */

static void bus__set_up(bus *b, bool up)
{
    bool was = atomic_exchange(&b->up, up);
    if (was != up && b->on_state && !atomic_load(&b->closing)) {
        b->on_state(up, b->on_state_arg);
    }
}

static void bus__on_connected(natsConnection *nc, void *arg)
{
    (void)nc;
    bus *b = arg;
    log_info("nats connected", NULL);
    bus__set_up(b, true);
}

static void bus__on_disconnected(natsConnection *nc, void *arg)
{
    (void)nc;
    bus *b = arg;
    if (!atomic_load(&b->closing)) {
        log_warn("nats disconnected", NULL);
    }
    bus__set_up(b, false);
}

static void bus__on_reconnected(natsConnection *nc, void *arg)
{
    (void)nc;
    bus *b = arg;
    log_info("nats reconnected", NULL);
    bus__set_up(b, true);
}

static void bus__on_closed(natsConnection *nc, void *arg)
{
    (void)nc;
    bus *b = arg;
    bus__set_up(b, false);
    pthread_mutex_lock(&b->mu);
    b->closed_seen = true;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

/* Capped exponential backoff with up to 25% jitter; runs on the reconnect
 * thread. */
static int64_t bus__reconnect_delay(natsConnection *nc, int attempts, void *arg)
{
    (void)nc;
    bus *b = arg;
    int64_t d = b->reconnect_wait_ms;
    for (int i = 1; i < attempts && d < b->reconnect_wait_max_ms; i++) {
        d *= 2;
    }
    if (d > b->reconnect_wait_max_ms) {
        d = b->reconnect_wait_max_ms;
    }
    int64_t jitter = d / 4;
    if (jitter > 0) {
        d += rand_r(&b->jitter_seed) % (jitter + 1);
    }
    return d;
}

ch_status bus_create(bus **out, const bus_options *o)
{
    ch_status st = CH_INTERNAL;
    natsStatus s = NATS_OK;
    *out = NULL;
    if (!o) {
        return CH_INVALID_ARGUMENT;
    }
    /* cnats spins on its locks before sleeping (2000 tries by default): on
     * a small machine that burns the core the lock holder needs. Only the
     * first call in a process takes effect. */
    nats_Open(0);
    bus *b = calloc(1, sizeof *b);
    if (!b) {
        return CH_NO_MEMORY;
    }
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cond, NULL);
    atomic_init(&b->up, false);
    atomic_init(&b->closing, false);
    b->on_state = o->on_state;
    b->on_state_arg = o->on_state_arg;
    b->reconnect_wait_ms = o->reconnect_wait_ms > 0 ? o->reconnect_wait_ms : 100;
    b->reconnect_wait_max_ms = o->reconnect_wait_max_ms > 0 ? o->reconnect_wait_max_ms : 2000;
    if (b->reconnect_wait_max_ms < b->reconnect_wait_ms) {
        b->reconnect_wait_max_ms = b->reconnect_wait_ms;
    }
    b->max_pending_msgs = o->max_pending_msgs > 0 ? o->max_pending_msgs : 65536;
    b->max_pending_bytes = o->max_pending_bytes > 0 ? o->max_pending_bytes : 64 * 1024 * 1024;
    b->jitter_seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)b;
    b->pipe_timeout_ms = o->publish_timeout_ms > 0 ? o->publish_timeout_ms : BUS_ASYNC_MAX_WAIT_MS;
    int connect_timeout = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 2000;
    const char *url = o->url && *o->url ? o->url : BUS_DEFAULT_URL;

    url_list servers;
    char why[160];
    if (url_list_parse(url, &servers, why, sizeof why) != CH_OK) {
        log_error("bad NATS server list", "url", url, "error", why, NULL);
        st = CH_INVALID_ARGUMENT;
        goto cleanup;
    }
    s = natsOptions_Create(&b->opts);
    if (s == NATS_OK) /* a cluster's servers are a pool, not one URL */
        s = natsOptions_SetServers(b->opts, servers.ptrs, servers.n);
    if (s == NATS_OK && o->name)
        s = natsOptions_SetName(b->opts, o->name);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(b->opts, connect_timeout);
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(b->opts, true);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(b->opts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(b->opts, b->reconnect_wait_ms);
    if (s == NATS_OK)
        s = natsOptions_SetCustomReconnectDelay(b->opts, bus__reconnect_delay, b);
    if (s == NATS_OK)
        s = natsOptions_SetFailRequestsOnDisconnect(b->opts, true);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPendingMsgs(b->opts, b->max_pending_msgs);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(b->opts, bus__on_disconnected, b);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(b->opts, bus__on_reconnected, b);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(b->opts, bus__on_closed, b);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(b->opts, !o->no_retry_on_failed_connect, bus__on_connected,
                                                b);
    if (s != NATS_OK) {
        st = bus__fail("nats options rejected", url, s, 0);
        if (st == CH_INTERNAL)
            st = CH_INVALID_ARGUMENT;
        goto cleanup;
    }

    s = natsConnection_Connect(&b->nc, b->opts);
    if (s == NATS_OK) {
        bus__set_up(b, true);
    } else if (s == NATS_NOT_YET_CONNECTED) {
        log_warn("nats not reachable yet, connecting in the background", "url", url, NULL);
    } else {
        st = bus__fail("nats connect failed", url, s, 0);
        goto cleanup;
    }

    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    jo.PublishAsync.MaxPending = o->async_max_pending > 0 ? o->async_max_pending : 4096;
    jo.PublishAsync.AckHandler = bus__on_async_ack;
    jo.PublishAsync.AckHandlerClosure = b;
    jo.PublishAsync.StallWait = 2000;
    s = natsConnection_JetStream(&b->js, b->nc, &jo);
    if (s != NATS_OK) {
        st = bus__fail("jetstream context failed", url, s, 0);
        goto cleanup;
    }
    *out = b;
    return CH_OK;
cleanup:
    bus_destroy(b);
    return st;
}

void bus_destroy(bus *b)
{
    if (!b) {
        return;
    }
    atomic_store(&b->closing, true);
    if (b->js) {
        /* Let queued async publishes finish (bounded) before closing. */
        if (atomic_load(&b->up)) {
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MaxWait = 2000;
            js_PublishAsyncComplete(b->js, &po);
        }
    }
    if (b->nc) {
        if (atomic_load(&b->up)) {
            natsConnection_FlushTimeout(b->nc, 1000);
        }
        natsConnection_Close(b->nc);
        /* The closed callback runs on a cnats thread and uses b: wait for it. */
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 5;
        pthread_mutex_lock(&b->mu);
        while (!b->closed_seen) {
            if (pthread_cond_timedwait(&b->cond, &b->mu, &dl) != 0) {
                break;
            }
        }
        pthread_mutex_unlock(&b->mu);
    }
    jsCtx_Destroy(b->js);
    natsConnection_Destroy(b->nc);
    natsOptions_Destroy(b->opts);
    pthread_cond_destroy(&b->cond);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

void bus_library_shutdown(void)
{
    nats_CloseAndWait(2000);
}

bool bus_connected(const bus *b)
{
    return b && atomic_load(&((bus *)b)->up);
}
