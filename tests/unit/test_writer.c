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
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

typedef struct toy {
    int64_t budget;
    int64_t paid, declined;
    strmap decided;                               /* order id -> itself */
    char ids[TOY_ORDERS][EVENT_ORDER_ID_MAX + 1]; /* the keys' storage */
    int n_ids;
    atomic_int finished_events;
    atomic_int undone;
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
    };
    n->b = n->b ? n->b : connect_bus();
    n->t = calloc(1, sizeof *n->t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(n->t);
    n->t->budget = budget; /* what the stream folds in is taken from it */
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

/* Streams for one test: the producer's and the toy's own, emptied. */
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

static int suite_init(void)
{
    log_configure("test_writer", getenv("TEST_LOG_DEBUG") ? LOG_DEBUG : LOG_WARN, 2);
    if (natsd_start(&server, NULL) != CH_OK)
        return 1;
    server_url = natsd_url(server);
    return 0;
}

static int suite_clean(void)
{
    natsd_destroy(server);
    bus_library_shutdown();
    return 0;
}

int main(void)
{
    static const cu_test tests[] = {
        {"pipelines one writer", test_writer_pipelines_one_writer},
        {"two replicas race without lost or doubled decisions",
         test_writer_two_replicas_race_without_lost_or_doubled_decisions},
        {"catches up before a read", test_writer_catches_up_before_a_read},
        {"two replicas race on a three-node cluster", test_writer_two_replicas_race_on_a_three_node_cluster},
        {NULL, NULL},
    };
    return cu_run("writer", suite_init, suite_clean, tests);
}
