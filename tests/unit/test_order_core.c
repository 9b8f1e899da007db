/* test_order_core.c: validation, the reducer and the store of the orders core. */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <string.h>

#include "cu_run.h"
#include "order_core.h"

static order_item item(const char *sku, uint32_t qty, int64_t price)
{
    order_item it = {.quantity = qty, .unit_price_cents = price};
    snprintf(it.sku, sizeof it.sku, "%s", sku);
    return it;
}

static ch_status validate(const char *customer, const order_item *items, size_t n, const char *key, char *err)
{
    order_create_req r = {.customer_id = customer, .items = items, .n_items = n, .idempotency_key = key};
    return order_validate_create(&r, err, 256);
}

static void test_order_core_validate_accepts_good_request(void)
{
    order_item items[2] = {item("sku-1", 2, 1500), item("sku-2", 1, 0)};
    char err[256] = "";
    CU_ASSERT_EQUAL(validate("c-1", items, 2, "", err), CH_OK);
    CU_ASSERT_EQUAL(order_total(items, 2), 3000);
}

static void test_order_core_validate_names_the_field(void)
{
    order_item one = item("sku-1", 1, 100);
    order_item items[ORDER_ITEMS_MAX + 1];
    char err[256];

    CU_ASSERT_EQUAL(validate("", &one, 1, NULL, err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "customer_id"));
    CU_ASSERT_EQUAL(validate("bad\xc3\x28", &one, 1, NULL, err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "UTF-8"));
    CU_ASSERT_EQUAL(validate("a.b", &one, 1, NULL, err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(validate("c-1", &one, 0, NULL, err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "items"));
    for (size_t i = 0; i <= ORDER_ITEMS_MAX; i++)
        items[i] = item("s", 1, 1);
    CU_ASSERT_EQUAL(validate("c-1", items, ORDER_ITEMS_MAX, NULL, err), CH_OK);
    CU_ASSERT_EQUAL(validate("c-1", items, ORDER_ITEMS_MAX + 1, NULL, err), CH_INVALID_ARGUMENT);

    order_item zero = item("sku-1", 0, 100);
    CU_ASSERT_EQUAL(validate("c-1", &zero, 1, NULL, err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "items[0].quantity"));
    order_item neg = item("sku-1", 1, -1);
    CU_ASSERT_EQUAL(validate("c-1", &neg, 1, NULL, err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "items[0].unit_price_cents"));
    order_item nosku = item("", 1, 1);
    CU_ASSERT_EQUAL(validate("c-1", &nosku, 1, NULL, err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "items[0].sku"));
    order_item badsku = item("s\xff", 1, 1);
    CU_ASSERT_EQUAL(validate("c-1", &badsku, 1, NULL, err), CH_INVALID_ARGUMENT);

    char longkey[ORDER_IDEMPOTENCY_KEY_MAX + 2];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    CU_ASSERT_EQUAL(validate("c-1", &one, 1, longkey, err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "idempotency_key"));
}

static order_event ev(order_event_kind kind, const char *id, uint64_t seq)
{
    order_event e = {.kind = kind, .order_id = id, .seq = seq, .time_ms = (int64_t)seq * 10};
    return e;
}

static order_event created(const char *id, uint64_t seq, const order_item *items, size_t n)
{
    order_event e = ev(ORDER_EV_CREATED, id, seq);
    e.customer_id = "c-1";
    e.items = items;
    e.n_items = n;
    return e;
}

/* Applies the kinds in order to a fresh order and returns the final status. */
static order_status fold(const order_event_kind *kinds, size_t n, order *o)
{
    order_item it = item("sku-1", 3, 500);
    order_event c = created("ord-1", 1, &it, 1);
    bool changed;

    memset(o, 0, sizeof *o);
    CU_ASSERT_EQUAL(order_apply(o, &c, &changed), CH_OK);
    for (size_t i = 0; i < n; i++) {
        order_event e = ev(kinds[i], "ord-1", i + 2);
        e.reason = "why";
        CU_ASSERT_EQUAL(order_apply(o, &e, &changed), CH_OK);
    }
    return o->status;
}

static void test_order_core_reducer_paths(void)
{
    order o;
    const order_event_kind happy[] = {ORDER_EV_INVENTORY_RESERVED, ORDER_EV_PAYMENT_PROCESSED,
                                      ORDER_EV_CONFIRMED};
    const order_event_kind no_stock[] = {ORDER_EV_INVENTORY_FAILED, ORDER_EV_CANCELLED};
    const order_event_kind declined[] = {ORDER_EV_INVENTORY_RESERVED, ORDER_EV_PAYMENT_FAILED,
                                         ORDER_EV_INVENTORY_RELEASED, ORDER_EV_CANCELLED};
    const order_event_kind cancel[] = {ORDER_EV_INVENTORY_RESERVED, ORDER_EV_PAYMENT_PROCESSED,
                                       ORDER_EV_CONFIRMED,          ORDER_EV_CANCEL_REQUESTED,
                                       ORDER_EV_PAYMENT_REFUNDED,   ORDER_EV_INVENTORY_RELEASED};

    CU_ASSERT_EQUAL(fold(happy, 3, &o), ORDER_CONFIRMED);
    CU_ASSERT_EQUAL(o.total_cents, 1500);
    CU_ASSERT_EQUAL(o.version, 3); /* created, reserved, processed; confirmed was a repeat */
    CU_ASSERT_FALSE(order_saga_running(&o));
    order_clear(&o);

    CU_ASSERT_EQUAL(fold(no_stock, 2, &o), ORDER_CANCELLED);
    CU_ASSERT_STRING_EQUAL(o.reason, "why");
    order_clear(&o);

    CU_ASSERT_EQUAL(fold(declined, 2, &o), ORDER_RESERVED); /* waits for the release */
    CU_ASSERT_TRUE(order_saga_running(&o));
    order_clear(&o);
    CU_ASSERT_EQUAL(fold(declined, 3, &o), ORDER_CANCELLED);
    order_clear(&o);

    CU_ASSERT_EQUAL(fold(cancel, 5, &o), ORDER_CANCELLING); /* refunded, not yet restocked */
    order_clear(&o);
    CU_ASSERT_EQUAL(fold(cancel, 6, &o), ORDER_CANCELLED);
    order_clear(&o);
}

static void test_order_core_reducer_is_idempotent(void)
{
    order_item it = item("sku-1", 1, 100);
    order o = {0};
    bool changed;
    order_event c = created("ord-1", 1, &it, 1);
    order_event r = ev(ORDER_EV_INVENTORY_RESERVED, "ord-1", 2);

    CU_ASSERT_EQUAL(order_apply(&o, &c, &changed), CH_OK);
    CU_ASSERT_TRUE(changed);
    CU_ASSERT_EQUAL(order_apply(&o, &c, &changed), CH_OK); /* created again */
    CU_ASSERT_FALSE(changed);
    CU_ASSERT_EQUAL(order_apply(&o, &r, &changed), CH_OK);
    CU_ASSERT_TRUE(changed);
    CU_ASSERT_EQUAL(order_apply(&o, &r, &changed), CH_OK); /* same sequence replayed */
    CU_ASSERT_FALSE(changed);
    r.seq = 9; /* same event published twice under another message id */
    CU_ASSERT_EQUAL(order_apply(&o, &r, &changed), CH_OK);
    CU_ASSERT_FALSE(changed);
    CU_ASSERT_EQUAL(o.version, 2);
    CU_ASSERT_EQUAL(o.status, ORDER_RESERVED);
    order_clear(&o);
}

/* Only a participant contradicting itself is refused; the first word stands. */
static void test_order_core_reducer_refuses_contradictions(void)
{
    order_item it = item("sku-1", 1, 100);
    order o = {0};
    bool changed;
    order_event c = created("ord-1", 1, &it, 1);
    order_event paid = ev(ORDER_EV_PAYMENT_PROCESSED, "ord-1", 2);
    order_event declined = ev(ORDER_EV_PAYMENT_FAILED, "ord-1", 3);
    order_event reserved = ev(ORDER_EV_INVENTORY_RESERVED, "ord-1", 4);
    order_event short_ = ev(ORDER_EV_INVENTORY_FAILED, "ord-1", 5);

    CU_ASSERT_EQUAL(order_apply(&o, &c, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &paid, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &declined, &changed), CH_FAILED_PRECONDITION);
    CU_ASSERT_FALSE(changed);
    CU_ASSERT_EQUAL(order_apply(&o, &reserved, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &short_, &changed), CH_FAILED_PRECONDITION);
    CU_ASSERT_FALSE(changed);
    CU_ASSERT_EQUAL(o.status, ORDER_CONFIRMED);
    CU_ASSERT_EQUAL(o.version, 3);
    CU_ASSERT_EQUAL(order_apply(&o, &(order_event){.kind = ORDER_EV_INVENTORY_RESERVED}, &changed),
                    CH_INVALID_ARGUMENT); /* no order id */
    order_clear(&o);
}

/* Each step's event comes from its own stream: a step seen before the one it
 * follows means the same as in order. */
static void test_order_core_late_steps_mean_the_same(void)
{
    order_item it = item("sku-1", 1, 100);
    order o = {0};
    bool changed;
    order_event c = created("ord-1", 1, &it, 1);
    order_event reserved = ev(ORDER_EV_INVENTORY_RESERVED, "ord-1", 2);
    order_event paid = ev(ORDER_EV_PAYMENT_PROCESSED, "ord-1", 3);
    order_event declined = ev(ORDER_EV_PAYMENT_FAILED, "ord-1", 3);
    order_event released = ev(ORDER_EV_INVENTORY_RELEASED, "ord-1", 4);

    /* payment.processed overtakes inventory.reserved: it implies the reservation */
    CU_ASSERT_EQUAL(order_apply(&o, &c, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &paid, &changed), CH_OK);
    CU_ASSERT_EQUAL(o.status, ORDER_CONFIRMED);
    CU_ASSERT_EQUAL(order_apply(&o, &reserved, &changed), CH_OK);
    CU_ASSERT_EQUAL(o.status, ORDER_CONFIRMED);
    order_clear(&o);

    /* payment.failed overtakes it too: RESERVED, waiting for the release */
    memset(&o, 0, sizeof o);
    CU_ASSERT_EQUAL(order_apply(&o, &c, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &declined, &changed), CH_OK);
    CU_ASSERT_EQUAL(o.status, ORDER_RESERVED);
    CU_ASSERT_EQUAL(order_apply(&o, &reserved, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &released, &changed), CH_OK);
    CU_ASSERT_EQUAL(o.status, ORDER_CANCELLED);
    order_clear(&o);

    /* the release overtakes the decline it compensates */
    memset(&o, 0, sizeof o);
    CU_ASSERT_EQUAL(order_apply(&o, &c, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &released, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &declined, &changed), CH_OK);
    CU_ASSERT_EQUAL(o.status, ORDER_CANCELLED);
    order_clear(&o);
}

/* Every interleaving of a saga's events, order.created included, through the
 * store (which keeps the steps that come before the creation), ends in the
 * same order: status, reason, version and the outcome still to publish. */
typedef struct saga_case {
    const char *name;
    order_event_kind kinds[8]; /* after order.created */
    size_t n;
    order_status status;
    const char *reason;
} saga_case;

static bool next_permutation(size_t *p, size_t n)
{
    size_t i = n - 1;
    while (i > 0 && p[i - 1] >= p[i])
        i--;
    if (i == 0)
        return false;
    size_t j = n - 1;
    while (p[j] <= p[i - 1])
        j--;
    size_t t = p[i - 1];
    p[i - 1] = p[j];
    p[j] = t;
    for (size_t a = i, b = n - 1; a < b; a++, b--) {
        t = p[a];
        p[a] = p[b];
        p[b] = t;
    }
    return true;
}

static void test_order_core_every_interleaving_ends_the_same(void)
{
    static const saga_case cases[] = {
        {"happy", {ORDER_EV_INVENTORY_RESERVED, ORDER_EV_PAYMENT_PROCESSED}, 2, ORDER_CONFIRMED, NULL},
        {"out of stock", {ORDER_EV_INVENTORY_FAILED}, 1, ORDER_CANCELLED, "failed"},
        {"declined",
         {ORDER_EV_INVENTORY_RESERVED, ORDER_EV_PAYMENT_FAILED, ORDER_EV_INVENTORY_RELEASED},
         3,
         ORDER_CANCELLED,
         "failed"},
        {"cancelled after confirmation",
         {ORDER_EV_INVENTORY_RESERVED, ORDER_EV_PAYMENT_PROCESSED, ORDER_EV_CONFIRMED,
          ORDER_EV_CANCEL_REQUESTED, ORDER_EV_PAYMENT_REFUNDED, ORDER_EV_INVENTORY_RELEASED},
         6,
         ORDER_CANCELLED,
         "cancel_requested"},
    };
    static const char *const reason_of[] = {
        [ORDER_EV_INVENTORY_FAILED] = "failed",
        [ORDER_EV_PAYMENT_FAILED] = "failed",
        [ORDER_EV_CANCEL_REQUESTED] = "cancel_requested",
        [ORDER_EV_CANCELLED] = "cancelled",
    };
    order_item it = item("sku-1", 2, 250);

    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const saga_case *sc = &cases[k];
        size_t n = sc->n + 1, perm[9], runs = 0, bad = 0;
        order_event evs[9];
        evs[0] = created("ord-p", 1, &it, 1);
        for (size_t i = 0; i < sc->n; i++) {
            evs[i + 1] = ev(sc->kinds[i], "ord-p", i + 2);
            evs[i + 1].reason =
                sc->kinds[i] < (int)(sizeof reason_of / sizeof reason_of[0]) ? reason_of[sc->kinds[i]] : NULL;
        }
        for (size_t i = 0; i < n; i++)
            perm[i] = i;
        uint64_t version = 0;
        order_reaction react = ORDER_REACT_NONE;
        do {
            order_store *s = NULL;
            bool changed;
            CU_ASSERT_EQUAL_FATAL(order_store_create(&s), CH_OK);
            for (size_t i = 0; i < n; i++) {
                ch_status st = order_store_apply(s, &evs[perm[i]], NULL, &changed);
                CU_ASSERT_TRUE(st == CH_OK || st == CH_NOT_FOUND); /* NOT_FOUND: kept before its creation */
            }
            const order *o = order_store_get(s, "ord-p");
            CU_ASSERT_PTR_NOT_NULL_FATAL(o);
            if (runs == 0) {
                version = o->version;
                react = order_next_reaction(o);
            }
            bool same = o->status == sc->status && o->version == version && order_next_reaction(o) == react &&
                        (sc->reason ? o->reason && strcmp(o->reason, sc->reason) == 0 : !o->reason) &&
                        o->total_cents == 500 && order_store_count(s) == 1;
            if (!same) {
                bad++;
                fprintf(stderr, "\n%s: permutation %zu ends %s v%llu reason %s", sc->name, runs,
                        order_status_name(o->status), (unsigned long long)o->version,
                        o->reason ? o->reason : "-");
            }
            runs++;
            order_store_destroy(s);
        } while (next_permutation(perm, n));
        CU_ASSERT_EQUAL(bad, 0);
        CU_ASSERT_TRUE(runs >= 2);
    }
}

/* Steps that come before their order.created wait in the store, invisible
 * to reads, and are not forgotten; their number is capped. */
static void test_order_core_store_keeps_steps_before_the_creation(void)
{
    order_item it = item("sku-1", 1, 100);
    order_store *s = NULL;
    const order *o = NULL;
    bool changed;
    order_event paid = ev(ORDER_EV_PAYMENT_PROCESSED, "ord-late", 3);
    order_event c = created("ord-late", 1, &it, 1);

    CU_ASSERT_EQUAL_FATAL(order_store_create(&s), CH_OK);
    CU_ASSERT_EQUAL(order_store_apply(s, &paid, &o, &changed), CH_NOT_FOUND);
    CU_ASSERT_PTR_NULL(o);
    CU_ASSERT_PTR_NULL(order_store_get(s, "ord-late"));
    CU_ASSERT_EQUAL(order_store_count(s), 0);
    CU_ASSERT_EQUAL(order_store_apply(s, &c, &o, &changed), CH_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    CU_ASSERT_EQUAL(o->status, ORDER_CONFIRMED);
    CU_ASSERT_EQUAL(order_next_reaction(o), ORDER_REACT_CONFIRM);
    CU_ASSERT_EQUAL(order_store_count(s), 1);

    char id[32];
    ch_status st = CH_OK;
    size_t i;
    for (i = 0; i <= ORDER_STUBS_MAX && st != CH_RESOURCE_EXHAUSTED; i++) {
        snprintf(id, sizeof id, "ord-x%zu", i);
        order_event r = ev(ORDER_EV_INVENTORY_RESERVED, id, 1);
        st = order_store_apply(s, &r, NULL, &changed);
    }
    CU_ASSERT_EQUAL(st, CH_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(i, ORDER_STUBS_MAX + 1);
    order_event c2 = created("ord-x0", 2, &it, 1); /* a waiting one can still be created */
    CU_ASSERT_EQUAL(order_store_apply(s, &c2, &o, &changed), CH_OK);
    CU_ASSERT_EQUAL(o->status, ORDER_RESERVED);
    order_store_destroy(s); /* frees the stubs too (valgrind, ASan) */
}

static void test_order_core_reactions_follow_state(void)
{
    order_item it = item("sku-1", 1, 100);
    order o = {0};
    bool changed;
    char err[256];
    order_event c = created("ord-1", 1, &it, 1);
    order_event reserved = ev(ORDER_EV_INVENTORY_RESERVED, "ord-1", 2);
    order_event paid = ev(ORDER_EV_PAYMENT_PROCESSED, "ord-1", 3);
    order_event confirmed = ev(ORDER_EV_CONFIRMED, "ord-1", 4);
    order_event cancel = ev(ORDER_EV_CANCEL_REQUESTED, "ord-1", 5);
    order_event refunded = ev(ORDER_EV_PAYMENT_REFUNDED, "ord-1", 7);
    order_event restocked = ev(ORDER_EV_INVENTORY_RELEASED, "ord-1", 6);
    order_event cancelled = ev(ORDER_EV_CANCELLED, "ord-1", 8);

    CU_ASSERT_EQUAL(order_apply(&o, &c, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_next_reaction(&o), ORDER_REACT_NONE);
    CU_ASSERT_EQUAL(order_check_cancel(&o, err, sizeof err), CH_FAILED_PRECONDITION); /* saga running */
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "PENDING"));
    CU_ASSERT_EQUAL(order_apply(&o, &reserved, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &paid, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_next_reaction(&o), ORDER_REACT_CONFIRM);
    CU_ASSERT_EQUAL(order_apply(&o, &confirmed, &changed), CH_OK);
    CU_ASSERT_TRUE(changed); /* the outcome is now known to be published */
    CU_ASSERT_EQUAL(order_next_reaction(&o), ORDER_REACT_NONE);
    CU_ASSERT_EQUAL(order_check_cancel(&o, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &cancel, &changed), CH_OK);
    CU_ASSERT_EQUAL(o.status, ORDER_CANCELLING);
    CU_ASSERT_EQUAL(order_check_cancel(&o, err, sizeof err), CH_ALREADY_EXISTS);
    /* the refund (a later sequence) arrives before the restock: order does not matter */
    CU_ASSERT_EQUAL(order_apply(&o, &refunded, &changed), CH_OK);
    CU_ASSERT_EQUAL(o.status, ORDER_CANCELLING);
    CU_ASSERT_EQUAL(order_next_reaction(&o), ORDER_REACT_NONE);
    CU_ASSERT_EQUAL(order_apply(&o, &restocked, &changed), CH_OK);
    CU_ASSERT_TRUE(changed);
    CU_ASSERT_EQUAL(o.status, ORDER_CANCELLED);
    CU_ASSERT_EQUAL(order_next_reaction(&o), ORDER_REACT_CANCEL);
    CU_ASSERT_EQUAL(order_apply(&o, &cancelled, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_next_reaction(&o), ORDER_REACT_NONE);
    order_clear(&o);
}

/* The worker handling inventory.reserved may find payment.processed already
 * folded in by the follower: the confirmation is then the payment's handler's
 * to publish, naming the payment as its cause, not the reservation. */
static void test_order_core_outcome_is_caused_by_the_step_that_made_it_due(void)
{
    order_item it = item("sku-1", 1, 100);
    order o = {0};
    bool changed;
    order_event c = created("ord-1", 1, &it, 1);
    order_event reserved = ev(ORDER_EV_INVENTORY_RESERVED, "ord-1", 2);
    order_event paid = ev(ORDER_EV_PAYMENT_PROCESSED, "ord-1", 3);
    order_event confirmed = ev(ORDER_EV_CONFIRMED, "ord-1", 4);
    order_event cancel = ev(ORDER_EV_CANCEL_REQUESTED, "ord-1", 5);
    order_event refunded = ev(ORDER_EV_PAYMENT_REFUNDED, "ord-1", 6);
    order_event restocked = ev(ORDER_EV_INVENTORY_RELEASED, "ord-1", 7);

    reserved.event_id = "aaaa";
    paid.event_id = "bbbb";
    refunded.event_id = "cccc";
    restocked.event_id = "dddd";
    CU_ASSERT_EQUAL(order_apply(&o, &c, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &reserved, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_reaction_to(&o, "aaaa"), ORDER_REACT_NONE);
    CU_ASSERT_EQUAL(order_apply(&o, &paid, &changed), CH_OK);
    CU_ASSERT_STRING_EQUAL(o.outcome_cause, "bbbb");
    /* a redelivered reservation, after the payment was folded in */
    CU_ASSERT_EQUAL(order_apply(&o, &reserved, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_reaction_to(&o, "aaaa"), ORDER_REACT_NONE);
    CU_ASSERT_EQUAL(order_reaction_to(&o, NULL), ORDER_REACT_NONE);
    CU_ASSERT_EQUAL(order_reaction_to(&o, "bbbb"), ORDER_REACT_CONFIRM);
    CU_ASSERT_EQUAL(order_apply(&o, &confirmed, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_reaction_to(&o, "bbbb"), ORDER_REACT_NONE);

    /* the cancel is due once both compensations are in: the later one names it */
    CU_ASSERT_EQUAL(order_apply(&o, &cancel, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &refunded, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &restocked, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_reaction_to(&o, "cccc"), ORDER_REACT_NONE);
    CU_ASSERT_EQUAL(order_reaction_to(&o, "dddd"), ORDER_REACT_CANCEL);
    order_clear(&o);

    /* folded in without ids (cause unknown): any handler publishes, as before */
    order_event paid_anon = ev(ORDER_EV_PAYMENT_PROCESSED, "ord-2", 9);
    order_event c2 = created("ord-2", 8, &it, 1);
    CU_ASSERT_EQUAL(order_apply(&o, &c2, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_apply(&o, &paid_anon, &changed), CH_OK);
    CU_ASSERT_EQUAL(order_reaction_to(&o, "eeee"), ORDER_REACT_CONFIRM);
    order_clear(&o);
}

static void test_order_core_store_indexes_and_pages(void)
{
    order_store *s = NULL;
    order_item it = item("sku-1", 1, 100);
    const order *page[7];
    char token[32], id[ORDER_ID_MAX + 1];
    size_t n, seen = 0;
    bool changed;

    CU_ASSERT_EQUAL_FATAL(order_store_create(&s), CH_OK);
    for (int i = 0; i < 20; i++) {
        order_event c = created(id, (uint64_t)i + 1, &it, 1);
        order_id_from_bits(id, (uint64_t)i);
        c.customer_id = (i % 2) ? "odd" : "even";
        c.idempotency_key = (i == 5) ? "key-5" : NULL;
        CU_ASSERT_EQUAL(order_store_apply(s, &c, NULL, &changed), CH_OK);
    }
    CU_ASSERT_EQUAL(order_store_count(s), 20);
    order_id_from_bits(id, 7);
    CU_ASSERT_PTR_NOT_NULL(order_store_get(s, id));
    CU_ASSERT_PTR_NULL(order_store_get(s, "ord-unknown"));
    const order *k = order_store_by_key(s, "odd", "key-5");
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    order_id_from_bits(id, 5);
    CU_ASSERT_STRING_EQUAL(k->id, id);
    CU_ASSERT_PTR_NULL(order_store_by_key(s, "even", "key-5"));

    /* newest first, 7 a page, every order once */
    token[0] = '\0';
    uint64_t last_pos = 1000;
    do {
        char next[32];
        CU_ASSERT_EQUAL_FATAL(order_store_list(s, token, "", ORDER_UNSPECIFIED, page, 7, &n, next), CH_OK);
        for (size_t i = 0; i < n; i++) {
            CU_ASSERT_TRUE(page[i]->list_pos < last_pos);
            last_pos = page[i]->list_pos;
        }
        seen += n;
        memcpy(token, next, sizeof token);
    } while (token[0]);
    CU_ASSERT_EQUAL(seen, 20);

    CU_ASSERT_EQUAL(order_store_list(s, "", "odd", ORDER_UNSPECIFIED, page, 7, &n, token), CH_OK);
    CU_ASSERT_EQUAL(n, 7);
    for (size_t i = 0; i < n; i++)
        CU_ASSERT_STRING_EQUAL(page[i]->customer_id, "odd");
    CU_ASSERT_EQUAL(order_store_list(s, "", "", ORDER_CONFIRMED, page, 7, &n, token), CH_OK);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(order_store_list(s, "garbage", "", ORDER_UNSPECIFIED, page, 7, &n, token),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(order_store_list(s, "p999", "", ORDER_UNSPECIFIED, page, 7, &n, token),
                    CH_INVALID_ARGUMENT);

    order_event orphan = ev(ORDER_EV_INVENTORY_RESERVED, "ord-nobody", 99);
    CU_ASSERT_EQUAL(order_store_apply(s, &orphan, NULL, &changed), CH_NOT_FOUND);
    order_store_destroy(s);
}

static void test_order_core_ids_are_deterministic_per_key(void)
{
    char a[ORDER_ID_MAX + 1], b[ORDER_ID_MAX + 1], c[ORDER_ID_MAX + 1];
    order_id_from_key(a, "c-1", "k");
    order_id_from_key(b, "c-1", "k");
    order_id_from_key(c, "c-2", "k");
    CU_ASSERT_STRING_EQUAL(a, b);
    CU_ASSERT_STRING_NOT_EQUAL(a, c);
    CU_ASSERT_EQUAL(strlen(a), 20);
    CU_ASSERT_EQUAL(strncmp(a, "ord-", 4), 0);
}

int main(void)
{
    static const cu_test tests[] = {
        {"validate accepts a good request", test_order_core_validate_accepts_good_request},
        {"validate names the field", test_order_core_validate_names_the_field},
        {"reducer paths", test_order_core_reducer_paths},
        {"reducer is idempotent", test_order_core_reducer_is_idempotent},
        {"reducer refuses contradictions", test_order_core_reducer_refuses_contradictions},
        {"late steps mean the same", test_order_core_late_steps_mean_the_same},
        {"every interleaving ends the same", test_order_core_every_interleaving_ends_the_same},
        {"store keeps steps before the creation", test_order_core_store_keeps_steps_before_the_creation},
        {"reactions follow state", test_order_core_reactions_follow_state},
        {"outcome is caused by the step that made it due",
         test_order_core_outcome_is_caused_by_the_step_that_made_it_due},
        {"store indexes and pages", test_order_core_store_indexes_and_pages},
        {"ids are deterministic per key", test_order_core_ids_are_deterministic_per_key},
        {NULL, NULL},
    };

    return cu_run("order_core", NULL, NULL, tests);
}
