/* test_ledger.c: the compare-and-set ledger against a real nats-server
 * (file storage, temp dir, free port) started by tests/support/natsd. Each
 * "replica" is a ledger with its own bus connection and its own state. */
#include <CUnit/Basic.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_run.h"
#include "ledger.h"
#include "log.h"
#include "natsd.h"
#include "proc.h"
#include "relay.h"

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

/* ---- ledger_decide_batch: a toy state of counters ----
 *
 * An entry is "add delta to slot" (4 bytes: slot, delta as big-endian int16,
 * tag = the item index that decided it), optionally followed by padding.
 * apply refuses an entry that would make a slot negative; revert is its
 * exact inverse. */

#define TOY_SLOTS     8
#define TOY_ENTRY     4
#define TOY_MAX_TAGS  64
#define TOY_MAX_ITEMS LEDGER_MAX_BATCH

typedef struct toy {
    int slot[TOY_SLOTS];
    int applies; /* entries folded in */
    int refused; /* entries apply refused */
    int reverts;
    int revert_tags[TOY_MAX_TAGS]; /* tags of the reverted entries, in revert order */
} toy;

static size_t toy_encode(uint8_t *buf, size_t cap, int slot, int delta, int tag, size_t pad)
{
    if (cap < TOY_ENTRY + pad) {
        return 0;
    }
    buf[0] = (uint8_t)slot;
    buf[1] = (uint8_t)((uint16_t)(int16_t)delta >> 8);
    buf[2] = (uint8_t)((uint16_t)(int16_t)delta & 0xff);
    buf[3] = (uint8_t)tag;
    memset(buf + TOY_ENTRY, 'p', pad);
    return TOY_ENTRY + pad;
}

static bool toy_decode(const uint8_t *data, size_t len, int *slot, int *delta, int *tag)
{
    if (len < TOY_ENTRY || data[0] >= TOY_SLOTS) {
        return false;
    }
    *slot = data[0];
    *delta = (int16_t)(uint16_t)((unsigned)data[1] << 8 | data[2]);
    *tag = data[3];
    return true;
}

static ch_status toy_apply(const uint8_t *data, size_t len, uint64_t seq, void *ctx)
{
    toy *t = ctx;
    int slot, delta, tag;
    (void)seq;
    if (!toy_decode(data, len, &slot, &delta, &tag)) {
        return CH_INVALID_ARGUMENT;
    }
    if (t->slot[slot] + delta < 0) {
        t->refused++;
        return CH_FAILED_PRECONDITION;
    }
    t->slot[slot] += delta;
    t->applies++;
    return CH_OK;
}

static ch_status toy_revert(const uint8_t *data, size_t len, void *ctx)
{
    toy *t = ctx;
    int slot, delta, tag;
    if (!toy_decode(data, len, &slot, &delta, &tag)) {
        return CH_INVALID_ARGUMENT;
    }
    t->slot[slot] -= delta;
    if (t->reverts < TOY_MAX_TAGS) {
        t->revert_tags[t->reverts] = tag;
    }
    t->reverts++;
    return CH_OK;
}

/* A replica with the toy state; with follow, its ledger follows the subject
 * and mu guards the state. */
typedef struct tnode {
    bus *b;
    ledger *l;
    toy t;
    pthread_mutex_t mu;
} tnode;

static void tnode_start_on(tnode *n, const char *url, const char *stream, const char *subject, bool follow)
{
    bus_options o = {.url = url, .name = "test_ledger_batch"};
    memset(n, 0, sizeof *n);
    pthread_mutex_init(&n->mu, NULL);
    CU_ASSERT_EQUAL_FATAL(bus_create(&n->b, &o), CH_OK);
    ledger_spec spec = {.stream = stream,
                        .subject = subject,
                        .apply = toy_apply,
                        .revert = toy_revert,
                        .ctx = &n->t,
                        .follow_lock = follow ? &n->mu : NULL};
    CU_ASSERT_EQUAL_FATAL(ledger_open(&n->l, n->b, &spec), CH_OK);
}

static void tnode_start(tnode *n, const char *stream, const char *subject, bool follow)
{
    tnode_start_on(n, natsd_url(server), stream, subject, follow);
}

static void tnode_stop(tnode *n)
{
    ledger_close(n->l);
    bus_destroy(n->b);
    pthread_mutex_destroy(&n->mu);
}

/* A single-entry ledger_append of "add delta to slot". */
static ch_status tnode_append(tnode *n, int slot, int delta)
{
    uint8_t e[TOY_ENTRY];
    size_t len = toy_encode(e, sizeof e, slot, delta, 0xee, 0);
    pthread_mutex_lock(&n->mu);
    ch_status st = ledger_append(n->l, e, len, NULL, 2000, NULL);
    pthread_mutex_unlock(&n->mu);
    return st;
}

static uint64_t last_stream_seq(bus *b, const char *stream)
{
    uint64_t last = 0;
    CU_ASSERT_EQUAL(bus_stream_info(b, stream, NULL, &last), CH_OK);
    return last;
}

/* How an item is decided. */
typedef enum dkind {
    D_ADD,   /* add delta to slot; CH_FAILED_PRECONDITION if it would go negative */
    D_BLIND, /* add delta to slot without checking (apply may refuse it) */
    D_NOOP,  /* decided before: nothing to record */
    D_FAIL,  /* the decision fails with `fail` */
    D_NEEDS, /* CH_NOT_FOUND unless slot src >= need; then as D_ADD */
    D_COPY,  /* add the current value of slot src to slot */
    D_ONCE,  /* add delta to slot unless the slot holds something: decided before */
} dkind;

typedef struct ditem {
    dkind kind;
    int slot, delta, src, need;
    size_t pad;
    ch_status fail;
} ditem;

struct dctx;
typedef void (*dhook_fn)(struct dctx *d, size_t i);

typedef struct dctx {
    toy *t;
    const ditem *items;
    int calls[TOY_MAX_ITEMS]; /* decide calls per item */
    int seen[TOY_MAX_ITEMS];  /* the value of the slot it read, on its last call */
    dhook_fn hook;            /* runs on every decide call (tests only: a racing writer) */
    void *hook_arg;
} dctx;

static ch_status toy_decide(size_t i, void *ctx, uint8_t *buf, size_t cap, size_t *len)
{
    dctx *d = ctx;
    const ditem *it = &d->items[i];
    toy *t = d->t;
    int delta = it->delta;

    d->calls[i]++;
    if (d->hook) {
        d->hook(d, i);
    }
    *len = 0;
    switch (it->kind) {
    case D_NOOP: return CH_OK;
    case D_FAIL: return it->fail;
    case D_ONCE:
        d->seen[i] = t->slot[it->slot];
        if (t->slot[it->slot] != 0) {
            return CH_OK;
        }
        break;
    case D_NEEDS:
        d->seen[i] = t->slot[it->src];
        if (t->slot[it->src] < it->need) {
            return CH_NOT_FOUND;
        }
        break;
    case D_COPY:
        d->seen[i] = t->slot[it->src];
        delta = t->slot[it->src];
        break;
    case D_ADD:
    case D_BLIND: d->seen[i] = t->slot[it->slot]; break;
    }
    if (it->kind != D_BLIND && t->slot[it->slot] + delta < 0) {
        return CH_FAILED_PRECONDITION;
    }
    *len = toy_encode(buf, cap, it->slot, delta, (int)i, it->pad);
    return *len > 0 ? CH_OK : CH_RESOURCE_EXHAUSTED;
}

static dctx *dctx_new(toy *t, const ditem *items)
{
    dctx *d = calloc(1, sizeof *d);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    d->t = t;
    d->items = items;
    return d;
}

/* Runs ledger_decide_batch on n's state (under its lock); statuses start
 * as CH_INTERNAL so an item left unset shows. */
static ch_status tnode_batch(tnode *n, dctx *d, size_t count, ch_status *status)
{
    for (size_t i = 0; i < count; i++) {
        status[i] = CH_INTERNAL;
    }
    pthread_mutex_lock(&n->mu);
    ch_status st = ledger_decide_batch(n->l, count, toy_decide, d, status, 2000);
    pthread_mutex_unlock(&n->mu);
    return st;
}

/* One stored message as read back by bus_get_seq. */
typedef struct stored {
    char count[24]; /* the LEDGER_HDR_ENTRIES header, "" when absent */
    size_t len;
    uint8_t data[LEDGER_MAX_ENTRY + 64];
} stored;

static ch_status keep_stored(const bus_in_msg *m, void *ctx)
{
    stored *s = ctx;
    const char *c = bus_in_msg_header(m, LEDGER_HDR_ENTRIES);
    snprintf(s->count, sizeof s->count, "%s", c ? c : "");
    s->len = m->len < sizeof s->data ? m->len : sizeof s->data;
    memcpy(s->data, m->data, s->len);
    return CH_OK;
}

static stored *read_stored(bus *b, const char *stream, uint64_t seq)
{
    stored *s = calloc(1, sizeof *s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(bus_get_seq(b, stream, seq, keep_stored, s), CH_OK);
    return s;
}

/* Splits a batch message into its frames; the tags of the entries go to
 * tags (up to cap); returns the number of frames, -1 if malformed. */
static int stored_frames(const stored *s, int *tags, int cap)
{
    size_t off = 0;
    int n = 0;
    while (off < s->len) {
        if (s->len - off < 4) {
            return -1;
        }
        size_t flen = (size_t)s->data[off] << 24 | (size_t)s->data[off + 1] << 16 |
                      (size_t)s->data[off + 2] << 8 | s->data[off + 3];
        off += 4;
        if (flen > s->len - off) {
            return -1;
        }
        int slot, delta, tag;
        if (!toy_decode(s->data + off, flen, &slot, &delta, &tag)) {
            return -1;
        }
        if (n < cap) {
            tags[n] = tag;
        }
        n++;
        off += flen;
    }
    return n;
}

/* A fresh replica of stream/subject has the same slots as want. */
static void assert_replay_equals(const char *stream, const char *subject, const toy *want)
{
    tnode fresh;
    tnode_start(&fresh, stream, subject, false);
    CU_ASSERT_EQUAL(memcmp(fresh.t.slot, want->slot, sizeof want->slot), 0);
    CU_ASSERT_EQUAL(fresh.t.reverts, 0);
    tnode_stop(&fresh);
}

static void test_ledger_batch_stores_one_message_and_items_see_earlier_ones(void)
{
    tnode a;
    tnode_start(&a, "LBATCH", "lbatch.ledger", false);
    CU_ASSERT_EQUAL(tnode_append(&a, 0, 10), CH_OK);
    uint64_t before = last_stream_seq(a.b, "LBATCH");
    CU_ASSERT_EQUAL(before, 1);

    /* Each item adds 1 to slot 0 and reads it first; the last copies slot 0. */
    static const ditem items[] = {
        {.kind = D_ADD, .slot = 0, .delta = 1}, {.kind = D_ADD, .slot = 0, .delta = 1},
        {.kind = D_ADD, .slot = 0, .delta = 1}, {.kind = D_ADD, .slot = 0, .delta = 1},
        {.kind = D_COPY, .slot = 1, .src = 0},
    };
    enum { N = sizeof items / sizeof items[0] };
    dctx *d = dctx_new(&a.t, items);
    ch_status status[N];
    CU_ASSERT_EQUAL(tnode_batch(&a, d, N, status), CH_OK);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(status[i], CH_OK);
        CU_ASSERT_EQUAL(d->calls[i], 1);
    }
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(d->seen[i], 10 + i); /* saw the entries of the items before it */
    }
    CU_ASSERT_EQUAL(d->seen[4], 14);
    CU_ASSERT_EQUAL(a.t.slot[0], 14);
    CU_ASSERT_EQUAL(a.t.slot[1], 14);
    CU_ASSERT_EQUAL(a.t.applies, 1 + N);
    CU_ASSERT_EQUAL(a.t.reverts, 0);

    /* One message, framed, with the count. */
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LBATCH"), before + 1);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), before + 1);
    stored *s = read_stored(a.b, "LBATCH", before + 1);
    CU_ASSERT_STRING_EQUAL(s->count, "5");
    CU_ASSERT_EQUAL(s->len, N * (4 + TOY_ENTRY));
    int tags[N] = {0};
    CU_ASSERT_EQUAL(stored_frames(s, tags, N), N);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(tags[i], i);
    }
    /* Catching up applies nothing again: the batch was applied as decided. */
    CU_ASSERT_EQUAL(ledger_catch_up(a.l), CH_OK);
    CU_ASSERT_EQUAL(a.t.applies, 1 + N);
    assert_replay_equals("LBATCH", "lbatch.ledger", &a.t);
    free(s);
    free(d);
    tnode_stop(&a);
}

/* Waits (up to 10 s) until n's state, read under its lock, has want's slots. */
static bool wait_same_slots(tnode *n, const toy *want)
{
    long long end = test_now_ms() + 10000;
    for (;;) {
        pthread_mutex_lock(&n->mu);
        bool same = memcmp(n->t.slot, want->slot, sizeof want->slot) == 0;
        pthread_mutex_unlock(&n->mu);
        if (same || test_now_ms() > end) {
            return same;
        }
        test_sleep_ms(20);
    }
}

static void test_ledger_batch_replica_replays_mixed_messages(void)
{
    tnode a, b, c;
    tnode_start(&c, "LMIX", "lmix.ledger", true); /* follows from the start */
    tnode_start(&a, "LMIX", "lmix.ledger", false);
    static const ditem first[] = {
        {.kind = D_ADD, .slot = 0, .delta = -2},
        {.kind = D_ADD, .slot = 1, .delta = 3},
        {.kind = D_COPY, .slot = 2, .src = 0},
    };
    static const ditem second[] = {
        {.kind = D_ADD, .slot = 1, .delta = 1},
        {.kind = D_NOOP},
        {.kind = D_ADD, .slot = 4, .delta = 7},
    };
    static const ditem third[] = {
        {.kind = D_ADD, .slot = 0, .delta = 1},
        {.kind = D_ADD, .slot = 5, .delta = 2},
    };
    ch_status status[3];
    dctx *d = dctx_new(&a.t, first);

    CU_ASSERT_EQUAL(tnode_append(&a, 0, 5), CH_OK);
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 3, status), CH_OK);
    CU_ASSERT_EQUAL(tnode_append(&a, 3, 1), CH_OK);
    d->items = second;
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 3, status), CH_OK);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(status[i], CH_OK);
    }
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 4);
    const int want[TOY_SLOTS] = {3, 4, 3, 1, 7, 0, 0, 0};
    CU_ASSERT_EQUAL(memcmp(a.t.slot, want, sizeof want), 0);

    /* A replica opened now replays singles and batches alike. */
    tnode_start(&b, "LMIX", "lmix.ledger", false);
    CU_ASSERT_EQUAL(memcmp(b.t.slot, a.t.slot, sizeof a.t.slot), 0);
    CU_ASSERT_EQUAL(b.t.applies, 7); /* every entry once */
    CU_ASSERT_EQUAL(ledger_last_seq(b.l), 4);

    /* More on a: b catches up, c's follower splits the batches too. */
    d->items = third;
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 2, status), CH_OK);
    CU_ASSERT_EQUAL(status[0], CH_OK);
    CU_ASSERT_EQUAL(status[1], CH_OK);
    CU_ASSERT_EQUAL(ledger_catch_up(b.l), CH_OK);
    CU_ASSERT_EQUAL(memcmp(b.t.slot, a.t.slot, sizeof a.t.slot), 0);
    CU_ASSERT_EQUAL(b.t.applies, 9);
    CU_ASSERT_EQUAL(ledger_last_seq(b.l), 5);
    CU_ASSERT_TRUE(wait_same_slots(&c, &a.t));
    pthread_mutex_lock(&c.mu);
    CU_ASSERT_EQUAL(c.t.applies, 9);
    CU_ASSERT_EQUAL(ledger_last_seq(c.l), 5);
    pthread_mutex_unlock(&c.mu);
    free(d);
    tnode_stop(&c);
    tnode_stop(&b);
    tnode_stop(&a);
}

static void test_ledger_batch_conflict_reverts_catches_up_and_decides_again(void)
{
    tnode a, b;
    tnode_start(&a, "LCAS", "lcas.ledger", false);
    tnode_start(&b, "LCAS", "lcas.ledger", false);
    CU_ASSERT_EQUAL(tnode_append(&a, 0, 5), CH_OK);
    CU_ASSERT_EQUAL(ledger_catch_up(b.l), CH_OK);
    CU_ASSERT_EQUAL(tnode_append(&b, 1, 7), CH_OK); /* a has not seen this one */
    CU_ASSERT_EQUAL(a.t.slot[1], 0);

    static const ditem items[] = {
        {.kind = D_ADD, .slot = 0, .delta = 1},
        {.kind = D_COPY, .slot = 3, .src = 1}, /* depends on b's entry */
        {.kind = D_ADD, .slot = 0, .delta = 1},
    };
    dctx *d = dctx_new(&a.t, items);
    ch_status status[3];
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 3, status), CH_OK);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(status[i], CH_OK);
        CU_ASSERT_EQUAL(d->calls[i], 2); /* decided, lost the CAS, decided again */
    }
    /* The first round was undone newest first. */
    CU_ASSERT_EQUAL(a.t.reverts, 3);
    CU_ASSERT_EQUAL(a.t.revert_tags[0], 2);
    CU_ASSERT_EQUAL(a.t.revert_tags[1], 1);
    CU_ASSERT_EQUAL(a.t.revert_tags[2], 0);
    /* The second round saw b's entry. */
    CU_ASSERT_EQUAL(d->seen[1], 7);
    const int want[TOY_SLOTS] = {7, 7, 0, 7, 0, 0, 0, 0};
    CU_ASSERT_EQUAL(memcmp(a.t.slot, want, sizeof want), 0);
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LCAS"), 3);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 3);
    assert_replay_equals("LCAS", "lcas.ledger", &a.t);
    CU_ASSERT_EQUAL(ledger_catch_up(b.l), CH_OK);
    CU_ASSERT_EQUAL(memcmp(b.t.slot, a.t.slot, sizeof a.t.slot), 0);
    free(d);
    tnode_stop(&b);
    tnode_stop(&a);
}

/* A writer that stores an entry behind a's back on every decide of item 0. */
static void race_writer(dctx *d, size_t i)
{
    if (i != 0) {
        return;
    }
    tnode *other = d->hook_arg;
    uint8_t e[TOY_ENTRY];
    size_t len = toy_encode(e, sizeof e, 7, 1, 0xee, 0);
    bus_out_msg m = {.subject = "lcasmax.ledger", .data = e, .len = len};
    CU_ASSERT_EQUAL(bus_publish(other->b, &m, 2000, NULL), CH_OK);
}

static void test_ledger_batch_gives_up_after_cas_attempts(void)
{
    tnode a, other;
    tnode_start(&a, "LCASMAX", "lcasmax.ledger", false);
    tnode_start(&other, "LCASMAX", "lcasmax.ledger", false);
    CU_ASSERT_EQUAL(tnode_append(&a, 0, 5), CH_OK);
    static const ditem items[] = {
        {.kind = D_ADD, .slot = 0, .delta = 1},
        {.kind = D_ADD, .slot = 1, .delta = 1},
    };
    dctx *d = dctx_new(&a.t, items);
    d->hook = race_writer;
    d->hook_arg = &other;
    ch_status status[2];
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 2, status), CH_OK);
    CU_ASSERT_EQUAL(status[0], CH_CONFLICT);
    CU_ASSERT_EQUAL(status[1], CH_CONFLICT);
    CU_ASSERT_EQUAL(d->calls[0], LEDGER_CAS_ATTEMPTS);
    CU_ASSERT_EQUAL(d->calls[1], LEDGER_CAS_ATTEMPTS);
    CU_ASSERT_EQUAL(a.t.reverts, 2 * LEDGER_CAS_ATTEMPTS);
    /* Its own entries are all undone; the other writer's were applied as
     * they were caught up (all but the last one). */
    CU_ASSERT_EQUAL(a.t.slot[0], 5);
    CU_ASSERT_EQUAL(a.t.slot[1], 0);
    CU_ASSERT_EQUAL(a.t.slot[7], LEDGER_CAS_ATTEMPTS - 1);
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LCASMAX"), 1 + LEDGER_CAS_ATTEMPTS);
    /* Nothing of a's is stored: a catch-up gives the state of a replay. */
    CU_ASSERT_EQUAL(ledger_catch_up(a.l), CH_OK);
    assert_replay_equals("LCASMAX", "lcasmax.ledger", &a.t);
    CU_ASSERT_EQUAL(a.t.slot[7], LEDGER_CAS_ATTEMPTS);
    free(d);
    tnode_stop(&other);
    tnode_stop(&a);
}

static void test_ledger_batch_not_found_is_decided_again_after_catch_up(void)
{
    tnode a, b;
    tnode_start(&a, "LNF", "lnf.ledger", false);
    tnode_start(&b, "LNF", "lnf.ledger", false);
    CU_ASSERT_EQUAL(tnode_append(&a, 0, 1), CH_OK);
    CU_ASSERT_EQUAL(ledger_catch_up(b.l), CH_OK);
    CU_ASSERT_EQUAL(tnode_append(&b, 1, 2), CH_OK); /* "the reservation" a does not know of */

    /* Only items that wait for a catch-up: no conflict involved. */
    static const ditem only[] = {
        {.kind = D_NEEDS, .slot = 1, .delta = -2, .src = 1, .need = 2},
        {.kind = D_NEEDS, .slot = 4, .delta = 1, .src = 4, .need = 1}, /* never there */
    };
    dctx *d = dctx_new(&a.t, only);
    ch_status status[3];
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 2, status), CH_OK);
    CU_ASSERT_EQUAL(status[0], CH_OK);
    CU_ASSERT_EQUAL(status[1], CH_NOT_FOUND);
    CU_ASSERT_EQUAL(d->calls[0], 2);
    CU_ASSERT_EQUAL(d->calls[1], 2);
    CU_ASSERT_EQUAL(a.t.reverts, 0);
    CU_ASSERT_EQUAL(a.t.slot[1], 0);
    CU_ASSERT_EQUAL(a.t.slot[4], 0);
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LNF"), 3);
    stored *s = read_stored(a.b, "LNF", 3);
    CU_ASSERT_STRING_EQUAL(s->count, "1");
    free(s);

    /* Mixed with an item that is stored: its first round loses the CAS, and
     * the catch-up after it serves the waiting items too. */
    CU_ASSERT_EQUAL(ledger_catch_up(b.l), CH_OK);
    CU_ASSERT_EQUAL(tnode_append(&b, 1, 5), CH_OK);
    static const ditem mixed[] = {
        {.kind = D_ADD, .slot = 0, .delta = 1},
        {.kind = D_NEEDS, .slot = 1, .delta = -5, .src = 1, .need = 5},
        {.kind = D_NEEDS, .slot = 4, .delta = 1, .src = 4, .need = 1},
    };
    free(d);
    d = dctx_new(&a.t, mixed);
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 3, status), CH_OK);
    CU_ASSERT_EQUAL(status[0], CH_OK);
    CU_ASSERT_EQUAL(status[1], CH_OK);
    CU_ASSERT_EQUAL(status[2], CH_NOT_FOUND);
    CU_ASSERT_EQUAL(d->calls[1], 2);
    CU_ASSERT_EQUAL(d->calls[2], 2);
    const int want[TOY_SLOTS] = {2, 0, 0, 0, 0, 0, 0, 0};
    CU_ASSERT_EQUAL(memcmp(a.t.slot, want, sizeof want), 0);
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LNF"), 5);
    assert_replay_equals("LNF", "lnf.ledger", &a.t);
    free(d);
    tnode_stop(&b);
    tnode_stop(&a);
}

static void test_ledger_batch_decide_error_fails_only_that_item(void)
{
    tnode a;
    tnode_start(&a, "LERR", "lerr.ledger", false);
    CU_ASSERT_EQUAL(tnode_append(&a, 0, 5), CH_OK);
    static const ditem items[] = {
        {.kind = D_ADD, .slot = 0, .delta = -2},   {.kind = D_ADD, .slot = 0, .delta = -2},
        {.kind = D_ADD, .slot = 0, .delta = -2}, /* only 1 left after the two before */
        {.kind = D_ADD, .slot = 1, .delta = 1},    {.kind = D_FAIL, .fail = CH_INVALID_ARGUMENT},
        {.kind = D_BLIND, .slot = 2, .delta = -1}, /* decided, but apply refuses it */
        {.kind = D_ADD, .slot = 1, .delta = 1},
    };
    enum { N = sizeof items / sizeof items[0] };
    dctx *d = dctx_new(&a.t, items);
    ch_status status[N];
    CU_ASSERT_EQUAL(tnode_batch(&a, d, N, status), CH_OK);
    CU_ASSERT_EQUAL(status[0], CH_OK);
    CU_ASSERT_EQUAL(status[1], CH_OK);
    CU_ASSERT_EQUAL(status[2], CH_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(d->seen[2], 1);
    CU_ASSERT_EQUAL(status[3], CH_OK);
    CU_ASSERT_EQUAL(status[4], CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(status[5], CH_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(status[6], CH_OK);
    CU_ASSERT_EQUAL(a.t.refused, 1);
    const int want[TOY_SLOTS] = {1, 2, 0, 0, 0, 0, 0, 0};
    CU_ASSERT_EQUAL(memcmp(a.t.slot, want, sizeof want), 0);
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LERR"), 2);
    stored *s = read_stored(a.b, "LERR", 2);
    CU_ASSERT_STRING_EQUAL(s->count, "4");
    int tags[N] = {0};
    CU_ASSERT_EQUAL(stored_frames(s, tags, N), 4);
    CU_ASSERT_EQUAL(tags[0], 0);
    CU_ASSERT_EQUAL(tags[1], 1);
    CU_ASSERT_EQUAL(tags[2], 3);
    CU_ASSERT_EQUAL(tags[3], 6);
    assert_replay_equals("LERR", "lerr.ledger", &a.t);
    free(s);
    free(d);
    tnode_stop(&a);
}

static void test_ledger_batch_empty_decisions_store_nothing(void)
{
    tnode a;
    tnode_start(&a, "LNOOP", "lnoop.ledger", false);
    static const ditem some[] = {
        {.kind = D_NOOP},
        {.kind = D_ADD, .slot = 0, .delta = 3},
        {.kind = D_NOOP},
    };
    dctx *d = dctx_new(&a.t, some);
    ch_status status[3];
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 3, status), CH_OK);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(status[i], CH_OK);
    }
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LNOOP"), 1);
    stored *s = read_stored(a.b, "LNOOP", 1);
    CU_ASSERT_STRING_EQUAL(s->count, "1");
    int tag = -1;
    CU_ASSERT_EQUAL(stored_frames(s, &tag, 1), 1);
    CU_ASSERT_EQUAL(tag, 1);
    free(s);

    /* Nothing to record at all: no message. */
    static const ditem none[] = {{.kind = D_NOOP}, {.kind = D_NOOP}};
    d->items = none;
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 2, status), CH_OK);
    CU_ASSERT_EQUAL(status[0], CH_OK);
    CU_ASSERT_EQUAL(status[1], CH_OK);
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LNOOP"), 1);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 1);
    /* Nor for an empty batch. */
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 0, status), CH_OK);
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LNOOP"), 1);
    CU_ASSERT_EQUAL(a.t.slot[0], 3);
    CU_ASSERT_EQUAL(a.t.applies, 1);
    free(d);
    tnode_stop(&a);
}

static void test_ledger_batch_full_batches(void)
{
    tnode a;
    tnode_start(&a, "LFULL", "lfull.ledger", false);
    /* LEDGER_MAX_BATCH small items fit one message. */
    ditem *items = calloc(LEDGER_MAX_BATCH, sizeof *items);
    ch_status *status = calloc(LEDGER_MAX_BATCH + 1, sizeof *status);
    CU_ASSERT_PTR_NOT_NULL_FATAL(items);
    CU_ASSERT_PTR_NOT_NULL_FATAL(status);
    for (int i = 0; i < LEDGER_MAX_BATCH; i++) {
        items[i] = (ditem){.kind = D_ADD, .slot = 0, .delta = 1};
    }
    dctx *d = dctx_new(&a.t, items);
    CU_ASSERT_EQUAL(tnode_batch(&a, d, LEDGER_MAX_BATCH, status), CH_OK);
    int ok = 0;
    for (int i = 0; i < LEDGER_MAX_BATCH; i++) {
        ok += status[i] == CH_OK;
    }
    CU_ASSERT_EQUAL(ok, LEDGER_MAX_BATCH);
    CU_ASSERT_EQUAL(a.t.slot[0], LEDGER_MAX_BATCH);
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LFULL"), 1);

    /* Entries that do not fit one message go on in the next one. */
    for (int i = 0; i < 3; i++) {
        items[i] = (ditem){.kind = D_ADD, .slot = 1, .delta = 1, .pad = 30000};
    }
    memset(d->calls, 0, sizeof d->calls);
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 3, status), CH_OK);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(status[i], CH_OK);
    }
    CU_ASSERT_EQUAL(a.t.slot[1], 3);
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LFULL"), 3);
    stored *s = read_stored(a.b, "LFULL", 2);
    CU_ASSERT_STRING_EQUAL(s->count, "2");
    free(s);
    s = read_stored(a.b, "LFULL", 3);
    CU_ASSERT_STRING_EQUAL(s->count, "1");
    free(s);
    assert_replay_equals("LFULL", "lfull.ledger", &a.t);

    /* Too many items, or no revert: refused before deciding anything. */
    memset(d->calls, 0, sizeof d->calls);
    CU_ASSERT_EQUAL(tnode_batch(&a, d, LEDGER_MAX_BATCH + 1, status), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(d->calls[0], 0);
    bus *b = NULL;
    bus_options o = {.url = natsd_url(server)};
    CU_ASSERT_EQUAL_FATAL(bus_create(&b, &o), CH_OK);
    toy t;
    memset(&t, 0, sizeof t);
    ledger_spec no_revert = {.stream = "LFULL", .subject = "lfull.ledger", .apply = toy_apply, .ctx = &t};
    ledger *l = NULL;
    CU_ASSERT_EQUAL_FATAL(ledger_open(&l, b, &no_revert), CH_OK);
    d->t = &t;
    CU_ASSERT_EQUAL(ledger_decide_batch(l, 1, toy_decide, d, status, 2000), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(d->calls[0], 0);
    CU_ASSERT_EQUAL(last_stream_seq(b, "LFULL"), 3);
    ledger_close(l);
    bus_destroy(b);
    free(d);
    free(status);
    free(items);
    tnode_stop(&a);
}

/* Publishes a hand-made batch message (header count, raw body). */
static void publish_raw(bus *b, const char *subject, const char *count, const uint8_t *data, size_t len)
{
    bus_out_msg m = {.subject = subject, .data = data, .len = len};
    if (count) {
        m.headers[0] = (bus_header){LEDGER_HDR_ENTRIES, count};
        m.nheaders = 1;
    }
    CU_ASSERT_EQUAL(bus_publish(b, &m, 2000, NULL), CH_OK);
}

static size_t put_frame(uint8_t *p, uint32_t flen, int slot, int delta)
{
    p[0] = (uint8_t)(flen >> 24);
    p[1] = (uint8_t)(flen >> 16);
    p[2] = (uint8_t)(flen >> 8);
    p[3] = (uint8_t)flen;
    return 4 + toy_encode(p + 4, TOY_ENTRY, slot, delta, 0xcc, 0);
}

static void test_ledger_batch_corrupt_frame_skipped_whole(void)
{
    tnode a;
    tnode_start(&a, "LCORRUPT", "lcorrupt.ledger", false);
    CU_ASSERT_EQUAL(tnode_append(&a, 0, 1), CH_OK);
    uint8_t buf[64];
    size_t len;

    /* A good frame, then one whose length runs past the end. */
    len = put_frame(buf, TOY_ENTRY, 0, 100);
    len += put_frame(buf + len, 1000, 0, 100);
    publish_raw(a.b, "lcorrupt.ledger", "2", buf, len);
    /* Two good frames, but the header says three. */
    len = put_frame(buf, TOY_ENTRY, 0, 100);
    len += put_frame(buf + len, TOY_ENTRY, 0, 100);
    publish_raw(a.b, "lcorrupt.ledger", "3", buf, len);
    /* A good frame and two bytes of trailing garbage. */
    len = put_frame(buf, TOY_ENTRY, 0, 100);
    buf[len++] = 0;
    buf[len++] = 1;
    publish_raw(a.b, "lcorrupt.ledger", "1", buf, len);
    /* A count that is not a number. */
    len = put_frame(buf, TOY_ENTRY, 0, 100);
    publish_raw(a.b, "lcorrupt.ledger", "x1", buf, len);
    /* A good single entry after them. */
    len = toy_encode(buf, sizeof buf, 2, 4, 0xcc, 0);
    publish_raw(a.b, "lcorrupt.ledger", NULL, buf, len);

    /* a is behind: its batch loses the CAS, catches up over the corrupt
     * messages (none of their entries) and is stored after them. */
    static const ditem items[] = {{.kind = D_ADD, .slot = 0, .delta = 2}};
    dctx *d = dctx_new(&a.t, items);
    ch_status status[1];
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 1, status), CH_OK);
    CU_ASSERT_EQUAL(status[0], CH_OK);
    CU_ASSERT_EQUAL(a.t.slot[0], 3);
    CU_ASSERT_EQUAL(a.t.slot[2], 4);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 7);

    /* A fresh replay: the corrupt messages are skipped whole. */
    tnode b;
    tnode_start(&b, "LCORRUPT", "lcorrupt.ledger", false);
    CU_ASSERT_EQUAL(memcmp(b.t.slot, a.t.slot, sizeof a.t.slot), 0);
    CU_ASSERT_EQUAL(b.t.applies, 3);
    CU_ASSERT_EQUAL(ledger_last_seq(b.l), 7);
    tnode_stop(&b);
    free(d);
    tnode_stop(&a);
}

/* A batch the server stored but whose PubAck never reached the writer (a
 * relay holds the server's replies past the publish timeout): the writer
 * undoes the batch and reports a timeout, so the events behind it are
 * retried. Deciding them again finds the stored batch (compare-and-set
 * conflict, catch-up) and records nothing twice. */
static void test_ledger_batch_stored_but_unacknowledged_is_not_decided_twice(void)
{
    relay *r = NULL;
    CU_ASSERT_EQUAL_FATAL(relay_start(&r, natsd_port(server)), CH_OK);
    tnode a, direct;
    tnode_start_on(&a, relay_url(r), "LLATE", "llate.ledger", false);
    tnode_start(&direct, "LLATE", "llate.ledger", false); /* reads the stream while a's replies wait */
    CU_ASSERT_EQUAL(tnode_append(&a, 2, 7), CH_OK);

    static const ditem items[] = {
        {.kind = D_ONCE, .slot = 0, .delta = 1},
        {.kind = D_ONCE, .slot = 1, .delta = 3},
    };
    dctx *d = dctx_new(&a.t, items);
    ch_status status[2];
    relay_hold_replies(r, 3000); /* past tnode_batch's 2000 ms */
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 2, status), CH_OK);
    CU_ASSERT_EQUAL(status[0], CH_TIMEOUT);
    CU_ASSERT_EQUAL(status[1], CH_TIMEOUT);
    CU_ASSERT_EQUAL(a.t.slot[0], 0); /* undone... */
    CU_ASSERT_EQUAL(a.t.slot[1], 0);
    CU_ASSERT_EQUAL(a.t.reverts, 2);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 1);
    CU_ASSERT_EQUAL(last_stream_seq(direct.b, "LLATE"), 2); /* ...though the server stored it */

    /* The late replies come through (and are dropped); the same items are
     * decided again, as their redelivered events would be. */
    long long held = relay_replied_bytes(r);
    long long end = test_now_ms() + 10000;
    while (relay_replied_bytes(r) == held && test_now_ms() < end) {
        test_sleep_ms(20);
    }
    CU_ASSERT_TRUE(relay_replied_bytes(r) > held);
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 2, status), CH_OK);
    CU_ASSERT_EQUAL(status[0], CH_OK);
    CU_ASSERT_EQUAL(status[1], CH_OK);
    CU_ASSERT_EQUAL(a.t.slot[0], 1); /* once: the stored batch, caught up */
    CU_ASSERT_EQUAL(a.t.slot[1], 3);
    CU_ASSERT_EQUAL(a.t.slot[2], 7);
    CU_ASSERT_EQUAL(d->calls[0], 3); /* timed out; lost the CAS to its own batch; found it decided */
    CU_ASSERT_EQUAL(d->seen[0], 1);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 2);
    CU_ASSERT_EQUAL(last_stream_seq(direct.b, "LLATE"), 2); /* nothing stored twice */
    assert_replay_equals("LLATE", "llate.ledger", &a.t);
    free(d);
    tnode_stop(&direct);
    tnode_stop(&a);
    relay_destroy(r);
}

static void test_ledger_batch_without_nats_changes_nothing(void)
{
    natsd *own = NULL; /* a server of its own: the suite's one stays up */
    CU_ASSERT_EQUAL_FATAL(natsd_start(&own, NULL), CH_OK);
    tnode a;
    tnode_start_on(&a, natsd_url(own), "LBDOWN", "lbdown.ledger", false);
    CU_ASSERT_EQUAL(tnode_append(&a, 0, 5), CH_OK);
    toy saved = a.t;

    CU_ASSERT_EQUAL(natsd_stop(own), CH_OK);
    long long end = test_now_ms() + 10000;
    while (bus_connected(a.b) && test_now_ms() < end) {
        test_sleep_ms(20);
    }
    CU_ASSERT_FALSE(bus_connected(a.b));
    static const ditem items[] = {
        {.kind = D_ADD, .slot = 0, .delta = -1},
        {.kind = D_ADD, .slot = 1, .delta = 2},
        {.kind = D_NEEDS, .slot = 3, .delta = 1, .src = 3, .need = 1}, /* its catch-up fails too */
    };
    dctx *d = dctx_new(&a.t, items);
    ch_status status[3];
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 3, status), CH_OK);
    CU_ASSERT(status[0] == CH_UNAVAILABLE || status[0] == CH_TIMEOUT);
    CU_ASSERT_EQUAL(status[1], status[0]);
    CU_ASSERT_NOT_EQUAL(status[2], CH_OK);
    CU_ASSERT_NOT_EQUAL(status[2], CH_INTERNAL);
    CU_ASSERT_EQUAL(memcmp(a.t.slot, saved.slot, sizeof saved.slot), 0);
    CU_ASSERT_EQUAL(a.t.reverts, 2);
    CU_ASSERT_EQUAL(a.t.revert_tags[0], 1);
    CU_ASSERT_EQUAL(a.t.revert_tags[1], 0);
    CU_ASSERT_EQUAL(ledger_last_seq(a.l), 1);

    /* Back up: the same batch goes through. */
    CU_ASSERT_EQUAL(natsd_restart(own), CH_OK);
    end = test_now_ms() + 10000;
    while (!bus_connected(a.b) && test_now_ms() < end) {
        test_sleep_ms(20);
    }
    CU_ASSERT_TRUE(bus_connected(a.b));
    CU_ASSERT_EQUAL(tnode_batch(&a, d, 2, status), CH_OK);
    CU_ASSERT_EQUAL(status[0], CH_OK);
    CU_ASSERT_EQUAL(status[1], CH_OK);
    CU_ASSERT_EQUAL(a.t.slot[0], 4);
    CU_ASSERT_EQUAL(a.t.slot[1], 2);
    CU_ASSERT_EQUAL(last_stream_seq(a.b, "LBDOWN"), 2);
    free(d);
    tnode_stop(&a);
    natsd_destroy(own);
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
        {"batch stores one message and items see earlier ones",
         test_ledger_batch_stores_one_message_and_items_see_earlier_ones},
        {"batch replica replays mixed messages", test_ledger_batch_replica_replays_mixed_messages},
        {"batch conflict reverts, catches up and decides again",
         test_ledger_batch_conflict_reverts_catches_up_and_decides_again},
        {"batch gives up after CAS attempts", test_ledger_batch_gives_up_after_cas_attempts},
        {"batch not found is decided again after catch-up",
         test_ledger_batch_not_found_is_decided_again_after_catch_up},
        {"batch decide error fails only that item", test_ledger_batch_decide_error_fails_only_that_item},
        {"batch empty decisions store nothing", test_ledger_batch_empty_decisions_store_nothing},
        {"batch full batches and bad arguments", test_ledger_batch_full_batches},
        {"batch corrupt frame skipped whole", test_ledger_batch_corrupt_frame_skipped_whole},
        {"batch without nats changes nothing", test_ledger_batch_without_nats_changes_nothing},
        {"batch stored but unacknowledged is not decided twice",
         test_ledger_batch_stored_but_unacknowledged_is_not_decided_twice},
        {"append fails without server and changes nothing",
         test_ledger_append_fails_without_server_and_changes_nothing},
        {NULL, NULL},
    };
    log_configure("test_ledger", getenv("TEST_LOG") ? LOG_DEBUG : LOG_ERROR, 2);
    int rc = cu_run("ledger", suite_init, suite_clean, tests);
    bus_library_shutdown();
    return rc;
}
