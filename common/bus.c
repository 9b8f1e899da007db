/* bus.c: NATS JetStream over cnats 3.4.1.
 *
 * Notes on choices:
 * - SendAsap is always on: without it every request (PubAck, Fetch) waits for
 *   the flusher (~1 ms).
 * - Publishing while disconnected fails fast with CH_UNAVAILABLE instead of
 *   filling the reconnect buffer; requests in flight fail on disconnect
 *   (FailRequestsOnDisconnect). Callers retry; Nats-Msg-Id makes it safe.
 * - Acks (bus_in_ack) use natsMsg_Ack (no wait for the server's
 *   confirmation). An ack lost in a disconnect means one redelivery after
 *   AckWait, which idempotent receivers absorb; AckSync would cost a round
 *   trip per message.
 * - Async publishes are tracked with our own counters in the AckHandler (not
 *   ErrHandler + PublishAsyncComplete, whose ordering versus the error
 *   callback is not documented), each with a MaxWait so none stays pending.
 * - One MaxWait per JetStream context. cnats 3.4 keeps every async publish
 *   of the last MaxWait in a list sorted by deadline, freed only when the
 *   deadline passes. A publish whose deadline is the latest goes to the
 *   tail; any other walks the list from its head. With a shorter MaxWait
 *   for some publishes than for others, that walk took a third of the
 *   orders service's CPU at ~2,000 orders/s. */
#include "bus.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#include "log.h"
#include "url_list.h"

#define BUS_DEFAULT_URL       "nats://127.0.0.1:4222"
#define BUS_SUBJECT_MAX       512
#define BUS_REPLAY_BATCH      512
#define BUS_REPLAY_STALL_MS   10000
#define BUS_ASYNC_MAX_WAIT_MS 10000

struct bus {
    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
    bus_state_fn on_state;
    void *on_state_arg;
    atomic_bool up;
    atomic_bool closing;
    int reconnect_wait_ms;
    int reconnect_wait_max_ms;
    int max_pending_msgs;
    int max_pending_bytes;
    unsigned jitter_seed; /* used only by the reconnect thread */

    pthread_mutex_t mu; /* guards the fields below */
    pthread_cond_t cond;
    bool closed_seen;
    uint64_t async_sent;
    uint64_t async_done;
    uint64_t async_failed;
    ch_status async_first_err;

    int pipe_timeout_ms; /* a pipe's PubAck wait unless it names its own */
};

/* ---- status conversion ---------------------------------------------------- */

static ch_status bus__status(natsStatus s, jsErrCode ec)
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

/* Logs the cnats text of a failure once and returns the ch_status. */
static ch_status bus__fail(const char *what, const char *name, natsStatus s, jsErrCode ec)
{
    ch_status st = bus__status(s, ec);
    char code[32];
    snprintf(code, sizeof code, "%d", (int)ec);
    const char *text = nats_GetLastError(NULL);
    log_warn(what, "name", name, "nats_status", natsStatus_GetText(s), "js_err_code", ec ? code : NULL,
             "detail", text, "status", ch_status_str(st), NULL);
    return st;
}

static void bus__sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t bus__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- connection ------------------------------------------------------------ */

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

/* Async publish results; runs on a cnats thread, only counts. */
static void bus__on_async_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *arg)
{
    (void)js;
    (void)pa;
    bus *b = arg;
    pthread_mutex_lock(&b->mu);
    if (pae) {
        b->async_failed++;
        if (b->async_first_err == CH_OK) {
            b->async_first_err = bus__status(pae->Err, pae->ErrCode);
            if (b->async_first_err == CH_OK) {
                b->async_first_err = CH_INTERNAL;
            }
        }
    }
    b->async_done++;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
    if (pae) {
        log_warn("async publish failed", "subject", msg ? natsMsg_GetSubject(msg) : NULL, "nats_status",
                 natsStatus_GetText(pae->Err), "detail", pae->ErrText, NULL);
    }
    natsMsg_Destroy(msg);
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

/* ---- provisioning ------------------------------------------------------------ */

ch_status bus_ensure_stream(bus *b, const bus_stream_spec *sp)
{
    if (!b || !sp || !sp->name || !sp->subjects[0]) {
        return CH_INVALID_ARGUMENT;
    }
    const char *subjects[BUS_MAX_SUBJECTS];
    int nsub = 0;
    while (nsub < BUS_MAX_SUBJECTS && sp->subjects[nsub]) {
        subjects[nsub] = sp->subjects[nsub];
        nsub++;
    }
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = sp->name;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = nsub;
    cfg.Storage = sp->storage == BUS_STORAGE_MEMORY ? js_MemoryStorage : js_FileStorage;
    cfg.Replicas = sp->replicas > 0 ? sp->replicas : 1;
    cfg.Duplicates = sp->duplicate_window_ms > 0 ? sp->duplicate_window_ms * 1000000LL : 0;
    cfg.MaxMsgSize = sp->max_msg_size > 0 ? sp->max_msg_size : -1;
    cfg.MaxAge = sp->max_age_ms > 0 ? sp->max_age_ms * 1000000LL : 0;

    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_AddStream(&si, b->js, &cfg, NULL, &ec);
    /* Services start together: when another one is creating the same stream
     * at this moment, the server may answer "subjects overlap" instead of
     * "exists". Ask again; a real overlap with another stream persists. */
    for (int attempt = 0; s != NATS_OK && ec == JSStreamSubjectOverlapErr && attempt < 5; attempt++) {
        bus__sleep_ms(50 + 50 * attempt);
        ec = 0;
        s = js_AddStream(&si, b->js, &cfg, NULL, &ec);
    }
    if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return CH_OK;
    }
    if (ec != JSStreamNameExistErr) {
        return bus__fail("stream create failed", sp->name, s, ec);
    }
    /* It exists with a different configuration: update what can change. */
    ec = 0;
    s = js_UpdateStream(&si, b->js, &cfg, NULL, &ec);
    if (s != NATS_OK) {
        ch_status st = bus__fail("stream update failed", sp->name, s, ec);
        return st == CH_INTERNAL ? CH_FAILED_PRECONDITION : st;
    }
    jsStreamInfo_Destroy(si);
    log_info("stream updated", "name", sp->name, NULL);
    return CH_OK;
}

ch_status bus_ensure_deadletter_stream(bus *b, int replicas)
{
    bus_stream_spec s = {
        .name = BUS_DEADLETTER_STREAM,
        .subjects = {BUS_DEADLETTER_PREFIX ".>"},
        .storage = BUS_STORAGE_FILE,
        .replicas = replicas,
    };
    return bus_ensure_stream(b, &s);
}

/* Where a durable's messages are pushed: one subject per durable, outside
 * every stream, with the durable's name as the queue group so that the
 * replicas of a service share its messages (competing consumers). */
static void bus__deliver_subject(char *buf, size_t cap, const char *stream, const char *durable)
{
    snprintf(buf, cap, "_choreo.deliver.%s.%s", stream, durable);
}

static void bus__consumer_config(jsConsumerConfig *cc, const bus_consumer_spec *c, const char *deliver)
{
    jsConsumerConfig_Init(cc);
    cc->Durable = c->durable;
    cc->DeliverSubject = deliver;
    cc->DeliverGroup = c->durable;
    cc->DeliverPolicy = js_DeliverAll;
    cc->AckPolicy = js_AckExplicit;
    cc->AckWait = (int64_t)(c->ack_wait_ms > 0 ? c->ack_wait_ms : 30000) * 1000000LL;
    cc->MaxDeliver = c->max_deliver > 0 ? c->max_deliver : -1;
    cc->MaxAckPending = c->max_ack_pending > 0 ? c->max_ack_pending : 1000;
    cc->FilterSubject = c->filter_subject;
}

ch_status bus_ensure_consumer(bus *b, const bus_consumer_spec *c)
{
    if (!b || !c || !c->stream || !c->durable) {
        return CH_INVALID_ARGUMENT;
    }
    char deliver[BUS_SUBJECT_MAX];
    bus__deliver_subject(deliver, sizeof deliver, c->stream, c->durable);
    jsConsumerConfig cc;
    bus__consumer_config(&cc, c, deliver);
    jsConsumerInfo *ci = NULL;
    jsErrCode ec = 0;
    /* A pull consumer of the same name (an older choreo) cannot become a
     * push one: replace it. Its position is lost, so its events are
     * delivered again, which idempotent handlers absorb. */
    if (js_GetConsumerInfo(&ci, b->js, c->stream, c->durable, NULL, &ec) == NATS_OK) {
        bool pull = !ci->Config || !ci->Config->DeliverSubject;
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
        if (pull) {
            log_warn("replacing pull consumer by a push consumer", "name", c->durable, NULL);
            js_DeleteConsumer(b->js, c->stream, c->durable, NULL, NULL);
        }
    }
    ec = 0;
    natsStatus s = js_AddConsumer(&ci, b->js, c->stream, &cc, NULL, &ec);
    if (s == NATS_OK) {
        jsConsumerInfo_Destroy(ci);
        return CH_OK;
    }
    if (ec == JSStreamNotFoundErr || s != NATS_ERR) {
        return bus__fail("consumer create failed", c->durable, s, ec);
    }
    ec = 0;
    s = js_UpdateConsumer(&ci, b->js, c->stream, &cc, NULL, &ec);
    if (s != NATS_OK) {
        return bus__fail("consumer update failed", c->durable, s, ec);
    }
    jsConsumerInfo_Destroy(ci);
    log_info("consumer updated", "name", c->durable, NULL);
    return CH_OK;
}

/* ---- publishing ------------------------------------------------------------ */

static ch_status bus__make_msg(natsMsg **out, const bus_out_msg *m)
{
    if (!m || !m->subject || (m->len > 0 && !m->data) || m->len > INT32_MAX || m->nheaders < 0 ||
        m->nheaders > BUS_MAX_HEADERS) {
        return CH_INVALID_ARGUMENT;
    }
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, m->subject, NULL, m->data, (int)m->len);
    if (s == NATS_OK && m->expect_seq) {
        /* set here, not through jsPubOptions, which cannot expect 0 (an empty stream) */
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, m->expect_last_seq);
        s = natsMsgHeader_Set(msg, BUS_HDR_EXPECTED_LAST_SEQ, seq);
    }
    if (s == NATS_OK && m->expect_last_msg_id) {
        s = natsMsgHeader_Set(msg, BUS_HDR_EXPECTED_LAST_MSG_ID, m->expect_last_msg_id);
    }
    for (int i = 0; s == NATS_OK && i < m->nheaders; i++) {
        if (m->headers[i].key && m->headers[i].value) {
            s = natsMsgHeader_Set(msg, m->headers[i].key, m->headers[i].value);
        }
    }
    if (s != NATS_OK) {
        natsMsg_Destroy(msg);
        return bus__fail("message rejected", m->subject, s, 0);
    }
    *out = msg;
    return CH_OK;
}

ch_status bus_delete_consumer(bus *b, const char *stream, const char *durable)
{
    jsErrCode ec = 0;
    if (!b || !stream || !durable) {
        return CH_INVALID_ARGUMENT;
    }
    natsStatus s = js_DeleteConsumer(b->js, stream, durable, NULL, &ec);
    if (s != NATS_OK) {
        return bus__fail("consumer not deleted", durable, s, ec);
    }
    return CH_OK;
}

/* Publishes an already built message synchronously (msg stays the caller's). */
static ch_status bus__publish_msg(bus *b, natsMsg *msg, const char *msg_id, int timeout_ms, bus_pub_ack *ack)
{
    if (!atomic_load(&b->up)) {
        return CH_UNAVAILABLE;
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = timeout_ms > 0 ? timeout_ms : 5000;
    po.MsgId = msg_id;
    jsPubAck *pa = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_PublishMsg(&pa, b->js, msg, &po, &ec);
    if (s != NATS_OK) {
        /* A lost compare-and-set is the caller's normal business, not a warning. */
        ch_status st = bus__status(s, ec) == CH_CONFLICT
                           ? CH_CONFLICT
                           : bus__fail("publish failed", natsMsg_GetSubject(msg), s, ec);
        if (st == CH_TIMEOUT && !atomic_load(&b->up)) {
            st = CH_UNAVAILABLE;
        }
        return st;
    }
    if (ack) {
        ack->seq = pa->Sequence;
        ack->duplicate = pa->Duplicate;
    }
    jsPubAck_Destroy(pa);
    return CH_OK;
}

ch_status bus_publish(bus *b, const bus_out_msg *m, int timeout_ms, bus_pub_ack *ack)
{
    if (!b) {
        return CH_INVALID_ARGUMENT;
    }
    natsMsg *msg = NULL;
    ch_status st = bus__make_msg(&msg, m);
    if (st != CH_OK) {
        return st;
    }
    st = bus__publish_msg(b, msg, m->msg_id, timeout_ms, ack);
    natsMsg_Destroy(msg);
    return st;
}

/* Queues m on the bus's JetStream context; async_sent counts it until its
 * ack handler runs. */
ch_status bus_publish_async(bus *b, const bus_out_msg *m)
{
    if (!b || !m) {
        return CH_INVALID_ARGUMENT;
    }
    if (!atomic_load(&b->up)) {
        return CH_UNAVAILABLE;
    }
    natsMsg *msg = NULL;
    ch_status st = bus__make_msg(&msg, m);
    if (st != CH_OK) {
        return st;
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = m->msg_id;
    po.MaxWait = BUS_ASYNC_MAX_WAIT_MS;
    pthread_mutex_lock(&b->mu);
    b->async_sent++;
    pthread_mutex_unlock(&b->mu);
    natsStatus s = js_PublishMsgAsync(b->js, &msg, &po);
    if (s != NATS_OK) {
        /* Not queued: the ack handler will never see it. */
        pthread_mutex_lock(&b->mu);
        b->async_sent--;
        pthread_mutex_unlock(&b->mu);
        natsMsg_Destroy(msg);
        return bus__fail("async publish failed", m->subject, s, 0);
    }
    return CH_OK;
}

ch_status bus_publish_async_wait(bus *b, int timeout_ms, uint64_t *failed)
{
    if (!b) {
        return CH_INVALID_ARGUMENT;
    }
    if (timeout_ms <= 0) {
        timeout_ms = 5000;
    }
    ch_status st = CH_OK;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&b->mu);
    while (b->async_done < b->async_sent) {
        if (pthread_cond_timedwait(&b->cond, &b->mu, &dl) != 0) {
            break;
        }
    }
    uint64_t pending = b->async_sent - b->async_done;
    if (failed) {
        *failed = b->async_failed;
    }
    if (b->async_failed > 0) {
        st = b->async_first_err;
    } else if (pending > 0) {
        st = CH_TIMEOUT;
    }
    b->async_failed = 0;
    b->async_first_err = CH_OK;
    pthread_mutex_unlock(&b->mu);
    if (pending > 0) {
        char n[32];
        snprintf(n, sizeof n, "%" PRIu64, pending);
        log_warn("async publishes still pending", "count", n, NULL);
    }
    return st;
}

/* ---- incoming messages ------------------------------------------------------ */

const char *bus_in_msg_header(const bus_in_msg *m, const char *key)
{
    const char *v = NULL;
    if (!m || !m->priv_ || !key) {
        return NULL;
    }
    if (natsMsgHeader_Get((natsMsg *)m->priv_, key, &v) != NATS_OK) {
        return NULL;
    }
    return v;
}

/* Fills in from msg and its JetStream metadata. */
static void bus__in_msg(bus_in_msg *in, natsMsg *msg)
{
    memset(in, 0, sizeof *in);
    in->subject = natsMsg_GetSubject(msg);
    in->data = (const uint8_t *)natsMsg_GetData(msg);
    in->len = (size_t)natsMsg_GetDataLength(msg);
    in->priv_ = msg;
    in->deliveries = 1;
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
        in->stream_seq = meta->Sequence.Stream;
        in->deliveries = meta->NumDelivered;
        in->timestamp_ns = meta->Timestamp;
        jsMsgMetaData_Destroy(meta);
    }
}

/* ---- subscriptions that hand messages over ------------------------------------ */

struct bus_sub {
    bus *b;
    pthread_t thread;
    atomic_bool stop;
    natsSubscription *sub;
    char *stream;
    char *durable; /* NULL: a follower */
    char *filter;
    uint64_t next; /* a follower's first sequence not handed over yet */
    int batch;
    bus_batch_fn fn;
    void *ctx;
};

static char *bus__strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static bool bus__is_reserved_header(const char *k)
{
    return strncasecmp(k, "Nats-Expected-", 14) == 0 || strcasecmp(k, "Nats-Msg-Id") == 0;
}

/* Copies in to BUS_DEADLETTER_PREFIX.<subject> with its headers and the
 * dead-letter headers, waits for the PubAck. consumer names the durable in
 * the log line. */
static ch_status bus__dead_letter_copy(bus *b, const bus_in_msg *in, const char *stream, const char *consumer,
                                       const char *reason)
{
    natsMsg *msg = in->priv_;
    char subject[BUS_SUBJECT_MAX];
    int n = snprintf(subject, sizeof subject, "%s.%s", BUS_DEADLETTER_PREFIX, in->subject);
    if (n < 0 || (size_t)n >= sizeof subject) {
        return CH_RESOURCE_EXHAUSTED;
    }
    natsMsg *copy = NULL;
    natsStatus s = natsMsg_Create(&copy, subject, NULL, (const char *)in->data, (int)in->len);
    const char **keys = NULL;
    int nkeys = 0;
    if (s == NATS_OK && natsMsgHeader_Keys(msg, &keys, &nkeys) == NATS_OK) {
        for (int i = 0; s == NATS_OK && i < nkeys; i++) {
            const char **vals = NULL;
            int nvals = 0;
            if (natsMsgHeader_Values(msg, keys[i], &vals, &nvals) != NATS_OK) {
                continue;
            }
            const char *key = keys[i];
            if (strcasecmp(key, "Nats-Msg-Id") == 0) {
                key = "Choreo-Original-Msg-Id";
            } else if (bus__is_reserved_header(key)) {
                free((void *)vals);
                continue;
            }
            for (int j = 0; s == NATS_OK && j < nvals; j++) {
                s = natsMsgHeader_Add(copy, key, vals[j]);
            }
            free((void *)vals);
        }
        free((void *)keys);
    }
    char seq[32], deliveries[32], msg_id[BUS_SUBJECT_MAX];
    snprintf(seq, sizeof seq, "%" PRIu64, in->stream_seq);
    snprintf(deliveries, sizeof deliveries, "%" PRIu64, in->deliveries);
    /* Deterministic: a re-run after a crash between publish and Term is a duplicate. */
    snprintf(msg_id, sizeof msg_id, "dlq:%s:%s", stream, seq);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(copy, BUS_HDR_DEAD_REASON, reason);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(copy, BUS_HDR_ORIGINAL_SUBJECT, in->subject);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(copy, BUS_HDR_ORIGINAL_SEQ, seq);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(copy, BUS_HDR_DELIVERIES, deliveries);
    ch_status st;
    if (s != NATS_OK) {
        st = bus__fail("dead-letter copy failed", subject, s, 0);
    } else {
        st = bus__publish_msg(b, copy, msg_id, 5000, NULL);
    }
    natsMsg_Destroy(copy);
    if (st == CH_OK) {
        log_warn("message dead-lettered", "consumer", consumer, "subject", in->subject, "seq", seq,
                 "deliveries", deliveries, "reason", reason, "dlq_subject", subject, NULL);
    }
    return st;
}

static natsSubscription *bus__sub_subscribe(bus_sub *x)
{
    natsSubscription *sub = NULL;
    jsErrCode ec = 0;
    jsSubOptions so;

    jsSubOptions_Init(&so);
    so.Stream = x->stream;
    if (x->durable) {
        so.Consumer = x->durable;
        so.Queue = x->durable;
        so.ManualAck = true;
    } else {
        so.Ordered = true;
        so.Config.DeliverPolicy = js_DeliverByStartSequence;
        so.Config.OptStartSeq = x->next;
    }
    natsStatus s = js_SubscribeSync(&sub, x->b->js, x->filter ? x->filter : ">", NULL, &so, &ec);
    if (s != NATS_OK) {
        return NULL;
    }
    natsSubscription_SetPendingLimits(sub, x->b->max_pending_msgs, x->b->max_pending_bytes);
    return sub;
}

static void *bus__sub_main(void *arg)
{
    bus_sub *x = arg;
    natsMsg **raw = calloc((size_t)x->batch, sizeof *raw);
    bus_in_msg **batch = calloc((size_t)x->batch, sizeof *batch);
    int errors = 0;

    while (raw && batch && !atomic_load(&x->stop)) {
        if (!x->sub && !(x->sub = bus__sub_subscribe(x))) {
            if (errors++ == 0) {
                log_warn("subscription not ready yet, retrying", "stream", x->stream, "consumer", x->durable,
                         "detail", nats_GetLastError(NULL), NULL);
            }
            bus__sleep_ms(errors < 10 ? 100 * errors : 1000);
            continue;
        }
        natsStatus s = natsSubscription_NextMsg(&raw[0], x->sub, 500);
        if (s == NATS_TIMEOUT) {
            continue;
        }
        if (s != NATS_OK) {
            if (errors++ == 0) {
                log_warn("subscription lost, subscribing again", "stream", x->stream, "consumer", x->durable,
                         "nats_status", natsStatus_GetText(s), NULL);
            }
            if (!x->durable || s == NATS_CONNECTION_CLOSED || s == NATS_INVALID_SUBSCRIPTION) {
                natsSubscription_Unsubscribe(x->sub);
                natsSubscription_Destroy(x->sub);
                x->sub = NULL;
            }
            bus__sleep_ms(errors < 10 ? 50 * errors : 500);
            continue;
        }
        errors = 0;
        int n = 1;
        while (n < x->batch && natsSubscription_NextMsg(&raw[n], x->sub, 0) == NATS_OK) {
            n++;
        }
        size_t k = 0;
        for (int i = 0; i < n; i++) {
            bus_in_msg *in = malloc(sizeof *in);
            if (!in) {
                /* a durable consumer's message comes back after its AckWait */
                natsMsg_Destroy(raw[i]);
                continue;
            }
            bus__in_msg(in, raw[i]);
            in->sub_ = x;
            if (!x->durable && in->stream_seq < x->next) {
                bus_in_free(in); /* seen before the subscription was made again */
                continue;
            }
            if (!x->durable) {
                x->next = in->stream_seq + 1;
            }
            batch[k++] = in;
        }
        if (k > 0) {
            x->fn(batch, k, x->ctx);
        }
    }
    free(raw);
    free(batch);
    return NULL;
}

ch_status bus_sub_start(bus *b, const bus_sub_spec *sp, bus_sub **out)
{
    *out = NULL;
    if (!b || !sp || !sp->stream || !sp->fn) {
        return CH_INVALID_ARGUMENT;
    }
    if (sp->durable) {
        bus_consumer_spec c = {
            .stream = sp->stream,
            .durable = sp->durable,
            .filter_subject = sp->filter_subject,
            .ack_wait_ms = sp->ack_wait_ms > 0 ? sp->ack_wait_ms : 10000,
            .max_ack_pending = 4096,
        };
        ch_status st = bus_ensure_consumer(b, &c);
        if (st != CH_OK) {
            return st;
        }
    }
    bus_sub *x = calloc(1, sizeof *x);
    if (!x) {
        return CH_NO_MEMORY;
    }
    atomic_init(&x->stop, false);
    x->b = b;
    x->stream = bus__strdup(sp->stream);
    x->durable = bus__strdup(sp->durable);
    x->filter = bus__strdup(sp->filter_subject);
    x->next = sp->start_seq ? sp->start_seq : 1;
    x->batch = sp->batch > 0 ? sp->batch : 256;
    if (x->batch > BUS_MAX_BATCH) {
        x->batch = BUS_MAX_BATCH;
    }
    x->fn = sp->fn;
    x->ctx = sp->ctx;
    if (!x->stream || (sp->durable && !x->durable) || (sp->filter_subject && !x->filter) ||
        pthread_create(&x->thread, NULL, bus__sub_main, x) != 0) {
        free(x->stream);
        free(x->durable);
        free(x->filter);
        free(x);
        return CH_NO_MEMORY;
    }
    *out = x;
    return CH_OK;
}

void bus_sub_request_stop(bus_sub *x)
{
    if (x) {
        atomic_store(&x->stop, true);
    }
}

void bus_sub_stop(bus_sub *x)
{
    if (!x) {
        return;
    }
    atomic_store(&x->stop, true);
    pthread_join(x->thread, NULL);
    if (x->sub) {
        /* a durable consumer outlives its subscriptions: drain, do not delete */
        if (x->durable) {
            natsSubscription_Drain(x->sub);
            natsSubscription_WaitForDrainCompletion(x->sub, 1000);
        } else {
            natsSubscription_Unsubscribe(x->sub);
        }
        natsSubscription_Destroy(x->sub);
    }
    free(x->stream);
    free(x->durable);
    free(x->filter);
    free(x);
}

ch_status bus_in_ack(bus_in_msg *m)
{
    natsStatus s = natsMsg_Ack(m->priv_, NULL);
    return s == NATS_OK ? CH_OK : bus__fail("ack failed", m->subject, s, 0);
}

ch_status bus_in_nak(bus_in_msg *m, int delay_ms)
{
    natsStatus s = natsMsg_NakWithDelay(m->priv_, delay_ms, NULL);
    return s == NATS_OK ? CH_OK : bus__fail("nak failed", m->subject, s, 0);
}

ch_status bus_in_term(bus_in_msg *m)
{
    natsStatus s = natsMsg_Term(m->priv_, NULL);
    return s == NATS_OK ? CH_OK : bus__fail("term failed", m->subject, s, 0);
}

ch_status bus_dead_letter(bus *b, bus_in_msg *m, const char *stream, const char *reason)
{
    const bus_sub *x = m->sub_;
    if (!stream) {
        stream = x ? x->stream : "";
    }
    ch_status st = bus__dead_letter_copy(b, m, stream, x ? x->durable : NULL, reason);
    return st == CH_OK ? bus_in_term(m) : st;
}

void bus_in_free(bus_in_msg *m)
{
    if (m) {
        natsMsg_Destroy(m->priv_);
        free(m);
    }
}

/* ---- pipes ---------------------------------------------------------------------- */

typedef struct bus_pipe_entry {
    natsMsg *msg; /* identity only: cnats owns it while in flight */
    void *token;
} bus_pipe_entry;

struct bus_pipe {
    bus *b;
    jsCtx *js;
    int timeout_ms;
    bus_pipe_fn fn;
    void *ctx;
    pthread_mutex_t mu; /* guards the ring */
    bus_pipe_entry *ring;
    size_t cap, head, n; /* entries head .. head+n-1 (mod cap) are in flight, in publish order */
};

/* Takes msg's entry out of the ring (usually the oldest); NULL token if none. */
static bool bus__pipe_take(bus_pipe *p, const natsMsg *msg, void **token)
{
    bool found = false;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++) {
        size_t k = (p->head + i) % p->cap;
        if (p->ring[k].msg != msg) {
            continue;
        }
        *token = p->ring[k].token;
        /* close the gap: entries before it move up one (an out-of-order ack is rare) */
        for (size_t j = i; j > 0; j--) {
            p->ring[(p->head + j) % p->cap] = p->ring[(p->head + j - 1) % p->cap];
        }
        p->head = (p->head + 1) % p->cap;
        p->n--;
        found = true;
        break;
    }
    pthread_mutex_unlock(&p->mu);
    return found;
}

static void bus__on_pipe_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *arg)
{
    (void)js;
    bus_pipe *p = arg;
    void *token = NULL;
    bus_pub_ack ack = {0};
    ch_status st = CH_OK;

    if (pae) {
        st = bus__status(pae->Err, pae->ErrCode);
        st = st == CH_OK ? CH_INTERNAL : st;
        /* "wrong last sequence: 1234": where the stream is, saving a question */
        const char *at = pae->ErrText ? strstr(pae->ErrText, "wrong last sequence: ") : NULL;
        if (st == CH_CONFLICT && at) {
            ack.conflict_last_seq = strtoull(at + strlen("wrong last sequence: "), NULL, 10);
        }
        if (st != CH_CONFLICT) { /* a lost compare-and-set is the writer's business */
            log_warn("publish failed", "subject", msg ? natsMsg_GetSubject(msg) : NULL, "nats_status",
                     natsStatus_GetText(pae->Err), "detail", pae->ErrText, NULL);
        }
    } else if (pa) {
        ack.seq = pa->Sequence;
        ack.duplicate = pa->Duplicate;
    }
    if (bus__pipe_take(p, msg, &token)) {
        p->fn(token, st, &ack, p->ctx);
    }
    natsMsg_Destroy(msg);
}

ch_status bus_pipe_create(bus *b, bus_pipe_fn fn, void *ctx, int timeout_ms, bus_pipe **out)
{
    *out = NULL;
    if (!b || !fn) {
        return CH_INVALID_ARGUMENT;
    }
    bus_pipe *p = calloc(1, sizeof *p);
    if (!p) {
        return CH_NO_MEMORY;
    }
    p->b = b;
    p->fn = fn;
    p->ctx = ctx;
    p->timeout_ms = timeout_ms > 0 ? timeout_ms : b->pipe_timeout_ms;
    p->cap = 1024;
    p->ring = calloc(p->cap, sizeof *p->ring);
    pthread_mutex_init(&p->mu, NULL);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = p->timeout_ms;
    jo.PublishAsync.MaxPending = 1 << 16;
    jo.PublishAsync.AckHandler = bus__on_pipe_ack;
    jo.PublishAsync.AckHandlerClosure = p;
    natsStatus s = p->ring ? natsConnection_JetStream(&p->js, b->nc, &jo) : NATS_NO_MEMORY;
    if (s != NATS_OK) {
        pthread_mutex_destroy(&p->mu);
        free(p->ring);
        free(p);
        return bus__fail("jetstream context failed", "pipe", s, 0);
    }
    *out = p;
    return CH_OK;
}

ch_status bus_pipe_publish(bus_pipe *p, const bus_out_msg *m, void *token)
{
    natsMsg *msg = NULL;
    bus_pub_ack none = {0};
    ch_status st = atomic_load(&p->b->up) ? bus__make_msg(&msg, m) : CH_UNAVAILABLE;

    if (st == CH_OK) {
        /* in the ring before the publish: its ack may come before this returns */
        pthread_mutex_lock(&p->mu);
        if (p->n == p->cap) {
            bus_pipe_entry *r = malloc(2 * p->cap * sizeof *r);
            if (r) {
                for (size_t i = 0; i < p->n; i++) {
                    r[i] = p->ring[(p->head + i) % p->cap];
                }
                free(p->ring);
                p->ring = r;
                p->head = 0;
                p->cap *= 2;
            }
        }
        st = p->n < p->cap ? CH_OK : CH_NO_MEMORY;
        if (st == CH_OK) {
            p->ring[(p->head + p->n) % p->cap] = (bus_pipe_entry){msg, token};
            p->n++;
        }
        pthread_mutex_unlock(&p->mu);
    }
    if (st == CH_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = m->msg_id;
        po.MaxWait = p->timeout_ms; /* the same for all: cnats appends it to its list */
        natsMsg *keep = msg;
        natsStatus s = js_PublishMsgAsync(p->js, &msg, &po);
        if (s != NATS_OK) {
            void *t = NULL;
            bus__pipe_take(p, keep, &t); /* not sent: no ack will come */
            st = bus__fail("publish failed", m->subject, s, 0);
        }
    }
    natsMsg_Destroy(msg); /* NULL when cnats took it */
    if (st != CH_OK) {
        p->fn(token, st, &none, p->ctx);
    }
    return st;
}

size_t bus_pipe_in_flight(bus_pipe *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->n;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void bus_pipe_destroy(bus_pipe *p, int wait_ms)
{
    if (!p) {
        return;
    }
    if (wait_ms > 0 && bus_pipe_in_flight(p) > 0) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = wait_ms;
        js_PublishAsyncComplete(p->js, &po);
    }
    /* what is still in flight is taken back, so no late ack finds the pipe
     * (cnats 3.4 crashes asking for an empty list: only when there is one) */
    natsMsgList pending = {0};
    if (bus_pipe_in_flight(p) > 0 && js_PublishAsyncGetPendingList(&pending, p->js) == NATS_OK) {
        natsMsgList_Destroy(&pending);
    }
    bus_pub_ack none = {0};
    pthread_mutex_lock(&p->mu);
    while (p->n > 0) {
        void *token = p->ring[p->head].token;
        p->head = (p->head + 1) % p->cap;
        p->n--;
        pthread_mutex_unlock(&p->mu);
        p->fn(token, CH_UNAVAILABLE, &none, p->ctx);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    jsCtx_Destroy(p->js);
    pthread_mutex_destroy(&p->mu);
    free(p->ring);
    free(p);
}

/* ---- reading back -------------------------------------------------------------- */

ch_status bus_get_seq(bus *b, const char *stream, uint64_t seq, bus_replay_fn fn, void *ctx)
{
    if (!b || !stream || !fn || seq == 0) {
        return CH_INVALID_ARGUMENT;
    }
    natsMsg *msg = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_GetMsg(&msg, b->js, stream, seq, NULL, &ec);
    if (s != NATS_OK) {
        if (s == NATS_NOT_FOUND || ec == JSNoMessageFoundErr) {
            return CH_NOT_FOUND;
        }
        return bus__fail("get message failed", stream, s, ec);
    }
    bus_in_msg in;
    memset(&in, 0, sizeof in);
    in.subject = natsMsg_GetSubject(msg);
    in.data = (const uint8_t *)natsMsg_GetData(msg);
    in.len = (size_t)natsMsg_GetDataLength(msg);
    in.priv_ = msg;
    in.deliveries = 1;
    in.stream_seq = seq;
    ch_status st = fn(&in, ctx);
    natsMsg_Destroy(msg);
    return st;
}

ch_status bus_purge_stream(bus *b, const char *stream)
{
    jsErrCode ec = 0;
    if (!b || !stream) {
        return CH_INVALID_ARGUMENT;
    }
    natsStatus s = js_PurgeStream(b->js, stream, NULL, &ec);
    return s == NATS_OK ? CH_OK : bus__fail("stream not purged", stream, s, ec);
}

ch_status bus_stream_info(bus *b, const char *stream, uint64_t *msgs, uint64_t *last_seq)
{
    if (!b || !stream) {
        return CH_INVALID_ARGUMENT;
    }
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_GetStreamInfo(&si, b->js, stream, NULL, &ec);
    if (s != NATS_OK) {
        if (s == NATS_NOT_FOUND || ec == JSStreamNotFoundErr) {
            return CH_NOT_FOUND;
        }
        return bus__fail("stream info failed", stream, s, ec);
    }
    if (msgs) {
        *msgs = si->State.Msgs;
    }
    if (last_seq) {
        *last_seq = si->State.LastSeq;
    }
    jsStreamInfo_Destroy(si);
    return CH_OK;
}

ch_status bus_replay(bus *b, const char *stream, const char *filter_subject, uint64_t start_seq,
                     bus_replay_fn fn, void *ctx, uint64_t *last_seq_out)
{
    if (!b || !stream || !fn) {
        return CH_INVALID_ARGUMENT;
    }
    if (start_seq == 0) {
        start_seq = 1;
    }
    uint64_t delivered_last = start_seq - 1;
    ch_status st = CH_OK;
    jsConsumerInfo *ci = NULL;
    natsSubscription *sub = NULL;
    natsStatus s;
    jsErrCode ec = 0;
    uint64_t end_seq = 0;

    st = bus_stream_info(b, stream, NULL, &end_seq);
    if (st != CH_OK || end_seq < start_seq) {
        goto cleanup;
    }
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.DeliverPolicy = js_DeliverByStartSequence;
    cc.OptStartSeq = start_seq;
    cc.AckPolicy = js_AckNone;
    cc.FilterSubject = filter_subject;
    cc.MaxDeliver = 1;
    cc.InactiveThreshold = 60LL * 1000000000LL;
    s = js_AddConsumer(&ci, b->js, stream, &cc, NULL, &ec);
    if (s != NATS_OK) {
        st = bus__fail("replay consumer failed", stream, s, ec);
        goto cleanup;
    }
    if (ci->NumPending == 0) {
        goto cleanup;
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Consumer = ci->Name;
    s = js_PullSubscribe(&sub, b->js, filter_subject ? filter_subject : ">", ci->Name, NULL, &so, &ec);
    if (s != NATS_OK) {
        st = bus__fail("replay subscribe failed", stream, s, ec);
        goto cleanup;
    }
    natsSubscription_SetPendingLimits(sub, b->max_pending_msgs, b->max_pending_bytes);
    int64_t last_progress = bus__now_ms();
    bool done = false;
    while (!done) {
        natsMsgList list = {0};
        ec = 0;
        s = natsSubscription_Fetch(&list, sub, BUS_REPLAY_BATCH, 1000, &ec);
        if (s == NATS_TIMEOUT) {
            natsMsgList_Destroy(&list);
            if (bus__now_ms() - last_progress > BUS_REPLAY_STALL_MS) {
                st = bus__fail("replay stalled", stream, s, ec);
                break;
            }
            continue;
        }
        if (s != NATS_OK) {
            natsMsgList_Destroy(&list);
            st = bus__fail("replay fetch failed", stream, s, ec);
            break;
        }
        last_progress = bus__now_ms();
        for (int i = 0; i < list.Count && !done; i++) {
            bus_in_msg in;
            bus__in_msg(&in, list.Msgs[i]);
            jsMsgMetaData *meta = NULL;
            uint64_t pending = 1;
            if (natsMsg_GetMetaData(&meta, list.Msgs[i]) == NATS_OK) {
                pending = meta->NumPending;
                jsMsgMetaData_Destroy(meta);
            }
            if (in.stream_seq > end_seq) {
                done = true; /* published after the call started */
                break;
            }
            st = fn(&in, ctx);
            if (st != CH_OK) {
                done = true;
                break;
            }
            delivered_last = in.stream_seq;
            if (in.stream_seq >= end_seq || pending == 0) {
                done = true;
            }
        }
        natsMsgList_Destroy(&list);
    }
cleanup:
    if (sub) {
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
    if (ci) {
        js_DeleteConsumer(b->js, stream, ci->Name, NULL, NULL);
        jsConsumerInfo_Destroy(ci);
    }
    if (last_seq_out) {
        *last_seq_out = delivered_last;
    }
    return st;
}
