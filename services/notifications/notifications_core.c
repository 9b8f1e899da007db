/* notifications_core.c: building, checking and storing notifications. */
#include "notifications_core.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strmap.h"
#include "utf8.h"

#define NOTIF_TOKEN_PREFIX "n-"

static const char *const kind_names[] = {
    [NOTIF_KIND_UNSPECIFIED] = "unspecified",
    [NOTIF_ORDER_CONFIRMED] = "order_confirmed",
    [NOTIF_ORDER_CANCELLED] = "order_cancelled",
};

const char *notif_kind_name(notif_kind k)
{
    if (k != NOTIF_ORDER_CONFIRMED && k != NOTIF_ORDER_CANCELLED)
        return kind_names[NOTIF_KIND_UNSPECIFIED];
    return kind_names[k];
}

ch_status notif_kind_parse(const char *name, notif_kind *out)
{
    if (!name)
        return CH_INVALID_ARGUMENT;
    for (int k = NOTIF_ORDER_CONFIRMED; k <= NOTIF_ORDER_CANCELLED; k++) {
        if (strcmp(name, kind_names[k]) == 0) {
            *out = (notif_kind)k;
            return CH_OK;
        }
    }
    return CH_INVALID_ARGUMENT;
}

static ch_status fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static ch_status fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return CH_INVALID_ARGUMENT;
}

/* Checks an id field: required, a token of at most max bytes. */
static ch_status check_id(const char *field, const char *v, size_t max, char *err, size_t errlen)
{
    if (!v || !v[0])
        return fail(err, errlen, "%s: required", field);
    if (!utf8_valid_token(v, max))
        return fail(err, errlen, "%s: must be 1..%zu bytes of UTF-8 with no spaces, '.', '*' or '>'", field,
                    max);
    return CH_OK;
}

/* Length of the longest prefix of s (n bytes) of at most cap bytes that does
 * not split a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t n, size_t cap)
{
    if (n <= cap)
        return n;
    n = cap;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

ch_status notif_build(const notif_input *in, notif_notification *out, char *err, size_t errlen)
{
    ch_status st;

    if (in->kind != NOTIF_ORDER_CONFIRMED && in->kind != NOTIF_ORDER_CANCELLED)
        return fail(err, errlen, "kind: unknown value %d", (int)in->kind);
    if ((st = check_id("order_id", in->order_id, NOTIF_ORDER_ID_MAX, err, errlen)) != CH_OK)
        return st;
    if ((st = check_id("customer_id", in->customer_id, NOTIF_CUSTOMER_MAX, err, errlen)) != CH_OK)
        return st;

    memset(out, 0, sizeof *out);
    out->kind = in->kind;
    out->sent_at_ms = in->sent_at_ms;
    snprintf(out->order_id, sizeof out->order_id, "%s", in->order_id);
    snprintf(out->customer_id, sizeof out->customer_id, "%s", in->customer_id);
    snprintf(out->id, sizeof out->id, "%s.%s", in->order_id, notif_kind_name(in->kind));

    if (in->kind == NOTIF_ORDER_CONFIRMED) {
        if (in->total_cents < 0)
            return fail(err, errlen, "total_cents: must be >= 0, got %" PRId64, in->total_cents);
        snprintf(out->message, sizeof out->message, "Your order %s is confirmed: total %" PRId64 ".%02d",
                 in->order_id, in->total_cents / 100, (int)(in->total_cents % 100));
        return CH_OK;
    }

    const char *reason = in->reason && in->reason[0] ? in->reason : "no reason given";
    size_t rlen = strlen(reason);
    if (rlen > NOTIF_REASON_MAX || !utf8_valid(reason, rlen))
        return fail(err, errlen, "reason: must be at most %d bytes of UTF-8", NOTIF_REASON_MAX);
    int head = snprintf(out->message, sizeof out->message, "Your order %s was cancelled: ", in->order_id);
    size_t room = NOTIF_MESSAGE_MAX - (size_t)head; /* head <= 11 + 40 + 16 */
    size_t take = utf8_cut(reason, rlen, room);
    memcpy(out->message + head, reason, take);
    out->message[(size_t)head + take] = '\0';
    return CH_OK;
}

ch_status notif_validate(const notif_notification *n, char *err, size_t errlen)
{
    char want[NOTIF_ID_MAX + 1];
    ch_status st;

    if (n->kind != NOTIF_ORDER_CONFIRMED && n->kind != NOTIF_ORDER_CANCELLED)
        return fail(err, errlen, "kind: unknown value %d", (int)n->kind);
    if ((st = check_id("order_id", n->order_id, NOTIF_ORDER_ID_MAX, err, errlen)) != CH_OK)
        return st;
    if ((st = check_id("customer_id", n->customer_id, NOTIF_CUSTOMER_MAX, err, errlen)) != CH_OK)
        return st;
    snprintf(want, sizeof want, "%s.%s", n->order_id, notif_kind_name(n->kind));
    if (strcmp(n->id, want) != 0)
        return fail(err, errlen, "notification_id: must be %s", want);
    size_t len = strnlen(n->message, sizeof n->message);
    if (len == 0 || len > NOTIF_MESSAGE_MAX || !utf8_valid(n->message, len))
        return fail(err, errlen, "message: must be 1..%d bytes of UTF-8", NOTIF_MESSAGE_MAX);
    return CH_OK;
}

/* Parses a page token "n-<seq>"; false if it is not one. */
static bool token_parse(const char *t, uint64_t *seq)
{
    size_t plen = strlen(NOTIF_TOKEN_PREFIX);
    uint64_t v = 0;

    if (strncmp(t, NOTIF_TOKEN_PREFIX, plen) != 0)
        return false;
    t += plen;
    if (!*t || strlen(t) > 19)
        return false;
    for (; *t; t++) {
        if (*t < '0' || *t > '9')
            return false;
        v = v * 10 + (uint64_t)(*t - '0');
    }
    if (v == 0)
        return false;
    *seq = v;
    return true;
}

ch_status notif_validate_list(const char *customer_id, const char *order_id, uint32_t page_size,
                              const char *page_token, size_t *size, char *err, size_t errlen)
{
    bool by_customer = customer_id && customer_id[0], by_order = order_id && order_id[0];
    uint64_t seq;
    ch_status st;

    if (!by_customer && !by_order)
        return fail(err, errlen, "customer_id, order_id: one of the two is required");
    if (by_customer && by_order)
        return fail(err, errlen, "customer_id, order_id: give one of the two, not both");
    if (by_customer && (st = check_id("customer_id", customer_id, NOTIF_CUSTOMER_MAX, err, errlen)) != CH_OK)
        return st;
    if (by_order && (st = check_id("order_id", order_id, NOTIF_ORDER_ID_MAX, err, errlen)) != CH_OK)
        return st;
    if (page_size > NOTIF_PAGE_MAX)
        return fail(err, errlen, "page_size: must be 0..%d, got %" PRIu32, NOTIF_PAGE_MAX, page_size);
    if (page_token && page_token[0] && !token_parse(page_token, &seq))
        return fail(err, errlen, "page_token: not a token this service made");
    *size = page_size ? page_size : NOTIF_PAGE_DEFAULT;
    return CH_OK;
}

/* ---- the store ---- */

/* Seqs of the notifications of one key (a customer or an order), ascending. */
typedef struct notif_index_entry {
    uint64_t *seqs;
    size_t n, cap;
    char key[]; /* the strmap key */
} notif_index_entry;

struct notif_store {
    notif_notification *items; /* items[seq - 1] */
    size_t n, cap;
    strmap by_customer; /* customer id -> notif_index_entry */
    strmap by_order;    /* order id -> notif_index_entry */
};

static const notif_index_entry *index_get(const strmap *ix, const char *key)
{
    return strmap_get(ix, key);
}

/* Makes room for one more seq under key (creating the key), so that the
 * append after it cannot fail. */
static ch_status index_reserve(strmap *ix, const char *key, notif_index_entry **out)
{
    notif_index_entry *e = strmap_get(ix, key);
    if (!e) {
        size_t len = strlen(key);
        if (strmap_reserve(ix) != CH_OK || !(e = calloc(1, sizeof *e + len + 1)))
            return CH_NO_MEMORY;
        memcpy(e->key, key, len + 1);
        strmap_put(ix, e->key, e);
    }
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 4;
        uint64_t *seqs = realloc(e->seqs, cap * sizeof *seqs);
        if (!seqs)
            return CH_NO_MEMORY;
        e->seqs = seqs;
        e->cap = cap;
    }
    *out = e;
    return CH_OK;
}

/* Takes the newest seq off key's entry (the one the last add appended), and
 * the key itself once it has none left, as if the add had never been. */
static void index_pop(strmap *ix, const char *key)
{
    notif_index_entry *e = strmap_get(ix, key);
    if (!e || e->n == 0)
        return;
    if (--e->n == 0) {
        strmap_remove(ix, e->key);
        free(e->seqs);
        free(e);
    }
}

/* Index in e->seqs of the first seq >= from (e->n when none). */
static size_t index_first_from(const notif_index_entry *e, uint64_t from)
{
    size_t lo = 0, hi = e->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (e->seqs[mid] < from)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void index_free(strmap *ix)
{
    for (size_t i = 0; i < ix->cap; i++) {
        notif_index_entry *e = ix->slots[i].val;
        if (e) {
            free(e->seqs);
            free(e);
        }
    }
    strmap_free(ix);
}

ch_status notif_store_create(notif_store **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? CH_OK : CH_NO_MEMORY;
}

void notif_store_destroy(notif_store *s)
{
    if (!s)
        return;
    index_free(&s->by_customer);
    index_free(&s->by_order);
    free(s->items);
    free(s);
}

const notif_notification *notif_store_find(const notif_store *s, const char *order_id, notif_kind kind)
{
    const notif_index_entry *e = index_get(&s->by_order, order_id);
    for (size_t i = 0; e && i < e->n; i++) {
        const notif_notification *n = &s->items[e->seqs[i] - 1];
        if (n->kind == kind)
            return n;
    }
    return NULL;
}

ch_status notif_store_add(notif_store *s, const notif_notification *n, bool *added)
{
    notif_index_entry *by_cust, *by_order;

    *added = false;
    if (notif_store_find(s, n->order_id, n->kind))
        return CH_OK;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        notif_notification *items = realloc(s->items, cap * sizeof *items);
        if (!items)
            return CH_NO_MEMORY;
        s->items = items;
        s->cap = cap;
    }
    /* An empty key created here on a later failure is harmless: lists see no
     * seqs under it. */
    if (index_reserve(&s->by_customer, n->customer_id, &by_cust) != CH_OK ||
        index_reserve(&s->by_order, n->order_id, &by_order) != CH_OK)
        return CH_NO_MEMORY;

    notif_notification *stored = &s->items[s->n++];
    *stored = *n;
    stored->seq = s->n;
    by_cust->seqs[by_cust->n++] = stored->seq;
    by_order->seqs[by_order->n++] = stored->seq;
    *added = true;
    return CH_OK;
}

void notif_store_remove_newest(notif_store *s)
{
    if (s->n == 0)
        return;
    const notif_notification *last = &s->items[s->n - 1];
    index_pop(&s->by_customer, last->customer_id);
    index_pop(&s->by_order, last->order_id);
    s->n--;
}

uint64_t notif_store_count(const notif_store *s)
{
    return s->n;
}

const notif_notification *notif_store_at(const notif_store *s, uint64_t seq)
{
    if (seq == 0 || seq > s->n)
        return NULL;
    return &s->items[seq - 1];
}

ch_status notif_store_list(const notif_store *s, const char *customer_id, const char *order_id,
                           const char *page_token, uint64_t upto, const notif_notification **out, size_t cap,
                           size_t *n, char *next_token)
{
    const notif_index_entry *e =
        order_id && order_id[0] ? index_get(&s->by_order, order_id) : index_get(&s->by_customer, customer_id);
    uint64_t from = 1;

    *n = 0;
    next_token[0] = '\0';
    if (page_token && page_token[0] && !token_parse(page_token, &from))
        return CH_INVALID_ARGUMENT;
    if (!e)
        return CH_OK;
    size_t i = index_first_from(e, from);
    for (; i < e->n && e->seqs[i] <= upto && *n < cap; i++)
        out[(*n)++] = &s->items[e->seqs[i] - 1];
    if (i < e->n && e->seqs[i] <= upto)
        snprintf(next_token, NOTIF_TOKEN_MAX, NOTIF_TOKEN_PREFIX "%" PRIu64, e->seqs[i]);
    return CH_OK;
}

uint64_t notif_store_after(const notif_store *s, const char *customer_id, uint64_t after, uint64_t upto,
                           const notif_notification **out, size_t cap, size_t *n)
{
    *n = 0;
    if (upto > s->n)
        upto = s->n;
    if (after >= upto || cap == 0)
        return after;
    if (!customer_id || !customer_id[0]) {
        for (uint64_t seq = after + 1; seq <= upto && *n < cap; seq++)
            out[(*n)++] = &s->items[seq - 1];
    } else {
        const notif_index_entry *e = index_get(&s->by_customer, customer_id);
        if (!e)
            return upto;
        for (size_t i = index_first_from(e, after + 1); i < e->n && e->seqs[i] <= upto && *n < cap; i++)
            out[(*n)++] = &s->items[e->seqs[i] - 1];
    }
    return *n == cap ? out[cap - 1]->seq : upto;
}
