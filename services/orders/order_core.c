/* order_core.c: validation, the reducer, and the in-memory store. */
#include "order_core.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strmap.h"
#include "utf8.h"

/* ---- validation ---- */

ch_status order_validate_create(const order_create_req *r, char *err, size_t errlen)
{
    const char *cust = r->customer_id ? r->customer_id : "";
    size_t cust_len = strlen(cust);

    if (cust_len == 0) {
        snprintf(err, errlen, "customer_id: required");
        return CH_INVALID_ARGUMENT;
    }
    if (!utf8_valid(cust, cust_len)) {
        snprintf(err, errlen, "customer_id: not valid UTF-8");
        return CH_INVALID_ARGUMENT;
    }
    if (!utf8_valid_token(cust, ORDER_CUSTOMER_MAX)) {
        snprintf(err, errlen,
                 "customer_id: must be 1..%d bytes with no spaces, control characters, '.', '*' or '>'",
                 ORDER_CUSTOMER_MAX);
        return CH_INVALID_ARGUMENT;
    }
    if (r->n_items == 0 || r->n_items > ORDER_ITEMS_MAX) {
        snprintf(err, errlen, "items: must hold 1..%d items, got %zu", ORDER_ITEMS_MAX, r->n_items);
        return CH_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < r->n_items; i++) {
        const order_item *it = &r->items[i];
        size_t sku_len = strnlen(it->sku, sizeof it->sku);
        if (sku_len == 0) {
            snprintf(err, errlen, "items[%zu].sku: required", i);
            return CH_INVALID_ARGUMENT;
        }
        if (sku_len > ORDER_SKU_MAX || !utf8_valid(it->sku, sku_len)) {
            snprintf(err, errlen, "items[%zu].sku: must be 1..%d bytes of valid UTF-8", i, ORDER_SKU_MAX);
            return CH_INVALID_ARGUMENT;
        }
        if (!utf8_valid_token(it->sku, ORDER_SKU_MAX)) {
            snprintf(err, errlen, "items[%zu].sku: no spaces, control characters, '.', '*' or '>' allowed",
                     i);
            return CH_INVALID_ARGUMENT;
        }
        if (it->quantity == 0 || it->quantity > ORDER_QTY_MAX) {
            snprintf(err, errlen, "items[%zu].quantity: must be 1..%d, got %" PRIu32, i, ORDER_QTY_MAX,
                     it->quantity);
            return CH_INVALID_ARGUMENT;
        }
        if (it->unit_price_cents < 0 || it->unit_price_cents > ORDER_PRICE_MAX) {
            snprintf(err, errlen, "items[%zu].unit_price_cents: must be 0..%lld, got %" PRId64, i,
                     ORDER_PRICE_MAX, it->unit_price_cents);
            return CH_INVALID_ARGUMENT;
        }
    }
    if (r->idempotency_key && r->idempotency_key[0]) {
        size_t klen = strlen(r->idempotency_key);
        if (klen > ORDER_IDEMPOTENCY_KEY_MAX || !utf8_valid(r->idempotency_key, klen)) {
            snprintf(err, errlen, "idempotency_key: must be at most %d bytes of valid UTF-8",
                     ORDER_IDEMPOTENCY_KEY_MAX);
            return CH_INVALID_ARGUMENT;
        }
    }
    return CH_OK;
}

int64_t order_total(const order_item *items, size_t n)
{
    int64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += (int64_t)items[i].quantity * items[i].unit_price_cents;
    return total;
}

/* ---- the reducer ---- */

const char *order_status_name(order_status s)
{
    switch (s) {
    case ORDER_PENDING: return "PENDING";
    case ORDER_RESERVED: return "RESERVED";
    case ORDER_CONFIRMED: return "CONFIRMED";
    case ORDER_CANCELLING: return "CANCELLING";
    case ORDER_CANCELLED: return "CANCELLED";
    default: return "UNSPECIFIED";
    }
}

bool order_saga_running(const order *o)
{
    return o->status == ORDER_PENDING || o->status == ORDER_RESERVED || o->status == ORDER_CANCELLING;
}

order_reaction order_next_reaction(const order *o)
{
    if (!o->created)
        return ORDER_REACT_NONE;
    if (o->status == ORDER_CONFIRMED && !(o->facts & ORDER_FACT_CONFIRMED_SEEN))
        return ORDER_REACT_CONFIRM;
    if (o->status == ORDER_CANCELLED && !(o->facts & ORDER_FACT_CANCELLED_SEEN))
        return ORDER_REACT_CANCEL;
    return ORDER_REACT_NONE;
}

order_reaction order_reaction_to(const order *o, const char *event_id)
{
    order_reaction r = order_next_reaction(o);

    if (r != ORDER_REACT_NONE && o->outcome_cause[0] &&
        (!event_id || strcmp(o->outcome_cause, event_id) != 0))
        return ORDER_REACT_NONE;
    return r;
}

ch_status order_check_cancel(const order *o, char *err, size_t errlen)
{
    switch (o->status) {
    case ORDER_CONFIRMED: return CH_OK;
    case ORDER_CANCELLING:
    case ORDER_CANCELLED: return CH_ALREADY_EXISTS;
    default:
        snprintf(err, errlen, "order %s is %s: its saga is still running, cancel once it is CONFIRMED", o->id,
                 order_status_name(o->status));
        return CH_FAILED_PRECONDITION;
    }
}

void order_clear(order *o)
{
    if (!o)
        return;
    free(o->items);
    free(o->reason);
    free(o->idempotency_key);
    free(o->key_index);
    memset(o, 0, sizeof *o);
}

/* A reason is kept in a buffer of the largest size, so that one replaced
 * can be put back in place (order_store_undo never allocates). */
static ch_status set_reason(order *o, const char *reason)
{
    if (!reason || !reason[0])
        return CH_OK;
    if (!o->reason && !(o->reason = malloc(ORDER_REASON_MAX + 1)))
        return CH_NO_MEMORY;
    snprintf(o->reason, ORDER_REASON_MAX + 1, "%.*s", ORDER_REASON_MAX, reason);
    return CH_OK;
}

static ch_status apply_created(order *o, const order_event *e)
{
    order_item *items = NULL;
    char *key = NULL, *key_index = NULL;

    if (e->n_items == 0 || e->n_items > ORDER_ITEMS_MAX || !e->customer_id)
        return CH_INVALID_ARGUMENT;
    items = malloc(e->n_items * sizeof *items);
    if (!items)
        return CH_NO_MEMORY;
    if (e->idempotency_key && e->idempotency_key[0]) {
        char customer[ORDER_CUSTOMER_MAX + 1]; /* as the order keeps it */
        snprintf(customer, sizeof customer, "%s", e->customer_id);
        key = strndup(e->idempotency_key, ORDER_IDEMPOTENCY_KEY_MAX);
        key_index = key ? strmap_pair_key(customer, key) : NULL;
        if (!key_index) {
            free(items);
            free(key);
            return CH_NO_MEMORY;
        }
    }
    memcpy(items, e->items, e->n_items * sizeof *items);
    snprintf(o->id, sizeof o->id, "%s", e->order_id);
    snprintf(o->customer_id, sizeof o->customer_id, "%s", e->customer_id);
    o->items = items;
    o->n_items = (uint32_t)e->n_items;
    o->total_cents = order_total(items, e->n_items);
    o->idempotency_key = key;
    o->key_index = key_index;
    o->created_ms = e->time_ms;
    snprintf(o->traceparent, sizeof o->traceparent, "%s", e->traceparent ? e->traceparent : "");
    return CH_OK;
}

/* The fact an event records (0: none, for order.created and notification.sent). */
static unsigned fact_of(order_event_kind k)
{
    switch (k) {
    case ORDER_EV_INVENTORY_RESERVED: return ORDER_FACT_RESERVED;
    case ORDER_EV_INVENTORY_FAILED: return ORDER_FACT_OUT_OF_STOCK;
    case ORDER_EV_PAYMENT_PROCESSED: return ORDER_FACT_PAID;
    case ORDER_EV_PAYMENT_FAILED: return ORDER_FACT_DECLINED;
    case ORDER_EV_INVENTORY_RELEASED: return ORDER_FACT_RELEASED;
    case ORDER_EV_CONFIRMED: return ORDER_FACT_CONFIRMED_SEEN;
    case ORDER_EV_CANCEL_REQUESTED: return ORDER_FACT_CANCEL_REQUESTED;
    case ORDER_EV_PAYMENT_REFUNDED: return ORDER_FACT_REFUNDED;
    case ORDER_EV_CANCELLED: return ORDER_FACT_CANCELLED_SEEN;
    default: return 0;
    }
}

/* The status a set of facts means (order_core.h). */
static order_status status_of(unsigned f)
{
    if (f & (ORDER_FACT_CANCELLED_SEEN | ORDER_FACT_OUT_OF_STOCK))
        return ORDER_CANCELLED;
    if (f & ORDER_FACT_DECLINED)
        return f & ORDER_FACT_RELEASED ? ORDER_CANCELLED : ORDER_RESERVED;
    if (f & ORDER_FACT_CANCEL_REQUESTED)
        return (f & ORDER_FACT_REFUNDED) && (f & ORDER_FACT_RELEASED) ? ORDER_CANCELLED : ORDER_CANCELLING;
    if (f & (ORDER_FACT_PAID | ORDER_FACT_CONFIRMED_SEEN))
        return ORDER_CONFIRMED;
    if (f & ORDER_FACT_RESERVED)
        return ORDER_RESERVED;
    return ORDER_PENDING;
}

/* Facts that cannot both hold: one participant said two different things. */
static bool contradicts(unsigned have, unsigned f)
{
    static const unsigned pairs[][2] = {
        {ORDER_FACT_PAID, ORDER_FACT_DECLINED},
        {ORDER_FACT_RESERVED, ORDER_FACT_OUT_OF_STOCK},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        if ((f == pairs[i][0] && (have & pairs[i][1])) || (f == pairs[i][1] && (have & pairs[i][0])))
            return true;
    return false;
}

/* Facts counted in version: the saga's steps, not the outcome events orders
 * itself publishes (they restate what the steps say). */
#define ORDER_VERSION_FACTS (~(ORDER_FACT_CONFIRMED_SEEN | ORDER_FACT_CANCELLED_SEEN))

/* The reason an event gives, by precedence: a cancel's, then a failure's, then
 * order.cancelled's (a restatement of one of them). */
static int reason_rank(order_event_kind k)
{
    switch (k) {
    case ORDER_EV_CANCEL_REQUESTED: return 3;
    case ORDER_EV_INVENTORY_FAILED:
    case ORDER_EV_PAYMENT_FAILED: return 2;
    case ORDER_EV_CANCELLED: return 1;
    default: return 0;
    }
}

ch_status order_apply(order *o, const order_event *e, bool *changed)
{
    unsigned f = fact_of(e->kind);
    int rank = reason_rank(e->kind);
    ch_status st;

    *changed = false;
    if (!e->order_id || !e->order_id[0])
        return CH_INVALID_ARGUMENT;
    if (e->kind == ORDER_EV_CREATED) {
        if (o->created)
            return CH_OK; /* a repeat */
        st = apply_created(o, e);
        if (st != CH_OK)
            return st;
        o->created = true;
        o->version++;
    } else {
        if (!o->id[0])
            snprintf(o->id, sizeof o->id, "%s", e->order_id);
        if (!f || (o->facts & f))
            return CH_OK; /* no fact, or a repeat */
        if (contradicts(o->facts, f))
            return CH_FAILED_PRECONDITION;
        /* A reason of higher rank replaces a lower one; same rank: the
         * first stands (equal ranks only come from a contradiction). */
        if (rank > 0 && e->reason && e->reason[0] && rank > o->reason_rank) {
            if ((st = set_reason(o, e->reason)) != CH_OK)
                return st;
            o->reason_rank = rank;
        }
        order_status before = status_of(o->facts);
        o->facts |= f;
        if (f & ORDER_VERSION_FACTS)
            o->version++;
        order_status after = status_of(o->facts);
        /* the step that made an outcome due names its cause */
        if ((after == ORDER_CONFIRMED || after == ORDER_CANCELLED) && after != before)
            snprintf(o->outcome_cause, sizeof o->outcome_cause, "%s", e->event_id ? e->event_id : "");
    }
    if (e->seq > o->last_seq)
        o->last_seq = e->seq;
    if (e->time_ms > o->updated_ms)
        o->updated_ms = e->time_ms;
    o->status = o->created ? status_of(o->facts) : ORDER_UNSPECIFIED;
    *changed = true;
    return CH_OK;
}

/* ---- the store ---- */

struct order_store {
    strmap by_id;  /* id -> order */
    strmap stubs;  /* id -> order not created yet: facts that came before its order.created */
    strmap by_key; /* key_index -> order, for the orders created with an idempotency key */
    order **all;   /* creation order */
    size_t n, cap;
};

ch_status order_store_create(order_store **out)
{
    order_store *s = calloc(1, sizeof *s);
    if (!s)
        return CH_NO_MEMORY;
    *out = s;
    return CH_OK;
}

void order_store_destroy(order_store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        order_clear(s->all[i]);
        free(s->all[i]);
    }
    free(s->all);
    for (size_t i = 0; i < s->stubs.cap; i++) {
        order *o = s->stubs.slots[i].key ? s->stubs.slots[i].val : NULL;
        if (o) {
            order_clear(o);
            free(o);
        }
    }
    strmap_free(&s->stubs);
    strmap_free(&s->by_id);
    strmap_free(&s->by_key);
    free(s);
}

const order *order_store_get(const order_store *s, const char *id)
{
    return strmap_get(&s->by_id, id);
}

bool order_store_has_stub(const order_store *s, const char *id)
{
    return strmap_get(&s->stubs, id) != NULL;
}

const order *order_store_by_key(const order_store *s, const char *customer_id, const char *key)
{
    char k[ORDER_CUSTOMER_MAX + ORDER_IDEMPOTENCY_KEY_MAX + 2];
    size_t a = strlen(customer_id), b = strlen(key);

    if (a > ORDER_CUSTOMER_MAX || b > ORDER_IDEMPOTENCY_KEY_MAX)
        return NULL; /* no order holds a key that long */
    memcpy(k, customer_id, a);
    k[a] = '\x1f';
    memcpy(k + a + 1, key, b + 1);
    return strmap_get(&s->by_key, k);
}

size_t order_store_count(const order_store *s)
{
    return s->n;
}

/* Makes room for one more order in every index, so store_put cannot fail. */
static ch_status store_room(order_store *s)
{
    ch_status st;

    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        order **all = realloc(s->all, cap * sizeof *all);
        if (!all)
            return CH_NO_MEMORY;
        s->all = all;
        s->cap = cap;
    }
    if ((st = strmap_reserve(&s->by_id)) != CH_OK)
        return st;
    return strmap_reserve(&s->by_key);
}

/* Adds a newly created order to every index (room made by store_room). */
static void store_put(order_store *s, order *o)
{
    strmap_put(&s->by_id, o->id, o);
    if (o->key_index)
        strmap_put(&s->by_key, o->key_index, o);
    o->list_pos = s->n;
    s->all[s->n++] = o;
}

ch_status order_store_apply(order_store *s, const order_event *e, const order **out, bool *changed)
{
    const char *id = e->order_id ? e->order_id : "";
    order *o = strmap_get(&s->by_id, id);
    bool creates = e->kind == ORDER_EV_CREATED;
    ch_status st;

    *changed = false;
    if (out)
        *out = NULL;
    if (o) {
        st = order_apply(o, e, changed);
        if (out)
            *out = o;
        return st;
    }
    if (!id[0] || strlen(id) > ORDER_ID_MAX)
        return CH_INVALID_ARGUMENT;
    /* Room first: once order_apply succeeds nothing may fail. */
    order *stub = strmap_get(&s->stubs, id);
    if (creates)
        st = store_room(s);
    else if (stub)
        st = CH_OK;
    else if (s->stubs.used >= ORDER_STUBS_MAX)
        st = CH_RESOURCE_EXHAUSTED;
    else
        st = strmap_reserve(&s->stubs);
    if (st != CH_OK)
        return st;
    o = stub ? stub : calloc(1, sizeof *o);
    if (!o)
        return CH_NO_MEMORY;
    st = order_apply(o, e, changed);
    if (st != CH_OK) {
        if (!stub) {
            order_clear(o);
            free(o);
        }
        return st; /* a stub stays as it was: order_apply changes nothing on failure */
    }
    if (creates) {
        if (stub)
            strmap_remove(&s->stubs, id);
        store_put(s, o); /* from now on an order like any other */
        if (out)
            *out = o;
        return CH_OK;
    }
    if (!stub)
        strmap_put(&s->stubs, o->id, o);
    return CH_NOT_FOUND; /* the fact is kept until the order.created comes */
}

void order_undo_record(order_undo *u, const order *o, const char *id, bool creation)
{
    memset(u, 0, sizeof *u);
    snprintf(u->id, sizeof u->id, "%s", o ? o->id : id);
    u->creation = creation;
    if (creation || !o)
        return;
    u->facts = o->facts;
    u->reason_rank = o->reason_rank;
    u->had_reason = o->reason != NULL;
    snprintf(u->reason, sizeof u->reason, "%s", o->reason ? o->reason : "");
    u->status = o->status;
    u->version = o->version;
    u->last_seq = o->last_seq;
    u->updated_ms = o->updated_ms;
    snprintf(u->outcome_cause, sizeof u->outcome_cause, "%s", o->outcome_cause);
}

ch_status order_store_undo(order_store *s, const order_undo *u)
{
    order *o = strmap_get(&s->by_id, u->id);

    if (!o)
        return CH_NOT_FOUND;
    if (u->creation) {
        if (s->n == 0 || s->all[s->n - 1] != o)
            return CH_FAILED_PRECONDITION;
        strmap_remove(&s->by_id, o->id);
        if (o->key_index)
            strmap_remove(&s->by_key, o->key_index);
        s->all[--s->n] = NULL;
        order_clear(o);
        free(o);
        return CH_OK;
    }
    /* a reason never goes away once set: the one before goes back in place */
    if (!u->had_reason) {
        free(o->reason);
        o->reason = NULL;
    } else if (o->reason) {
        snprintf(o->reason, ORDER_REASON_MAX + 1, "%s", u->reason);
    }
    o->facts = u->facts;
    o->reason_rank = u->reason_rank;
    o->status = u->status;
    o->version = u->version;
    o->last_seq = u->last_seq;
    o->updated_ms = u->updated_ms;
    snprintf(o->outcome_cause, sizeof o->outcome_cause, "%s", u->outcome_cause);
    return CH_OK;
}

ch_status order_store_list(const order_store *s, const char *page_token, const char *customer_id,
                           order_status status, const order **out, size_t cap, size_t *n, char *next_token)
{
    size_t pos = s->n; /* walk backwards from here (exclusive) */

    *n = 0;
    next_token[0] = '\0';
    if (page_token && page_token[0]) {
        char *end;
        unsigned long long v;
        if (page_token[0] != 'p' || page_token[1] < '0' || page_token[1] > '9')
            return CH_INVALID_ARGUMENT;
        v = strtoull(page_token + 1, &end, 10);
        if (*end != '\0' || v > s->n)
            return CH_INVALID_ARGUMENT;
        pos = (size_t)v;
    }
    while (pos > 0 && *n < cap) {
        const order *o = s->all[--pos];
        if (customer_id && customer_id[0] && strcmp(o->customer_id, customer_id) != 0)
            continue;
        if (status != ORDER_UNSPECIFIED && o->status != status)
            continue;
        out[(*n)++] = o;
    }
    if (pos > 0 && *n == cap)
        snprintf(next_token, 32, "p%zu", pos);
    return CH_OK;
}

static uint64_t hash_bytes(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* FNV-1a of customer "\x1f" key with a 64-bit finaliser. It makes the order
 * ids of idempotent creates: it must never change, or a retry after an
 * upgrade would get a new id. */
static uint64_t key_hash(const char *customer, const char *key)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    h = hash_bytes(h, customer, strlen(customer));
    h = hash_bytes(h, "\x1f", 1);
    h = hash_bytes(h, key, strlen(key));
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

void order_id_from_key(char out[ORDER_ID_MAX + 1], const char *customer_id, const char *key)
{
    order_id_from_bits(out, key_hash(customer_id, key));
}

void order_id_from_bits(char out[ORDER_ID_MAX + 1], uint64_t bits)
{
    snprintf(out, ORDER_ID_MAX + 1, "ord-%016" PRIx64, bits);
}
