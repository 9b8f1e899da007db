/* payment_core.c: validation, decisions, the reducer over its entries and its
 * inverse, and the in-memory indexes. */
#include "payment_core.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strmap.h"
#include "utf8.h"

/* ---- the state ---- */

/* Everything known about one customer: the account (meaningful once
 * credited) and the positions of its payments in `all`, ascending. */
typedef struct pay_customer {
    pay_account acct;
    bool has_account;
    size_t *payments;
    size_t n_payments, cap_payments;
} pay_customer;

struct pay_state {
    strmap customers;   /* customer_id -> pay_customer */
    strmap payments;    /* order_id -> pay_payment */
    strmap credit_keys; /* "<customer>\x1f<key>" -> the same malloc'd string */
    pay_payment **all;  /* decision order */
    size_t n, cap;
    size_t n_accounts;
};

ch_status pay_state_create(pay_state **out)
{
    pay_state *s = calloc(1, sizeof *s);
    if (!s)
        return CH_NO_MEMORY;
    *out = s;
    return CH_OK;
}

void pay_state_destroy(pay_state *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->customers.cap; i++) {
        pay_customer *c = s->customers.slots[i].val;
        if (c) {
            free(c->payments);
            free(c);
        }
    }
    for (size_t i = 0; i < s->credit_keys.cap; i++)
        free(s->credit_keys.slots[i].val);
    for (size_t i = 0; i < s->n; i++)
        free(s->all[i]);
    strmap_free(&s->customers);
    strmap_free(&s->payments);
    strmap_free(&s->credit_keys);
    free(s->all);
    free(s);
}

bool pay_credit_key_known(const pay_state *s, const char *customer_id, const char *key)
{
    char *k;
    bool known;

    if (!key || !key[0] || !customer_id)
        return false;
    k = strmap_pair_key(customer_id, key);
    if (!k)
        return false;
    known = strmap_get(&s->credit_keys, k) != NULL;
    free(k);
    return known;
}

const pay_account *pay_account_get(const pay_state *s, const char *customer_id)
{
    const pay_customer *c = strmap_get(&s->customers, customer_id ? customer_id : "");
    return c && c->has_account ? &c->acct : NULL;
}

const pay_payment *pay_payment_get(const pay_state *s, const char *order_id)
{
    return strmap_get(&s->payments, order_id ? order_id : "");
}

size_t pay_payment_count(const pay_state *s)
{
    return s->n;
}

size_t pay_account_count(const pay_state *s)
{
    return s->n_accounts;
}

const char *pay_status_name(pay_status st)
{
    switch (st) {
    case PAY_CHARGED: return "CHARGED";
    case PAY_DECLINED: return "DECLINED";
    case PAY_REFUNDED: return "REFUNDED";
    default: return "UNSPECIFIED";
    }
}

bool pay_account_balanced(const pay_account *a)
{
    return a->balance_cents >= 0 && a->credited_cents >= 0 && a->charged_cents >= 0 &&
           a->refunded_cents >= 0 && a->refunded_cents <= a->charged_cents &&
           a->balance_cents + a->charged_cents - a->refunded_cents == a->credited_cents;
}

bool pay_state_consistent(const pay_state *s)
{
    size_t payments_seen = 0;

    for (size_t i = 0; i < s->customers.cap; i++) {
        const pay_customer *c = s->customers.slots[i].val;
        int64_t charged = 0, refunded = 0;
        if (!c)
            continue;
        if (!pay_account_balanced(&c->acct))
            return false;
        for (size_t k = 0; k < c->n_payments; k++) {
            const pay_payment *p = s->all[c->payments[k]];
            if (strcmp(p->customer_id, c->acct.customer_id) != 0)
                return false;
            if (p->status == PAY_CHARGED || p->status == PAY_REFUNDED)
                charged += p->amount_cents;
            if (p->status == PAY_REFUNDED)
                refunded += p->amount_cents;
        }
        payments_seen += c->n_payments;
        if (charged != c->acct.charged_cents || refunded != c->acct.refunded_cents)
            return false;
        if (!c->has_account && (c->acct.credited_cents != 0 || c->acct.balance_cents != 0))
            return false;
    }
    return payments_seen == s->n;
}

/* ---- validation ---- */

static bool key_valid(const char *key)
{
    size_t len = strlen(key);
    if (len > PAY_KEY_MAX || !utf8_valid(key, len))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c < 0x20 || c == 0x7f) /* the key ends up in a NATS header */
            return false;
    }
    return true;
}

static ch_status check_id(const char *field, const char *v, size_t max, char *err, size_t errlen)
{
    size_t len = v ? strlen(v) : 0;

    if (len == 0) {
        snprintf(err, errlen, "%s: required", field);
        return CH_INVALID_ARGUMENT;
    }
    if (!utf8_valid(v, len)) {
        snprintf(err, errlen, "%s: not valid UTF-8", field);
        return CH_INVALID_ARGUMENT;
    }
    if (!utf8_valid_token(v, max)) {
        snprintf(err, errlen, "%s: must be 1..%zu bytes with no spaces, control characters, '.', '*' or '>'",
                 field, max);
        return CH_INVALID_ARGUMENT;
    }
    return CH_OK;
}

ch_status pay_validate_credit(const char *customer_id, int64_t amount_cents, const char *key, char *err,
                              size_t errlen)
{
    ch_status st = check_id("customer_id", customer_id, PAY_CUSTOMER_MAX, err, errlen);
    if (st != CH_OK)
        return st;
    if (amount_cents < 1 || amount_cents > PAY_CREDIT_MAX) {
        snprintf(err, errlen, "amount_cents: must be 1..%lld, got %" PRId64, PAY_CREDIT_MAX, amount_cents);
        return CH_INVALID_ARGUMENT;
    }
    if (key && !key_valid(key)) {
        snprintf(err, errlen, "idempotency_key: must be at most %d bytes of UTF-8 without control characters",
                 PAY_KEY_MAX);
        return CH_INVALID_ARGUMENT;
    }
    return CH_OK;
}

/* ---- decisions ---- */

ch_status pay_decide_credit(const pay_state *s, const char *customer_id, int64_t amount_cents,
                            const char *key, pay_entry *out, char *err, size_t errlen)
{
    ch_status st = pay_validate_credit(customer_id, amount_cents, key, err, errlen);
    if (st != CH_OK)
        return st;
    if (key && key[0] && pay_credit_key_known(s, customer_id, key)) {
        snprintf(err, errlen, "idempotency_key: already credited");
        return CH_ALREADY_EXISTS;
    }
    const pay_account *a = pay_account_get(s, customer_id);
    if (a && a->credited_cents > PAY_ACCOUNT_TOTAL_MAX - amount_cents) {
        snprintf(err, errlen, "amount_cents: the account's credit would pass %lld cents",
                 PAY_ACCOUNT_TOTAL_MAX);
        return CH_FAILED_PRECONDITION;
    }
    memset(out, 0, sizeof *out);
    out->kind = PAY_ENTRY_CREDIT;
    snprintf(out->customer_id, sizeof out->customer_id, "%s", customer_id);
    snprintf(out->idempotency_key, sizeof out->idempotency_key, "%s", key ? key : "");
    out->amount_cents = amount_cents;
    return CH_OK;
}

static void set_cause(pay_entry *out, const char *cause_event_id)
{
    if (cause_event_id && strlen(cause_event_id) <= PAY_EVENT_ID_MAX)
        snprintf(out->cause_event_id, sizeof out->cause_event_id, "%s", cause_event_id);
}

ch_status pay_decide_charge(const pay_state *s, const char *order_id, const char *customer_id,
                            int64_t amount_cents, const char *cause_event_id, pay_entry *out, char *err,
                            size_t errlen)
{
    ch_status st = check_id("order_id", order_id, PAY_ORDER_ID_MAX, err, errlen);
    if (st == CH_OK)
        st = check_id("customer_id", customer_id, PAY_CUSTOMER_MAX, err, errlen);
    if (st != CH_OK)
        return st;
    if (amount_cents < 0 || amount_cents > PAY_CHARGE_MAX) {
        snprintf(err, errlen, "total_cents: must be 0..%lld, got %" PRId64, PAY_CHARGE_MAX, amount_cents);
        return CH_INVALID_ARGUMENT;
    }
    if (pay_payment_get(s, order_id)) {
        snprintf(err, errlen, "order_id: payment of %s already decided", order_id);
        return CH_ALREADY_EXISTS;
    }
    const pay_customer *c = strmap_get(&s->customers, customer_id);
    int64_t balance = c ? c->acct.balance_cents : 0;
    int64_t charged = c ? c->acct.charged_cents : 0;

    memset(out, 0, sizeof *out);
    snprintf(out->order_id, sizeof out->order_id, "%s", order_id);
    snprintf(out->customer_id, sizeof out->customer_id, "%s", customer_id);
    out->amount_cents = amount_cents;
    set_cause(out, cause_event_id);
    if (balance >= amount_cents && charged <= PAY_ACCOUNT_TOTAL_MAX - amount_cents) {
        out->kind = PAY_ENTRY_CHARGE;
        return CH_OK;
    }
    out->kind = PAY_ENTRY_DECLINE;
    out->balance_cents = balance;
    if (balance < amount_cents)
        snprintf(out->reason, sizeof out->reason, "insufficient funds: balance %" PRId64 " < total %" PRId64,
                 balance, amount_cents);
    else
        snprintf(out->reason, sizeof out->reason, "account limit: charges would pass %lld cents",
                 PAY_ACCOUNT_TOTAL_MAX);
    return CH_OK;
}

ch_status pay_decide_refund(const pay_state *s, const char *order_id, const char *cause_event_id,
                            pay_entry *out)
{
    const pay_payment *p = pay_payment_get(s, order_id);

    if (!p)
        return CH_NOT_FOUND;
    if (p->status == PAY_REFUNDED)
        return CH_ALREADY_EXISTS;
    if (p->status != PAY_CHARGED)
        return CH_FAILED_PRECONDITION;
    memset(out, 0, sizeof *out);
    out->kind = PAY_ENTRY_REFUND;
    snprintf(out->order_id, sizeof out->order_id, "%s", p->order_id);
    snprintf(out->customer_id, sizeof out->customer_id, "%s", p->customer_id);
    out->amount_cents = p->amount_cents;
    set_cause(out, cause_event_id);
    return CH_OK;
}

/* ---- the reducer ---- */

static ch_status customer_reserve_payment(pay_customer *c)
{
    if (c->n_payments < c->cap_payments)
        return CH_OK;
    size_t cap = c->cap_payments ? c->cap_payments * 2 : 4;
    size_t *p = realloc(c->payments, cap * sizeof *p);
    if (!p)
        return CH_NO_MEMORY;
    c->payments = p;
    c->cap_payments = cap;
    return CH_OK;
}

/* The customer record for id, creating one (not yet inserted: *fresh) when
 * it does not exist. NULL when out of memory. */
static pay_customer *customer_for(pay_state *s, const char *id, bool *fresh)
{
    pay_customer *c = strmap_get(&s->customers, id);
    *fresh = false;
    if (c)
        return c;
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    snprintf(c->acct.customer_id, sizeof c->acct.customer_id, "%s", id);
    *fresh = true;
    return c;
}

static ch_status apply_credit(pay_state *s, const pay_entry *e, bool *changed)
{
    char err[160];
    char *k = NULL;
    bool fresh = false;
    pay_customer *c = NULL;
    ch_status st = pay_validate_credit(e->customer_id, e->amount_cents, e->idempotency_key, err, sizeof err);

    if (st != CH_OK)
        return st;
    if (e->idempotency_key[0] && pay_credit_key_known(s, e->customer_id, e->idempotency_key))
        return CH_OK; /* a retry: credited once */
    c = customer_for(s, e->customer_id, &fresh);
    if (!c)
        return CH_NO_MEMORY;
    if (c->acct.credited_cents > PAY_ACCOUNT_TOTAL_MAX - e->amount_cents) {
        st = CH_FAILED_PRECONDITION;
        goto cleanup;
    }
    /* Take everything that can fail before changing anything. */
    if (e->idempotency_key[0]) {
        k = strmap_pair_key(e->customer_id, e->idempotency_key);
        if (!k || strmap_reserve(&s->credit_keys) != CH_OK) {
            st = CH_NO_MEMORY;
            goto cleanup;
        }
    }
    if (fresh && strmap_reserve(&s->customers) != CH_OK) {
        st = CH_NO_MEMORY;
        goto cleanup;
    }
    if (k)
        strmap_put(&s->credit_keys, k, k);
    if (fresh)
        strmap_put(&s->customers, c->acct.customer_id, c);
    if (!c->has_account)
        s->n_accounts++;
    c->has_account = true;
    c->acct.credited_cents += e->amount_cents;
    c->acct.balance_cents += e->amount_cents;
    *changed = true;
    return CH_OK;

cleanup:
    free(k);
    if (fresh)
        free(c);
    return st;
}

/* Records a new payment (charge or decline) for e's order. */
static ch_status apply_decision(pay_state *s, const pay_entry *e, bool *changed)
{
    char err[160];
    bool fresh = false;
    pay_customer *c = NULL;
    pay_payment *p = NULL;
    ch_status st;

    st = check_id("order_id", e->order_id, PAY_ORDER_ID_MAX, err, sizeof err);
    if (st == CH_OK)
        st = check_id("customer_id", e->customer_id, PAY_CUSTOMER_MAX, err, sizeof err);
    if (st != CH_OK)
        return st;
    if (e->amount_cents < 0 || e->amount_cents > PAY_CHARGE_MAX || strlen(e->reason) > PAY_REASON_MAX)
        return CH_INVALID_ARGUMENT;
    if (pay_payment_get(s, e->order_id))
        return CH_OK; /* decided once: the first decision stands */
    c = customer_for(s, e->customer_id, &fresh);
    if (!c)
        return CH_NO_MEMORY;
    if (e->kind == PAY_ENTRY_CHARGE && (c->acct.balance_cents < e->amount_cents ||
                                        c->acct.charged_cents > PAY_ACCOUNT_TOTAL_MAX - e->amount_cents)) {
        st = CH_FAILED_PRECONDITION; /* would break the invariant */
        goto cleanup;
    }
    p = calloc(1, sizeof *p);
    if (!p) {
        st = CH_NO_MEMORY;
        goto cleanup;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        pay_payment **all = realloc(s->all, cap * sizeof *all);
        if (!all) {
            st = CH_NO_MEMORY;
            goto cleanup;
        }
        s->all = all;
        s->cap = cap;
    }
    if (customer_reserve_payment(c) != CH_OK || strmap_reserve(&s->payments) != CH_OK ||
        (fresh && strmap_reserve(&s->customers) != CH_OK)) {
        st = CH_NO_MEMORY;
        goto cleanup;
    }

    snprintf(p->order_id, sizeof p->order_id, "%s", e->order_id);
    snprintf(p->customer_id, sizeof p->customer_id, "%s", e->customer_id);
    p->amount_cents = e->amount_cents;
    p->list_pos = s->n;
    if (e->kind == PAY_ENTRY_CHARGE) {
        p->status = PAY_CHARGED;
        p->balance_cents = c->acct.balance_cents;
        c->acct.balance_cents -= e->amount_cents;
        c->acct.charged_cents += e->amount_cents;
    } else {
        p->status = PAY_DECLINED;
        p->balance_cents = e->balance_cents;
        snprintf(p->reason, sizeof p->reason, "%s", e->reason);
    }
    s->all[s->n++] = p;
    strmap_put(&s->payments, p->order_id, p);
    if (fresh)
        strmap_put(&s->customers, c->acct.customer_id, c);
    c->payments[c->n_payments++] = p->list_pos;
    *changed = true;
    return CH_OK;

cleanup:
    free(p);
    if (fresh) {
        free(c->payments);
        free(c);
    }
    return st;
}

static ch_status apply_refund(pay_state *s, const pay_entry *e, bool *changed)
{
    pay_payment *p = strmap_get(&s->payments, e->order_id);
    pay_customer *c;

    if (!p)
        return CH_NOT_FOUND;
    if (p->status == PAY_REFUNDED)
        return CH_OK; /* refunded once */
    if (p->status != PAY_CHARGED)
        return CH_FAILED_PRECONDITION;
    if (e->amount_cents != p->amount_cents)
        return CH_INVALID_ARGUMENT;
    c = strmap_get(&s->customers, p->customer_id);
    if (!c)
        return CH_INTERNAL; /* every payment has its customer record */
    c->acct.refunded_cents += p->amount_cents;
    c->acct.balance_cents += p->amount_cents;
    p->status = PAY_REFUNDED;
    *changed = true;
    return CH_OK;
}

ch_status pay_apply(pay_state *s, const pay_entry *e, bool *changed)
{
    bool dummy;

    if (!changed)
        changed = &dummy;
    *changed = false;
    switch (e->kind) {
    case PAY_ENTRY_CREDIT: return apply_credit(s, e, changed);
    case PAY_ENTRY_CHARGE:
    case PAY_ENTRY_DECLINE: return apply_decision(s, e, changed);
    case PAY_ENTRY_REFUND: return apply_refund(s, e, changed);
    }
    return CH_INVALID_ARGUMENT;
}

/* ---- undoing the reducer ---- */

/* Undoes a CHARGE or DECLINE entry, whose payment must be the newest. */
static ch_status revert_decision(pay_state *s, const pay_entry *e)
{
    pay_payment *p = strmap_get(&s->payments, e->order_id);
    pay_customer *c;

    if (!p)
        return CH_NOT_FOUND;
    if (p->status != (e->kind == PAY_ENTRY_CHARGE ? PAY_CHARGED : PAY_DECLINED) ||
        strcmp(p->customer_id, e->customer_id) != 0 || p->amount_cents != e->amount_cents)
        return CH_FAILED_PRECONDITION;
    c = strmap_get(&s->customers, p->customer_id);
    if (!c)
        return CH_INTERNAL; /* every payment has its customer record */
    /* Newest first: p was the last decision, overall and of its customer. */
    if (s->n == 0 || s->all[s->n - 1] != p || p->list_pos != s->n - 1 || c->n_payments == 0 ||
        c->payments[c->n_payments - 1] != p->list_pos)
        return CH_FAILED_PRECONDITION;
    if (p->status == PAY_CHARGED && (c->acct.charged_cents - c->acct.refunded_cents < p->amount_cents ||
                                     c->acct.balance_cents > INT64_MAX - p->amount_cents))
        return CH_FAILED_PRECONDITION;

    if (p->status == PAY_CHARGED) {
        c->acct.balance_cents += p->amount_cents;
        c->acct.charged_cents -= p->amount_cents;
    }
    strmap_remove(&s->payments, p->order_id);
    s->n--;
    s->all[s->n] = NULL;
    c->n_payments--;
    free(p);
    /* A record with no account and no payment exists only because this
     * decision created it: drop it, as if it had never been. */
    if (!c->has_account && c->n_payments == 0) {
        strmap_remove(&s->customers, c->acct.customer_id);
        free(c->payments);
        free(c);
    }
    return CH_OK;
}

static ch_status revert_refund(pay_state *s, const pay_entry *e)
{
    pay_payment *p = strmap_get(&s->payments, e->order_id);
    pay_customer *c;

    if (!p)
        return CH_NOT_FOUND;
    if (p->status != PAY_REFUNDED || p->amount_cents != e->amount_cents)
        return CH_FAILED_PRECONDITION;
    c = strmap_get(&s->customers, p->customer_id);
    if (!c)
        return CH_INTERNAL;
    if (c->acct.balance_cents < p->amount_cents || c->acct.refunded_cents < p->amount_cents)
        return CH_FAILED_PRECONDITION; /* spent since, or not refunded here */
    c->acct.balance_cents -= p->amount_cents;
    c->acct.refunded_cents -= p->amount_cents;
    p->status = PAY_CHARGED;
    return CH_OK;
}

/* Undoes a CREDIT: the account loses the amount (and the key); an account
 * this credit opened is closed again, a record with nothing left dropped. */
static ch_status revert_credit(pay_state *s, const pay_entry *e)
{
    pay_customer *c = strmap_get(&s->customers, e->customer_id);
    char key[PAY_CUSTOMER_MAX + PAY_KEY_MAX + 2];

    if (!c || !c->has_account)
        return CH_NOT_FOUND;
    if (c->acct.credited_cents < e->amount_cents || c->acct.balance_cents < e->amount_cents ||
        strlen(e->customer_id) > PAY_CUSTOMER_MAX || strlen(e->idempotency_key) > PAY_KEY_MAX)
        return CH_FAILED_PRECONDITION; /* not credited here, or spent since */
    if (e->idempotency_key[0]) {
        /* the index key, built without allocating (strmap_pair_key's form) */
        snprintf(key, sizeof key, "%s\x1f%s", e->customer_id, e->idempotency_key);
        free(strmap_remove(&s->credit_keys, key));
    }
    c->acct.credited_cents -= e->amount_cents;
    c->acct.balance_cents -= e->amount_cents;
    if (c->acct.credited_cents == 0) {
        c->has_account = false; /* credits are positive: this one opened it */
        s->n_accounts--;
    }
    if (!c->has_account && c->n_payments == 0) {
        strmap_remove(&s->customers, c->acct.customer_id);
        free(c->payments);
        free(c);
    }
    return CH_OK;
}

ch_status pay_revert(pay_state *s, const pay_entry *e)
{
    switch (e->kind) {
    case PAY_ENTRY_CHARGE:
    case PAY_ENTRY_DECLINE: return revert_decision(s, e);
    case PAY_ENTRY_REFUND: return revert_refund(s, e);
    case PAY_ENTRY_CREDIT: return revert_credit(s, e);
    }
    return CH_INVALID_ARGUMENT;
}

/* ---- paging ---- */

ch_status pay_payment_list(const pay_state *s, const char *page_token, const char *customer_id,
                           const pay_payment **out, size_t cap, size_t *n, char *next_token)
{
    size_t pos = s->n; /* walk backwards from here (exclusive) */

    *n = 0;
    if (page_token && page_token[0]) {
        char *end;
        unsigned long long v;
        if (page_token[0] != 'p' || page_token[1] < '0' || page_token[1] > '9' ||
            strlen(page_token) >= PAY_TOKEN_MAX)
            return CH_INVALID_ARGUMENT;
        v = strtoull(page_token + 1, &end, 10);
        if (*end != '\0' || v == 0 || v > s->n)
            return CH_INVALID_ARGUMENT;
        pos = (size_t)v;
    }
    next_token[0] = '\0'; /* only now: the caller may pass the same buffer for both */
    if (cap == 0)
        return CH_OK;
    if (!customer_id || !customer_id[0]) {
        while (pos > 0 && *n < cap)
            out[(*n)++] = s->all[--pos];
        if (pos > 0)
            snprintf(next_token, PAY_TOKEN_MAX, "p%zu", pos);
        return CH_OK;
    }
    const pay_customer *c = strmap_get(&s->customers, customer_id);
    if (!c)
        return CH_OK;
    /* k: how many of the customer's payments lie before pos (binary search) */
    size_t lo = 0, hi = c->n_payments;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->payments[mid] < pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t k = lo;
    while (k > 0 && *n < cap)
        out[(*n)++] = s->all[c->payments[--k]];
    if (k > 0)
        snprintf(next_token, PAY_TOKEN_MAX, "p%zu", c->payments[k - 1] + 1);
    return CH_OK;
}
