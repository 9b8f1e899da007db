/* notifications_events.c: the notifications service's event adapter: order
 * events in, notification.sent out (the durable record), rebuild from it. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event_bus.h"
#include "log.h"
#include "notifications.h"

ch_status notifications_service_init(notifications_service *svc, const service_config *cfg)
{
    pthread_condattr_t ca;

    memset(svc, 0, sizeof *svc);
    svc->cfg = cfg;
    pthread_mutex_init(&svc->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* watchers wait with timeouts */
    pthread_cond_init(&svc->recorded, &ca);
    pthread_condattr_destroy(&ca);
    return notif_store_create(&svc->store);
}

void notifications_service_cleanup(notifications_service *svc)
{
    if (!svc->cfg)
        return; /* never initialised */
    notif_store_destroy(svc->store);
    svc->store = NULL;
    pthread_cond_destroy(&svc->recorded);
    pthread_mutex_destroy(&svc->mu);
}

/* Records n (already durable as notification.sent) and wakes the watchers.
 * *added is false when the store had (order, kind) already. */
static ch_status record(notifications_service *svc, const notification *n, bool *added)
{
    pthread_mutex_lock(&svc->mu);
    ch_status st = notif_store_add(svc->store, n, added);
    if (st == CH_OK && *added)
        pthread_cond_broadcast(&svc->recorded);
    pthread_mutex_unlock(&svc->mu);
    return st;
}

/* The core's input from an order.confirmed / order.cancelled envelope. */
static void input_from_envelope(const choreo_events_v1_Envelope *e, event_type t, notif_input *in)
{
    memset(in, 0, sizeof *in);
    in->order_id = e->order_id;
    if (t == EVENT_ORDER_CONFIRMED) {
        in->kind = NOTIF_ORDER_CONFIRMED;
        in->customer_id = e->payload.order_confirmed.customer_id;
        in->total_cents = e->payload.order_confirmed.total_cents;
    } else {
        in->kind = NOTIF_ORDER_CANCELLED;
        in->customer_id = e->payload.order_cancelled.customer_id;
        in->reason = e->payload.order_cancelled.reason;
    }
}

/* Handles order.confirmed and order.cancelled (worker threads, one per
 * type). The notification.sent event is the record: it is published
 * (deferred), "sent" (the log line), and the worker acks the incoming event
 * once it is stored; the follower then puts it in the store and wakes the
 * watchers. A failed publish or a crash before it is durable leads to
 * redelivery and a fresh attempt; after it, the store holds (order, kind)
 * and a redelivered event is only acked. */
static bus_verdict on_order_event(const choreo_events_v1_Envelope *e, const bus_in_msg *m, void *ctx,
                                  char *reason, size_t reason_cap)
{
    notifications_service *svc = ctx;
    choreo_events_v1_Envelope envelope; /* ~9 KB on the worker's stack: no malloc per event */
    choreo_events_v1_Envelope *out = &envelope;
    notif_input in;
    notification n;
    event_type t;
    char err[256];
    ch_status st;

    if (event_type_of(e, &t) != CH_OK || (t != EVENT_ORDER_CONFIRMED && t != EVENT_ORDER_CANCELLED)) {
        snprintf(reason, reason_cap, "not an order.confirmed or order.cancelled event");
        return BUS_DEAD;
    }
    input_from_envelope(e, t, &in);

    pthread_mutex_lock(&svc->mu);
    bool known = notif_store_find(svc->store, e->order_id, in.kind) != NULL;
    pthread_mutex_unlock(&svc->mu);
    if (known) {
        snprintf(reason, reason_cap, "already notified");
        return BUS_ACK;
    }

    st = event_init_caused(out, EVENT_NOTIFICATION_SENT, e, NOTIFICATIONS_PRODUCER);
    if (st != CH_OK) {
        snprintf(reason, reason_cap, "cannot make notification.sent: %s", ch_status_str(st));
        return BUS_DEAD;
    }
    in.sent_at_ms = out->occurred_at_unix_ns / 1000000;
    if (notif_build(&in, &n, err, sizeof err) != CH_OK) {
        snprintf(reason, reason_cap, "%s.%s",
                 t == EVENT_ORDER_CONFIRMED ? "order_confirmed" : "order_cancelled", err);
        return BUS_DEAD;
    }
    choreo_events_v1_NotificationSent *p = &out->payload.notification_sent;
    snprintf(p->customer_id, sizeof p->customer_id, "%s", n.customer_id);
    snprintf(p->kind, sizeof p->kind, "%s", notif_kind_name(n.kind));
    snprintf(p->notification_id, sizeof p->notification_id, "%s", n.id);
    snprintf(p->message, sizeof p->message, "%s", n.message);

    /* notification.sent is the record: the incoming event is acked once it is
     * stored, and the store gets it from the follower, which reads the stream
     * (so a failed publish is redelivered, never half-recorded). */
    st = event_publish_deferred(m, out);
    if (st != CH_OK) {
        snprintf(reason, reason_cap, "notification.sent not published: %s", ch_status_str(st));
        return st == CH_INVALID_ARGUMENT ? BUS_DEAD : BUS_RETRY;
    }
    log_info("notification sent", "notification_id", n.id, "order_id", n.order_id, "customer_id",
             n.customer_id, "kind", notif_kind_name(n.kind), "event_id", out->event_id, NULL);
    return BUS_ACK;
}

static ch_status follow_start(notifications_service *svc);
static void follow_stop(notifications_service *svc);

ch_status notifications_workers_start(notifications_service *svc)
{
    ch_status fst = follow_start(svc);
    if (fst != CH_OK)
        return fst;
    event_worker_spec spec = {
        .service = NOTIFICATIONS_PRODUCER,
        .type = EVENT_ORDER_CONFIRMED,
        .handler = on_order_event,
        .ctx = svc,
    };
    ch_status st = event_worker_start(svc->bus, &spec, &svc->on_confirmed);
    if (st != CH_OK)
        return st;
    spec.type = EVENT_ORDER_CANCELLED;
    return event_worker_start(svc->bus, &spec, &svc->on_cancelled);
}

void notifications_workers_stop(notifications_service *svc)
{
    event_worker *ws[] = {svc->on_confirmed, svc->on_cancelled};
    event_workers_stop(ws, 2);
    svc->on_confirmed = NULL;
    svc->on_cancelled = NULL;
    follow_stop(svc);
}

/* ---- rebuild ---- */

typedef struct rebuild_ctx {
    notifications_service *svc;
    uint64_t events, skipped;
    choreo_events_v1_Envelope env; /* big: kept off the stack */
} rebuild_ctx;

/* The notification a notification.sent event records. */
static ch_status notification_from_envelope(const choreo_events_v1_Envelope *env, notification *n, char *err,
                                            size_t errlen)
{
    const choreo_events_v1_NotificationSent *p = &env->payload.notification_sent;

    if (env->which_payload != choreo_events_v1_Envelope_notification_sent_tag) {
        snprintf(err, errlen, "not a notification.sent");
        return CH_INVALID_ARGUMENT;
    }
    memset(n, 0, sizeof *n);
    if (notif_kind_parse(p->kind, &n->kind) != CH_OK) {
        snprintf(err, errlen, "kind: unknown \"%.32s\"", p->kind);
        return CH_INVALID_ARGUMENT;
    }
    snprintf(n->id, sizeof n->id, "%s", p->notification_id);
    snprintf(n->order_id, sizeof n->order_id, "%s", env->order_id);
    snprintf(n->customer_id, sizeof n->customer_id, "%s", p->customer_id);
    snprintf(n->message, sizeof n->message, "%s", p->message);
    n->sent_at_ms = env->occurred_at_unix_ns / 1000000;
    return notif_validate(n, err, errlen);
}

static ch_status rebuild_one(const bus_in_msg *m, void *arg)
{
    rebuild_ctx *rc = arg;
    char reason[256] = "";
    notification n;
    bool added;

    rc->events++;
    if (event_decode(m->data, m->len, &rc->env, reason, sizeof reason) != CH_OK ||
        notification_from_envelope(&rc->env, &n, reason, sizeof reason) != CH_OK) {
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, m->stream_seq);
        log_warn("rebuild: event skipped", "subject", m->subject, "seq", seq, "reason", reason, NULL);
        rc->skipped++;
        return CH_OK;
    }
    ch_status st = notif_store_add(rc->svc->store, &n, &added);
    if (st != CH_OK)
        return st;
    if (!added)
        rc->skipped++; /* a second record of one (order, kind), e.g. past the dedup window */
    return CH_OK;
}

ch_status notifications_rebuild(notifications_service *svc, uint64_t *events_read)
{
    rebuild_ctx *rc = calloc(1, sizeof *rc);
    char filter[EVENT_SUBJECT_MAX];
    ch_status st;

    if (!rc)
        return CH_NO_MEMORY;
    rc->svc = svc;
    st = event_subject(filter, sizeof filter, EVENT_NOTIFICATION_SENT, NULL);
    if (st == CH_OK) {
        pthread_mutex_lock(&svc->mu);
        st = bus_replay(svc->bus, EVENT_STREAM, filter, 1, rebuild_one, rc, &svc->rebuilt_to);
        pthread_mutex_unlock(&svc->mu);
    }
    if (events_read)
        *events_read = rc->events;
    if (st == CH_OK) {
        char events[24], count[24], skipped[24];
        snprintf(events, sizeof events, "%" PRIu64, rc->events);
        snprintf(count, sizeof count, "%" PRIu64, notif_store_count(svc->store));
        snprintf(skipped, sizeof skipped, "%" PRIu64, rc->skipped);
        log_info("notifications rebuilt from the event stream", "events", events, "notifications", count,
                 "skipped", skipped, NULL);
    }
    free(rc);
    return st;
}

/* ---- following what other replicas record ---- */

static ch_status follow_one(const bus_in_msg *m, void *arg)
{
    rebuild_ctx *fc = arg;
    char reason[256] = "";
    notification n;
    bool added;

    if (event_decode(m->data, m->len, &fc->env, reason, sizeof reason) != CH_OK ||
        notification_from_envelope(&fc->env, &n, reason, sizeof reason) != CH_OK)
        return CH_OK; /* logged by whoever handled it; nothing to record */
    return record(fc->svc, &n, &added);
}

static ch_status follow_start(notifications_service *svc)
{
    char filter[EVENT_SUBJECT_MAX];
    rebuild_ctx *fc = calloc(1, sizeof *fc);

    if (!fc)
        return CH_NO_MEMORY;
    fc->svc = svc;
    svc->follow_ctx = fc;
    ch_status st = event_subject(filter, sizeof filter, EVENT_NOTIFICATION_SENT, NULL);
    if (st == CH_OK)
        st = bus_follow_start(svc->bus, EVENT_STREAM, filter, svc->rebuilt_to + 1, follow_one, fc,
                              &svc->follower);
    return st;
}

static void follow_stop(notifications_service *svc)
{
    bus_follow_stop(svc->follower);
    svc->follower = NULL;
    free(svc->follow_ctx);
    svc->follow_ctx = NULL;
}
