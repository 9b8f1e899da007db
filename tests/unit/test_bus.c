/* test_bus.c: the JetStream layer against a real nats-server (file storage,
 * temp dir, free port) started by tests/support/natsd. */
#include <pthread.h>
#include <CUnit/Basic.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "bus.h"
#include "cu_run.h"
#include "log.h"
#include "natsd.h"
#include "proc.h"

static natsd *server;

/* The log goes to a file that tests read back (main; printed to stderr
 * when a test failed or TEST_LOG is set). */
static char log_path[] = "/tmp/test_bus_log_XXXXXX";

/* True when a line of the log holds text. */
static bool log_has(const char *text)
{
    char line[2 * LOG_LINE_MAX];
    bool found = false;
    FILE *f = fopen(log_path, "r");
    while (f && !found && fgets(line, sizeof line, f))
        found = strstr(line, text) != NULL;
    if (f)
        fclose(f);
    return found;
}

static atomic_int state_ups;
static atomic_int state_downs;

static void on_state(bool up, void *arg)
{
    (void)arg;
    atomic_fetch_add(up ? &state_ups : &state_downs, 1);
}

static bus *connect_bus(void)
{
    bus_options o = {.url = natsd_url(server), .name = "test_bus", .on_state = on_state};
    bus *b = NULL;
    CU_ASSERT_EQUAL_FATAL(bus_create(&b, &o), CH_OK);
    return b;
}

static void ensure(bus *b, const char *name, const char *subject)
{
    bus_stream_spec s = {.name = name, .subjects = {subject}};
    CU_ASSERT_EQUAL_FATAL(bus_ensure_stream(b, &s), CH_OK);
}

static ch_status publish(bus *b, const char *subject, const char *data, const char *msg_id, bus_pub_ack *ack)
{
    bus_out_msg m = {.subject = subject, .data = data, .len = strlen(data), .msg_id = msg_id};
    return bus_publish(b, &m, 2000, ack);
}

/* ---- replay collection ---- */

#define MAX_SEEN 2048
typedef struct seen {
    int n;
    uint64_t seq[MAX_SEEN];
    char subject[MAX_SEEN][64];
    char data[MAX_SEEN][32];
    char hdr_a[MAX_SEEN][32];
    char hdr_b[MAX_SEEN][32];
    char msg_id[MAX_SEEN][32];
    char reason[MAX_SEEN][128];
    char deliveries[MAX_SEEN][16];
    char orig_subject[MAX_SEEN][64];
    char orig_msg_id[MAX_SEEN][32];
} seen;

static void copy_hdr(char *dst, size_t cap, const bus_in_msg *m, const char *key)
{
    const char *v = bus_in_msg_header(m, key);
    snprintf(dst, cap, "%s", v ? v : "");
}

static ch_status collect(const bus_in_msg *m, void *ctx)
{
    seen *s = ctx;
    if (s->n >= MAX_SEEN) {
        return CH_RESOURCE_EXHAUSTED;
    }
    int i = s->n++;
    s->seq[i] = m->stream_seq;
    snprintf(s->subject[i], sizeof s->subject[i], "%s", m->subject);
    snprintf(s->data[i], sizeof s->data[i], "%.*s", (int)m->len, (const char *)m->data);
    copy_hdr(s->hdr_a[i], sizeof s->hdr_a[i], m, "X-A");
    copy_hdr(s->hdr_b[i], sizeof s->hdr_b[i], m, "X-B");
    copy_hdr(s->msg_id[i], sizeof s->msg_id[i], m, "Nats-Msg-Id");
    copy_hdr(s->reason[i], sizeof s->reason[i], m, BUS_HDR_DEAD_REASON);
    copy_hdr(s->deliveries[i], sizeof s->deliveries[i], m, BUS_HDR_DELIVERIES);
    copy_hdr(s->orig_subject[i], sizeof s->orig_subject[i], m, BUS_HDR_ORIGINAL_SUBJECT);
    copy_hdr(s->orig_msg_id[i], sizeof s->orig_msg_id[i], m, "Choreo-Original-Msg-Id");
    return CH_OK;
}

static seen *seen_new(void)
{
    seen *s = calloc(1, sizeof *s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    return s;
}

/* ---- tests ---- */

static void test_bus_ensure_stream_idempotent(void)
{
    bus *b = connect_bus();
    bus_stream_spec s = {.name = "IDEM", .subjects = {"idem.>"}, .duplicate_window_ms = 60000};
    CU_ASSERT_EQUAL(bus_ensure_stream(b, &s), CH_OK);
    CU_ASSERT_EQUAL(bus_ensure_stream(b, &s), CH_OK);
    uint64_t msgs = 99, last = 99;
    CU_ASSERT_EQUAL(bus_stream_info(b, "IDEM", &msgs, &last), CH_OK);
    CU_ASSERT_EQUAL(msgs, 0);
    CU_ASSERT_EQUAL(last, 0);
    /* A compatible change (more subjects, max age) updates it in place. */
    s.subjects[1] = "idem2.>";
    s.max_age_ms = 3600 * 1000;
    CU_ASSERT_EQUAL(bus_ensure_stream(b, &s), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "idem2.x", "v", NULL, NULL), CH_OK);
    /* An incompatible one (storage type) is refused, the stream stays. */
    s.storage = BUS_STORAGE_MEMORY;
    CU_ASSERT_EQUAL(bus_ensure_stream(b, &s), CH_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(bus_stream_info(b, "IDEM", &msgs, NULL), CH_OK);
    CU_ASSERT_EQUAL(msgs, 1);
    CU_ASSERT_EQUAL(bus_stream_info(b, "NOSUCH", &msgs, NULL), CH_NOT_FOUND);
    bus_stream_spec bad = {.name = "BAD"};
    CU_ASSERT_EQUAL(bus_ensure_stream(b, &bad), CH_INVALID_ARGUMENT);
    bus_destroy(b);
}

/* Services start together and all provision the same streams at once. */
typedef struct racer {
    pthread_t t;
    bus *b;
    const char *name, *subject;
    ch_status st;
} racer;

static void *race_ensure(void *arg)
{
    racer *r = arg;
    bus_stream_spec s = {.name = r->name, .subjects = {r->subject}, .duplicate_window_ms = 120000};
    r->st = bus_ensure_stream(r->b, &s);
    return NULL;
}

static void test_bus_ensure_stream_concurrently(void)
{
    enum { RACERS = 8, ROUNDS = 40 };
    racer r[RACERS];
    bus *buses[RACERS];
    char names[ROUNDS][16], subjects[ROUNDS][16];

    for (int i = 0; i < RACERS; i++)
        buses[i] = connect_bus();
    for (int k = 0; k < ROUNDS; k++) {
        snprintf(names[k], sizeof names[k], "RACE%d", k);
        snprintf(subjects[k], sizeof subjects[k], "race%d.>", k);
        for (int i = 0; i < RACERS; i++) {
            r[i] = (racer){.b = buses[i], .name = names[k], .subject = subjects[k], .st = CH_INTERNAL};
            pthread_create(&r[i].t, NULL, race_ensure, &r[i]);
        }
        for (int i = 0; i < RACERS; i++) {
            pthread_join(r[i].t, NULL);
            CU_ASSERT_EQUAL(r[i].st, CH_OK);
        }
    }
    for (int i = 0; i < RACERS; i++)
        bus_destroy(buses[i]);
}

static ch_status keep_data(const bus_in_msg *m, void *arg)
{
    snprintf(arg, 32, "%.*s@%llu", (int)m->len, (const char *)m->data, (unsigned long long)m->stream_seq);
    return CH_OK;
}

static void test_bus_get_seq(void)
{
    bus *b = connect_bus();
    char got[32] = "";
    ensure(b, "GETSEQ", "getseq.>");
    CU_ASSERT_EQUAL(publish(b, "getseq.a", "one", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "getseq.b", "two", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(bus_get_seq(b, "GETSEQ", 2, keep_data, got), CH_OK);
    CU_ASSERT_STRING_EQUAL(got, "two@2");
    CU_ASSERT_EQUAL(bus_get_seq(b, "GETSEQ", 3, keep_data, got), CH_NOT_FOUND);
    CU_ASSERT_EQUAL(bus_get_seq(b, "GETSEQ", 0, keep_data, got), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(bus_get_seq(b, "NOSUCH", 1, keep_data, got) == CH_OK, 0);
    bus_destroy(b);
}

static void test_bus_publish_dedup(void)
{
    bus *b = connect_bus();
    ensure(b, "DEDUP", "dedup.>");
    bus_pub_ack a1 = {0}, a2 = {0};
    CU_ASSERT_EQUAL(publish(b, "dedup.1", "first", "id-1", &a1), CH_OK);
    CU_ASSERT_EQUAL(a1.seq, 1);
    CU_ASSERT_FALSE(a1.duplicate);
    CU_ASSERT_EQUAL(publish(b, "dedup.1", "second", "id-1", &a2), CH_OK);
    CU_ASSERT_TRUE(a2.duplicate);
    CU_ASSERT_EQUAL(a2.seq, 1);
    uint64_t msgs = 0;
    CU_ASSERT_EQUAL(bus_stream_info(b, "DEDUP", &msgs, NULL), CH_OK);
    CU_ASSERT_EQUAL(msgs, 1);
    /* No stream captures the subject: no responders. */
    CU_ASSERT_EQUAL(publish(b, "nostream.1", "x", NULL, NULL), CH_UNAVAILABLE);
    bus_out_msg bad = {.subject = "dedup.1", .data = "x", .len = 1, .nheaders = BUS_MAX_HEADERS + 1};
    CU_ASSERT_EQUAL(bus_publish(b, &bad, 1000, NULL), CH_INVALID_ARGUMENT);
    bus_destroy(b);
}

/* The stream-level compare-and-set: whatever the subject, a publish expecting
 * the stream's last sequence is stored only while that is still the last. */
static void test_bus_publish_expects_the_streams_last_sequence(void)
{
    bus *b = connect_bus();
    ensure(b, "CAS", "cas.>");
    bus_pub_ack ack = {0};
    bus_out_msg m = {.subject = "cas.a", .data = "x", .len = 1, .expect_seq = true, .expect_last_seq = 0};

    CU_ASSERT_EQUAL(bus_publish(b, &m, 2000, &ack), CH_OK); /* empty: expects 0 */
    CU_ASSERT_EQUAL(ack.seq, 1);
    m.subject = "cas.b"; /* another subject, same stream: still expects 0 */
    CU_ASSERT_EQUAL(bus_publish(b, &m, 2000, &ack), CH_CONFLICT);
    m.expect_last_seq = 1;
    CU_ASSERT_EQUAL(bus_publish(b, &m, 2000, &ack), CH_OK);
    CU_ASSERT_EQUAL(ack.seq, 2);
    CU_ASSERT_EQUAL(publish(b, "cas.c", "no expectation", NULL, &ack), CH_OK);
    CU_ASSERT_EQUAL(bus_publish(b, &m, 2000, &ack), CH_CONFLICT); /* still expects 1; it is 3 */
    uint64_t msgs = 0, last = 0;
    CU_ASSERT_EQUAL(bus_stream_info(b, "CAS", &msgs, &last), CH_OK);
    CU_ASSERT_EQUAL(msgs, 3);
    CU_ASSERT_EQUAL(last, 3);
    bus_destroy(b);
}

static void test_bus_headers_survive(void)
{
    bus *b = connect_bus();
    ensure(b, "HDRS", "hdrs.>");
    bus_out_msg m = {.subject = "hdrs.one", .data = "payload", .len = 7, .msg_id = "hid-1"};
    m.headers[0] = (bus_header){"X-A", "alpha"};
    m.headers[1] = (bus_header){"X-B", "beta value"};
    m.nheaders = 2;
    bus_pub_ack ack;
    CU_ASSERT_EQUAL_FATAL(bus_publish(b, &m, 2000, &ack), CH_OK);
    seen *s = seen_new();
    uint64_t last = 0;
    CU_ASSERT_EQUAL(bus_replay(b, "HDRS", NULL, 1, collect, s, &last), CH_OK);
    CU_ASSERT_EQUAL_FATAL(s->n, 1);
    CU_ASSERT_EQUAL(last, ack.seq);
    CU_ASSERT_STRING_EQUAL(s->subject[0], "hdrs.one");
    CU_ASSERT_STRING_EQUAL(s->data[0], "payload");
    CU_ASSERT_STRING_EQUAL(s->hdr_a[0], "alpha");
    CU_ASSERT_STRING_EQUAL(s->hdr_b[0], "beta value");
    CU_ASSERT_STRING_EQUAL(s->msg_id[0], "hid-1");
    free(s);
    bus_destroy(b);
}

static void test_bus_async_batch(void)
{
    bus *b = connect_bus();
    ensure(b, "ASYNC", "async.>");
    char data[32], id[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(data, sizeof data, "m%d", i);
        snprintf(id, sizeof id, "a-%d", i);
        bus_out_msg m = {.subject = "async.x", .data = data, .len = strlen(data), .msg_id = id};
        CU_ASSERT_EQUAL_FATAL(bus_publish_async(b, &m), CH_OK);
    }
    uint64_t failed = 99;
    CU_ASSERT_EQUAL(bus_publish_async_wait(b, 10000, &failed), CH_OK);
    CU_ASSERT_EQUAL(failed, 0);
    uint64_t msgs = 0;
    CU_ASSERT_EQUAL(bus_stream_info(b, "ASYNC", &msgs, NULL), CH_OK);
    CU_ASSERT_EQUAL(msgs, 1000);
    /* Read back in order, in batches. */
    seen *s = seen_new();
    uint64_t last = 0;
    CU_ASSERT_EQUAL(bus_replay(b, "ASYNC", NULL, 0, collect, s, &last), CH_OK);
    CU_ASSERT_EQUAL(s->n, 1000);
    CU_ASSERT_EQUAL(last, 1000);
    int in_order = 1;
    for (int i = 0; i < s->n; i++) {
        snprintf(data, sizeof data, "m%d", i);
        in_order &= s->seq[i] == (uint64_t)i + 1 && strcmp(s->data[i], data) == 0;
    }
    CU_ASSERT_TRUE(in_order);
    /* Failures are counted: a subject no stream captures. */
    bus_out_msg m = {.subject = "nostream.async", .data = "x", .len = 1};
    CU_ASSERT_EQUAL(bus_publish_async(b, &m), CH_OK);
    CU_ASSERT_EQUAL(bus_publish_async(b, &m), CH_OK);
    CU_ASSERT_NOT_EQUAL(bus_publish_async_wait(b, 10000, &failed), CH_OK);
    CU_ASSERT_EQUAL(failed, 2);
    CU_ASSERT_EQUAL(bus_publish_async_wait(b, 1000, &failed), CH_OK);
    CU_ASSERT_EQUAL(failed, 0);
    free(s);
    bus_destroy(b);
}

static ch_status stop_after_two(const bus_in_msg *m, void *ctx)
{
    seen *s = ctx;
    collect(m, ctx);
    return s->n == 2 ? CH_CANCELLED : CH_OK;
}

static void test_bus_replay_empty_and_filter(void)
{
    bus *b = connect_bus();
    ensure(b, "REPLAY", "replay.>");
    seen *s = seen_new();
    uint64_t last = 77;
    CU_ASSERT_EQUAL(bus_replay(b, "REPLAY", NULL, 1, collect, s, &last), CH_OK);
    CU_ASSERT_EQUAL(s->n, 0);
    CU_ASSERT_EQUAL(last, 0);
    CU_ASSERT_EQUAL(bus_replay(b, "NOSUCH", NULL, 1, collect, s, &last), CH_NOT_FOUND);

    CU_ASSERT_EQUAL(publish(b, "replay.a.1", "a1", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "replay.b.1", "b1", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "replay.a.2", "a2", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "replay.b.2", "b2", NULL, NULL), CH_OK);

    CU_ASSERT_EQUAL(bus_replay(b, "REPLAY", "replay.a.*", 1, collect, s, &last), CH_OK);
    CU_ASSERT_EQUAL_FATAL(s->n, 2);
    CU_ASSERT_STRING_EQUAL(s->data[0], "a1");
    CU_ASSERT_STRING_EQUAL(s->data[1], "a2");
    CU_ASSERT_EQUAL(last, 3);

    /* From a later sequence. */
    memset(s, 0, sizeof *s);
    CU_ASSERT_EQUAL(bus_replay(b, "REPLAY", NULL, 3, collect, s, &last), CH_OK);
    CU_ASSERT_EQUAL_FATAL(s->n, 2);
    CU_ASSERT_STRING_EQUAL(s->data[0], "a2");
    CU_ASSERT_STRING_EQUAL(s->data[1], "b2");
    CU_ASSERT_EQUAL(last, 4);

    /* A filter nothing matches, and a start past the end. */
    memset(s, 0, sizeof *s);
    CU_ASSERT_EQUAL(bus_replay(b, "REPLAY", "replay.c.*", 1, collect, s, &last), CH_OK);
    CU_ASSERT_EQUAL(s->n, 0);
    CU_ASSERT_EQUAL(bus_replay(b, "REPLAY", NULL, 10, collect, s, &last), CH_OK);
    CU_ASSERT_EQUAL(s->n, 0);
    CU_ASSERT_EQUAL(last, 9);

    /* The callback can stop the replay; its status comes back. */
    CU_ASSERT_EQUAL(bus_replay(b, "REPLAY", NULL, 1, stop_after_two, s, &last), CH_CANCELLED);
    CU_ASSERT_EQUAL(s->n, 2);
    CU_ASSERT_EQUAL(last, 1);
    free(s);
    bus_destroy(b);
}

static ch_status count_in_order(const bus_in_msg *m, void *ctx)
{
    uint64_t *n = ctx;
    if (m->stream_seq != *n + 1) {
        return CH_INTERNAL;
    }
    (*n)++;
    return CH_OK;
}

static void test_bus_replay_large(void)
{
    bus *b = connect_bus();
    ensure(b, "LARGE", "large.>");
    enum { N = 100000 };
    char data[100];
    memset(data, 'x', sizeof data);
    long long t0 = test_now_ms();
    for (int i = 0; i < N; i++) {
        bus_out_msg m = {.subject = i % 2 ? "large.odd" : "large.even", .data = data, .len = sizeof data};
        CU_ASSERT_EQUAL_FATAL(bus_publish_async(b, &m), CH_OK);
    }
    CU_ASSERT_EQUAL_FATAL(bus_publish_async_wait(b, 30000, NULL), CH_OK);
    long long t1 = test_now_ms();
    uint64_t n = 0, last = 0;
    CU_ASSERT_EQUAL(bus_replay(b, "LARGE", NULL, 1, count_in_order, &n, &last), CH_OK);
    long long t2 = test_now_ms();
    CU_ASSERT_EQUAL(n, N);
    CU_ASSERT_EQUAL(last, N);
    CU_ASSERT(t2 - t1 < 20000);
    fprintf(stderr, "\n  100k: async publish %lld ms, replay %lld ms\n", t1 - t0, t2 - t1);
    bus_destroy(b);
}

/* ---- subscriptions that hand messages over (bus_sub) ---- */

#define SUB_MAX 512 /* messages a sub_log records */

/* What a bus_sub handed over (its thread writes; entries below n are
 * complete). A durable's messages are settled as their data says: "nak..."
 * naked on its first delivery (after nak_ms), "term..." termed, "keep..."
 * kept for the test to settle (entries below n_kept), the rest acked. */
typedef struct sub_log {
    bool durable;
    int nak_ms;
    atomic_int n;
    atomic_int batches;
    atomic_int largest; /* most messages in one batch */
    atomic_int settle_errs;
    atomic_int n_kept;
    bus_in_msg *kept[SUB_MAX];
    uint64_t seq[SUB_MAX];
    uint64_t deliveries[SUB_MAX];
    long long at_ms[SUB_MAX];
    char subject[SUB_MAX][64];
    char data[SUB_MAX][32];
} sub_log;

static sub_log *sub_log_new(void)
{
    sub_log *l = calloc(1, sizeof *l);
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    return l;
}

static bool data_is(const bus_in_msg *m, const char *prefix)
{
    return m->len >= strlen(prefix) && memcmp(m->data, prefix, strlen(prefix)) == 0;
}

/* The subscription's batch (its thread): records, settles, frees. */
static void sub_take(bus_in_msg *const *msgs, size_t n, void *ctx)
{
    sub_log *l = ctx;
    atomic_fetch_add(&l->batches, 1);
    if ((int)n > atomic_load(&l->largest))
        atomic_store(&l->largest, (int)n);
    for (size_t k = 0; k < n; k++) {
        bus_in_msg *m = msgs[k];
        int i = atomic_load(&l->n);
        if (i < SUB_MAX) {
            l->seq[i] = m->stream_seq;
            l->deliveries[i] = m->deliveries;
            l->at_ms[i] = test_now_ms();
            snprintf(l->subject[i], sizeof l->subject[i], "%s", m->subject);
            snprintf(l->data[i], sizeof l->data[i], "%.*s", (int)m->len, (const char *)m->data);
            atomic_store(&l->n, i + 1);
        }
        if (l->durable && data_is(m, "keep") && atomic_load(&l->n_kept) < SUB_MAX) {
            l->kept[atomic_load(&l->n_kept)] = m;
            atomic_fetch_add(&l->n_kept, 1);
            continue;
        }
        if (l->durable) {
            ch_status st;
            if (data_is(m, "nak") && m->deliveries == 1)
                st = bus_in_nak(m, l->nak_ms);
            else if (data_is(m, "term"))
                st = bus_in_term(m);
            else
                st = bus_in_ack(m);
            if (st != CH_OK)
                atomic_fetch_add(&l->settle_errs, 1);
        }
        bus_in_free(m);
    }
}

/* A follower: a bus_sub without a durable. */
static bus_sub *follow(bus *b, const char *stream, const char *filter, uint64_t start, int batch, sub_log *l)
{
    bus_sub_spec sp = {.stream = stream,
                       .filter_subject = filter,
                       .start_seq = start,
                       .batch = batch,
                       .fn = sub_take,
                       .ctx = l};
    bus_sub *x = NULL;
    CU_ASSERT_EQUAL_FATAL(bus_sub_start(b, &sp, &x), CH_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    return x;
}

/* A share of the durable consumer `durable` (created when missing). */
static bus_sub *consume(bus *b, const char *stream, const char *durable, int ack_wait_ms, sub_log *l)
{
    bus_sub_spec sp = {
        .stream = stream, .durable = durable, .ack_wait_ms = ack_wait_ms, .fn = sub_take, .ctx = l};
    bus_sub *x = NULL;
    l->durable = true;
    CU_ASSERT_EQUAL_FATAL(bus_sub_start(b, &sp, &x), CH_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    return x;
}

/* Stops x and returns how long that took, in ms. */
static long long timed_sub_stop(bus_sub *x)
{
    long long t0 = test_now_ms();
    bus_sub_stop(x);
    return test_now_ms() - t0;
}

/* True when the log holds exactly the payloads want[0..n), in stream order. */
static bool sub_log_is(const sub_log *l, const char *const *want, int n)
{
    if (atomic_load(&l->n) != n)
        return false;
    for (int i = 0; i < n; i++)
        if (strcmp(l->data[i], want[i]) != 0 || (i > 0 && l->seq[i] <= l->seq[i - 1]))
            return false;
    return true;
}

static void test_bus_sub_follows_from_the_start_in_order_with_a_filter(void)
{
    bus *b = connect_bus();
    ensure(b, "SFOLLOW", "sfollow.>");
    CU_ASSERT_EQUAL(publish(b, "sfollow.a.1", "a1", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "sfollow.b.1", "b1", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "sfollow.a.2", "a2", NULL, NULL), CH_OK);
    sub_log *only_a = sub_log_new(), *all = sub_log_new();
    bus_sub *fa = follow(b, "SFOLLOW", "sfollow.a.*", 1, 0, only_a);
    bus_sub *fall = follow(b, "SFOLLOW", NULL, 0, 0, all);
    CU_ASSERT_EQUAL(test_wait_atomic(&only_a->n, 2, 5000), 2);

    /* published while it follows: handed over as stored */
    CU_ASSERT_EQUAL(publish(b, "sfollow.a.3", "a3", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "sfollow.b.2", "b2", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "sfollow.a.4", "a4", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&only_a->n, 4, 5000), 4);
    CU_ASSERT_EQUAL(test_wait_atomic(&all->n, 6, 5000), 6);
    test_sleep_ms(700); /* more than one wait for a message: nothing is handed over twice */
    const char *const want_a[] = {"a1", "a2", "a3", "a4"};
    const char *const want_all[] = {"a1", "b1", "a2", "a3", "b2", "a4"};
    CU_ASSERT_TRUE(sub_log_is(only_a, want_a, 4));
    CU_ASSERT_TRUE(sub_log_is(all, want_all, 6));
    for (int i = 0; i < atomic_load(&only_a->n); i++)
        CU_ASSERT_EQUAL(strncmp(only_a->subject[i], "sfollow.a.", 10), 0);
    for (int i = 0; i < atomic_load(&all->n); i++) {
        CU_ASSERT_EQUAL(all->seq[i], (uint64_t)i + 1);
        CU_ASSERT_EQUAL(all->deliveries[i], 1);
    }

    /* stopping does not wait out more than the current wait */
    CU_ASSERT(timed_sub_stop(fa) < 1000);
    CU_ASSERT(timed_sub_stop(fall) < 1000);
    bus_sub_stop(NULL);
    free(only_a);
    free(all);
    bus_destroy(b);
}

static void test_bus_sub_follows_from_a_later_sequence(void)
{
    bus *b = connect_bus();
    ensure(b, "SLATER", "slater.>");
    char d[16];
    for (int i = 1; i <= 5; i++) {
        snprintf(d, sizeof d, "m%d", i);
        CU_ASSERT_EQUAL(publish(b, "slater.x", d, NULL, NULL), CH_OK);
    }
    sub_log *l = sub_log_new();
    bus_sub *x = follow(b, "SLATER", NULL, 4, 0, l);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 2, 5000), 2);
    CU_ASSERT_EQUAL(publish(b, "slater.x", "m6", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 3, 5000), 3);
    test_sleep_ms(700);
    const char *const want[] = {"m4", "m5", "m6"};
    CU_ASSERT_TRUE(sub_log_is(l, want, 3));
    CU_ASSERT_EQUAL(l->seq[0], 4);
    CU_ASSERT(timed_sub_stop(x) < 1000);

    /* bad arguments: nothing started, *out cleared */
    bus_sub_spec sp = {.stream = "SLATER", .fn = sub_take, .ctx = l};
    x = (bus_sub *)l;
    CU_ASSERT_EQUAL(bus_sub_start(NULL, &sp, &x), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(x);
    CU_ASSERT_EQUAL(bus_sub_start(b, NULL, &x), CH_INVALID_ARGUMENT);
    sp.stream = NULL;
    CU_ASSERT_EQUAL(bus_sub_start(b, &sp, &x), CH_INVALID_ARGUMENT);
    sp.stream = "SLATER";
    sp.fn = NULL;
    CU_ASSERT_EQUAL(bus_sub_start(b, &sp, &x), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(x);
    free(l);
    bus_destroy(b);
}

static void test_bus_sub_follower_waits_for_the_stream(void)
{
    bus *b = connect_bus();
    sub_log *l = sub_log_new();
    /* the stream does not exist yet: the follower retries until it does */
    bus_sub *x = follow(b, "SWAIT", NULL, 1, 0, l);
    test_sleep_ms(300);
    ensure(b, "SWAIT", "swait.>");
    CU_ASSERT_EQUAL(publish(b, "swait.x", "w1", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 1, 5000), 1);
    const char *const want[] = {"w1"};
    CU_ASSERT_TRUE(sub_log_is(l, want, 1));
    CU_ASSERT(timed_sub_stop(x) < 1500); /* may be in a retry sleep */
    free(l);
    bus_destroy(b);
}

static void test_bus_sub_follower_resumes_after_a_server_restart(void)
{
    bus *b = connect_bus();
    ensure(b, "SRESTART", "srestart.>");
    CU_ASSERT_EQUAL(publish(b, "srestart.x", "r1", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "srestart.y", "not followed", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "srestart.x", "r2", NULL, NULL), CH_OK);
    sub_log *l = sub_log_new();
    bus_sub *x = follow(b, "SRESTART", "srestart.x", 1, 0, l);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 2, 5000), 2);

    CU_ASSERT_EQUAL_FATAL(natsd_restart(server), CH_OK);
    ch_status st = CH_UNAVAILABLE;
    for (int i = 0; i < 100 && st != CH_OK; i++) {
        st = publish(b, "srestart.x", "r3", "sr3-id", NULL); /* an id: a retry stores it once */
        if (st != CH_OK)
            test_sleep_ms(100);
    }
    CU_ASSERT_EQUAL_FATAL(st, CH_OK);
    CU_ASSERT_EQUAL(publish(b, "srestart.y", "not followed", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "srestart.x", "r4", "sr4-id", NULL), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 4, 15000), 4);
    test_sleep_ms(1000); /* a new subscription must not hand r1..r4 over again */
    const char *const want[] = {"r1", "r2", "r3", "r4"};
    CU_ASSERT_TRUE(sub_log_is(l, want, 4));
    if (!sub_log_is(l, want, 4))
        for (int i = 0; i < atomic_load(&l->n); i++)
            fprintf(stderr, "\n  follower got seq %llu %s", (unsigned long long)l->seq[i], l->data[i]);
    CU_ASSERT(timed_sub_stop(x) < 1000);
    free(l);
    bus_destroy(b);
}

/* A follower rewound hands over again from the sequence asked (the lowest
 * of the requests made before it acts on them), then goes on as before. */
static void test_bus_sub_follower_rewinds(void)
{
    bus *b = connect_bus();
    ensure(b, "SREWIND", "srewind.>");
    const char *const first[] = {"w1", "w2", "w3", "w4"};
    for (int i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(publish(b, "srewind.x", first[i], NULL, NULL), CH_OK);
    sub_log *l = sub_log_new();
    bus_sub *x = follow(b, "SREWIND", NULL, 1, 0, l);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 4, 5000), 4);
    bus_sub_rewind(x, 3);
    bus_sub_rewind(x, 2); /* the lowest wins */
    bus_sub_rewind(x, 4);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 7, 5000), 7);
    CU_ASSERT_EQUAL(publish(b, "srewind.x", "w5", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 8, 5000), 8);
    test_sleep_ms(700); /* nothing more: not w1 again, not w2..w4 a third time */
    const char *const want[] = {"w1", "w2", "w3", "w4", "w2", "w3", "w4", "w5"};
    const uint64_t want_seq[] = {1, 2, 3, 4, 2, 3, 4, 5};
    bool same = atomic_load(&l->n) == 8;
    for (int i = 0; same && i < 8; i++)
        same = strcmp(l->data[i], want[i]) == 0 && l->seq[i] == want_seq[i];
    CU_ASSERT_TRUE(same);
    if (!same)
        for (int i = 0; i < atomic_load(&l->n); i++)
            fprintf(stderr, "\n  follower got seq %llu %s", (unsigned long long)l->seq[i], l->data[i]);
    bus_sub_rewind(NULL, 1); /* accepted, no effect */
    CU_ASSERT(timed_sub_stop(x) < 1000);
    free(l);
    bus_destroy(b);
}

/* What has arrived goes over in one call, up to the batch cap. */
static void test_bus_sub_hands_over_batches_up_to_its_cap(void)
{
    enum { N = 200, CAP = 16 };
    bus *b = connect_bus();
    ensure(b, "SBATCH", "sbatch.>");
    for (int i = 0; i < N; i++) {
        bus_out_msg m = {.subject = "sbatch.x", .data = "b", .len = 1};
        CU_ASSERT_EQUAL_FATAL(bus_publish_async(b, &m), CH_OK);
    }
    CU_ASSERT_EQUAL_FATAL(bus_publish_async_wait(b, 10000, NULL), CH_OK);
    sub_log *l = sub_log_new();
    bus_sub *x = follow(b, "SBATCH", NULL, 1, CAP, l);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, N, 10000), N);
    bus_sub_stop(x);
    CU_ASSERT(atomic_load(&l->largest) <= CAP);
    CU_ASSERT(atomic_load(&l->largest) > 1); /* they were stored before: several per call */
    CU_ASSERT(atomic_load(&l->batches) >= N / CAP);
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL(l->seq[i], (uint64_t)i + 1);
    free(l);
    bus_destroy(b);
}

/* Two subscriptions on one durable (two replicas) share its messages: each
 * gets some, none gets one the other got, and their acks settle them. */
static void test_bus_sub_durable_shares_messages_between_subscriptions(void)
{
    enum { N = 200 };
    bus *b1 = connect_bus(), *b2 = connect_bus();
    ensure(b1, "SSHARE", "sshare.>");
    sub_log *l1 = sub_log_new(), *l2 = sub_log_new();
    bus_sub *x1 = consume(b1, "SSHARE", "sshare-c", 2000, l1);
    bus_sub *x2 = consume(b2, "SSHARE", "sshare-c", 2000, l2);
    char d[16];
    for (int i = 0; i < N; i++) {
        snprintf(d, sizeof d, "m%d", i);
        CU_ASSERT_EQUAL(publish(b1, "sshare.x", d, NULL, NULL), CH_OK);
    }
    long long end = test_now_ms() + 10000;
    while (atomic_load(&l1->n) + atomic_load(&l2->n) < N && test_now_ms() < end)
        test_sleep_ms(10);
    test_sleep_ms(2500); /* past AckWait: nothing acked comes back */
    bus_sub_stop(x1);
    bus_sub_stop(x2);
    int n1 = atomic_load(&l1->n), n2 = atomic_load(&l2->n);
    CU_ASSERT_EQUAL(n1 + n2, N);
    CU_ASSERT(n1 > 0 && n2 > 0);
    uint8_t got[N] = {0};
    int distinct = 0;
    for (int k = 0; k < 2; k++) {
        const sub_log *l = k ? l2 : l1;
        for (int i = 0; i < (k ? n2 : n1); i++) {
            int v = atoi(l->data[i] + 1);
            CU_ASSERT_EQUAL(l->deliveries[i], 1);
            if (v >= 0 && v < N && !got[v]++)
                distinct++;
        }
    }
    CU_ASSERT_EQUAL(distinct, N);
    CU_ASSERT_EQUAL(atomic_load(&l1->settle_errs) + atomic_load(&l2->settle_errs), 0);
    free(l1);
    free(l2);
    bus_destroy(b1);
    bus_destroy(b2);
}

/* A durable's messages are settled by whoever holds them: an ack and a term
 * end them, a nak brings one back after its delay. */
static void test_bus_sub_durable_ack_and_term_settle_nak_comes_back(void)
{
    bus *b = connect_bus();
    ensure(b, "SSETTLE", "ssettle.>");
    sub_log *l = sub_log_new();
    l->nak_ms = 300;
    bus_sub *x = consume(b, "SSETTLE", "ssettle-c", 1000, l);
    CU_ASSERT_EQUAL(publish(b, "ssettle.x", "ack1", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "ssettle.x", "nak1", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "ssettle.x", "term1", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 4, 5000), 4);
    test_sleep_ms(1500); /* past AckWait: what was settled stays settled */
    bus_sub_stop(x);
    CU_ASSERT_EQUAL(atomic_load(&l->n), 4); /* l has room for more: the first 4 are readable */
    const char *const want[] = {"ack1", "nak1", "term1", "nak1"};
    for (int i = 0; i < 4; i++)
        CU_ASSERT_STRING_EQUAL(l->data[i], want[i]);
    CU_ASSERT_EQUAL(l->deliveries[1], 1);
    CU_ASSERT_EQUAL(l->deliveries[3], 2);
    CU_ASSERT_EQUAL(l->seq[3], l->seq[1]);
    CU_ASSERT(l->at_ms[3] - l->at_ms[1] >= 290); /* not before the nak's delay */
    CU_ASSERT_EQUAL(atomic_load(&l->settle_errs), 0);

    /* and a new subscription on the durable finds nothing left */
    sub_log *again = sub_log_new();
    x = consume(b, "SSETTLE", "ssettle-c", 1000, again);
    test_sleep_ms(500);
    CU_ASSERT_EQUAL(atomic_load(&again->n), 0);
    bus_sub_stop(x);
    free(again);
    free(l);
    bus_destroy(b);
}

/* bus_dead_letter, from another thread than the subscription's: a copy to
 * deadletter.<subject> with the message's own headers (its Nats-Msg-Id as
 * Choreo-Original-Msg-Id), the Choreo-Dead-* ones and the message id
 * dlq:<stream>:<seq> (the subscription's stream when none is given); then a
 * term: it does not come back. The log line names the durable. */
static void test_bus_dead_letter_copies_then_terms(void)
{
    bus *b = connect_bus();
    ensure(b, "SDEAD", "sdead.>");
    sub_log *l = sub_log_new();
    bus_sub *x = consume(b, "SDEAD", "sdead-c", 1000, l);
    bus_out_msg m = {.subject = "sdead.x", .data = "keep-1", .len = 6, .msg_id = "sdead-1"};
    m.headers[0] = (bus_header){"X-A", "alpha"};
    m.nheaders = 1;
    CU_ASSERT_EQUAL(bus_publish(b, &m, 2000, NULL), CH_OK);
    CU_ASSERT_EQUAL(publish(b, "sdead.y", "keep-2", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL_FATAL(test_wait_atomic(&l->n_kept, 2, 5000), 2);
    CU_ASSERT_EQUAL(bus_dead_letter(b, l->kept[0], "SDEAD", "bad data"), CH_OK);
    CU_ASSERT_EQUAL(bus_dead_letter(b, l->kept[1], NULL, "worse data"), CH_OK);
    bus_in_free(l->kept[0]);
    bus_in_free(l->kept[1]);
    test_sleep_ms(1500); /* past AckWait: terminated, not redelivered */
    bus_sub_stop(x);
    CU_ASSERT_EQUAL(atomic_load(&l->n), 2);

    seen *s = seen_new();
    CU_ASSERT_EQUAL(bus_replay(b, BUS_DEADLETTER_STREAM, "deadletter.sdead.>", 1, collect, s, NULL), CH_OK);
    CU_ASSERT_EQUAL(s->n, 2);
    CU_ASSERT_STRING_EQUAL(s->subject[0], "deadletter.sdead.x");
    CU_ASSERT_STRING_EQUAL(s->data[0], "keep-1");
    CU_ASSERT_STRING_EQUAL(s->hdr_a[0], "alpha");
    CU_ASSERT_STRING_EQUAL(s->orig_msg_id[0], "sdead-1");
    CU_ASSERT_STRING_EQUAL(s->msg_id[0], "dlq:SDEAD:1");
    CU_ASSERT_STRING_EQUAL(s->reason[0], "bad data");
    CU_ASSERT_STRING_EQUAL(s->deliveries[0], "1");
    CU_ASSERT_STRING_EQUAL(s->orig_subject[0], "sdead.x");
    CU_ASSERT_STRING_EQUAL(s->subject[1], "deadletter.sdead.y");
    CU_ASSERT_STRING_EQUAL(s->msg_id[1], "dlq:SDEAD:2");
    CU_ASSERT_STRING_EQUAL(s->reason[1], "worse data");
    CU_ASSERT_TRUE(log_has("msg=\"message dead-lettered\" consumer=sdead-c subject=sdead.x "));
    CU_ASSERT_TRUE(log_has("msg=\"message dead-lettered\" consumer=sdead-c subject=sdead.y "));
    free(s);
    free(l);
    bus_destroy(b);
}

/* ---- pipes ---- */

#define PIPE_MAX 2000

/* What a pipe called back, in the order it did. */
typedef struct pipe_log {
    pthread_mutex_t mu;
    int ids[PIPE_MAX]; /* tokens: &ids[i] is publish i's */
    int n;             /* callbacks */
    int order[PIPE_MAX];
    int calls[PIPE_MAX];
    ch_status st[PIPE_MAX];
    bus_pub_ack ack[PIPE_MAX];
    atomic_int total;
} pipe_log;

static pipe_log *pipe_log_new(void)
{
    pipe_log *l = calloc(1, sizeof *l);
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    pthread_mutex_init(&l->mu, NULL);
    for (int i = 0; i < PIPE_MAX; i++)
        l->ids[i] = i;
    return l;
}

static void pipe_log_free(pipe_log *l)
{
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* The pipe's callback (a cnats thread, or the publishing or destroying one). */
static void on_piped(void *token, ch_status st, const bus_pub_ack *ack, void *ctx)
{
    pipe_log *l = ctx;
    int i = *(const int *)token;
    pthread_mutex_lock(&l->mu);
    if (l->n < PIPE_MAX)
        l->order[l->n] = i;
    l->n++;
    l->calls[i]++;
    l->st[i] = st;
    l->ack[i] = *ack;
    pthread_mutex_unlock(&l->mu);
    atomic_fetch_add(&l->total, 1);
}

static ch_status pipe_publish(bus_pipe *p, pipe_log *l, int i, const char *subject, const char *data,
                              const char *msg_id)
{
    bus_out_msg m = {.subject = subject, .data = data, .len = strlen(data), .msg_id = msg_id};
    return bus_pipe_publish(p, &m, &l->ids[i]);
}

/* True when the callbacks came once each, for publishes 0..n-1, in that order. */
static bool pipe_log_in_order(pipe_log *l, int n)
{
    bool ok = true;
    pthread_mutex_lock(&l->mu);
    ok = l->n == n;
    for (int i = 0; ok && i < n; i++)
        ok = l->order[i] == i && l->calls[i] == 1;
    pthread_mutex_unlock(&l->mu);
    return ok;
}

static void test_bus_pipe_calls_back_once_each_in_order(void)
{
    bus *b = connect_bus();
    ensure(b, "PIPE", "pipe.>");
    pipe_log *l = pipe_log_new();
    bus_pipe *p = NULL;
    char d[16];
    CU_ASSERT_EQUAL_FATAL(bus_pipe_create(b, on_piped, l, 0, &p), CH_OK);
    for (int i = 0; i < 10; i++) {
        snprintf(d, sizeof d, "c%d", i);
        CU_ASSERT_EQUAL(pipe_publish(p, l, i, "pipe.x", d, NULL), CH_OK);
    }
    CU_ASSERT_EQUAL(test_wait_atomic(&l->total, 10, 10000), 10);
    CU_ASSERT_TRUE(pipe_log_in_order(l, 10));
    for (int i = 0; i < 10; i++) {
        CU_ASSERT_EQUAL(l->st[i], CH_OK);
        CU_ASSERT_EQUAL(l->ack[i].seq, (uint64_t)i + 1);
        CU_ASSERT_FALSE(l->ack[i].duplicate);
    }
    CU_ASSERT_EQUAL(bus_pipe_in_flight(p), 0);

    /* the same Msg-Id again: a duplicate, with the first one's sequence */
    CU_ASSERT_EQUAL(pipe_publish(p, l, 10, "pipe.x", "once", "pipe-dup"), CH_OK);
    CU_ASSERT_EQUAL(pipe_publish(p, l, 11, "pipe.x", "once", "pipe-dup"), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->total, 12, 10000), 12);
    CU_ASSERT_EQUAL(l->st[10], CH_OK);
    CU_ASSERT_FALSE(l->ack[10].duplicate);
    CU_ASSERT_EQUAL(l->ack[10].seq, 11);
    CU_ASSERT_EQUAL(l->st[11], CH_OK);
    CU_ASSERT_TRUE(l->ack[11].duplicate);
    CU_ASSERT_EQUAL(l->ack[11].seq, 11);

    /* refused at once: the callback too, at once, on this thread */
    bus_out_msg bad = {.subject = "pipe.x", .data = "x", .len = 1, .nheaders = BUS_MAX_HEADERS + 1};
    CU_ASSERT_EQUAL(bus_pipe_publish(p, &bad, &l->ids[12]), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(atomic_load(&l->total), 13);
    CU_ASSERT_EQUAL(l->st[12], CH_INVALID_ARGUMENT);
    /* no stream captures the subject */
    CU_ASSERT_EQUAL(pipe_publish(p, l, 13, "nostream.pipe", "x", NULL), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->total, 14, 10000), 14);
    CU_ASSERT_EQUAL(l->st[13], CH_UNAVAILABLE);
    test_sleep_ms(300); /* nothing calls back twice, or late */
    CU_ASSERT_TRUE(pipe_log_in_order(l, 14));
    uint64_t msgs = 0;
    CU_ASSERT_EQUAL(bus_stream_info(b, "PIPE", &msgs, NULL), CH_OK);
    CU_ASSERT_EQUAL(msgs, 11);
    bus_pipe_destroy(p, 1000);
    bus_pipe_destroy(NULL, 0);
    CU_ASSERT_EQUAL(atomic_load(&l->total), 14);
    pipe_log_free(l);
    bus_destroy(b);
}

static void test_bus_pipe_many_in_flight(void)
{
    bus *b = connect_bus();
    ensure(b, "PIPEN", "pipen.>");
    pipe_log *l = pipe_log_new();
    bus_pipe *p = NULL;
    char d[16];
    int refused = 0;
    CU_ASSERT_EQUAL_FATAL(bus_pipe_create(b, on_piped, l, 0, &p), CH_OK);
    for (int i = 0; i < PIPE_MAX; i++) {
        snprintf(d, sizeof d, "n%d", i);
        refused += pipe_publish(p, l, i, "pipen.x", d, NULL) != CH_OK;
    }
    CU_ASSERT_EQUAL(refused, 0);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->total, PIPE_MAX, 20000), PIPE_MAX);
    test_sleep_ms(300);
    CU_ASSERT_TRUE(pipe_log_in_order(l, PIPE_MAX));
    int ok = 0, in_seq = 0;
    for (int i = 0; i < PIPE_MAX; i++) {
        ok += l->st[i] == CH_OK;
        in_seq += l->ack[i].seq == (uint64_t)i + 1;
    }
    CU_ASSERT_EQUAL(ok, PIPE_MAX);
    CU_ASSERT_EQUAL(in_seq, PIPE_MAX);
    CU_ASSERT_EQUAL(bus_pipe_in_flight(p), 0);
    uint64_t msgs = 0;
    CU_ASSERT_EQUAL(bus_stream_info(b, "PIPEN", &msgs, NULL), CH_OK);
    CU_ASSERT_EQUAL(msgs, PIPE_MAX);
    bus_pipe_destroy(p, 0);
    CU_ASSERT_EQUAL(atomic_load(&l->total), PIPE_MAX);
    pipe_log_free(l);
    bus_destroy(b);
}

/* The pipe reads PubAcks itself: a stream named like one of their keys
 * ("seq", "duplicate") does not confuse it. */
static void test_bus_pipe_reads_pub_acks_of_a_stream_named_seq(void)
{
    bus *b = connect_bus();
    ensure(b, "seq", "seqname.>");
    ensure(b, "duplicate", "dupname.>");
    pipe_log *l = pipe_log_new();
    bus_pipe *p = NULL;
    CU_ASSERT_EQUAL_FATAL(bus_pipe_create(b, on_piped, l, 0, &p), CH_OK);
    CU_ASSERT_EQUAL(pipe_publish(p, l, 0, "seqname.a", "one", "named-1"), CH_OK);
    CU_ASSERT_EQUAL(pipe_publish(p, l, 1, "seqname.b", "two", "named-2"), CH_OK);
    CU_ASSERT_EQUAL(pipe_publish(p, l, 2, "seqname.b", "two", "named-2"), CH_OK);
    CU_ASSERT_EQUAL(pipe_publish(p, l, 3, "dupname.a", "one", "named-3"), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->total, 4, 10000), 4);
    for (int i = 0; i < 4; i++) { /* two streams: in order within each */
        CU_ASSERT_EQUAL(l->calls[i], 1);
        CU_ASSERT_EQUAL(l->st[i], CH_OK);
    }
    CU_ASSERT_EQUAL(l->ack[0].seq, 1);
    CU_ASSERT_FALSE(l->ack[0].duplicate);
    CU_ASSERT_EQUAL(l->ack[1].seq, 2);
    CU_ASSERT_FALSE(l->ack[1].duplicate);
    CU_ASSERT_EQUAL(l->ack[2].seq, 2);
    CU_ASSERT_TRUE(l->ack[2].duplicate);
    CU_ASSERT_EQUAL(l->ack[3].seq, 1);
    CU_ASSERT_FALSE(l->ack[3].duplicate);
    bus_pipe_destroy(p, 0);
    pipe_log_free(l);
    bus_destroy(b);
}

/* Pipelined compare-and-set: each publish expects the stream's last
 * sequence and the message before it. When another writer stored first,
 * the first expectation fails with CH_CONFLICT and says where the stream
 * is; the one chained behind it fails too, though its sequence matches. */
static void test_bus_pipe_lost_expectation_is_a_conflict_with_the_last_sequence(void)
{
    bus *b = connect_bus();
    ensure(b, "PIPECAS", "pipecas.>");
    pipe_log *l = pipe_log_new();
    bus_pipe *p = NULL;
    CU_ASSERT_EQUAL_FATAL(bus_pipe_create(b, on_piped, l, 0, &p), CH_OK);
    bus_out_msg m = {.subject = "pipecas.a", .data = "x", .len = 1, .expect_seq = true};

    m.msg_id = "p1";
    m.expect_last_seq = 0;
    CU_ASSERT_EQUAL(bus_pipe_publish(p, &m, &l->ids[0]), CH_OK);
    m.msg_id = "p2";
    m.expect_last_seq = 1;
    m.expect_last_msg_id = "p1";
    CU_ASSERT_EQUAL(bus_pipe_publish(p, &m, &l->ids[1]), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->total, 2, 10000), 2);
    CU_ASSERT_EQUAL(l->st[0], CH_OK);
    CU_ASSERT_EQUAL(l->st[1], CH_OK);
    CU_ASSERT_EQUAL(l->ack[1].seq, 2);

    /* another writer */
    CU_ASSERT_EQUAL(publish(b, "pipecas.b", "other", NULL, NULL), CH_OK);
    m.msg_id = "q1";
    m.expect_last_seq = 2;
    m.expect_last_msg_id = "p2";
    CU_ASSERT_EQUAL(bus_pipe_publish(p, &m, &l->ids[2]), CH_OK);
    m.msg_id = "q2";
    m.expect_last_seq = 3; /* what the stream's last is, by chance */
    m.expect_last_msg_id = "q1";
    CU_ASSERT_EQUAL(bus_pipe_publish(p, &m, &l->ids[3]), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->total, 4, 10000), 4);
    CU_ASSERT_TRUE(pipe_log_in_order(l, 4));
    CU_ASSERT_EQUAL(l->st[2], CH_CONFLICT);
    CU_ASSERT_EQUAL(l->ack[2].conflict_last_seq, 3);
    CU_ASSERT_EQUAL(l->ack[2].seq, 0);
    CU_ASSERT_EQUAL(l->st[3], CH_CONFLICT);
    CU_ASSERT_EQUAL(l->ack[3].seq, 0);
    uint64_t msgs = 0, last = 0;
    CU_ASSERT_EQUAL(bus_stream_info(b, "PIPECAS", &msgs, &last), CH_OK);
    CU_ASSERT_EQUAL(msgs, 3);
    CU_ASSERT_EQUAL(last, 3);
    bus_pipe_destroy(p, 0);
    pipe_log_free(l);
    bus_destroy(b);
}

/* Publishes nobody answers (a plain NATS subscriber takes them, no stream):
 * the pipe's timeout reports them as CH_TIMEOUT; destroying the pipe
 * reports those still in flight as CH_UNAVAILABLE, once each, at once. */
static void test_bus_pipe_times_out_and_destroy_reports_what_is_in_flight(void)
{
    bus *b = connect_bus();
    natsConnection *nc = NULL;
    natsSubscription *hole = NULL;
    CU_ASSERT_EQUAL_FATAL(natsConnection_ConnectTo(&nc, natsd_url(server)), NATS_OK);
    CU_ASSERT_EQUAL_FATAL(natsConnection_SubscribeSync(&hole, nc, "pipehole.>"), NATS_OK);
    CU_ASSERT_EQUAL_FATAL(natsConnection_Flush(nc), NATS_OK);

    pipe_log *l = pipe_log_new();
    bus_pipe *p = NULL;
    CU_ASSERT_EQUAL_FATAL(bus_pipe_create(b, on_piped, l, 300, &p), CH_OK);
    long long t0 = test_now_ms();
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(pipe_publish(p, l, i, "pipehole.x", "lost", NULL), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->total, 3, 10000), 3);
    long long took = test_now_ms() - t0;
    CU_ASSERT(took >= 250);
    CU_ASSERT_TRUE(pipe_log_in_order(l, 3));
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(l->st[i], CH_TIMEOUT);
    CU_ASSERT_EQUAL(bus_pipe_in_flight(p), 0);
    bus_pipe_destroy(p, 0);
    pipe_log_free(l);

    l = pipe_log_new();
    CU_ASSERT_EQUAL_FATAL(bus_pipe_create(b, on_piped, l, 30000, &p), CH_OK);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(pipe_publish(p, l, i, "pipehole.y", "lost", NULL), CH_OK);
    test_sleep_ms(200);
    CU_ASSERT_EQUAL(bus_pipe_in_flight(p), 5);
    CU_ASSERT_EQUAL(atomic_load(&l->total), 0);
    t0 = test_now_ms();
    bus_pipe_destroy(p, 0);
    CU_ASSERT(test_now_ms() - t0 < 1000);
    CU_ASSERT_TRUE(pipe_log_in_order(l, 5));
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(l->st[i], CH_UNAVAILABLE);
    test_sleep_ms(300); /* and nothing late */
    CU_ASSERT_EQUAL(atomic_load(&l->total), 5);
    pipe_log_free(l);

    natsSubscription_Destroy(hole);
    natsConnection_Destroy(nc);
    bus_destroy(b);
}

static void test_bus_connection_state(void)
{
    bus *b = connect_bus();
    ensure(b, "CONN", "conn.>");
    CU_ASSERT_TRUE(bus_connected(b));
    sub_log *l = sub_log_new();
    bus_sub *x = consume(b, "CONN", "conn-c", 2000, l);
    CU_ASSERT_EQUAL(publish(b, "conn.x", "before", NULL, NULL), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 1, 5000), 1);

    int downs = atomic_load(&state_downs), ups = atomic_load(&state_ups);
    CU_ASSERT_EQUAL(natsd_stop(server), CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&state_downs, downs + 1, 5000), downs + 1);
    CU_ASSERT_FALSE(bus_connected(b));
    long long t0 = test_now_ms();
    ch_status st = publish(b, "conn.x", "while-down", NULL, NULL);
    CU_ASSERT(st == CH_UNAVAILABLE || st == CH_TIMEOUT);
    CU_ASSERT(test_now_ms() - t0 < 3000);
    bus_out_msg m = {.subject = "conn.x", .data = "x", .len = 1};
    CU_ASSERT_EQUAL(bus_publish_async(b, &m), CH_UNAVAILABLE);

    CU_ASSERT_EQUAL_FATAL(natsd_restart(server), CH_OK);
    CU_ASSERT(test_wait_atomic(&state_ups, ups + 1, 10000) >= ups + 1);
    CU_ASSERT_TRUE(bus_connected(b));
    /* The stream survived (file storage) and the subscription resumes. */
    st = CH_UNAVAILABLE;
    for (int i = 0; i < 50 && st != CH_OK; i++) {
        st = publish(b, "conn.x", "after", NULL, NULL);
        if (st != CH_OK) {
            test_sleep_ms(100);
        }
    }
    CU_ASSERT_EQUAL(st, CH_OK);
    CU_ASSERT_EQUAL(test_wait_atomic(&l->n, 2, 10000), 2);
    CU_ASSERT_STRING_EQUAL(l->data[1], "after");
    CU_ASSERT_EQUAL(atomic_load(&l->settle_errs), 0);
    uint64_t msgs = 0;
    CU_ASSERT_EQUAL(bus_stream_info(b, "CONN", &msgs, NULL), CH_OK);
    CU_ASSERT_EQUAL(msgs, 2);
    bus_sub_stop(x);
    free(l);
    bus_destroy(b);
}

static void test_bus_create_before_server(void)
{
    int port = test_free_port();
    CU_ASSERT_FATAL(port > 0);
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", port);
    atomic_store(&state_ups, 0);
    bus_options o = {.url = url, .on_state = on_state, .reconnect_wait_ms = 50, .reconnect_wait_max_ms = 200};
    bus *b = NULL;
    CU_ASSERT_EQUAL_FATAL(bus_create(&b, &o), CH_OK);
    CU_ASSERT_FALSE(bus_connected(b));
    CU_ASSERT_EQUAL(publish(b, "late.x", "x", NULL, NULL), CH_UNAVAILABLE);
    natsd *late = NULL;
    natsd_options no = {.port = port};
    CU_ASSERT_EQUAL_FATAL(natsd_start(&late, &no), CH_OK);
    CU_ASSERT(test_wait_atomic(&state_ups, 1, 10000) >= 1);
    CU_ASSERT_TRUE(bus_connected(b));
    ensure(b, "LATE", "late.>");
    CU_ASSERT_EQUAL(publish(b, "late.x", "x", NULL, NULL), CH_OK);
    bus_destroy(b);
    natsd_destroy(late);

    /* Without retry, an unreachable server is an error. */
    o.no_retry_on_failed_connect = true;
    CU_ASSERT_EQUAL(bus_create(&b, &o), CH_UNAVAILABLE);
    CU_ASSERT_PTR_NULL(b);
    bus_destroy(NULL);
}

static int suite_init(void)
{
    if (natsd_start(&server, NULL) != CH_OK) {
        return 1;
    }
    bus_options o = {.url = natsd_url(server)};
    bus *b = NULL;
    if (bus_create(&b, &o) != CH_OK) {
        return 1;
    }
    ch_status st = bus_ensure_deadletter_stream(b, 1);
    bus_destroy(b);
    return st == CH_OK ? 0 : 1;
}

static int suite_clean(void)
{
    natsd_destroy(server);
    server = NULL;
    return 0;
}

int main(void)
{
    static const cu_test tests[] = {
        {"ensure stream idempotent", test_bus_ensure_stream_idempotent},
        {"ensure stream concurrently", test_bus_ensure_stream_concurrently},
        {"get by sequence", test_bus_get_seq},
        {"publish dedup", test_bus_publish_dedup},
        {"publish expects the stream's last sequence", test_bus_publish_expects_the_streams_last_sequence},
        {"headers survive", test_bus_headers_survive},
        {"async batch", test_bus_async_batch},
        {"replay empty and filter", test_bus_replay_empty_and_filter},
        {"replay large", test_bus_replay_large},
        {"sub follows from the start, in order, with a filter",
         test_bus_sub_follows_from_the_start_in_order_with_a_filter},
        {"sub follows from a later sequence", test_bus_sub_follows_from_a_later_sequence},
        {"sub follower waits for the stream", test_bus_sub_follower_waits_for_the_stream},
        {"sub follower resumes after a server restart", test_bus_sub_follower_resumes_after_a_server_restart},
        {"sub follower rewinds", test_bus_sub_follower_rewinds},
        {"sub hands over batches up to its cap", test_bus_sub_hands_over_batches_up_to_its_cap},
        {"sub durable shares messages between subscriptions",
         test_bus_sub_durable_shares_messages_between_subscriptions},
        {"sub durable: ack and term settle, nak comes back",
         test_bus_sub_durable_ack_and_term_settle_nak_comes_back},
        {"dead letter copies then terms", test_bus_dead_letter_copies_then_terms},
        {"pipe calls back once each, in order", test_bus_pipe_calls_back_once_each_in_order},
        {"pipe many in flight", test_bus_pipe_many_in_flight},
        {"pipe reads PubAcks of a stream named seq", test_bus_pipe_reads_pub_acks_of_a_stream_named_seq},
        {"pipe lost expectation is a conflict with the last sequence",
         test_bus_pipe_lost_expectation_is_a_conflict_with_the_last_sequence},
        {"pipe times out, and destroy reports what is in flight",
         test_bus_pipe_times_out_and_destroy_reports_what_is_in_flight},
        {"connection state", test_bus_connection_state},
        {"create before server", test_bus_create_before_server},
        {NULL, NULL},
    };

    int fd = mkstemp(log_path);
    if (fd < 0 || fcntl(fd, F_SETFL, O_APPEND) != 0)
        return 1;
    log_configure("test_bus", getenv("TEST_LOG") ? LOG_DEBUG : LOG_WARN, fd);
    int rc = cu_run("bus", suite_init, suite_clean, tests);
    bus_library_shutdown();
    if (rc != 0 || getenv("TEST_LOG")) {
        char line[2 * LOG_LINE_MAX];
        FILE *f = fopen(log_path, "r");
        while (f && fgets(line, sizeof line, f))
            fputs(line, stderr);
        if (f)
            fclose(f);
    }
    close(fd);
    unlink(log_path);
    return rc;
}
