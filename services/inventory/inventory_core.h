/* inventory_core.h: the inventory domain, pure (no gRPC, no NATS, no clock).
 *
 * The state is stock per SKU and one reservation per order. It is a fold of
 * entries: inv_apply() is the reducer and the only code that changes the
 * state, inv_revert() its inverse. Each entry is one of the service's events
 * (inventory.stock_set, .stock_adjusted, .reserved, .failed, .committed,
 * .released; the adapter converts). Every change is first decided by an
 * inv_decide_*() function, which reads the state and fills an inv_decision
 * (the entry to record) without touching anything; the service applies the
 * entry and publishes its event. On start-up every event is applied again,
 * so memory is a cache of the service's stream. Entries record decisions
 * already taken, so folding them never decides anything again.
 *
 * Per SKU, always: available + reserved + sold == total_in, every counter
 * >= 0, and total_in <= INV_UNITS_MAX. total_in changes only through
 * SetStock/AdjustStock entries.
 *
 * Reservation states (same numbers as choreo.inventory.v1.ReservationStatus):
 *   RESERVED   every line moved available -> reserved (order.created)
 *   COMMITTED  lines moved reserved -> sold (payment.processed)
 *   RELEASED   lines moved back to available, from reserved or from sold
 *              (payment.failed, order.cancel_requested); terminal
 *   REJECTED   some SKU was short, nothing moved (order.created); terminal
 *
 * Ownership: an inv_store owns its stock levels and reservations; pointers it
 * returns stay valid until the store is destroyed, except that inv_revert()
 * of a RESERVED or REJECTED entry frees that order's reservation, and of a
 * stock entry that created its SKU frees that SKU's stock (nothing else is
 * ever removed).
 * Entries and requests passed in are borrowed; an inv_decision is the
 * caller's and its entry points into itself and into the request it was
 * decided from. Not thread-safe: the service serialises access. */
#ifndef CHOREO_INVENTORY_CORE_H
#define CHOREO_INVENTORY_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define INV_SKU_MAX         64
#define INV_ORDER_ID_MAX    40
#define INV_CUSTOMER_MAX    64
#define INV_LINES_MAX       100 /* items of an order, and so distinct SKUs of a reservation */
#define INV_QTY_MAX         10000
#define INV_SET_MAX         1000000000LL       /* SetStock available: 0..this */
#define INV_DELTA_MAX       1000000000LL       /* AdjustStock delta: -this..this, not 0 */
#define INV_UNITS_MAX       1000000000000000LL /* cap of total_in (and so every counter) per SKU */
#define INV_TOTAL_CENTS_MAX 1000000000000000LL /* an order total: 100 items * 10000 * 10^9 cents */
#define INV_REASON_MAX      200
#define INV_KEY_MAX         128 /* AdjustStock idempotency_key, bytes */
#define INV_PAGE_DEFAULT    100
#define INV_PAGE_MAX        500
#define INV_TOKEN_MAX       (1 + 2 * INV_SKU_MAX) /* "k" + hex of the last SKU of a page */

typedef struct inv_store inv_store;

typedef struct inv_stock {
    char sku[INV_SKU_MAX + 1];
    int64_t available;
    int64_t reserved;
    int64_t sold;
    int64_t total_in;
} inv_stock;

typedef enum inv_res_status {
    INV_RES_RESERVED = 1,
    INV_RES_COMMITTED = 2,
    INV_RES_RELEASED = 3,
    INV_RES_REJECTED = 4,
} inv_res_status;

/* A SKU and a number of units: an order item, or a line of a reservation. */
typedef struct inv_line {
    char sku[INV_SKU_MAX + 1];
    uint32_t quantity;
} inv_line;

typedef struct inv_reservation {
    char order_id[INV_ORDER_ID_MAX + 1];
    char customer_id[INV_CUSTOMER_MAX + 1]; /* "" when rejected */
    int64_t total_cents;
    inv_res_status status;
    inv_line *lines; /* n_lines distinct SKUs; none when rejected */
    uint32_t n_lines;
    uint32_t units;     /* sum of the lines' quantities */
    bool was_committed; /* RELEASED: the units came back from sold */
    bool restocked;     /* RELEASED by a customer cancel (order.cancel_requested) */
    char *reason;       /* REJECTED/RELEASED: why (NULL when the entry gave none); NULL otherwise */
    char *short_sku;    /* REJECTED: the first SKU found short; NULL otherwise */
    uint32_t requested; /* REJECTED: units of short_sku the order asked for */
    int64_t available;  /* REJECTED: units of short_sku that were available */
} inv_reservation;

/* ---- entries, as the reducer sees them ---- */

typedef enum inv_entry_kind {
    INV_ENTRY_STOCK_SET = 1,
    INV_ENTRY_STOCK_ADJUSTED,
    INV_ENTRY_RESERVED,
    INV_ENTRY_REJECTED,
    INV_ENTRY_COMMITTED,
    INV_ENTRY_RELEASED,
} inv_entry_kind;

/* One entry; only the fields of `kind` are read. Strings are borrowed. */
typedef struct inv_entry {
    inv_entry_kind kind;
    const char *sku;             /* STOCK_SET, STOCK_ADJUSTED; REJECTED: the short SKU */
    int64_t available;           /* STOCK_SET: the new value; REJECTED: units that were available */
    int64_t delta;               /* STOCK_ADJUSTED; STOCK_SET: informative (the fold recomputes it) */
    const char *idempotency_key; /* STOCK_ADJUSTED: NULL or "" for none; remembered per SKU */
    const char *order_id;        /* reservation entries */
    const char *cause_event_id;  /* reservation entries: the event decided on ("" for none) */
    const char *customer_id;     /* RESERVED */
    int64_t total_cents;         /* RESERVED */
    const inv_line *lines;       /* RESERVED: distinct SKUs */
    size_t n_lines;              /* RESERVED: 1..INV_LINES_MAX */
    uint32_t requested;          /* REJECTED */
    const char *reason;          /* REJECTED, RELEASED */
    bool restocked;              /* RELEASED: by a customer cancel */
    uint32_t units;              /* RESERVED, COMMITTED, RELEASED: units moved (informative: the
                                  * fold takes them from the lines) */
} inv_entry;

/* What a decision concluded. */
typedef enum inv_outcome {
    INV_APPEND,  /* new: apply d->entry and record it (publish its event) */
    INV_DECIDED, /* decided before (a redelivery or a retry): the state holds it, nothing to record */
    INV_NOOP,    /* nothing to record */
} inv_outcome;

/* A decision and the room its entry points into (about 7 KB: keep it off
 * small stacks). */
typedef struct inv_decision {
    inv_entry entry;
    inv_line lines[INV_LINES_MAX];
    char reason[INV_REASON_MAX + 1];
} inv_decision;

/* order.created as the core sees it (decoded by the adapter). */
typedef struct inv_reserve_req {
    const char *order_id;
    const char *customer_id;
    const char *cause_event_id;
    int64_t total_cents;
    const inv_line *items; /* as ordered: the same SKU may appear more than once */
    size_t n_items;
} inv_reserve_req;

/* ---- validation and decisions (read the state, change nothing) ---- */

/* Checks a SKU given to the API; on failure writes "sku: ..." into err and
 * returns CH_INVALID_ARGUMENT. */
ch_status inv_validate_sku(const char *sku, char *err, size_t errlen);

/* Checks an order id (1..40 bytes, a subject token): CH_INVALID_ARGUMENT
 * with "order_id: ..." in err. */
ch_status inv_validate_order_id(const char *order_id, char *err, size_t errlen);

/* Checks a SetStock request as it comes (no state): CH_INVALID_ARGUMENT
 * with err naming sku or available. */
ch_status inv_validate_set(const char *sku, int64_t available, char *err, size_t errlen);

/* Checks an AdjustStock request as it comes (no state): CH_INVALID_ARGUMENT
 * with err naming sku, delta or idempotency_key (NULL or "": none). */
ch_status inv_validate_adjust(const char *sku, int64_t delta, const char *key, char *err, size_t errlen);

/* SetStock: d->entry sets sku's available units to `available`.
 * CH_INVALID_ARGUMENT (err names sku or available) or
 * CH_FAILED_PRECONDITION when total_in would pass INV_UNITS_MAX. An entry
 * for the level the SKU has changes nothing when applied. */
ch_status inv_decide_set(const inv_store *s, const char *sku, int64_t available, inv_decision *d, char *err,
                         size_t errlen);

/* AdjustStock: d->entry adds delta to sku's available units (a new SKU for a
 * positive delta). CH_INVALID_ARGUMENT (err names sku or delta),
 * CH_FAILED_PRECONDITION when available would go negative or total_in past
 * INV_UNITS_MAX. */
ch_status inv_decide_adjust(const inv_store *s, const char *sku, int64_t delta, inv_decision *d, char *err,
                            size_t errlen);

/* Checks an AdjustStock idempotency key: NULL or "" (none), or at most
 * INV_KEY_MAX bytes of UTF-8 without control characters. CH_INVALID_ARGUMENT
 * with "idempotency_key: ..." in err. */
ch_status inv_validate_idempotency_key(const char *key, char *err, size_t errlen);

/* AdjustStock with an idempotency key (NULL or "" for none): as
 * inv_decide_adjust, *out INV_APPEND with the key in d->entry; INV_DECIDED
 * (nothing to append: the current stock is the answer) when this SKU was
 * adjusted with this key before. CH_INVALID_ARGUMENT also for a bad key. */
ch_status inv_decide_adjust_key(const inv_store *s, const char *sku, int64_t delta, const char *key,
                                inv_decision *d, inv_outcome *out, char *err, size_t errlen);

/* order.created: all or nothing over the order's items, summed per SKU first.
 * *out is INV_APPEND with a RESERVED entry when every SKU has the units, else
 * with a REJECTED entry naming the first short SKU; INV_DECIDED when the
 * order already has a reservation (of any status). CH_INVALID_ARGUMENT for
 * a request no order could make (err names the field: an event to
 * dead-letter). */
ch_status inv_decide_reserve(const inv_store *s, const inv_reserve_req *r, inv_decision *d, inv_outcome *out,
                             char *err, size_t errlen);

/* payment.processed: INV_APPEND (COMMITTED, with the reservation's units)
 * for a RESERVED reservation, INV_NOOP otherwise (committed already,
 * released first by a cancel, or rejected). CH_NOT_FOUND when the order has
 * no reservation. */
ch_status inv_decide_commit(const inv_store *s, const char *order_id, const char *cause_event_id,
                            inv_decision *d, inv_outcome *out);

/* payment.failed (customer_cancel false) or order.cancel_requested (true):
 * INV_APPEND (RELEASED, with the reservation's units) for a RESERVED
 * reservation, and for a COMMITTED one when the customer cancels;
 * INV_DECIDED when it is RELEASED already; INV_NOOP otherwise (rejected:
 * nothing held; committed and then payment.failed: a contradiction nobody
 * should send). `why` (may be NULL or "") becomes part of the reason.
 * CH_NOT_FOUND when the order has no reservation. */
ch_status inv_decide_release(const inv_store *s, const char *order_id, bool customer_cancel, const char *why,
                             const char *cause_event_id, inv_decision *d, inv_outcome *out);

/* ---- the store and the reducer ---- */

ch_status inv_store_create(inv_store **out);
void inv_store_destroy(inv_store *s); /* accepts NULL */

/* The reducer: folds one entry into s. An entry already reflected (a second
 * reservation for an order, a repeat of a step taken, an AdjustStock whose
 * SKU and key were applied before) changes nothing and
 * returns CH_OK with *changed false (changed may be NULL). An entry that
 * cannot happen in this state (units that are not there, a step from the
 * wrong status) returns CH_FAILED_PRECONDITION, an entry of an unknown order
 * CH_NOT_FOUND, a malformed one CH_INVALID_ARGUMENT: each changes nothing.
 * CH_NO_MEMORY changes nothing either. */
ch_status inv_apply(inv_store *s, const inv_entry *e, bool *changed);

/* What inv_revert needs to take back one entry that changed the store:
 * small and flat (the service's writer keeps a copy of it per event in
 * flight, at most 512 bytes). It names the SKU or the order and keeps what
 * the entry itself does not say (whether a SKU was new, the delta a SetStock
 * made); the lines of a reservation are the store's, so it holds none. */
typedef struct inv_undo {
    inv_entry_kind kind;                 /* 0: nothing to undo */
    char sku[INV_SKU_MAX + 1];           /* STOCK_SET, STOCK_ADJUSTED */
    char order_id[INV_ORDER_ID_MAX + 1]; /* the reservation entries */
    int64_t delta;                       /* stock entries: what available and total_in gained */
    bool created;                        /* stock entries: the entry added the SKU */
    bool restocked;                      /* RELEASED: as applied (checked when undone) */
    char key[INV_KEY_MAX + 1];           /* STOCK_ADJUSTED: the idempotency key it remembered, or "" */
} inv_undo;

/* inv_apply, and when the entry changed s (*changed true), *undo (may be
 * NULL) gets what inv_revert needs to take it back; otherwise undo->kind is
 * 0. */
ch_status inv_apply_undoable(inv_store *s, const inv_entry *e, bool *changed, inv_undo *undo);

/* The inverse of inv_apply, for decisions applied one by one and published
 * together that were then not stored (another replica was first): undoes
 * the entry u was made for, which must be the most recent entry applied to s
 * that changed it. Revert a batch newest first and s is exactly as before
 * the batch (re-applying the entries gives the same state again).
 *   STOCK_SET, STOCK_ADJUSTED  available and total_in -= delta; the
 *              idempotency key is forgotten; a SKU the entry created is
 *              removed and freed (pointers to it dangle)
 *   RESERVED   lines back reserved -> available; the reservation is removed
 *              and freed (pointers to it dangle)
 *   REJECTED   the reservation is removed and freed
 *   COMMITTED  lines back sold -> reserved; RESERVED again
 *   RELEASED   lines back to sold (was_committed) or reserved; COMMITTED or
 *              RESERVED again, with no reason (a reservation has none before
 *              its release) and was_committed/restocked false
 * CH_INVALID_ARGUMENT for an unknown kind or a malformed record;
 * CH_NOT_FOUND when the SKU or the order is not in the store;
 * CH_FAILED_PRECONDITION when the stock or the reservation is not as the
 * entry left it (another status or restocked, a key not remembered, a
 * counter that would go negative, a created SKU that holds units).
 * Everything is checked first: on error nothing changed. Never allocates.
 * Not thread-safe, like inv_apply. */
ch_status inv_revert(inv_store *s, const inv_undo *u);

/* True when an AdjustStock of sku with key (not NULL or "") was applied. */
bool inv_store_adjust_key_known(const inv_store *s, const char *sku, const char *key);

/* The stock of a SKU, or NULL when it was never stocked. */
const inv_stock *inv_store_stock(const inv_store *s, const char *sku);

/* The reservation of an order, or NULL. */
const inv_reservation *inv_store_reservation(const inv_store *s, const char *order_id);

size_t inv_store_sku_count(const inv_store *s);
size_t inv_store_reservation_count(const inv_store *s);

/* One page of stock levels in byte order of SKU. page_token is "" (or NULL)
 * for the first page or a token from a previous page. Fills out[0..*n) (cap
 * entries) with borrowed pointers and next_token (INV_TOKEN_MAX + 1 bytes)
 * with "" on the last page. CH_INVALID_ARGUMENT for a token this store did
 * not make. SKUs added between pages are listed when they sort after the
 * token. */
ch_status inv_store_list(const inv_store *s, const char *page_token, const inv_stock **out, size_t cap,
                         size_t *n, char *next_token);

/* ---- helpers ---- */

const char *inv_res_status_name(inv_res_status st);

/* Copies src into dst[cap] cut at a UTF-8 character boundary (src is valid
 * UTF-8), so a cut text stays valid. */
void inv_text_copy(char *dst, size_t cap, const char *src);

#endif
