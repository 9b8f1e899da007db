/* inventory_rpc.c: the choreo.inventory.v1.Inventory gRPC API, a thin
 * adapter: it turns requests into core decisions and ledger appends, and
 * the store into replies. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "choreo/inventory/v1/inventory.pb-c.h"
#include "inventory.h"
#include "log.h"
#include "service.h"

/* ---- stock -> reply ---- */

static void pb_stock_fill(Choreo__Inventory__V1__StockLevel *pb, inv_stock *st)
{
    *pb = (Choreo__Inventory__V1__StockLevel)CHOREO__INVENTORY__V1__STOCK_LEVEL__INIT;
    pb->sku = st->sku;
    pb->available = st->available;
    pb->reserved = st->reserved;
    pb->sold = st->sold;
    pb->total_in = st->total_in;
}

typedef enum stock_reply { REPLY_SET, REPLY_ADJUST, REPLY_GET } stock_reply;

/* Replies with one stock level as the response of `method` (st is a copy
 * made under the lock, so the reply needs no lock). */
static void reply_stock(rpc_call *call, inv_stock *st, stock_reply method)
{
    Choreo__Inventory__V1__StockLevel pb;

    pb_stock_fill(&pb, st);
    if (method == REPLY_SET) {
        Choreo__Inventory__V1__SetStockResponse resp = CHOREO__INVENTORY__V1__SET_STOCK_RESPONSE__INIT;
        resp.stock = &pb;
        rpc_call_reply(call, &resp.base);
    } else if (method == REPLY_ADJUST) {
        Choreo__Inventory__V1__AdjustStockResponse resp = CHOREO__INVENTORY__V1__ADJUST_STOCK_RESPONSE__INIT;
        resp.stock = &pb;
        rpc_call_reply(call, &resp.base);
    } else {
        Choreo__Inventory__V1__GetStockResponse resp = CHOREO__INVENTORY__V1__GET_STOCK_RESPONSE__INIT;
        resp.stock = &pb;
        rpc_call_reply(call, &resp.base);
    }
}

/* ---- handlers ---- */

/* SetStock (set true) and AdjustStock (key: its idempotency_key, "" for
 * none): decide, append (retrying a lost compare-and-set from the fresh
 * state), reply with the new level. A key adjusted before appends nothing
 * and replies with the current level. */
static void write_stock(rpc_call *call, inventory_service *svc, const char *sku, int64_t value, bool set,
                        const char *key)
{
    inv_decision *d = NULL;
    char err[256] = "", msg_id[INV_SKU_MAX + INV_KEY_MAX + 16];
    inv_outcome out = INV_APPEND;
    inv_stock copy;
    int attempts = 0;
    ch_status st;

    if (!set && inv_validate_idempotency_key(key, err, sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        return;
    }
    bool keyed = !set && key && key[0];
    if (keyed)
        /* the SKU's length keeps "a:b"+"c" apart from "a"+"b:c" */
        snprintf(msg_id, sizeof msg_id, "adjust:%zu:%s:%s", strlen(sku), sku, key);
    d = malloc(sizeof *d);
    if (!d) {
        rpc_call_fail(call, CH_NO_MEMORY, "out of memory");
        return;
    }
    int64_t timeout = svc->cfg ? svc->cfg->publish_timeout_ms : 5000;
    int64_t left = rpc_call_remaining_ms(call);
    if (left < timeout)
        timeout = left > 1 ? left : 1;

    pthread_mutex_lock(&svc->mu);
    for (;;) {
        st = set ? inv_decide_set(svc->store, sku, value, d, err, sizeof err)
                 : inv_decide_adjust_key(svc->store, sku, value, key, d, &out, err, sizeof err);
        if (st != CH_OK || out != INV_APPEND)
            break;
        st = inventory_append(svc, &d->entry, keyed ? msg_id : NULL, (int)timeout);
        if (st != CH_CONFLICT || ++attempts >= INVENTORY_CAS_ATTEMPTS)
            break;
    }
    /* A retry whose first try was stored by another replica (or before a
     * restart, within the dedup window) comes back as a duplicate: catch up
     * so the reply shows the adjustment. */
    if (st == CH_OK && keyed && !inv_store_adjust_key_known(svc->store, sku, key))
        ledger_catch_up(svc->ledger);
    const inv_stock *now = st == CH_OK ? inv_store_stock(svc->store, sku) : NULL;
    if (now)
        copy = *now;
    pthread_mutex_unlock(&svc->mu);

    switch (st) {
    case CH_OK:
        if (!now) {
            rpc_call_fail(call, CH_INTERNAL, "sku: %s was written but is not in the store", sku);
            break;
        }
        reply_stock(call, &copy, set ? REPLY_SET : REPLY_ADJUST);
        break;
    case CH_INVALID_ARGUMENT:
    case CH_FAILED_PRECONDITION: rpc_call_fail(call, st, "%s", err); break;
    case CH_CONFLICT:
        rpc_call_fail(call, CH_UNAVAILABLE, "stock ledger busy (concurrent writers), retry");
        break;
    case CH_TIMEOUT:
    case CH_UNAVAILABLE:
        log_warn("stock not confirmed", "sku", sku, "status", ch_status_str(st), NULL);
        service_fail_unconfirmed(
            call, st, set ? "SetStock" : "AdjustStock",
            set     ? "retry (it sets an absolute level)"
            : keyed ? "retry with the same idempotency_key"
                    : "read the stock before retrying (an idempotency_key makes retries safe)");
        break;
    default: rpc_call_fail(call, st, "stock not written: %s", ch_status_str(st)); break;
    }
    free(d);
}

static void set_stock(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Inventory__V1__SetStockRequest *r = (const Choreo__Inventory__V1__SetStockRequest *)msg;
    write_stock(call, ctx, r->sku, r->available, true, NULL);
}

static void adjust_stock(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Inventory__V1__AdjustStockRequest *r =
        (const Choreo__Inventory__V1__AdjustStockRequest *)msg;
    write_stock(call, ctx, r->sku, r->delta, false, r->idempotency_key);
}

static void get_stock(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Inventory__V1__GetStockRequest *r = (const Choreo__Inventory__V1__GetStockRequest *)msg;
    inventory_service *svc = ctx;
    char err[256];
    inv_stock copy;

    if (inv_validate_sku(r->sku, err, sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        return;
    }
    pthread_mutex_lock(&svc->mu);
    const inv_stock *st = inv_store_stock(svc->store, r->sku);
    if (st)
        copy = *st;
    pthread_mutex_unlock(&svc->mu);
    if (!st) {
        rpc_call_fail(call, CH_NOT_FOUND, "sku: %s was never stocked", r->sku);
        return;
    }
    reply_stock(call, &copy, REPLY_GET);
}

static void list_stock(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Inventory__V1__ListStockRequest *r = (const Choreo__Inventory__V1__ListStockRequest *)msg;
    inventory_service *svc = ctx;
    size_t size = r->page_size ? r->page_size : INV_PAGE_DEFAULT;
    const inv_stock **page = NULL;
    inv_stock *copies = NULL;
    Choreo__Inventory__V1__StockLevel *pb = NULL, **ptrs = NULL;
    char next[INV_TOKEN_MAX + 1];
    size_t n = 0;

    if (size > INV_PAGE_MAX) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_size: must be 0..%d, got %" PRIu32, INV_PAGE_MAX,
                      r->page_size);
        return;
    }
    if (strlen(r->page_token) > INV_TOKEN_MAX) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        return;
    }
    page = calloc(size, sizeof *page);
    copies = calloc(size, sizeof *copies);
    pb = calloc(size, sizeof *pb);
    ptrs = calloc(size, sizeof *ptrs);
    if (!page || !copies || !pb || !ptrs) {
        rpc_call_fail(call, CH_NO_MEMORY, "out of memory");
        goto cleanup;
    }
    Choreo__Inventory__V1__ListStockResponse resp = CHOREO__INVENTORY__V1__LIST_STOCK_RESPONSE__INIT;
    pthread_mutex_lock(&svc->mu);
    ch_status st = inv_store_list(svc->store, r->page_token, page, size, &n, next);
    for (size_t i = 0; st == CH_OK && i < n; i++) {
        copies[i] = *page[i];
        pb_stock_fill(&pb[i], &copies[i]);
        ptrs[i] = &pb[i];
    }
    size_t fit = n;
    if (st == CH_OK)
        fit = rpc_call_fit_items(call, &resp.base, INV_TOKEN_MAX, (ProtobufCMessage *const *)ptrs, n);
    if (fit < n) /* the same first `fit`, and the token after them */
        inv_store_list(svc->store, r->page_token, page, fit, &n, next);
    pthread_mutex_unlock(&svc->mu);
    if (st != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        goto cleanup;
    }
    resp.n_stock = n;
    resp.stock = ptrs;
    resp.next_page_token = next;
    rpc_call_reply(call, &resp.base);

cleanup:
    free(page);
    free(copies);
    free(pb);
    free(ptrs);
}

static void get_reservation(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Inventory__V1__GetReservationRequest *r =
        (const Choreo__Inventory__V1__GetReservationRequest *)msg;
    inventory_service *svc = ctx;
    Choreo__Inventory__V1__ReservationLine lines[INV_LINES_MAX], *ptrs[INV_LINES_MAX];
    char err[256];

    if (inv_validate_order_id(r->order_id, err, sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        return;
    }
    pthread_mutex_lock(&svc->mu);
    const inv_reservation *res = inv_store_reservation(svc->store, r->order_id);
    if (!res) {
        pthread_mutex_unlock(&svc->mu);
        rpc_call_fail(call, CH_NOT_FOUND, "order_id: no reservation for order %s", r->order_id);
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
    rpc_call_reply(call, &resp.base); /* serialized now: the strings point into the store */
    pthread_mutex_unlock(&svc->mu);
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
