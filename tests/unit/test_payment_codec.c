/* test_payment_codec.c: payment's events and the core's entries, both ways:
 * what the service writes to its stream is what its state folds back. */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_run.h"
#include "payment_codec.h"

#define CAUSE "0123456789abcdef0123456789abcdef"

/* e as an event on the wire and back: encoded, decoded, converted. */
static void round_trip(const pay_entry *e, pay_entry *back, choreo_events_v1_Envelope *env)
{
    uint8_t buf[EVENT_MAX_BYTES];
    size_t len = 0;
    char reason[160] = "";

    CU_ASSERT_EQUAL_FATAL(payment_event_of(e, CAUSE, NULL, env), CH_OK);
    CU_ASSERT_EQUAL_FATAL(event_encode(env, buf, sizeof buf, &len, reason, sizeof reason), CH_OK);
    CU_ASSERT_EQUAL_FATAL(event_decode(buf, len, env, reason, sizeof reason), CH_OK);
    CU_ASSERT_EQUAL_FATAL(payment_entry_of(env, back), CH_OK);
}

/* Decisions recorded as events replay into a fresh state as the same state;
 * each event's type, order and subject key are the ones its entry means. */
static void test_payment_codec_events_replay_to_the_same_state(void)
{
    pay_state *live = NULL, *replayed = NULL;
    pay_entry log[16], e, back;
    choreo_events_v1_Envelope *env = malloc(sizeof *env);
    size_t n = 0;
    char err[256];

    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    CU_ASSERT_EQUAL_FATAL(pay_state_create(&live), CH_OK);
    CU_ASSERT_EQUAL_FATAL(pay_state_create(&replayed), CH_OK);
#define RECORD(decide_call)                                                                                  \
    do {                                                                                                     \
        CU_ASSERT_EQUAL_FATAL((decide_call), CH_OK);                                                         \
        CU_ASSERT_EQUAL(pay_apply(live, &e, NULL), CH_OK);                                                   \
        log[n++] = e;                                                                                        \
    } while (0)
    RECORD(pay_decide_credit(live, "c-1", 5000, "first", &e, err, sizeof err));
    RECORD(pay_decide_credit(live, "c-2", 100, NULL, &e, err, sizeof err));
    RECORD(pay_decide_charge(live, "ord-1", "c-1", 3000, CAUSE, &e, err, sizeof err));
    RECORD(pay_decide_charge(live, "ord-2", "c-2", 3000, NULL, &e, err, sizeof err));
    RECORD(pay_decide_refund(live, "ord-1", NULL, &e));
    RECORD(pay_decide_charge(live, "ord-3", "c-1", 4500, NULL, &e, err, sizeof err));
#undef RECORD
    static const char *const types[] = {"payment.credited", "payment.credited", "payment.processed",
                                        "payment.failed",   "payment.refunded", "payment.processed"};
    for (size_t i = 0; i < n; i++) {
        round_trip(&log[i], &back, env);
        CU_ASSERT_STRING_EQUAL(env->type, types[i]);
        CU_ASSERT_STRING_EQUAL(env->causation_id, CAUSE);
        if (log[i].kind == PAY_ENTRY_CREDIT) {
            CU_ASSERT_STRING_EQUAL(env->order_id, ""); /* a customer's event, not an order's */
            CU_ASSERT_STRING_EQUAL(event_key(env), log[i].customer_id);
        } else {
            CU_ASSERT_STRING_EQUAL(env->order_id, log[i].order_id);
            CU_ASSERT_STRING_EQUAL(event_key(env), log[i].order_id);
        }
        snprintf(log[i].cause_event_id, sizeof log[i].cause_event_id, "%s", CAUSE); /* the event's cause */
        CU_ASSERT_EQUAL(memcmp(&back, &log[i], sizeof back), 0);
        CU_ASSERT_EQUAL(pay_apply(replayed, &back, NULL), CH_OK);
    }
    const char *customers[] = {"c-1", "c-2"};
    for (int i = 0; i < 2; i++) {
        const pay_account *a = pay_account_get(live, customers[i]);
        const pay_account *b = pay_account_get(replayed, customers[i]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(b);
        CU_ASSERT_EQUAL(memcmp(a, b, sizeof *a), 0);
    }
    const char *orders[] = {"ord-1", "ord-2", "ord-3"};
    for (int i = 0; i < 3; i++) {
        const pay_payment *a = pay_payment_get(live, orders[i]);
        const pay_payment *b = pay_payment_get(replayed, orders[i]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(b);
        CU_ASSERT_EQUAL(memcmp(a, b, sizeof *a), 0);
    }
    CU_ASSERT_STRING_EQUAL(pay_payment_get(replayed, "ord-2")->reason,
                           "insufficient funds: balance 100 < total 3000");
    CU_ASSERT_TRUE(pay_credit_key_known(replayed, "c-1", "first"));
    free(env);
    pay_state_destroy(live);
    pay_state_destroy(replayed);
}

/* Only payment's own events are its entries. */
static void test_payment_codec_refuses_other_events(void)
{
    choreo_events_v1_Envelope *env = malloc(sizeof *env);
    pay_entry e = {.kind = 99};

    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    CU_ASSERT_EQUAL(event_init(env, EVENT_INVENTORY_RESERVED, "ord-1", NULL, "x", NULL), CH_OK);
    CU_ASSERT_EQUAL(payment_entry_of(env, &e), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(event_init(env, EVENT_ORDER_CANCEL_REQUESTED, "ord-1", NULL, "x", NULL), CH_OK);
    CU_ASSERT_EQUAL(payment_entry_of(env, &e), CH_INVALID_ARGUMENT);
    e.kind = 99;
    CU_ASSERT_EQUAL(payment_event_of(&e, NULL, NULL, env), CH_INVALID_ARGUMENT);
    free(env);
}

int main(void)
{
    static const cu_test tests[] = {
        {"events replay to the same state", test_payment_codec_events_replay_to_the_same_state},
        {"refuses other events", test_payment_codec_refuses_other_events},
        {NULL, NULL},
    };
    return cu_run("payment_codec", NULL, NULL, tests);
}
