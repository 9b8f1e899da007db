/* event_bus.c: encoding a domain event and publishing it with its headers. */
#include "event_bus.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "utf8.h"

/* The producers' streams, by the aggregate that starts their events' names. */
static const struct {
    const char *aggregate; /* "order" for order.created */
    const char *stream;
} event_streams[] = {
    {"order", EVENT_STREAM_ORDER},
    {"inventory", EVENT_STREAM_INVENTORY},
    {"payment", EVENT_STREAM_PAYMENT},
    {"notification", EVENT_STREAM_NOTIFICATION},
};

/* The stream of the aggregate name[0..len). */
static const char *event__stream_of_aggregate(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof event_streams / sizeof event_streams[0]; i++)
        if (strlen(event_streams[i].aggregate) == len && strncmp(name, event_streams[i].aggregate, len) == 0)
            return event_streams[i].stream;
    return NULL;
}

const char *event_stream_of(event_type t)
{
    const char *name = event_type_name(t);
    const char *dot = strchr(name, '.');
    return dot ? event__stream_of_aggregate(name, (size_t)(dot - name)) : NULL;
}

const char *event_stream_of_subject(const char *subject)
{
    static const char prefix[] = "events.";
    if (!subject || strncmp(subject, prefix, sizeof prefix - 1) != 0)
        return NULL;
    const char *agg = subject + sizeof prefix - 1;
    const char *dot = strchr(agg, '.');
    return event__stream_of_aggregate(agg, dot ? (size_t)(dot - agg) : strlen(agg));
}

/* The streams an earlier choreo kept (one EVENTS stream for every service,
 * and the INVENTORY and PAYMENT ledgers): their events would be misread, so
 * start-up refuses a store that holds them. */
static const char *const event_old_streams[] = {"EVENTS", "INVENTORY", "PAYMENT"};

ch_status event_bus_ensure_streams(bus *b, int replicas, int64_t max_age_ms)
{
    for (size_t i = 0; i < sizeof event_old_streams / sizeof event_old_streams[0]; i++) {
        ch_status st = bus_stream_info(b, event_old_streams[i], NULL, NULL);
        if (st == CH_OK) {
            log_error(
                "this NATS store was written by an earlier choreo (one stream EVENTS for every service, and "
                "the INVENTORY and PAYMENT ledgers); this version keeps each service's events in a stream "
                "of its own and does not read the old ones. Start from an empty store (locally: make down "
                "&& rm -rf .data/nats; in a cluster: delete the streams EVENTS, INVENTORY, PAYMENT and "
                "DEADLETTER, e.g. nats stream rm), or keep running the earlier version",
                "old_stream", event_old_streams[i], NULL);
            return CH_FAILED_PRECONDITION;
        }
        if (st != CH_NOT_FOUND)
            return st;
    }
    for (size_t i = 0; i < sizeof event_streams / sizeof event_streams[0]; i++) {
        char subjects[64];
        snprintf(subjects, sizeof subjects, "events.%s.>", event_streams[i].aggregate);
        bus_stream_spec s = {
            .name = event_streams[i].stream,
            .subjects = {subjects},
            .storage = BUS_STORAGE_FILE,
            .replicas = replicas,
            .max_msg_size = EVENT_MAX_BYTES,
            .max_age_ms = max_age_ms,
        };
        ch_status st = bus_ensure_stream(b, &s);
        if (st != CH_OK)
            return st;
    }
    return bus_ensure_deadletter_stream(b, replicas);
}

/* ---- an order's events, from every stream ---- */

typedef struct event_read_item {
    int64_t at;    /* occurred_at */
    size_t stream; /* index in event_streams */
    uint64_t seq;
    uint8_t *data;
    size_t len;
} event_read_item;

typedef struct event_read_ctx {
    const char *order_id;
    size_t stream;
    event_read_item *items;
    size_t n, cap;
    choreo_events_v1_Envelope env;
} event_read_ctx;

static ch_status event__read_one(const bus_in_msg *m, void *arg)
{
    event_read_ctx *rc = arg;
    if (rc->n == rc->cap)
        return CH_RESOURCE_EXHAUSTED; /* the first cap of this stream */
    if (event_decode(m->data, m->len, &rc->env, NULL, 0) != CH_OK ||
        strcmp(rc->env.order_id, rc->order_id) != 0)
        return CH_OK;
    uint8_t *copy = malloc(m->len);
    if (!copy)
        return CH_NO_MEMORY;
    memcpy(copy, m->data, m->len);
    rc->items[rc->n++] =
        (event_read_item){rc->env.occurred_at_unix_ns, rc->stream, m->stream_seq, copy, m->len};
    return CH_OK;
}

static int event__read_cmp(const void *a, const void *b)
{
    const event_read_item *x = a, *y = b;
    if (x->at != y->at)
        return x->at < y->at ? -1 : 1;
    if (x->stream != y->stream)
        return x->stream < y->stream ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

ch_status event_read_order(bus *b, const char *order_id, size_t max, event_each_fn fn, void *ctx)
{
    size_t per_stream = max ? max : 256;
    size_t n_streams = sizeof event_streams / sizeof event_streams[0];
    char filter[EVENT_SUBJECT_MAX];
    ch_status st = CH_OK;

    if (!utf8_valid_token(order_id, EVENT_ORDER_ID_MAX))
        return CH_INVALID_ARGUMENT;
    event_read_ctx *rc = calloc(1, sizeof *rc);
    if (rc)
        rc->items = calloc(per_stream * n_streams, sizeof *rc->items);
    if (!rc || !rc->items) {
        free(rc);
        return CH_NO_MEMORY;
    }
    rc->order_id = order_id;
    for (size_t i = 0; i < n_streams && st == CH_OK; i++) {
        rc->stream = i;
        rc->cap = rc->n + per_stream;
        /* a consumer's filter must lie within its stream's subjects */
        snprintf(filter, sizeof filter, "events.%s.*.%s", event_streams[i].aggregate, order_id);
        st = bus_replay(b, event_streams[i].stream, filter, 1, event__read_one, rc, NULL);
        if (st == CH_RESOURCE_EXHAUSTED || st == CH_NOT_FOUND)
            st = CH_OK; /* its first per_stream; or a stream not made yet */
    }
    qsort(rc->items, rc->n, sizeof *rc->items, event__read_cmp);
    size_t n = rc->n < per_stream ? rc->n : per_stream;
    for (size_t i = 0; i < n && st == CH_OK; i++) {
        const event_read_item *it = &rc->items[i];
        st = event_decode(it->data, it->len, &rc->env, NULL, 0);
        if (st == CH_OK)
            st = fn(&rc->env, event_streams[it->stream].stream, it->seq, ctx);
    }
    if (st == CH_OK && rc->n == 0)
        st = CH_NOT_FOUND;
    for (size_t i = 0; i < rc->n; i++)
        free(rc->items[i].data);
    free(rc->items);
    free(rc);
    return st;
}

ch_status event_prepare(event_out *o, const choreo_events_v1_Envelope *e)
{
    char reason[256] = "";
    size_t len = 0;
    event_type t;
    ch_status st = event_encode(e, o->data, sizeof o->data, &len, reason, sizeof reason);
    if (st == CH_OK) {
        st = event_type_of(e, &t);
    }
    if (st == CH_OK) {
        st = event_subject(o->subject, sizeof o->subject, t, event_key(e));
    }
    if (st == CH_OK && event_type_has_order(t)) {
        st = event_msg_id(o->msg_id, sizeof o->msg_id, t, e->order_id);
    } else if (st == CH_OK) {
        /* a SKU's or customer's record: each one its own */
        int n = snprintf(o->msg_id, sizeof o->msg_id, "%s:%s:%s", event_key(e), e->type, e->event_id);
        st = n > 0 && (size_t)n < sizeof o->msg_id ? CH_OK : CH_INVALID_ARGUMENT;
    }
    if (st == CH_OK && t == EVENT_NOTIFICATION_SENT) {
        /* one order gets a notification of each kind: keep both */
        size_t n = strlen(o->msg_id);
        if (snprintf(o->msg_id + n, sizeof o->msg_id - n, ":%s", e->payload.notification_sent.kind) >=
            (int)(sizeof o->msg_id - n)) {
            st = CH_INVALID_ARGUMENT;
        }
    }
    if (st != CH_OK) {
        log_error("event not published: invalid", "type", e->type, "order_id", e->order_id, "event_id",
                  e->event_id, "reason", reason[0] ? reason : ch_status_str(st), NULL);
        return st;
    }
    memset(&o->m, 0, sizeof o->m);
    o->m.subject = o->subject;
    o->m.data = o->data;
    o->m.len = len;
    o->m.msg_id = o->msg_id;
    o->m.headers[o->m.nheaders++] = (bus_header){EVENT_HDR_TYPE, e->type};
    if (e->traceparent[0]) {
        o->m.headers[o->m.nheaders++] = (bus_header){EVENT_HDR_TRACEPARENT, e->traceparent};
    }
    return CH_OK;
}

void event_log_published(const choreo_events_v1_Envelope *e, ch_status st, const char *seq,
                         const char *outcome)
{
    char trace_id[33];
    event_trace_id(e->traceparent, trace_id);
    if (st == CH_OK) {
        log_info("event published", "type", e->type, "order_id", e->order_id, "event_id", e->event_id,
                 "causation_id", e->causation_id, "trace_id", trace_id, "seq", seq, "outcome", outcome, NULL);
    } else {
        log_warn("event publish failed", "type", e->type, "order_id", e->order_id, "event_id", e->event_id,
                 "causation_id", e->causation_id, "trace_id", trace_id, "status", ch_status_str(st), NULL);
    }
}

ch_status event_publish(bus *b, const choreo_events_v1_Envelope *e, int timeout_ms, bus_pub_ack *ack)
{
    event_out o;
    bus_pub_ack local = {0};
    char seq[32];
    ch_status st = event_prepare(&o, e);
    if (st != CH_OK) {
        return st;
    }
    st = bus_publish(b, &o.m, timeout_ms, &local);
    if (ack) {
        *ack = local;
    }
    snprintf(seq, sizeof seq, "%" PRIu64, local.seq);
    event_log_published(e, st, seq, local.duplicate ? "duplicate" : "stored");
    return st;
}

ch_status event_publish_async(bus *b, const choreo_events_v1_Envelope *e)
{
    event_out o;
    ch_status st = event_prepare(&o, e);
    if (st != CH_OK) {
        return st;
    }
    return bus_publish_async(b, &o.m);
}
