/* event_worker.c: one durable consumer per event type, decoding and
 * dispatching to the service's typed handler. */
#include "event_worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event_bus.h"
#include "log.h"

/* The fields of a staged event's log line, kept until its verdict. */
typedef struct event_staged_log {
    char type[40];
    char order_id[EVENT_ORDER_ID_MAX + 1];
    char event_id[40];
    char causation_id[88];
    char trace_id[33];
    char deliveries[24];
} event_staged_log;

struct event_worker {
    event_worker_spec spec;
    char service[32];
    char durable[64];
    char filter[EVENT_SUBJECT_MAX];
    char type_name[40];
    bus_worker *worker;
    choreo_events_v1_Envelope env; /* reused: one event at a time per worker */
    event_staged_log *staged;      /* what the log line of each staged event needs, in order */
    size_t nstaged, staged_cap;
};

static const char *verdict_name(bus_verdict v)
{
    switch (v) {
    case BUS_ACK: return "ack";
    case BUS_RETRY: return "retry";
    default: return "dead";
    }
}

static void log_handled(const event_staged_log *x, bus_verdict v, const char *reason)
{
    log_at(v == BUS_ACK ? LOG_INFO : LOG_WARN, "event handled", "type", x->type, "order_id", x->order_id,
           "event_id", x->event_id, "causation_id", x->causation_id, "trace_id", x->trace_id, "deliveries",
           x->deliveries, "outcome", verdict_name(v), "reason", reason && reason[0] ? reason : NULL, NULL);
}

static void log_fields(event_staged_log *x, const choreo_events_v1_Envelope *e, const bus_in_msg *m)
{
    snprintf(x->type, sizeof x->type, "%s", e->type);
    snprintf(x->order_id, sizeof x->order_id, "%s", e->order_id);
    snprintf(x->event_id, sizeof x->event_id, "%s", e->event_id);
    snprintf(x->causation_id, sizeof x->causation_id, "%s", e->causation_id);
    event_trace_id(e->traceparent, x->trace_id);
    snprintf(x->deliveries, sizeof x->deliveries, "%llu", (unsigned long long)m->deliveries);
}

/* The bus worker's flush: the service decides the staged events, then each
 * gets its log line. */
static void on_flush(bus_staged *items, size_t n, void *arg)
{
    event_worker *w = arg;

    w->spec.flush(items, n, w->spec.ctx);
    for (size_t i = 0; i < n && i < w->nstaged; i++)
        log_handled(&w->staged[i], items[i].verdict, items[i].reason);
    w->nstaged = 0;
}

static bus_verdict on_message(const bus_in_msg *m, void *arg, char *reason, size_t reason_cap)
{
    event_worker *w = arg;
    choreo_events_v1_Envelope *e = &w->env;
    event_staged_log x;
    event_type t;

    if (event_decode(m->data, m->len, e, reason, reason_cap) != CH_OK) {
        log_warn("event handled", "consumer", w->durable, "subject", m->subject, "outcome", "dead", "reason",
                 reason, NULL);
        return BUS_DEAD;
    }
    /* The subject routed it here; the envelope must agree with it. */
    if (event_type_of(e, &t) != CH_OK || t != w->spec.type) {
        snprintf(reason, reason_cap, "event type %s does not match consumer of %s", e->type, w->type_name);
        log_warn("event handled", "consumer", w->durable, "type", e->type, "order_id", e->order_id,
                 "event_id", e->event_id, "outcome", "dead", "reason", reason, NULL);
        return BUS_DEAD;
    }
    reason[0] = '\0';
    /* without a handler every event waits for the batch's flush */
    bus_verdict v = w->spec.handler ? w->spec.handler(e, m, w->spec.ctx, reason, reason_cap) : BUS_STAGED;
    if (v == BUS_STAGED && w->nstaged < w->staged_cap) {
        log_fields(&w->staged[w->nstaged++], e, m); /* logged with its verdict, after the flush */
        return v;
    }
    if (v == BUS_STAGED) {
        v = BUS_RETRY; /* cannot happen: room for a whole batch */
        snprintf(reason, reason_cap, "staged beyond the batch");
    }
    log_fields(&x, e, m);
    log_handled(&x, v, reason);
    return v;
}

ch_status event_worker_start(bus *b, const event_worker_spec *spec, event_worker **out)
{
    event_worker *w = calloc(1, sizeof *w);
    ch_status st;
    char *p;

    if (!spec->handler && !spec->flush) {
        free(w);
        return CH_INVALID_ARGUMENT; /* nothing would handle the events */
    }
    if (!w)
        return CH_NO_MEMORY;
    w->spec = *spec;
    snprintf(w->service, sizeof w->service, "%s", spec->service);
    w->spec.service = w->service;
    snprintf(w->type_name, sizeof w->type_name, "%s", event_type_name(spec->type));
    /* durable names cannot hold '.': "inventory-order_created" */
    snprintf(w->durable, sizeof w->durable, "%s-%s", spec->service, w->type_name);
    while ((p = strchr(w->durable, '.')))
        *p = '_';
    st = event_subject(w->filter, sizeof w->filter, spec->type, NULL);
    if (st != CH_OK)
        goto fail;

    int max_deliver = spec->max_deliver > 0 ? spec->max_deliver : 8;
    int batch = spec->batch > 0 ? spec->batch : 128;
    if (batch > BUS_MAX_BATCH)
        batch = BUS_MAX_BATCH;
    if (spec->flush) {
        w->staged = calloc((size_t)batch, sizeof *w->staged);
        w->staged_cap = (size_t)batch;
        if (!w->staged) {
            st = CH_NO_MEMORY;
            goto fail;
        }
    }
    bus_consumer_spec c = {
        .stream = event_stream_of(spec->type),
        .durable = w->durable,
        .filter_subject = w->filter,
        .ack_wait_ms = spec->ack_wait_ms > 0 ? spec->ack_wait_ms : 10000,
        .max_deliver = 0, /* the worker dead-letters at max_deliver; the server must not stop first */
        .max_ack_pending = 4096,
    };
    st = bus_ensure_consumer(b, &c);
    if (st != CH_OK)
        goto fail;
    bus_worker_spec ws = {
        .stream = event_stream_of(spec->type),
        .durable = w->durable,
        .filter_subject = w->filter,
        .batch = batch,
        .handler = on_message,
        .flush = spec->flush ? on_flush : NULL,
        .ctx = w,
        .max_deliver = max_deliver,
        .backoff_ms = {50, 200, 500, 1000, 2000},
        .nbackoff = 5,
        .name = w->durable,
    };
    st = bus_worker_start(b, &ws, &w->worker);
    if (st != CH_OK)
        goto fail;
    *out = w;
    return CH_OK;

fail:
    log_error("event worker not started", "consumer", w->durable, "status", ch_status_str(st), NULL);
    free(w->staged);
    free(w);
    return st;
}

void event_workers_stop(event_worker **ws, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ws[i])
            bus_worker_request_stop(ws[i]->worker);
    for (size_t i = 0; i < n; i++) {
        event_worker_stop(ws[i]);
        ws[i] = NULL;
    }
}

void event_worker_stop(event_worker *w)
{
    if (!w)
        return;
    bus_worker_stop(w->worker);
    free(w->staged);
    free(w);
}
