/* saga_client.h: the saga's gRPC calls (stock, accounts, orders,
 * notifications) as plain functions over one rpc_client, for the integration
 * tests. They assert nothing: each returns a ch_status or a value and the test
 * decides what to check.
 *
 * Ownership: the caller owns the clients and every buffer it passes in; no
 * function keeps a pointer after it returns. Any thread (rpc_client allows
 * concurrent calls). Every call has a deadline of SC_CALL_TIMEOUT_MS. */
#ifndef CHOREO_TEST_SAGA_CLIENT_H
#define CHOREO_TEST_SAGA_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "rpc_client.h"

#define SC_ORDERS_API        "choreo.orders.v1.Orders"
#define SC_INVENTORY_API     "choreo.inventory.v1.Inventory"
#define SC_PAYMENT_API       "choreo.payment.v1.Payment"
#define SC_NOTIFICATIONS_API "choreo.notifications.v1.Notifications"
#define SC_CALL_TIMEOUT_MS   5000

/* A SKU's stock; every field is -1 when it could not be read. */
typedef struct sc_stock {
    int64_t available, reserved, sold, total_in;
} sc_stock;

/* A customer's account in cents; every field is -1 when it could not be read. */
typedef struct sc_account {
    int64_t balance, credited, charged, refunded;
} sc_account;

/* An order of one line item. */
typedef struct sc_order {
    const char *customer;
    const char *key; /* idempotency key; "" for none */
    const char *sku;
    uint32_t qty;
    int64_t price_cents;
} sc_order;

/* Unary call of "/<service>/<method>" through c. On CH_OK *resp is the
 * caller's (free it with protobuf_c_message_free_unpacked), else NULL. res
 * may be NULL. */
ch_status sc_call(rpc_client *c, const char *service, const char *method, const ProtobufCMessage *req,
                  const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                  rpc_client_result *res);

/* Inventory SetStock: sku gets `available` units. */
ch_status sc_set_stock(rpc_client *c, const char *sku, int64_t available);

/* Inventory GetStock into *out (all -1 on failure). */
ch_status sc_get_stock(rpc_client *c, const char *sku, sc_stock *out);

/* Payment CreditAccount: adds cents to the customer's balance. */
ch_status sc_credit(rpc_client *c, const char *customer, int64_t cents);

/* Payment GetAccount into *out (all -1 on failure). */
ch_status sc_get_account(rpc_client *c, const char *customer, sc_account *out);

/* Orders CreateOrder of o, up to `attempts` tries: attempt i goes through
 * clients[i % n_clients] and, while the answer is UNAVAILABLE, TIMEOUT or
 * CANCELLED, the next one follows after pause_ms (same idempotency key, so
 * the same order). On CH_OK the order id is written to id (cap bytes). */
ch_status sc_place(rpc_client *const *clients, size_t n_clients, const sc_order *o, int attempts,
                   int pause_ms, char *id, size_t cap);

/* Orders GetOrder: the order's status (an OrderStatus number), -1 when
 * unknown; its reason goes to reason (cap bytes) unless reason is NULL. */
int sc_order_status(rpc_client *c, const char *id, char *reason, size_t cap);

/* Notifications ListNotifications: how many of one kind (0: any) are listed
 * for the order (first page of 50), -1 on error. */
int sc_notifications_of(rpc_client *c, const char *order_id, int kind);

#endif
