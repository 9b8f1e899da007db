/* orders_rpc.c: the choreo.orders.v1.Orders gRPC API, a thin adapter: it
 * turns requests into core calls and core results into replies. */
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

/* Replies with one order (looked up and packed under the lock) in the
 * response message of the call's kind. */
static void reply_order(rpc_call *call, orders_service *svc, const char *id, reply_kind kind, bool replayed)
{
    pb_orders p;

    pthread_mutex_lock(&svc->mu);
    const order *o = order_store_get(svc->store, id);
    if (!o) {
        pthread_mutex_unlock(&svc->mu);
        rpc_call_fail(call, CH_NOT_FOUND, "order_id: no order %s", id);
        return;
    }
    if (pb_orders_init(&p, 1, o->n_items) != CH_OK) {
        pthread_mutex_unlock(&svc->mu);
        pb_orders_free(&p);
        rpc_call_fail(call, CH_NO_MEMORY, "out of memory");
        return;
    }
    Choreo__Orders__V1__Order *pb = pb_order_fill(&p, 0, o);
    if (kind == REPLY_CREATE) {
        Choreo__Orders__V1__CreateOrderResponse resp = CHOREO__ORDERS__V1__CREATE_ORDER_RESPONSE__INIT;
        resp.order = pb;
        resp.replayed = replayed;
        rpc_call_reply(call, &resp.base);
    } else if (kind == REPLY_CANCEL) {
        Choreo__Orders__V1__CancelOrderResponse resp = CHOREO__ORDERS__V1__CANCEL_ORDER_RESPONSE__INIT;
        resp.order = pb;
        rpc_call_reply(call, &resp.base);
    } else {
        Choreo__Orders__V1__GetOrderResponse resp = CHOREO__ORDERS__V1__GET_ORDER_RESPONSE__INIT;
        resp.order = pb;
        rpc_call_reply(call, &resp.base);
    }
    pthread_mutex_unlock(&svc->mu);
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

/* How long a publish may wait: the configured cap, or less if the client's
 * deadline is nearer. */
static int call_timeout(const rpc_call *call, const orders_service *svc)
{
    int64_t timeout = svc->cfg->publish_timeout_ms;
    int64_t left = rpc_call_remaining_ms(call);
    if (left < timeout)
        timeout = left > 1 ? left : 1;
    return (int)timeout;
}

static bool valid_order_id(const char *id)
{
    return utf8_valid_token(id, ORDER_ID_MAX);
}

/* ---- handlers ---- */

/* A CreateOrder waiting for its order.created to be stored. */
typedef struct created_call {
    rpc_call *call;
    orders_service *svc;
    char id[ORDER_ID_MAX + 1];
    char trace_id[33];
    bool keyed; /* the request had an idempotency key */
} created_call;

static void create_failed(rpc_call *call, const char *id, const char *trace_id, bool keyed, ch_status st)
{
    log_warn("order not created", "order_id", id, "trace_id", trace_id, "status", ch_status_str(st), NULL);
    if (st == CH_TIMEOUT || st == CH_UNAVAILABLE)
        service_fail_unconfirmed(call, st, "order.created",
                                 keyed
                                     ? "retry with the same idempotency_key"
                                     : "look for the order before retrying (an idempotency_key makes retries "
                                       "safe)");
    else
        rpc_call_fail(call, st, "order not created: %s", ch_status_str(st));
}

/* orders_created_fn of CreateOrder: replies now that the order is stored. */
static void on_created(ch_status st, bool replayed, void *arg)
{
    created_call *cc = arg;

    if (st == CH_OK)
        reply_order(cc->call, cc->svc, cc->id, REPLY_CREATE, replayed);
    else
        create_failed(cc->call, cc->id, cc->trace_id, cc->keyed, st);
    free(cc);
}

static void create_order(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Orders__V1__CreateOrderRequest *r = (const Choreo__Orders__V1__CreateOrderRequest *)msg;
    orders_service *svc = ctx;
    order_item items[ORDER_ITEMS_MAX];
    char err[256], traceparent[TRACEPARENT_LEN + 1], causation[40];
    orders_new n;

    if (r->n_items == 0 || r->n_items > ORDER_ITEMS_MAX) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "items: must hold 1..%d items, got %zu", ORDER_ITEMS_MAX,
                      r->n_items);
        return;
    }
    for (size_t i = 0; i < r->n_items; i++) {
        const Choreo__Orders__V1__LineItem *li = r->items[i];
        if (strlen(li->sku) > ORDER_SKU_MAX) {
            rpc_call_fail(call, CH_INVALID_ARGUMENT, "items[%zu].sku: at most %d bytes", i, ORDER_SKU_MAX);
            return;
        }
        memcpy(items[i].sku, li->sku, strlen(li->sku) + 1);
        items[i].quantity = li->quantity;
        items[i].unit_price_cents = li->unit_price_cents;
    }
    memset(&n, 0, sizeof n);
    n.req = (order_create_req){r->customer_id, items, r->n_items, r->idempotency_key};
    if (order_validate_create(&n.req, err, sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        return;
    }

    if (r->idempotency_key[0]) {
        order_id_from_key(n.id, r->customer_id, r->idempotency_key);
        pthread_mutex_lock(&svc->mu);
        bool known = order_store_by_key(svc->store, r->customer_id, r->idempotency_key) != NULL;
        pthread_mutex_unlock(&svc->mu);
        if (known) {
            reply_order(call, svc, n.id, REPLY_CREATE, true);
            return;
        }
    } else {
        uint64_t bits;
        if (getrandom(&bits, sizeof bits, 0) != (ssize_t)sizeof bits) {
            rpc_call_fail(call, CH_INTERNAL, "no randomness for an order id");
            return;
        }
        order_id_from_bits(n.id, bits);
    }

    call_traceparent(call, traceparent);
    snprintf(causation, sizeof causation, "rpc-%.16s", traceparent + 36);
    n.traceparent = traceparent;
    n.causation_id = causation;
    rpc_call_add_metadata(call, "traceparent", traceparent);

    created_call *cc = malloc(sizeof *cc);
    ch_status st = cc ? CH_OK : CH_NO_MEMORY;
    if (cc) {
        *cc = (created_call){.call = call, .svc = svc, .keyed = r->idempotency_key[0] != '\0'};
        snprintf(cc->id, sizeof cc->id, "%s", n.id);
        snprintf(cc->trace_id, sizeof cc->trace_id, "%.32s", n.traceparent + 3);
        /* The reply comes with the PubAck, or after CHOREO_PUBLISH_TIMEOUT_MS
         * without one. A nearer client deadline ends the call on the
         * client's side; the bus waits as long for every publish (bus.c). */
        st = orders_append_created(svc, &n, on_created, cc);
    }
    if (st != CH_OK) {
        char trace_id[33];
        snprintf(trace_id, sizeof trace_id, "%.32s", n.traceparent + 3);
        free(cc);
        create_failed(call, n.id, trace_id, r->idempotency_key[0] != '\0', st);
    }
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
    reply_order(call, ctx, r->order_id, REPLY_GET, false);
}

static void list_orders(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Orders__V1__ListOrdersRequest *r = (const Choreo__Orders__V1__ListOrdersRequest *)msg;
    orders_service *svc = ctx;
    size_t size = r->page_size ? r->page_size : ORDER_PAGE_DEFAULT;
    const order **page = NULL;
    char next[32];
    size_t n = 0, n_items = 0;
    pb_orders p;

    memset(&p, 0, sizeof p);
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
    page = calloc(size, sizeof *page);
    if (!page) {
        rpc_call_fail(call, CH_NO_MEMORY, "out of memory");
        return;
    }
    pthread_mutex_lock(&svc->mu);
    ch_status st = order_store_list(svc->store, r->page_token, r->customer_id, (order_status)r->status, page,
                                    size, &n, next);
    if (st != CH_OK) {
        pthread_mutex_unlock(&svc->mu);
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        n_items += page[i]->n_items;
    if (pb_orders_init(&p, n, n_items) != CH_OK) {
        pthread_mutex_unlock(&svc->mu);
        rpc_call_fail(call, CH_NO_MEMORY, "out of memory");
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
    rpc_call_reply(call, &resp.base);
    pthread_mutex_unlock(&svc->mu);

cleanup:
    pb_orders_free(&p);
    free(page);
}

static void cancel_order(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Orders__V1__CancelOrderRequest *r = (const Choreo__Orders__V1__CancelOrderRequest *)msg;
    orders_service *svc = ctx;
    char traceparent[TRACEPARENT_LEN + 1], causation[40], err[256];

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
    call_traceparent(call, traceparent);
    snprintf(causation, sizeof causation, "rpc-%.16s", traceparent + 36);
    rpc_call_add_metadata(call, "traceparent", traceparent);
    ch_status st = orders_append_cancel(svc, r->order_id, r->reason, traceparent, causation,
                                        call_timeout(call, svc), err, sizeof err);
    if (st == CH_NOT_FOUND || st == CH_FAILED_PRECONDITION) {
        rpc_call_fail(call, st, "%s", err);
        return;
    }
    if (st == CH_TIMEOUT || st == CH_UNAVAILABLE) {
        service_fail_unconfirmed(call, st, "order.cancel_requested",
                                 "retry (a second cancel changes nothing)");
        return;
    }
    if (st != CH_OK) {
        rpc_call_fail(call, st, "order not cancelled: %s", ch_status_str(st));
        return;
    }
    reply_order(call, svc, r->order_id, REPLY_CANCEL, false);
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
