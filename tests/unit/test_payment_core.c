/* test_payment_core.c: validation, decisions, the reducer over its entries
 * and its inverse, and paging of the payment core. */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_run.h"
#include "payment_core.h"

/* ---- helpers ---- */

/* Decides and applies a credit, as the service does; returns the decision. */
static ch_status credit(pay_state *s, const char *customer, int64_t amount, const char *key)
{
    pay_entry e;
    char err[256];
    bool changed = false;
    ch_status st = pay_decide_credit(s, customer, amount, key, &e, err, sizeof err);
    if (st != CH_OK)
        return st;
    CU_ASSERT_EQUAL(pay_apply(s, &e, &changed), CH_OK);
    CU_ASSERT_TRUE(changed);
    return CH_OK;
}

/* Decides and applies an inventory.reserved; returns the decided kind (0 when
 * nothing was decided) and the decision status in *st. */
static pay_entry_kind reserve(pay_state *s, const char *order, const char *customer, int64_t amount,
                              ch_status *st)
{
    pay_entry e;
    char err[256];
    *st = pay_decide_charge(s, order, customer, amount, "0123456789abcdef0123456789abcdef", &e, err,
                            sizeof err);
    if (*st != CH_OK)
        return 0;
    CU_ASSERT_EQUAL(pay_apply(s, &e, NULL), CH_OK);
    return e.kind;
}

static ch_status refund(pay_state *s, const char *order)
{
    pay_entry e;
    ch_status st = pay_decide_refund(s, order, NULL, &e);
    if (st != CH_OK)
        return st;
    CU_ASSERT_EQUAL(pay_apply(s, &e, NULL), CH_OK);
    return CH_OK;
}

static pay_state *fresh_state(void)
{
    pay_state *s = NULL;
    CU_ASSERT_EQUAL_FATAL(pay_state_create(&s), CH_OK);
    return s;
}

static void assert_account(const pay_state *s, const char *customer, int64_t balance, int64_t credited,
                           int64_t charged, int64_t refunded)
{
    const pay_account *a = pay_account_get(s, customer);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(a->balance_cents, balance);
    CU_ASSERT_EQUAL(a->credited_cents, credited);
    CU_ASSERT_EQUAL(a->charged_cents, charged);
    CU_ASSERT_EQUAL(a->refunded_cents, refunded);
    CU_ASSERT_TRUE(pay_account_balanced(a));
}

/* ---- tests ---- */

static void test_payment_core_validate_credit_names_the_field(void)
{
    char err[256];
    char longkey[PAY_KEY_MAX + 2];
    char longcust[PAY_CUSTOMER_MAX + 2];

    CU_ASSERT_EQUAL(pay_validate_credit("c-1", 1, NULL, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(pay_validate_credit("c-1", PAY_CREDIT_MAX, "k", err, sizeof err), CH_OK);

    CU_ASSERT_EQUAL(pay_validate_credit("", 1, NULL, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_STRING_EQUAL(err, "customer_id: required");
    CU_ASSERT_EQUAL(pay_validate_credit(NULL, 1, NULL, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(pay_validate_credit("c\xc3\x28", 1, NULL, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "customer_id: not valid UTF-8"));
    CU_ASSERT_EQUAL(pay_validate_credit("a.b", 1, NULL, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "customer_id"));
    memset(longcust, 'c', sizeof longcust - 1);
    longcust[sizeof longcust - 1] = '\0';
    CU_ASSERT_EQUAL(pay_validate_credit(longcust, 1, NULL, err, sizeof err), CH_INVALID_ARGUMENT);
    longcust[PAY_CUSTOMER_MAX] = '\0';
    CU_ASSERT_EQUAL(pay_validate_credit(longcust, 1, NULL, err, sizeof err), CH_OK);

    CU_ASSERT_EQUAL(pay_validate_credit("c-1", 0, NULL, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_STRING_EQUAL(err, "amount_cents: must be 1..100000000000, got 0");
    CU_ASSERT_EQUAL(pay_validate_credit("c-1", -5, NULL, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(pay_validate_credit("c-1", PAY_CREDIT_MAX + 1, NULL, err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "amount_cents"));

    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    CU_ASSERT_EQUAL(pay_validate_credit("c-1", 1, longkey, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "idempotency_key"));
    longkey[PAY_KEY_MAX] = '\0';
    CU_ASSERT_EQUAL(pay_validate_credit("c-1", 1, longkey, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(pay_validate_credit("c-1", 1, "a\r\nb", err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(pay_validate_credit("c-1", 1, "\xff", err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(pay_validate_credit("c-1", 1, "with space", err, sizeof err), CH_OK);
}

static void test_payment_core_credit_creates_and_adds(void)
{
    pay_state *s = fresh_state();

    CU_ASSERT_PTR_NULL(pay_account_get(s, "c-1"));
    CU_ASSERT_EQUAL(credit(s, "c-1", 1000, NULL), CH_OK);
    CU_ASSERT_EQUAL(credit(s, "c-1", 500, NULL), CH_OK);
    assert_account(s, "c-1", 1500, 1500, 0, 0);
    CU_ASSERT_EQUAL(pay_account_count(s), 1);
    CU_ASSERT_TRUE(pay_state_consistent(s));
    pay_state_destroy(s);
}

static void test_payment_core_credit_key_credits_once(void)
{
    pay_state *s = fresh_state();
    pay_entry e;
    char err[256];
    bool changed = true;

    CU_ASSERT_EQUAL(credit(s, "c-1", 1000, "k1"), CH_OK);
    /* the decision sees the key ... */
    CU_ASSERT_EQUAL(pay_decide_credit(s, "c-1", 1000, "k1", &e, err, sizeof err), CH_ALREADY_EXISTS);
    CU_ASSERT_TRUE(pay_credit_key_known(s, "c-1", "k1"));
    /* ... and so does the reducer, for an entry that made it to the stream twice */
    CU_ASSERT_EQUAL(pay_decide_credit(s, "c-1", 1000, "k2", &e, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(pay_apply(s, &e, &changed), CH_OK);
    CU_ASSERT_TRUE(changed);
    CU_ASSERT_EQUAL(pay_apply(s, &e, &changed), CH_OK);
    CU_ASSERT_FALSE(changed);
    assert_account(s, "c-1", 2000, 2000, 0, 0);
    /* keys are per customer */
    CU_ASSERT_FALSE(pay_credit_key_known(s, "c-2", "k1"));
    CU_ASSERT_EQUAL(credit(s, "c-2", 7, "k1"), CH_OK);
    assert_account(s, "c-2", 7, 7, 0, 0);
    /* no key: every credit counts */
    CU_ASSERT_EQUAL(credit(s, "c-2", 7, ""), CH_OK);
    CU_ASSERT_EQUAL(credit(s, "c-2", 7, ""), CH_OK);
    assert_account(s, "c-2", 21, 21, 0, 0);
    pay_state_destroy(s);
}

static void test_payment_core_account_totals_are_capped(void)
{
    pay_state *s = fresh_state();
    pay_entry e = {.kind = PAY_ENTRY_CREDIT, .amount_cents = PAY_CREDIT_MAX};
    char err[256], order[32];
    ch_status st;

    /* fill the account to the credit cap (1e7 entries of the per-call maximum) */
    snprintf(e.customer_id, sizeof e.customer_id, "rich");
    for (long i = 0; i < PAY_ACCOUNT_TOTAL_MAX / PAY_CREDIT_MAX; i++)
        if (pay_apply(s, &e, NULL) != CH_OK)
            CU_FAIL_FATAL("credit below the cap refused");
    assert_account(s, "rich", PAY_ACCOUNT_TOTAL_MAX, PAY_ACCOUNT_TOTAL_MAX, 0, 0);
    CU_ASSERT_EQUAL(pay_decide_credit(s, "rich", 1, NULL, &e, err, sizeof err), CH_FAILED_PRECONDITION);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "amount_cents"));
    e.amount_cents = 1;
    CU_ASSERT_EQUAL(pay_apply(s, &e, NULL), CH_FAILED_PRECONDITION);
    e.amount_cents = PAY_CREDIT_MAX + 1; /* a crafted entry above the per-call cap */
    CU_ASSERT_EQUAL(pay_apply(s, &e, NULL), CH_INVALID_ARGUMENT);

    /* charges are capped too: charge and refund until charged reaches the cap */
    for (int i = 0; i < PAY_ACCOUNT_TOTAL_MAX / PAY_CHARGE_MAX; i++) {
        snprintf(order, sizeof order, "ord-%d", i);
        CU_ASSERT_EQUAL_FATAL(reserve(s, order, "rich", PAY_CHARGE_MAX, &st), PAY_ENTRY_CHARGE);
        CU_ASSERT_EQUAL_FATAL(refund(s, order), CH_OK);
    }
    assert_account(s, "rich", PAY_ACCOUNT_TOTAL_MAX, PAY_ACCOUNT_TOTAL_MAX, PAY_ACCOUNT_TOTAL_MAX,
                   PAY_ACCOUNT_TOTAL_MAX);
    CU_ASSERT_EQUAL(reserve(s, "ord-over", "rich", 1, &st), PAY_ENTRY_DECLINE);
    CU_ASSERT_PTR_NOT_NULL(strstr(pay_payment_get(s, "ord-over")->reason, "account limit"));
    CU_ASSERT_TRUE(pay_state_consistent(s));
    pay_state_destroy(s);
}

static void test_payment_core_charge_when_balance_covers(void)
{
    pay_state *s = fresh_state();
    ch_status st;

    CU_ASSERT_EQUAL(credit(s, "c-1", 5000, NULL), CH_OK);
    CU_ASSERT_EQUAL(reserve(s, "ord-1", "c-1", 3000, &st), PAY_ENTRY_CHARGE);
    CU_ASSERT_EQUAL(st, CH_OK);
    assert_account(s, "c-1", 2000, 5000, 3000, 0);
    const pay_payment *p = pay_payment_get(s, "ord-1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(p->status, PAY_CHARGED);
    CU_ASSERT_EQUAL(p->amount_cents, 3000);
    CU_ASSERT_STRING_EQUAL(p->customer_id, "c-1");
    CU_ASSERT_STRING_EQUAL(p->reason, "");
    /* exactly the balance is enough */
    CU_ASSERT_EQUAL(reserve(s, "ord-2", "c-1", 2000, &st), PAY_ENTRY_CHARGE);
    assert_account(s, "c-1", 0, 5000, 5000, 0);
    /* a zero total is charged even with nothing left */
    CU_ASSERT_EQUAL(reserve(s, "ord-3", "c-1", 0, &st), PAY_ENTRY_CHARGE);
    CU_ASSERT_TRUE(pay_state_consistent(s));
    pay_state_destroy(s);
}

static void test_payment_core_decline_when_balance_short(void)
{
    pay_state *s = fresh_state();
    ch_status st;

    CU_ASSERT_EQUAL(credit(s, "c-1", 500, NULL), CH_OK);
    CU_ASSERT_EQUAL(reserve(s, "ord-1", "c-1", 3000, &st), PAY_ENTRY_DECLINE);
    const pay_payment *p = pay_payment_get(s, "ord-1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(p->status, PAY_DECLINED);
    CU_ASSERT_EQUAL(p->balance_cents, 500);
    CU_ASSERT_EQUAL(p->amount_cents, 3000);
    CU_ASSERT_STRING_EQUAL(p->reason, "insufficient funds: balance 500 < total 3000");
    assert_account(s, "c-1", 500, 500, 0, 0); /* nothing charged */

    /* a customer never credited has balance 0 and no account afterwards */
    CU_ASSERT_EQUAL(reserve(s, "ord-2", "nobody", 1, &st), PAY_ENTRY_DECLINE);
    CU_ASSERT_STRING_EQUAL(pay_payment_get(s, "ord-2")->reason, "insufficient funds: balance 0 < total 1");
    CU_ASSERT_PTR_NULL(pay_account_get(s, "nobody"));
    CU_ASSERT_EQUAL(pay_account_count(s), 1);
    CU_ASSERT_TRUE(pay_state_consistent(s));
    pay_state_destroy(s);
}

static void test_payment_core_one_payment_per_order(void)
{
    pay_state *s = fresh_state();
    pay_entry first, again;
    char err[256];
    bool changed = true;
    ch_status st;

    CU_ASSERT_EQUAL(credit(s, "c-1", 1000, NULL), CH_OK);
    CU_ASSERT_EQUAL(pay_decide_charge(s, "ord-1", "c-1", 600, NULL, &first, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(pay_apply(s, &first, &changed), CH_OK);
    CU_ASSERT_TRUE(changed);
    /* a second inventory.reserved: nothing to decide */
    CU_ASSERT_EQUAL(pay_decide_charge(s, "ord-1", "c-1", 600, NULL, &again, err, sizeof err),
                    CH_ALREADY_EXISTS);
    /* the same entry applied twice (a replay, a duplicate) changes nothing */
    CU_ASSERT_EQUAL(pay_apply(s, &first, &changed), CH_OK);
    CU_ASSERT_FALSE(changed);
    /* nor does a conflicting decision for a decided order */
    pay_entry decline = first;
    decline.kind = PAY_ENTRY_DECLINE;
    snprintf(decline.reason, sizeof decline.reason, "late");
    CU_ASSERT_EQUAL(pay_apply(s, &decline, &changed), CH_OK);
    CU_ASSERT_FALSE(changed);
    CU_ASSERT_EQUAL(pay_payment_get(s, "ord-1")->status, PAY_CHARGED);
    assert_account(s, "c-1", 400, 1000, 600, 0);
    CU_ASSERT_EQUAL(reserve(s, "ord-1", "c-1", 600, &st), 0);
    CU_ASSERT_EQUAL(st, CH_ALREADY_EXISTS);
    CU_ASSERT_EQUAL(pay_payment_count(s), 1);
    pay_state_destroy(s);
}

static void test_payment_core_charge_rejects_bad_input(void)
{
    pay_state *s = fresh_state();
    pay_entry e;
    char err[256];

    CU_ASSERT_EQUAL(pay_decide_charge(s, "", "c-1", 1, NULL, &e, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_STRING_EQUAL(err, "order_id: required");
    CU_ASSERT_EQUAL(pay_decide_charge(s, "ord-1", "", 1, NULL, &e, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_STRING_EQUAL(err, "customer_id: required");
    CU_ASSERT_EQUAL(pay_decide_charge(s, "ord-1", "c-1", -1, NULL, &e, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "total_cents"));
    CU_ASSERT_EQUAL(pay_decide_charge(s, "ord-1", "c-1", PAY_CHARGE_MAX + 1, NULL, &e, err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(pay_decide_charge(s, "ord-1-that-is-far-too-long-for-an-order-id", "c-1", 1, NULL, &e,
                                      err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(pay_payment_count(s), 0);
    pay_state_destroy(s);
}

static void test_payment_core_refund_only_charged_and_once(void)
{
    pay_state *s = fresh_state();
    pay_entry e;
    bool changed = true;
    ch_status st;

    CU_ASSERT_EQUAL(credit(s, "c-1", 1000, NULL), CH_OK);
    CU_ASSERT_EQUAL(reserve(s, "ord-1", "c-1", 700, &st), PAY_ENTRY_CHARGE);
    CU_ASSERT_EQUAL(reserve(s, "ord-2", "c-1", 700, &st), PAY_ENTRY_DECLINE);

    CU_ASSERT_EQUAL(pay_decide_refund(s, "ord-1", "fedcba9876543210fedcba9876543210", &e), CH_OK);
    CU_ASSERT_EQUAL(e.kind, PAY_ENTRY_REFUND);
    CU_ASSERT_EQUAL(e.amount_cents, 700);
    CU_ASSERT_STRING_EQUAL(e.customer_id, "c-1");
    CU_ASSERT_EQUAL(pay_apply(s, &e, &changed), CH_OK);
    CU_ASSERT_TRUE(changed);
    assert_account(s, "c-1", 1000, 1000, 700, 700);
    CU_ASSERT_EQUAL(pay_payment_get(s, "ord-1")->status, PAY_REFUNDED);

    /* once: the decision says so, and a duplicate entry changes nothing */
    CU_ASSERT_EQUAL(refund(s, "ord-1"), CH_ALREADY_EXISTS);
    CU_ASSERT_EQUAL(pay_apply(s, &e, &changed), CH_OK);
    CU_ASSERT_FALSE(changed);
    assert_account(s, "c-1", 1000, 1000, 700, 700);

    /* a decline has nothing to refund; an unknown order has no payment */
    CU_ASSERT_EQUAL(refund(s, "ord-2"), CH_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(refund(s, "ord-none"), CH_NOT_FOUND);
    pay_entry crafted = e;
    snprintf(crafted.order_id, sizeof crafted.order_id, "ord-2");
    CU_ASSERT_EQUAL(pay_apply(s, &crafted, NULL), CH_FAILED_PRECONDITION);
    snprintf(crafted.order_id, sizeof crafted.order_id, "ord-none");
    CU_ASSERT_EQUAL(pay_apply(s, &crafted, NULL), CH_NOT_FOUND);
    assert_account(s, "c-1", 1000, 1000, 700, 700);

    /* a refund entry whose amount is not the charge's is refused */
    CU_ASSERT_EQUAL(reserve(s, "ord-3", "c-1", 300, &st), PAY_ENTRY_CHARGE);
    CU_ASSERT_EQUAL(pay_decide_refund(s, "ord-3", NULL, &e), CH_OK);
    e.amount_cents = 301;
    CU_ASSERT_EQUAL(pay_apply(s, &e, NULL), CH_INVALID_ARGUMENT);
    assert_account(s, "c-1", 700, 1000, 1000, 700);
    CU_ASSERT_TRUE(pay_state_consistent(s));
    pay_state_destroy(s);
}

static void test_payment_core_reducer_refuses_overdraft_entries(void)
{
    pay_state *s = fresh_state();
    pay_entry e = {.kind = PAY_ENTRY_CHARGE, .amount_cents = 100};
    bool changed = true;

    snprintf(e.order_id, sizeof e.order_id, "ord-x");
    snprintf(e.customer_id, sizeof e.customer_id, "c-1");
    CU_ASSERT_EQUAL(pay_apply(s, &e, &changed), CH_FAILED_PRECONDITION);
    CU_ASSERT_FALSE(changed);
    CU_ASSERT_PTR_NULL(pay_payment_get(s, "ord-x"));
    CU_ASSERT_EQUAL(credit(s, "c-1", 99, NULL), CH_OK);
    CU_ASSERT_EQUAL(pay_apply(s, &e, &changed), CH_FAILED_PRECONDITION);
    assert_account(s, "c-1", 99, 99, 0, 0);
    e.kind = 99;
    CU_ASSERT_EQUAL(pay_apply(s, &e, &changed), CH_INVALID_ARGUMENT);
    pay_entry bad_id = {.kind = PAY_ENTRY_DECLINE};
    snprintf(bad_id.customer_id, sizeof bad_id.customer_id, "c-1");
    CU_ASSERT_EQUAL(pay_apply(s, &bad_id, &changed), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(pay_payment_count(s), 0);
    CU_ASSERT_TRUE(pay_state_consistent(s));
    pay_state_destroy(s);
}

static void test_payment_core_conservation_under_random_operations(void)
{
    pay_state *s = fresh_state();
    unsigned seed = 12345;
    char customer[16], order[32], key[16];
    int64_t credited = 0;

    for (int i = 0; i < 20000; i++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r = (seed >> 8) % 100;
        snprintf(customer, sizeof customer, "c-%u", (seed >> 4) % 13);
        if (r < 25) {
            snprintf(key, sizeof key, "k-%u", (seed >> 12) % 50);
            int64_t amount = 1 + (int64_t)((seed >> 3) % 5000);
            bool known = pay_credit_key_known(s, customer, key);
            ch_status st = credit(s, customer, amount, r < 10 ? key : NULL);
            CU_ASSERT_EQUAL(st, (r < 10 && known) ? CH_ALREADY_EXISTS : CH_OK);
            if (st == CH_OK)
                credited += amount;
        } else if (r < 75) {
            ch_status st;
            snprintf(order, sizeof order, "ord-%u", (seed >> 6) % 4000);
            reserve(s, order, customer, (int64_t)((seed >> 5) % 3000), &st);
            CU_ASSERT(st == CH_OK || st == CH_ALREADY_EXISTS);
        } else {
            snprintf(order, sizeof order, "ord-%u", (seed >> 6) % 4000);
            ch_status st = refund(s, order);
            CU_ASSERT(st == CH_OK || st == CH_ALREADY_EXISTS || st == CH_FAILED_PRECONDITION ||
                      st == CH_NOT_FOUND);
        }
        if (i % 1000 == 0)
            CU_ASSERT_TRUE_FATAL(pay_state_consistent(s));
    }
    CU_ASSERT_TRUE(pay_state_consistent(s));
    int64_t sum = 0;
    for (int c = 0; c < 13; c++) {
        snprintf(customer, sizeof customer, "c-%d", c);
        const pay_account *a = pay_account_get(s, customer);
        if (a) {
            CU_ASSERT_TRUE(pay_account_balanced(a));
            sum += a->credited_cents;
        }
    }
    CU_ASSERT_EQUAL(sum, credited);
    pay_state_destroy(s);
}

static void test_payment_core_list_pages_newest_first(void)
{
    pay_state *s = fresh_state();
    const pay_payment *page[3];
    char token[PAY_TOKEN_MAX] = "", order[32];
    size_t n;
    ch_status st;

    CU_ASSERT_EQUAL(credit(s, "a", 100000, NULL), CH_OK);
    for (int i = 0; i < 10; i++) {
        snprintf(order, sizeof order, "ord-%d", i);
        reserve(s, order, i % 2 ? "b" : "a", 10, &st); /* b was never credited: declined */
    }
    /* everyone, 3 at a time, newest first */
    int seen = 0;
    do {
        CU_ASSERT_EQUAL_FATAL(pay_payment_list(s, token, "", page, 3, &n, token), CH_OK);
        for (size_t i = 0; i < n; i++, seen++) {
            snprintf(order, sizeof order, "ord-%d", 9 - seen);
            CU_ASSERT_STRING_EQUAL(page[i]->order_id, order);
        }
    } while (token[0] && seen < 20);
    CU_ASSERT_EQUAL(seen, 10);

    /* one customer */
    seen = 0;
    token[0] = '\0';
    do {
        CU_ASSERT_EQUAL_FATAL(pay_payment_list(s, token, "b", page, 2, &n, token), CH_OK);
        for (size_t i = 0; i < n; i++, seen++) {
            snprintf(order, sizeof order, "ord-%d", 9 - 2 * seen);
            CU_ASSERT_STRING_EQUAL(page[i]->order_id, order);
            CU_ASSERT_EQUAL(page[i]->status, PAY_DECLINED);
        }
    } while (token[0] && seen < 20);
    CU_ASSERT_EQUAL(seen, 5);
    /* exactly a full last page leaves no token */
    CU_ASSERT_EQUAL(pay_payment_list(s, "", "a", page, 3, &n, token), CH_OK);
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT_STRING_NOT_EQUAL(token, "");
    CU_ASSERT_EQUAL(pay_payment_list(s, token, "a", page, 3, &n, token), CH_OK);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_STRING_EQUAL(token, "");
    /* unknown customer: empty */
    CU_ASSERT_EQUAL(pay_payment_list(s, "", "nobody", page, 3, &n, token), CH_OK);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_STRING_EQUAL(token, "");

    /* tokens this state did not make */
    const char *bad[] = {"x", "p", "p-1", "p11", "p0", "p3x", "p99999999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CU_ASSERT_EQUAL(pay_payment_list(s, bad[i], NULL, page, 3, &n, token), CH_INVALID_ARGUMENT);
    pay_state_destroy(s);
}

/* ---- pay_revert ---- */

enum { PSNAP_CUSTOMERS = 9, PSNAP_ORDERS = 40, PSNAP_LIST = 64 };

typedef char order_name[PAY_ORDER_ID_MAX + 1];

/* What can be observed of one customer: the account and the payment list. */
typedef struct customer_view {
    bool has_account;
    int64_t balance, credited, charged, refunded;
    size_t n_listed;
    order_name listed[PSNAP_LIST];
} customer_view;

typedef struct payment_view {
    bool present;
    pay_status status;
    char customer_id[PAY_CUSTOMER_MAX + 1];
    int64_t amount, balance;
    char reason[PAY_REASON_MAX + 1];
    size_t list_pos;
} payment_view;

/* What can be observed of a state: customers c-1..c-9, payments o-0..o-39,
 * the whole payment list and the counts. */
typedef struct pay_snap {
    customer_view customers[PSNAP_CUSTOMERS];
    payment_view payments[PSNAP_ORDERS];
    size_t n_listed;
    order_name listed[PSNAP_LIST];
    size_t count, accounts;
    bool consistent;
} pay_snap;

/* Walks pay_payment_list page by page (3 a page, so tokens are used); returns
 * how many payments it listed, newest first, into ids (up to cap). */
static size_t list_every(const pay_state *s, const char *customer, order_name *ids, size_t cap)
{
    const pay_payment *page[3];
    char token[PAY_TOKEN_MAX] = "";
    size_t n, total = 0;

    do {
        CU_ASSERT_EQUAL_FATAL(pay_payment_list(s, token, customer, page, 3, &n, token), CH_OK);
        for (size_t i = 0; i < n; i++, total++)
            if (ids && total < cap)
                snprintf(ids[total], sizeof ids[total], "%s", page[i]->order_id);
    } while (token[0]);
    return total;
}

static void pay_snap_take(const pay_state *s, pay_snap *v)
{
    char id[32];

    memset(v, 0, sizeof *v);
    for (int c = 0; c < PSNAP_CUSTOMERS; c++) {
        customer_view *w = &v->customers[c];
        snprintf(id, sizeof id, "c-%d", c + 1);
        const pay_account *a = pay_account_get(s, id);
        if (a) {
            w->has_account = true;
            w->balance = a->balance_cents;
            w->credited = a->credited_cents;
            w->charged = a->charged_cents;
            w->refunded = a->refunded_cents;
        }
        w->n_listed = list_every(s, id, w->listed, PSNAP_LIST);
        CU_ASSERT_TRUE_FATAL(w->n_listed <= PSNAP_LIST);
    }
    for (int o = 0; o < PSNAP_ORDERS; o++) {
        payment_view *w = &v->payments[o];
        snprintf(id, sizeof id, "o-%d", o);
        const pay_payment *p = pay_payment_get(s, id);
        if (!p)
            continue;
        CU_ASSERT_STRING_EQUAL(p->order_id, id);
        w->present = true;
        w->status = p->status;
        snprintf(w->customer_id, sizeof w->customer_id, "%s", p->customer_id);
        w->amount = p->amount_cents;
        w->balance = p->balance_cents;
        snprintf(w->reason, sizeof w->reason, "%s", p->reason);
        w->list_pos = p->list_pos;
    }
    v->n_listed = list_every(s, NULL, v->listed, PSNAP_LIST);
    CU_ASSERT_TRUE_FATAL(v->n_listed <= PSNAP_LIST);
    v->count = pay_payment_count(s);
    v->accounts = pay_account_count(s);
    v->consistent = pay_state_consistent(s);
}

/* Every field is set explicitly over a zeroed struct: comparing bytes
 * compares what was observed. */
static bool pay_snap_same(const pay_snap *a, const pay_snap *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

static pay_entry decide_charge(const pay_state *s, const char *order, const char *customer, int64_t amount)
{
    pay_entry e;
    char err[256];
    CU_ASSERT_EQUAL_FATAL(pay_decide_charge(s, order, customer, amount, NULL, &e, err, sizeof err), CH_OK);
    return e;
}

static pay_entry decide_refund(const pay_state *s, const char *order)
{
    pay_entry e;
    CU_ASSERT_EQUAL_FATAL(pay_decide_refund(s, order, NULL, &e), CH_OK);
    return e;
}

static void pay_apply_changes(pay_state *s, const pay_entry *e)
{
    bool changed = false;
    CU_ASSERT_EQUAL_FATAL(pay_apply(s, e, &changed), CH_OK);
    CU_ASSERT_TRUE(changed);
}

/* Applies e, checks that it changed what can be seen, reverts it, checks
 * that the state is as before, and that e applies again the same way. */
static void pay_apply_then_revert(pay_state *s, const pay_entry *e)
{
    pay_snap *before = malloc(sizeof *before), *after = malloc(sizeof *after), *back = malloc(sizeof *back);

    CU_ASSERT_FATAL(before && after && back);
    pay_snap_take(s, before);
    CU_ASSERT_TRUE(before->consistent);
    pay_apply_changes(s, e);
    pay_snap_take(s, after);
    CU_ASSERT_FALSE(pay_snap_same(before, after));
    CU_ASSERT_EQUAL(pay_revert(s, e), CH_OK);
    pay_snap_take(s, back);
    CU_ASSERT_TRUE(pay_snap_same(before, back));
    pay_apply_changes(s, e);
    pay_snap_take(s, back);
    CU_ASSERT_TRUE(pay_snap_same(after, back));
    CU_ASSERT_EQUAL(pay_revert(s, e), CH_OK);
    free(before);
    free(after);
    free(back);
}

/* c-1, c-2, c-6 credited; o-0 charged (c-1), o-1 declined (c-3, never
 * credited), o-2 charged and refunded (c-2), o-3 charged 0 (c-1), o-4
 * charged (c-2). */
static void pay_revert_history(pay_state *s)
{
    ch_status st;

    CU_ASSERT_EQUAL(credit(s, "c-1", 1000, NULL), CH_OK);
    CU_ASSERT_EQUAL(credit(s, "c-2", 500, "k"), CH_OK);
    CU_ASSERT_EQUAL(credit(s, "c-6", 50, NULL), CH_OK);
    CU_ASSERT_EQUAL(reserve(s, "o-0", "c-1", 300, &st), PAY_ENTRY_CHARGE);
    CU_ASSERT_EQUAL(reserve(s, "o-1", "c-3", 100, &st), PAY_ENTRY_DECLINE);
    CU_ASSERT_EQUAL(reserve(s, "o-2", "c-2", 200, &st), PAY_ENTRY_CHARGE);
    CU_ASSERT_EQUAL(refund(s, "o-2"), CH_OK);
    CU_ASSERT_EQUAL(reserve(s, "o-3", "c-1", 0, &st), PAY_ENTRY_CHARGE);
    CU_ASSERT_EQUAL(reserve(s, "o-4", "c-2", 250, &st), PAY_ENTRY_CHARGE);
    CU_ASSERT_TRUE_FATAL(pay_state_consistent(s));
}

static void test_payment_core_revert_each_kind_restores_the_state(void)
{
    pay_state *s = fresh_state();
    pay_entry e;
    char err[256];

    pay_revert_history(s);

    e = decide_charge(s, "o-10", "c-1", 100); /* an account with payments */
    CU_ASSERT_EQUAL(e.kind, PAY_ENTRY_CHARGE);
    pay_apply_then_revert(s, &e);
    e = decide_charge(s, "o-11", "c-4", 0); /* a customer never seen: a new record */
    CU_ASSERT_EQUAL(e.kind, PAY_ENTRY_CHARGE);
    pay_apply_then_revert(s, &e);
    e = decide_charge(s, "o-12", "c-3", 999); /* a record without account, with a payment */
    CU_ASSERT_EQUAL(e.kind, PAY_ENTRY_DECLINE);
    pay_apply_then_revert(s, &e);
    e = decide_charge(s, "o-13", "c-5", 1); /* a customer never seen */
    CU_ASSERT_EQUAL(e.kind, PAY_ENTRY_DECLINE);
    pay_apply_then_revert(s, &e);
    e = decide_charge(s, "o-14", "c-6", 51); /* an account without payments */
    CU_ASSERT_EQUAL(e.kind, PAY_ENTRY_DECLINE);
    pay_apply_then_revert(s, &e);
    e = decide_refund(s, "o-0");
    pay_apply_then_revert(s, &e);
    e = decide_refund(s, "o-4");
    pay_apply_then_revert(s, &e);
    CU_ASSERT_EQUAL_FATAL(pay_decide_credit(s, "c-1", 10, NULL, &e, err, sizeof err), CH_OK);
    pay_apply_then_revert(s, &e); /* an account with payments */
    CU_ASSERT_EQUAL_FATAL(pay_decide_credit(s, "c-2", 10, "k2", &e, err, sizeof err), CH_OK);
    pay_apply_then_revert(s, &e); /* keyed: the key is forgotten again */
    CU_ASSERT_FALSE(pay_credit_key_known(s, "c-2", "k2"));
    CU_ASSERT_TRUE(pay_credit_key_known(s, "c-2", "k"));
    CU_ASSERT_EQUAL_FATAL(pay_decide_credit(s, "c-7", 10, "k7", &e, err, sizeof err), CH_OK);
    pay_apply_then_revert(s, &e); /* a new account: gone again */
    CU_ASSERT_PTR_NULL(pay_account_get(s, "c-7"));
    CU_ASSERT_EQUAL_FATAL(pay_decide_credit(s, "c-3", 10, NULL, &e, err, sizeof err), CH_OK);
    pay_apply_then_revert(s, &e); /* a record with payments but no account: no account again */
    CU_ASSERT_PTR_NULL(pay_account_get(s, "c-3"));

    assert_account(s, "c-1", 700, 1000, 300, 0);
    assert_account(s, "c-2", 250, 500, 450, 200);
    CU_ASSERT_EQUAL(pay_payment_get(s, "o-4")->status, PAY_CHARGED);
    CU_ASSERT_PTR_NULL(pay_payment_get(s, "o-10"));
    CU_ASSERT_PTR_NULL(pay_payment_get(s, "o-13"));
    CU_ASSERT_EQUAL(pay_payment_count(s), 5);
    CU_ASSERT_EQUAL(list_every(s, "c-4", NULL, 0), 0);
    CU_ASSERT_EQUAL(list_every(s, "c-3", NULL, 0), 1);
    CU_ASSERT_TRUE(pay_state_consistent(s));
    pay_state_destroy(s);
}

static void test_payment_core_revert_batch_newest_first(void)
{
    enum { MAX = 16 };
    pay_state *s = fresh_state();
    pay_entry b[MAX];
    pay_snap *before = malloc(sizeof *before), *after = malloc(sizeof *after), *now = malloc(sizeof *now);
    size_t n = 0;

    CU_ASSERT_FATAL(before && after && now);
    pay_revert_history(s);
    pay_snap_take(s, before);

    /* One batch, each decision taken on the state the previous ones left and
     * applied at once, as the service will do. */
#define STEP(decision)                                                                                       \
    do {                                                                                                     \
        b[n] = (decision);                                                                                   \
        pay_apply_changes(s, &b[n++]);                                                                       \
    } while (0)
    STEP(decide_charge(s, "o-20", "c-1", 100));
    STEP(decide_charge(s, "o-21", "c-1", 200)); /* the same customer */
    STEP(decide_refund(s, "o-0"));              /* an earlier charge */
    STEP(decide_charge(s, "o-22", "c-7", 5));   /* declined: a new customer record */
    STEP(decide_charge(s, "o-23", "c-7", 0));   /* charged: the same record */
    STEP(decide_refund(s, "o-20"));             /* charged in this batch */
    STEP(decide_charge(s, "o-24", "c-1", 650)); /* needs what the refunds gave back */
    STEP(decide_charge(s, "o-25", "c-2", 10000));
    STEP(decide_refund(s, "o-4"));
#undef STEP
    CU_ASSERT_EQUAL(b[3].kind, PAY_ENTRY_DECLINE);
    CU_ASSERT_EQUAL(b[6].kind, PAY_ENTRY_CHARGE);
    CU_ASSERT_EQUAL(b[7].kind, PAY_ENTRY_DECLINE);
    pay_snap_take(s, after);
    CU_ASSERT_TRUE(after->consistent);
    CU_ASSERT_FALSE(pay_snap_same(before, after));

    for (size_t i = n; i-- > 0;)
        CU_ASSERT_EQUAL(pay_revert(s, &b[i]), CH_OK);
    pay_snap_take(s, now);
    CU_ASSERT_TRUE(pay_snap_same(before, now));
    assert_account(s, "c-1", 700, 1000, 300, 0);
    CU_ASSERT_EQUAL(pay_payment_count(s), 5);

    /* the same entries again give the same state as the first time */
    for (size_t i = 0; i < n; i++)
        pay_apply_changes(s, &b[i]);
    pay_snap_take(s, now);
    CU_ASSERT_TRUE(pay_snap_same(after, now));

    free(before);
    free(after);
    free(now);
    pay_state_destroy(s);
}

/* Hundreds of payments (the maps grow and probe runs form), the newest K
 * reverted newest first: every other payment and customer is still found,
 * the reverted ones are gone. Odd orders are declines of customers seen
 * once, so customer records are removed too, and each payment is followed
 * by the credit of a new customer, whose record stays: so customer records
 * are removed out of insertion order, which a plain emptied slot would not
 * survive. */
static void test_payment_core_revert_deletes_under_collisions(void)
{
    enum { N = 900, K = 400 };
    pay_state *s = fresh_state();
    pay_entry *b = calloc(N, sizeof *b);
    char order[32], customer[32];
    int64_t charged[10] = {0};

    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    for (int c = 0; c < 10; c++) {
        snprintf(customer, sizeof customer, "c-%d", c);
        CU_ASSERT_EQUAL(credit(s, customer, 100000, NULL), CH_OK);
    }
    for (int i = 0; i < N; i++) {
        snprintf(order, sizeof order, "p-%d", i);
        if (i % 2 == 0)
            snprintf(customer, sizeof customer, "c-%d", i % 10);
        else
            snprintf(customer, sizeof customer, "u-%d", i);
        b[i] = decide_charge(s, order, customer, 1 + i % 7);
        CU_ASSERT_EQUAL(b[i].kind, i % 2 == 0 ? PAY_ENTRY_CHARGE : PAY_ENTRY_DECLINE);
        pay_apply_changes(s, &b[i]);
        snprintf(customer, sizeof customer, "v-%d", i);
        CU_ASSERT_EQUAL(credit(s, customer, 1 + i, NULL), CH_OK);
        if (i % 2 == 0 && i < N - K)
            charged[i % 10] += 1 + i % 7;
    }
    for (int i = N; i-- > N - K;)
        CU_ASSERT_EQUAL(pay_revert(s, &b[i]), CH_OK);
    CU_ASSERT_EQUAL(pay_payment_count(s), N - K);
    CU_ASSERT_TRUE(pay_state_consistent(s));
    for (int i = 0; i < N; i++) {
        snprintf(order, sizeof order, "p-%d", i);
        const pay_payment *p = pay_payment_get(s, order);
        if (i >= N - K) {
            CU_ASSERT_PTR_NULL(p);
        } else {
            CU_ASSERT_PTR_NOT_NULL(p);
            if (p)
                CU_ASSERT_EQUAL(p->list_pos, (size_t)i);
        }
        if (i % 2 == 1) { /* the record of a customer seen once goes with its payment */
            snprintf(customer, sizeof customer, "u-%d", i);
            CU_ASSERT_EQUAL(list_every(s, customer, NULL, 0), i < N - K ? 1 : 0);
        }
        snprintf(customer, sizeof customer, "v-%d", i);
        assert_account(s, customer, 1 + i, 1 + i, 0, 0);
    }
    CU_ASSERT_EQUAL(pay_account_count(s), 10 + N);
    for (int c = 0; c < 10; c++) {
        snprintf(customer, sizeof customer, "c-%d", c);
        assert_account(s, customer, 100000 - charged[c], 100000, charged[c], 0);
    }
    CU_ASSERT_EQUAL(list_every(s, NULL, NULL, 0), N - K);

    /* the freed slots take the reverted payments again, at the same places */
    for (int i = N - K; i < N; i++)
        pay_apply_changes(s, &b[i]);
    CU_ASSERT_EQUAL(pay_payment_count(s), N);
    for (int i = 0; i < N; i++) {
        snprintf(order, sizeof order, "p-%d", i);
        const pay_payment *p = pay_payment_get(s, order);
        CU_ASSERT_PTR_NOT_NULL(p);
        if (p)
            CU_ASSERT_EQUAL(p->list_pos, (size_t)i);
    }
    CU_ASSERT_TRUE(pay_state_consistent(s));
    free(b);
    pay_state_destroy(s);
}

static void test_payment_core_revert_refuses_what_was_not_applied(void)
{
    pay_state *s = fresh_state();
    pay_snap *before = malloc(sizeof *before), *now = malloc(sizeof *now);
    pay_entry e;
    char err[256];

    CU_ASSERT_FATAL(before && now);
    pay_revert_history(s);
    pay_snap_take(s, before);

    /* a credit of a customer with no account, or more than the balance */
    CU_ASSERT_EQUAL_FATAL(pay_decide_credit(s, "c-none", 10, NULL, &e, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_NOT_FOUND);
    CU_ASSERT_EQUAL_FATAL(pay_decide_credit(s, "c-6", 51, NULL, &e, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_FAILED_PRECONDITION); /* balance 50 */
    e.kind = 99;
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_INVALID_ARGUMENT);

    /* o-0 is CHARGED, but not the newest decision */
    e = decide_refund(s, "o-0");
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_FAILED_PRECONDITION); /* never refunded */
    e.kind = PAY_ENTRY_CHARGE;
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_FAILED_PRECONDITION);
    e.kind = PAY_ENTRY_DECLINE;
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_FAILED_PRECONDITION);
    /* o-4 is the newest, CHARGED: not by a decline, nor by another amount or customer */
    e = decide_refund(s, "o-4");
    e.kind = PAY_ENTRY_DECLINE;
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_FAILED_PRECONDITION);
    e.kind = PAY_ENTRY_CHARGE;
    e.amount_cents = 249;
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_FAILED_PRECONDITION);
    e.amount_cents = 250;
    snprintf(e.customer_id, sizeof e.customer_id, "c-1");
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_FAILED_PRECONDITION);
    /* o-2 is REFUNDED: its charge cannot go before its refund */
    e = decide_charge(s, "o-9", "c-2", 200);
    snprintf(e.order_id, sizeof e.order_id, "o-2");
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_FAILED_PRECONDITION);
    /* unknown orders */
    snprintf(e.order_id, sizeof e.order_id, "o-none");
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_NOT_FOUND);
    e.kind = PAY_ENTRY_REFUND;
    CU_ASSERT_EQUAL(pay_revert(s, &e), CH_NOT_FOUND);
    pay_snap_take(s, now);
    CU_ASSERT_TRUE(pay_snap_same(before, now));

    /* a refund whose money was spent since cannot be taken back */
    pay_entry r;
    ch_status st;
    CU_ASSERT_EQUAL(credit(s, "c-9", 100, NULL), CH_OK);
    CU_ASSERT_EQUAL(reserve(s, "o-30", "c-9", 100, &st), PAY_ENTRY_CHARGE);
    r = decide_refund(s, "o-30");
    pay_apply_changes(s, &r);
    CU_ASSERT_EQUAL(reserve(s, "o-31", "c-9", 100, &st), PAY_ENTRY_CHARGE);
    pay_snap_take(s, before);
    CU_ASSERT_EQUAL(pay_revert(s, &r), CH_FAILED_PRECONDITION);
    pay_snap_take(s, now);
    CU_ASSERT_TRUE(pay_snap_same(before, now));
    assert_account(s, "c-9", 0, 100, 200, 100);
    CU_ASSERT_EQUAL(pay_payment_get(s, "o-30")->status, PAY_REFUNDED);

    free(before);
    free(now);
    pay_state_destroy(s);
}

int main(void)
{
    static const cu_test tests[] = {
        {"validate credit names the field", test_payment_core_validate_credit_names_the_field},
        {"credit creates and adds", test_payment_core_credit_creates_and_adds},
        {"credit key credits once", test_payment_core_credit_key_credits_once},
        {"account totals are capped", test_payment_core_account_totals_are_capped},
        {"charge when balance covers", test_payment_core_charge_when_balance_covers},
        {"decline when balance short", test_payment_core_decline_when_balance_short},
        {"one payment per order", test_payment_core_one_payment_per_order},
        {"charge rejects bad input", test_payment_core_charge_rejects_bad_input},
        {"refund only charged, once", test_payment_core_refund_only_charged_and_once},
        {"reducer refuses overdraft entries", test_payment_core_reducer_refuses_overdraft_entries},
        {"conservation under random operations", test_payment_core_conservation_under_random_operations},
        {"list pages newest first", test_payment_core_list_pages_newest_first},
        {"revert each kind restores the state", test_payment_core_revert_each_kind_restores_the_state},
        {"revert a batch newest first", test_payment_core_revert_batch_newest_first},
        {"revert deletes under collisions", test_payment_core_revert_deletes_under_collisions},
        {"revert refuses what was not applied", test_payment_core_revert_refuses_what_was_not_applied},
        {NULL, NULL},
    };
    return cu_run("payment_core", NULL, NULL, tests);
}
