/* bus_pub.c: publishing: messages built with their headers and
 * expectations (compare-and-set on the stream), published synchronously,
 * asynchronously in batches (bus_publish_async and its wait), or through
 * pipes whose PubAcks come back in publish order.
 *
 * Notes on choices:
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

/* ---- messages ---------------------------------------------------------------- */

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
    ch_status st = bus__make_msg(&msg, m);
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

/* ---- pipes ------------------------------------------------------------------- */

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
