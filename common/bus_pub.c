/* bus_pub.c: publishing: messages built with their headers and
 * expectations (compare-and-set on the stream), published synchronously,
 * asynchronously in batches (bus_publish_async and its wait), or through
 * pipes whose PubAcks come back in publish order.
 *
 * Notes on choices:
 * - Pipes do not use cnats' async publish: see "pipes" below.
 * - Async publishes are tracked with our own counters in the AckHandler (not
 *   ErrHandler + PublishAsyncComplete, whose ordering versus the error
 *   callback is not documented), each with a MaxWait so none stays pending.
 * - One MaxWait per JetStream context. cnats 3.4 keeps every async publish
 *   of the last MaxWait in a list sorted by deadline, freed only when the
 *   deadline passes. A publish whose deadline is the latest goes to the
 *   tail; any other walks the list from its head. With a shorter MaxWait
 *   for some publishes than for others, that walk took a third of the
 *   orders service's CPU at ~2,000 orders/s. */
#include "bus_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* The time ms from now on clock, for a timed wait. */
static struct timespec bus__deadline(clockid_t clock, int ms)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* ---- messages ---------------------------------------------------------------- */

static ch_status bus__make_msg(natsMsg **out, const bus_out_msg *m, const char *reply)
{
    if (!m || !m->subject || (m->len > 0 && !m->data) || m->len > INT32_MAX || m->nheaders < 0 ||
        m->nheaders > BUS_MAX_HEADERS) {
        return CH_INVALID_ARGUMENT;
    }
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, m->subject, reply, m->data, (int)m->len);
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

/* ---- synchronous and batched ------------------------------------------------- */

ch_status bus__publish_msg(bus *b, natsMsg *msg, const char *msg_id, int timeout_ms, bus_pub_ack *ack)
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
    ch_status st = bus__make_msg(&msg, m, NULL);
    if (st != CH_OK) {
        return st;
    }
    st = bus__publish_msg(b, msg, m->msg_id, timeout_ms, ack);
    natsMsg_Destroy(msg);
    return st;
}

void bus__on_async_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *arg)
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
    ch_status st = bus__make_msg(&msg, m, NULL);
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
    struct timespec dl = bus__deadline(CLOCK_REALTIME, timeout_ms);
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

/* ---- pipes ------------------------------------------------------------------- */

/* A pipe publishes with plain core publishes whose reply subject is its own
 * inbox (<inbox>.<id>), and reads the PubAcks on one subscription of its
 * own, rather than through a JetStream context's async publish: cnats 3.4
 * tracks every async publish with a MaxWait in a list and a library timer
 * that fires once per publish's deadline and hands a dead "timeout" message
 * to the PubAck thread even when the PubAck came long before (two wake-ups
 * and four allocations per publish, measured in bench/README.md). Here the
 * in-flight publishes are a ring in publish order and one watchdog thread
 * looks at the oldest a few times per timeout. */

#define BUS_PIPE_WATCH_MIN_MS 20
#define BUS_PIPE_WATCH_MAX_MS 1000

typedef struct bus_pipe_entry {
    uint64_t id;      /* the reply subject's last token */
    int64_t deadline; /* ms, CLOCK_MONOTONIC */
    void *token;
} bus_pipe_entry;

struct bus_pipe {
    bus *b;
    int timeout_ms;
    bus_pipe_fn fn;
    void *ctx;
    natsSubscription *sub;
    char inbox[96]; /* "<inbox>." */
    size_t inbox_len;
    pthread_mutex_t mu; /* guards the ring, next_id, stopping, sub_done */
    pthread_cond_t cv;  /* the watchdog sleeps on it; destroy waits on it */
    bus_pipe_entry *ring;
    size_t cap, head, n; /* entries head .. head+n-1 (mod cap) are in flight, in publish order */
    uint64_t next_id;
    bool stopping;
    bool draining; /* destroy waits for the ring to empty (then it is signalled) */
    bool sub_done; /* the subscription's callbacks are over */
    pthread_t watchdog;
    bool watchdog_started;
};

/* Takes the i-th entry in flight (0: the oldest) out of the ring and
 * returns its token (p->mu held). */
static void *bus__pipe_remove(bus_pipe *p, size_t i)
{
    void *token = p->ring[(p->head + i) % p->cap].token;
    /* close the gap: entries before it move up one (an out-of-order ack is rare) */
    for (size_t j = i; j > 0; j--) {
        p->ring[(p->head + j) % p->cap] = p->ring[(p->head + j - 1) % p->cap];
    }
    p->head = (p->head + 1) % p->cap;
    p->n--;
    if (p->n == 0 && p->draining) {
        pthread_cond_broadcast(&p->cv); /* destroy waits for an empty ring */
    }
    return token;
}

/* Takes entry id out of the ring (usually the oldest): its token, or false
 * when it is not there (timed out before, or not ours). */
static bool bus__pipe_take(bus_pipe *p, uint64_t id, void **token)
{
    bool found = false;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n && !found; i++) {
        if (p->ring[(p->head + i) % p->cap].id == id) {
            *token = bus__pipe_remove(p, i);
            found = true;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return found;
}

/* Where the value of "key" starts in a PubAck's flat JSON (nats-server
 * writes it by hand: {"stream":"S", "seq":9,"duplicate": true}), or NULL. */
static const char *bus__json_value(const char *json, const char *key)
{
    /* the key is the one followed by a colon ("seq" may also be a stream's name) */
    for (const char *at = strstr(json, key); at; at = strstr(at + 1, key)) {
        const char *colon = at + strlen(key) + strspn(at + strlen(key), " \t");
        if (*colon == ':') {
            return colon + 1 + strspn(colon + 1, " \t");
        }
    }
    return NULL;
}

/* The number that is the value of "key", or 0. */
static uint64_t bus__json_u64(const char *json, const char *key)
{
    const char *v = bus__json_value(json, key);
    return v ? strtoull(v, NULL, 10) : 0;
}

/* Reads a PubAck: {"stream":"S","seq":N[,"duplicate":true]}, or
 * {"error":{"code":C,"err_code":E,"description":"..."}}, or a status
 * message (503: no stream captures the subject). */
static ch_status bus__pub_ack_parse(natsMsg *msg, bus_pub_ack *ack, char *why, size_t why_cap)
{
    const char *status = NULL;
    char json[512];
    int len = natsMsg_GetDataLength(msg);

    why[0] = '\0';
    if (natsMsg_IsNoResponders(msg)) {
        snprintf(why, why_cap, "no stream captures the subject");
        return CH_UNAVAILABLE;
    }
    if (len == 0 && natsMsgHeader_Get(msg, "Status", &status) == NATS_OK && status) {
        snprintf(why, why_cap, "status %s instead of a PubAck", status);
        return CH_INTERNAL;
    }
    if (len <= 0 || (size_t)len >= sizeof json) {
        snprintf(why, why_cap, "unreadable PubAck (%d bytes)", len);
        return CH_INTERNAL;
    }
    memcpy(json, natsMsg_GetData(msg), (size_t)len);
    json[len] = '\0';
    if (strstr(json, "\"error\"")) {
        jsErrCode ec = (jsErrCode)bus__json_u64(json, "\"err_code\"");
        const char *d = bus__json_value(json, "\"description\"");
        snprintf(why, why_cap, "%.200s", d && *d == '"' ? d + 1 : json);
        char *q = strchr(why, '"');
        if (q) {
            *q = '\0';
        }
        ch_status st = bus__status(NATS_ERR, ec);
        st = st == CH_OK ? CH_INTERNAL : st;
        /* "wrong last sequence: 1234": where the stream is, saving a question */
        const char *at = strstr(why, "wrong last sequence: ");
        if (st == CH_CONFLICT && at) {
            ack->conflict_last_seq = strtoull(at + strlen("wrong last sequence: "), NULL, 10);
        }
        return st;
    }
    ack->seq = bus__json_u64(json, "\"seq\"");
    const char *dup = bus__json_value(json, "\"duplicate\"");
    ack->duplicate = dup && strncmp(dup, "true", 4) == 0;
    if (ack->seq == 0) {
        snprintf(why, why_cap, "PubAck without a sequence: %.200s", json);
        return CH_INTERNAL;
    }
    return CH_OK;
}

/* The pipe's subscription (its cnats thread): one PubAck. */
static void bus__on_pipe_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    bus_pipe *p = closure;
    const char *subject = natsMsg_GetSubject(msg);
    void *token = NULL;
    bus_pub_ack ack = {0};
    char why[256];

    if (strncmp(subject, p->inbox, p->inbox_len) == 0 &&
        bus__pipe_take(p, strtoull(subject + p->inbox_len, NULL, 10), &token)) {
        ch_status st = bus__pub_ack_parse(msg, &ack, why, sizeof why);
        if (st != CH_OK && st != CH_CONFLICT) { /* a lost compare-and-set is the writer's business */
            log_warn("publish failed", "detail", why, "status", ch_status_str(st), NULL);
        }
        p->fn(token, st, &ack, p->ctx);
    }
    natsMsg_Destroy(msg);
}

/* The subscription's callbacks are over (cnats calls it after the last). */
static void bus__on_pipe_sub_done(void *closure)
{
    bus_pipe *p = closure;
    pthread_mutex_lock(&p->mu);
    p->sub_done = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* Reports the publishes whose PubAck is overdue, oldest first: CH_TIMEOUT. */
static void *bus__pipe_watchdog(void *arg)
{
    bus_pipe *p = arg;
    int every = p->timeout_ms / 4;
    every = every < BUS_PIPE_WATCH_MIN_MS ? BUS_PIPE_WATCH_MIN_MS : every;
    every = every > BUS_PIPE_WATCH_MAX_MS ? BUS_PIPE_WATCH_MAX_MS : every;

    pthread_mutex_lock(&p->mu);
    while (!p->stopping) {
        struct timespec until = bus__deadline(CLOCK_MONOTONIC, every);
        pthread_cond_timedwait(&p->cv, &p->mu, &until);
        int64_t now = bus__now_ms();
        while (!p->stopping && p->n > 0 && p->ring[p->head].deadline <= now) {
            void *token = bus__pipe_remove(p, 0);
            pthread_mutex_unlock(&p->mu);
            bus_pub_ack none = {0};
            p->fn(token, CH_TIMEOUT, &none, p->ctx);
            pthread_mutex_lock(&p->mu);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
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
    p->next_id = 1;
    p->ring = calloc(p->cap, sizeof *p->ring);
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);

    natsInbox *inbox = NULL;
    natsStatus s = p->ring ? natsInbox_Create(&inbox) : NATS_NO_MEMORY;
    if (s == NATS_OK) {
        int n = snprintf(p->inbox, sizeof p->inbox, "%s.", (const char *)inbox);
        p->inbox_len = (size_t)n;
        s = n > 0 && (size_t)n < sizeof p->inbox - 1 ? NATS_OK : NATS_ERR;
    }
    natsInbox_Destroy(inbox);
    char filter[sizeof p->inbox + 1];
    snprintf(filter, sizeof filter, "%s*", p->inbox);
    if (s == NATS_OK) {
        s = natsConnection_Subscribe(&p->sub, b->nc, filter, bus__on_pipe_reply, p);
    }
    if (s == NATS_OK) {
        s = natsSubscription_SetPendingLimits(p->sub, -1, -1); /* bounded by the ring */
    }
    if (s == NATS_OK) {
        s = natsSubscription_SetOnCompleteCB(p->sub, bus__on_pipe_sub_done, p);
    }
    if (s == NATS_OK) {
        s = pthread_create(&p->watchdog, NULL, bus__pipe_watchdog, p) == 0 ? NATS_OK : NATS_NO_MEMORY;
        p->watchdog_started = s == NATS_OK;
    }
    if (s != NATS_OK) {
        ch_status st = bus__fail("pipe not created", filter, s, 0);
        bus_pipe_destroy(p, 0);
        return st;
    }
    *out = p;
    return CH_OK;
}

ch_status bus_pipe_publish(bus_pipe *p, const bus_out_msg *m, void *token)
{
    natsMsg *msg = NULL;
    bus_pub_ack none = {0};
    char reply[sizeof p->inbox + 24];
    uint64_t id = 0;
    ch_status st = atomic_load(&p->b->up) ? CH_OK : CH_UNAVAILABLE;

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
            id = p->next_id++;
            p->ring[(p->head + p->n) % p->cap] = (bus_pipe_entry){id, bus__now_ms() + p->timeout_ms, token};
            p->n++;
        }
        pthread_mutex_unlock(&p->mu);
    }
    if (st == CH_OK) {
        snprintf(reply, sizeof reply, "%s%" PRIu64, p->inbox, id);
        st = bus__make_msg(&msg, m, reply);
        natsStatus s = NATS_OK;
        if (st == CH_OK && m->msg_id) {
            s = natsMsgHeader_Set(msg, "Nats-Msg-Id", m->msg_id);
        }
        if (st == CH_OK && s == NATS_OK) {
            s = natsConnection_PublishMsg(p->b->nc, msg);
        }
        if (st == CH_OK && s != NATS_OK) {
            st = bus__fail("publish failed", m->subject, s, 0);
        }
        void *t = NULL;
        if (st != CH_OK && !bus__pipe_take(p, id, &t)) {
            st = CH_OK; /* the watchdog took it first and reported it */
        }
    }
    natsMsg_Destroy(msg);
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
    if (wait_ms > 0) {
        struct timespec until = bus__deadline(CLOCK_MONOTONIC, wait_ms);
        pthread_mutex_lock(&p->mu);
        p->draining = true;
        while (p->n > 0 && pthread_cond_timedwait(&p->cv, &p->mu, &until) == 0) {
        }
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (p->watchdog_started) {
        pthread_join(p->watchdog, NULL);
    }
    /* no callback runs after this: a late PubAck finds nothing (bounded:
     * a connection already closed has ended them, or never will) */
    if (p->sub) {
        natsSubscription_Unsubscribe(p->sub);
        struct timespec until = bus__deadline(CLOCK_MONOTONIC, 5000);
        pthread_mutex_lock(&p->mu);
        while (!p->sub_done && pthread_cond_timedwait(&p->cv, &p->mu, &until) == 0) {
        }
        pthread_mutex_unlock(&p->mu);
    }
    natsSubscription_Destroy(p->sub);
    bus_pub_ack none = {0};
    pthread_mutex_lock(&p->mu);
    while (p->n > 0) {
        void *token = bus__pipe_remove(p, 0);
        pthread_mutex_unlock(&p->mu);
        p->fn(token, CH_UNAVAILABLE, &none, p->ctx);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->ring);
    free(p);
}
