/* test_inventory_codec.c: inventory's events <-> the core's entries, through
 * the wire (encode, decode) and back into a store. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_run.h"
#include "inventory_codec.h"

#define TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define CAUSE       "0123456789abcdef0123456789abcdef"

static choreo_events_v1_Envelope *env, *back; /* big: kept off the stack */
static inv_decision *dec, *got;
static uint8_t wire[EVENT_MAX_BYTES];

/* e -> event -> bytes -> event -> got->entry; the event is left in *back. */
static void round_trip(const inv_entry *e)
{
    size_t len = 0;
    char reason[256] = "";

    CU_ASSERT_EQUAL_FATAL(inventory_event_of(e, CAUSE, TRACEPARENT, env), CH_OK);
    CU_ASSERT_EQUAL_FATAL(event_encode(env, wire, sizeof wire, &len, reason, sizeof reason), CH_OK);
    CU_ASSERT_EQUAL_FATAL(event_decode(wire, len, back, reason, sizeof reason), CH_OK);
    CU_ASSERT_STRING_EQUAL(back->producer, INVENTORY_CODEC_PRODUCER);
    CU_ASSERT_STRING_EQUAL(back->causation_id, CAUSE);
    CU_ASSERT_STRING_EQUAL(back->traceparent, TRACEPARENT);
    CU_ASSERT_EQUAL_FATAL(inventory_entry_of(back, got), CH_OK);
    CU_ASSERT_EQUAL(got->entry.kind, e->kind);
}

static void expect_subject(const char *want)
{
    char subject[EVENT_SUBJECT_MAX];
    event_type t;
    CU_ASSERT_EQUAL_FATAL(event_type_of(back, &t), CH_OK);
    CU_ASSERT_EQUAL_FATAL(event_subject(subject, sizeof subject, t, event_key(back)), CH_OK);
    CU_ASSERT_STRING_EQUAL(subject, want);
}

static const char *str(const char *s)
{
    return s ? s : "";
}

static void test_inventory_codec_stock_entries_are_keyed_by_sku(void)
{
    inv_entry set = {.kind = INV_ENTRY_STOCK_SET, .sku = "sku-a", .available = 12, .delta = -3};
    round_trip(&set);
    CU_ASSERT_STRING_EQUAL(back->type, "inventory.stock_set");
    CU_ASSERT_STRING_EQUAL(back->order_id, ""); /* no order: the SKU is the key */
    expect_subject("events.inventory.stock_set.sku-a");
    CU_ASSERT_STRING_EQUAL(got->entry.sku, "sku-a");
    CU_ASSERT_EQUAL(got->entry.available, 12);
    CU_ASSERT_EQUAL(got->entry.delta, -3);
    CU_ASSERT_PTR_NULL(got->entry.order_id);

    inv_entry adj = {.kind = INV_ENTRY_STOCK_ADJUSTED, .sku = "sku-b", .delta = -7, .idempotency_key = "k-1"};
    round_trip(&adj);
    CU_ASSERT_STRING_EQUAL(back->type, "inventory.stock_adjusted");
    expect_subject("events.inventory.stock_adjusted.sku-b");
    CU_ASSERT_STRING_EQUAL(got->entry.sku, "sku-b");
    CU_ASSERT_EQUAL(got->entry.delta, -7);
    CU_ASSERT_STRING_EQUAL(str(got->entry.idempotency_key), "k-1");
    adj.idempotency_key = NULL; /* none */
    round_trip(&adj);
    CU_ASSERT_STRING_EQUAL(str(got->entry.idempotency_key), "");
}

static void test_inventory_codec_reservation_entries_round_trip(void)
{
    enum { N = INV_LINES_MAX };
    inv_line *lines = calloc(N, sizeof *lines);
    uint32_t units = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(lines);
    for (int i = 0; i < N; i++) {
        snprintf(lines[i].sku, sizeof lines[i].sku, "s%063d", i); /* 64 bytes: the longest */
        lines[i].quantity = (uint32_t)(i + 1) * 100;
        units += lines[i].quantity;
    }
    inv_entry made = {.kind = INV_ENTRY_RESERVED,
                      .order_id = "ord-1",
                      .cause_event_id = CAUSE,
                      .customer_id = "cust-1",
                      .total_cents = 123456,
                      .lines = lines,
                      .n_lines = N};
    round_trip(&made); /* the biggest event inventory writes still encodes */
    CU_ASSERT_STRING_EQUAL(back->type, "inventory.reserved");
    expect_subject("events.inventory.reserved.ord-1");
    CU_ASSERT_EQUAL(back->payload.inventory_reserved.units, units); /* the sum of the lines */
    CU_ASSERT_STRING_EQUAL(got->entry.order_id, "ord-1");
    CU_ASSERT_STRING_EQUAL(got->entry.cause_event_id, CAUSE);
    CU_ASSERT_STRING_EQUAL(got->entry.customer_id, "cust-1");
    CU_ASSERT_EQUAL(got->entry.total_cents, 123456);
    CU_ASSERT_EQUAL(got->entry.units, units);
    CU_ASSERT_EQUAL_FATAL(got->entry.n_lines, N);
    CU_ASSERT_PTR_EQUAL(got->entry.lines, got->lines);
    CU_ASSERT_EQUAL(memcmp(got->lines, lines, N * sizeof *lines), 0);

    inv_entry rejected = {.kind = INV_ENTRY_REJECTED,
                          .order_id = "ord-2",
                          .sku = "sku-r",
                          .requested = 4,
                          .available = 3,
                          .reason = "out of stock: sku-r needs 4, has 3"};
    round_trip(&rejected);
    CU_ASSERT_STRING_EQUAL(back->type, "inventory.failed");
    expect_subject("events.inventory.failed.ord-2");
    CU_ASSERT_STRING_EQUAL(got->entry.order_id, "ord-2");
    CU_ASSERT_STRING_EQUAL(got->entry.sku, "sku-r");
    CU_ASSERT_EQUAL(got->entry.requested, 4);
    CU_ASSERT_EQUAL(got->entry.available, 3);
    CU_ASSERT_STRING_EQUAL(got->entry.reason, "out of stock: sku-r needs 4, has 3");

    inv_entry committed = {.kind = INV_ENTRY_COMMITTED, .order_id = "ord-1", .units = 9};
    round_trip(&committed);
    CU_ASSERT_STRING_EQUAL(back->type, "inventory.committed");
    expect_subject("events.inventory.committed.ord-1");
    CU_ASSERT_EQUAL(back->payload.inventory_committed.units, 9);
    CU_ASSERT_STRING_EQUAL(got->entry.order_id, "ord-1");

    inv_entry released = {.kind = INV_ENTRY_RELEASED,
                          .order_id = "ord-1",
                          .restocked = true,
                          .reason = "cancelled by the customer",
                          .units = 9};
    round_trip(&released);
    CU_ASSERT_STRING_EQUAL(back->type, "inventory.released");
    CU_ASSERT_TRUE(got->entry.restocked);
    CU_ASSERT_EQUAL(got->entry.units, 9);
    CU_ASSERT_STRING_EQUAL(got->entry.reason, "cancelled by the customer");
    free(lines);
}

static void test_inventory_codec_refuses_what_does_not_fit(void)
{
    char longsku[INV_SKU_MAX + 2], longkey[INV_KEY_MAX + 2];
    inv_line line = {.sku = "sku-a", .quantity = 1};

    memset(longsku, 's', sizeof longsku - 1);
    longsku[sizeof longsku - 1] = '\0';
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    inv_entry e = {.kind = INV_ENTRY_STOCK_SET, .sku = longsku};
    CU_ASSERT_EQUAL(inventory_event_of(&e, NULL, NULL, env), CH_INVALID_ARGUMENT);
    e = (inv_entry){.kind = INV_ENTRY_STOCK_ADJUSTED, .sku = "sku-a", .delta = 1, .idempotency_key = longkey};
    CU_ASSERT_EQUAL(inventory_event_of(&e, NULL, NULL, env), CH_INVALID_ARGUMENT);
    e = (inv_entry){.kind = INV_ENTRY_COMMITTED, .order_id = "ord-0123456789012345678901234567890123456789"};
    CU_ASSERT_EQUAL(inventory_event_of(&e, NULL, NULL, env), CH_INVALID_ARGUMENT); /* 44 bytes */
    e = (inv_entry){.kind = INV_ENTRY_COMMITTED};
    CU_ASSERT_EQUAL(inventory_event_of(&e, NULL, NULL, env), CH_INVALID_ARGUMENT); /* no order */
    e = (inv_entry){.kind = INV_ENTRY_RESERVED,
                    .order_id = "ord-1",
                    .customer_id = "c",
                    .lines = &line,
                    .n_lines = INV_LINES_MAX + 1};
    CU_ASSERT_EQUAL(inventory_event_of(&e, NULL, NULL, env), CH_INVALID_ARGUMENT);
    e.kind = 99;
    CU_ASSERT_EQUAL(inventory_event_of(&e, NULL, NULL, env), CH_INVALID_ARGUMENT);

    /* events of other services are no entries of inventory's */
    CU_ASSERT_EQUAL_FATAL(event_init(env, EVENT_ORDER_CREATED, "ord-1", NULL, "orders", NULL), CH_OK);
    CU_ASSERT_EQUAL(inventory_entry_of(env, got), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL_FATAL(event_init(env, EVENT_PAYMENT_PROCESSED, "ord-1", NULL, "payment", NULL), CH_OK);
    CU_ASSERT_EQUAL(inventory_entry_of(env, got), CH_INVALID_ARGUMENT);
    memset(env, 0, sizeof *env);
    snprintf(env->type, sizeof env->type, "inventory.nonsense");
    CU_ASSERT_EQUAL(inventory_entry_of(env, got), CH_INVALID_ARGUMENT);
}

/* A history decided in the core, written as events and read back: the
 * store folded from the events is the store that decided them. */
static void test_inventory_codec_fold_of_the_events_is_the_state(void)
{
    inv_store *s = NULL, *again = NULL;
    inv_line items[2] = {{.sku = "sku-a", .quantity = 2}, {.sku = "sku-b", .quantity = 1}};
    inv_reserve_req r = {.order_id = "ord-1",
                         .customer_id = "cust-1",
                         .cause_event_id = CAUSE,
                         .total_cents = 30,
                         .items = items,
                         .n_items = 2};
    inv_outcome out;
    char err[256];

    CU_ASSERT_EQUAL_FATAL(inv_store_create(&s), CH_OK);
    CU_ASSERT_EQUAL_FATAL(inv_store_create(&again), CH_OK);
#define RECORD(decision)                                                                                     \
    do {                                                                                                     \
        CU_ASSERT_EQUAL_FATAL(decision, CH_OK);                                                              \
        round_trip(&dec->entry);                                                                             \
        CU_ASSERT_EQUAL_FATAL(inv_apply(s, &dec->entry, NULL), CH_OK);                                       \
        CU_ASSERT_EQUAL_FATAL(inv_apply(again, &got->entry, NULL), CH_OK);                                   \
    } while (0)
    RECORD(inv_decide_set(s, "sku-a", 5, dec, err, sizeof err));
    RECORD(inv_decide_adjust_key(s, "sku-b", 4, "k-1", dec, &out, err, sizeof err));
    RECORD(inv_decide_reserve(s, &r, dec, &out, err, sizeof err));
    RECORD(inv_decide_commit(s, "ord-1", CAUSE, dec, &out));
    r.order_id = "ord-2";
    items[0].quantity = 9;
    RECORD(inv_decide_reserve(s, &r, dec, &out, err, sizeof err)); /* rejected */
    r.order_id = "ord-3";
    items[0].quantity = 1;
    RECORD(inv_decide_reserve(s, &r, dec, &out, err, sizeof err));
    RECORD(inv_decide_release(s, "ord-3", false, "declined", CAUSE, dec, &out));
    RECORD(inv_decide_release(s, "ord-1", true, "changed my mind", CAUSE, dec, &out));
#undef RECORD
    const char *skus[] = {"sku-a", "sku-b"};
    for (int i = 0; i < 2; i++) {
        const inv_stock *a = inv_store_stock(s, skus[i]), *b = inv_store_stock(again, skus[i]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(a);
        CU_ASSERT_PTR_NOT_NULL_FATAL(b);
        CU_ASSERT_EQUAL(memcmp(a, b, sizeof *a), 0);
    }
    CU_ASSERT_TRUE(inv_store_adjust_key_known(again, "sku-b", "k-1"));
    const char *orders[] = {"ord-1", "ord-2", "ord-3"};
    for (int i = 0; i < 3; i++) {
        const inv_reservation *a = inv_store_reservation(s, orders[i]),
                              *b = inv_store_reservation(again, orders[i]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(a);
        CU_ASSERT_PTR_NOT_NULL_FATAL(b);
        CU_ASSERT_EQUAL(a->status, b->status);
        CU_ASSERT_EQUAL(a->units, b->units);
        CU_ASSERT_EQUAL(a->restocked, b->restocked);
        CU_ASSERT_STRING_EQUAL(str(a->reason), str(b->reason));
        CU_ASSERT_STRING_EQUAL(str(a->short_sku), str(b->short_sku));
    }
    CU_ASSERT_EQUAL(inv_store_reservation(again, "ord-1")->status, INV_RES_RELEASED);
    CU_ASSERT_EQUAL(inv_store_reservation(again, "ord-2")->status, INV_RES_REJECTED);
    inv_store_destroy(s);
    inv_store_destroy(again);
}

int main(void)
{
    static const cu_test tests[] = {
        {"stock entries are keyed by SKU", test_inventory_codec_stock_entries_are_keyed_by_sku},
        {"reservation entries round trip", test_inventory_codec_reservation_entries_round_trip},
        {"refuses what does not fit", test_inventory_codec_refuses_what_does_not_fit},
        {"fold of the events is the state", test_inventory_codec_fold_of_the_events_is_the_state},
        {NULL, NULL},
    };
    int rc = 1;

    env = calloc(1, sizeof *env);
    back = calloc(1, sizeof *back);
    dec = calloc(1, sizeof *dec);
    got = calloc(1, sizeof *got);
    if (env && back && dec && got)
        rc = cu_run("inventory_codec", NULL, NULL, tests);
    free(env);
    free(back);
    free(dec);
    free(got);
    return rc;
}
