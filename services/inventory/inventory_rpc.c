/* inventory_rpc.c: the choreo.inventory.v1.Inventory gRPC API, a thin
 * adapter: a request is checked on the gRPC thread, then decided (SetStock,
 * AdjustStock) or read (the rest) by the writer on its thread, which answers
 * once the state is current (writer.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "choreo/inventory/v1/inventory.pb-c.h"
#include "inventory.h"
#include "log.h"
#include "service.h"

typedef enum inventory_method {
    CALL_SET = 0,
    CALL_ADJUST,
    CALL_GET_STOCK,
    CALL_LIST,
    CALL_GET_RESERVATION,
} inventory_method;

/* Hands a checked request to the writer (service.h). gRPC thread. */
static void submit(inventory_service *svc, rpc_call *call, inventory_method m, const ProtobufCMessage *req)
{
    service_call *sc = service_call_new(sizeof *sc, call, m, req);
    if (sc)
        service_call_submit(svc->writer, sc);
}

/* ---- state -> reply (writer thread: strings point into the store) ---- */

static void pb_stock_fill(Choreo__Inventory__V1__StockLevel *pb, const inv_stock *st)
{
    *pb = (Choreo__Inventory__V1__StockLevel)CHOREO__INVENTORY__V1__STOCK_LEVEL__INIT;
    pb->sku = (char *)st->sku;
    pb->available = st->available;
    pb->reserved = st->reserved;
    pb->sold = st->sold;
    pb->total_in = st->total_in;
}

/* Replies with sku's stock level as the response of `method`. */
static void reply_stock(inventory_service *svc, rpc_call *call, const char *sku, inventory_method method)
{
    const inv_stock *st = inv_store_stock(svc->store, sku);
    Choreo__Inventory__V1__StockLevel pb;

    if (!st) {
        if (method == CALL_GET_STOCK)
            rpc_call_prepare_fail(call, CH_NOT_FOUND, "sku: %s was never stocked", sku);
        else
            rpc_call_prepare_fail(call, CH_INTERNAL, "sku: %s was written but is not in the store", sku);
        return;
    }
    pb_stock_fill(&pb, st);
    if (method == CALL_SET) {
        Choreo__Inventory__V1__SetStockResponse resp = CHOREO__INVENTORY__V1__SET_STOCK_RESPONSE__INIT;
        resp.stock = &pb;
        rpc_call_prepare_reply(call, &resp.base);
    } else if (method == CALL_ADJUST) {
        Choreo__Inventory__V1__AdjustStockResponse resp = CHOREO__INVENTORY__V1__ADJUST_STOCK_RESPONSE__INIT;
        resp.stock = &pb;
        rpc_call_prepare_reply(call, &resp.base);
    } else {
        Choreo__Inventory__V1__GetStockResponse resp = CHOREO__INVENTORY__V1__GET_STOCK_RESPONSE__INIT;
        resp.stock = &pb;
        rpc_call_prepare_reply(call, &resp.base);
    }
}

/* ListStock's reply, a page cut to fit in one message. */
static void reply_list(inventory_service *svc, rpc_call *call,
                       const Choreo__Inventory__V1__ListStockRequest *r)
{
    size_t size = r->page_size ? r->page_size : INV_PAGE_DEFAULT;
    const inv_stock **page = calloc(size, sizeof *page);
    Choreo__Inventory__V1__StockLevel *pb = calloc(size, sizeof *pb), **ptrs = calloc(size, sizeof *ptrs);
    char next[INV_TOKEN_MAX + 1];
    size_t n = 0;

    if (!page || !pb || !ptrs) {
        rpc_call_prepare_fail(call, CH_NO_MEMORY, "out of memory");
        goto cleanup;
    }
    if (inv_store_list(svc->store, r->page_token, page, size, &n, next) != CH_OK) {
        rpc_call_prepare_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        pb_stock_fill(&pb[i], page[i]);
        ptrs[i] = &pb[i];
    }
    Choreo__Inventory__V1__ListStockResponse resp = CHOREO__INVENTORY__V1__LIST_STOCK_RESPONSE__INIT;
    size_t fit = rpc_call_fit_items(call, &resp.base, INV_TOKEN_MAX, (ProtobufCMessage *const *)ptrs, n);
    if (fit < n) /* the same first `fit`, and the token after them */
        inv_store_list(svc->store, r->page_token, page, fit, &n, next);
    resp.n_stock = n;
    resp.stock = ptrs;
    resp.next_page_token = next;
    rpc_call_prepare_reply(call, &resp.base);

cleanup:
    free(page);
    free(pb);
    free(ptrs);
}

static void reply_reservation(inventory_service *svc, rpc_call *call, const char *order_id)
{
    const inv_reservation *res = inv_store_reservation(svc->store, order_id);
    Choreo__Inventory__V1__ReservationLine lines[INV_LINES_MAX], *ptrs[INV_LINES_MAX];

    if (!res) {
        rpc_call_prepare_fail(call, CH_NOT_FOUND, "order_id: no reservation for order %s", order_id);
        return;
    }
    Choreo__Inventory__V1__Reservation pb = CHOREO__INVENTORY__V1__RESERVATION__INIT;
    pb.order_id = (char *)res->order_id;
    pb.status = (Choreo__Inventory__V1__ReservationStatus)res->status;
    pb.reason = res->reason ? res->reason : (char *)"";
    pb.n_lines = res->n_lines;
    pb.lines = ptrs;
    for (uint32_t i = 0; i < res->n_lines && i < INV_LINES_MAX; i++) {
        lines[i] = (Choreo__Inventory__V1__ReservationLine)CHOREO__INVENTORY__V1__RESERVATION_LINE__INIT;
        lines[i].sku = res->lines[i].sku;
        lines[i].quantity = res->lines[i].quantity;
        ptrs[i] = &lines[i];
    }
    Choreo__Inventory__V1__GetReservationResponse resp =
        CHOREO__INVENTORY__V1__GET_RESERVATION_RESPONSE__INIT;
    resp.reservation = &pb;
    rpc_call_prepare_reply(call, &resp.base);
}

/* ---- handlers (gRPC threads): check, then hand to the writer ---- */

static void set_stock(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Inventory__V1__SetStockRequest *r = (const Choreo__Inventory__V1__SetStockRequest *)msg;
    char err[256];

    if (inv_validate_set(r->sku, r->available, err, sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        return;
    }
    submit(ctx, call, CALL_SET, msg);
}

static void adjust_stock(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Inventory__V1__AdjustStockRequest *r =
        (const Choreo__Inventory__V1__AdjustStockRequest *)msg;
    char err[256];

    /* the key first: a bad key is named even when the rest is bad too */
    if (inv_validate_idempotency_key(r->idempotency_key, err, sizeof err) != CH_OK ||
        inv_validate_adjust(r->sku, r->delta, r->idempotency_key, err, sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        return;
    }
    submit(ctx, call, CALL_ADJUST, msg);
}

static void get_stock(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Inventory__V1__GetStockRequest *r = (const Choreo__Inventory__V1__GetStockRequest *)msg;
    char err[256];

    if (inv_validate_sku(r->sku, err, sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        return;
    }
    submit(ctx, call, CALL_GET_STOCK, msg);
}

static void list_stock(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Inventory__V1__ListStockRequest *r = (const Choreo__Inventory__V1__ListStockRequest *)msg;

    if (r->page_size > INV_PAGE_MAX) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_size: must be 0..%d, got %" PRIu32, INV_PAGE_MAX,
                      r->page_size);
        return;
    }
    if (strlen(r->page_token) > INV_TOKEN_MAX) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        return;
    }
    submit(ctx, call, CALL_LIST, msg);
}

static void get_reservation(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Inventory__V1__GetReservationRequest *r =
        (const Choreo__Inventory__V1__GetReservationRequest *)msg;
    char err[256];

    if (inv_validate_order_id(r->order_id, err, sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        return;
    }
    submit(ctx, call, CALL_GET_RESERVATION, msg);
}

/* ---- in the writer ---- */

/* The SKU a stock call names. */
static const char *call_sku(const service_call *sc)
{
    switch (sc->method) {
    case CALL_SET: return ((const Choreo__Inventory__V1__SetStockRequest *)sc->req)->sku;
    case CALL_ADJUST: return ((const Choreo__Inventory__V1__AdjustStockRequest *)sc->req)->sku;
    default: return ((const Choreo__Inventory__V1__GetStockRequest *)sc->req)->sku;
    }
}

/* The answer to a call, as the state is at its place among the decisions. */
static void prepare_answer(inventory_service *svc, service_call *sc)
{
    if (sc->method == CALL_LIST)
        reply_list(svc, sc->call, (const Choreo__Inventory__V1__ListStockRequest *)sc->req);
    else if (sc->method == CALL_GET_RESERVATION)
        reply_reservation(svc, sc->call,
                          ((const Choreo__Inventory__V1__GetReservationRequest *)sc->req)->order_id);
    else
        reply_stock(svc, sc->call, call_sku(sc), (inventory_method)sc->method);
}

ch_status inventory_call_decide(inventory_service *svc, writer *w, writer_input *in)
{
    service_call *sc = in->call;
    inv_decision *d = &svc->room->d;
    inv_outcome out = INV_APPEND;
    ch_status st;

    if (sc->method == CALL_SET) {
        const Choreo__Inventory__V1__SetStockRequest *r =
            (const Choreo__Inventory__V1__SetStockRequest *)sc->req;
        st = inv_decide_set(svc->store, r->sku, r->available, d, sc->err, sizeof sc->err);
    } else if (sc->method == CALL_ADJUST) {
        const Choreo__Inventory__V1__AdjustStockRequest *r =
            (const Choreo__Inventory__V1__AdjustStockRequest *)sc->req;
        st = inv_decide_adjust_key(svc->store, r->sku, r->delta, r->idempotency_key, d, &out, sc->err,
                                   sizeof sc->err);
    } else {
        st = CH_OK; /* a read */
        out = INV_DECIDED;
    }
    /* INV_DECIDED: a read, or a retry with the same key (adjusted once) */
    if (st == CH_OK && out == INV_APPEND)
        st = inventory_record(svc, w, &d->entry, rpc_call_method(sc->call), NULL);
    if (st == CH_OK)
        prepare_answer(svc, sc); /* as the state is here; sent once what came before is stored */
    return st;
}

void inventory_call_finish(inventory_service *svc, writer_input *in, ch_status st)
{
    service_call *sc = in->call;
    bool set = sc->method == CALL_SET, write = set || sc->method == CALL_ADJUST;
    const char *key = sc->method == CALL_ADJUST
                          ? ((const Choreo__Inventory__V1__AdjustStockRequest *)sc->req)->idempotency_key
                          : "";
    const char *what = !write ? NULL : set ? "SetStock" : "AdjustStock";
    const char *retry = set      ? "retry (it sets an absolute level)"
                        : key[0] ? "retry with the same idempotency_key"
                                 : "read the stock before retrying (an idempotency_key makes retries safe)";

    if (write && (st == CH_TIMEOUT || st == CH_UNAVAILABLE))
        log_warn("stock not confirmed", "sku", call_sku(sc), "status", ch_status_str(st), NULL);
    if (!service_call_answer(sc, st, what, retry)) {
        if (!write) /* lost every race, or no memory */
            rpc_call_fail(sc->call, CH_UNAVAILABLE, "state not confirmed current (%s); retry",
                          ch_status_str(st));
        else if (st == CH_CONFLICT)
            rpc_call_fail(sc->call, CH_UNAVAILABLE, "stock busy (other replicas kept writing first), retry");
        else
            rpc_call_fail(sc->call, st, "stock not written: %s", ch_status_str(st));
    }
    free(sc);
}

ch_status inventory_rpc_register(rpc_server *s, inventory_service *svc)
{
    static const rpc_handler handlers[] = {
        {"SetStock", RPC_UNARY, set_stock, NULL},
        {"AdjustStock", RPC_UNARY, adjust_stock, NULL},
        {"GetStock", RPC_UNARY, get_stock, NULL},
        {"ListStock", RPC_UNARY, list_stock, NULL},
        {"GetReservation", RPC_UNARY, get_reservation, NULL},
    };
    return rpc_server_add_service(s, &choreo__inventory__v1__inventory__descriptor, handlers,
                                  sizeof handlers / sizeof handlers[0], svc);
}
