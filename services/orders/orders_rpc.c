/* orders_rpc.c: the choreo.orders.v1.Orders gRPC API, a thin adapter: a
 * request is checked on the gRPC thread, then decided (CreateOrder,
 * CancelOrder) or read (GetOrder, ListOrders) by the writer on its thread,
 * which answers once the state is current (writer.h). GetOrderHistory reads
 * the streams on the gRPC thread. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "choreo/orders/v1/orders.pb-c.h"
#include "log.h"
#include "orders.h"
#include "service.h"
#include "utf8.h"

#define TRACEPARENT_LEN 55

/* ---- order -> reply ---- */

/* Room for converting up to n orders into protobuf-c messages. */
typedef struct pb_orders {
    Choreo__Orders__V1__Order *orders;
    Choreo__Orders__V1__Order **order_ptrs;
    Choreo__Orders__V1__LineItem *items;
    Choreo__Orders__V1__LineItem **item_ptrs;
    size_t used_items;
} pb_orders;

static ch_status pb_orders_init(pb_orders *p, size_t n_orders, size_t n_items)
{
    memset(p, 0, sizeof *p);
    p->orders = calloc(n_orders ? n_orders : 1, sizeof *p->orders);
    p->order_ptrs = calloc(n_orders ? n_orders : 1, sizeof *p->order_ptrs);
    p->items = calloc(n_items ? n_items : 1, sizeof *p->items);
    p->item_ptrs = calloc(n_items ? n_items : 1, sizeof *p->item_ptrs);
    if (!p->orders || !p->order_ptrs || !p->items || !p->item_ptrs)
        return CH_NO_MEMORY;
    return CH_OK;
}

static void pb_orders_free(pb_orders *p)
{
    free(p->orders);
    free(p->order_ptrs);
    free(p->items);
    free(p->item_ptrs);
}

/* Fills p->orders[i] from o; strings point into o (pack before unlocking). */
static Choreo__Orders__V1__Order *pb_order_fill(pb_orders *p, size_t i, const order *o)
{
    Choreo__Orders__V1__Order *pb = &p->orders[i];
    *pb = (Choreo__Orders__V1__Order)CHOREO__ORDERS__V1__ORDER__INIT;
    pb->order_id = (char *)o->id;
    pb->customer_id = (char *)o->customer_id;
    pb->total_cents = o->total_cents;
    pb->status = (Choreo__Orders__V1__OrderStatus)o->status;
    pb->reason = o->reason ? o->reason : (char *)"";
    pb->version = o->version;
    pb->created_at_unix_ms = o->created_ms;
    pb->updated_at_unix_ms = o->updated_ms;
    pb->n_items = o->n_items;
    pb->items = &p->item_ptrs[p->used_items];
    for (uint32_t k = 0; k < o->n_items; k++) {
        Choreo__Orders__V1__LineItem *li = &p->items[p->used_items];
        *li = (Choreo__Orders__V1__LineItem)CHOREO__ORDERS__V1__LINE_ITEM__INIT;
        li->sku = (char *)o->items[k].sku;
        li->quantity = o->items[k].quantity;
        li->unit_price_cents = o->items[k].unit_price_cents;
        p->item_ptrs[p->used_items++] = li;
    }
    p->order_ptrs[i] = pb;
    return pb;
}

typedef enum reply_kind { REPLY_GET, REPLY_CREATE, REPLY_CANCEL } reply_kind;

/* Prepares the reply with one order in the response message of the call's
 * kind. Writer thread. */
static void reply_order(rpc_call *call, orders_service *svc, const char *id, reply_kind kind, bool replayed)
{
    pb_orders p;

    const order *o = order_store_get(svc->store, id);
    if (!o) {
        rpc_call_prepare_fail(call, CH_NOT_FOUND, "order_id: no order %s", id);
        return;
    }
    if (pb_orders_init(&p, 1, o->n_items) != CH_OK) {
        pb_orders_free(&p);
        rpc_call_prepare_fail(call, CH_NO_MEMORY, "out of memory");
        return;
    }
    Choreo__Orders__V1__Order *pb = pb_order_fill(&p, 0, o);
    if (kind == REPLY_CREATE) {
        Choreo__Orders__V1__CreateOrderResponse resp = CHOREO__ORDERS__V1__CREATE_ORDER_RESPONSE__INIT;
        resp.order = pb;
        resp.replayed = replayed;
        rpc_call_prepare_reply(call, &resp.base);
    } else if (kind == REPLY_CANCEL) {
        Choreo__Orders__V1__CancelOrderResponse resp = CHOREO__ORDERS__V1__CANCEL_ORDER_RESPONSE__INIT;
        resp.order = pb;
        rpc_call_prepare_reply(call, &resp.base);
    } else {
        Choreo__Orders__V1__GetOrderResponse resp = CHOREO__ORDERS__V1__GET_ORDER_RESPONSE__INIT;
        resp.order = pb;
        rpc_call_prepare_reply(call, &resp.base);
    }
    pb_orders_free(&p);
}

/* ---- trace context ---- */

static bool hex_run(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* Takes the caller's W3C traceparent when it is well-formed, else starts a
 * new trace, so every saga has one trace id from its first call. */
static void call_traceparent(const rpc_call *call, char out[TRACEPARENT_LEN + 1])
{
    size_t len = 0;
    const char *tp = rpc_call_metadata(call, "traceparent", &len);
    uint8_t r[24];

    if (tp && len == TRACEPARENT_LEN && tp[2] == '-' && tp[35] == '-' && tp[52] == '-' && hex_run(tp, 2) &&
        hex_run(tp + 3, 32) && hex_run(tp + 36, 16) && hex_run(tp + 53, 2)) {
        memcpy(out, tp, TRACEPARENT_LEN);
        out[TRACEPARENT_LEN] = '\0';
        return;
    }
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        memset(r, 0x5a, sizeof r);
    char *p = out + sprintf(out, "00-");
    for (int i = 0; i < 16; i++)
        p += sprintf(p, "%02x", r[i]);
    p += sprintf(p, "-");
    for (int i = 16; i < 24; i++)
        p += sprintf(p, "%02x", r[i]);
    sprintf(p, "-01");
}

static bool valid_order_id(const char *id)
{
    return utf8_valid_token(id, ORDER_ID_MAX);
}

/* ---- calls in the writer ---- */

typedef enum orders_method {
    CALL_CREATE = 0,
    CALL_CANCEL,
    CALL_GET,
    CALL_LIST,
} orders_method;

/* One call on its way through the writer: what the gRPC thread checked and
 * prepared, and what the decision found. */
typedef struct orders_call {
    service_call base;         /* first: the writer's call pointer points to both */
    char id[ORDER_ID_MAX + 1]; /* CREATE: the new order's id; CANCEL: the order's */
    char traceparent[TRACEPARENT_LEN + 1];
    char causation[40];
    size_t n_items; /* CREATE: the request's items, checked */
    order_item items[ORDER_ITEMS_MAX];
    bool replayed; /* CREATE: the order existed (same idempotency key) */
} orders_call;

/* Hands a prepared call to the writer (service.h). gRPC thread. */
static void submit(orders_service *svc, orders_call *oc)
{
    service_call_submit(svc->writer, &oc->base);
}

/* A call of method m, or NULL (answered: out of memory). gRPC thread. */
static orders_call *call_new(rpc_call *call, orders_method m, const ProtobufCMessage *req)
{
    return service_call_new(sizeof(orders_call), call, m, req);
}

/* The call's trace context (the caller's, or a new trace), also sent back. */
static void call_trace(orders_call *oc)
{
    call_traceparent(oc->base.call, oc->traceparent);
    snprintf(oc->causation, sizeof oc->causation, "rpc-%.16s", oc->traceparent + 36);
    rpc_call_add_metadata(oc->base.call, "traceparent", oc->traceparent);
}

/* CreateOrder: the order exists (same key, or another replica's doing once
 * caught up) or order.created is emitted. */
static ch_status decide_create(orders_service *svc, writer *w, writer_input *in, orders_call *oc)
{
    const Choreo__Orders__V1__CreateOrderRequest *r =
        (const Choreo__Orders__V1__CreateOrderRequest *)oc->base.req;
    choreo_events_v1_Envelope env;

    if ((r->idempotency_key[0] && order_store_by_key(svc->store, r->customer_id, r->idempotency_key)) ||
        order_store_get(svc->store, oc->id)) {
        oc->replayed = true;
        return CH_OK;
    }
    if (order_store_has_stub(svc->store, oc->id) && !in->caught_up)
        return CH_NOT_FOUND; /* its steps are known, so it was created: catch up */
    ch_status st =
        event_init(&env, EVENT_ORDER_CREATED, oc->id, oc->causation, ORDERS_PRODUCER, oc->traceparent);
    if (st != CH_OK)
        return st;
    choreo_events_v1_OrderCreated *c = &env.payload.order_created;
    snprintf(c->customer_id, sizeof c->customer_id, "%s", r->customer_id);
    snprintf(c->idempotency_key, sizeof c->idempotency_key, "%s", r->idempotency_key);
    c->items_count = (pb_size_t)oc->n_items;
    for (size_t i = 0; i < oc->n_items; i++) {
        snprintf(c->items[i].sku, sizeof c->items[i].sku, "%s", oc->items[i].sku);
        c->items[i].quantity = oc->items[i].quantity;
        c->items[i].unit_price_cents = oc->items[i].unit_price_cents;
    }
    c->total_cents = order_total(oc->items, oc->n_items);
    return orders_record(svc, w, &env);
}

/* CancelOrder: order.cancel_requested for a CONFIRMED order; nothing for
 * one cancelling or cancelled already. */
static ch_status decide_cancel(orders_service *svc, writer *w, writer_input *in, orders_call *oc)
{
    const Choreo__Orders__V1__CancelOrderRequest *r =
        (const Choreo__Orders__V1__CancelOrderRequest *)oc->base.req;
    const order *o = order_store_get(svc->store, oc->id);
    choreo_events_v1_Envelope env;

    if (!o && !in->caught_up)
        return CH_NOT_FOUND; /* perhaps created on another replica */
    if (!o) {
        snprintf(oc->base.err, sizeof oc->base.err, "order_id: no order %s", oc->id);
        return CH_NOT_FOUND;
    }
    ch_status st = order_check_cancel(o, oc->base.err, sizeof oc->base.err);
    if (st == CH_ALREADY_EXISTS)
        return CH_OK;
    if (st != CH_OK)
        return st;
    st = event_init(&env, EVENT_ORDER_CANCEL_REQUESTED, oc->id, oc->causation, ORDERS_PRODUCER,
                    oc->traceparent);
    if (st != CH_OK)
        return st;
    choreo_events_v1_OrderCancelRequested *c = &env.payload.order_cancel_requested;
    snprintf(c->customer_id, sizeof c->customer_id, "%s", o->customer_id);
    c->total_cents = o->total_cents;
    snprintf(c->reason, sizeof c->reason, "%s", r->reason[0] ? r->reason : "cancelled by the customer");
    return orders_record(svc, w, &env);
}

/* Prepares ListOrders' reply, a page cut to fit in one message. Writer
 * thread. */
static void reply_list(orders_service *svc, rpc_call *call, const Choreo__Orders__V1__ListOrdersRequest *r)
{
    size_t size = r->page_size ? r->page_size : ORDER_PAGE_DEFAULT;
    const order **page = calloc(size, sizeof *page);
    char next[32];
    size_t n = 0, n_items = 0;
    pb_orders p;

    memset(&p, 0, sizeof p);
    if (!page) {
        rpc_call_prepare_fail(call, CH_NO_MEMORY, "out of memory");
        return;
    }
    ch_status st = order_store_list(svc->store, r->page_token, r->customer_id, (order_status)r->status, page,
                                    size, &n, next);
    if (st != CH_OK) {
        rpc_call_prepare_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        n_items += page[i]->n_items;
    if (pb_orders_init(&p, n, n_items) != CH_OK) {
        rpc_call_prepare_fail(call, CH_NO_MEMORY, "out of memory");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        pb_order_fill(&p, i, page[i]);
    Choreo__Orders__V1__ListOrdersResponse resp = CHOREO__ORDERS__V1__LIST_ORDERS_RESPONSE__INIT;
    size_t fit =
        rpc_call_fit_items(call, &resp.base, sizeof next, (ProtobufCMessage *const *)p.order_ptrs, n);
    if (fit < n) /* the same first `fit`, and the token after them */
        order_store_list(svc->store, r->page_token, r->customer_id, (order_status)r->status, page, fit, &n,
                         next);
    resp.n_orders = n;
    resp.orders = p.order_ptrs;
    resp.next_page_token = next;
    rpc_call_prepare_reply(call, &resp.base);

cleanup:
    pb_orders_free(&p);
    free(page);
}

ch_status orders_call_decide(orders_service *svc, writer *w, writer_input *in)
{
    orders_call *oc = in->call;
    ch_status st = CH_OK;

    if (oc->base.method == CALL_CREATE)
        st = decide_create(svc, w, in, oc);
    else if (oc->base.method == CALL_CANCEL)
        st = decide_cancel(svc, w, in, oc);
    if (st != CH_OK)
        return st;
    /* the answer, as the state is here; sent once what came before is stored */
    switch ((orders_method)oc->base.method) {
    case CALL_CREATE: reply_order(oc->base.call, svc, oc->id, REPLY_CREATE, oc->replayed); break;
    case CALL_CANCEL: reply_order(oc->base.call, svc, oc->id, REPLY_CANCEL, false); break;
    case CALL_GET: reply_order(oc->base.call, svc, oc->id, REPLY_GET, false); break;
    case CALL_LIST:
        reply_list(svc, oc->base.call, (const Choreo__Orders__V1__ListOrdersRequest *)oc->base.req);
        break;
    }
    return CH_OK;
}

void orders_call_finish(orders_service *svc, writer_input *in, ch_status st)
{
    orders_call *oc = in->call;
    rpc_call *call = oc->base.call;
    orders_method m = (orders_method)oc->base.method;
    bool keyed = m == CALL_CREATE &&
                 ((const Choreo__Orders__V1__CreateOrderRequest *)oc->base.req)->idempotency_key[0] != '\0';
    const char *what = m == CALL_CREATE   ? "order.created"
                       : m == CALL_CANCEL ? "order.cancel_requested"
                                          : NULL;
    const char *retry = m == CALL_CANCEL ? "retry (a second cancel changes nothing)"
                        : keyed          ? "retry with the same idempotency_key"
                                         : "look for the order before retrying (an idempotency_key makes "
                                           "retries safe)";

    if (st == CH_TIMEOUT || st == CH_UNAVAILABLE) {
        char trace_id[33];
        snprintf(trace_id, sizeof trace_id, "%.32s", oc->traceparent + 3);
        log_warn("call not confirmed", "method", rpc_call_method(call), "order_id", oc->id, "trace_id",
                 trace_id, "status", ch_status_str(st), NULL);
    }
    if (!service_call_answer(&oc->base, st, what, retry))
        rpc_call_fail(call, st == CH_CONFLICT || st == CH_CANCELLED ? CH_UNAVAILABLE : st,
                      "%s not done: %s; retry",
                      m == CALL_CREATE   ? "order"
                      : m == CALL_CANCEL ? "cancel"
                                         : "read",
                      ch_status_str(st));
    free(oc);
}

/* ---- handlers (gRPC threads): check, then hand to the writer ---- */

static void create_order(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Orders__V1__CreateOrderRequest *r = (const Choreo__Orders__V1__CreateOrderRequest *)msg;
    orders_service *svc = ctx;
    char err[256];

    if (r->n_items == 0 || r->n_items > ORDER_ITEMS_MAX) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "items: must hold 1..%d items, got %zu", ORDER_ITEMS_MAX,
                      r->n_items);
        return;
    }
    orders_call *oc = call_new(call, CALL_CREATE, msg);
    if (!oc)
        return;
    for (size_t i = 0; i < r->n_items; i++) {
        const Choreo__Orders__V1__LineItem *li = r->items[i];
        if (strlen(li->sku) > ORDER_SKU_MAX) {
            rpc_call_fail(call, CH_INVALID_ARGUMENT, "items[%zu].sku: at most %d bytes", i, ORDER_SKU_MAX);
            free(oc);
            return;
        }
        memcpy(oc->items[i].sku, li->sku, strlen(li->sku) + 1);
        oc->items[i].quantity = li->quantity;
        oc->items[i].unit_price_cents = li->unit_price_cents;
    }
    oc->n_items = r->n_items;
    order_create_req req = {r->customer_id, oc->items, r->n_items, r->idempotency_key};
    if (order_validate_create(&req, err, sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        free(oc);
        return;
    }
    if (r->idempotency_key[0]) {
        order_id_from_key(oc->id, r->customer_id, r->idempotency_key);
    } else {
        uint64_t bits;
        if (getrandom(&bits, sizeof bits, 0) != (ssize_t)sizeof bits) {
            rpc_call_fail(call, CH_INTERNAL, "no randomness for an order id");
            free(oc);
            return;
        }
        order_id_from_bits(oc->id, bits);
    }
    call_trace(oc);
    submit(svc, oc);
}

static void get_order(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Orders__V1__GetOrderRequest *r = (const Choreo__Orders__V1__GetOrderRequest *)msg;

    if (!r->order_id[0]) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "order_id: required");
        return;
    }
    if (!valid_order_id(r->order_id)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "order_id: not a valid order id (at most %d bytes)",
                      ORDER_ID_MAX);
        return;
    }
    orders_call *oc = call_new(call, CALL_GET, msg);
    if (oc) {
        snprintf(oc->id, sizeof oc->id, "%s", r->order_id);
        submit(ctx, oc);
    }
}

static void list_orders(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Orders__V1__ListOrdersRequest *r = (const Choreo__Orders__V1__ListOrdersRequest *)msg;
    size_t size = r->page_size ? r->page_size : ORDER_PAGE_DEFAULT;

    if (size > ORDER_PAGE_MAX) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_size: must be 0..%d, got %u", ORDER_PAGE_MAX,
                      r->page_size);
        return;
    }
    if (strlen(r->page_token) > 31) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        return;
    }
    if (r->customer_id[0] && !utf8_valid_token(r->customer_id, ORDER_CUSTOMER_MAX)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "customer_id: must be 1..%d bytes of UTF-8 with no spaces",
                      ORDER_CUSTOMER_MAX);
        return;
    }
    if ((int)r->status < ORDER_UNSPECIFIED || (int)r->status > ORDER_CANCELLED) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "status: unknown value %d", (int)r->status);
        return;
    }
    orders_call *oc = call_new(call, CALL_LIST, msg);
    if (oc)
        submit(ctx, oc);
}

static void cancel_order(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Orders__V1__CancelOrderRequest *r = (const Choreo__Orders__V1__CancelOrderRequest *)msg;

    if (!valid_order_id(r->order_id)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "order_id: %s",
                      r->order_id[0] ? "not a valid order id" : "required");
        return;
    }
    size_t reason_len = strlen(r->reason);
    if (reason_len > ORDER_REASON_MAX || !utf8_valid(r->reason, reason_len)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "reason: must be at most %d bytes of valid UTF-8",
                      ORDER_REASON_MAX);
        return;
    }
    orders_call *oc = call_new(call, CALL_CANCEL, msg);
    if (!oc)
        return;
    snprintf(oc->id, sizeof oc->id, "%s", r->order_id);
    call_trace(oc);
    submit(ctx, oc);
}

static void get_order_history(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Orders__V1__GetOrderHistoryRequest *r =
        (const Choreo__Orders__V1__GetOrderHistoryRequest *)msg;
    Choreo__Orders__V1__HistoryEntry pb[ORDERS_HISTORY_MAX], *ptrs[ORDERS_HISTORY_MAX];
    orders_history_entry *entries = NULL;
    size_t n = 0;

    if (!valid_order_id(r->order_id)) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "order_id: %s",
                      r->order_id[0] ? "not a valid order id" : "required");
        return;
    }
    entries = calloc(ORDERS_HISTORY_MAX, sizeof *entries);
    if (!entries) {
        rpc_call_fail(call, CH_NO_MEMORY, "out of memory");
        return;
    }
    ch_status st = orders_history(ctx, r->order_id, entries, ORDERS_HISTORY_MAX, &n);
    if (st == CH_NOT_FOUND)
        rpc_call_fail(call, CH_NOT_FOUND, "order_id: no events for order %s", r->order_id);
    else if (st != CH_OK)
        rpc_call_fail(call, CH_UNAVAILABLE, "event stream unavailable (%s)", ch_status_str(st));
    if (st != CH_OK)
        goto cleanup;
    for (size_t i = 0; i < n; i++) {
        pb[i] = (Choreo__Orders__V1__HistoryEntry)CHOREO__ORDERS__V1__HISTORY_ENTRY__INIT;
        pb[i].stream_sequence = entries[i].seq;
        pb[i].event_id = entries[i].event_id;
        pb[i].type = entries[i].type;
        pb[i].causation_id = entries[i].causation_id;
        pb[i].producer = entries[i].producer;
        pb[i].occurred_at_unix_ns = entries[i].occurred_at_ns;
        pb[i].status_after = (Choreo__Orders__V1__OrderStatus)entries[i].status_after;
        pb[i].summary = entries[i].summary;
        ptrs[i] = &pb[i];
    }
    Choreo__Orders__V1__GetOrderHistoryResponse resp = CHOREO__ORDERS__V1__GET_ORDER_HISTORY_RESPONSE__INIT;
    resp.order_id = r->order_id;
    resp.n_entries = n;
    resp.entries = ptrs;
    rpc_call_reply(call, &resp.base);

cleanup:
    free(entries);
}

ch_status orders_rpc_register(rpc_server *s, orders_service *svc)
{
    static const rpc_handler handlers[] = {
        {"CreateOrder", RPC_UNARY, create_order, NULL},
        {"GetOrder", RPC_UNARY, get_order, NULL},
        {"ListOrders", RPC_UNARY, list_orders, NULL},
        {"CancelOrder", RPC_UNARY, cancel_order, NULL},
        {"GetOrderHistory", RPC_UNARY, get_order_history, NULL},
    };
    return rpc_server_add_service(s, &choreo__orders__v1__orders__descriptor, handlers,
                                  sizeof handlers / sizeof handlers[0], svc);
}
