/* bus_sub.c: incoming messages: subscriptions that hand over what durable
 * push consumers and followers receive, a batch at a time, and settling
 * what they handed over (ack, nak, term, dead-letter, free).
 *
 * Notes on choices:
 * - Acks (bus_in_ack) use natsMsg_Ack (no wait for the server's
 *   confirmation). An ack lost in a disconnect means one redelivery after
 *   AckWait, which idempotent receivers absorb; AckSync would cost a round
 *   trip per message. */
#include "bus_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

/* ---- incoming messages ------------------------------------------------------- */

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

void bus__in_msg(bus_in_msg *in, natsMsg *msg)
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
        in->pending = meta->NumPending;
        jsMsgMetaData_Destroy(meta);
    }
}

/* ---- subscriptions ----------------------------------------------------------- */

struct bus_sub {
    bus *b;
    pthread_t thread;
    atomic_bool stop;
    natsSubscription *sub;
    char *stream;
    char *durable; /* NULL: a follower */
    char *filter;
    uint64_t next;           /* a follower's first sequence not handed over yet */
    _Atomic uint64_t rewind; /* a follower: hand over again from here (0: no) */
    int batch;
    bus_batch_fn fn;
    void *ctx;
};

static char *bus__strdup(const char *s)
{
    return s ? strdup(s) : NULL;
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
        uint64_t rewind = atomic_exchange(&x->rewind, 0);
        if (rewind && !x->durable && rewind < x->next) {
            if (x->sub) {
                natsSubscription_Unsubscribe(x->sub);
                natsSubscription_Destroy(x->sub);
                x->sub = NULL;
            }
            x->next = rewind; /* the subscription is made again from there */
        }
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
    atomic_init(&x->rewind, 0);
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

void bus_sub_rewind(bus_sub *x, uint64_t seq)
{
    if (!x || seq == 0) {
        return;
    }
    uint64_t cur = atomic_load(&x->rewind);
    while ((cur == 0 || seq < cur) && !atomic_compare_exchange_weak(&x->rewind, &cur, seq)) {
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
        /* A durable consumer outlives its subscriptions (the unsubscribe
         * does not delete what this one did not create). What arrived and
         * was never handed over goes back at once, for another replica,
         * rather than after its AckWait. */
        if (x->durable) {
            natsMsg *m = NULL;
            while (natsSubscription_NextMsg(&m, x->sub, 0) == NATS_OK) {
                natsMsg_Nak(m, NULL);
                natsMsg_Destroy(m);
            }
        }
        natsSubscription_Unsubscribe(x->sub);
        natsSubscription_Destroy(x->sub);
    }
    free(x->stream);
    free(x->durable);
    free(x->filter);
    free(x);
}

/* ---- settling ---------------------------------------------------------------- */

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
