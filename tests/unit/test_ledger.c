/* test_ledger.c: the compare-and-set ledger against a real nats-server
 * (file storage, temp dir, free port) started by tests/support/natsd. Each
 * "replica" is a ledger with its own bus connection and its own state. */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_run.h"
#include "ledger.h"
#include "log.h"
#include "natsd.h"
#include "proc.h"

static natsd *server;

/* ---- a replica: its own state, folded from the ledger ---- */

#define MAX_ENTRIES 32

typedef struct replica {
    int calls; /* apply() invocations, skipped entries included */
    int n;     /* entries in the state */
    char data[MAX_ENTRIES][32];
    uint64_t seq[MAX_ENTRIES];
    uint64_t max_len; /* longest entry applied */
} replica;

/* Entries starting with "bad" are corrupt: the apply fails and the entry is
 * not part of the state. */
static ch_status apply(const uint8_t *data, size_t len, uint64_t seq, void *ctx)
{
    replica *r = ctx;
    r->calls++;
    if (len >= 3 && memcmp(data, "bad", 3) == 0) {
        return CH_INVALID_ARGUMENT;
    }
    if (r->n >= MAX_ENTRIES) {
        return CH_NO_MEMORY;
    }
    snprintf(r->data[r->n], sizeof r->data[r->n], "%.*s", (int)(len < 31 ? len : 31), (const char *)data);
    r->seq[r->n] = seq;
    r->n++;
    if (len > r->max_len) {
        r->max_len = len;
    }
    return CH_OK;
}

/* A replica of the service: its own connection, ledger and state. */
typedef struct node {
    bus *b;
    ledger *l;
    replica r;
} node;

/* Opens (again) n's ledger with a fresh state, as a restarted replica does. */
static void node_reopen(node *n, const char *stream, const char *subject)
{
    ledger_close(n->l);
    n->l = NULL;
    memset(&n->r, 0, sizeof n->r);
    ledger_spec spec = {.stream = stream, .subject = subject, .apply = apply, .ctx = &n->r};
    CU_ASSERT_EQUAL_FATAL(ledger_open(&n->l, n->b, &spec), CH_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(n->l);
}

static void node_start(node *n, const char *stream, const char *subject)
{
    bus_options o = {.url = natsd_url(server), .name = "test_ledger"};
    memset(n, 0, sizeof *n);
    CU_ASSERT_EQUAL_FATAL(bus_create(&n->b, &o), CH_OK);
    node_reopen(n, stream, subject);
}

static void node_stop(node *n)
{
    ledger_close(n->l);
    bus_destroy(n->b);
}

static ch_status append(node *n, const char *data, const char *msg_id, uint64_t *seq)
{
    return ledger_append(n->l, data, strlen(data), msg_id, 2000, seq);
}

static uint64_t stream_msgs(node *n, const char *stream)
{
    uint64_t msgs = 0;
    CU_ASSERT_EQUAL(bus_stream_info(n->b, stream, &msgs, NULL), CH_OK);
    return msgs;
}

/* ---- tests ---- */

static void test_ledger_open_empty_applies_nothing(void)
{
    node a;
    node_start(&a, "LEMPTY", "lempty.ledger");
    CU_ASSERT_EQUAL(a.r.calls, 0);
    CU_ASSERT_EQUAL(a.r.n, 0);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 0);
    CU_ASSERT_EQUAL(ledger_catch_up(a.l), CH_OK);
    CU_ASSERT_EQUAL(a.r.calls, 0);
    CU_ASSERT_EQUAL(stream_msgs(&a, "LEMPTY"), 0);
    node_stop(&a);
    ledger_close(NULL);
}

static void test_ledger_open_rejects_bad_spec(void)
{
    node a;
    node_start(&a, "LGOOD", "lgood.ledger");
    ledger *l = NULL;
    ledger_spec no_apply = {.stream = "LBAD", .subject = "lbad.ledger", .ctx = &a.r};
    CU_ASSERT_EQUAL(ledger_open(&l, a.b, &no_apply), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(l);
    char long_subject[200];
    memset(long_subject, 'x', sizeof long_subject - 1);
    long_subject[sizeof long_subject - 1] = '\0';
    ledger_spec too_long = {.stream = "LBAD", .subject = long_subject, .apply = apply, .ctx = &a.r};
    CU_ASSERT_EQUAL(ledger_open(&l, a.b, &too_long), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(l);
    CU_ASSERT_EQUAL(bus_stream_info(a.b, "LBAD", NULL, NULL), CH_NOT_FOUND);
    node_stop(&a);
}

static void test_ledger_append_applies_once_and_returns_seq(void)
{
    node a;
    node_start(&a, "LAPPEND", "lappend.ledger");
    uint64_t seq = 0;
    CU_ASSERT_EQUAL(append(&a, "first", "id-1", &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 1);
    CU_ASSERT_EQUAL(a.r.calls, 1);
    CU_ASSERT_EQUAL_FATAL(a.r.n, 1);
    CU_ASSERT_STRING_EQUAL(a.r.data[0], "first");
    CU_ASSERT_EQUAL(a.r.seq[0], 1);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 1);
    CU_ASSERT_EQUAL(append(&a, "second", NULL, NULL), CH_OK); /* seq and msg id are optional */
    CU_ASSERT_EQUAL(a.r.calls, 2);
    CU_ASSERT_EQUAL_FATAL(a.r.n, 2);
    CU_ASSERT_STRING_EQUAL(a.r.data[1], "second");
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 2);
    /* Nothing new to catch up on: no apply. */
    CU_ASSERT_EQUAL(ledger_catch_up(a.l), CH_OK);
    CU_ASSERT_EQUAL(a.r.calls, 2);
    CU_ASSERT_EQUAL(stream_msgs(&a, "LAPPEND"), 2);
    node_stop(&a);
}

static void test_ledger_conflict_catches_up_then_retry_succeeds(void)
{
    node a, b;
    node_start(&a, "LRACE", "lrace.ledger");
    node_start(&b, "LRACE", "lrace.ledger");
    uint64_t seq = 0;

    CU_ASSERT_EQUAL(append(&a, "one", "race-1", &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 1);
    /* b decided from an empty state: it lost the race, and now knows why. */
    seq = 99;
    CU_ASSERT_EQUAL(append(&b, "two", "race-2", &seq), CH_CONFLICT);
    CU_ASSERT_EQUAL(seq, 99);
    CU_ASSERT_EQUAL_FATAL(b.r.n, 1);
    CU_ASSERT_STRING_EQUAL(b.r.data[0], "one");
    CU_ASSERT_EQUAL(b.r.seq[0], 1);
    CU_ASSERT_EQUAL(ledger_last_seq(b.l), 1);
    CU_ASSERT_EQUAL(stream_msgs(&a, "LRACE"), 1);
    /* Deciding again from the fresh state succeeds. */
    CU_ASSERT_EQUAL(append(&b, "two", "race-2", &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 2);
    CU_ASSERT_EQUAL_FATAL(b.r.n, 2);
    CU_ASSERT_STRING_EQUAL(b.r.data[1], "two");
    /* Now a is behind: same dance the other way round. */
    CU_ASSERT_EQUAL(append(&a, "three", "race-3", &seq), CH_CONFLICT);
    CU_ASSERT_EQUAL_FATAL(a.r.n, 2);
    CU_ASSERT_STRING_EQUAL(a.r.data[1], "two");
    CU_ASSERT_EQUAL(append(&a, "three", "race-3", &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 3);
    /* ledger_catch_up brings b level without appending. */
    CU_ASSERT_EQUAL(ledger_catch_up(b.l), CH_OK);
    CU_ASSERT_EQUAL_FATAL(b.r.n, 3);
    CU_ASSERT_STRING_EQUAL(b.r.data[2], "three");
    CU_ASSERT_EQUAL(ledger_last_seq(b.l), 3);
    /* Each replica applied each entry exactly once. */
    CU_ASSERT_EQUAL(a.r.calls, 3);
    CU_ASSERT_EQUAL(b.r.calls, 3);
    CU_ASSERT_EQUAL(stream_msgs(&a, "LRACE"), 3);
    node_stop(&a);
    node_stop(&b);
}

static void test_ledger_duplicate_msg_id_appends_and_applies_nothing_twice(void)
{
    node a, b;
    node_start(&a, "LDUP", "ldup.ledger");
    node_start(&b, "LDUP", "ldup.ledger");
    uint64_t seq = 0;

    CU_ASSERT_EQUAL(append(&a, "reserve", "dup-1", &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 1);
    /* A re-run handler on the same replica. */
    seq = 0;
    CU_ASSERT_EQUAL(append(&a, "reserve", "dup-1", &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 1);
    CU_ASSERT_EQUAL(a.r.calls, 1);
    CU_ASSERT_EQUAL(a.r.n, 1);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 1);
    /* A redelivery to the other replica, which has not seen the entry yet:
     * it is applied there once (it is in the ledger), never stored twice. */
    seq = 0;
    CU_ASSERT_EQUAL(append(&b, "reserve", "dup-1", &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 1);
    CU_ASSERT_EQUAL(b.r.calls, 1);
    CU_ASSERT_EQUAL_FATAL(b.r.n, 1);
    CU_ASSERT_STRING_EQUAL(b.r.data[0], "reserve");
    CU_ASSERT_EQUAL(append(&b, "reserve", "dup-1", &seq), CH_OK);
    CU_ASSERT_EQUAL(b.r.calls, 1);
    CU_ASSERT_EQUAL(ledger_last_seq(b.l), 1);
    CU_ASSERT_EQUAL(stream_msgs(&a, "LDUP"), 1);
    /* A new id is a new entry. */
    CU_ASSERT_EQUAL(append(&b, "reserve", "dup-2", &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 2);
    CU_ASSERT_EQUAL(b.r.n, 2);
    CU_ASSERT_EQUAL(stream_msgs(&a, "LDUP"), 2);
    node_stop(&a);
    node_stop(&b);
}

static void test_ledger_reopen_replays_every_entry_in_order(void)
{
    static const char *const entries[] = {"e1", "e2", "e3", "e4", "e5", "e6", "e7"};
    const int count = (int)(sizeof entries / sizeof entries[0]);
    node a;
    node_start(&a, "LREPLAY", "lreplay.ledger");
    for (int i = 0; i < count; i++) {
        CU_ASSERT_EQUAL(append(&a, entries[i], entries[i], NULL), CH_OK);
    }
    replica live;
    memcpy(&live, &a.r, sizeof live);

    node_reopen(&a, "LREPLAY", "lreplay.ledger");
    CU_ASSERT_EQUAL(a.r.calls, count);
    CU_ASSERT_EQUAL_FATAL(a.r.n, count);
    for (int i = 0; i < count; i++) {
        CU_ASSERT_STRING_EQUAL(a.r.data[i], entries[i]);
        CU_ASSERT_EQUAL(a.r.seq[i], (uint64_t)i + 1);
    }
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), (uint64_t)count);
    CU_ASSERT_EQUAL(memcmp(&a.r, &live, sizeof live), 0); /* replayed state == live state */
    node_stop(&a);
}

static void test_ledger_apply_error_is_skipped(void)
{
    node a;
    node_start(&a, "LSKIP", "lskip.ledger");
    uint64_t seq = 0;
    CU_ASSERT_EQUAL(append(&a, "ok-1", NULL, NULL), CH_OK);
    /* The live apply fails: stored, skipped, and the ledger moves past it. */
    CU_ASSERT_EQUAL(append(&a, "bad-2", NULL, &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 2);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 2);
    CU_ASSERT_EQUAL(append(&a, "ok-3", NULL, &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 3);
    CU_ASSERT_EQUAL(a.r.calls, 3);
    CU_ASSERT_EQUAL(a.r.n, 2);

    /* Replay skips the corrupt entry and applies the rest. */
    node_reopen(&a, "LSKIP", "lskip.ledger");
    CU_ASSERT_EQUAL(a.r.calls, 3);
    CU_ASSERT_EQUAL_FATAL(a.r.n, 2);
    CU_ASSERT_STRING_EQUAL(a.r.data[0], "ok-1");
    CU_ASSERT_STRING_EQUAL(a.r.data[1], "ok-3");
    CU_ASSERT_EQUAL(a.r.seq[1], 3);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 3);
    node_stop(&a);
}

static void test_ledger_oversized_entry_refused(void)
{
    node a;
    node_start(&a, "LBIG", "lbig.ledger");
    uint8_t *big = malloc(LEDGER_MAX_ENTRY + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'z', LEDGER_MAX_ENTRY + 1);
    uint64_t seq = 77;
    CU_ASSERT_EQUAL(ledger_append(a.l, big, LEDGER_MAX_ENTRY + 1, "big-1", 2000, &seq),
                    CH_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(seq, 77);
    CU_ASSERT_EQUAL(a.r.calls, 0);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 0);
    CU_ASSERT_EQUAL(stream_msgs(&a, "LBIG"), 0);
    /* An entry of exactly the cap is stored (its headers do not count against it). */
    CU_ASSERT_EQUAL(ledger_append(a.l, big, LEDGER_MAX_ENTRY, "big-2", 2000, &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 1);
    CU_ASSERT_EQUAL(a.r.max_len, LEDGER_MAX_ENTRY);
    CU_ASSERT_EQUAL(stream_msgs(&a, "LBIG"), 1);
    free(big);
    node_stop(&a);
}

/* Runs last: stops the server, then brings it back for the clean-up. */
static void test_ledger_append_fails_without_server_and_changes_nothing(void)
{
    node a;
    node_start(&a, "LDOWN", "ldown.ledger");
    uint64_t seq = 0;
    CU_ASSERT_EQUAL(append(&a, "before", "down-1", &seq), CH_OK);
    replica saved;
    memcpy(&saved, &a.r, sizeof saved);

    CU_ASSERT_EQUAL_FATAL(natsd_stop(server), CH_OK);
    seq = 55;
    ch_status st = ledger_append(a.l, "during", 6, "down-2", 500, &seq);
    CU_ASSERT(st == CH_UNAVAILABLE || st == CH_TIMEOUT);
    CU_ASSERT_EQUAL(seq, 55);
    CU_ASSERT_EQUAL(memcmp(&a.r, &saved, sizeof saved), 0);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 1);
    CU_ASSERT_NOT_EQUAL(ledger_catch_up(a.l), CH_OK);
    CU_ASSERT_EQUAL(memcmp(&a.r, &saved, sizeof saved), 0);

    /* Back up (same store): the ledger goes on where it was. */
    CU_ASSERT_EQUAL_FATAL(natsd_restart(server), CH_OK);
    long long end = test_now_ms() + 10000;
    while (!bus_connected(a.b) && test_now_ms() < end) {
        test_sleep_ms(20);
    }
    CU_ASSERT_TRUE_FATAL(bus_connected(a.b));
    CU_ASSERT_EQUAL(ledger_append(a.l, "during", 6, "down-2", 2000, &seq), CH_OK);
    CU_ASSERT_EQUAL(seq, 2);
    CU_ASSERT_EQUAL_FATAL(a.r.n, 2);
    CU_ASSERT_STRING_EQUAL(a.r.data[1], "during");
    node_stop(&a);
}

static int suite_init(void)
{
    return natsd_start(&server, NULL) == CH_OK ? 0 : 1;
}

static int suite_clean(void)
{
    natsd_destroy(server);
    return 0;
}

int main(void)
{
    static const cu_test tests[] = {
        {"open empty applies nothing", test_ledger_open_empty_applies_nothing},
        {"open rejects bad spec", test_ledger_open_rejects_bad_spec},
        {"append applies once and returns seq", test_ledger_append_applies_once_and_returns_seq},
        {"conflict catches up then retry succeeds", test_ledger_conflict_catches_up_then_retry_succeeds},
        {"duplicate msg id appends and applies nothing twice",
         test_ledger_duplicate_msg_id_appends_and_applies_nothing_twice},
        {"reopen replays every entry in order", test_ledger_reopen_replays_every_entry_in_order},
        {"apply error is skipped", test_ledger_apply_error_is_skipped},
        {"oversized entry refused", test_ledger_oversized_entry_refused},
        {"append fails without server and changes nothing",
         test_ledger_append_fails_without_server_and_changes_nothing},
        {NULL, NULL},
    };
    log_configure("test_ledger", getenv("TEST_LOG") ? LOG_DEBUG : LOG_ERROR, 2);
    int rc = cu_run("ledger", suite_init, suite_clean, tests);
    bus_library_shutdown();
    return rc;
}
