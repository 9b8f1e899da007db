/* inventory_core.c: validation, decisions, the reducer and its inverse, and
 * the store. */
#include "inventory_core.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strmap.h"
#include "utf8.h"

struct inv_store {
    inv_stock **skus; /* sorted by sku in byte order (strcmp) */
    size_t n_skus, cap_skus;
    strmap res;  /* order id -> inv_reservation (keyed by its order_id) */
    strmap keys; /* "<sku>\x1f<key>" of applied AdjustStocks -> the same malloc'd string */
};

/* ---- helpers ---- */

const char *inv_res_status_name(inv_res_status st)
{
    switch (st) {
    case INV_RES_RESERVED: return "RESERVED";
    case INV_RES_COMMITTED: return "COMMITTED";
    case INV_RES_RELEASED: return "RELEASED";
    case INV_RES_REJECTED: return "REJECTED";
    }
    return "UNSPECIFIED";
}

void inv_text_copy(char *dst, size_t cap, const char *src)
{
    size_t n;

    if (cap == 0)
        return;
    src = src ? src : "";
    n = strlen(src);
    if (n >= cap) {
        n = cap - 1;
        /* src[n] is the first byte left out: if it continues a character,
         * leave out that whole character. */
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static bool valid_token(const char *s, size_t max)
{
    return s && utf8_valid_token(s, max);
}

static bool valid_text(const char *s, size_t max)
{
    if (!s)
        return true;
    size_t n = strlen(s);
    return n <= max && utf8_valid(s, n);
}

/* ---- the store: SKUs ---- */

/* Index of the first SKU >= sku (or > sku when after). */
static size_t sku_bound(const inv_store *s, const char *sku, bool after)
{
    size_t lo = 0, hi = s->n_skus;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->skus[mid]->sku, sku);
        if (c < 0 || (after && c == 0))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static inv_stock *stock_find(const inv_store *s, const char *sku)
{
    size_t i = sku_bound(s, sku, false);
    if (i < s->n_skus && strcmp(s->skus[i]->sku, sku) == 0)
        return s->skus[i];
    return NULL;
}

/* Adds a zeroed SKU in its sorted place; on failure nothing is added. */
static ch_status stock_insert(inv_store *s, const char *sku, inv_stock **out)
{
    if (s->n_skus == s->cap_skus) {
        size_t cap = s->cap_skus ? s->cap_skus * 2 : 64;
        inv_stock **skus = realloc(s->skus, cap * sizeof *skus);
        if (!skus)
            return CH_NO_MEMORY;
        s->skus = skus;
        s->cap_skus = cap;
    }
    inv_stock *st = calloc(1, sizeof *st);
    if (!st)
        return CH_NO_MEMORY;
    snprintf(st->sku, sizeof st->sku, "%s", sku);
    size_t i = sku_bound(s, sku, false);
    memmove(&s->skus[i + 1], &s->skus[i], (s->n_skus - i) * sizeof *s->skus);
    s->skus[i] = st;
    s->n_skus++;
    *out = st;
    return CH_OK;
}

/* ---- the store: reservations ---- */

static inv_reservation *res_find(const inv_store *s, const char *order_id)
{
    return strmap_get(&s->res, order_id);
}

/* ---- the store: AdjustStock idempotency keys ---- */

bool inv_store_adjust_key_known(const inv_store *s, const char *sku, const char *key)
{
    if (!sku || !key || !key[0])
        return false;
    char *k = strmap_pair_key(sku, key);
    bool known = k && strmap_get(&s->keys, k);
    free(k);
    return known;
}

static void res_free(inv_reservation *r)
{
    if (!r)
        return;
    free(r->lines);
    free(r->reason);
    free(r->short_sku);
    free(r);
}

ch_status inv_store_create(inv_store **out)
{
    inv_store *s = calloc(1, sizeof *s);
    if (!s)
        return CH_NO_MEMORY;
    *out = s;
    return CH_OK;
}

void inv_store_destroy(inv_store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_skus; i++)
        free(s->skus[i]);
    free(s->skus);
    for (size_t i = 0; i < s->res.cap; i++)
        res_free(s->res.slots[i].val);
    strmap_free(&s->res);
    for (size_t i = 0; i < s->keys.cap; i++)
        free(s->keys.slots[i].val);
    strmap_free(&s->keys);
    free(s);
}

const inv_stock *inv_store_stock(const inv_store *s, const char *sku)
{
    return sku ? stock_find(s, sku) : NULL;
}

const inv_reservation *inv_store_reservation(const inv_store *s, const char *order_id)
{
    return order_id ? res_find(s, order_id) : NULL;
}

size_t inv_store_sku_count(const inv_store *s)
{
    return s->n_skus;
}

size_t inv_store_reservation_count(const inv_store *s)
{
    return s->res.used;
}

/* ---- paging ---- */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes "k" + hex into sku; false for anything else. */
static bool token_decode(const char *tok, char sku[INV_SKU_MAX + 1])
{
    size_t len = strnlen(tok, INV_TOKEN_MAX + 1);
    if (len < 3 || len > INV_TOKEN_MAX || tok[0] != 'k' || (len - 1) % 2 != 0)
        return false;
    size_t n = (len - 1) / 2;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_value(tok[1 + 2 * i]), lo = hex_value(tok[2 + 2 * i]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
            return false;
        sku[i] = (char)(hi << 4 | lo);
    }
    sku[n] = '\0';
    return true;
}

static void token_encode(const char *sku, char *tok)
{
    static const char hex[] = "0123456789abcdef";
    char *p = tok;
    *p++ = 'k';
    for (const unsigned char *c = (const unsigned char *)sku; *c; c++) {
        *p++ = hex[*c >> 4];
        *p++ = hex[*c & 15];
    }
    *p = '\0';
}

ch_status inv_store_list(const inv_store *s, const char *page_token, const inv_stock **out, size_t cap,
                         size_t *n, char *next_token)
{
    size_t i = 0;

    *n = 0;
    next_token[0] = '\0';
    if (page_token && page_token[0]) {
        char after[INV_SKU_MAX + 1];
        if (!token_decode(page_token, after))
            return CH_INVALID_ARGUMENT;
        i = sku_bound(s, after, true);
    }
    while (i < s->n_skus && *n < cap)
        out[(*n)++] = s->skus[i++];
    if (i<s->n_skus && * n> 0)
        token_encode(out[*n - 1]->sku, next_token);
    return CH_OK;
}

/* ---- validation ---- */

ch_status inv_validate_sku(const char *sku, char *err, size_t errlen)
{
    size_t len = sku ? strlen(sku) : 0;

    if (len == 0) {
        snprintf(err, errlen, "sku: required");
        return CH_INVALID_ARGUMENT;
    }
    if (!utf8_valid(sku, len)) {
        snprintf(err, errlen, "sku: not valid UTF-8");
        return CH_INVALID_ARGUMENT;
    }
    if (!utf8_valid_token(sku, INV_SKU_MAX)) {
        snprintf(err, errlen, "sku: must be 1..%d bytes with no spaces, control characters, '.', '*' or '>'",
                 INV_SKU_MAX);
        return CH_INVALID_ARGUMENT;
    }
    return CH_OK;
}

ch_status inv_validate_order_id(const char *order_id, char *err, size_t errlen)
{
    if (!order_id || !order_id[0]) {
        snprintf(err, errlen, "order_id: required");
        return CH_INVALID_ARGUMENT;
    }
    if (!utf8_valid_token(order_id, INV_ORDER_ID_MAX)) {
        snprintf(err, errlen, "order_id: must be 1..%d bytes of UTF-8 with no spaces, '.', '*' or '>'",
                 INV_ORDER_ID_MAX);
        return CH_INVALID_ARGUMENT;
    }
    return CH_OK;
}

static bool key_valid(const char *key)
{
    size_t len = strlen(key);
    if (len > INV_KEY_MAX || !utf8_valid(key, len))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c < 0x20 || c == 0x7f) /* the key is kept in an event and logged */
            return false;
    }
    return true;
}

ch_status inv_validate_idempotency_key(const char *key, char *err, size_t errlen)
{
    if (key && !key_valid(key)) {
        snprintf(err, errlen, "idempotency_key: must be at most %d bytes of UTF-8 without control characters",
                 INV_KEY_MAX);
        return CH_INVALID_ARGUMENT;
    }
    return CH_OK;
}

ch_status inv_validate_set(const char *sku, int64_t available, char *err, size_t errlen)
{
    if (inv_validate_sku(sku, err, errlen) != CH_OK)
        return CH_INVALID_ARGUMENT;
    if (available < 0 || available > INV_SET_MAX) {
        snprintf(err, errlen, "available: must be 0..%lld, got %" PRId64, INV_SET_MAX, available);
        return CH_INVALID_ARGUMENT;
    }
    return CH_OK;
}

ch_status inv_validate_adjust(const char *sku, int64_t delta, const char *key, char *err, size_t errlen)
{
    if (inv_validate_sku(sku, err, errlen) != CH_OK)
        return CH_INVALID_ARGUMENT;
    if (delta == 0 || delta < -INV_DELTA_MAX || delta > INV_DELTA_MAX) {
        snprintf(err, errlen, "delta: must be -%lld..%lld and not 0, got %" PRId64, INV_DELTA_MAX,
                 INV_DELTA_MAX, delta);
        return CH_INVALID_ARGUMENT;
    }
    return inv_validate_idempotency_key(key, err, errlen);
}

/* ---- decisions ---- */

static void decision_init(inv_decision *d, inv_entry_kind kind)
{
    memset(&d->entry, 0, sizeof d->entry);
    d->entry.kind = kind;
    d->reason[0] = '\0';
}

ch_status inv_decide_set(const inv_store *s, const char *sku, int64_t available, inv_decision *d, char *err,
                         size_t errlen)
{
    if (inv_validate_set(sku, available, err, errlen) != CH_OK)
        return CH_INVALID_ARGUMENT;
    const inv_stock *st = stock_find(s, sku);
    int64_t before = st ? st->available : 0;
    int64_t total = st ? st->total_in : 0;
    if (total + (available - before) > INV_UNITS_MAX) {
        snprintf(err, errlen, "available: stock put in for %s would pass %lld units", sku, INV_UNITS_MAX);
        return CH_FAILED_PRECONDITION;
    }
    decision_init(d, INV_ENTRY_STOCK_SET);
    d->entry.sku = sku;
    d->entry.available = available;
    d->entry.delta = available - before;
    return CH_OK;
}

ch_status inv_decide_adjust(const inv_store *s, const char *sku, int64_t delta, inv_decision *d, char *err,
                            size_t errlen)
{
    inv_outcome out;
    return inv_decide_adjust_key(s, sku, delta, NULL, d, &out, err, errlen);
}

ch_status inv_decide_adjust_key(const inv_store *s, const char *sku, int64_t delta, const char *key,
                                inv_decision *d, inv_outcome *out, char *err, size_t errlen)
{
    *out = INV_NOOP;
    if (inv_validate_adjust(sku, delta, key, err, errlen) != CH_OK)
        return CH_INVALID_ARGUMENT;
    if (inv_store_adjust_key_known(s, sku, key)) {
        *out = INV_DECIDED; /* a retry: adjusted once already */
        return CH_OK;
    }
    const inv_stock *st = stock_find(s, sku);
    int64_t available = st ? st->available : 0;
    int64_t total = st ? st->total_in : 0;
    if (available + delta < 0) {
        snprintf(err, errlen, "delta: %s has %" PRId64 " units available, cannot remove %" PRId64, sku,
                 available, -delta);
        return CH_FAILED_PRECONDITION;
    }
    if (total + delta > INV_UNITS_MAX) {
        snprintf(err, errlen, "delta: stock put in for %s would pass %lld units", sku, INV_UNITS_MAX);
        return CH_FAILED_PRECONDITION;
    }
    decision_init(d, INV_ENTRY_STOCK_ADJUSTED);
    d->entry.sku = sku;
    d->entry.delta = delta;
    d->entry.idempotency_key = key && key[0] ? key : NULL;
    *out = INV_APPEND;
    return CH_OK;
}

static ch_status check_reserve_req(const inv_reserve_req *r, char *err, size_t errlen)
{
    if (inv_validate_order_id(r->order_id, err, errlen) != CH_OK)
        return CH_INVALID_ARGUMENT;
    if (!valid_token(r->customer_id, INV_CUSTOMER_MAX)) {
        snprintf(err, errlen, "customer_id: must be 1..%d bytes of UTF-8 with no spaces", INV_CUSTOMER_MAX);
        return CH_INVALID_ARGUMENT;
    }
    if (r->total_cents < 0 || r->total_cents > INV_TOTAL_CENTS_MAX) {
        snprintf(err, errlen, "total_cents: must be 0..%lld, got %" PRId64, INV_TOTAL_CENTS_MAX,
                 r->total_cents);
        return CH_INVALID_ARGUMENT;
    }
    if (r->n_items == 0 || r->n_items > INV_LINES_MAX) {
        snprintf(err, errlen, "items: must hold 1..%d items, got %zu", INV_LINES_MAX, r->n_items);
        return CH_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < r->n_items; i++) {
        if (!valid_token(r->items[i].sku, INV_SKU_MAX)) {
            snprintf(err, errlen, "items[%zu].sku: must be 1..%d bytes of UTF-8 with no spaces", i,
                     INV_SKU_MAX);
            return CH_INVALID_ARGUMENT;
        }
        if (r->items[i].quantity == 0 || r->items[i].quantity > INV_QTY_MAX) {
            snprintf(err, errlen, "items[%zu].quantity: must be 1..%d, got %" PRIu32, i, INV_QTY_MAX,
                     r->items[i].quantity);
            return CH_INVALID_ARGUMENT;
        }
    }
    return CH_OK;
}

ch_status inv_decide_reserve(const inv_store *s, const inv_reserve_req *r, inv_decision *d, inv_outcome *out,
                             char *err, size_t errlen)
{
    size_t n = 0;

    if (check_reserve_req(r, err, errlen) != CH_OK)
        return CH_INVALID_ARGUMENT;
    if (res_find(s, r->order_id)) {
        *out = INV_DECIDED; /* one reservation per order, whatever came of it */
        return CH_OK;
    }
    /* Sum per SKU, in order of first appearance. */
    for (size_t i = 0; i < r->n_items; i++) {
        size_t k = 0;
        while (k < n && strcmp(d->lines[k].sku, r->items[i].sku) != 0)
            k++;
        if (k == n) {
            snprintf(d->lines[n].sku, sizeof d->lines[n].sku, "%s", r->items[i].sku);
            d->lines[n++].quantity = 0;
        }
        d->lines[k].quantity += r->items[i].quantity;
    }
    for (size_t k = 0; k < n; k++) {
        const inv_stock *st = stock_find(s, d->lines[k].sku);
        int64_t have = st ? st->available : 0;
        if (have < d->lines[k].quantity) {
            decision_init(d, INV_ENTRY_REJECTED);
            d->entry.order_id = r->order_id;
            d->entry.cause_event_id = r->cause_event_id;
            d->entry.sku = d->lines[k].sku;
            d->entry.requested = d->lines[k].quantity;
            d->entry.available = have;
            snprintf(d->reason, sizeof d->reason, "out of stock: %s needs %" PRIu32 ", has %" PRId64,
                     d->lines[k].sku, d->lines[k].quantity, have);
            d->entry.reason = d->reason;
            *out = INV_APPEND;
            return CH_OK;
        }
    }
    decision_init(d, INV_ENTRY_RESERVED);
    d->entry.order_id = r->order_id;
    d->entry.cause_event_id = r->cause_event_id;
    d->entry.customer_id = r->customer_id;
    d->entry.total_cents = r->total_cents;
    d->entry.lines = d->lines;
    d->entry.n_lines = n;
    for (size_t k = 0; k < n; k++)
        d->entry.units += d->lines[k].quantity; /* at most 100 items of 10000 */
    *out = INV_APPEND;
    return CH_OK;
}

ch_status inv_decide_commit(const inv_store *s, const char *order_id, const char *cause_event_id,
                            inv_decision *d, inv_outcome *out)
{
    const inv_reservation *res = order_id ? res_find(s, order_id) : NULL;

    if (!res)
        return CH_NOT_FOUND;
    if (res->status != INV_RES_RESERVED) {
        *out = INV_NOOP;
        return CH_OK;
    }
    decision_init(d, INV_ENTRY_COMMITTED);
    d->entry.order_id = order_id;
    d->entry.cause_event_id = cause_event_id;
    d->entry.units = res->units;
    *out = INV_APPEND;
    return CH_OK;
}

ch_status inv_decide_release(const inv_store *s, const char *order_id, bool customer_cancel, const char *why,
                             const char *cause_event_id, inv_decision *d, inv_outcome *out)
{
    const inv_reservation *res = order_id ? res_find(s, order_id) : NULL;
    char text[INV_REASON_MAX * 2 + 64];

    if (!res)
        return CH_NOT_FOUND;
    if (res->status == INV_RES_RELEASED) {
        *out = INV_DECIDED;
        return CH_OK;
    }
    if (res->status == INV_RES_REJECTED || (res->status == INV_RES_COMMITTED && !customer_cancel)) {
        *out = INV_NOOP;
        return CH_OK;
    }
    decision_init(d, INV_ENTRY_RELEASED);
    if (customer_cancel)
        snprintf(text, sizeof text, "cancelled by the customer%s%s", why && why[0] ? ": " : "",
                 why ? why : "");
    else
        snprintf(text, sizeof text, "payment failed%s%s", why && why[0] ? ": " : "", why ? why : "");
    inv_text_copy(d->reason, sizeof d->reason, text);
    d->entry.order_id = order_id;
    d->entry.cause_event_id = cause_event_id;
    d->entry.restocked = customer_cancel;
    d->entry.reason = d->reason;
    d->entry.units = res->units;
    *out = INV_APPEND;
    return CH_OK;
}

/* ---- the reducer ---- */

static ch_status apply_stock(inv_store *s, const inv_entry *e, bool *changed, inv_undo *u)
{
    if (!valid_token(e->sku, INV_SKU_MAX))
        return CH_INVALID_ARGUMENT;
    inv_stock *st = stock_find(s, e->sku);
    int64_t available = st ? st->available : 0;
    int64_t total = st ? st->total_in : 0;
    char *key = NULL;
    int64_t delta;

    if (e->kind == INV_ENTRY_STOCK_SET) {
        if (e->available < 0 || e->available > INV_SET_MAX)
            return CH_INVALID_ARGUMENT;
        delta = e->available - available; /* what this state makes of it (see header) */
    } else {
        if (e->delta == 0 || e->delta < -INV_DELTA_MAX || e->delta > INV_DELTA_MAX)
            return CH_INVALID_ARGUMENT;
        delta = e->delta;
        if (e->idempotency_key && e->idempotency_key[0]) {
            if (!key_valid(e->idempotency_key))
                return CH_INVALID_ARGUMENT;
            if (inv_store_adjust_key_known(s, e->sku, e->idempotency_key))
                return CH_OK; /* this key adjusted this SKU already */
        }
    }
    if (available + delta < 0 || total + delta > INV_UNITS_MAX)
        return CH_FAILED_PRECONDITION;
    if (e->kind == INV_ENTRY_STOCK_ADJUSTED && e->idempotency_key && e->idempotency_key[0]) {
        /* Room first, so that nothing after can fail half-way. */
        if (strmap_reserve(&s->keys) != CH_OK || !(key = strmap_pair_key(e->sku, e->idempotency_key)))
            return CH_NO_MEMORY;
    }
    if (!st) {
        ch_status rc = stock_insert(s, e->sku, &st);
        if (rc != CH_OK) {
            free(key);
            return rc;
        }
        *changed = true;
        u->created = true;
    }
    if (key) {
        strmap_put(&s->keys, key, key);
        snprintf(u->key, sizeof u->key, "%s", e->idempotency_key);
        *changed = true;
    }
    if (delta != 0)
        *changed = true;
    st->available += delta;
    st->total_in += delta;
    snprintf(u->sku, sizeof u->sku, "%s", e->sku);
    u->delta = delta;
    return CH_OK;
}

/* A new reservation record (not yet in the store); NULL when out of memory. */
static inv_reservation *res_new(const inv_entry *e, inv_res_status status)
{
    inv_reservation *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    snprintf(r->order_id, sizeof r->order_id, "%s", e->order_id);
    r->status = status;
    /* Only a REJECTED entry gives a new reservation a reason (a RESERVED entry
     * has none: see inv_entry), so a reservation has none until it is
     * released; inv_revert relies on that to undo a release exactly. */
    if (status == INV_RES_REJECTED && e->reason && e->reason[0]) {
        r->reason = strdup(e->reason);
        if (!r->reason) {
            free(r);
            return NULL;
        }
    }
    return r;
}

static ch_status apply_reserved(inv_store *s, const inv_entry *e, bool *changed)
{
    inv_stock *stocks[INV_LINES_MAX];
    uint32_t units = 0;

    if (!valid_token(e->customer_id, INV_CUSTOMER_MAX) || e->total_cents < 0 ||
        e->total_cents > INV_TOTAL_CENTS_MAX || e->n_lines == 0 || e->n_lines > INV_LINES_MAX || !e->lines)
        return CH_INVALID_ARGUMENT;
    if (res_find(s, e->order_id))
        return CH_OK; /* one reservation per order */
    for (size_t k = 0; k < e->n_lines; k++) {
        const inv_line *l = &e->lines[k];
        if (!utf8_valid_token(l->sku, INV_SKU_MAX) || l->quantity == 0 ||
            l->quantity > (uint32_t)INV_LINES_MAX * INV_QTY_MAX)
            return CH_INVALID_ARGUMENT;
        for (size_t j = 0; j < k; j++)
            if (strcmp(e->lines[j].sku, l->sku) == 0)
                return CH_INVALID_ARGUMENT; /* lines are summed per SKU */
        stocks[k] = stock_find(s, l->sku);
        if (!stocks[k] || stocks[k]->available < l->quantity)
            return CH_FAILED_PRECONDITION;
        units += l->quantity;
    }
    if (strmap_reserve(&s->res) != CH_OK)
        return CH_NO_MEMORY;
    inv_reservation *r = res_new(e, INV_RES_RESERVED);
    inv_line *lines = malloc(e->n_lines * sizeof *lines);
    if (!r || !lines) {
        res_free(r);
        free(lines);
        return CH_NO_MEMORY;
    }
    memcpy(lines, e->lines, e->n_lines * sizeof *lines);
    snprintf(r->customer_id, sizeof r->customer_id, "%s", e->customer_id);
    r->total_cents = e->total_cents;
    r->lines = lines;
    r->n_lines = (uint32_t)e->n_lines;
    r->units = units;
    for (size_t k = 0; k < e->n_lines; k++) {
        stocks[k]->available -= lines[k].quantity;
        stocks[k]->reserved += lines[k].quantity;
    }
    strmap_put(&s->res, r->order_id, r);
    *changed = true;
    return CH_OK;
}

static ch_status apply_rejected(inv_store *s, const inv_entry *e, bool *changed)
{
    if (!valid_token(e->sku, INV_SKU_MAX) || e->available < 0)
        return CH_INVALID_ARGUMENT;
    if (res_find(s, e->order_id))
        return CH_OK;
    if (strmap_reserve(&s->res) != CH_OK)
        return CH_NO_MEMORY;
    inv_reservation *r = res_new(e, INV_RES_REJECTED);
    char *sku = strdup(e->sku);
    if (!r || !sku) {
        res_free(r);
        free(sku);
        return CH_NO_MEMORY;
    }
    r->short_sku = sku;
    r->requested = e->requested;
    r->available = e->available;
    strmap_put(&s->res, r->order_id, r);
    *changed = true;
    return CH_OK;
}

typedef enum stock_counter { COUNT_AVAILABLE, COUNT_RESERVED, COUNT_SOLD } stock_counter;

static int64_t *counter_of(inv_stock *st, stock_counter c)
{
    switch (c) {
    case COUNT_AVAILABLE: return &st->available;
    case COUNT_RESERVED: return &st->reserved;
    default: return &st->sold;
    }
}

/* Moves each line of r from one counter to another, after checking that
 * every move is possible (all or nothing). */
static ch_status move_lines(inv_store *s, const inv_reservation *r, stock_counter from, stock_counter to)
{
    inv_stock *stocks[INV_LINES_MAX];

    for (uint32_t k = 0; k < r->n_lines; k++) {
        stocks[k] = stock_find(s, r->lines[k].sku);
        if (!stocks[k] || *counter_of(stocks[k], from) < r->lines[k].quantity)
            return CH_FAILED_PRECONDITION;
    }
    for (uint32_t k = 0; k < r->n_lines; k++) {
        *counter_of(stocks[k], from) -= r->lines[k].quantity;
        *counter_of(stocks[k], to) += r->lines[k].quantity;
    }
    return CH_OK;
}

static ch_status apply_committed(inv_store *s, const inv_entry *e, bool *changed)
{
    inv_reservation *r = res_find(s, e->order_id);

    if (!r)
        return CH_NOT_FOUND;
    if (r->status == INV_RES_COMMITTED)
        return CH_OK;
    if (r->status != INV_RES_RESERVED)
        return CH_FAILED_PRECONDITION;
    ch_status st = move_lines(s, r, COUNT_RESERVED, COUNT_SOLD);
    if (st != CH_OK)
        return st;
    r->status = INV_RES_COMMITTED;
    *changed = true;
    return CH_OK;
}

static ch_status apply_released(inv_store *s, const inv_entry *e, bool *changed)
{
    inv_reservation *r = res_find(s, e->order_id);
    char *reason = NULL;
    ch_status st;

    if (!r)
        return CH_NOT_FOUND;
    if (r->status == INV_RES_RELEASED)
        return CH_OK;
    if (r->status == INV_RES_REJECTED || (r->status == INV_RES_COMMITTED && !e->restocked))
        return CH_FAILED_PRECONDITION;
    if (e->reason && e->reason[0] && !(reason = strdup(e->reason)))
        return CH_NO_MEMORY;
    bool from_sold = r->status == INV_RES_COMMITTED;
    st = move_lines(s, r, from_sold ? COUNT_SOLD : COUNT_RESERVED, COUNT_AVAILABLE);
    if (st != CH_OK) {
        free(reason);
        return st;
    }
    free(r->reason);
    r->reason = reason;
    r->status = INV_RES_RELEASED;
    r->was_committed = from_sold;
    r->restocked = e->restocked;
    *changed = true;
    return CH_OK;
}

static ch_status apply(inv_store *s, const inv_entry *e, bool *changed, inv_undo *u)
{
    switch (e->kind) {
    case INV_ENTRY_STOCK_SET:
    case INV_ENTRY_STOCK_ADJUSTED: return apply_stock(s, e, changed, u);
    case INV_ENTRY_RESERVED:
    case INV_ENTRY_REJECTED:
    case INV_ENTRY_COMMITTED:
    case INV_ENTRY_RELEASED: break;
    default: return CH_INVALID_ARGUMENT;
    }
    if (!valid_token(e->order_id, INV_ORDER_ID_MAX) || !valid_text(e->reason, INV_REASON_MAX))
        return CH_INVALID_ARGUMENT;
    snprintf(u->order_id, sizeof u->order_id, "%s", e->order_id);
    u->restocked = e->restocked;
    switch (e->kind) {
    case INV_ENTRY_RESERVED: return apply_reserved(s, e, changed);
    case INV_ENTRY_REJECTED: return apply_rejected(s, e, changed);
    case INV_ENTRY_COMMITTED: return apply_committed(s, e, changed);
    default: return apply_released(s, e, changed);
    }
}

ch_status inv_apply_undoable(inv_store *s, const inv_entry *e, bool *changed, inv_undo *undo)
{
    bool dummy;
    inv_undo scratch;

    changed = changed ? changed : &dummy;
    undo = undo ? undo : &scratch;
    *changed = false;
    memset(undo, 0, sizeof *undo);
    ch_status st = apply(s, e, changed, undo);
    if (st == CH_OK && *changed)
        undo->kind = e->kind;
    else
        memset(undo, 0, sizeof *undo);
    return st;
}

ch_status inv_apply(inv_store *s, const inv_entry *e, bool *changed)
{
    return inv_apply_undoable(s, e, changed, NULL);
}

/* ---- undoing the reducer ---- */

/* Takes back a stock entry: the delta, the key it remembered, the SKU it
 * added. */
static ch_status revert_stock(inv_store *s, const inv_undo *u)
{
    char key[INV_SKU_MAX + INV_KEY_MAX + 2];
    size_t i = sku_bound(s, u->sku, false);

    if (u->delta < -INV_UNITS_MAX || u->delta > INV_UNITS_MAX ||
        (u->key[0] && u->kind != INV_ENTRY_STOCK_ADJUSTED))
        return CH_INVALID_ARGUMENT;
    if (i >= s->n_skus || strcmp(s->skus[i]->sku, u->sku) != 0)
        return CH_NOT_FOUND;
    inv_stock *st = s->skus[i];
    int64_t available = st->available - u->delta, total = st->total_in - u->delta;
    if (available < 0 || total < 0 || total > INV_UNITS_MAX)
        return CH_FAILED_PRECONDITION;
    if (u->created && (available != 0 || st->reserved != 0 || st->sold != 0))
        return CH_FAILED_PRECONDITION; /* units came in since: not the SKU the entry added */
    if (u->key[0]) {
        /* the index key, built without allocating (strmap_pair_key's form) */
        snprintf(key, sizeof key, "%s\x1f%s", u->sku, u->key);
        if (!strmap_get(&s->keys, key))
            return CH_FAILED_PRECONDITION;
        free(strmap_remove(&s->keys, key));
    }
    if (u->created) {
        memmove(&s->skus[i], &s->skus[i + 1], (s->n_skus - i - 1) * sizeof *s->skus);
        s->n_skus--;
        free(st);
        return CH_OK;
    }
    st->available = available;
    st->total_in = total;
    return CH_OK;
}

static void res_remove(inv_store *s, inv_reservation *r)
{
    strmap_remove(&s->res, r->order_id);
    res_free(r);
}

static ch_status revert_reserved(inv_store *s, inv_reservation *r)
{
    if (r->status != INV_RES_RESERVED)
        return CH_FAILED_PRECONDITION;
    ch_status st = move_lines(s, r, COUNT_RESERVED, COUNT_AVAILABLE);
    if (st == CH_OK)
        res_remove(s, r);
    return st;
}

static ch_status revert_committed(inv_store *s, inv_reservation *r)
{
    if (r->status != INV_RES_COMMITTED)
        return CH_FAILED_PRECONDITION;
    ch_status st = move_lines(s, r, COUNT_SOLD, COUNT_RESERVED);
    if (st != CH_OK)
        return st;
    r->status = INV_RES_RESERVED;
    return CH_OK;
}

static ch_status revert_released(inv_store *s, inv_reservation *r, const inv_undo *u)
{
    if (r->status != INV_RES_RELEASED || r->restocked != u->restocked)
        return CH_FAILED_PRECONDITION;
    ch_status st = move_lines(s, r, COUNT_AVAILABLE, r->was_committed ? COUNT_SOLD : COUNT_RESERVED);
    if (st != CH_OK)
        return st;
    /* Before the release the reservation was RESERVED or COMMITTED: neither
     * has a reason (see res_new), and was_committed and restocked are set by
     * the release only. */
    free(r->reason);
    r->reason = NULL;
    r->status = r->was_committed ? INV_RES_COMMITTED : INV_RES_RESERVED;
    r->was_committed = false;
    r->restocked = false;
    return CH_OK;
}

/* True when the string field f holds its terminating NUL. */
#define FIELD_OK(f) (memchr((f), '\0', sizeof(f)) != NULL)

ch_status inv_revert(inv_store *s, const inv_undo *u)
{
    if (!FIELD_OK(u->sku) || !FIELD_OK(u->order_id) || !FIELD_OK(u->key))
        return CH_INVALID_ARGUMENT;
    switch (u->kind) {
    case INV_ENTRY_STOCK_SET:
    case INV_ENTRY_STOCK_ADJUSTED: return revert_stock(s, u);
    case INV_ENTRY_RESERVED:
    case INV_ENTRY_REJECTED:
    case INV_ENTRY_COMMITTED:
    case INV_ENTRY_RELEASED: break;
    default: return CH_INVALID_ARGUMENT; /* nothing to undo, or an unknown kind */
    }
    inv_reservation *r = res_find(s, u->order_id);
    if (!r)
        return CH_NOT_FOUND;
    switch (u->kind) {
    case INV_ENTRY_RESERVED: return revert_reserved(s, r);
    case INV_ENTRY_REJECTED:
        if (r->status != INV_RES_REJECTED)
            return CH_FAILED_PRECONDITION;
        res_remove(s, r);
        return CH_OK;
    case INV_ENTRY_COMMITTED: return revert_committed(s, r);
    default: return revert_released(s, r, u);
    }
}
