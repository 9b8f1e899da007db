/* event_bus.c: encoding a domain event and publishing it with its headers. */
#include "event_bus.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "event_worker.h"
#include "log.h"

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
            log_error("this NATS store was written by an earlier choreo (one stream EVENTS for every service, and "
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

ch_status event_publish_deferred(const bus_in_msg *m, const choreo_events_v1_Envelope *e)
{
    event_out o;
    ch_status st = event_prepare(&o, e);
    if (st != CH_OK) {
        return st;
    }
    st = bus_publish_deferred(m, &o.m);
    event_log_published(e, st, NULL, "sent");
    return st;
}

ch_status event_publish_cb(bus *b, const choreo_events_v1_Envelope *e, bus_pub_fn fn, void *arg)
{
    event_out o;
    ch_status st = event_prepare(&o, e);
    if (st != CH_OK) {
        return st;
    }
    st = bus_publish_cb(b, &o.m, fn, arg);
    event_log_published(e, st, NULL, "sent");
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
