/* inventory_events.c: the inventory service's writer: its stream folded into
 * the store, and its reactions: order.created -> reserve or reject,
 * payment.processed -> commit, payment.failed and order.cancel_requested ->
 * release. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event_bus.h"
#include "inventory.h"
#include "log.h"

_Static_assert(sizeof(inv_undo) <= WRITER_UNDO_MAX, "an undo record must fit in the writer's slot");

enum { CONSUME_CREATED = 0, CONSUME_PROCESSED, CONSUME_FAILED, CONSUME_CANCEL, CONSUMED };

/* ---- the stream ---- */

static ch_status fold(void *ctx, const choreo_events_v1_Envelope *env, uint64_t seq)
{
    inventory_service *svc = ctx;
    ch_status st = inventory_entry_of(env, &svc->room->d);

    (void)seq;
    if (st == CH_OK)
        st = inv_apply(svc->store, &svc->room->d.entry, NULL);
    if (st != CH_OK && st != CH_NO_MEMORY)
        svc->skipped++; /* the writer logs it */
    return st;
}

static void undo(void *ctx, const void *data, size_t len)
{
    inventory_service *svc = ctx;
    inv_undo u;
    ch_status st = CH_INVALID_ARGUMENT;

    if (len == sizeof u) {
        memcpy(&u, data, sizeof u); /* the writer's copy is bytes: no promise of alignment */
        st = inv_revert(svc->store, &u);
    }
    if (st != CH_OK)
        log_error("inventory decision not undone", "status", ch_status_str(st), NULL);
}

ch_status inventory_record(inventory_service *svc, writer *w, const inv_entry *e, const char *causation_id,
                           const char *traceparent)
{
    choreo_events_v1_Envelope *env = &svc->room->out;
    inv_undo u;
    bool changed = false;
    ch_status st = inventory_event_of(e, causation_id, traceparent, env);

    if (st == CH_OK)
        st = inv_apply_undoable(svc->store, e, &changed, &u);
    if (st != CH_OK)
        return st;
    if (!changed) /* a SetStock to the level there: nothing to record; any other was decided new */
        return e->kind == INV_ENTRY_STOCK_SET ? CH_OK : CH_INTERNAL;
    st = writer_emit(w, env, &u, sizeof u);
    if (st != CH_OK)
        inv_revert(svc->store, &u);
    return st;
}

/* ---- the reactions ---- */

/* Records the decision in the room, caused by the input event; the note in
 * in->reason stands only when it is recorded. */
static ch_status record_decision(inventory_service *svc, writer *w, writer_input *in)
{
    ch_status st = inventory_record(svc, w, &svc->room->d.entry, in->env->event_id, in->env->traceparent);
    if (st != CH_OK)
        in->reason[0] = '\0';
    return st;
}

/* order.created: reserve every item or none, once per order. */
static ch_status on_created(inventory_service *svc, writer *w, writer_input *in)
{
    const choreo_events_v1_Envelope *env = in->env;
    const choreo_events_v1_OrderCreated *c = &env->payload.order_created;
    inventory_room *room = svc->room;
    size_t n = c->items_count; /* the codec bounds it; the core checks it */
    inv_outcome out = INV_NOOP;

    for (size_t i = 0; i < n && i < INV_LINES_MAX; i++) {
        snprintf(room->items[i].sku, sizeof room->items[i].sku, "%s", c->items[i].sku);
        room->items[i].quantity = c->items[i].quantity;
    }
    inv_reserve_req r = {
        .order_id = env->order_id,
        .customer_id = c->customer_id,
        .cause_event_id = env->event_id,
        .total_cents = c->total_cents,
        .items = room->items,
        .n_items = n,
    };
    ch_status st = inv_decide_reserve(svc->store, &r, &room->d, &out, in->reason, sizeof in->reason);
    if (st == CH_INVALID_ARGUMENT) {
        in->verdict = BUS_DEAD; /* the reason names the field */
        return CH_OK;
    }
    if (st != CH_OK)
        return st;
    if (out != INV_APPEND) {
        const inv_reservation *res = inv_store_reservation(svc->store, env->order_id);
        snprintf(in->reason, sizeof in->reason, "decided before: reservation %s",
                 res ? inv_res_status_name(res->status) : "?");
        return CH_OK;
    }
    if (room->d.entry.kind == INV_ENTRY_REJECTED)
        snprintf(in->reason, sizeof in->reason, "%s", room->d.reason);
    else
        snprintf(in->reason, sizeof in->reason, "reserved %" PRIu32 " units", room->d.entry.units);
    return record_decision(svc, w, in);
}

/* The verdict on a step of an order with no reservation here: decided again
 * once the writer caught up (another replica may have reserved it), then
 * retried later, as the order.created may still be on its way. */
static ch_status no_reservation(writer_input *in)
{
    snprintf(in->reason, sizeof in->reason, "no reservation for order %s (yet)", in->env->order_id);
    return CH_NOT_FOUND; /* the writer naks it after the catch-up */
}

/* payment.processed: the held units are sold, once. */
static ch_status on_processed(inventory_service *svc, writer *w, writer_input *in)
{
    const choreo_events_v1_Envelope *env = in->env;
    inventory_room *room = svc->room;
    inv_outcome out = INV_NOOP;
    ch_status st = inv_decide_commit(svc->store, env->order_id, env->event_id, &room->d, &out);

    if (st == CH_NOT_FOUND)
        return no_reservation(in);
    if (st != CH_OK)
        return st;
    if (out != INV_APPEND) {
        const inv_reservation *res = inv_store_reservation(svc->store, env->order_id);
        snprintf(in->reason, sizeof in->reason, "nothing to commit: reservation %s",
                 inv_res_status_name(res->status));
        return CH_OK;
    }
    snprintf(in->reason, sizeof in->reason, "sold %" PRIu32 " units", room->d.entry.units);
    return record_decision(svc, w, in);
}

/* payment.failed (customer_cancel false) and order.cancel_requested (true):
 * the units go back to available, once. */
static ch_status on_release(inventory_service *svc, writer *w, writer_input *in, bool customer_cancel)
{
    const choreo_events_v1_Envelope *env = in->env;
    inventory_room *room = svc->room;
    const char *why =
        customer_cancel ? env->payload.order_cancel_requested.reason : env->payload.payment_failed.reason;
    inv_outcome out = INV_NOOP;
    ch_status st =
        inv_decide_release(svc->store, env->order_id, customer_cancel, why, env->event_id, &room->d, &out);

    if (st == CH_NOT_FOUND)
        return no_reservation(in);
    if (st != CH_OK)
        return st;
    const inv_reservation *res = inv_store_reservation(svc->store, env->order_id);
    if (out == INV_DECIDED) {
        snprintf(in->reason, sizeof in->reason, "released before");
        return CH_OK;
    }
    if (out != INV_APPEND) {
        snprintf(in->reason, sizeof in->reason, "nothing to release: reservation %s",
                 inv_res_status_name(res->status));
        return CH_OK;
    }
    snprintf(in->reason, sizeof in->reason, "%s %" PRIu32 " units",
             res->status == INV_RES_COMMITTED ? "restocked" : "released", room->d.entry.units);
    return record_decision(svc, w, in);
}

static ch_status decide(void *ctx, writer *w, writer_input *in)
{
    inventory_service *svc = ctx;

    if (in->kind == WRITER_CALL)
        return inventory_call_decide(svc, w, in);
    switch (in->source) {
    case CONSUME_CREATED: return on_created(svc, w, in);
    case CONSUME_PROCESSED: return on_processed(svc, w, in);
    case CONSUME_FAILED: return on_release(svc, w, in, false);
    default: return on_release(svc, w, in, true);
    }
}

static void finish(void *ctx, writer_input *in, ch_status st)
{
    if (in->kind == WRITER_CALL)
        inventory_call_finish(ctx, in, st);
}

ch_status inventory_events_start(inventory_service *svc)
{
    static const writer_ops ops = {fold, decide, undo, finish};
    writer_spec spec = {
        .service = INVENTORY_PRODUCER,
        .stream = EVENT_STREAM_INVENTORY,
        .ops = &ops,
        .ctx = svc,
        .consumers = {[CONSUME_CREATED] = {EVENT_ORDER_CREATED},
                      [CONSUME_PROCESSED] = {EVENT_PAYMENT_PROCESSED},
                      [CONSUME_FAILED] = {EVENT_PAYMENT_FAILED},
                      [CONSUME_CANCEL] = {EVENT_ORDER_CANCEL_REQUESTED}},
        .n_consumers = CONSUMED,
        .publish_timeout_ms = svc->cfg->publish_timeout_ms,
    };

    svc->room = calloc(1, sizeof *svc->room);
    if (!svc->room)
        return CH_NO_MEMORY;
    ch_status st = writer_start(svc->bus, &spec, &svc->writer);
    if (st == CH_OK) {
        char skus[24], reservations[24], skipped[24];
        snprintf(skus, sizeof skus, "%zu", inv_store_sku_count(svc->store));
        snprintf(reservations, sizeof reservations, "%zu", inv_store_reservation_count(svc->store));
        snprintf(skipped, sizeof skipped, "%" PRIu64, svc->skipped);
        log_info("inventory state folded from its stream", "skus", skus, "reservations", reservations,
                 "skipped", skipped, NULL);
    }
    return st;
}

void inventory_events_stop(inventory_service *svc)
{
    writer_destroy(svc->writer);
    svc->writer = NULL;
    free(svc->room);
    svc->room = NULL;
}
