/* notifications_events.c: the notifications service's writer: its stream
 * folded into the store, and its reactions: order.confirmed and
 * order.cancelled -> notification.sent, once per (order, kind). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event_bus.h"
#include "log.h"
#include "notifications.h"

enum { CONSUME_CONFIRMED = 0, CONSUME_CANCELLED, CONSUMED };

ch_status notifications_service_init(notifications_service *svc, const service_config *cfg)
{
    pthread_condattr_t ca;

    memset(svc, 0, sizeof *svc);
    svc->cfg = cfg;
    pthread_mutex_init(&svc->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* watchers wait with timeouts */
    pthread_cond_init(&svc->changed, &ca);
    pthread_condattr_destroy(&ca);
    svc->unstored = calloc(WRITER_MAX_IN_FLIGHT, sizeof *svc->unstored);
    if (!svc->unstored)
        return CH_NO_MEMORY;
    return notif_store_create(&svc->store);
}

void notifications_service_cleanup(notifications_service *svc)
{
    if (!svc->cfg)
        return; /* never initialised */
    notif_store_destroy(svc->store);
    svc->store = NULL;
    free(svc->unstored);
    svc->unstored = NULL;
    pthread_cond_destroy(&svc->changed);
    pthread_mutex_destroy(&svc->mu);
}

/* ---- what readers are shown ---- */

/* The store is its stored prefix and then the unstored: moves `stored` to
 * the end of that prefix and wakes the watchers when it grew. Writer thread
 * (or main, during the start-up replay). */
static void publish_stored(notifications_service *svc)
{
    uint64_t stored = notif_store_count(svc->store) - svc->n_unstored;

    if (stored == svc->stored)
        return;
    pthread_mutex_lock(&svc->mu);
    svc->stored = stored;
    pthread_cond_broadcast(&svc->changed);
    pthread_mutex_unlock(&svc->mu);
}

static notifications_unstored *unstored_at(notifications_service *svc, size_t i)
{
    return &svc->unstored[(svc->unstored_head + i) % WRITER_MAX_IN_FLIGHT];
}

/* ---- the stream ---- */

/* The notification a notification.sent event records. */
static ch_status notification_from_envelope(const choreo_events_v1_Envelope *env, notif_notification *n,
                                            char *err, size_t errlen)
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

/* Folds a stored notification.sent into the store. Nothing is in flight
 * when the writer folds, so it is stored and shown at once. */
static ch_status fold(void *ctx, const choreo_events_v1_Envelope *env, uint64_t seq)
{
    notifications_service *svc = ctx;
    char err[256];
    notif_notification n;
    bool added;

    if (notification_from_envelope(env, &n, err, sizeof err) != CH_OK) {
        /* skipped, and logged here where the reason is known (the writer's
         * line would name a status only) */
        char at[24];
        snprintf(at, sizeof at, "%" PRIu64, seq);
        log_warn("notification.sent not folded in", "seq", at, "event_id", env->event_id, "reason", err,
                 NULL);
        svc->skipped++;
        return CH_OK;
    }
    ch_status st = notif_store_add(svc->store, &n, &added);
    if (st != CH_OK)
        return st;
    if (!added)
        svc->skipped++; /* a second record of one (order, kind), e.g. past the dedup window */
    publish_stored(svc);
    return CH_OK;
}

static void undo(void *ctx, const void *data, size_t len)
{
    notifications_service *svc = ctx;
    uint64_t seq = 0;

    if (len == sizeof seq)
        memcpy(&seq, data, sizeof seq);
    if (svc->n_unstored == 0 || seq != notif_store_count(svc->store) ||
        unstored_at(svc, svc->n_unstored - 1)->seq != seq) {
        char want[24];
        snprintf(want, sizeof want, "%" PRIu64, seq);
        log_error("notification not undone: not the newest", "seq", want, NULL);
        return;
    }
    notif_store_remove_newest(svc->store);
    svc->n_unstored--;
}

/* ---- the reactions ---- */

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

/* order.confirmed, order.cancelled: one notification per (order, kind). The
 * notification.sent event is the record: the notification goes into the
 * store at once (so the next input sees it), is emitted, and is "sent" once
 * the event is stored (finish); a lost race takes it out again (undo) and
 * decides again on what the other replica stored. */
static ch_status on_order_event(notifications_service *svc, writer *w, writer_input *in)
{
    const choreo_events_v1_Envelope *e = in->env;
    event_type t = in->source == CONSUME_CONFIRMED ? EVENT_ORDER_CONFIRMED : EVENT_ORDER_CANCELLED;
    choreo_events_v1_Envelope out; /* ~9 KB on the writer's stack: no malloc per event */
    notif_input ni;
    notif_notification n;
    char err[BUS_REASON_MAX - NOTIF_KIND_NAME_MAX]; /* the reason is "<kind>.<err>" */
    bool added;

    input_from_envelope(e, t, &ni);
    if (notif_store_find(svc->store, e->order_id, ni.kind)) {
        snprintf(in->reason, sizeof in->reason, "already notified");
        return CH_OK;
    }
    ch_status st = event_init_caused(&out, EVENT_NOTIFICATION_SENT, e, NOTIFICATIONS_PRODUCER);
    if (st != CH_OK) {
        snprintf(in->reason, sizeof in->reason, "cannot make notification.sent: %s", ch_status_str(st));
        in->verdict = BUS_DEAD;
        return CH_OK;
    }
    ni.sent_at_ms = out.occurred_at_unix_ns / 1000000;
    if (notif_build(&ni, &n, err, sizeof err) != CH_OK) {
        snprintf(in->reason, sizeof in->reason, "%s.%s", notif_kind_name(ni.kind), err);
        in->verdict = BUS_DEAD;
        return CH_OK;
    }
    choreo_events_v1_NotificationSent *p = &out.payload.notification_sent;
    snprintf(p->customer_id, sizeof p->customer_id, "%s", n.customer_id);
    snprintf(p->kind, sizeof p->kind, "%s", notif_kind_name(n.kind));
    snprintf(p->notification_id, sizeof p->notification_id, "%s", n.id);
    snprintf(p->message, sizeof p->message, "%s", n.message);

    st = notif_store_add(svc->store, &n, &added);
    if (st != CH_OK)
        return st; /* no memory: naked, it comes back */
    uint64_t seq = notif_store_count(svc->store);
    st = writer_emit(w, &out, &seq, sizeof seq);
    if (st != CH_OK) {
        notif_store_remove_newest(svc->store);
        snprintf(in->reason, sizeof in->reason, "notification.sent not published: %s", ch_status_str(st));
        return st; /* it does not encode: dead-lettered */
    }
    notifications_unstored *u = unstored_at(svc, svc->n_unstored);
    svc->n_unstored++;
    u->in = in;
    u->seq = seq;
    snprintf(u->event_id, sizeof u->event_id, "%s", out.event_id);
    return CH_OK;
}

static ch_status decide(void *ctx, writer *w, writer_input *in)
{
    if (in->kind == WRITER_CALL)
        return CH_OK; /* a read: answered in finish, once current */
    return on_order_event(ctx, w, in);
}

/* An input is done. The writer finishes the inputs that emitted in the order
 * of their events, each when its event is stored, so the oldest unstored
 * notification is the one of the input finished here, if any: it is sent,
 * and readers see it from now on. */
static void finish(void *ctx, writer_input *in, ch_status st)
{
    notifications_service *svc = ctx;

    if (svc->n_unstored > 0 && unstored_at(svc, 0)->in == in) {
        notifications_unstored *u = unstored_at(svc, 0);
        const notif_notification *n = notif_store_at(svc->store, u->seq);
        if (st != CH_OK)
            log_error("notification finished unstored yet kept", "status", ch_status_str(st), NULL);
        log_info("notification sent", "notification_id", n->id, "order_id", n->order_id, "customer_id",
                 n->customer_id, "kind", notif_kind_name(n->kind), "event_id", u->event_id, NULL);
        svc->unstored_head = (svc->unstored_head + 1) % WRITER_MAX_IN_FLIGHT;
        svc->n_unstored--;
        publish_stored(svc);
    }
    if (in->kind == WRITER_CALL)
        notifications_call_finish(svc, in, st);
}

ch_status notifications_events_start(notifications_service *svc)
{
    static const writer_ops ops = {fold, decide, undo, finish};
    writer_spec spec = {
        .service = NOTIFICATIONS_PRODUCER,
        .stream = EVENT_STREAM_NOTIFICATION,
        .ops = &ops,
        .ctx = svc,
        .consumers =
            {[CONSUME_CONFIRMED] = {EVENT_ORDER_CONFIRMED}, [CONSUME_CANCELLED] = {EVENT_ORDER_CANCELLED}},
        .n_consumers = CONSUMED,
        .publish_timeout_ms = svc->cfg->publish_timeout_ms,
    };
    ch_status st = writer_start(svc->bus, &spec, &svc->writer);
    if (st == CH_OK) {
        char count[24], skipped[24];
        snprintf(count, sizeof count, "%" PRIu64, notif_store_count(svc->store));
        snprintf(skipped, sizeof skipped, "%" PRIu64, svc->skipped);
        log_info("notifications folded from their stream", "notifications", count, "skipped", skipped, NULL);
    }
    return st;
}

void notifications_events_stop(notifications_service *svc)
{
    writer_destroy(svc->writer);
    svc->writer = NULL;
}
