/* saga_client.c: the saga's gRPC calls for the integration tests (see
 * saga_client.h). */
#include "saga_client.h"

#include <stdio.h>

#include "choreo/inventory/v1/inventory.pb-c.h"
#include "choreo/notifications/v1/notifications.pb-c.h"
#include "choreo/orders/v1/orders.pb-c.h"
#include "choreo/payment/v1/payment.pb-c.h"
#include "proc.h"

ch_status sc_call(rpc_client *c, const char *service, const char *method, const ProtobufCMessage *req,
                  const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                  rpc_client_result *res)
{
    char path[160];
    snprintf(path, sizeof path, "/%s/%s", service, method);
    return rpc_client_call(c, path, NULL, 0, req, resp_desc, resp, SC_CALL_TIMEOUT_MS, res);
}

/* A call whose reply only matters by its status. */
static ch_status call_status_only(rpc_client *c, const char *service, const char *method,
                                  const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc)
{
    ProtobufCMessage *resp = NULL;
    ch_status st = sc_call(c, service, method, req, resp_desc, &resp, NULL);
    protobuf_c_message_free_unpacked(resp, NULL);
    return st;
}

ch_status sc_set_stock(rpc_client *c, const char *sku, int64_t available)
{
    Choreo__Inventory__V1__SetStockRequest req = CHOREO__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    req.sku = (char *)sku;
    req.available = available;
    return call_status_only(c, SC_INVENTORY_API, "SetStock", &req.base,
                            &choreo__inventory__v1__set_stock_response__descriptor);
}

ch_status sc_credit(rpc_client *c, const char *customer, int64_t cents)
{
    Choreo__Payment__V1__CreditAccountRequest req = CHOREO__PAYMENT__V1__CREDIT_ACCOUNT_REQUEST__INIT;
    req.customer_id = (char *)customer;
    req.amount_cents = cents;
    return call_status_only(c, SC_PAYMENT_API, "CreditAccount", &req.base,
                            &choreo__payment__v1__credit_account_response__descriptor);
}

ch_status sc_get_stock(rpc_client *c, const char *sku, sc_stock *out)
{
    Choreo__Inventory__V1__GetStockRequest req = CHOREO__INVENTORY__V1__GET_STOCK_REQUEST__INIT;
    Choreo__Inventory__V1__GetStockResponse *resp = NULL;
    req.sku = (char *)sku;
    *out = (sc_stock){-1, -1, -1, -1};
    ch_status st =
        sc_call(c, SC_INVENTORY_API, "GetStock", &req.base,
                &choreo__inventory__v1__get_stock_response__descriptor, (ProtobufCMessage **)&resp, NULL);
    if (st != CH_OK)
        return st;
    *out =
        (sc_stock){resp->stock->available, resp->stock->reserved, resp->stock->sold, resp->stock->total_in};
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return CH_OK;
}

ch_status sc_get_account(rpc_client *c, const char *customer, sc_account *out)
{
    Choreo__Payment__V1__GetAccountRequest req = CHOREO__PAYMENT__V1__GET_ACCOUNT_REQUEST__INIT;
    Choreo__Payment__V1__GetAccountResponse *resp = NULL;
    req.customer_id = (char *)customer;
    *out = (sc_account){-1, -1, -1, -1};
    ch_status st =
        sc_call(c, SC_PAYMENT_API, "GetAccount", &req.base,
                &choreo__payment__v1__get_account_response__descriptor, (ProtobufCMessage **)&resp, NULL);
    if (st != CH_OK)
        return st;
    const Choreo__Payment__V1__Account *a = resp->account;
    *out = (sc_account){a->balance_cents, a->credited_cents, a->charged_cents, a->refunded_cents};
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return CH_OK;
}

ch_status sc_place(rpc_client *const *clients, size_t n_clients, const sc_order *o, int attempts,
                   int pause_ms, char *id, size_t cap)
{
    Choreo__Orders__V1__LineItem li = CHOREO__ORDERS__V1__LINE_ITEM__INIT;
    Choreo__Orders__V1__LineItem *items[1] = {&li};
    Choreo__Orders__V1__CreateOrderRequest req = CHOREO__ORDERS__V1__CREATE_ORDER_REQUEST__INIT;
    Choreo__Orders__V1__CreateOrderResponse *resp = NULL;
    ch_status st = CH_UNAVAILABLE;

    li.sku = (char *)o->sku;
    li.quantity = o->qty;
    li.unit_price_cents = o->price_cents;
    req.customer_id = (char *)o->customer;
    req.idempotency_key = (char *)o->key;
    req.n_items = 1;
    req.items = items;
    for (int attempt = 0; attempt < attempts; attempt++) {
        st =
            sc_call(clients[(size_t)attempt % n_clients], SC_ORDERS_API, "CreateOrder", &req.base,
                    &choreo__orders__v1__create_order_response__descriptor, (ProtobufCMessage **)&resp, NULL);
        if (st == CH_OK) {
            snprintf(id, cap, "%s", resp->order->order_id);
            protobuf_c_message_free_unpacked(&resp->base, NULL);
            return CH_OK;
        }
        if (st != CH_UNAVAILABLE && st != CH_TIMEOUT && st != CH_CANCELLED)
            return st;
        test_sleep_ms(pause_ms);
    }
    return st;
}

int sc_order_status(rpc_client *c, const char *id, char *reason, size_t cap)
{
    Choreo__Orders__V1__GetOrderRequest req = CHOREO__ORDERS__V1__GET_ORDER_REQUEST__INIT;
    Choreo__Orders__V1__GetOrderResponse *resp = NULL;
    req.order_id = (char *)id;
    if (sc_call(c, SC_ORDERS_API, "GetOrder", &req.base, &choreo__orders__v1__get_order_response__descriptor,
                (ProtobufCMessage **)&resp, NULL) != CH_OK)
        return -1;
    int s = (int)resp->order->status;
    if (reason)
        snprintf(reason, cap, "%s", resp->order->reason);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return s;
}

int sc_notifications_of(rpc_client *c, const char *order_id, int kind)
{
    Choreo__Notifications__V1__ListNotificationsRequest req =
        CHOREO__NOTIFICATIONS__V1__LIST_NOTIFICATIONS_REQUEST__INIT;
    Choreo__Notifications__V1__ListNotificationsResponse *resp = NULL;
    req.order_id = (char *)order_id;
    req.page_size = 50;
    if (sc_call(c, SC_NOTIFICATIONS_API, "ListNotifications", &req.base,
                &choreo__notifications__v1__list_notifications_response__descriptor,
                (ProtobufCMessage **)&resp, NULL) != CH_OK)
        return -1;
    int n = 0;
    for (size_t i = 0; i < resp->n_notifications; i++)
        if (kind == 0 || (int)resp->notifications[i]->kind == kind)
            n++;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return n;
}
