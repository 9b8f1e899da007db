/* order_core.h: the orders domain, pure (no gRPC, no NATS, no clock).
 *
 * An order's state is a fold of its events: order_apply() is the reducer, the
 * only code that changes an order. The service appends an event to the stream
 * first and applies it after, and on restart it rebuilds every order by
 * applying the streams' events again, so memory is a cache of the streams.
 *
 * The events of one order come from several streams (orders', inventory's,
 * payment's) and reach a replica in any interleaving, so the reducer does not
 * depend on their order: each event records a fact (reserved, paid,
 * declined, released, ...), and the status is derived from the set of facts.
 * Any order of the same events gives the same order. Two facts contradict
 * each other only when a participant misbehaves (paid and declined); then
 * the first one folded in stands and the second is refused.
 *
 * Status (derived, SAGA.md), first rule that holds:
 *   CANCELLED   order.cancelled seen; or out of stock; or declined and its
 *               reservation released; or cancel requested, refunded and
 *               restocked
 *   RESERVED    declined, its reservation not released yet
 *   CANCELLING  cancel requested; refund and restock under way
 *   CONFIRMED   paid (or order.confirmed seen); terminal unless cancelled
 *   RESERVED    every item held; waiting for payment
 *   PENDING     created; waiting for inventory
 *
 * Ownership: an order_store owns its orders; pointers it returns stay valid
 * until the store is destroyed (orders are never removed). Requests and events
 * passed in are borrowed and copied as needed. Not thread-safe: the service
 * serialises access. */
#ifndef CHOREO_ORDER_CORE_H
#define CHOREO_ORDER_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define ORDER_ID_MAX              40
#define ORDER_CUSTOMER_MAX        64
#define ORDER_SKU_MAX             64
#define ORDER_ITEMS_MAX           100
#define ORDER_QTY_MAX             10000
#define ORDER_PRICE_MAX           1000000000LL
#define ORDER_IDEMPOTENCY_KEY_MAX 128
#define ORDER_REASON_MAX          200
#define ORDER_EVENT_ID_MAX        32 /* bytes of an event id (32 hex digits) */
#define ORDER_TRACEPARENT_MAX     55 /* bytes of a W3C traceparent */
#define ORDER_PAGE_DEFAULT        50
#define ORDER_PAGE_MAX            500
#define ORDER_STUBS_MAX           65536 /* orders known by their later events only, waiting for their creation */

/* Same numbers as choreo.orders.v1.OrderStatus. */
typedef enum order_status {
    ORDER_UNSPECIFIED = 0,
    ORDER_PENDING = 1,
    ORDER_RESERVED = 2,
    ORDER_CONFIRMED = 3,
    ORDER_CANCELLING = 4,
    ORDER_CANCELLED = 5,
} order_status;

typedef struct order_item {
    char sku[ORDER_SKU_MAX + 1];
    uint32_t quantity;
    int64_t unit_price_cents;
} order_item;

typedef struct order {
    char id[ORDER_ID_MAX + 1];
    char customer_id[ORDER_CUSTOMER_MAX + 1];
    order_item *items;
    uint32_t n_items;
    int64_t total_cents;
    order_status status;
    char *reason;          /* NULL when none */
    int reason_rank;       /* which kind of event gave it (order_core.c) */
    char *idempotency_key; /* NULL when none */
    char *key_index;       /* customer_id "\x1f" idempotency_key, the store's index key; NULL when none */
    uint64_t version;      /* facts recorded: 1 (created) + the saga's steps seen */
    int64_t created_ms;
    int64_t updated_ms; /* time of the latest event folded in */
    uint64_t last_seq;  /* highest stream sequence folded in (of any stream) */
    bool created;       /* order.created folded in (false: a stub holding facts that came first) */
    unsigned facts;     /* ORDER_FACT_* seen */
    /* The event whose step made the outcome due (the payment.processed of a
     * confirmation, the last compensation of a cancel): the cause its outcome
     * event names, whichever thread folds it in first. "" when not known. */
    char outcome_cause[ORDER_EVENT_ID_MAX + 1];
    char traceparent[ORDER_TRACEPARENT_MAX + 1]; /* the saga's trace, from order.created ("" when none) */
    uint64_t list_pos;                           /* position in creation order, for paging */
} order;

/* The facts an order's events record (order.facts). */
#define ORDER_FACT_RESERVED         (1u << 0) /* inventory.reserved */
#define ORDER_FACT_OUT_OF_STOCK     (1u << 1) /* inventory.failed */
#define ORDER_FACT_PAID             (1u << 2) /* payment.processed */
#define ORDER_FACT_DECLINED         (1u << 3) /* payment.failed */
#define ORDER_FACT_RELEASED         (1u << 4) /* inventory.released */
#define ORDER_FACT_CANCEL_REQUESTED (1u << 5) /* order.cancel_requested */
#define ORDER_FACT_REFUNDED         (1u << 6) /* payment.refunded */
#define ORDER_FACT_CONFIRMED_SEEN   (1u << 7) /* order.confirmed is in the stream */
#define ORDER_FACT_CANCELLED_SEEN   (1u << 8) /* order.cancelled is in the stream */

/* What CreateOrder asks for, borrowed from the request. */
typedef struct order_create_req {
    const char *customer_id;
    const order_item *items; /* n_items entries */
    size_t n_items;
    const char *idempotency_key; /* "" or NULL when none */
} order_create_req;

/* Domain events as the reducer sees them (decoded from the wire by the
 * adapter). Only the fields of `kind` are read. */
typedef enum order_event_kind {
    ORDER_EV_CREATED = 0,
    ORDER_EV_INVENTORY_RESERVED,
    ORDER_EV_INVENTORY_FAILED,
    ORDER_EV_PAYMENT_PROCESSED,
    ORDER_EV_PAYMENT_FAILED,
    ORDER_EV_INVENTORY_RELEASED,
    ORDER_EV_CONFIRMED,
    ORDER_EV_CANCEL_REQUESTED,
    ORDER_EV_PAYMENT_REFUNDED,
    ORDER_EV_CANCELLED,
    ORDER_EV_OTHER, /* concerns the order but changes nothing (notification.sent) */
} order_event_kind;

typedef struct order_event {
    order_event_kind kind;
    const char *order_id;
    uint64_t seq;         /* stream sequence; 0 when not known yet */
    const char *event_id; /* the event's own id; NULL when not known */
    int64_t time_ms;      /* when the event was published */
    /* ORDER_EV_CREATED */
    const char *customer_id;
    const order_item *items;
    size_t n_items;
    const char *idempotency_key;
    const char *traceparent; /* may be NULL */
    /* failures and cancels: why */
    const char *reason;
} order_event;

/* Checks a CreateOrder request. On failure writes a message naming the field
 * ("items[2].quantity: must be 1..10000, got 0") and returns
 * CH_INVALID_ARGUMENT. */
ch_status order_validate_create(const order_create_req *r, char *err, size_t errlen);

/* Sum of quantity * unit price; valid requests cannot overflow it. */
int64_t order_total(const order_item *items, size_t n);

/* The reducer. Records e's fact in o (o zeroed for a new order); any order
 * of the same events gives the same o. An event before the order's
 * order.created is kept in o as a stub (o->created false, status
 * UNSPECIFIED) until it comes. A repeat (the same fact, whatever its
 * sequence) changes nothing and returns CH_OK with *changed false. An event
 * that contradicts a fact already recorded (payment.failed after
 * payment.processed, inventory.failed after inventory.reserved) returns
 * CH_FAILED_PRECONDITION and changes nothing. Pure: no I/O, no clock. */
ch_status order_apply(order *o, const order_event *e, bool *changed);

/* True while the saga runs (PENDING, RESERVED, CANCELLING). */
bool order_saga_running(const order *o);

/* What the orders service must publish next for o, derived from its state
 * alone (so a re-run after a crash decides the same). */
typedef enum order_reaction {
    ORDER_REACT_NONE = 0,
    ORDER_REACT_CONFIRM, /* payment processed: publish order.confirmed */
    ORDER_REACT_CANCEL,  /* saga over without a sale: publish order.cancelled */
} order_reaction;

order_reaction order_next_reaction(const order *o);

/* What the handler of event event_id must publish for o: the next reaction
 * when that event is the one whose step made it due (o->outcome_cause), or
 * when the cause is not known; ORDER_REACT_NONE otherwise, because the
 * handler of the causing event publishes it, naming that event as its cause,
 * even when another thread folded the event in first. */
order_reaction order_reaction_to(const order *o, const char *event_id);

/* Whether the customer may cancel o now. CH_OK for a CONFIRMED order;
 * CH_ALREADY_EXISTS when it is already CANCELLING or CANCELLED (nothing to
 * do); CH_FAILED_PRECONDITION with a message while the saga runs. */
ch_status order_check_cancel(const order *o, char *err, size_t errlen);

const char *order_status_name(order_status s);

/* Frees what order_apply allocated inside o (not o itself). */
void order_clear(order *o);

/* ---- the store: every order, by id, by idempotency key, by creation ---- */

typedef struct order_store order_store;

ch_status order_store_create(order_store **out);
void order_store_destroy(order_store *s); /* accepts NULL */

/* The order with this id, or NULL. */
const order *order_store_get(const order_store *s, const char *id);

/* True when steps of order id wait for its order.created (folded in before
 * it: order_store_apply said CH_NOT_FOUND). */
bool order_store_has_stub(const order_store *s, const char *id);

/* The order created with this customer and idempotency key, or NULL. */
const order *order_store_by_key(const order_store *s, const char *customer_id, const char *key);

/* Applies e to its order, creating the order on CREATED. *changed tells
 * whether anything changed. An event of an order not created yet is kept
 * (folded into it when its order.created comes, whichever stream is read
 * first) and returns CH_NOT_FOUND; CH_RESOURCE_EXHAUSTED when
 * ORDER_STUBS_MAX such orders are waiting already. */
ch_status order_store_apply(order_store *s, const order_event *e, const order **out, bool *changed);

size_t order_store_count(const order_store *s);

/* What order_store_undo needs to take back one event applied to an order
 * (an event the service decided and published, not stored in the end).
 * Fits in the service writer's undo room. */
typedef struct order_undo {
    char id[ORDER_ID_MAX + 1];
    bool creation; /* the event created the order: it goes again */
    /* otherwise the order's state before the event */
    unsigned facts;
    int reason_rank;
    bool had_reason;
    char reason[ORDER_REASON_MAX + 1];
    order_status status;
    uint64_t version, last_seq;
    int64_t updated_ms;
    char outcome_cause[ORDER_EVENT_ID_MAX + 1];
} order_undo;

/* Records in *u what o is now, before the service applies one more event of
 * its own to it; creation: the event creates o (o is NULL then and id
 * names it). */
void order_undo_record(order_undo *u, const order *o, const char *id, bool creation);

/* Takes back the event u was recorded for, which must be the newest applied
 * (undo newest first): the order is as before it, or, for a creation, gone
 * (it must be the newest order). Never allocates; CH_NOT_FOUND when there is
 * no such order, CH_FAILED_PRECONDITION when a creation is not the newest. */
ch_status order_store_undo(order_store *s, const order_undo *u);

/* One page of orders, newest first. page_token is "" for the first page or
 * a token from a previous page; filters: customer_id ("" = any) and status
 * (ORDER_UNSPECIFIED = any). Fills out[0..*n) (cap entries) with borrowed
 * pointers and next_token (cap 32) with "" on the last page.
 * CH_INVALID_ARGUMENT for a token this store did not make. */
ch_status order_store_list(const order_store *s, const char *page_token, const char *customer_id,
                           order_status status, const order **out, size_t cap, size_t *n, char *next_token);

/* A deterministic order id for (customer, idempotency key), so a retry on any
 * replica or after a crash names the same order: "ord-" + 16 hex digits. */
void order_id_from_key(char out[ORDER_ID_MAX + 1], const char *customer_id, const char *key);

/* An order id from 64 random bits supplied by the caller. */
void order_id_from_bits(char out[ORDER_ID_MAX + 1], uint64_t bits);

#endif
