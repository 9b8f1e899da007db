/* test_inventory_core.c: validation, decisions, the reducer and the store of
 * the inventory core. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_run.h"
#include "inventory_core.h"
#include "utf8.h"

/* ---- helpers ---- */

static inv_decision *dec; /* one decision buffer for every test (7 KB) */

static void check_conservation(const inv_store *s)
{
    const inv_stock *page[INV_PAGE_MAX];
    char token[INV_TOKEN_MAX + 1] = "", next[INV_TOKEN_MAX + 1];
    size_t n, seen = 0;

    do {
        CU_ASSERT_EQUAL_FATAL(inv_store_list(s, token, page, INV_PAGE_MAX, &n, next), CH_OK);
        for (size_t i = 0; i < n; i++) {
            const inv_stock *st = page[i];
            CU_ASSERT_TRUE(st->available >= 0 && st->reserved >= 0 && st->sold >= 0);
            CU_ASSERT_EQUAL(st->available + st->reserved + st->sold, st->total_in);
            CU_ASSERT_TRUE(st->total_in <= INV_UNITS_MAX);
        }
        seen += n;
        memcpy(token, next, sizeof token);
    } while (token[0]);
    CU_ASSERT_EQUAL(seen, inv_store_sku_count(s));
}

static void set_stock(inv_store *s, const char *sku, int64_t available)
{
    char err[256];
    CU_ASSERT_EQUAL_FATAL(inv_decide_set(s, sku, available, dec, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL_FATAL(inv_apply(s, &dec->entry, NULL), CH_OK);
}

static inv_line line(const char *sku, uint32_t qty)
{
    inv_line l = {.quantity = qty};
    snprintf(l.sku, sizeof l.sku, "%s", sku);
    return l;
}

static inv_reserve_req req(const char *order_id, const inv_line *items, size_t n)
{
    inv_reserve_req r = {
        .order_id = order_id,
        .customer_id = "cust-1",
        .cause_event_id = "0123456789abcdef0123456789abcdef",
        .total_cents = 1234,
        .items = items,
        .n_items = n,
    };
    return r;
}

/* Decides and applies a reservation; returns the outcome. */
static inv_outcome reserve(inv_store *s, const char *order_id, const inv_line *items, size_t n)
{
    inv_reserve_req r = req(order_id, items, n);
    inv_outcome out = INV_NOOP;
    char err[256] = "";
    bool changed = false;

    CU_ASSERT_EQUAL_FATAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_OK);
    if (out == INV_APPEND) {
        CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, &changed), CH_OK);
        CU_ASSERT_TRUE(changed);
    }
    return out;
}

static inv_outcome commit(inv_store *s, const char *order_id)
{
    inv_outcome out = INV_NOOP;
    CU_ASSERT_EQUAL_FATAL(inv_decide_commit(s, order_id, "", dec, &out), CH_OK);
    if (out == INV_APPEND)
        CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
    return out;
}

static inv_outcome release(inv_store *s, const char *order_id, bool cancel, const char *why)
{
    inv_outcome out = INV_NOOP;
    CU_ASSERT_EQUAL_FATAL(inv_decide_release(s, order_id, cancel, why, "", dec, &out), CH_OK);
    if (out == INV_APPEND)
        CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
    return out;
}

static void expect_stock(const inv_store *s, const char *sku, int64_t avail, int64_t reserved, int64_t sold,
                         int64_t total)
{
    const inv_stock *st = inv_store_stock(s, sku);
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT_EQUAL(st->available, avail);
    CU_ASSERT_EQUAL(st->reserved, reserved);
    CU_ASSERT_EQUAL(st->sold, sold);
    CU_ASSERT_EQUAL(st->total_in, total);
}

/* ---- tests ---- */

static void test_inventory_core_validation_names_the_field(void)
{
    inv_store *s = NULL;
    char err[256], longsku[INV_SKU_MAX + 2];

    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    memset(longsku, 's', sizeof longsku - 1);
    longsku[sizeof longsku - 1] = '\0';

    CU_ASSERT_EQUAL(inv_decide_set(s, "", 1, dec, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_STRING_EQUAL(err, "sku: required");
    CU_ASSERT_EQUAL(inv_decide_set(s, NULL, 1, dec, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(inv_decide_set(s, "bad\xc3\x28", 1, dec, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "sku: not valid UTF-8"));
    CU_ASSERT_EQUAL(inv_decide_set(s, "a b", 1, dec, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "sku:", 4), 0);
    CU_ASSERT_EQUAL(inv_decide_set(s, longsku, 1, dec, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "sku:", 4), 0);
    longsku[INV_SKU_MAX] = '\0'; /* exactly 64 bytes is fine */
    CU_ASSERT_EQUAL(inv_decide_set(s, longsku, 1, dec, err, sizeof err), CH_OK);

    CU_ASSERT_EQUAL(inv_decide_set(s, "sku-1", -1, dec, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "available: must be 0..1000000000, got -1"));
    CU_ASSERT_EQUAL(inv_decide_set(s, "sku-1", INV_SET_MAX + 1, dec, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(inv_decide_set(s, "sku-1", INV_SET_MAX, dec, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(inv_decide_set(s, "sku-1", 0, dec, err, sizeof err), CH_OK);

    CU_ASSERT_EQUAL(inv_decide_adjust(s, "sku-1", 0, dec, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "delta:", 6), 0);
    CU_ASSERT_EQUAL(inv_decide_adjust(s, "sku-1", INV_DELTA_MAX + 1, dec, err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(inv_decide_adjust(s, "sku-1", -INV_DELTA_MAX - 1, dec, err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(inv_decide_adjust(s, "", 5, dec, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_STRING_EQUAL(err, "sku: required");

    CU_ASSERT_EQUAL(inv_validate_order_id("", err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_STRING_EQUAL(err, "order_id: required");
    CU_ASSERT_EQUAL(inv_validate_order_id("ord.1", err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(inv_validate_order_id("ord-0123456789012345678901234567890123456", err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(inv_validate_order_id("ord-1", err, sizeof err), CH_OK);

    /* a reservation request no order could make: every field named */
    inv_line ok = line("sku-1", 1), zero = line("sku-1", 0), big = line("sku-1", INV_QTY_MAX + 1);
    inv_line nosku = line("", 1);
    inv_reserve_req r;
    inv_outcome out;
    r = req("", &ok, 1);
    CU_ASSERT_EQUAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "order_id:", 9), 0);
    r = req("ord-1", &ok, 0);
    CU_ASSERT_EQUAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "items:", 6), 0);
    r = req("ord-1", &zero, 1);
    CU_ASSERT_EQUAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "items[0].quantity:", 18), 0);
    r = req("ord-1", &big, 1);
    CU_ASSERT_EQUAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_INVALID_ARGUMENT);
    r = req("ord-1", &nosku, 1);
    CU_ASSERT_EQUAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "items[0].sku:", 13), 0);
    r = req("ord-1", &ok, 1);
    r.customer_id = "";
    CU_ASSERT_EQUAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "customer_id:", 12), 0);
    r = req("ord-1", &ok, 1);
    r.total_cents = -1;
    CU_ASSERT_EQUAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "total_cents:", 12), 0);
    CU_ASSERT_EQUAL(inv_store_reservation_count(s), 0);
    CU_ASSERT_EQUAL(inv_store_sku_count(s), 0); /* deciding changes nothing */
    inv_store_destroy(s);
}

static void test_inventory_core_set_and_adjust_keep_total_in(void)
{
    inv_store *s = NULL;
    char err[256];
    inv_line two = line("sku-a", 2);

    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    CU_ASSERT_PTR_NULL(inv_store_stock(s, "sku-a"));
    set_stock(s, "sku-a", 10);
    CU_ASSERT_EQUAL(dec->entry.delta, 10);
    expect_stock(s, "sku-a", 10, 0, 0, 10);

    /* SetStock to X records X - available and keeps reserved and sold */
    CU_ASSERT_EQUAL(reserve(s, "ord-1", &two, 1), INV_APPEND);
    CU_ASSERT_EQUAL(reserve(s, "ord-2", &two, 1), INV_APPEND);
    CU_ASSERT_EQUAL(commit(s, "ord-2"), INV_APPEND);
    expect_stock(s, "sku-a", 6, 2, 2, 10);
    set_stock(s, "sku-a", 3);
    CU_ASSERT_EQUAL(dec->entry.delta, -3);
    expect_stock(s, "sku-a", 3, 2, 2, 7);
    set_stock(s, "sku-a", 3); /* same value: nothing changes */
    CU_ASSERT_EQUAL(dec->entry.delta, 0);
    expect_stock(s, "sku-a", 3, 2, 2, 7);

    /* AdjustStock moves available and total_in together ... */
    CU_ASSERT_EQUAL_FATAL(inv_decide_adjust(s, "sku-a", 5, dec, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
    expect_stock(s, "sku-a", 8, 2, 2, 12);
    CU_ASSERT_EQUAL_FATAL(inv_decide_adjust(s, "sku-a", -8, dec, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
    expect_stock(s, "sku-a", 0, 2, 2, 4);
    /* ... and refuses to make available negative (reserved units are not available) */
    CU_ASSERT_EQUAL(inv_decide_adjust(s, "sku-a", -1, dec, err, sizeof err), CH_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(strncmp(err, "delta:", 6), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "0 units available"));
    expect_stock(s, "sku-a", 0, 2, 2, 4);
    /* the reducer refuses the same (an entry that cannot happen here) */
    inv_entry neg = {.kind = INV_ENTRY_STOCK_ADJUSTED, .sku = "sku-a", .delta = -1};
    bool changed = true;
    CU_ASSERT_EQUAL(inv_apply(s, &neg, &changed), CH_FAILED_PRECONDITION);
    CU_ASSERT_FALSE(changed);
    expect_stock(s, "sku-a", 0, 2, 2, 4);

    /* an unknown SKU: a positive delta creates it, a negative one is refused */
    CU_ASSERT_EQUAL(inv_decide_adjust(s, "sku-new", -1, dec, err, sizeof err), CH_FAILED_PRECONDITION);
    CU_ASSERT_PTR_NULL(inv_store_stock(s, "sku-new"));
    CU_ASSERT_EQUAL_FATAL(inv_decide_adjust(s, "sku-new", 7, dec, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
    expect_stock(s, "sku-new", 7, 0, 0, 7);

    /* total_in is capped, so int64 never overflows */
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL_FATAL(inv_decide_adjust(s, "sku-big", INV_DELTA_MAX, dec, err, sizeof err), CH_OK);
        CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
    }
    /* ... up to the cap, then refused: by the decision and by the reducer */
    inv_entry big = {.kind = INV_ENTRY_STOCK_ADJUSTED, .sku = "sku-big", .delta = INV_DELTA_MAX};
    for (int64_t i = 3; i < INV_UNITS_MAX / INV_DELTA_MAX; i++)
        inv_apply(s, &big, NULL);
    expect_stock(s, "sku-big", INV_UNITS_MAX, 0, 0, INV_UNITS_MAX);
    CU_ASSERT_EQUAL(inv_decide_adjust(s, "sku-big", 1, dec, err, sizeof err), CH_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(strncmp(err, "delta:", 6), 0);
    CU_ASSERT_EQUAL(inv_apply(s, &big, NULL), CH_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(inv_decide_set(s, "sku-big", INV_SET_MAX, dec, err, sizeof err), CH_OK); /* lowers it */
    inv_entry huge = {.kind = INV_ENTRY_STOCK_SET, .sku = "sku-big", .available = 0};
    CU_ASSERT_EQUAL(inv_apply(s, &huge, NULL), CH_OK);
    expect_stock(s, "sku-big", 0, 0, 0, 0);
    check_conservation(s);
    inv_store_destroy(s);
}

static void test_inventory_core_reserve_is_all_or_nothing_per_sku_sum(void)
{
    inv_store *s = NULL;
    inv_reserve_req r;
    inv_outcome out;
    char err[256];

    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    set_stock(s, "sku-a", 3);
    set_stock(s, "sku-b", 10);

    /* sku-a twice: 2 + 2 = 4 > 3, although each item alone would fit */
    inv_line items[3] = {line("sku-b", 1), line("sku-a", 2), line("sku-a", 2)};
    r = req("ord-short", items, 3);
    CU_ASSERT_EQUAL_FATAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(out, INV_APPEND);
    CU_ASSERT_EQUAL(dec->entry.kind, INV_ENTRY_REJECTED);
    CU_ASSERT_STRING_EQUAL(dec->entry.sku, "sku-a");
    CU_ASSERT_EQUAL(dec->entry.requested, 4);
    CU_ASSERT_EQUAL(dec->entry.available, 3);
    CU_ASSERT_STRING_EQUAL(dec->entry.reason, "out of stock: sku-a needs 4, has 3");
    CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
    expect_stock(s, "sku-a", 3, 0, 0, 3); /* nothing held, sku-b included */
    expect_stock(s, "sku-b", 10, 0, 0, 10);
    const inv_reservation *res = inv_store_reservation(s, "ord-short");
    CU_ASSERT_PTR_NOT_NULL_FATAL(res);
    CU_ASSERT_EQUAL(res->status, INV_RES_REJECTED);
    CU_ASSERT_STRING_EQUAL(res->short_sku, "sku-a");
    CU_ASSERT_EQUAL(res->requested, 4);
    CU_ASSERT_EQUAL(res->available, 3);
    CU_ASSERT_STRING_EQUAL(res->reason, "out of stock: sku-a needs 4, has 3");
    CU_ASSERT_EQUAL(res->n_lines, 0);

    /* an unknown SKU is short with 0 available, and is not created */
    inv_line ghost = line("sku-ghost", 1);
    r = req("ord-ghost", &ghost, 1);
    CU_ASSERT_EQUAL_FATAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(dec->entry.kind, INV_ENTRY_REJECTED);
    CU_ASSERT_EQUAL(dec->entry.available, 0);
    CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
    CU_ASSERT_PTR_NULL(inv_store_stock(s, "sku-ghost"));

    /* exactly enough: summed lines in order of first appearance */
    inv_line fit[3] = {line("sku-a", 1), line("sku-b", 4), line("sku-a", 2)};
    r = req("ord-fit", fit, 3);
    CU_ASSERT_EQUAL_FATAL(inv_decide_reserve(s, &r, dec, &out, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(out, INV_APPEND);
    CU_ASSERT_EQUAL_FATAL(dec->entry.kind, INV_ENTRY_RESERVED);
    CU_ASSERT_EQUAL_FATAL(dec->entry.n_lines, 2);
    CU_ASSERT_STRING_EQUAL(dec->entry.lines[0].sku, "sku-a");
    CU_ASSERT_EQUAL(dec->entry.lines[0].quantity, 3);
    CU_ASSERT_STRING_EQUAL(dec->entry.lines[1].sku, "sku-b");
    CU_ASSERT_EQUAL(dec->entry.lines[1].quantity, 4);
    CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
    expect_stock(s, "sku-a", 0, 3, 0, 3);
    expect_stock(s, "sku-b", 6, 4, 0, 10);
    res = inv_store_reservation(s, "ord-fit");
    CU_ASSERT_PTR_NOT_NULL_FATAL(res);
    CU_ASSERT_EQUAL(res->status, INV_RES_RESERVED);
    CU_ASSERT_EQUAL(res->units, 7);
    CU_ASSERT_EQUAL(res->total_cents, 1234);
    CU_ASSERT_STRING_EQUAL(res->customer_id, "cust-1");
    CU_ASSERT_PTR_NULL(res->reason);
    check_conservation(s);
    inv_store_destroy(s);
}

static void test_inventory_core_one_reservation_per_order(void)
{
    inv_store *s = NULL;
    inv_line one = line("sku-a", 1), many = line("sku-a", 5);
    bool changed = true;

    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    set_stock(s, "sku-a", 5);
    CU_ASSERT_EQUAL(reserve(s, "ord-1", &one, 1), INV_APPEND);
    inv_decision *first = malloc(sizeof *first);
    CU_ASSERT_PTR_NOT_NULL_FATAL(first);
    memcpy(first, dec, sizeof *first);
    first->entry.lines = first->lines;

    /* a redelivered order.created: decided before, nothing new */
    CU_ASSERT_EQUAL(reserve(s, "ord-1", &one, 1), INV_DECIDED);
    /* even with other items (a second order.created for the same id) */
    CU_ASSERT_EQUAL(reserve(s, "ord-1", &many, 1), INV_DECIDED);
    /* the same entry folded twice (a replay) changes nothing */
    CU_ASSERT_EQUAL(inv_apply(s, &first->entry, &changed), CH_OK);
    CU_ASSERT_FALSE(changed);
    expect_stock(s, "sku-a", 4, 1, 0, 5);
    CU_ASSERT_EQUAL(inv_store_reservation_count(s), 1);

    /* a rejected order stays rejected, even once stock arrives */
    CU_ASSERT_EQUAL(reserve(s, "ord-2", &many, 1), INV_APPEND);
    CU_ASSERT_EQUAL(inv_store_reservation(s, "ord-2")->status, INV_RES_REJECTED);
    set_stock(s, "sku-a", 100);
    CU_ASSERT_EQUAL(reserve(s, "ord-2", &many, 1), INV_DECIDED);
    CU_ASSERT_EQUAL(inv_store_reservation(s, "ord-2")->status, INV_RES_REJECTED);
    expect_stock(s, "sku-a", 100, 1, 0, 101);
    free(first);
    inv_store_destroy(s);
}

static void test_inventory_core_commit_release_restock(void)
{
    inv_store *s = NULL;
    inv_line two = line("sku-a", 2);
    inv_outcome out;
    bool changed;

    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    set_stock(s, "sku-a", 10);

    /* happy path: reserved -> sold, once */
    CU_ASSERT_EQUAL(reserve(s, "ord-ok", &two, 1), INV_APPEND);
    CU_ASSERT_EQUAL(commit(s, "ord-ok"), INV_APPEND);
    inv_entry again = dec->entry;
    expect_stock(s, "sku-a", 8, 0, 2, 10);
    CU_ASSERT_EQUAL(commit(s, "ord-ok"), INV_NOOP);
    CU_ASSERT_EQUAL(inv_apply(s, &again, &changed), CH_OK);
    CU_ASSERT_FALSE(changed);
    expect_stock(s, "sku-a", 8, 0, 2, 10);
    CU_ASSERT_EQUAL(inv_store_reservation(s, "ord-ok")->status, INV_RES_COMMITTED);
    /* payment.failed after a commit contradicts it: nothing to do */
    CU_ASSERT_EQUAL(release(s, "ord-ok", false, "declined"), INV_NOOP);
    expect_stock(s, "sku-a", 8, 0, 2, 10);

    /* payment failed: reserved -> available, and the decision is kept */
    CU_ASSERT_EQUAL(reserve(s, "ord-declined", &two, 1), INV_APPEND);
    CU_ASSERT_EQUAL(release(s, "ord-declined", false, "balance 5 < 1234"), INV_APPEND);
    CU_ASSERT_FALSE(dec->entry.restocked);
    expect_stock(s, "sku-a", 8, 0, 2, 10);
    const inv_reservation *res = inv_store_reservation(s, "ord-declined");
    CU_ASSERT_EQUAL(res->status, INV_RES_RELEASED);
    CU_ASSERT_FALSE(res->restocked);
    CU_ASSERT_FALSE(res->was_committed);
    CU_ASSERT_STRING_EQUAL(res->reason, "payment failed: balance 5 < 1234");
    CU_ASSERT_EQUAL(release(s, "ord-declined", false, "again"), INV_DECIDED);
    CU_ASSERT_EQUAL(commit(s, "ord-declined"), INV_NOOP);
    expect_stock(s, "sku-a", 8, 0, 2, 10);

    /* customer cancel after the commit: sold -> available */
    CU_ASSERT_EQUAL(release(s, "ord-ok", true, "changed my mind"), INV_APPEND);
    CU_ASSERT_TRUE(dec->entry.restocked);
    again = dec->entry;
    expect_stock(s, "sku-a", 10, 0, 0, 10);
    res = inv_store_reservation(s, "ord-ok");
    CU_ASSERT_EQUAL(res->status, INV_RES_RELEASED);
    CU_ASSERT_TRUE(res->restocked);
    CU_ASSERT_TRUE(res->was_committed);
    CU_ASSERT_STRING_EQUAL(res->reason, "cancelled by the customer: changed my mind");
    CU_ASSERT_EQUAL(release(s, "ord-ok", true, NULL), INV_DECIDED);
    CU_ASSERT_EQUAL(inv_apply(s, &again, &changed), CH_OK);
    CU_ASSERT_FALSE(changed);
    expect_stock(s, "sku-a", 10, 0, 0, 10);

    /* cancel seen before the commit: reserved -> available; the late commit is a no-op */
    CU_ASSERT_EQUAL(reserve(s, "ord-race", &two, 1), INV_APPEND);
    CU_ASSERT_EQUAL(release(s, "ord-race", true, ""), INV_APPEND);
    CU_ASSERT_STRING_EQUAL(inv_store_reservation(s, "ord-race")->reason, "cancelled by the customer");
    expect_stock(s, "sku-a", 10, 0, 0, 10);
    CU_ASSERT_EQUAL(commit(s, "ord-race"), INV_NOOP);
    expect_stock(s, "sku-a", 10, 0, 0, 10);

    /* a rejected reservation has nothing to release or commit */
    inv_line lots = line("sku-a", 11);
    CU_ASSERT_EQUAL(reserve(s, "ord-rej", &lots, 1), INV_APPEND);
    CU_ASSERT_EQUAL(release(s, "ord-rej", true, NULL), INV_NOOP);
    CU_ASSERT_EQUAL(release(s, "ord-rej", false, NULL), INV_NOOP);
    CU_ASSERT_EQUAL(commit(s, "ord-rej"), INV_NOOP);

    /* unknown orders */
    CU_ASSERT_EQUAL(inv_decide_commit(s, "ord-none", "", dec, &out), CH_NOT_FOUND);
    CU_ASSERT_EQUAL(inv_decide_release(s, "ord-none", true, NULL, "", dec, &out), CH_NOT_FOUND);
    check_conservation(s);
    inv_store_destroy(s);
}

static void test_inventory_core_reducer_refuses_impossible_entries(void)
{
    inv_store *s = NULL;
    bool changed = true;

    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    set_stock(s, "sku-a", 2);
    set_stock(s, "sku-b", 2);

    /* more than is available, on any line: nothing moves on any line */
    inv_line lines[2] = {line("sku-a", 1), line("sku-b", 3)};
    inv_entry e = {.kind = INV_ENTRY_RESERVED,
                   .order_id = "ord-1",
                   .customer_id = "c",
                   .total_cents = 1,
                   .lines = lines,
                   .n_lines = 2};
    CU_ASSERT_EQUAL(inv_apply(s, &e, &changed), CH_FAILED_PRECONDITION);
    CU_ASSERT_FALSE(changed);
    CU_ASSERT_PTR_NULL(inv_store_reservation(s, "ord-1"));
    expect_stock(s, "sku-a", 2, 0, 0, 2);
    expect_stock(s, "sku-b", 2, 0, 0, 2);

    /* lines must be summed per SKU already */
    inv_line dup[2] = {line("sku-a", 1), line("sku-a", 1)};
    e.lines = dup;
    CU_ASSERT_EQUAL(inv_apply(s, &e, NULL), CH_INVALID_ARGUMENT);
    /* malformed strings */
    e.lines = lines;
    e.n_lines = 1;
    e.order_id = "bad id";
    CU_ASSERT_EQUAL(inv_apply(s, &e, NULL), CH_INVALID_ARGUMENT);
    e.order_id = "ord-1";
    e.customer_id = NULL;
    CU_ASSERT_EQUAL(inv_apply(s, &e, NULL), CH_INVALID_ARGUMENT);
    e.customer_id = "c";
    e.kind = INV_ENTRY_RELEASED;
    e.reason = "bad \xff";
    CU_ASSERT_EQUAL(inv_apply(s, &e, NULL), CH_INVALID_ARGUMENT);
    e.reason = NULL;

    /* steps of orders never reserved */
    e.kind = INV_ENTRY_COMMITTED;
    CU_ASSERT_EQUAL(inv_apply(s, &e, NULL), CH_NOT_FOUND);
    e.kind = INV_ENTRY_RELEASED;
    CU_ASSERT_EQUAL(inv_apply(s, &e, NULL), CH_NOT_FOUND);

    /* steps from the wrong status */
    e.kind = INV_ENTRY_RESERVED;
    CU_ASSERT_EQUAL(inv_apply(s, &e, &changed), CH_OK);
    CU_ASSERT_TRUE(changed);
    e.kind = INV_ENTRY_RELEASED;
    e.restocked = false;
    CU_ASSERT_EQUAL(inv_apply(s, &e, NULL), CH_OK);
    e.kind = INV_ENTRY_COMMITTED;
    CU_ASSERT_EQUAL(inv_apply(s, &e, &changed), CH_FAILED_PRECONDITION); /* released: cannot sell */
    CU_ASSERT_FALSE(changed);
    e.kind = 99;
    CU_ASSERT_EQUAL(inv_apply(s, &e, NULL), CH_INVALID_ARGUMENT);
    inv_entry bad_set = {.kind = INV_ENTRY_STOCK_SET, .sku = "sku-a", .available = -1};
    CU_ASSERT_EQUAL(inv_apply(s, &bad_set, NULL), CH_INVALID_ARGUMENT);
    expect_stock(s, "sku-a", 2, 0, 0, 2);
    expect_stock(s, "sku-b", 2, 0, 0, 2);
    check_conservation(s);
    inv_store_destroy(s);
}

static void test_inventory_core_list_pages_in_byte_order(void)
{
    inv_store *s = NULL;
    const inv_stock *page[3];
    char token[INV_TOKEN_MAX + 1], next[INV_TOKEN_MAX + 1];
    const char *skus[] = {"b", "a", "Z", "\xc3\xa9t\xc3\xa9", "a-1", "c"};
    /* byte order: "Z" (0x5a) < "a" < "a-1" < "b" < "c" < "d" < "\xc3..." */
    const char *want[] = {"Z", "a", "a-1", "b", "c", "d", "\xc3\xa9t\xc3\xa9"};
    size_t n, seen = 0;

    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    for (size_t i = 0; i < 6; i++)
        set_stock(s, skus[i], (int64_t)i);
    token[0] = '\0';
    do {
        CU_ASSERT_EQUAL_FATAL(inv_store_list(s, token, page, 2, &n, next), CH_OK);
        for (size_t i = 0; i < n && seen < 7; i++, seen++)
            CU_ASSERT_STRING_EQUAL(page[i]->sku, want[seen]);
        if (seen == 2)
            set_stock(s, "A", 1); /* sorts before the token: not listed */
        if (seen == 4)
            set_stock(s, "d", 1); /* sorts after: listed */
        memcpy(token, next, sizeof token);
    } while (token[0] && seen < 20);
    CU_ASSERT_EQUAL(seen, 7);
    CU_ASSERT_EQUAL(inv_store_sku_count(s), 8);

    /* exactly a full last page: no token */
    CU_ASSERT_EQUAL(inv_store_list(s, "", page, 3, &n, next), CH_OK);
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT_TRUE(next[0] != '\0');

    /* tokens this store did not make */
    const char *bad[] = {"x", "k", "k6", "k6g", "kZZ", "k00", "p1", "K61"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CU_ASSERT_EQUAL(inv_store_list(s, bad[i], page, 3, &n, next), CH_INVALID_ARGUMENT);
    char longtok[INV_TOKEN_MAX + 3];
    longtok[0] = 'k';
    memset(longtok + 1, '6', INV_TOKEN_MAX + 1);
    longtok[INV_TOKEN_MAX + 2] = '\0';
    CU_ASSERT_EQUAL(inv_store_list(s, longtok, page, 3, &n, next), CH_INVALID_ARGUMENT);
    /* a token past the end: an empty last page */
    CU_ASSERT_EQUAL(inv_store_list(s, "kff", page, 3, &n, next), CH_OK);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_STRING_EQUAL(next, "");
    inv_store_destroy(s);
}

/* An entry recorded with its own copy of every string, to fold again later. */
typedef struct recorded {
    inv_decision d;
    char order_id[INV_ORDER_ID_MAX + 1];
    char sku[INV_SKU_MAX + 1];
    char key[INV_KEY_MAX + 1];
    inv_undo u; /* what applying it said it takes to undo it */
} recorded;

static void record(recorded *r, const inv_decision *d)
{
    memcpy(&r->d, d, sizeof *d);
    inv_entry *e = &r->d.entry;
    if (e->order_id) {
        snprintf(r->order_id, sizeof r->order_id, "%s", e->order_id);
        e->order_id = r->order_id;
    }
    if (e->sku) {
        snprintf(r->sku, sizeof r->sku, "%s", e->sku);
        e->sku = r->sku;
    }
    if (e->idempotency_key) {
        snprintf(r->key, sizeof r->key, "%s", e->idempotency_key);
        e->idempotency_key = r->key;
    }
    if (e->lines)
        e->lines = r->d.lines;
    if (e->reason)
        e->reason = r->d.reason;
    e->customer_id = e->customer_id ? "cust-1" : NULL;
    e->cause_event_id = NULL;
}

static void test_inventory_core_random_sagas_conserve_and_refold(void)
{
    enum { STEPS = 600 };
    inv_store *s = NULL, *again = NULL;
    recorded *log = calloc(STEPS, sizeof *log);
    const char *skus[] = {"sku-0", "sku-1", "sku-2", "sku-3"};
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    size_t n_log = 0;
    char err[256], order_id[32];

    CU_ASSERT_PTR_NOT_NULL_FATAL(log);
    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    CU_ASSERT_EQUAL_FATAL(inv_store_create(&again), CH_OK);
    for (int step = 0; step < STEPS; step++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        unsigned r = (unsigned)(rng >> 33);
        int order = (int)(r % 40);
        inv_outcome out = INV_NOOP;
        ch_status st = CH_OK;
        snprintf(order_id, sizeof order_id, "ord-%d", order);
        switch ((r >> 8) % 6) {
        case 0: {
            int64_t delta = (int64_t)((r >> 14) % 8) - 3;
            st = inv_decide_adjust(s, skus[(r >> 12) % 4], delta >= 0 ? delta + 1 : delta, dec, err,
                                   sizeof err);
            out = st == CH_OK ? INV_APPEND : INV_NOOP;
            break;
        }
        case 1:
            st = inv_decide_set(s, skus[(r >> 12) % 4], (r >> 14) % 12, dec, err, sizeof err);
            out = st == CH_OK ? INV_APPEND : INV_NOOP;
            break;
        case 2: {
            inv_line items[3] = {line(skus[(r >> 12) % 4], 1 + (r >> 14) % 3), line(skus[(r >> 16) % 4], 1),
                                 line(skus[(r >> 12) % 4], 1)};
            inv_reserve_req q = req(order_id, items, 1 + (r >> 18) % 3);
            st = inv_decide_reserve(s, &q, dec, &out, err, sizeof err);
            break;
        }
        case 3: st = inv_decide_commit(s, order_id, "", dec, &out); break;
        case 4: st = inv_decide_release(s, order_id, false, "declined", "", dec, &out); break;
        default: st = inv_decide_release(s, order_id, true, NULL, "", dec, &out); break;
        }
        CU_ASSERT_TRUE(st == CH_OK || st == CH_NOT_FOUND || st == CH_FAILED_PRECONDITION);
        if (st == CH_OK && out == INV_APPEND) {
            /* every decision taken on a state folds into that state */
            CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
            record(&log[n_log++], dec);
        }
        check_conservation(s);
    }
    CU_ASSERT_TRUE(n_log > STEPS / 3);

    /* the fold is deterministic: the same entries give the same state (what
     * a restart does: replay the stream into an empty store) */
    for (size_t i = 0; i < n_log; i++)
        CU_ASSERT_EQUAL(inv_apply(again, &log[i].d.entry, NULL), CH_OK);
    for (size_t k = 0; k < 4; k++) {
        const inv_stock *a = inv_store_stock(s, skus[k]), *b = inv_store_stock(again, skus[k]);
        CU_ASSERT_EQUAL_FATAL(a == NULL, b == NULL);
        if (a)
            CU_ASSERT_EQUAL(memcmp(a, b, sizeof *a), 0);
    }
    CU_ASSERT_EQUAL(inv_store_reservation_count(s), inv_store_reservation_count(again));
    for (int o = 0; o < 40; o++) {
        snprintf(order_id, sizeof order_id, "ord-%d", o);
        const inv_reservation *a = inv_store_reservation(s, order_id),
                              *b = inv_store_reservation(again, order_id);
        CU_ASSERT_EQUAL_FATAL(a == NULL, b == NULL);
        if (a) {
            CU_ASSERT_EQUAL(a->status, b->status);
            CU_ASSERT_EQUAL(a->units, b->units);
        }
    }
    free(log);
    inv_store_destroy(s);
    inv_store_destroy(again);
}

/* Decides an AdjustStock with a key and applies it when it is new; returns
 * the outcome (INV_NOOP when the decision failed). */
static inv_outcome adjust_key(inv_store *s, const char *sku, int64_t delta, const char *key)
{
    inv_outcome out = INV_NOOP;
    char err[256] = "";
    bool changed = false;

    if (inv_decide_adjust_key(s, sku, delta, key, dec, &out, err, sizeof err) != CH_OK)
        return INV_NOOP;
    if (out == INV_APPEND) {
        CU_ASSERT_STRING_EQUAL(dec->entry.idempotency_key, key);
        CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, &changed), CH_OK);
        CU_ASSERT_TRUE(changed);
    }
    return out;
}

static void test_inventory_core_adjust_key_adjusts_once(void)
{
    inv_store *s = NULL, *again = NULL;
    char err[256] = "", long_key[INV_KEY_MAX + 2];
    inv_outcome out = INV_NOOP;
    bool changed = true;

    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    set_stock(s, "sku-a", 10);
    set_stock(s, "sku-b", 10);

    /* the same key twice adjusts once; the retry answers with the same stock */
    CU_ASSERT_EQUAL(adjust_key(s, "sku-a", 5, "k-1"), INV_APPEND);
    expect_stock(s, "sku-a", 15, 0, 0, 15);
    CU_ASSERT_TRUE(inv_store_adjust_key_known(s, "sku-a", "k-1"));
    CU_ASSERT_EQUAL(adjust_key(s, "sku-a", 5, "k-1"), INV_DECIDED);
    expect_stock(s, "sku-a", 15, 0, 0, 15);
    /* ... even when the retry could no longer be applied as new */
    CU_ASSERT_EQUAL(adjust_key(s, "sku-a", -20, "k-neg"), INV_NOOP); /* refused: short */
    CU_ASSERT_EQUAL(adjust_key(s, "sku-a", -15, "k-neg"), INV_APPEND);
    CU_ASSERT_EQUAL(adjust_key(s, "sku-a", -15, "k-neg"), INV_DECIDED);
    expect_stock(s, "sku-a", 0, 0, 0, 0);
    /* the reducer, handed the same entry again, changes nothing */
    inv_entry dup = {.kind = INV_ENTRY_STOCK_ADJUSTED, .sku = "sku-a", .delta = 5, .idempotency_key = "k-1"};
    CU_ASSERT_EQUAL(inv_apply(s, &dup, &changed), CH_OK);
    CU_ASSERT_FALSE(changed);
    expect_stock(s, "sku-a", 0, 0, 0, 0);

    /* another key adjusts again, and so does no key at all, every time */
    CU_ASSERT_EQUAL(adjust_key(s, "sku-a", 5, "k-2"), INV_APPEND);
    expect_stock(s, "sku-a", 5, 0, 0, 5);
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL_FATAL(inv_decide_adjust_key(s, "sku-a", 1, "", dec, &out, err, sizeof err), CH_OK);
        CU_ASSERT_EQUAL(out, INV_APPEND);
        CU_ASSERT_EQUAL(inv_apply(s, &dec->entry, NULL), CH_OK);
    }
    expect_stock(s, "sku-a", 7, 0, 0, 7);
    CU_ASSERT_FALSE(inv_store_adjust_key_known(s, "sku-a", ""));

    /* a key is per SKU */
    CU_ASSERT_FALSE(inv_store_adjust_key_known(s, "sku-b", "k-1"));
    CU_ASSERT_EQUAL(adjust_key(s, "sku-b", 3, "k-1"), INV_APPEND);
    expect_stock(s, "sku-b", 13, 0, 0, 13);
    CU_ASSERT_EQUAL(adjust_key(s, "sku-b", 3, "k-1"), INV_DECIDED);
    expect_stock(s, "sku-b", 13, 0, 0, 13);
    expect_stock(s, "sku-a", 7, 0, 0, 7);

    /* bad keys are refused, naming the field */
    memset(long_key, 'k', INV_KEY_MAX + 1);
    long_key[INV_KEY_MAX + 1] = '\0';
    CU_ASSERT_EQUAL(inv_decide_adjust_key(s, "sku-a", 1, long_key, dec, &out, err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "idempotency_key:", 16), 0);
    long_key[INV_KEY_MAX] = '\0'; /* exactly the maximum is fine */
    CU_ASSERT_EQUAL(inv_validate_idempotency_key(long_key, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(inv_validate_idempotency_key("a\tb", err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(inv_validate_idempotency_key("\xc3(", err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(inv_validate_idempotency_key(NULL, err, sizeof err), CH_OK);
    inv_entry bad = {.kind = INV_ENTRY_STOCK_ADJUSTED, .sku = "sku-a", .delta = 1, .idempotency_key = "x\ny"};
    CU_ASSERT_EQUAL(inv_apply(s, &bad, NULL), CH_INVALID_ARGUMENT);
    expect_stock(s, "sku-a", 7, 0, 0, 7);

    /* replaying the entries into a fresh store remembers the keys */
    CU_ASSERT_EQUAL_FATAL(inv_store_create(&again), CH_OK);
    inv_entry replay[] = {
        {.kind = INV_ENTRY_STOCK_SET, .sku = "sku-a", .available = 10},
        {.kind = INV_ENTRY_STOCK_ADJUSTED, .sku = "sku-a", .delta = 5, .idempotency_key = "k-1"},
        {.kind = INV_ENTRY_STOCK_ADJUSTED, .sku = "sku-b", .delta = 2, .idempotency_key = "k-1"},
    };
    for (size_t i = 0; i < sizeof replay / sizeof replay[0]; i++)
        CU_ASSERT_EQUAL(inv_apply(again, &replay[i], NULL), CH_OK);
    expect_stock(again, "sku-a", 15, 0, 0, 15);
    CU_ASSERT_TRUE(inv_store_adjust_key_known(again, "sku-a", "k-1"));
    CU_ASSERT_TRUE(inv_store_adjust_key_known(again, "sku-b", "k-1"));
    CU_ASSERT_FALSE(inv_store_adjust_key_known(again, "sku-a", "k-2"));
    CU_ASSERT_EQUAL(adjust_key(again, "sku-a", 5, "k-1"), INV_DECIDED);
    expect_stock(again, "sku-a", 15, 0, 0, 15);
    /* many keys: the table grows and keeps them all */
    for (int i = 0; i < 300; i++) {
        char key[16];
        snprintf(key, sizeof key, "many-%d", i);
        CU_ASSERT_EQUAL(adjust_key(again, "sku-c", 1, key), INV_APPEND);
    }
    CU_ASSERT_TRUE(inv_store_adjust_key_known(again, "sku-c", "many-0"));
    CU_ASSERT_TRUE(inv_store_adjust_key_known(again, "sku-c", "many-299"));
    expect_stock(again, "sku-c", 300, 0, 0, 300);

    inv_store_destroy(s);
    inv_store_destroy(again);
}

static void test_inventory_core_text_copy_cuts_at_a_character(void)
{
    char out[6];
    inv_text_copy(out, sizeof out, "abcd\xc3\xa9z"); /* the é would straddle the cut */
    CU_ASSERT_STRING_EQUAL(out, "abcd");
    CU_ASSERT_TRUE(utf8_valid(out, strlen(out)));
    inv_text_copy(out, sizeof out, "ab\xe2\x82\xac!"); /* the euro sign fits whole */
    CU_ASSERT_STRING_EQUAL(out, "ab\xe2\x82\xac");
    inv_text_copy(out, sizeof out, NULL);
    CU_ASSERT_STRING_EQUAL(out, "");
    CU_ASSERT_STRING_EQUAL(inv_res_status_name(INV_RES_REJECTED), "REJECTED");
}

/* ---- inv_revert ---- */

enum { SNAP_SKUS = 6, SNAP_ORDERS = 48, SNAP_LINES = 4 };
/* sku-e and sku-f are stocked by no history: entries create them */
static const char *const snap_skus[SNAP_SKUS] = {"sku-a", "sku-b", "sku-c", "sku-d", "sku-e", "sku-f"};

/* What can be observed of one reservation. */
typedef struct res_view {
    bool present;
    inv_res_status status;
    char customer_id[INV_CUSTOMER_MAX + 1];
    int64_t total_cents, available;
    uint32_t n_lines, units, requested;
    inv_line lines[SNAP_LINES];
    bool was_committed, restocked, has_reason, has_short_sku;
    char reason[INV_REASON_MAX + 1];
    char short_sku[INV_SKU_MAX + 1];
} res_view;

/* What can be observed of a store: the stock of snap_skus, the reservations
 * of ord-0..ord-47, the counts, and which of the keys k-0..k-7 are
 * remembered for which of snap_skus. */
typedef struct inv_snap {
    bool has_stock[SNAP_SKUS];
    int64_t stock[SNAP_SKUS][4]; /* available, reserved, sold, total_in */
    bool keys[SNAP_SKUS][8];
    size_t n_skus, n_res;
    res_view res[SNAP_ORDERS];
} inv_snap;

static void snap_take(const inv_store *s, inv_snap *v)
{
    char id[32];

    memset(v, 0, sizeof *v);
    for (int k = 0; k < SNAP_SKUS; k++) {
        const inv_stock *st = inv_store_stock(s, snap_skus[k]);
        v->has_stock[k] = st != NULL;
        if (st) {
            v->stock[k][0] = st->available;
            v->stock[k][1] = st->reserved;
            v->stock[k][2] = st->sold;
            v->stock[k][3] = st->total_in;
        }
        for (int j = 0; j < 8; j++) {
            snprintf(id, sizeof id, "k-%d", j);
            v->keys[k][j] = inv_store_adjust_key_known(s, snap_skus[k], id);
        }
    }
    v->n_skus = inv_store_sku_count(s);
    v->n_res = inv_store_reservation_count(s);
    for (int o = 0; o < SNAP_ORDERS; o++) {
        snprintf(id, sizeof id, "ord-%d", o);
        const inv_reservation *r = inv_store_reservation(s, id);
        res_view *w = &v->res[o];
        if (!r)
            continue;
        CU_ASSERT_STRING_EQUAL(r->order_id, id);
        CU_ASSERT_TRUE_FATAL(r->n_lines <= SNAP_LINES);
        w->present = true;
        w->status = r->status;
        snprintf(w->customer_id, sizeof w->customer_id, "%s", r->customer_id);
        w->total_cents = r->total_cents;
        w->available = r->available;
        w->n_lines = r->n_lines;
        w->units = r->units;
        w->requested = r->requested;
        for (uint32_t k = 0; k < r->n_lines; k++) {
            snprintf(w->lines[k].sku, sizeof w->lines[k].sku, "%s", r->lines[k].sku);
            w->lines[k].quantity = r->lines[k].quantity;
        }
        w->was_committed = r->was_committed;
        w->restocked = r->restocked;
        w->has_reason = r->reason != NULL;
        snprintf(w->reason, sizeof w->reason, "%s", r->reason ? r->reason : "");
        w->has_short_sku = r->short_sku != NULL;
        snprintf(w->short_sku, sizeof w->short_sku, "%s", r->short_sku ? r->short_sku : "");
    }
}

/* Every field of a snapshot is set explicitly over a zeroed struct, so
 * comparing bytes compares what was observed. */
static bool snap_same(const inv_snap *a, const inv_snap *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

/* Decides with dec and keeps the entry in *r (its own copy), expecting an
 * entry to append. */
static void keep_reserve(const inv_store *s, recorded *r, const char *order_id, const inv_line *items,
                         size_t n)
{
    inv_reserve_req q = req(order_id, items, n);
    inv_outcome out = INV_NOOP;
    char err[256];
    CU_ASSERT_EQUAL_FATAL(inv_decide_reserve(s, &q, dec, &out, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL_FATAL(out, INV_APPEND);
    record(r, dec);
}

static void keep_commit(const inv_store *s, recorded *r, const char *order_id)
{
    inv_outcome out = INV_NOOP;
    CU_ASSERT_EQUAL_FATAL(inv_decide_commit(s, order_id, "", dec, &out), CH_OK);
    CU_ASSERT_EQUAL_FATAL(out, INV_APPEND);
    record(r, dec);
}

static void keep_release(const inv_store *s, recorded *r, const char *order_id, bool cancel, const char *why)
{
    inv_outcome out = INV_NOOP;
    CU_ASSERT_EQUAL_FATAL(inv_decide_release(s, order_id, cancel, why, "", dec, &out), CH_OK);
    CU_ASSERT_EQUAL_FATAL(out, INV_APPEND);
    record(r, dec);
}

static void keep_set(const inv_store *s, recorded *r, const char *sku, int64_t available)
{
    char err[256];
    CU_ASSERT_EQUAL_FATAL(inv_decide_set(s, sku, available, dec, err, sizeof err), CH_OK);
    record(r, dec);
}

/* key NULL: none */
static void keep_adjust(const inv_store *s, recorded *r, const char *sku, int64_t delta, const char *key)
{
    inv_outcome out = INV_NOOP;
    char err[256];
    CU_ASSERT_EQUAL_FATAL(inv_decide_adjust_key(s, sku, delta, key, dec, &out, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL_FATAL(out, INV_APPEND);
    record(r, dec);
}

/* Applies r's entry, which must change s, and keeps its undo record in r. */
static void apply_keep(inv_store *s, recorded *r)
{
    bool changed = false;
    CU_ASSERT_EQUAL_FATAL(inv_apply_undoable(s, &r->d.entry, &changed, &r->u), CH_OK);
    CU_ASSERT_TRUE(changed);
    CU_ASSERT_EQUAL(r->u.kind, r->d.entry.kind);
}

static void apply_changes(inv_store *s, const inv_entry *e)
{
    bool changed = false;
    CU_ASSERT_EQUAL_FATAL(inv_apply(s, e, &changed), CH_OK);
    CU_ASSERT_TRUE(changed);
}

/* Applies r's entry, checks that it changed what can be seen, reverts it and
 * checks that the store is as before. */
static void apply_then_revert(inv_store *s, recorded *r)
{
    inv_snap before, after, back;

    snap_take(s, &before);
    apply_keep(s, r);
    snap_take(s, &after);
    CU_ASSERT_FALSE(snap_same(&before, &after));
    CU_ASSERT_EQUAL(inv_revert(s, &r->u), CH_OK);
    snap_take(s, &back);
    CU_ASSERT_TRUE(snap_same(&before, &back));
    check_conservation(s);
    /* and the entry applies again as it did the first time */
    apply_keep(s, r);
    snap_take(s, &back);
    CU_ASSERT_TRUE(snap_same(&after, &back));
    CU_ASSERT_EQUAL(inv_revert(s, &r->u), CH_OK);
}

/* An entry of any kind, copied into *r to apply and revert by hand. */
static void keep_entry(recorded *r, const inv_entry *e)
{
    inv_decision d;
    memset(&d, 0, sizeof d);
    d.entry = *e;
    if (e->lines) {
        memcpy(d.lines, e->lines, e->n_lines * sizeof *e->lines);
        d.entry.lines = d.lines;
    }
    if (e->reason) {
        snprintf(d.reason, sizeof d.reason, "%s", e->reason);
        d.entry.reason = d.reason;
    }
    record(r, &d);
}

/* Stock of four SKUs and orders in every status: ord-0 RESERVED, ord-1
 * COMMITTED, ord-2 RELEASED (payment failed), ord-3 RELEASED after a commit,
 * ord-4 REJECTED. */
static void revert_history(inv_store *s)
{
    inv_line a2b1[2] = {line("sku-a", 2), line("sku-b", 1)}, a1 = line("sku-a", 1), c1 = line("sku-c", 1),
             c9 = line("sku-c", 9);

    set_stock(s, "sku-a", 10);
    set_stock(s, "sku-b", 5);
    set_stock(s, "sku-c", 3);
    set_stock(s, "sku-d", 0);
    CU_ASSERT_EQUAL(reserve(s, "ord-0", a2b1, 2), INV_APPEND);
    CU_ASSERT_EQUAL(reserve(s, "ord-1", &a1, 1), INV_APPEND);
    CU_ASSERT_EQUAL(commit(s, "ord-1"), INV_APPEND);
    CU_ASSERT_EQUAL(reserve(s, "ord-2", &c1, 1), INV_APPEND);
    CU_ASSERT_EQUAL(release(s, "ord-2", false, "declined"), INV_APPEND);
    CU_ASSERT_EQUAL(reserve(s, "ord-3", a2b1, 2), INV_APPEND);
    CU_ASSERT_EQUAL(commit(s, "ord-3"), INV_APPEND);
    CU_ASSERT_EQUAL(release(s, "ord-3", true, "changed my mind"), INV_APPEND);
    CU_ASSERT_EQUAL(reserve(s, "ord-4", &c9, 1), INV_APPEND);
    CU_ASSERT_EQUAL(inv_store_reservation(s, "ord-4")->status, INV_RES_REJECTED);
}

static void test_inventory_core_revert_each_kind_restores_the_state(void)
{
    inv_store *s = NULL;
    recorded *r = calloc(1, sizeof *r);
    inv_line a3b2c1[3] = {line("sku-a", 3), line("sku-b", 2), line("sku-c", 1)}, c50 = line("sku-c", 50);

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    revert_history(s);

    keep_reserve(s, r, "ord-10", a3b2c1, 3); /* RESERVED over three SKUs */
    CU_ASSERT_EQUAL(r->d.entry.kind, INV_ENTRY_RESERVED);
    CU_ASSERT_EQUAL(r->d.entry.units, 6);
    apply_then_revert(s, r);
    CU_ASSERT_PTR_NULL(inv_store_reservation(s, "ord-10"));

    keep_reserve(s, r, "ord-11", &c50, 1); /* REJECTED */
    CU_ASSERT_EQUAL(r->d.entry.kind, INV_ENTRY_REJECTED);
    apply_then_revert(s, r);
    CU_ASSERT_PTR_NULL(inv_store_reservation(s, "ord-11"));

    keep_commit(s, r, "ord-0"); /* COMMITTED */
    CU_ASSERT_EQUAL(r->d.entry.units, 3);
    apply_then_revert(s, r);
    CU_ASSERT_EQUAL(inv_store_reservation(s, "ord-0")->status, INV_RES_RESERVED);

    keep_release(s, r, "ord-0", false, "balance 0 < 1234"); /* RELEASED from reserved */
    CU_ASSERT_EQUAL(r->d.entry.units, 3);
    apply_then_revert(s, r);
    keep_release(s, r, "ord-0", true, NULL); /* RELEASED from reserved by a cancel */
    apply_then_revert(s, r);
    keep_release(s, r, "ord-1", true, "too late"); /* RELEASED from sold */
    apply_then_revert(s, r);
    const inv_reservation *res = inv_store_reservation(s, "ord-1");
    CU_ASSERT_EQUAL(res->status, INV_RES_COMMITTED);
    CU_ASSERT_FALSE(res->was_committed);
    CU_ASSERT_FALSE(res->restocked);
    CU_ASSERT_PTR_NULL(res->reason);

    /* a release without a reason, as an event may carry it */
    inv_entry bare = {.kind = INV_ENTRY_RELEASED, .order_id = "ord-1", .restocked = true, .reason = ""};
    keep_entry(r, &bare);
    apply_then_revert(s, r);

    /* a RESERVED entry carries no reason (a stray one is not read), so the
     * reservation has none to restore when its release is undone */
    inv_line b1 = line("sku-b", 1);
    inv_entry stray = {.kind = INV_ENTRY_RESERVED,
                       .order_id = "ord-12",
                       .customer_id = "cust-1",
                       .total_cents = 5,
                       .lines = &b1,
                       .n_lines = 1,
                       .reason = "not a reservation's"};
    recorded *made = calloc(1, sizeof *made);
    CU_ASSERT_PTR_NOT_NULL_FATAL(made);
    keep_entry(made, &stray);
    apply_then_revert(s, made);
    apply_keep(s, made);
    CU_ASSERT_PTR_NULL(inv_store_reservation(s, "ord-12")->reason);
    keep_release(s, r, "ord-12", false, "declined");
    apply_then_revert(s, r);
    CU_ASSERT_PTR_NULL(inv_store_reservation(s, "ord-12")->reason);
    CU_ASSERT_EQUAL(inv_revert(s, &made->u), CH_OK);

    /* stock entries: SetStock up and down, of a new SKU (to 0 as well) */
    keep_set(s, r, "sku-a", 12);
    apply_then_revert(s, r);
    keep_set(s, r, "sku-a", 1);
    apply_then_revert(s, r);
    keep_set(s, r, "sku-e", 4);
    apply_then_revert(s, r);
    CU_ASSERT_PTR_NULL(inv_store_stock(s, "sku-e")); /* the SKU it created is gone again */
    keep_set(s, r, "sku-e", 0);
    CU_ASSERT_EQUAL(r->d.entry.delta, 0);
    apply_then_revert(s, r); /* it changed the store all the same: the SKU is there */
    CU_ASSERT_PTR_NULL(inv_store_stock(s, "sku-e"));
    /* AdjustStock: with and without a key, of a new SKU, and down */
    keep_adjust(s, r, "sku-b", 3, NULL);
    apply_then_revert(s, r);
    keep_adjust(s, r, "sku-b", -2, "k-1");
    apply_then_revert(s, r);
    CU_ASSERT_FALSE(inv_store_adjust_key_known(s, "sku-b", "k-1")); /* the key is forgotten */
    keep_adjust(s, r, "sku-f", 7, "k-2");
    apply_then_revert(s, r);
    CU_ASSERT_PTR_NULL(inv_store_stock(s, "sku-f"));
    CU_ASSERT_FALSE(inv_store_adjust_key_known(s, "sku-f", "k-2"));
    /* an entry that changes nothing has nothing to undo */
    inv_undo none;
    bool changed = true;
    keep_set(s, r, "sku-c", 3);
    CU_ASSERT_EQUAL(inv_apply_undoable(s, &r->d.entry, &changed, &none), CH_OK);
    CU_ASSERT_FALSE(changed);
    CU_ASSERT_EQUAL(none.kind, 0);
    CU_ASSERT_EQUAL(inv_revert(s, &none), CH_INVALID_ARGUMENT);

    expect_stock(s, "sku-a", 7, 2, 1, 10);
    expect_stock(s, "sku-b", 4, 1, 0, 5);
    expect_stock(s, "sku-c", 3, 0, 0, 3);
    CU_ASSERT_EQUAL(inv_store_sku_count(s), 4);
    CU_ASSERT_EQUAL(inv_store_reservation_count(s), 5);
    free(made);
    free(r);
    inv_store_destroy(s);
}

static void test_inventory_core_revert_batch_newest_first(void)
{
    enum { MAX = 24 };
    inv_store *s = NULL;
    recorded *b = calloc(MAX, sizeof *b);
    inv_snap *before = malloc(sizeof *before), *after = malloc(sizeof *after), *now = malloc(sizeof *now);
    inv_line a1 = line("sku-a", 1), a2b1[2] = {line("sku-a", 2), line("sku-b", 1)}, a3 = line("sku-a", 3),
             c4 = line("sku-c", 4), b2c3[2] = {line("sku-b", 2), line("sku-c", 3)}, e2 = line("sku-e", 2),
             e1f1[2] = {line("sku-e", 1), line("sku-f", 1)};
    size_t n = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_FATAL(before && after && now);
    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    revert_history(s);
    snap_take(s, before);

    /* One batch, each decision taken on the state the previous ones left,
     * and applied at once, as the service's writer does. */
#define STEP(call)                                                                                           \
    do {                                                                                                     \
        call;                                                                                                \
        apply_keep(s, &b[n++]);                                                                              \
    } while (0)
    STEP(keep_reserve(s, &b[n], "ord-20", &a1, 1));
    STEP(keep_reserve(s, &b[n], "ord-21", a2b1, 2)); /* the same SKU again */
    STEP(keep_commit(s, &b[n], "ord-0"));            /* an earlier order */
    STEP(keep_reserve(s, &b[n], "ord-22", &a3, 1));
    STEP(keep_release(s, &b[n], "ord-1", true, "cancel")); /* an earlier commit, back from sold */
    STEP(keep_commit(s, &b[n], "ord-20"));
    STEP(keep_reserve(s, &b[n], "ord-23", &c4, 1)); /* rejected: sku-c has 3 */
    STEP(keep_set(s, &b[n], "sku-c", 4));           /* now it would not be */
    STEP(keep_release(s, &b[n], "ord-21", false, "declined"));
    STEP(keep_release(s, &b[n], "ord-20", true, NULL)); /* committed in this batch, then cancelled */
    STEP(keep_reserve(s, &b[n], "ord-24", b2c3, 2));
    STEP(keep_commit(s, &b[n], "ord-22"));
    STEP(keep_reserve(s, &b[n], "ord-25", a2b1, 2)); /* uses units ord-21 gave back */
    STEP(keep_set(s, &b[n], "sku-e", 2));            /* a new SKU ... */
    STEP(keep_reserve(s, &b[n], "ord-26", &e2, 1));  /* ... held at once ... */
    STEP(keep_adjust(s, &b[n], "sku-e", 5, "k-3"));  /* ... and topped up, with a key */
    STEP(keep_adjust(s, &b[n], "sku-f", 1, NULL));   /* another new SKU, by an adjustment */
    STEP(keep_reserve(s, &b[n], "ord-27", e1f1, 2));
    STEP(keep_commit(s, &b[n], "ord-27"));
    STEP(keep_adjust(s, &b[n], "sku-a", -1, "k-4"));
    STEP(keep_set(s, &b[n], "sku-e", 0)); /* what is held stays held */
#undef STEP
    CU_ASSERT_EQUAL(b[6].d.entry.kind, INV_ENTRY_REJECTED);
    CU_ASSERT_EQUAL(b[14].d.entry.kind, INV_ENTRY_RESERVED);
    CU_ASSERT_TRUE(b[13].u.created);
    CU_ASSERT_TRUE(b[16].u.created);
    check_conservation(s);
    snap_take(s, after);
    CU_ASSERT_FALSE(snap_same(before, after));

    for (size_t i = n; i-- > 0;)
        CU_ASSERT_EQUAL(inv_revert(s, &b[i].u), CH_OK);
    snap_take(s, now);
    CU_ASSERT_TRUE(snap_same(before, now));
    CU_ASSERT_EQUAL(inv_store_reservation_count(s), 5);
    CU_ASSERT_EQUAL(inv_store_sku_count(s), 4);
    expect_stock(s, "sku-a", 7, 2, 1, 10);
    check_conservation(s);

    /* the same entries again give the same state as the first time */
    for (size_t i = 0; i < n; i++)
        apply_keep(s, &b[i]);
    snap_take(s, now);
    CU_ASSERT_TRUE(snap_same(after, now));

    free(before);
    free(after);
    free(now);
    free(b);
    inv_store_destroy(s);
}

/* Random batches of random decisions over a random history: each batch is
 * applied one decision at a time, then undone newest first, and the store
 * must be exactly as before the batch; then it is applied again (the
 * writer's next attempt) and must be exactly as the first time. */
static void test_inventory_core_random_batches_revert_exactly(void)
{
    enum { ROUNDS = 60, BATCH_MAX = 12 };
    inv_store *s = NULL;
    recorded *b = calloc(BATCH_MAX, sizeof *b);
    inv_snap *before = malloc(sizeof *before), *after = malloc(sizeof *after), *now = malloc(sizeof *now);
    uint64_t rng = 0x853c49e6748fea9bULL;
    char err[256], order_id[32], key[16];
    size_t undone = 0;

    CU_ASSERT_FATAL(b && before && after && now);
    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    for (int round = 0; round < ROUNDS; round++) {
        size_t n = 0;
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        size_t want = 1 + (size_t)(rng >> 33) % BATCH_MAX;
        bool keep = round % 3 == 0; /* every third batch stays: the history grows */
        snap_take(s, before);
        for (int tries = 0; n < want && tries < 100; tries++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            unsigned r = (unsigned)(rng >> 33);
            const char *sku = snap_skus[(r >> 12) % SNAP_SKUS];
            inv_outcome out = INV_NOOP;
            ch_status st = CH_OK;
            snprintf(order_id, sizeof order_id, "ord-%u", r % SNAP_ORDERS);
            snprintf(key, sizeof key, "k-%u", (r >> 20) % 8);
            switch ((r >> 8) % 6) {
            case 0: {
                int64_t delta = (int64_t)((r >> 16) % 9) - 3;
                st = inv_decide_adjust_key(s, sku, delta >= 0 ? delta + 1 : delta, (r >> 24) % 2 ? key : NULL,
                                           dec, &out, err, sizeof err);
                break;
            }
            case 1:
                st = inv_decide_set(s, sku, (r >> 16) % 12, dec, err, sizeof err);
                out = INV_APPEND;
                break;
            case 2: {
                inv_line items[2] = {line(sku, 1 + (r >> 16) % 3), line(snap_skus[(r >> 18) % SNAP_SKUS], 1)};
                inv_reserve_req q = req(order_id, items, 1 + (r >> 20) % 2);
                q.n_items = items[0].sku[4] == items[1].sku[4] ? 1 : q.n_items; /* at most SNAP_LINES lines */
                st = inv_decide_reserve(s, &q, dec, &out, err, sizeof err);
                break;
            }
            case 3: st = inv_decide_commit(s, order_id, "", dec, &out); break;
            case 4: st = inv_decide_release(s, order_id, false, "declined", "", dec, &out); break;
            default: st = inv_decide_release(s, order_id, true, "cancel", "", dec, &out); break;
            }
            if (st != CH_OK || out != INV_APPEND)
                continue;
            bool changed = false;
            record(&b[n], dec);
            CU_ASSERT_EQUAL_FATAL(inv_apply_undoable(s, &b[n].d.entry, &changed, &b[n].u), CH_OK);
            if (changed) /* a SetStock to the level there changes nothing: nothing to undo */
                n++;
            check_conservation(s);
        }
        snap_take(s, after);
        for (size_t i = n; i-- > 0;)
            CU_ASSERT_EQUAL(inv_revert(s, &b[i].u), CH_OK);
        undone += n;
        snap_take(s, now);
        CU_ASSERT_TRUE(snap_same(before, now));
        if (!keep)
            continue;
        for (size_t i = 0; i < n; i++) {
            bool changed = false;
            CU_ASSERT_EQUAL(inv_apply_undoable(s, &b[i].d.entry, &changed, &b[i].u), CH_OK);
            CU_ASSERT_TRUE(changed);
        }
        snap_take(s, now);
        CU_ASSERT_TRUE(snap_same(after, now));
    }
    CU_ASSERT_TRUE(undone > ROUNDS * 2);
    CU_ASSERT_TRUE(inv_store_reservation_count(s) > 0);
    free(before);
    free(after);
    free(now);
    free(b);
    inv_store_destroy(s);
}

/* Many reservations (the table grows and probe runs form), then a random
 * subset and the newest ones reverted, newest first: the others are all
 * still found and the reverted ones are gone. */
static void test_inventory_core_revert_deletes_under_collisions(void)
{
    enum { N = 700, NEWEST = 150 };
    inv_store *s = NULL;
    recorded *b = calloc(N, sizeof *b);
    bool *gone = calloc(N, sizeof *gone);
    inv_line one = line("sku-a", 1);
    uint64_t rng = 0x2545f4914f6cdd1dULL;
    char id[32];
    size_t kept = N;

    CU_ASSERT_FATAL(b && gone);
    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    set_stock(s, "sku-a", 10000);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "o%d", i);
        keep_reserve(s, &b[i], id, &one, 1);
        apply_keep(s, &b[i]);
    }
    CU_ASSERT_EQUAL_FATAL(inv_store_reservation_count(s), N);
    /* reservations of different orders are independent, so any subset may be
     * reverted as long as it goes newest first */
    for (int i = N; i-- > 0;) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        if (i < N - NEWEST && (rng >> 33) % 3 != 0)
            continue;
        CU_ASSERT_EQUAL(inv_revert(s, &b[i].u), CH_OK);
        gone[i] = true;
        kept--;
    }
    CU_ASSERT_TRUE(kept > N / 3 && kept < N - NEWEST);
    CU_ASSERT_EQUAL(inv_store_reservation_count(s), kept);
    expect_stock(s, "sku-a", 10000 - (int64_t)kept, (int64_t)kept, 0, 10000);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "o%d", i);
        const inv_reservation *r = inv_store_reservation(s, id);
        if (gone[i]) {
            CU_ASSERT_PTR_NULL(r);
        } else {
            CU_ASSERT_PTR_NOT_NULL(r);
            if (r)
                CU_ASSERT_STRING_EQUAL(r->order_id, id);
        }
    }
    /* the freed slots take the reverted orders again */
    for (int i = 0; i < N; i++)
        if (gone[i])
            apply_changes(s, &b[i].d.entry);
    CU_ASSERT_EQUAL(inv_store_reservation_count(s), N);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "o%d", i);
        CU_ASSERT_PTR_NOT_NULL(inv_store_reservation(s, id));
    }
    expect_stock(s, "sku-a", 10000 - N, N, 0, 10000);
    free(gone);
    free(b);
    inv_store_destroy(s);
}

/* An undo record made by hand. */
static inv_undo undo_of(inv_entry_kind kind, const char *id)
{
    inv_undo u;
    memset(&u, 0, sizeof u);
    u.kind = kind;
    if (kind == INV_ENTRY_STOCK_SET || kind == INV_ENTRY_STOCK_ADJUSTED)
        snprintf(u.sku, sizeof u.sku, "%s", id);
    else
        snprintf(u.order_id, sizeof u.order_id, "%s", id);
    return u;
}

static void test_inventory_core_revert_refuses_what_was_not_applied(void)
{
    inv_store *s = NULL;
    recorded *r = calloc(1, sizeof *r);
    inv_snap *before = malloc(sizeof *before), *now = malloc(sizeof *now);
    inv_undo u;

    CU_ASSERT_FATAL(r && before && now);
    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    revert_history(s);
    snap_take(s, before);

    /* nothing to undo, or an unknown kind, or a record that is not one */
    u = undo_of(0, "ord-0");
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_INVALID_ARGUMENT);
    u = undo_of(99, "ord-0");
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_INVALID_ARGUMENT);
    u = undo_of(INV_ENTRY_COMMITTED, "ord-1");
    memset(u.order_id, 'x', sizeof u.order_id); /* no NUL */
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_INVALID_ARGUMENT);
    u = undo_of(INV_ENTRY_STOCK_SET, "sku-a");
    snprintf(u.key, sizeof u.key, "k-1"); /* a SetStock remembers no key */
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_INVALID_ARGUMENT);

    /* ord-0 is RESERVED: it was never committed nor released */
    u = undo_of(INV_ENTRY_COMMITTED, "ord-0");
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_FAILED_PRECONDITION);
    u.kind = INV_ENTRY_RELEASED;
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_FAILED_PRECONDITION);
    u.kind = INV_ENTRY_REJECTED;
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_FAILED_PRECONDITION);
    /* a RESERVED entry is undone only while its reservation is RESERVED */
    u = undo_of(INV_ENTRY_RESERVED, "ord-1");
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_FAILED_PRECONDITION); /* committed since */
    /* ord-3 was released by a cancel */
    u = undo_of(INV_ENTRY_RELEASED, "ord-3");
    u.restocked = false;
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_FAILED_PRECONDITION);
    /* unknown orders and SKUs */
    u = undo_of(INV_ENTRY_RELEASED, "ord-none");
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_NOT_FOUND);
    u = undo_of(INV_ENTRY_RESERVED, "ord-none");
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_NOT_FOUND);
    u = undo_of(INV_ENTRY_STOCK_ADJUSTED, "sku-none");
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_NOT_FOUND);
    /* stock that is not as the entry left it */
    u = undo_of(INV_ENTRY_STOCK_SET, "sku-a"); /* sku-a: 7 available of 10 put in */
    u.delta = 8;
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_FAILED_PRECONDITION); /* available would go negative */
    u.delta = -INV_UNITS_MAX;
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_FAILED_PRECONDITION); /* total_in would pass the cap */
    u.delta = INV_UNITS_MAX + 1;
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_INVALID_ARGUMENT);
    u.delta = 7;
    u.created = true; /* sku-a holds reserved and sold units: not a SKU this entry added */
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_FAILED_PRECONDITION);
    u = undo_of(INV_ENTRY_STOCK_ADJUSTED, "sku-b");
    u.delta = 1;
    snprintf(u.key, sizeof u.key, "k-never");
    CU_ASSERT_EQUAL(inv_revert(s, &u), CH_FAILED_PRECONDITION); /* a key never remembered */
    snap_take(s, now);
    CU_ASSERT_TRUE(snap_same(before, now));

    /* counters that would go negative: all or nothing over the lines */
    inv_line a1b2[2] = {line("sku-a", 1), line("sku-b", 2)};
    keep_reserve(s, r, "ord-30", a1b2, 2);
    apply_keep(s, r);
    keep_release(s, r, "ord-30", false, "declined");
    apply_keep(s, r);
    set_stock(s, "sku-b", 1); /* sku-b: only 1 available now, the revert needs 2 back */
    snap_take(s, before);
    CU_ASSERT_EQUAL(inv_revert(s, &r->u), CH_FAILED_PRECONDITION);
    snap_take(s, now);
    CU_ASSERT_TRUE(snap_same(before, now));
    CU_ASSERT_EQUAL(inv_store_reservation(s, "ord-30")->status, INV_RES_RELEASED);
    check_conservation(s);

    free(before);
    free(now);
    free(r);
    inv_store_destroy(s);
}

int main(void)
{
    static const cu_test tests[] = {
        {"validation names the field", test_inventory_core_validation_names_the_field},
        {"set and adjust keep total_in", test_inventory_core_set_and_adjust_keep_total_in},
        {"reserve is all or nothing per SKU sum", test_inventory_core_reserve_is_all_or_nothing_per_sku_sum},
        {"one reservation per order", test_inventory_core_one_reservation_per_order},
        {"commit, release, restock", test_inventory_core_commit_release_restock},
        {"reducer refuses impossible entries", test_inventory_core_reducer_refuses_impossible_entries},
        {"list pages in byte order", test_inventory_core_list_pages_in_byte_order},
        {"random sagas conserve and refold", test_inventory_core_random_sagas_conserve_and_refold},
        {"adjust key adjusts once", test_inventory_core_adjust_key_adjusts_once},
        {"text copy cuts at a character", test_inventory_core_text_copy_cuts_at_a_character},
        {"revert each kind restores the state", test_inventory_core_revert_each_kind_restores_the_state},
        {"revert a batch newest first", test_inventory_core_revert_batch_newest_first},
        {"random batches revert exactly", test_inventory_core_random_batches_revert_exactly},
        {"revert deletes under collisions", test_inventory_core_revert_deletes_under_collisions},
        {"revert refuses what was not applied", test_inventory_core_revert_refuses_what_was_not_applied},
        {NULL, NULL},
    };
    int rc;

    dec = malloc(sizeof *dec);
    if (!dec)
        return 1;
    rc = cu_run("inventory_core", NULL, NULL, tests);
    free(dec);
    return rc;
}
