/* test_replicas.c: two replicas of every service against one nats-server,
 * or (built with REPLICAS_ON_CLUSTER, ctest integration.cluster) against a
 * three-node NATS cluster with R3 streams, reached through the list of its
 * three servers: what production runs, where replicated streams behave
 * differently from one server.
 *
 * Each service runs twice ("<svc>-a", "<svc>-b"): the replicas share their
 * durable consumers (competing consumers) and write their service's own
 * stream (compare-and-set on its last sequence: the loser catches up and
 * decides again); orders follows inventory's and payment's streams; a read
 * on either replica catches up with the stream first. The tests prove that work is split between replicas,
 * that no effect happens twice, that either replica answers with the same
 * state, and that one replica of each service dying (kill -9) stops no saga. */
#include <CUnit/CUnit.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "event_bus.h"
#include "choreo/notifications/v1/notifications.pb-c.h"
#include "choreo/orders/v1/orders.pb-c.h"
#include "cu_run.h"
#include "harness.h"
#include "order_core.h"
#include "saga_client.h"
#include "url_list.h"

enum { ORDERS, INVENTORY, PAYMENT, NOTIFICATIONS, NSVC };
enum { A, B, NREP };
static const char *const svc_names[NSVC] = {"orders", "inventory", "payment", "notifications"};
static const char *const svc_bins[NSVC] = {ORDERS_BIN, INVENTORY_BIN, PAYMENT_BIN, NOTIFICATIONS_BIN};

#ifdef REPLICAS_ON_CLUSTER
static natsd_cluster *cluster;
#else
static natsd *nats;
#endif
static svc_proc svc[NSVC][NREP];

#define CONFIRMED   CHOREO__ORDERS__V1__ORDER_STATUS__ORDER_STATUS_CONFIRMED
#define CANCELLED   CHOREO__ORDERS__V1__ORDER_STATUS__ORDER_STATUS_CANCELLED
#define N_CONFIRMED CHOREO__NOTIFICATIONS__V1__NOTIFICATION_KIND__NOTIFICATION_KIND_ORDER_CONFIRMED
#define N_CANCELLED CHOREO__NOTIFICATIONS__V1__NOTIFICATION_KIND__NOTIFICATION_KIND_ORDER_CANCELLED

static int suite_init(void)
{
    char name[32];
#ifdef REPLICAS_ON_CLUSTER
    const char *env[] = {"CHOREO_SHUTDOWN_GRACE_MS=3000", "CHOREO_STREAM_REPLICAS=3", NULL};
    if (natsd_cluster_start(&cluster, 3) != CH_OK)
        return 1;
    const char *url = natsd_cluster_urls(cluster);
#else
    const char *env[] = {"CHOREO_SHUTDOWN_GRACE_MS=3000", NULL};
    if (natsd_start(&nats, NULL) != CH_OK)
        return 1;
    const char *url = natsd_url(nats);
#endif
    for (int s = 0; s < NSVC; s++)
        for (int r = 0; r < NREP; r++) {
            snprintf(name, sizeof name, "%s-%c", svc_names[s], 'a' + r);
            if (svc_start(&svc[s][r], name, svc_bins[s], url, env, 30000) != CH_OK)
                return 1;
        }
    return 0;
}

static int suite_cleanup(void)
{
    for (int s = NSVC - 1; s >= 0; s--)
        for (int r = 0; r < NREP; r++)
            svc_destroy(&svc[s][r]);
#ifdef REPLICAS_ON_CLUSTER
    natsd_cluster_destroy(cluster);
#else
    natsd_destroy(nats);
#endif
    return 0;
}

/* ---- calls (one replica each) ---- */

static void set_stock(int r, const char *sku, int64_t n)
{
    CU_ASSERT_EQUAL_FATAL(sc_set_stock(svc[INVENTORY][r].client, sku, n), CH_OK);
}

typedef sc_stock stock;

static stock get_stock(int r, const char *sku)
{
    stock s;
    sc_get_stock(svc[INVENTORY][r].client, sku, &s);
    return s;
}

static void credit(int r, const char *customer, int64_t cents)
{
    CU_ASSERT_EQUAL_FATAL(sc_credit(svc[PAYMENT][r].client, customer, cents), CH_OK);
}

typedef sc_account account;

static account get_account(int r, const char *customer)
{
    account a;
    sc_get_account(svc[PAYMENT][r].client, customer, &a);
    return a;
}

/* Tries of a CreateOrder, 50 ms apart: about 5 s of NATS away; a run that
 * kills a stream's leader sets its own (the clients' part of the contract:
 * retry with the same key for as long as the outage lasts). */
#define PLACE_TRIES 100

/* CreateOrder with one item through orders replica r; while r is
 * unavailable, the other replica takes the same request (same idempotency
 * key, hence the same order), up to `tries` times. */
static ch_status place_tries(int r, const char *customer, const char *key, const char *sku, uint32_t qty,
                             int64_t price, char id[ORDER_ID_MAX + 1], int tries)
{
    rpc_client *const clients[NREP] = {svc[ORDERS][r].client, svc[ORDERS][r ^ 1].client};
    const sc_order o = {customer, key, sku, qty, price};
    return sc_place(clients, NREP, &o, tries, 50, id, ORDER_ID_MAX + 1);
}

static ch_status place(int r, const char *customer, const char *key, const char *sku, uint32_t qty,
                       int64_t price, char id[ORDER_ID_MAX + 1])
{
    return place_tries(r, customer, key, sku, qty, price, id, PLACE_TRIES);
}

/* The order's status as orders replica r sees it; -1 when unknown. */
static int status_at(int r, const char *id)
{
    return sc_order_status(svc[ORDERS][r].client, id, NULL, 0);
}

/* Polls replica r until the order is in status want (-2: any final one);
 * returns the last status seen. */
static int wait_status(int r, const char *id, int want, int timeout_ms)
{
    long long end = test_now_ms() + timeout_ms;
    int st;
    while (st = status_at(r, id),
           !(st == want || (want == -2 && (st == CONFIRMED || st == CANCELLED))) && test_now_ms() < end)
        test_sleep_ms(20);
    return st;
}

/* Notifications of one kind (0: any) for an order, as replica r lists them. */
static int notifications_at(int r, const char *order_id, int kind)
{
    return sc_notifications_of(svc[NOTIFICATIONS][r].client, order_id, kind);
}

/* True once replica r lists exactly one notification for the order, of kind. */
static bool wait_one_notification(int r, const char *order_id, int kind, int timeout_ms)
{
    long long end = test_now_ms() + timeout_ms;
    do {
        if (notifications_at(r, order_id, kind) == 1 && notifications_at(r, order_id, 0) == 1)
            return true;
        test_sleep_ms(20);
    } while (test_now_ms() < end);
    return false;
}

/* The work replica s took in: for the consumers (inventory, payment,
 * notifications) the events it handled and acked (`msg="event handled" ...
 * outcome=ack` lines); orders follows the other streams without acks, so
 * for it the orders it created (`msg="event published" type=order.created`). */
static int work_in_log(const svc_proc *s, bool orders)
{
    char line[4096];
    int n = 0;
    FILE *f = fopen(s->log_path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (orders ? strstr(line, "msg=\"event published\" type=order.created ") != NULL
                   : strstr(line, "msg=\"event handled\"") && strstr(line, " outcome=ack"))
            n++;
    fclose(f);
    return n;
}

/* ---- a run of orders from a few threads, through both orders replicas ---- */

#define RUN_MAX     240
#define RUN_THREADS 3
#define CUSTOMERS   6 /* the last one is poor */
#define SKUS        4 /* the last one runs out */
#define POOR_CREDIT 3000
#define SCARCE      20
#define PRICE       250

typedef struct order_rec {
    char id[ORDER_ID_MAX + 1];
    int customer, sku;
    uint32_t qty;
    int status; /* final */
} order_rec;

typedef struct run {
    const char *prefix; /* of keys, customers and skus */
    int n;              /* orders to place */
    int pace_ms;        /* pause between two orders of one thread */
    int place_tries;    /* CreateOrder tries per order; 0: PLACE_TRIES */
    atomic_int placed;
    atomic_int failed;
    order_rec orders[RUN_MAX];
} run;

typedef struct placer {
    pthread_t t;
    run *run;
    int index;
} placer;

static void customer_name(char *out, size_t cap, const char *prefix, int c)
{
    snprintf(out, cap, "%s-c%d", prefix, c);
}

static void sku_name(char *out, size_t cap, const char *prefix, int s)
{
    snprintf(out, cap, "%s-s%d", prefix, s);
}

static void *place_loop(void *arg)
{
    placer *p = arg;
    run *rn = p->run;
    char key[48], customer[32], sku[32];
    for (int k = p->index; k < rn->n; k += RUN_THREADS) {
        order_rec *o = &rn->orders[k];
        o->customer = (k * 7 + p->index) % CUSTOMERS;
        o->sku = k % SKUS;
        o->qty = 1 + (uint32_t)(k % 3);
        snprintf(key, sizeof key, "%s-%d", rn->prefix, k);
        customer_name(customer, sizeof customer, rn->prefix, o->customer);
        sku_name(sku, sizeof sku, rn->prefix, o->sku);
        /* order k goes to orders-a or orders-b in turn */
        if (place_tries(k % NREP, customer, key, sku, o->qty, PRICE, o->id,
                        rn->place_tries ? rn->place_tries : PLACE_TRIES) == CH_OK)
            atomic_fetch_add(&rn->placed, 1);
        else
            atomic_fetch_add(&rn->failed, 1);
        if (rn->pace_ms)
            test_sleep_ms(rn->pace_ms);
    }
    return NULL;
}

/* Seeds stock and credit (alternating the replica that writes them, so both
 * replicas write each stream) and starts the placers. */
static void run_start(run *rn, placer *pl)
{
    char name[32];
    for (int s = 0; s < SKUS; s++) {
        sku_name(name, sizeof name, rn->prefix, s);
        set_stock(s % NREP, name, s == SKUS - 1 ? SCARCE : 100000);
    }
    for (int c = 0; c < CUSTOMERS; c++) {
        customer_name(name, sizeof name, rn->prefix, c);
        credit((c + 1) % NREP, name, c == CUSTOMERS - 1 ? POOR_CREDIT : 10000000);
    }
    for (int i = 0; i < RUN_THREADS; i++) {
        pl[i] = (placer){.run = rn, .index = i};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&pl[i].t, NULL, place_loop, &pl[i]), 0);
    }
}

/* Joins the placers and waits for every saga to end, reading through orders
 * replica r; fills each order's final status. */
static void run_finish(run *rn, placer *pl, int r)
{
    for (int i = 0; i < RUN_THREADS; i++)
        pthread_join(pl[i].t, NULL);
    CU_ASSERT_EQUAL(atomic_load(&rn->placed), rn->n);
    CU_ASSERT_EQUAL(atomic_load(&rn->failed), 0);
    long long end = test_now_ms() + 40000;
    int ended = 0, confirmed = 0, cancelled = 0, unplanned = 0;
    for (int k = 0; k < rn->n; k++) {
        order_rec *o = &rn->orders[k];
        long long left = end - test_now_ms();
        o->status = wait_status(r, o->id, -2, left > 0 ? (int)left : 1);
        confirmed += o->status == CONFIRMED;
        cancelled += o->status == CANCELLED;
        if (o->status != CONFIRMED && o->status != CANCELLED)
            fprintf(stderr, "order %s (%d) stuck in status %d\n", o->id, k, o->status);
        /* only the scarce SKU or the poor customer may cancel an order */
        if (o->status == CANCELLED && o->sku != SKUS - 1 && o->customer != CUSTOMERS - 1) {
            fprintf(stderr, "order %s (%d) cancelled unplanned\n", o->id, k);
            unplanned++;
        }
    }
    ended = confirmed + cancelled;
    CU_ASSERT_EQUAL(ended, rn->n);
    CU_ASSERT_EQUAL(unplanned, 0);
    CU_ASSERT_TRUE(confirmed > 0);
    CU_ASSERT_TRUE(cancelled > 0);
}

static bool stock_eq(stock x, stock y)
{
    return x.available == y.available && x.reserved == y.reserved && x.sold == y.sold &&
           x.total_in == y.total_in;
}

static bool account_eq(account x, account y)
{
    return x.balance == y.balance && x.credited == y.credited && x.charged == y.charged &&
           x.refunded == y.refunded;
}

/* Stock of sku read through both inventory replicas, retried until both
 * answer the same and the saga's last effects have landed (sold == want_sold
 * and nothing reserved; want_sold < 0: any). Another replica's writes reach
 * a replica's reads by its catch-up before the read, and a commit may land
 * shortly after the order is CONFIRMED (a retried handler). */
static bool stock_settles(const char *sku, int64_t want_sold, stock *out, int timeout_ms)
{
    long long end = test_now_ms() + timeout_ms;
    stock sa, sb;
    do {
        sa = get_stock(A, sku);
        sb = get_stock(B, sku);
        if (stock_eq(sa, sb) && sa.total_in >= 0 &&
            (want_sold < 0 || (sa.sold == want_sold && sa.reserved == 0))) {
            *out = sa;
            return true;
        }
        test_sleep_ms(50);
    } while (test_now_ms() < end);
    fprintf(
        stderr,
        "stock of %s not settled (want sold=%lld reserved=0, same on both): a avail=%lld res=%lld sold=%lld "
        "in=%lld, b avail=%lld res=%lld sold=%lld in=%lld\n",
        sku, (long long)want_sold, (long long)sa.available, (long long)sa.reserved, (long long)sa.sold,
        (long long)sa.total_in, (long long)sb.available, (long long)sb.reserved, (long long)sb.sold,
        (long long)sb.total_in);
    *out = sa;
    return false;
}

/* The account read through both payment replicas, retried until both answer
 * the same with charged == want_charged (< 0: any). */
static bool account_settles(const char *customer, int64_t want_charged, account *out, int timeout_ms)
{
    long long end = test_now_ms() + timeout_ms;
    account aa, ab;
    do {
        aa = get_account(A, customer);
        ab = get_account(B, customer);
        if (account_eq(aa, ab) && aa.credited >= 0 && (want_charged < 0 || aa.charged == want_charged)) {
            *out = aa;
            return true;
        }
        test_sleep_ms(50);
    } while (test_now_ms() < end);
    fprintf(
        stderr,
        "account %s not settled (want charged=%lld, same on both): a bal=%lld cred=%lld chg=%lld ref=%lld, "
        "b bal=%lld cred=%lld chg=%lld ref=%lld\n",
        customer, (long long)want_charged, (long long)aa.balance, (long long)aa.credited,
        (long long)aa.charged, (long long)aa.refunded, (long long)ab.balance, (long long)ab.credited,
        (long long)ab.charged, (long long)ab.refunded);
    *out = aa;
    return false;
}

/* Everything the run did, read through BOTH replicas of every service:
 * equal answers, conservation, each effect exactly once (stock sold and
 * money charged are exactly the confirmed orders'), one notification per
 * order of its final kind, the same order status on both orders replicas. */
static void run_check_state(const run *rn)
{
    char name[32];
    for (int s = 0; s < SKUS; s++) {
        int64_t sold = 0;
        for (int k = 0; k < rn->n; k++)
            if (rn->orders[k].sku == s && rn->orders[k].status == CONFIRMED)
                sold += rn->orders[k].qty;
        sku_name(name, sizeof name, rn->prefix, s);
        stock st;
        CU_ASSERT_TRUE(stock_settles(name, sold, &st, 20000));
        CU_ASSERT_EQUAL(st.available + st.reserved + st.sold, st.total_in);
        CU_ASSERT_EQUAL(st.reserved, 0);
        CU_ASSERT_EQUAL(st.sold, sold);
        CU_ASSERT_EQUAL(st.total_in, s == SKUS - 1 ? SCARCE : 100000);
    }
    for (int c = 0; c < CUSTOMERS; c++) {
        int64_t charged = 0;
        for (int k = 0; k < rn->n; k++)
            if (rn->orders[k].customer == c && rn->orders[k].status == CONFIRMED)
                charged += (int64_t)rn->orders[k].qty * PRICE;
        customer_name(name, sizeof name, rn->prefix, c);
        account a;
        CU_ASSERT_TRUE(account_settles(name, charged, &a, 20000));
        CU_ASSERT_EQUAL(a.balance + a.charged - a.refunded, a.credited);
        CU_ASSERT_EQUAL(a.credited, c == CUSTOMERS - 1 ? POOR_CREDIT : 10000000);
        CU_ASSERT_EQUAL(a.charged, charged);
        CU_ASSERT_EQUAL(a.refunded, 0);
    }
    /* Waits are long on purpose: an event a killed replica had received but
     * not acked comes back only after its AckWait (10 s). */
    int bad_notes = 0, bad_status = 0;
    for (int k = 0; k < rn->n; k++) {
        const order_rec *o = &rn->orders[k];
        int kind = o->status == CONFIRMED ? N_CONFIRMED : N_CANCELLED;
        for (int r = 0; r < NREP; r++) {
            if (!wait_one_notification(r, o->id, kind, 20000)) {
                fprintf(stderr, "order %s: notifications-%c lists %d (want one of kind %d)\n", o->id, 'a' + r,
                        notifications_at(r, o->id, 0), kind);
                bad_notes++;
            }
            if (wait_status(r, o->id, o->status, 3000) != o->status)
                bad_status++;
        }
    }
    CU_ASSERT_EQUAL(bad_notes, 0);
    CU_ASSERT_EQUAL(bad_status, 0);
}

/* ---- tests ---- */

static void test_replicas_read_models_follow_the_stream(void)
{
    char id[ORDER_ID_MAX + 1];
    stock st;
    account ac;

    /* writes through one replica reach the other's reads */
    set_stock(A, "rm-sku", 10);
    CU_ASSERT_TRUE(stock_settles("rm-sku", 0, &st, 2000));
    CU_ASSERT_EQUAL(st.available, 10);
    credit(B, "rm-cust", 10000);
    CU_ASSERT_TRUE(account_settles("rm-cust", 0, &ac, 2000));
    CU_ASSERT_EQUAL(ac.balance, 10000);

    /* an order placed on one orders replica is read on the other */
    for (int r = 0; r < NREP; r++) {
        char key[16];
        snprintf(key, sizeof key, "rm-%d", r);
        CU_ASSERT_EQUAL_FATAL(place(r, "rm-cust", key, "rm-sku", 1, 100, id), CH_OK);
        long long end = test_now_ms() + 2000;
        while (status_at(r ^ 1, id) < 0 && test_now_ms() < end)
            test_sleep_ms(20);
        CU_ASSERT_TRUE(status_at(r ^ 1, id) >= 0); /* the other replica knows it */
        int here = wait_status(r, id, -2, 10000);
        CU_ASSERT_EQUAL(here, CONFIRMED);
        CU_ASSERT_EQUAL(wait_status(r ^ 1, id, here, 2000), here); /* and follows it to the end */
        CU_ASSERT_TRUE(wait_one_notification(A, id, N_CONFIRMED, 2000));
        CU_ASSERT_TRUE(wait_one_notification(B, id, N_CONFIRMED, 2000));
    }
    /* and the effects of the sagas, on both replicas */
    CU_ASSERT_TRUE(stock_settles("rm-sku", 2, &st, 5000));
    CU_ASSERT_EQUAL(st.sold, 2);
    CU_ASSERT_EQUAL(st.available, 8);
    CU_ASSERT_TRUE(account_settles("rm-cust", 200, &ac, 5000));
    CU_ASSERT_EQUAL(ac.charged, 200);
    CU_ASSERT_EQUAL(ac.balance, 9800);
}

static void test_replicas_compete_and_effects_happen_once(void)
{
    static run rn = {.prefix = "cc", .n = 200};
    placer pl[RUN_THREADS];
    int before[NSVC][NREP];

    for (int s = 0; s < NSVC; s++)
        for (int r = 0; r < NREP; r++)
            before[s][r] = work_in_log(&svc[s][r], s == ORDERS);
    run_start(&rn, pl);
    run_finish(&rn, pl, A);
    run_check_state(&rn);

    /* every replica took a share of the work of this run */
    for (int s = 0; s < NSVC; s++) {
        int total = 0;
        for (int r = 0; r < NREP; r++) {
            int handled = work_in_log(&svc[s][r], s == ORDERS) - before[s][r];
            total += handled;
            if (handled <= 0)
                fprintf(stderr, "%s handled no event of the run\n", svc[s][r].name);
            CU_ASSERT_TRUE(handled > 0);
        }
        fprintf(stderr, "\n  %s: %d %s by the two replicas", svc_names[s], total,
                s == ORDERS ? "orders created" : "events acked");
    }
    fprintf(stderr, "\n");
}

static void test_replicas_one_replica_of_each_killed_mid_run(void)
{
    static run rn = {.prefix = "kl", .n = 150, .pace_ms = 5};
    placer pl[RUN_THREADS];
    /* the replicas that die: orders-b, inventory-a, payment-b, notifications-a */
    static const int victim[NSVC] = {B, A, B, A};

    run_start(&rn, pl);
    long long end = test_now_ms() + 20000;
    while (atomic_load(&rn.placed) < rn.n / 3 && test_now_ms() < end)
        test_sleep_ms(5);
    CU_ASSERT_TRUE(atomic_load(&rn.placed) < rn.n); /* mid-run */
    for (int s = 0; s < NSVC; s++)
        svc_kill(&svc[s][victim[s]]);
    /* the survivors take over the shared consumers: every saga ends */
    run_finish(&rn, pl, victim[ORDERS] ^ 1);

    /* the dead replicas come back and rebuild the same state */
    for (int s = 0; s < NSVC; s++)
        CU_ASSERT_EQUAL_FATAL(svc_restart(&svc[s][victim[s]], 15000), CH_OK);
    run_check_state(&rn);
}

#ifdef REPLICAS_ON_CLUSTER
/* ---- a NATS node dies under load ---- */

/* A JetStream context on the cluster, for what the bus does not say: which
 * node leads a stream, how far its consumers are. */
typedef struct jsconn {
    natsConnection *nc;
    jsCtx *js;
} jsconn;

static bool jsconn_open(jsconn *c)
{
    *c = (jsconn){0};
    natsOptions *o = NULL;
    url_list servers;
    char why[128];
    bool ok = url_list_parse(natsd_cluster_urls(cluster), &servers, why, sizeof why) == CH_OK &&
              natsOptions_Create(&o) == NATS_OK &&
              natsOptions_SetServers(o, servers.ptrs, servers.n) == NATS_OK &&
              natsOptions_SetMaxReconnect(o, -1) == NATS_OK && natsConnection_Connect(&c->nc, o) == NATS_OK &&
              natsConnection_JetStream(&c->js, c->nc, NULL) == NATS_OK;
    natsOptions_Destroy(o);
    return ok;
}

static void jsconn_close(jsconn *c)
{
    jsCtx_Destroy(c->js);
    natsConnection_Destroy(c->nc);
}

/* The index of the node leading stream ("n1" is node 1), or -1. */
static int stream_leader(jsconn *c, const char *stream)
{
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    int leader = -1;
    if (js_GetStreamInfo(&si, c->js, stream, NULL, &ec) == NATS_OK && si->Cluster && si->Cluster->Leader &&
        si->Cluster->Leader[0] == 'n')
        leader = atoi(si->Cluster->Leader + 1);
    jsStreamInfo_Destroy(si);
    return leader;
}

/* True once every durable consumer of the saga's streams has nothing
 * pending and nothing waiting for an ack (the run's events all handled). */
static bool consumers_drained(jsconn *c, int timeout_ms)
{
    static const char *const streams[] = {EVENT_STREAM_ORDER, EVENT_STREAM_INVENTORY, EVENT_STREAM_PAYMENT};
    long long end = test_now_ms() + timeout_ms;
    char why[256] = "";
    do {
        bool all = true;
        for (size_t i = 0; all && i < sizeof streams / sizeof streams[0]; i++) {
            jsConsumerInfoList *l = NULL;
            jsErrCode ec = 0;
            if (js_Consumers(&l, c->js, streams[i], NULL, &ec) != NATS_OK) {
                snprintf(why, sizeof why, "consumers of %s not listed (%d)", streams[i], (int)ec);
                all = false;
                break;
            }
            for (int k = 0; all && k < l->Count; k++) {
                jsConsumerInfo *ci = l->List[k];
                if (!ci->Config->Durable)
                    continue; /* orders' ordered followers: no acks */
                if (ci->NumPending || ci->NumAckPending) {
                    snprintf(why, sizeof why, "%s: %llu pending, %lld waiting for an ack", ci->Name,
                             (unsigned long long)ci->NumPending, (long long)ci->NumAckPending);
                    all = false;
                }
            }
            jsConsumerInfoList_Destroy(l);
        }
        if (all)
            return true;
        test_sleep_ms(200);
    } while (test_now_ms() < end);
    fprintf(stderr, "consumers not drained: %s\n", why);
    return false;
}

/* Counts the terminal events of the run's orders in ORDER_EVENTS. */
typedef struct terminal_count {
    const run *rn;
    int confirmed[RUN_MAX], cancelled[RUN_MAX];
} terminal_count;

static ch_status count_terminal(const bus_in_msg *m, void *ctx)
{
    terminal_count *t = ctx;
    static const char conf[] = "events.order.confirmed.", canc[] = "events.order.cancelled.";
    bool is_conf = strncmp(m->subject, conf, sizeof conf - 1) == 0;
    bool is_canc = strncmp(m->subject, canc, sizeof canc - 1) == 0;
    const char *id = m->subject + (is_conf ? sizeof conf - 1 : sizeof canc - 1);
    for (int k = 0; (is_conf || is_canc) && k < t->rn->n; k++)
        if (strcmp(t->rn->orders[k].id, id) == 0) {
            (is_conf ? t->confirmed : t->cancelled)[k]++;
            break;
        }
    return CH_OK;
}

static uint64_t dead_letters(bus *b)
{
    uint64_t msgs = 0;
    return bus_stream_info(b, BUS_DEADLETTER_STREAM, &msgs, NULL) == CH_OK ? msgs : UINT64_MAX;
}

/* The node leading ORDER_EVENTS (CreateOrder and every terminal event go
 * through it) is killed (SIGKILL) a third into a run and restarted 5 s
 * later, while one replica of each service keeps running on each side:
 * the sagas pause during the election and go on; every order ends, exactly
 * once (one terminal event each in the stream), conservation holds read
 * through every replica, nothing is dead-lettered, every consumer drains. */
static void test_cluster_stream_leader_killed_mid_run(void)
{
    /* CreateOrder fails while ORDER_EVENTS has no leader: measured up to 13 s
     * with both cores busy (the node back after 8.6 s, no other node elected
     * meanwhile); the callers retry for up to 60 s */
    static run rn = {.prefix = "nk", .n = 150, .pace_ms = 5, .place_tries = 1200};
    placer pl[RUN_THREADS];
    jsconn c;
    bus *b = NULL;
    bus_options bo = {.url = natsd_cluster_urls(cluster), .name = "test_cluster"};

    CU_ASSERT_TRUE_FATAL(jsconn_open(&c));
    CU_ASSERT_EQUAL_FATAL(bus_create(&b, &bo), CH_OK);
    uint64_t dead_before = dead_letters(b);
    run_start(&rn, pl);
    long long end = test_now_ms() + 20000;
    while (atomic_load(&rn.placed) < rn.n / 3 && test_now_ms() < end)
        test_sleep_ms(5);
    CU_ASSERT_TRUE(atomic_load(&rn.placed) < rn.n); /* mid-run */
    int leader = stream_leader(&c, EVENT_STREAM_ORDER);
    CU_ASSERT_TRUE_FATAL(leader >= 0 && leader < natsd_cluster_size(cluster));
    natsd *node = natsd_cluster_node(cluster, leader);
    long long killed = test_now_ms();
    CU_ASSERT_EQUAL_FATAL(natsd_kill(node), CH_OK);
    test_sleep_ms(5000);
    CU_ASSERT_EQUAL_FATAL(natsd_restart(node), CH_OK);
    fprintf(stderr, "\n  n%d (ORDER_EVENTS' leader) killed, back after %lld ms; new leader n%d\n", leader,
            test_now_ms() - killed, stream_leader(&c, EVENT_STREAM_ORDER));

    run_finish(&rn, pl, A);
    run_check_state(&rn);
    CU_ASSERT_TRUE(consumers_drained(&c, 30000));
    terminal_count *t = calloc(1, sizeof *t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    t->rn = &rn;
    CU_ASSERT_EQUAL(bus_replay(b, EVENT_STREAM_ORDER, "events.order.>", 1, count_terminal, t, NULL), CH_OK);
    int once = 0;
    for (int k = 0; k < rn.n; k++) {
        bool ok = rn.orders[k].status == CONFIRMED ? t->confirmed[k] == 1 && t->cancelled[k] == 0
                                                   : t->cancelled[k] == 1 && t->confirmed[k] == 0;
        if (!ok)
            fprintf(stderr, "order %s: %d order.confirmed, %d order.cancelled stored\n", rn.orders[k].id,
                    t->confirmed[k], t->cancelled[k]);
        once += ok;
    }
    CU_ASSERT_EQUAL(once, rn.n);
    CU_ASSERT_EQUAL(dead_letters(b), dead_before);
    free(t);
    bus_destroy(b);
    jsconn_close(&c);
}
#endif

int main(void)
{
    static const cu_test tests[] = {
        {"read models follow the stream", test_replicas_read_models_follow_the_stream},
        {"replicas compete and effects happen once", test_replicas_compete_and_effects_happen_once},
        {"one replica of each service killed mid-run", test_replicas_one_replica_of_each_killed_mid_run},
#ifdef REPLICAS_ON_CLUSTER
        {"the stream leader killed mid-run", test_cluster_stream_leader_killed_mid_run},
#endif
        {NULL, NULL},
    };
#ifdef REPLICAS_ON_CLUSTER
    return cu_run("cluster", suite_init, suite_cleanup, tests);
#else
    return cu_run("replicas", suite_init, suite_cleanup, tests);
#endif
}
