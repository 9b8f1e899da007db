/* test_writer.c: a service's one writer against a real nats-server (file
 * storage, temp dir, free port) started by tests/support/natsd.
 *
 * The service here is a toy payment: a budget of units; each
 * inventory.reserved it consumes is paid (payment.processed, one unit of the
 * budget) while the budget lasts, else declined (payment.failed); each order
 * is decided once. Its state is the fold of its stream, PAYMENT_EVENTS. Each
 * "replica" is a writer with its own bus connection and its own state; the
 * replicas share the durable consumer and write the same stream. */
#include <CUnit/Basic.h>
#include <fcntl.h>
#include <pb_encode.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cu_run.h"
#include "event_bus.h"
#include "log.h"
#include "natsd.h"
#include "proc.h"
#include "strmap.h"
#include "writer.h"

static natsd *server;
static const char *server_url; /* the one server's, or a cluster's list */
static int stream_replicas = 1;

/* ---- the toy service ---- */

#define TOY_ORDERS 4096
#define TOY_CALLS  64

/* One decide() call on an event. */
typedef struct toy_call {
    char order_id[EVENT_ORDER_ID_MAX + 1];
    uint64_t deliveries;
    long long at_ms;
} toy_call;

typedef struct toy {
    int64_t budget;
    int64_t paid, declined;
    strmap decided;                               /* order id -> itself */
    char ids[TOY_ORDERS][EVENT_ORDER_ID_MAX + 1]; /* the keys' storage */
    int n_ids;
    atomic_int finished_events;
    atomic_int undone;
    pthread_mutex_t calls_mu;
    toy_call calls[TOY_CALLS]; /* the first decide() calls on events, in order */
    int n_calls;
} toy;

typedef struct toy_undo {
    int paid; /* 1: a payment.processed was applied, 0: a payment.failed */
} toy_undo;

static bool toy_decided(const toy *t, const char *id)
{
    return strmap_get(&t->decided, id) != NULL;
}

/* The reducer: one decision per order, in the budget. */
static ch_status toy_apply(toy *t, const char *id, bool paid)
{
    if (toy_decided(t, id))
        return CH_OK;
    if (t->n_ids == TOY_ORDERS || strmap_reserve(&t->decided) != CH_OK)
        return CH_NO_MEMORY;
    char *key = t->ids[t->n_ids++];
    snprintf(key, EVENT_ORDER_ID_MAX + 1, "%s", id);
    strmap_put(&t->decided, key, key);
    if (paid) {
        t->budget--;
        t->paid++;
    } else {
        t->declined++;
    }
    return CH_OK;
}

static ch_status toy_fold(void *ctx, const choreo_events_v1_Envelope *env, uint64_t seq)
{
    event_type ty;
    (void)seq;
    if (event_type_of(env, &ty) != CH_OK)
        return CH_INVALID_ARGUMENT;
    return toy_apply(ctx, env->order_id, ty == EVENT_PAYMENT_PROCESSED);
}

static void toy_record_call(toy *t, const char *order_id, uint64_t deliveries)
{
    pthread_mutex_lock(&t->calls_mu);
    if (t->n_calls < TOY_CALLS) {
        toy_call *c = &t->calls[t->n_calls++];
        snprintf(c->order_id, sizeof c->order_id, "%s", order_id);
        c->deliveries = deliveries;
        c->at_ms = test_now_ms();
    }
    pthread_mutex_unlock(&t->calls_mu);
}

/* How many times decide() saw order_id; the k-th call (from 0) into *out. */
static int toy_calls_of(toy *t, const char *order_id, int k, toy_call *out)
{
    int n = 0;
    pthread_mutex_lock(&t->calls_mu);
    for (int i = 0; i < t->n_calls; i++) {
        if (strcmp(t->calls[i].order_id, order_id) != 0)
            continue;
        if (n++ == k && out)
            *out = t->calls[i];
    }
    pthread_mutex_unlock(&t->calls_mu);
    return n;
}

/* What a read call asks for and gets. */
typedef struct toy_read {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    ch_status st;
    int64_t budget, paid, declined;
    const char *order_id; /* also: decided? */
    bool decided;
} toy_read;

static ch_status toy_decide(void *ctx, writer *w, writer_input *in)
{
    toy *t = ctx;
    if (in->kind == WRITER_CALL)
        return CH_OK; /* a read: answered in finish, once current */
    const choreo_events_v1_Envelope *e = in->env;
    toy_record_call(t, e->order_id, in->msg->deliveries);
    /* orders named for a failure: "down-" cannot be decided at any
     * delivery, "flaky-" at its first two, "bad-" is refused for good;
     * "away-" meets NATS unavailable at its first five deliveries, "slow-"
     * NATS not answering in time at its first four */
    if (strncmp(e->order_id, "down-", 5) == 0 ||
        (strncmp(e->order_id, "flaky-", 6) == 0 && in->msg->deliveries <= 2))
        return CH_FAILED_PRECONDITION;
    if (strncmp(e->order_id, "away-", 5) == 0 && in->msg->deliveries <= 5)
        return CH_UNAVAILABLE;
    if (strncmp(e->order_id, "slow-", 5) == 0 && in->msg->deliveries <= 4)
        return CH_TIMEOUT;
    if (strncmp(e->order_id, "bad-", 4) == 0) {
        in->verdict = BUS_DEAD;
        snprintf(in->reason, sizeof in->reason, "toy refuses it");
        return CH_OK;
    }
    if (toy_decided(t, e->order_id)) {
        snprintf(in->reason, sizeof in->reason, "decided before");
        return CH_OK;
    }
    bool pay = t->budget > 0;
    choreo_events_v1_Envelope out;
    ch_status st = event_init_caused(&out, pay ? EVENT_PAYMENT_PROCESSED : EVENT_PAYMENT_FAILED, e, "toy");
    if (st != CH_OK)
        return st;
    if (pay) {
        snprintf(out.payload.payment_processed.customer_id, sizeof out.payload.payment_processed.customer_id,
                 "c");
        out.payload.payment_processed.amount_cents = 1;
    } else {
        snprintf(out.payload.payment_failed.customer_id, sizeof out.payload.payment_failed.customer_id, "c");
        snprintf(out.payload.payment_failed.reason, sizeof out.payload.payment_failed.reason, "no budget");
    }
    if ((st = toy_apply(t, e->order_id, pay)) != CH_OK)
        return st;
    toy_undo u = {pay};
    return writer_emit(w, &out, &u, sizeof u);
}

/* Undoes the newest decision: the last id added. */
static void toy_undo_fn(void *ctx, const void *undo, size_t len)
{
    toy *t = ctx;
    const toy_undo *u = undo;
    CU_ASSERT_EQUAL(len, sizeof *u);
    CU_ASSERT_FATAL(t->n_ids > 0);
    strmap_remove(&t->decided, t->ids[--t->n_ids]);
    if (u->paid) {
        t->budget++;
        t->paid--;
    } else {
        t->declined--;
    }
    atomic_fetch_add(&t->undone, 1);
}

static void toy_finish(void *ctx, writer_input *in, ch_status st)
{
    toy *t = ctx;
    if (in->kind != WRITER_CALL) {
        atomic_fetch_add(&t->finished_events, 1);
        return;
    }
    toy_read *r = in->call;
    pthread_mutex_lock(&r->mu);
    r->st = st;
    r->budget = t->budget;
    r->paid = t->paid;
    r->declined = t->declined;
    r->decided = r->order_id && toy_decided(t, r->order_id);
    r->done = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static const writer_ops toy_ops = {toy_fold, toy_decide, toy_undo_fn, toy_finish};

/* A replica: its own connection, writer and state. */
typedef struct node {
    bus *b;
    writer *w;
    toy *t;
    int max_deliver; /* the writer's; 0: its default */
} node;

static bus *connect_bus(void)
{
    bus_options o = {.url = server_url, .name = "test_writer", .publish_timeout_ms = 5000};
    bus *b = NULL;
    CU_ASSERT_EQUAL_FATAL(bus_create(&b, &o), CH_OK);
    return b;
}

/* Starts n's writer; `consume`: with its share of the consumer (else a
 * replica that only answers reads). */
static void node_start_as(node *n, int64_t budget, bool consume)
{
    writer_spec spec = {
        .service = "toy",
        .stream = EVENT_STREAM_PAYMENT,
        .ops = &toy_ops,
        .consumers = {{EVENT_INVENTORY_RESERVED}},
        .n_consumers = consume ? 1 : 0,
        .max_deliver = n->max_deliver,
    };
    n->b = n->b ? n->b : connect_bus();
    n->t = calloc(1, sizeof *n->t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(n->t);
    n->t->budget = budget; /* what the stream folds in is taken from it */
    pthread_mutex_init(&n->t->calls_mu, NULL);
    spec.ctx = n->t;
    CU_ASSERT_EQUAL_FATAL(writer_start(n->b, &spec, &n->w), CH_OK);
}

static void node_start(node *n, int64_t budget)
{
    node_start_as(n, budget, true);
}

static void node_stop(node *n)
{
    writer_destroy(n->w);
    n->w = NULL;
    strmap_free(&n->t->decided);
    pthread_mutex_destroy(&n->t->calls_mu);
    free(n->t);
    n->t = NULL;
}

static void node_free(node *n)
{
    node_stop(n);
    bus_destroy(n->b);
    n->b = NULL;
}

/* A read through the writer: answered once it is current. */
static ch_status node_read(node *n, toy_read *r, const char *order_id)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->order_id = order_id;
    ch_status st = writer_submit(n->w, r);
    if (st != CH_OK)
        return st;
    long long end = test_now_ms() + 10000;
    pthread_mutex_lock(&r->mu);
    while (!r->done && test_now_ms() < end) {
        pthread_mutex_unlock(&r->mu);
        test_sleep_ms(2);
        pthread_mutex_lock(&r->mu);
    }
    st = r->done ? r->st : CH_TIMEOUT;
    pthread_mutex_unlock(&r->mu);
    return st;
}

/* Streams for one test: the producer's, the toy's own and the dead
 * letters, emptied. */
static void fresh_streams(bus *b)
{
    bus_stream_spec inv = {
        .name = EVENT_STREAM_INVENTORY, .subjects = {"events.inventory.>"}, .replicas = stream_replicas};
    bus_stream_spec pay = {
        .name = EVENT_STREAM_PAYMENT, .subjects = {"events.payment.>"}, .replicas = stream_replicas};
    bus_delete_consumer(b, EVENT_STREAM_INVENTORY, "toy-inventory_reserved");
    CU_ASSERT_EQUAL_FATAL(bus_ensure_stream(b, &inv), CH_OK);
    CU_ASSERT_EQUAL_FATAL(bus_ensure_stream(b, &pay), CH_OK);
    CU_ASSERT_EQUAL_FATAL(bus_purge_stream(b, EVENT_STREAM_INVENTORY), CH_OK);
    CU_ASSERT_EQUAL_FATAL(bus_purge_stream(b, EVENT_STREAM_PAYMENT), CH_OK);
    CU_ASSERT_EQUAL_FATAL(bus_ensure_deadletter_stream(b, stream_replicas), CH_OK);
    CU_ASSERT_EQUAL_FATAL(bus_purge_stream(b, BUS_DEADLETTER_STREAM), CH_OK);
}

/* Publishes inventory.reserved for orders prefix-0 .. prefix-(n-1). */
static void reserve(bus *b, const char *prefix, int n)
{
    choreo_events_v1_Envelope *e = malloc(sizeof *e);
    char id[EVENT_ORDER_ID_MAX + 1];
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        CU_ASSERT_EQUAL_FATAL(event_init(e, EVENT_INVENTORY_RESERVED, id, "test", "test", NULL), CH_OK);
        snprintf(e->payload.inventory_reserved.customer_id, sizeof e->payload.inventory_reserved.customer_id,
                 "c");
        e->payload.inventory_reserved.total_cents = 1;
        CU_ASSERT_EQUAL_FATAL(event_publish_async(b, e), CH_OK);
    }
    CU_ASSERT_EQUAL_FATAL(bus_publish_async_wait(b, 10000, NULL), CH_OK);
    free(e);
}

/* The stream read back: decisions per order, and payments. */
typedef struct tally {
    int events, paid, twice, bad_seq;
    strmap seen;
    char ids[TOY_ORDERS][EVENT_ORDER_ID_MAX + 1];
    uint64_t last_seq;
} tally;

static ch_status tally_one(const bus_in_msg *m, void *ctx)
{
    tally *t = ctx;
    choreo_events_v1_Envelope e;
    const char *expect = bus_in_msg_header(m, BUS_HDR_EXPECTED_LAST_SEQ);
    /* every event was stored expecting exactly the one before it */
    if (!expect || strtoull(expect, NULL, 10) != m->stream_seq - 1)
        t->bad_seq++;
    if (event_decode(m->data, m->len, &e, NULL, 0) != CH_OK)
        return CH_INVALID_ARGUMENT;
    t->events++;
    t->paid += strcmp(e.type, "payment.processed") == 0;
    if (strmap_get(&t->seen, e.order_id)) {
        t->twice++;
    } else if (t->events <= TOY_ORDERS && strmap_reserve(&t->seen) == CH_OK) {
        char *k = t->ids[t->events - 1];
        snprintf(k, EVENT_ORDER_ID_MAX + 1, "%s", e.order_id);
        strmap_put(&t->seen, k, k);
    }
    t->last_seq = m->stream_seq;
    return CH_OK;
}

static tally *read_back(bus *b)
{
    tally *t = calloc(1, sizeof *t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(bus_replay(b, EVENT_STREAM_PAYMENT, NULL, 1, tally_one, t, NULL), CH_OK);
    return t;
}

static void tally_free(tally *t)
{
    strmap_free(&t->seen);
    free(t);
}

/* Waits until the replicas have finished `want` events between them. */
static bool wait_finished(node *nodes, int n, int want)
{
    long long end = test_now_ms() + 30000;
    int got = 0;
    while (test_now_ms() < end) {
        got = 0;
        for (int i = 0; i < n; i++)
            got += atomic_load(&nodes[i].t->finished_events);
        if (got >= want)
            return true;
        test_sleep_ms(10);
    }
    fprintf(stderr, "finished %d of %d events\n", got, want);
    return false;
}

/* ---- dead letters and log lines ---- */

#define MAX_DEAD 16

/* The DEADLETTER copies read back, with their Choreo-Dead-* headers. */
typedef struct dead {
    int n;
    char subject[MAX_DEAD][96];
    char orig_subject[MAX_DEAD][96];
    char orig_seq[MAX_DEAD][24];
    char deliveries[MAX_DEAD][24];
    char reason[MAX_DEAD][BUS_REASON_MAX];
} dead;

static void copy_header(char *dst, size_t cap, const bus_in_msg *m, const char *key)
{
    const char *v = bus_in_msg_header(m, key);
    snprintf(dst, cap, "%s", v ? v : "");
}

static ch_status dead_one(const bus_in_msg *m, void *ctx)
{
    dead *d = ctx;
    if (d->n == MAX_DEAD)
        return CH_RESOURCE_EXHAUSTED;
    int i = d->n++;
    snprintf(d->subject[i], sizeof d->subject[i], "%s", m->subject);
    copy_header(d->orig_subject[i], sizeof d->orig_subject[i], m, BUS_HDR_ORIGINAL_SUBJECT);
    copy_header(d->orig_seq[i], sizeof d->orig_seq[i], m, BUS_HDR_ORIGINAL_SEQ);
    copy_header(d->deliveries[i], sizeof d->deliveries[i], m, BUS_HDR_DELIVERIES);
    copy_header(d->reason[i], sizeof d->reason[i], m, BUS_HDR_DEAD_REASON);
    return CH_OK;
}

/* Reads the dead letters of inventory.reserved until there are `want` (10 s). */
static dead *dead_wait(bus *b, int want)
{
    dead *d = malloc(sizeof *d);
    long long end = test_now_ms() + 10000;
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    do {
        memset(d, 0, sizeof *d);
        CU_ASSERT_EQUAL(bus_replay(b, BUS_DEADLETTER_STREAM, "deadletter.events.inventory.reserved.>", 1,
                                   dead_one, d, NULL),
                        CH_OK);
        if (d->n >= want)
            break;
        test_sleep_ms(50);
    } while (test_now_ms() < end);
    return d;
}

/* The index of the dead letter of the event first published to subject; -1 if none. */
static int dead_of(const dead *d, const char *subject)
{
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->orig_subject[i], subject) == 0)
            return i;
    return -1;
}

/* The log goes to a file (suite_init) that the tests read back. */
static char log_path[] = "/tmp/test_writer_log_XXXXXX";
static int log_fd = -1;

/* Where the log ends now: what a test writes comes after it. */
static off_t log_mark(void)
{
    return lseek(log_fd, 0, SEEK_END);
}

/* Lines written since `from` that hold every one of the NULL-terminated needles. */
static int log_count(off_t from, const char *const *needles)
{
    char line[2 * LOG_LINE_MAX];
    int n = 0;
    FILE *f = fopen(log_path, "r");
    if (!f || fseeko(f, from, SEEK_SET) != 0) {
        if (f)
            fclose(f);
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        bool all = true;
        for (int i = 0; all && needles[i]; i++)
            all = strstr(line, needles[i]) != NULL;
        n += all;
    }
    fclose(f);
    return n;
}

/* log_count once it reaches want, or after 5 s. */
static int log_wait(off_t from, const char *const *needles, int want)
{
    long long end = test_now_ms() + 5000;
    int n;
    while ((n = log_count(from, needles)) < want && test_now_ms() < end)
        test_sleep_ms(20);
    return n;
}

#define HANDLED    "msg=\"event handled\""
#define LINES(...) ((const char *const[]){HANDLED, __VA_ARGS__, NULL})

/* ---- tests ---- */

/* One writer: a batch of decisions in flight at once, each stored expecting
 * the one before it; no conflict; the budget holds exactly. */
static void test_writer_pipelines_one_writer(void)
{
    node a = {0};
    writer_stats ws;
    toy_read r;

    a.b = connect_bus();
    fresh_streams(a.b);
    node_start(&a, 300);
    reserve(a.b, "one", 500);
    CU_ASSERT_TRUE(wait_finished(&a, 1, 500));
    CU_ASSERT_EQUAL(node_read(&a, &r, "one-499"), CH_OK);
    CU_ASSERT_EQUAL(r.paid, 300);
    CU_ASSERT_EQUAL(r.declined, 200);
    CU_ASSERT_EQUAL(r.budget, 0);
    CU_ASSERT_TRUE(r.decided);
    writer_get_stats(a.w, &ws);
    CU_ASSERT_EQUAL(ws.conflicts, 0);
    CU_ASSERT_EQUAL(ws.emitted, 500);
    tally *t = read_back(a.b);
    CU_ASSERT_EQUAL(t->events, 500);
    CU_ASSERT_EQUAL(t->paid, 300);
    CU_ASSERT_EQUAL(t->twice, 0);
    CU_ASSERT_EQUAL(t->bad_seq, 0);
    CU_ASSERT_EQUAL(writer_last_seq(a.w), t->last_seq);
    tally_free(t);

    /* a restart folds the same state from the stream */
    node_stop(&a);
    node_start(&a, 300);
    CU_ASSERT_EQUAL(node_read(&a, &r, NULL), CH_OK);
    CU_ASSERT_EQUAL(r.paid, 300);
    CU_ASSERT_EQUAL(r.declined, 200);
    node_free(&a);
}

/* Two replicas race on one stream: they share the consumer, each decides
 * from its own state, and the stream-level compare-and-set makes the loser
 * undo, catch up and decide again: no order decided twice, the budget never
 * overspent, both replicas end with the same state. */
static void test_writer_two_replicas_race_without_lost_or_doubled_decisions(void)
{
    node n[2] = {{0}, {0}};
    writer_stats s0, s1;
    toy_read r0, r1;
    bus *pub = connect_bus();

    fresh_streams(pub);
    for (int i = 0; i < 2; i++)
        node_start(&n[i], 700);
    for (int round = 0; round < 4; round++) {
        char prefix[16];
        snprintf(prefix, sizeof prefix, "race%d", round);
        reserve(pub, prefix, 250);
    }
    CU_ASSERT_TRUE(wait_finished(n, 2, 1000));
    CU_ASSERT_EQUAL(node_read(&n[0], &r0, "race3-249"), CH_OK);
    CU_ASSERT_EQUAL(node_read(&n[1], &r1, "race0-0"), CH_OK);
    /* each read caught up with the other replica first */
    CU_ASSERT_EQUAL(r0.paid, 700);
    CU_ASSERT_EQUAL(r0.declined, 300);
    CU_ASSERT_EQUAL(r1.paid, 700);
    CU_ASSERT_EQUAL(r1.declined, 300);
    CU_ASSERT_TRUE(r0.decided && r1.decided);

    tally *t = read_back(pub);
    CU_ASSERT_EQUAL(t->events, 1000);
    CU_ASSERT_EQUAL(t->paid, 700);
    CU_ASSERT_EQUAL(t->twice, 0);
    CU_ASSERT_EQUAL(t->bad_seq, 0);
    tally_free(t);

    writer_get_stats(n[0].w, &s0);
    writer_get_stats(n[1].w, &s1);
    fprintf(stderr, "\n  emitted %llu + %llu, conflicts %llu + %llu, undone %d + %d ",
            (unsigned long long)s0.emitted, (unsigned long long)s1.emitted, (unsigned long long)s0.conflicts,
            (unsigned long long)s1.conflicts, atomic_load(&n[0].t->undone), atomic_load(&n[1].t->undone));
    CU_ASSERT_EQUAL(s0.emitted + s1.emitted, 1000);   /* every event stored was one its writer saw stored */
    CU_ASSERT_TRUE(s0.emitted > 0 && s1.emitted > 0); /* both took a share */
    CU_ASSERT_TRUE(s0.conflicts + s1.conflicts > 0);  /* they did race */
    node_free(&n[0]);
    node_free(&n[1]);
    bus_destroy(pub);
}

/* A read on one replica sees what another stored before the read arrived,
 * though the reader wrote nothing since and does not follow the stream. */
static void test_writer_catches_up_before_a_read(void)
{
    node a = {0}, b = {0};
    writer_stats before, after;
    toy_read r;
    bus *pub = connect_bus();

    fresh_streams(pub);
    node_start(&a, 10);
    node_start_as(&b, 10, false); /* b only answers reads */
    CU_ASSERT_EQUAL(node_read(&b, &r, NULL), CH_OK);
    CU_ASSERT_EQUAL(r.paid, 0);
    writer_get_stats(b.w, &before);
    reserve(pub, "cu", 3);
    CU_ASSERT_TRUE(wait_finished(&a, 1, 3));
    CU_ASSERT_EQUAL(node_read(&b, &r, "cu-2"), CH_OK);
    CU_ASSERT_EQUAL(r.paid, 3);
    CU_ASSERT_TRUE(r.decided);
    writer_get_stats(b.w, &after);
    CU_ASSERT_EQUAL(after.folded - before.folded, 3);
    CU_ASSERT_EQUAL(writer_last_seq(b.w), writer_last_seq(a.w));
    /* and a read with nothing new costs one look, no fold */
    CU_ASSERT_EQUAL(node_read(&b, &r, NULL), CH_OK);
    CU_ASSERT_EQUAL(r.paid, 3);
    node_free(&a);
    node_free(&b);
    bus_destroy(pub);
}

/* The race again on what production runs: three NATS servers, R3 streams,
 * each replica connected through the list of all three. The
 * compare-and-set must hold on every replica of the stream. */
static void test_writer_two_replicas_race_on_a_three_node_cluster(void)
{
    natsd_cluster *c = NULL;
    const char *single = server_url;

    CU_ASSERT_EQUAL_FATAL(natsd_cluster_start(&c, 3), CH_OK);
    server_url = natsd_cluster_urls(c);
    stream_replicas = 3;
    test_writer_two_replicas_race_without_lost_or_doubled_decisions();
    stream_replicas = 1;
    server_url = single;
    natsd_cluster_destroy(c);
}

static ch_status publish_raw(bus *b, const char *subject, const void *data, size_t len)
{
    bus_out_msg m = {.subject = subject, .data = data, .len = len};
    return bus_publish(b, &m, 2000, NULL);
}

/* What the writer cannot decode, or what is not of its consumer's type, is
 * dead-lettered at once with the reason, without reaching decide(); the
 * events behind it keep flowing. One "event handled" line each. */
static void test_writer_dead_letters_what_does_not_decode_or_is_not_its_type(void)
{
    node a = {0};
    uint8_t *buf = malloc(EVENT_MAX_BYTES);
    choreo_events_v1_Envelope *e = calloc(1, sizeof *e);
    size_t len = 0;
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);

    a.b = connect_bus();
    fresh_streams(a.b);
    off_t mark = log_mark();
    /* garbage: a length-delimited field longer than the message */
    static const uint8_t garbage[] = {0x0a, 0x7f, 'x', 'y', 0xff};
    CU_ASSERT_EQUAL(publish_raw(a.b, "events.inventory.reserved.garbage-1", garbage, sizeof garbage), CH_OK);
    /* a valid payment.processed on the inventory.reserved subject */
    CU_ASSERT_EQUAL(event_init(e, EVENT_PAYMENT_PROCESSED, "mis-1", NULL, "payment", NULL), CH_OK);
    snprintf(e->payload.payment_processed.customer_id, sizeof e->payload.payment_processed.customer_id, "c");
    e->payload.payment_processed.amount_cents = 1;
    CU_ASSERT_EQUAL(event_encode(e, buf, EVENT_MAX_BYTES, &len, NULL, 0), CH_OK);
    CU_ASSERT_EQUAL(publish_raw(a.b, "events.inventory.reserved.mis-1", buf, len), CH_OK);
    /* an inventory.reserved from the future, encoded by hand (event_encode refuses it) */
    CU_ASSERT_EQUAL(event_init(e, EVENT_INVENTORY_RESERVED, "v99-1", NULL, "inventory", NULL), CH_OK);
    snprintf(e->payload.inventory_reserved.customer_id, sizeof e->payload.inventory_reserved.customer_id,
             "c");
    e->schema_version = 99;
    pb_ostream_t os = pb_ostream_from_buffer(buf, EVENT_MAX_BYTES);
    CU_ASSERT_FATAL(pb_encode(&os, choreo_events_v1_Envelope_fields, e));
    CU_ASSERT_EQUAL(publish_raw(a.b, "events.inventory.reserved.v99-1", buf, os.bytes_written), CH_OK);
    reserve(a.b, "after", 1); /* a good one behind them */

    node_start(&a, 10);
    CU_ASSERT_TRUE(wait_finished(&a, 1, 4));
    dead *d = dead_wait(a.b, 3);
    CU_ASSERT_EQUAL(d->n, 3);
    int g = dead_of(d, "events.inventory.reserved.garbage-1");
    int m = dead_of(d, "events.inventory.reserved.mis-1");
    int v = dead_of(d, "events.inventory.reserved.v99-1");
    /* not fatal from here on: the writer must be stopped below */
    CU_ASSERT_TRUE(g >= 0 && m >= 0 && v >= 0);
    if (g >= 0 && m >= 0 && v >= 0) {
        CU_ASSERT_STRING_EQUAL(d->subject[g], "deadletter.events.inventory.reserved.garbage-1");
        CU_ASSERT_PTR_NOT_NULL(strstr(d->reason[g], "undecodable"));
        CU_ASSERT_STRING_EQUAL(d->reason[m],
                               "event type payment.processed does not match consumer toy-inventory_reserved");
        CU_ASSERT_PTR_NOT_NULL(strstr(d->reason[v], "schema version 99 is newer than 1"));
        /* their sequences in INVENTORY_EVENTS, published one after the other */
        unsigned long long seq_g = strtoull(d->orig_seq[g], NULL, 10);
        CU_ASSERT(seq_g > 0);
        CU_ASSERT_EQUAL(strtoull(d->orig_seq[m], NULL, 10), seq_g + 1);
        CU_ASSERT_EQUAL(strtoull(d->orig_seq[v], NULL, 10), seq_g + 2);
    }
    for (int i = 0; i < d->n; i++)
        CU_ASSERT_STRING_EQUAL(d->deliveries[i], "1"); /* at once, not after retries */

    /* decide() saw only the good one, which was paid */
    CU_ASSERT_EQUAL(toy_calls_of(a.t, "mis-1", 0, NULL), 0);
    CU_ASSERT_EQUAL(toy_calls_of(a.t, "v99-1", 0, NULL), 0);
    CU_ASSERT_EQUAL(toy_calls_of(a.t, "after-0", 0, NULL), 1);
    toy_read r;
    CU_ASSERT_EQUAL(node_read(&a, &r, "after-0"), CH_OK);
    CU_ASSERT_TRUE(r.decided);
    CU_ASSERT_EQUAL(r.paid, 1);

    /* one line each, with its outcome and reason */
    CU_ASSERT_EQUAL(log_wait(mark, LINES("type=? ", "outcome=dead", "reason=\"undecodable"), 1), 1);
    CU_ASSERT_EQUAL(log_wait(mark, LINES("type=? ", "outcome=dead", "schema version 99"), 1), 1);
    CU_ASSERT_EQUAL(log_wait(mark, LINES("order_id=mis-1 ", "outcome=dead", "does not match consumer"), 1),
                    1);
    CU_ASSERT_EQUAL(log_wait(mark, LINES("order_id=after-0 ", "outcome=ack"), 1), 1);
    test_sleep_ms(300);
    CU_ASSERT_EQUAL(log_count(mark, LINES("type=? ")), 2);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=mis-1 ")), 1);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=after-0 ")), 1);
    free(d);
    free(e);
    free(buf);
    node_free(&a);
}

/* Starts a (its bus connected, its max_deliver set) on fresh streams, then
 * publishes inventory.reserved for <first>-0 and <second>-0; returns where
 * the log was before. */
static off_t start_and_reserve(node *a, const char *first, const char *second)
{
    a->b = connect_bus();
    fresh_streams(a->b);
    off_t mark = log_mark();
    node_start(a, 10);
    reserve(a->b, first, 1);
    reserve(a->b, second, 1);
    return mark;
}

/* A decide() that fails transiently is naked with the backoff (50 ms, then
 * 200 ms) and dead-lettered at max_deliver; one that recovers in time is
 * acked and comes no more. One line per delivery handled. */
static void test_writer_naks_transient_failures_with_backoff_then_dead_letters(void)
{
    node a = {.max_deliver = 3};
    toy_call c[4];
    off_t mark = start_and_reserve(&a, "down", "flaky");

    CU_ASSERT_TRUE(wait_finished(&a, 1, 6));
    dead *d = dead_wait(a.b, 1);
    test_sleep_ms(1000); /* longer than the next backoff: no fourth delivery */

    CU_ASSERT_EQUAL(toy_calls_of(a.t, "down-0", 0, NULL), 3);
    for (int k = 0; k < 3; k++) {
        toy_calls_of(a.t, "down-0", k, &c[k]);
        CU_ASSERT_EQUAL(c[k].deliveries, (uint64_t)k + 1);
    }
    CU_ASSERT(c[1].at_ms - c[0].at_ms >= 45);
    CU_ASSERT(c[2].at_ms - c[1].at_ms >= 190);
    CU_ASSERT_EQUAL(d->n, 1); /* d has room for more: index 0 is readable */
    CU_ASSERT_STRING_EQUAL(d->orig_subject[0], "events.inventory.reserved.down-0");
    CU_ASSERT_STRING_EQUAL(d->reason[0], "FAILED_PRECONDITION (gave up after 3 deliveries)");
    CU_ASSERT_STRING_EQUAL(d->deliveries[0], "3");

    CU_ASSERT_EQUAL(toy_calls_of(a.t, "flaky-0", 0, NULL), 3);
    toy_calls_of(a.t, "flaky-0", 2, &c[3]);
    CU_ASSERT_EQUAL(c[3].deliveries, 3);

    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=down-0 ")), 3);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=down-0 ", "deliveries=1 ", "outcome=retry",
                                          "reason=FAILED_PRECONDITION")),
                    1);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=down-0 ", "deliveries=2 ", "outcome=retry")), 1);
    CU_ASSERT_EQUAL(
        log_count(mark, LINES("order_id=down-0 ", "deliveries=3 ", "outcome=dead", "gave up after 3")), 1);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=flaky-0 ")), 3);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=flaky-0 ", "outcome=retry")), 2);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=flaky-0 ", "deliveries=3 ", "outcome=ack")), 1);
    free(d);
    node_free(&a);
}

/* NATS unavailable, or not answering in time, is not the event's fault (a
 * stream leader being elected takes seconds): such a failure is retried
 * past max_deliver, with the backoff, and never dead-lettered; the event
 * is acked once it goes through. */
static void test_writer_retries_while_nats_is_away_without_dead_letters(void)
{
    node a = {.max_deliver = 3};
    off_t mark = start_and_reserve(&a, "away", "slow");

    CU_ASSERT_TRUE(wait_finished(&a, 1, 11)); /* 6 + 5 deliveries, about 3.8 s */
    test_sleep_ms(2500);                      /* longer than the last backoff: no more deliveries */
    CU_ASSERT_EQUAL(toy_calls_of(a.t, "away-0", 0, NULL), 6);
    CU_ASSERT_EQUAL(toy_calls_of(a.t, "slow-0", 0, NULL), 5);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=away-0 ", "outcome=retry", "reason=UNAVAILABLE")), 5);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=away-0 ", "deliveries=6 ", "outcome=ack")), 1);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=slow-0 ", "outcome=retry", "reason=TIMEOUT")), 4);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=slow-0 ", "deliveries=5 ", "outcome=ack")), 1);
    CU_ASSERT_EQUAL(log_count(mark, LINES("outcome=dead")), 0);
    dead *d = dead_wait(a.b, 0);
    CU_ASSERT_EQUAL(d->n, 0);
    toy_read r;
    CU_ASSERT_EQUAL(node_read(&a, &r, "away-0"), CH_OK);
    CU_ASSERT_TRUE(r.decided);
    CU_ASSERT_EQUAL(node_read(&a, &r, "slow-0"), CH_OK);
    CU_ASSERT_TRUE(r.decided);
    free(d);
    node_free(&a);
}

/* decide() saying BUS_DEAD: dead-lettered at its first delivery, with the
 * reason it gave. */
static void test_writer_dead_letters_a_dead_verdict(void)
{
    node a = {0};
    off_t mark = start_and_reserve(&a, "bad", "fine");

    CU_ASSERT_TRUE(wait_finished(&a, 1, 2));
    dead *d = dead_wait(a.b, 1);
    test_sleep_ms(500);
    CU_ASSERT_EQUAL(d->n, 1); /* d has room for more: index 0 is readable */
    CU_ASSERT_STRING_EQUAL(d->orig_subject[0], "events.inventory.reserved.bad-0");
    CU_ASSERT_STRING_EQUAL(d->reason[0], "toy refuses it");
    CU_ASSERT_STRING_EQUAL(d->deliveries[0], "1");
    CU_ASSERT_EQUAL(toy_calls_of(a.t, "bad-0", 0, NULL), 1);
    CU_ASSERT_EQUAL(toy_calls_of(a.t, "fine-0", 0, NULL), 1);
    CU_ASSERT_EQUAL(log_wait(mark, LINES("order_id=bad-0 ", "outcome=dead", "reason=\"toy refuses it\""), 1),
                    1);
    CU_ASSERT_EQUAL(log_count(mark, LINES("order_id=bad-0 ")), 1);
    CU_ASSERT_EQUAL(log_wait(mark, LINES("order_id=fine-0 ", "outcome=ack"), 1), 1);
    free(d);
    node_free(&a);
}

/* ---- a follower: facts of another stream ---- */

static atomic_int facts_seen;

static ch_status facts_fold(void *ctx, const choreo_events_v1_Envelope *env, uint64_t seq)
{
    (void)ctx, (void)env, (void)seq;
    return CH_OK;
}

static ch_status facts_decide(void *ctx, writer *w, writer_input *in)
{
    (void)ctx, (void)w;
    if (in->kind == WRITER_FACT)
        atomic_fetch_add(&facts_seen, 1);
    return CH_OK;
}

static void facts_undo(void *ctx, const void *undo, size_t len)
{
    (void)ctx, (void)undo, (void)len;
}

/* Starts a writer following INVENTORY_EVENTS (types: n 0 for all) and
 * returns how long writer_start took, in ms. */
static long long start_follower(bus *b, writer **w, const event_type *types, int n)
{
    static const writer_ops ops = {facts_fold, facts_decide, facts_undo, NULL};
    writer_spec spec = {.service = "facts", .stream = EVENT_STREAM_PAYMENT, .ops = &ops, .n_follows = 1};
    spec.follows[0].stream = EVENT_STREAM_INVENTORY;
    for (int i = 0; i < n; i++)
        spec.follows[0].types[i] = types[i];
    spec.follows[0].n_types = n;
    atomic_store(&facts_seen, 0);
    long long t0 = test_now_ms();
    CU_ASSERT_EQUAL_FATAL(writer_start(b, &spec, w), CH_OK);
    return test_now_ms() - t0;
}

/* writer_start returns once the followed stream's events at start are
 * folded in (a read right after sees them), and promptly when the stream
 * holds nothing, whatever its last sequence, or only types not wanted. */
static void test_writer_start_folds_what_it_follows(void)
{
    bus *b = connect_bus();
    writer *w = NULL;
    const event_type failed_only[] = {EVENT_INVENTORY_FAILED};

    fresh_streams(b);
    reserve(b, "fol", 50);
    start_follower(b, &w, NULL, 0);
    CU_ASSERT_EQUAL(atomic_load(&facts_seen), 50); /* all of them, before start returned */
    writer_destroy(w);

    CU_ASSERT(start_follower(b, &w, failed_only, 1) < 5000); /* the last one is dropped unread */
    CU_ASSERT_EQUAL(atomic_load(&facts_seen), 0);
    writer_destroy(w);

    CU_ASSERT_EQUAL(bus_purge_stream(b, EVENT_STREAM_INVENTORY), CH_OK); /* last sequence 50, no message */
    CU_ASSERT(start_follower(b, &w, NULL, 0) < 5000);
    CU_ASSERT_EQUAL(atomic_load(&facts_seen), 0);
    reserve(b, "fol2", 3); /* and it follows on */
    long long end = test_now_ms() + 5000;
    while (atomic_load(&facts_seen) < 3 && test_now_ms() < end)
        test_sleep_ms(10);
    CU_ASSERT_EQUAL(atomic_load(&facts_seen), 3);
    writer_destroy(w);
    bus_destroy(b);
}

static int suite_init(void)
{
    /* the log goes to a file the tests read back (suite_clean shows its
     * warnings when a test failed) */
    log_fd = mkstemp(log_path);
    if (log_fd < 0 || fcntl(log_fd, F_SETFL, O_APPEND) != 0)
        return 1;
    log_configure("test_writer", getenv("TEST_LOG_DEBUG") ? LOG_DEBUG : LOG_INFO, log_fd);
    if (natsd_start(&server, NULL) != CH_OK)
        return 1;
    server_url = natsd_url(server);
    return 0;
}

static int suite_clean(void)
{
    natsd_destroy(server);
    bus_library_shutdown();
    if (CU_get_number_of_failures() > 0) {
        char line[2 * LOG_LINE_MAX];
        FILE *f = fopen(log_path, "r");
        while (f && fgets(line, sizeof line, f))
            if (!strstr(line, "level=info") && !strstr(line, "level=debug"))
                fputs(line, stderr);
        if (f)
            fclose(f);
    }
    close(log_fd);
    unlink(log_path);
    return 0;
}

int main(void)
{
    static const cu_test tests[] = {
        {"pipelines one writer", test_writer_pipelines_one_writer},
        {"two replicas race without lost or doubled decisions",
         test_writer_two_replicas_race_without_lost_or_doubled_decisions},
        {"catches up before a read", test_writer_catches_up_before_a_read},
        {"start folds what it follows", test_writer_start_folds_what_it_follows},
        {"dead-letters what does not decode or is not its type",
         test_writer_dead_letters_what_does_not_decode_or_is_not_its_type},
        {"naks transient failures with backoff, then dead-letters",
         test_writer_naks_transient_failures_with_backoff_then_dead_letters},
        {"retries while NATS is away without dead letters",
         test_writer_retries_while_nats_is_away_without_dead_letters},
        {"dead-letters a dead verdict", test_writer_dead_letters_a_dead_verdict},
        {"two replicas race on a three-node cluster", test_writer_two_replicas_race_on_a_three_node_cluster},
        {NULL, NULL},
    };
    return cu_run("writer", suite_init, suite_clean, tests);
}
