/* test_notifications_core.c: building, checking, storing and paging
 * notifications (the pure core of the notifications service). */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <string.h>

#include "cu_run.h"
#include "notifications_core.h"

static notif_notification make(notif_kind kind, const char *order_id, const char *customer_id, int64_t total,
                               const char *reason)
{
    notif_input in = {kind, order_id, customer_id, total, reason, 1700000000000LL};
    notif_notification n;
    char err[256] = "";
    ch_status st = notif_build(&in, &n, err, sizeof err);
    CU_ASSERT_EQUAL(st, CH_OK);
    if (st != CH_OK)
        fprintf(stderr, "notif_build: %s\n", err);
    return n;
}

static void test_notifications_core_kind_names_round_trip(void)
{
    notif_kind k = NOTIF_KIND_UNSPECIFIED;
    CU_ASSERT_STRING_EQUAL(notif_kind_name(NOTIF_ORDER_CONFIRMED), "order_confirmed");
    CU_ASSERT_STRING_EQUAL(notif_kind_name(NOTIF_ORDER_CANCELLED), "order_cancelled");
    CU_ASSERT_STRING_EQUAL(notif_kind_name((notif_kind)77), "unspecified");
    CU_ASSERT_EQUAL(notif_kind_parse("order_cancelled", &k), CH_OK);
    CU_ASSERT_EQUAL(k, NOTIF_ORDER_CANCELLED);
    CU_ASSERT_EQUAL(notif_kind_parse("order_confirmed", &k), CH_OK);
    CU_ASSERT_EQUAL(k, NOTIF_ORDER_CONFIRMED);
    CU_ASSERT_EQUAL(notif_kind_parse("unspecified", &k), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(notif_kind_parse("", &k), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(k, NOTIF_ORDER_CONFIRMED); /* unchanged on failure */
}

static void test_notifications_core_build_writes_id_and_text(void)
{
    notif_notification c = make(NOTIF_ORDER_CONFIRMED, "ord-1", "cust-1", 3005, NULL);
    CU_ASSERT_STRING_EQUAL(c.id, "ord-1.order_confirmed");
    CU_ASSERT_STRING_EQUAL(c.order_id, "ord-1");
    CU_ASSERT_STRING_EQUAL(c.customer_id, "cust-1");
    CU_ASSERT_STRING_EQUAL(c.message, "Your order ord-1 is confirmed: total 30.05");
    CU_ASSERT_EQUAL(c.sent_at_ms, 1700000000000LL);
    CU_ASSERT_EQUAL(c.seq, 0);

    notif_notification x = make(NOTIF_ORDER_CANCELLED, "ord-2", "cust-1", 0, "out of stock: sku-9");
    CU_ASSERT_STRING_EQUAL(x.id, "ord-2.order_cancelled");
    CU_ASSERT_STRING_EQUAL(x.message, "Your order ord-2 was cancelled: out of stock: sku-9");
    notif_notification none = make(NOTIF_ORDER_CANCELLED, "ord-3", "cust-1", 0, "");
    CU_ASSERT_STRING_EQUAL(none.message, "Your order ord-3 was cancelled: no reason given");
    notif_notification zero = make(NOTIF_ORDER_CONFIRMED, "ord-4", "cust-1", 7, NULL);
    CU_ASSERT_STRING_EQUAL(zero.message, "Your order ord-4 is confirmed: total 0.07");
}

static void test_notifications_core_build_cuts_long_reason_at_utf8_boundary(void)
{
    char order_id[NOTIF_ORDER_ID_MAX + 1], reason[NOTIF_REASON_MAX + 1];
    memset(order_id, 'o', NOTIF_ORDER_ID_MAX);
    order_id[NOTIF_ORDER_ID_MAX] = '\0';
    /* 100 two-byte characters: 200 bytes, more than the room after the head */
    for (int i = 0; i < 100; i++)
        memcpy(reason + 2 * i, "\xc3\xa9", 2);
    reason[NOTIF_REASON_MAX] = '\0';

    notif_notification n = make(NOTIF_ORDER_CANCELLED, order_id, "cust-1", 0, reason);
    size_t len = strlen(n.message);
    CU_ASSERT_TRUE(len <= NOTIF_MESSAGE_MAX);
    CU_ASSERT_TRUE(len >= NOTIF_MESSAGE_MAX - 1);
    CU_ASSERT_EQUAL(notif_validate(&n, NULL, 0), CH_OK); /* still valid UTF-8 */
}

static void test_notifications_core_build_names_the_field(void)
{
    char err[256];
    notif_notification n;
    char long_reason[NOTIF_REASON_MAX + 2];
    memset(long_reason, 'r', sizeof long_reason - 1);
    long_reason[sizeof long_reason - 1] = '\0';
    struct {
        notif_input in;
        const char *field;
    } cases[] = {
        {{NOTIF_ORDER_CONFIRMED, "", "c", 1, NULL, 0}, "order_id: required"},
        {{NOTIF_ORDER_CONFIRMED, "a.b", "c", 1, NULL, 0}, "order_id"},
        {{NOTIF_ORDER_CONFIRMED, "ord-1", "", 1, NULL, 0}, "customer_id: required"},
        {{NOTIF_ORDER_CONFIRMED, "ord-1", "c\xff", 1, NULL, 0}, "customer_id"},
        {{NOTIF_ORDER_CONFIRMED, "ord-1", "c", -1, NULL, 0}, "total_cents"},
        {{NOTIF_ORDER_CANCELLED, "ord-1", "c", 0, "bad\xc3\x28", 0}, "reason"},
        {{NOTIF_ORDER_CANCELLED, "ord-1", "c", 0, long_reason, 0}, "reason"},
        {{NOTIF_KIND_UNSPECIFIED, "ord-1", "c", 0, NULL, 0}, "kind"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        CU_ASSERT_EQUAL(notif_build(&cases[i].in, &n, err, sizeof err), CH_INVALID_ARGUMENT);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, cases[i].field));
        if (!strstr(err, cases[i].field))
            fprintf(stderr, "case %zu: %s\n", i, err);
    }
}

static void test_notifications_core_validate_checks_read_back(void)
{
    char err[256];
    notif_notification n = make(NOTIF_ORDER_CONFIRMED, "ord-1", "cust-1", 100, NULL);
    CU_ASSERT_EQUAL(notif_validate(&n, err, sizeof err), CH_OK);

    notif_notification bad = n;
    snprintf(bad.id, sizeof bad.id, "ord-2.order_confirmed");
    CU_ASSERT_EQUAL(notif_validate(&bad, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "notification_id"));
    bad = n;
    bad.kind = NOTIF_ORDER_CANCELLED; /* id says confirmed */
    CU_ASSERT_EQUAL(notif_validate(&bad, err, sizeof err), CH_INVALID_ARGUMENT);
    bad = n;
    bad.message[0] = '\0';
    CU_ASSERT_EQUAL(notif_validate(&bad, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "message"));
    bad = n;
    snprintf(bad.message, sizeof bad.message, "bad \xed\xa0\x80 surrogate");
    CU_ASSERT_EQUAL(notif_validate(&bad, err, sizeof err), CH_INVALID_ARGUMENT);
    bad = n;
    bad.customer_id[0] = '\0';
    CU_ASSERT_EQUAL(notif_validate(&bad, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "customer_id"));
}

static void test_notifications_core_validate_list_names_the_field(void)
{
    char err[256];
    size_t size = 0;

    CU_ASSERT_EQUAL(notif_validate_list("cust-1", "", 0, "", &size, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(size, NOTIF_PAGE_DEFAULT);
    CU_ASSERT_EQUAL(notif_validate_list("", "ord-1", 500, "n-12", &size, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(size, 500);

    CU_ASSERT_EQUAL(notif_validate_list("", "", 0, "", &size, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "customer_id, order_id"));
    CU_ASSERT_EQUAL(notif_validate_list("c", "o", 0, "", &size, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "customer_id, order_id"));
    CU_ASSERT_EQUAL(notif_validate_list("c d", "", 0, "", &size, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "customer_id"));
    char long_order[NOTIF_ORDER_ID_MAX + 2];
    memset(long_order, 'o', sizeof long_order - 1);
    long_order[sizeof long_order - 1] = '\0';
    CU_ASSERT_EQUAL(notif_validate_list("", long_order, 0, "", &size, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "order_id"));
    CU_ASSERT_EQUAL(notif_validate_list("c", "", 501, "", &size, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "page_size"));
    const char *bad_tokens[] = {"x", "n-", "n-0", "n-12a", "n-99999999999999999999", "12"};
    for (size_t i = 0; i < sizeof bad_tokens / sizeof bad_tokens[0]; i++) {
        CU_ASSERT_EQUAL(notif_validate_list("c", "", 0, bad_tokens[i], &size, err, sizeof err),
                        CH_INVALID_ARGUMENT);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "page_token"));
    }
}

static void test_notifications_core_store_keeps_one_per_order_and_kind(void)
{
    notif_store *s = NULL;
    bool added = false;

    CU_ASSERT_EQUAL_FATAL(notif_store_create(&s), CH_OK);
    notif_notification c = make(NOTIF_ORDER_CONFIRMED, "ord-1", "cust-1", 100, NULL);
    notif_notification x = make(NOTIF_ORDER_CANCELLED, "ord-1", "cust-1", 0, "customer cancelled");
    CU_ASSERT_EQUAL(notif_store_add(s, &c, &added), CH_OK);
    CU_ASSERT_TRUE(added);
    /* the same (order, kind) again, even with another text or time: kept once */
    notif_notification again = c;
    again.sent_at_ms += 5000;
    snprintf(again.message, sizeof again.message, "something else");
    CU_ASSERT_EQUAL(notif_store_add(s, &again, &added), CH_OK);
    CU_ASSERT_FALSE(added);
    CU_ASSERT_EQUAL(notif_store_count(s), 1);
    /* the other kind of the same order is a notification of its own */
    CU_ASSERT_EQUAL(notif_store_add(s, &x, &added), CH_OK);
    CU_ASSERT_TRUE(added);
    CU_ASSERT_EQUAL(notif_store_count(s), 2);

    const notif_notification *f = notif_store_find(s, "ord-1", NOTIF_ORDER_CONFIRMED);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_STRING_EQUAL(f->message, c.message);
    CU_ASSERT_EQUAL(f->sent_at_ms, c.sent_at_ms);
    CU_ASSERT_EQUAL(f->seq, 1);
    CU_ASSERT_PTR_EQUAL(notif_store_at(s, 2), notif_store_find(s, "ord-1", NOTIF_ORDER_CANCELLED));
    CU_ASSERT_PTR_NULL(notif_store_at(s, 0));
    CU_ASSERT_PTR_NULL(notif_store_at(s, 3));
    CU_ASSERT_PTR_NULL(notif_store_find(s, "ord-2", NOTIF_ORDER_CONFIRMED));
    notif_store_destroy(s);
    notif_store_destroy(NULL);
}

/* Pages through customer_id's (or order_id's) notifications; returns how many
 * came back and checks they are in recording order. */
static size_t page_all(const notif_store *s, const char *customer_id, const char *order_id, size_t page,
                       const char **ids, size_t cap)
{
    const notif_notification *out[8];
    char token[NOTIF_TOKEN_MAX] = "";
    size_t seen = 0, n = 0;
    uint64_t last_seq = 0;
    int pages = 0;

    do {
        char next[NOTIF_TOKEN_MAX];
        CU_ASSERT_EQUAL_FATAL(
            notif_store_list(s, customer_id, order_id, token, notif_store_count(s), out, page, &n, next),
            CH_OK);
        for (size_t i = 0; i < n; i++, seen++) {
            CU_ASSERT_TRUE(out[i]->seq > last_seq);
            last_seq = out[i]->seq;
            if (seen < cap)
                ids[seen] = out[i]->id;
        }
        memcpy(token, next, sizeof token);
        pages++;
    } while (token[0] && pages < 100);
    return seen;
}

static void test_notifications_core_store_lists_by_customer_and_order_in_pages(void)
{
    notif_store *s = NULL;
    const char *ids[16];
    char order_id[32];
    bool added;

    CU_ASSERT_EQUAL_FATAL(notif_store_create(&s), CH_OK);
    /* 200 customers interleaved, so the indexes grow a few times */
    for (int i = 0; i < 400; i++) {
        char cust[32];
        snprintf(order_id, sizeof order_id, "ord-%d", i);
        snprintf(cust, sizeof cust, "cust-%d", i % 200);
        notif_notification n =
            make(i % 3 ? NOTIF_ORDER_CONFIRMED : NOTIF_ORDER_CANCELLED, order_id, cust, i, "r");
        CU_ASSERT_EQUAL(notif_store_add(s, &n, &added), CH_OK);
    }
    notif_notification late = make(NOTIF_ORDER_CANCELLED, "ord-1", "cust-1", 0, "refunded");
    CU_ASSERT_EQUAL(notif_store_add(s, &late, &added), CH_OK);

    /* cust-1: ord-1, ord-201, ord-1 cancelled */
    CU_ASSERT_EQUAL(page_all(s, "cust-1", "", 1, ids, 16), 3);
    CU_ASSERT_STRING_EQUAL(ids[0], "ord-1.order_confirmed");
    CU_ASSERT_STRING_EQUAL(ids[1], "ord-201.order_cancelled");
    CU_ASSERT_STRING_EQUAL(ids[2], "ord-1.order_cancelled");
    CU_ASSERT_EQUAL(page_all(s, "cust-1", "", 8, ids, 16), 3);
    CU_ASSERT_EQUAL(page_all(s, "", "ord-1", 1, ids, 16), 2);
    CU_ASSERT_STRING_EQUAL(ids[1], "ord-1.order_cancelled");
    CU_ASSERT_EQUAL(page_all(s, "", "ord-399", 2, ids, 16), 1);
    CU_ASSERT_EQUAL(page_all(s, "nobody", "", 2, ids, 16), 0);
    CU_ASSERT_EQUAL(page_all(s, "", "ord-400", 2, ids, 16), 0);

    /* exact page: no token after the last one */
    const notif_notification *out[2];
    char next[NOTIF_TOKEN_MAX];
    size_t n;
    CU_ASSERT_EQUAL(notif_store_list(s, "cust-2", "", "", notif_store_count(s), out, 2, &n, next), CH_OK);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_STRING_EQUAL(next, "");
    CU_ASSERT_EQUAL(notif_store_list(s, "cust-2", "", "bogus", notif_store_count(s), out, 2, &n, next),
                    CH_INVALID_ARGUMENT);
    notif_store_destroy(s);
}

/* Everything a reader can see of the store, as text: the count, and every
 * page (ids and tokens) of the lists of each key, by customer and by order,
 * at two page sizes; and which (order, kind) are known. */
static void digest(const notif_store *s, const char *const *keys, size_t n_keys, char *buf, size_t cap)
{
    size_t used = (size_t)snprintf(buf, cap, "count=%llu;", (unsigned long long)notif_store_count(s));

    for (size_t k = 0; k < n_keys; k++) {
        for (int by_order = 0; by_order < 2; by_order++) {
            for (size_t page = 1; page <= 3; page += 2) {
                const notif_notification *out[3];
                char token[NOTIF_TOKEN_MAX] = "", next[NOTIF_TOKEN_MAX];
                size_t n = 0;
                int pages = 0;
                do {
                    CU_ASSERT_EQUAL_FATAL(notif_store_list(s, by_order ? "" : keys[k],
                                                           by_order ? keys[k] : "", token,
                                                           notif_store_count(s), out, page, &n, next),
                                          CH_OK);
                    for (size_t i = 0; i < n && used < cap; i++)
                        used += (size_t)snprintf(buf + used, cap - used, "%s@%llu,", out[i]->id,
                                                 (unsigned long long)out[i]->seq);
                    if (used < cap)
                        used += (size_t)snprintf(buf + used, cap - used, "[%s]", next);
                    memcpy(token, next, sizeof token);
                } while (token[0] && ++pages < 100);
            }
            if (used < cap)
                used += (size_t)snprintf(buf + used, cap - used, "|%d:%d%d;", by_order,
                                         notif_store_find(s, keys[k], NOTIF_ORDER_CONFIRMED) != NULL,
                                         notif_store_find(s, keys[k], NOTIF_ORDER_CANCELLED) != NULL);
        }
    }
    CU_ASSERT_TRUE(used < cap);
}

static void test_notifications_core_store_remove_newest_undoes_add(void)
{
    static const char *const keys[] = {"ord-1", "ord-2", "ord-3", "ord-new", "cust-1", "cust-2", "cust-new"};
    enum { N_KEYS = sizeof keys / sizeof keys[0] };
    static char before[8192], after[8192];
    notif_store *s = NULL;
    bool added;

    CU_ASSERT_EQUAL_FATAL(notif_store_create(&s), CH_OK);
    notif_store_remove_newest(s); /* nothing to take: nothing happens */
    CU_ASSERT_EQUAL(notif_store_count(s), 0);
    notif_notification seed[] = {
        make(NOTIF_ORDER_CONFIRMED, "ord-1", "cust-1", 100, NULL),
        make(NOTIF_ORDER_CANCELLED, "ord-2", "cust-2", 0, "out of stock"),
        make(NOTIF_ORDER_CONFIRMED, "ord-3", "cust-1", 300, NULL),
        make(NOTIF_ORDER_CONFIRMED, "ord-2", "cust-2", 200, NULL),
    };
    for (size_t i = 0; i < sizeof seed / sizeof seed[0]; i++)
        CU_ASSERT_EQUAL(notif_store_add(s, &seed[i], &added), CH_OK);
    digest(s, keys, N_KEYS, before, sizeof before);

    /* a new customer and a new order: their keys go again */
    notif_notification fresh = make(NOTIF_ORDER_CONFIRMED, "ord-new", "cust-new", 1, NULL);
    CU_ASSERT_EQUAL(notif_store_add(s, &fresh, &added), CH_OK);
    CU_ASSERT_TRUE(added);
    notif_store_remove_newest(s);
    digest(s, keys, N_KEYS, after, sizeof after);
    CU_ASSERT_STRING_EQUAL(after, before);

    /* a known customer and the other kind of a known order */
    notif_notification other = make(NOTIF_ORDER_CANCELLED, "ord-1", "cust-1", 0, "customer cancelled");
    CU_ASSERT_EQUAL(notif_store_add(s, &other, &added), CH_OK);
    CU_ASSERT_TRUE(added);
    notif_store_remove_newest(s);
    digest(s, keys, N_KEYS, after, sizeof after);
    CU_ASSERT_STRING_EQUAL(after, before);

    /* several, taken back newest first */
    CU_ASSERT_EQUAL(notif_store_add(s, &other, &added), CH_OK);
    CU_ASSERT_EQUAL(notif_store_add(s, &fresh, &added), CH_OK);
    CU_ASSERT_EQUAL(notif_store_count(s), 6);
    notif_store_remove_newest(s);
    notif_store_remove_newest(s);
    digest(s, keys, N_KEYS, after, sizeof after);
    CU_ASSERT_STRING_EQUAL(after, before);

    /* and the store goes on as if they had never been: same seq again */
    CU_ASSERT_EQUAL(notif_store_add(s, &fresh, &added), CH_OK);
    CU_ASSERT_TRUE(added);
    CU_ASSERT_EQUAL(notif_store_find(s, "ord-new", NOTIF_ORDER_CONFIRMED)->seq, 5);

    /* down to empty */
    for (int i = 0; i < 5; i++)
        notif_store_remove_newest(s);
    CU_ASSERT_EQUAL(notif_store_count(s), 0);
    CU_ASSERT_PTR_NULL(notif_store_find(s, "ord-1", NOTIF_ORDER_CONFIRMED));
    digest(s, keys, N_KEYS, after, sizeof after);
    CU_ASSERT_PTR_NOT_NULL(strstr(after, "count=0;"));
    CU_ASSERT_PTR_NULL(strstr(after, "@"));
    notif_store_destroy(s);
}

/* A store of `count` order_confirmed notifications, ord-<i> of
 * customers[i % n_customers]: seq i + 1. */
static notif_store *store_of(int count, const char *const *customers, size_t n_customers)
{
    notif_store *s = NULL;
    bool added;

    if (notif_store_create(&s) != CH_OK)
        return NULL;
    for (int i = 0; i < count; i++) {
        char order_id[16];
        snprintf(order_id, sizeof order_id, "ord-%d", i);
        notif_notification x =
            make(NOTIF_ORDER_CONFIRMED, order_id, customers[(size_t)i % n_customers], i, NULL);
        CU_ASSERT_EQUAL(notif_store_add(s, &x, &added), CH_OK);
    }
    return s;
}

static void test_notifications_core_store_list_stops_at_upto(void)
{
    static const char *const customers[] = {"cust-1"};
    notif_store *s = store_of(4, customers, 1);
    const notif_notification *out[4];
    char next[NOTIF_TOKEN_MAX];
    size_t n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    /* seqs 3 and 4 are not shown: the page ends at 2, with no token */
    CU_ASSERT_EQUAL(notif_store_list(s, "cust-1", "", "", 2, out, 4, &n, next), CH_OK);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_STRING_EQUAL(next, "");
    CU_ASSERT_EQUAL(notif_store_list(s, "cust-1", "", "", 3, out, 2, &n, next), CH_OK);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_STRING_EQUAL(next, "n-3");
    char token[NOTIF_TOKEN_MAX];
    memcpy(token, next, sizeof token);
    CU_ASSERT_EQUAL(notif_store_list(s, "cust-1", "", token, 3, out, 2, &n, next), CH_OK);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_STRING_EQUAL(out[0]->order_id, "ord-2");
    CU_ASSERT_STRING_EQUAL(next, "");
    CU_ASSERT_EQUAL(notif_store_list(s, "", "ord-3", "", 3, out, 4, &n, next), CH_OK);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(notif_store_list(s, "", "ord-3", "", 4, out, 4, &n, next), CH_OK);
    CU_ASSERT_EQUAL(n, 1);
    notif_store_destroy(s);
}

static void test_notifications_core_store_after_is_a_cursor(void)
{
    static const char *const customers[] = {"cust-a", "cust-b"};
    notif_store *s = store_of(6, customers, 2); /* seqs 1..6, customers a b a b a b */
    const notif_notification *out[2];
    size_t n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    /* (customer, after, upto) -> the cursor, how many (at most 2), their seqs */
    static const struct {
        const char *customer;
        uint64_t after, upto, next;
        size_t n;
        uint64_t seqs[2];
    } cases[] = {
        {"", 0, 5, 2, 2, {1, 2}},       /* everyone's, two at a time, up to 5 */
        {NULL, 2, 5, 4, 2, {3, 4}},     /* NULL is everyone too */
        {"", 4, 5, 5, 1, {5}},          /* fewer than asked: the cursor goes to upto */
        {"", 5, 5, 5, 0, {0}},          /* nothing new */
        {"cust-b", 0, 3, 3, 1, {2}},    /* one customer's: the cursor passes the others' too */
        {"cust-b", 3, 6, 6, 2, {4, 6}}, /* a full batch ending at upto */
        {"cust-a", 0, 6, 3, 2, {1, 3}}, /* a full batch: go on after its last */
        {"nobody", 0, 6, 6, 0, {0}},    /* no such customer: past everything */
        {"cust-a", 3, 99, 6, 1, {5}},   /* upto past the store is the store's end */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        uint64_t next = notif_store_after(s, cases[c].customer, cases[c].after, cases[c].upto, out, 2, &n);
        if (next != cases[c].next || n != cases[c].n)
            fprintf(stderr, "case %zu: next %llu, n %zu\n", c, (unsigned long long)next, n);
        CU_ASSERT_EQUAL(next, cases[c].next);
        CU_ASSERT_EQUAL_FATAL(n, cases[c].n);
        for (size_t i = 0; i < n; i++)
            CU_ASSERT_EQUAL(out[i]->seq, cases[c].seqs[i]);
    }
    notif_store_destroy(s);
}

int main(void)
{
    static const cu_test tests[] = {
        {"kind names round trip", test_notifications_core_kind_names_round_trip},
        {"build writes id and text", test_notifications_core_build_writes_id_and_text},
        {"build cuts a long reason at a UTF-8 boundary",
         test_notifications_core_build_cuts_long_reason_at_utf8_boundary},
        {"build names the field", test_notifications_core_build_names_the_field},
        {"validate checks what is read back", test_notifications_core_validate_checks_read_back},
        {"validate_list names the field", test_notifications_core_validate_list_names_the_field},
        {"store keeps one per order and kind", test_notifications_core_store_keeps_one_per_order_and_kind},
        {"store lists by customer and by order in pages",
         test_notifications_core_store_lists_by_customer_and_order_in_pages},
        {"store remove newest undoes an add", test_notifications_core_store_remove_newest_undoes_add},
        {"store list stops at upto", test_notifications_core_store_list_stops_at_upto},
        {"store after is a cursor", test_notifications_core_store_after_is_a_cursor},
        {NULL, NULL},
    };

    return cu_run("notifications_core", NULL, NULL, tests);
}
