/* payment_core.h: the payment domain, pure (no gRPC, no NATS, no clock).
 *
 * The service's state (customer accounts and one payment per order) is a fold
 * of its entries: pay_apply() is the reducer, the only code that changes
 * the state, and pay_revert() its inverse. Each entry is one of the
 * service's events (payment.credited, .processed, .failed, .refunded; the
 * adapter converts). Handlers decide with pay_decide_*() (which read the
 * state and build an entry, changing nothing), apply the entry and publish
 * its event; on restart every event is applied again, so memory is a cache
 * of the service's stream.
 *
 * Payment status machine (one payment per order, decided once):
 *   (none)    no inventory.reserved handled yet
 *   CHARGED   the balance covered the total; it was charged
 *   DECLINED  the balance did not cover it; nothing charged (terminal)
 *   REFUNDED  a charge given back on order.cancel_requested (terminal)
 *
 * Invariant, for every account at all times:
 *   balance + charged - refunded == credited, and balance >= 0.
 *
 * Ownership: a pay_state owns its accounts and payments; pointers it
 * returns stay valid until the state is destroyed, except that
 * pay_revert() of a CHARGE or DECLINE frees that order's payment
 * (nothing else is ever removed).
 * Entries and strings passed in are borrowed and copied as needed. Not
 * thread-safe: the service serialises access with one lock. */
#ifndef CHOREO_PAYMENT_CORE_H
#define CHOREO_PAYMENT_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define PAY_CUSTOMER_MAX      64
#define PAY_ORDER_ID_MAX      40
#define PAY_KEY_MAX           128
#define PAY_REASON_MAX        200
#define PAY_EVENT_ID_MAX      32
#define PAY_CREDIT_MAX        100000000000LL        /* one CreditAccount, in cents */
#define PAY_CHARGE_MAX        1000000000000000LL    /* one order total: 100 items x 10000 x 1e9 */
#define PAY_ACCOUNT_TOTAL_MAX 1000000000000000000LL /* credited, and charged, of one account */
#define PAY_PAGE_DEFAULT      50
#define PAY_PAGE_MAX          500
#define PAY_TOKEN_MAX         32 /* bytes of a page token, NUL included */

/* Same numbers as choreo.payment.v1.PaymentStatus. */
typedef enum pay_status {
    PAY_UNSPECIFIED = 0,
    PAY_CHARGED = 1,
    PAY_DECLINED = 2,
    PAY_REFUNDED = 3,
} pay_status;

typedef struct pay_account {
    char customer_id[PAY_CUSTOMER_MAX + 1];
    int64_t balance_cents;
    int64_t credited_cents;
    int64_t charged_cents;
    int64_t refunded_cents;
} pay_account;

typedef struct pay_payment {
    char order_id[PAY_ORDER_ID_MAX + 1];
    char customer_id[PAY_CUSTOMER_MAX + 1];
    int64_t amount_cents;
    pay_status status;
    int64_t balance_cents;           /* the balance when it was decided */
    char reason[PAY_REASON_MAX + 1]; /* why it was declined ("" otherwise) */
    size_t list_pos;                 /* position in decision order, for paging */
} pay_payment;

/* One entry as the reducer sees it (an event of the service, decoded by the
 * adapter). Fields unused by kind are "" / 0. */
typedef enum pay_entry_kind {
    PAY_ENTRY_CREDIT = 1,
    PAY_ENTRY_CHARGE,
    PAY_ENTRY_DECLINE,
    PAY_ENTRY_REFUND,
} pay_entry_kind;

typedef struct pay_entry {
    pay_entry_kind kind;
    char customer_id[PAY_CUSTOMER_MAX + 1];
    char order_id[PAY_ORDER_ID_MAX + 1];       /* charge, decline, refund */
    char idempotency_key[PAY_KEY_MAX + 1];     /* credit: "" when none */
    char reason[PAY_REASON_MAX + 1];           /* decline */
    char cause_event_id[PAY_EVENT_ID_MAX + 1]; /* the event that caused it (audit only) */
    int64_t amount_cents;
    int64_t balance_cents; /* decline: the balance when decided */
} pay_entry;

typedef struct pay_state pay_state;

/* Creates an empty state; *out is the caller's (pay_state_destroy). */
ch_status pay_state_create(pay_state **out);

/* Frees the state and everything in it. Accepts NULL. */
void pay_state_destroy(pay_state *s);

/* ---- validation and decisions (read the state, change nothing) ---- */

/* Checks CreditAccount input. On failure writes a message naming the field
 * ("amount_cents: must be 1..100000000000, got 0") and returns
 * CH_INVALID_ARGUMENT. key may be NULL or "" (none). */
ch_status pay_validate_credit(const char *customer_id, int64_t amount_cents, const char *key, char *err,
                              size_t errlen);

/* Decides a CreditAccount: CH_OK with a CREDIT entry in *out;
 * CH_ALREADY_EXISTS when this customer's key was credited before (the retry
 * changes nothing); CH_FAILED_PRECONDITION when the account's credit would
 * pass PAY_ACCOUNT_TOTAL_MAX; CH_INVALID_ARGUMENT as pay_validate_credit.
 * err names the cause on failure. */
ch_status pay_decide_credit(const pay_state *s, const char *customer_id, int64_t amount_cents,
                            const char *key, pay_entry *out, char *err, size_t errlen);

/* Decides an inventory.reserved: CH_OK with a CHARGE entry when the balance
 * (0 for a customer never credited) covers amount, else a DECLINE entry with
 * the balance and a reason ("insufficient funds: balance 500 < total 3000").
 * CH_ALREADY_EXISTS when the order's payment is decided already (nothing to
 * decide: re-publish what pay_payment_get says). CH_INVALID_ARGUMENT, with err,
 * for input no state could accept (bad ids, amount outside
 * 0..PAY_CHARGE_MAX). cause_event_id may be NULL. */
ch_status pay_decide_charge(const pay_state *s, const char *order_id, const char *customer_id,
                            int64_t amount_cents, const char *cause_event_id, pay_entry *out, char *err,
                            size_t errlen);

/* Decides an order.cancel_requested: CH_OK with a REFUND entry for a CHARGED
 * payment; CH_ALREADY_EXISTS when it was refunded already (re-publish);
 * CH_FAILED_PRECONDITION when it was declined (nothing was charged);
 * CH_NOT_FOUND when the order has no payment. */
ch_status pay_decide_refund(const pay_state *s, const char *order_id, const char *cause_event_id,
                            pay_entry *out);

/* ---- the reducer ---- */

/* Applies one entry. A repeat (a credit key seen before, a second decision
 * for an order, a second refund) changes nothing: CH_OK, *changed false.
 * An entry that would break the invariant or makes no sense in this state
 * (a charge above the balance, a refund of a decline) returns
 * CH_FAILED_PRECONDITION; malformed fields CH_INVALID_ARGUMENT; a refund of
 * an unknown payment CH_NOT_FOUND; each changes nothing. CH_NO_MEMORY also
 * changes nothing. changed may be NULL. */
ch_status pay_apply(pay_state *s, const pay_entry *e, bool *changed);

/* The inverse of pay_apply, for decisions applied one by one and
 * published together that were then not stored (another replica was
 * first): undoes e, which must be the most recent entry applied to s that
 * changed it (pay_apply said *changed true). Revert a batch newest first
 * and s is exactly as before the batch (re-applying the entries gives the
 * same state, the same list positions included).
 *   CREDIT   balance and credited -= amount, the key is forgotten; the
 *            account is closed again when this credit opened it
 *   CHARGE   balance += amount, charged -= amount, and the payment is removed
 *            (from pay_payment_get, pay_payment_list and pay_payment_count) and freed
 *   DECLINE  the payment is removed and freed
 *   REFUND   the payment is CHARGED again; refunded and balance -= amount
 * A customer with no account left and no payment is forgotten entirely.
 * CH_INVALID_ARGUMENT for an unknown kind; CH_NOT_FOUND when the order has
 * no payment (the customer no account); CH_FAILED_PRECONDITION when the
 * state is not as e left it (another status, customer or amount, a payment
 * that is not the newest decision, a balance already spent). Everything is
 * checked first: on error nothing changed. Never allocates. Not
 * thread-safe, like pay_apply. */
ch_status pay_revert(pay_state *s, const pay_entry *e);

/* ---- reads ---- */

/* The account of a customer who was ever credited, or NULL. */
const pay_account *pay_account_get(const pay_state *s, const char *customer_id);

/* The payment of an order, or NULL. */
const pay_payment *pay_payment_get(const pay_state *s, const char *order_id);

/* True when this customer's CreditAccount with this key was applied. */
bool pay_credit_key_known(const pay_state *s, const char *customer_id, const char *key);

size_t pay_payment_count(const pay_state *s);
size_t pay_account_count(const pay_state *s);

/* One page of payments, newest decision first. page_token is "" (or NULL)
 * for the first page or a token from a previous page; customer_id "" (or
 * NULL) for every customer. Fills out[0..*n) (cap entries) with borrowed
 * pointers and next_token (PAY_TOKEN_MAX bytes) with "" on the last page.
 * CH_INVALID_ARGUMENT for a token this state did not make. */
ch_status pay_payment_list(const pay_state *s, const char *page_token, const char *customer_id,
                           const pay_payment **out, size_t cap, size_t *n, char *next_token);

/* True when a's numbers satisfy the invariant. */
bool pay_account_balanced(const pay_account *a);

/* True when every account satisfies the invariant and every account's
 * charged/refunded equal the sums of its payments. O(accounts + payments). */
bool pay_state_consistent(const pay_state *s);

const char *pay_status_name(pay_status st);

#endif
