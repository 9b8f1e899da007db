/* saga_bench.c: choreo-bench, the saga benchmark of SAGA.md ("Benchmark
 * workload").
 *
 * It starts a fresh system of its own (nats-server with JetStream on file
 * storage in a temp dir, the four service binaries on free ports), seeds a
 * catalogue and customer credit, places N orders from C caller threads
 * (80% confirmed, 10% out of stock, 10% declined by payment, fixed by the
 * order's index) in open mode (back to back: throughput) or closed mode (each
 * caller waits for its order to end: latency), and watches the terminal
 * events on a plain NATS subscription so that measuring loads no service.
 * Then it checks counts, conservation and notifications through the gRPC
 * APIs, stops everything and prints a report whose last line is the summary
 * `bench: key=value ...`. Exit status 0 only when every check held.
 *
 * Ownership: one bench context on main's stack owns every process, client,
 * thread and buffer, and frees them before exit. Threads: main (set-up,
 * progress, checks, teardown), one per caller, and the NATS subscription
 * threads (record an arrival under the mutex, never block). */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench_sys.h"
#include "choreo/inventory/v1/inventory.pb-c.h"
#include "choreo/notifications/v1/notifications.pb-c.h"
#include "choreo/orders/v1/orders.pb-c.h"
#include "choreo/payment/v1/payment.pb-c.h"
#include "harness.h"

enum { ORDERS, INVENTORY, PAYMENT, NOTIFICATIONS, NSVC };
static const char *const svc_names[NSVC] = {"orders", "inventory", "payment", "notifications"};
static const char *const svc_paths[NSVC] = {"choreo.orders.v1.Orders", "choreo.inventory.v1.Inventory",
                                            "choreo.payment.v1.Payment",
                                            "choreo.notifications.v1.Notifications"};

/* The workload: fixed catalogue and customers; what happens to order i is a
 * function of i alone (bench_plan_of). */
#define BENCH_SKUS        16
#define BENCH_SKU_EMPTY   BENCH_SKUS /* index of the SKU with zero stock */
#define BENCH_STOCK       100000000  /* units per catalogue SKU: ample */
#define BENCH_GOOD        64         /* customers whose orders are paid */
#define BENCH_POOR        8          /* customers whose orders are declined */
#define BENCH_POOR_CREDIT 1000       /* cents: below every declined order's total */
#define BENCH_GOOD_MARGIN 1000000    /* cents credited beyond what good customers spend */
#define BENCH_ID_CAP      48         /* order ids are "ord-" + 16 hex digits */
#define BENCH_CALL_MS     10000      /* deadline of one gRPC call */
#define BENCH_SETTLE_MS   30000      /* how long the end state may take to settle */
#define BENCH_PAGE        500        /* page size of List* reads */
#define BENCH_MAX_N       1000000
#define BENCH_MAX_C       256
#define BENCH_MAX_TIMEOUT 86400
#define BENCH_FAILED_CAP  256
#define BENCH_REPORT_MAX  5 /* mismatches printed per check */

typedef enum bench_outcome { OUT_CONFIRMED, OUT_NO_STOCK, OUT_DECLINED } bench_outcome;

typedef struct bench_plan {
    bench_outcome outcome;
    int customer; /* 0..BENCH_GOOD-1 good, then the poor ones */
    int sku;      /* 0..BENCH_SKUS-1, or BENCH_SKU_EMPTY */
    uint32_t qty;
    int64_t price_cents;
} bench_plan;

typedef struct bench_opts {
    int n, c, timeout_s;
    bool closed, quiet, keep;
    const char *log_level; /* the services' CHOREO_LOG_LEVEL */
    const char *bins[NSVC];
} bench_opts;

/* One order as seen by the benchmark; the slot never moves once used. */
typedef struct order_rec {
    char id[BENCH_ID_CAP];
    int index;              /* plan index; -1 until its caller registered it */
    int waiter;             /* caller waiting for its end (closed mode); -1 */
    long long t_start;      /* ns, before CreateOrder */
    long long t_created;    /* ns, when CreateOrder answered */
    long long t_end;        /* ns, when its terminal event arrived; 0 before */
    unsigned char used;     /* slot taken */
    unsigned char terminal; /* 0, 1 confirmed, 2 cancelled (first event wins) */
    unsigned char notified; /* notification.sent seen */
} order_rec;

struct bench;

typedef struct caller {
    struct bench *b;
    int id;
    pthread_t thread;
    bool started;
    pthread_cond_t cv; /* its order ended, or stop */
    rpc_client *client;
} caller;

typedef struct bench {
    bench_opts o;
    char sku[BENCH_SKUS + 1][32];
    char customer[BENCH_GOOD + BENCH_POOR][32];
    int64_t credited[BENCH_GOOD + BENCH_POOR];

    pthread_mutex_t mu; /* guards everything below up to `failed` */
    pthread_cond_t start_cv;
    order_rec *table;
    size_t cap; /* power of two */
    int *slot_of;
    int placed, done, notified, ready, table_full, dup_events;
    bool go, stop;
    long long t_first, t_last, deadline;
    ch_status create_st;
    char create_err[640];
    atomic_int next;

    char failed[BENCH_FAILED_CAP]; /* comma-separated names of failed checks (main thread) */
    caller *callers;
    natsd *nats;
    svc_proc svc[NSVC];
    natsConnection *nc;
    natsSubscription *subs[3];
    char log_dir[400];
} bench;

/* ---- small helpers ---- */

static void sleep_ms(int ms)
{
    nanosleep(&(struct timespec){ms / 1000, (long)(ms % 1000) * 1000000L}, NULL);
}

static struct timespec abs_ts(long long ns)
{
    return (struct timespec){(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
}

/* Notes a failed check by name (once) and prints why. Main thread. */
static void bench_fail(bench *b, const char *name, const char *fmt, ...)
{
    va_list ap;
    size_t len = strlen(b->failed);

    fprintf(stderr, "bench: check failed: %s: ", name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    char padded[64];
    snprintf(padded, sizeof padded, ",%s,", name);
    char have[BENCH_FAILED_CAP + 2];
    snprintf(have, sizeof have, ",%s,", b->failed);
    if (strstr(have, padded))
        return;
    snprintf(b->failed + len, sizeof b->failed - len, "%s%s", len ? "," : "", name);
}

static bench_plan bench_plan_of(int i)
{
    bench_plan p;
    int r = i % 10;

    p.outcome = r < 8 ? OUT_CONFIRMED : r == 8 ? OUT_NO_STOCK : OUT_DECLINED;
    switch (p.outcome) {
    case OUT_CONFIRMED:
        p.customer = i % BENCH_GOOD;
        p.sku = i % BENCH_SKUS;
        p.qty = 1 + (uint32_t)(i % 3);
        p.price_cents = 250 + 50 * (i % 5);
        break;
    case OUT_NO_STOCK:
        p.customer = i % BENCH_GOOD;
        p.sku = BENCH_SKU_EMPTY;
        p.qty = 1;
        p.price_cents = 500;
        break;
    default:
        p.customer = BENCH_GOOD + i % BENCH_POOR;
        p.sku = i % BENCH_SKUS;
        p.qty = 2;
        p.price_cents = 5000; /* 10000 > BENCH_POOR_CREDIT */
        break;
    }
    return p;
}

static ch_status bench_call(bench *b, int s, const char *method, const ProtobufCMessage *req,
                            const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                            rpc_client_result *res)
{
    char path[128];
    snprintf(path, sizeof path, "/%s/%s", svc_paths[s], method);
    return rpc_client_call(b->svc[s].client, path, NULL, 0, req, resp_desc, resp, BENCH_CALL_MS, res);
}

/* ---- the order table (callers and NATS threads, under b->mu) ---- */

static uint64_t bench_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The record of order id, created when absent and create is set; NULL when
 * absent, or when the table is full (then table_full counts it). */
static order_rec *bench_table_get(bench *b, const char *id, bool create)
{
    size_t mask = b->cap - 1;
    if (strlen(id) >= BENCH_ID_CAP)
        return NULL;
    for (size_t k = bench_hash(id) & mask, probes = 0; probes < b->cap; k = (k + 1) & mask, probes++) {
        order_rec *r = &b->table[k];
        if (!r->used) {
            if (!create)
                return NULL;
            r->used = 1;
            r->index = -1;
            r->waiter = -1;
            snprintf(r->id, sizeof r->id, "%s", id);
            return r;
        }
        if (strcmp(r->id, id) == 0)
            return r;
    }
    b->table_full++;
    return NULL;
}

/* Counts an order done once it is both registered and ended. Under b->mu. */
static void bench_mark_done(bench *b, order_rec *r)
{
    b->done++;
    if (r->t_end > b->t_last)
        b->t_last = r->t_end;
}

/* NATS delivery thread: terminal events and notification.sent, by subject
 * "events.<aggregate>.<event>.<order_id>". */
static void bench_on_event(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    static const char confirmed[] = "events.order.confirmed.", cancelled[] = "events.order.cancelled.",
                      sent[] = "events.notification.sent.";
    bench *b = closure;
    long long now = bench_now_ns();
    const char *subj = natsMsg_GetSubject(msg);
    int kind = 0;
    const char *id = NULL;

    if (strncmp(subj, confirmed, sizeof confirmed - 1) == 0) {
        kind = 1;
        id = subj + sizeof confirmed - 1;
    } else if (strncmp(subj, cancelled, sizeof cancelled - 1) == 0) {
        kind = 2;
        id = subj + sizeof cancelled - 1;
    } else if (strncmp(subj, sent, sizeof sent - 1) == 0) {
        kind = 3;
        id = subj + sizeof sent - 1;
    }
    if (kind) {
        pthread_mutex_lock(&b->mu);
        order_rec *r = bench_table_get(b, id, true);
        if (r && kind == 3) {
            if (!r->notified) {
                r->notified = 1;
                b->notified++;
            }
        } else if (r && r->terminal) {
            b->dup_events++; /* a re-published event JetStream dropped still reaches core subscribers */
        } else if (r) {
            r->terminal = (unsigned char)kind;
            r->t_end = now;
            if (r->index >= 0)
                bench_mark_done(b, r);
            if (r->waiter >= 0)
                pthread_cond_signal(&b->callers[r->waiter].cv);
        }
        pthread_mutex_unlock(&b->mu);
    }
    natsMsg_Destroy(msg);
}

/* ---- callers ---- */

/* CreateOrder for plan index i, retried with the same idempotency key while
 * orders is unavailable. The order id goes into id. */
static ch_status bench_create(bench *b, caller *c, int i, char id[BENCH_ID_CAP], rpc_client_result *res)
{
    bench_plan p = bench_plan_of(i);
    Choreo__Orders__V1__LineItem li = CHOREO__ORDERS__V1__LINE_ITEM__INIT;
    Choreo__Orders__V1__LineItem *items[1] = {&li};
    Choreo__Orders__V1__CreateOrderRequest req = CHOREO__ORDERS__V1__CREATE_ORDER_REQUEST__INIT;
    Choreo__Orders__V1__CreateOrderResponse *resp = NULL;
    char key[32];
    ch_status st = CH_UNAVAILABLE;

    snprintf(key, sizeof key, "bench-%d", i);
    li.sku = b->sku[p.sku];
    li.quantity = p.qty;
    li.unit_price_cents = p.price_cents;
    req.customer_id = b->customer[p.customer];
    req.idempotency_key = key;
    req.n_items = 1;
    req.items = items;
    for (int attempt = 0; attempt < 50; attempt++) {
        st = rpc_client_call(c->client, "/choreo.orders.v1.Orders/CreateOrder", NULL, 0, &req.base,
                             &choreo__orders__v1__create_order_response__descriptor,
                             (ProtobufCMessage **)&resp, BENCH_CALL_MS, res);
        if (st == CH_OK) {
            if (!resp->order || strlen(resp->order->order_id) >= BENCH_ID_CAP) {
                snprintf(res->details, sizeof res->details, "reply without a usable order id");
                st = CH_INTERNAL;
            } else {
                snprintf(id, BENCH_ID_CAP, "%s", resp->order->order_id);
            }
            protobuf_c_message_free_unpacked(&resp->base, NULL);
            return st;
        }
        if (st != CH_UNAVAILABLE && st != CH_TIMEOUT && st != CH_RESOURCE_EXHAUSTED)
            return st;
        sleep_ms(100);
    }
    return st;
}

static void bench_caller_error(bench *b, int i, ch_status st, const rpc_client_result *res)
{
    pthread_mutex_lock(&b->mu);
    if (b->create_st == CH_OK) {
        b->create_st = st;
        snprintf(b->create_err, sizeof b->create_err, "order %d: %s: %.400s", i, ch_status_str(st),
                 res->details);
    }
    b->stop = true;
    pthread_mutex_unlock(&b->mu);
}

static void *bench_caller_main(void *arg)
{
    caller *c = arg;
    bench *b = c->b;
    Choreo__Orders__V1__GetOrderRequest warm = CHOREO__ORDERS__V1__GET_ORDER_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    struct timespec deadline;

    /* Connect the channel before the clock starts: NOT_FOUND is the answer. */
    warm.order_id = (char *)"ord-0000000000000000";
    rpc_client_call(c->client, "/choreo.orders.v1.Orders/GetOrder", NULL, 0, &warm.base,
                    &choreo__orders__v1__get_order_response__descriptor, &resp, BENCH_CALL_MS, NULL);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);

    pthread_mutex_lock(&b->mu);
    b->ready++;
    pthread_cond_broadcast(&b->start_cv);
    while (!b->go && !b->stop)
        pthread_cond_wait(&b->start_cv, &b->mu);
    deadline = abs_ts(b->deadline);
    bool go = b->go;
    pthread_mutex_unlock(&b->mu);

    while (go) {
        int i = atomic_fetch_add(&b->next, 1);
        char id[BENCH_ID_CAP];
        rpc_client_result res;

        if (i >= b->o.n)
            break;
        memset(&res, 0, sizeof res);
        long long t0 = bench_now_ns();
        ch_status st = bench_create(b, c, i, id, &res);
        long long t1 = bench_now_ns();
        if (st != CH_OK) {
            bench_caller_error(b, i, st, &res);
            break;
        }
        pthread_mutex_lock(&b->mu);
        order_rec *r = bench_table_get(b, id, true);
        if (!r || r->index >= 0) {
            pthread_mutex_unlock(&b->mu);
            snprintf(res.details, sizeof res.details, "%s %s", id,
                     r ? "returned twice" : "does not fit the table");
            bench_caller_error(b, i, CH_INTERNAL, &res);
            break;
        }
        r->index = i;
        r->t_start = t0;
        r->t_created = t1;
        b->slot_of[i] = (int)(r - b->table);
        b->placed++;
        if (!b->t_first || t0 < b->t_first)
            b->t_first = t0;
        if (r->terminal)
            bench_mark_done(b, r);
        if (b->o.closed) {
            r->waiter = c->id;
            while (!r->terminal && !b->stop)
                if (pthread_cond_timedwait(&c->cv, &b->mu, &deadline) == ETIMEDOUT)
                    break;
            r->waiter = -1;
        }
        bool stop = b->stop;
        pthread_mutex_unlock(&b->mu);
        if (stop)
            break;
    }
    return NULL;
}

/* ---- set-up ---- */

static ch_status bench_subscribe(bench *b)
{
    static const char *const subjects[3] = {"events.order.confirmed.*", "events.order.cancelled.*",
                                            "events.notification.sent.*"};
    natsOptions *opts = NULL;
    natsStatus ns = natsOptions_Create(&opts);

    if (ns == NATS_OK)
        ns = natsOptions_SetURL(opts, natsd_url(b->nats));
    if (ns == NATS_OK)
        ns = natsOptions_SetSendAsap(opts, true);
    if (ns == NATS_OK)
        ns = natsConnection_Connect(&b->nc, opts);
    for (int k = 0; ns == NATS_OK && k < 3; k++) {
        ns = natsConnection_Subscribe(&b->subs[k], b->nc, subjects[k], bench_on_event, b);
        if (ns == NATS_OK)
            ns = natsSubscription_SetPendingLimits(b->subs[k], 4 * b->o.n + 65536, 512 * 1024 * 1024);
    }
    if (ns == NATS_OK)
        ns = natsConnection_FlushTimeout(b->nc, 5000);
    natsOptions_Destroy(opts);
    if (ns != NATS_OK) {
        fprintf(stderr, "bench: NATS subscription: %s\n", natsStatus_GetText(ns));
        return CH_UNAVAILABLE;
    }
    return CH_OK;
}

static ch_status bench_seed(bench *b)
{
    int64_t spend[BENCH_GOOD] = {0};
    ch_status st = CH_OK;
    rpc_client_result res;

    for (int s = 0; st == CH_OK && s <= BENCH_SKUS; s++) {
        Choreo__Inventory__V1__SetStockRequest req = CHOREO__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        req.sku = b->sku[s];
        req.available = s == BENCH_SKU_EMPTY ? 0 : BENCH_STOCK;
        st = bench_call(b, INVENTORY, "SetStock", &req.base,
                        &choreo__inventory__v1__set_stock_response__descriptor, &resp, &res);
        if (st != CH_OK)
            fprintf(stderr, "bench: SetStock %s: %s: %s\n", b->sku[s], ch_status_str(st), res.details);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    for (int i = 0; i < b->o.n; i++) {
        bench_plan p = bench_plan_of(i);
        if (p.outcome == OUT_CONFIRMED)
            spend[p.customer] += (int64_t)p.qty * p.price_cents;
    }
    for (int k = 0; st == CH_OK && k < BENCH_GOOD + BENCH_POOR; k++) {
        Choreo__Payment__V1__CreditAccountRequest req = CHOREO__PAYMENT__V1__CREDIT_ACCOUNT_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        b->credited[k] = k < BENCH_GOOD ? spend[k] + BENCH_GOOD_MARGIN : BENCH_POOR_CREDIT;
        req.customer_id = b->customer[k];
        req.amount_cents = b->credited[k];
        st = bench_call(b, PAYMENT, "CreditAccount", &req.base,
                        &choreo__payment__v1__credit_account_response__descriptor, &resp, &res);
        if (st != CH_OK)
            fprintf(stderr, "bench: CreditAccount %s: %s: %s\n", b->customer[k], ch_status_str(st),
                    res.details);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return st;
}

/* ---- checks (main thread, after the run) ---- */

#define CONFIRMED CHOREO__ORDERS__V1__ORDER_STATUS__ORDER_STATUS_CONFIRMED
#define CANCELLED CHOREO__ORDERS__V1__ORDER_STATUS__ORDER_STATUS_CANCELLED

/* The plan index of order id, or -1. */
static int bench_index_of(bench *b, const char *id)
{
    pthread_mutex_lock(&b->mu);
    order_rec *r = bench_table_get(b, id, false);
    int i = r ? r->index : -1;
    pthread_mutex_unlock(&b->mu);
    return i;
}

/* Every order's final status through ListOrders: exactly the planned
 * outcome for each, and the expected numbers of CONFIRMED and CANCELLED. */
static bool bench_check_orders(bench *b, bool report)
{
    int n = b->o.n, listed = 0, confirmed = 0, cancelled = 0, wrong = 0, unknown = 0, twice = 0;
    int want_confirmed = 0;
    unsigned char *seen = calloc((size_t)n, 1);
    char token[256] = "", first_wrong[160] = "";
    bool ok = false, read_ok = true;

    if (!seen)
        return false;
    for (int i = 0; i < n; i++)
        want_confirmed += bench_plan_of(i).outcome == OUT_CONFIRMED;
    for (int page = 0; page <= n / BENCH_PAGE + 10; page++) {
        Choreo__Orders__V1__ListOrdersRequest req = CHOREO__ORDERS__V1__LIST_ORDERS_REQUEST__INIT;
        Choreo__Orders__V1__ListOrdersResponse *resp = NULL;
        rpc_client_result res;
        req.page_size = BENCH_PAGE;
        req.page_token = token;
        ch_status st = bench_call(b, ORDERS, "ListOrders", &req.base,
                                  &choreo__orders__v1__list_orders_response__descriptor,
                                  (ProtobufCMessage **)&resp, &res);
        if (st != CH_OK) {
            if (report)
                bench_fail(b, "counts", "ListOrders: %s: %s", ch_status_str(st), res.details);
            read_ok = false;
            break;
        }
        for (size_t k = 0; k < resp->n_orders; k++) {
            const Choreo__Orders__V1__Order *o = resp->orders[k];
            int i = bench_index_of(b, o->order_id);
            listed++;
            if (i < 0) {
                unknown++;
                continue;
            }
            if (seen[i]++)
                twice++;
            confirmed += o->status == CONFIRMED;
            cancelled += o->status == CANCELLED;
            int want = bench_plan_of(i).outcome == OUT_CONFIRMED ? CONFIRMED : CANCELLED;
            if ((int)o->status != want && wrong++ == 0)
                snprintf(first_wrong, sizeof first_wrong,
                         "%s (order %d) has status %d, want %d (reason \"%.60s\")", o->order_id, i,
                         (int)o->status, want, o->reason);
        }
        snprintf(token, sizeof token, "%s", resp->next_page_token);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        if (!token[0])
            break;
    }
    ok = read_ok && listed == n && unknown == 0 && twice == 0 && wrong == 0 && confirmed == want_confirmed &&
         cancelled == n - want_confirmed;
    if (!ok && read_ok && report)
        bench_fail(b, "counts",
                   "listed %d orders (want %d): CONFIRMED %d (want %d), CANCELLED %d (want %d), unknown %d, "
                   "listed twice "
                   "%d, wrong status %d%s%s",
                   listed, n, confirmed, want_confirmed, cancelled, n - want_confirmed, unknown, twice, wrong,
                   wrong ? ": first " : "", first_wrong);
    free(seen);
    return ok;
}

/* For every SKU: available + reserved + sold == total_in == what was put in,
 * reserved == 0, sold == units of the confirmed orders. */
static bool bench_check_stock(bench *b, bool report)
{
    int64_t want_sold[BENCH_SKUS + 1] = {0};
    bool ok = true;
    int bad = 0;

    for (int i = 0; i < b->o.n; i++) {
        bench_plan p = bench_plan_of(i);
        if (p.outcome == OUT_CONFIRMED)
            want_sold[p.sku] += p.qty;
    }
    for (int s = 0; s <= BENCH_SKUS; s++) {
        Choreo__Inventory__V1__GetStockRequest req = CHOREO__INVENTORY__V1__GET_STOCK_REQUEST__INIT;
        Choreo__Inventory__V1__GetStockResponse *resp = NULL;
        rpc_client_result res;
        int64_t want_in = s == BENCH_SKU_EMPTY ? 0 : BENCH_STOCK;
        req.sku = b->sku[s];
        ch_status st = bench_call(b, INVENTORY, "GetStock", &req.base,
                                  &choreo__inventory__v1__get_stock_response__descriptor,
                                  (ProtobufCMessage **)&resp, &res);
        if (st != CH_OK || !resp->stock) {
            if (report)
                bench_fail(b, "stock", "GetStock %s: %s: %s", b->sku[s], ch_status_str(st), res.details);
            ok = false;
        } else {
            const Choreo__Inventory__V1__StockLevel *l = resp->stock;
            if (l->available + l->reserved + l->sold != l->total_in || l->total_in != want_in ||
                l->reserved != 0 || l->sold != want_sold[s]) {
                if (report && ++bad <= BENCH_REPORT_MAX)
                    bench_fail(
                        b, "stock",
                        "%s: available %lld + reserved %lld + sold %lld, total_in %lld (want total_in %lld, "
                        "reserved 0, sold %lld)",
                        b->sku[s], (long long)l->available, (long long)l->reserved, (long long)l->sold,
                        (long long)l->total_in, (long long)want_in, (long long)want_sold[s]);
                ok = false;
            }
        }
        if (resp)
            protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    if (bad > BENCH_REPORT_MAX)
        bench_fail(b, "stock", "... and %d more SKUs", bad - BENCH_REPORT_MAX);
    return ok;
}

/* For every customer: balance + charged - refunded == credited == what was
 * credited, charged == sum of its confirmed orders' totals, refunded == 0. */
static bool bench_check_accounts(bench *b, bool report)
{
    int64_t want_charged[BENCH_GOOD + BENCH_POOR] = {0};
    bool ok = true;
    int bad = 0;

    for (int i = 0; i < b->o.n; i++) {
        bench_plan p = bench_plan_of(i);
        if (p.outcome == OUT_CONFIRMED)
            want_charged[p.customer] += (int64_t)p.qty * p.price_cents;
    }
    for (int k = 0; k < BENCH_GOOD + BENCH_POOR; k++) {
        Choreo__Payment__V1__GetAccountRequest req = CHOREO__PAYMENT__V1__GET_ACCOUNT_REQUEST__INIT;
        Choreo__Payment__V1__GetAccountResponse *resp = NULL;
        rpc_client_result res;
        req.customer_id = b->customer[k];
        ch_status st = bench_call(b, PAYMENT, "GetAccount", &req.base,
                                  &choreo__payment__v1__get_account_response__descriptor,
                                  (ProtobufCMessage **)&resp, &res);
        if (st != CH_OK || !resp->account) {
            if (report)
                bench_fail(b, "accounts", "GetAccount %s: %s: %s", b->customer[k], ch_status_str(st),
                           res.details);
            ok = false;
        } else {
            const Choreo__Payment__V1__Account *a = resp->account;
            if (a->balance_cents + a->charged_cents - a->refunded_cents != a->credited_cents ||
                a->credited_cents != b->credited[k] || a->charged_cents != want_charged[k] ||
                a->refunded_cents != 0) {
                if (report && ++bad <= BENCH_REPORT_MAX)
                    bench_fail(
                        b, "accounts",
                        "%s: balance %lld + charged %lld - refunded %lld, credited %lld (want credited %lld, "
                        "charged %lld, refunded 0)",
                        b->customer[k], (long long)a->balance_cents, (long long)a->charged_cents,
                        (long long)a->refunded_cents, (long long)a->credited_cents, (long long)b->credited[k],
                        (long long)want_charged[k]);
                ok = false;
            }
        }
        if (resp)
            protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    if (bad > BENCH_REPORT_MAX)
        bench_fail(b, "accounts", "... and %d more customers", bad - BENCH_REPORT_MAX);
    return ok;
}

/* Exactly one notification per order, of the kind its outcome implies, sent
 * to its customer: ListNotifications by customer, every page. */
static bool bench_check_notifications(bench *b, bool report)
{
    int n = b->o.n, bad_customer = 0, unknown = 0, total = 0;
    unsigned char *count[3] = {calloc((size_t)n, 1), calloc((size_t)n, 1), calloc((size_t)n, 1)};
    bool ok = count[0] && count[1] && count[2];

    for (int k = 0; ok && k < BENCH_GOOD + BENCH_POOR; k++) {
        char token[256] = "";
        for (int page = 0; page <= n / BENCH_PAGE + 10; page++) {
            Choreo__Notifications__V1__ListNotificationsRequest req =
                CHOREO__NOTIFICATIONS__V1__LIST_NOTIFICATIONS_REQUEST__INIT;
            Choreo__Notifications__V1__ListNotificationsResponse *resp = NULL;
            rpc_client_result res;
            req.customer_id = b->customer[k];
            req.page_size = BENCH_PAGE;
            req.page_token = token;
            ch_status st = bench_call(b, NOTIFICATIONS, "ListNotifications", &req.base,
                                      &choreo__notifications__v1__list_notifications_response__descriptor,
                                      (ProtobufCMessage **)&resp, &res);
            if (st != CH_OK) {
                if (report)
                    bench_fail(b, "notifications", "ListNotifications %s: %s: %s", b->customer[k],
                               ch_status_str(st), res.details);
                ok = false;
                break;
            }
            for (size_t j = 0; j < resp->n_notifications; j++) {
                const Choreo__Notifications__V1__Notification *m = resp->notifications[j];
                int i = bench_index_of(b, m->order_id);
                total++;
                if (i < 0) {
                    unknown++;
                    continue;
                }
                if (bench_plan_of(i).customer != k)
                    bad_customer++;
                int kind =
                    m->kind == CHOREO__NOTIFICATIONS__V1__NOTIFICATION_KIND__NOTIFICATION_KIND_ORDER_CONFIRMED
                        ? 1
                    : m->kind ==
                            CHOREO__NOTIFICATIONS__V1__NOTIFICATION_KIND__NOTIFICATION_KIND_ORDER_CANCELLED
                        ? 2
                        : 0;
                if (count[kind][i] < 255)
                    count[kind][i]++;
            }
            snprintf(token, sizeof token, "%s", resp->next_page_token);
            protobuf_c_message_free_unpacked(&resp->base, NULL);
            if (!token[0])
                break;
        }
    }
    if (ok) {
        int missing = 0, extra = 0, first = -1;
        for (int i = 0; i < n; i++) {
            int want = bench_plan_of(i).outcome == OUT_CONFIRMED ? 1 : 2;
            if (count[want][i] == 0)
                missing++;
            if (count[want][i] > 1 || count[3 - want][i] || count[0][i])
                extra++;
            if (first < 0 && (count[want][i] != 1 || count[3 - want][i] || count[0][i]))
                first = i;
        }
        ok = missing == 0 && extra == 0 && unknown == 0 && bad_customer == 0 && total == n;
        if (!ok && report)
            bench_fail(
                b, "notifications",
                "%d listed for %d orders: %d orders without their notification, %d with extra ones, %d for "
                "unknown orders, %d to the wrong customer%s%d",
                total, n, missing, extra, unknown, bad_customer, first >= 0 ? "; first order index " : "",
                first >= 0 ? first : 0);
    }
    for (int k = 0; k < 3; k++)
        free(count[k]);
    return ok;
}

/* Runs every check until all hold or the settle time has passed (the last
 * saga steps, e.g. inventory's commit, may trail the terminal event); the
 * last attempt reports what failed. */
static void bench_checks(bench *b)
{
    long long end = bench_now_ns() + BENCH_SETTLE_MS * 1000000LL;
    for (;;) {
        bool last = bench_now_ns() >= end;
        bool ok = bench_check_orders(b, last);
        ok = bench_check_stock(b, last) && ok;
        ok = bench_check_accounts(b, last) && ok;
        ok = bench_check_notifications(b, last) && ok;
        if (ok || last)
            return;
        sleep_ms(250);
    }
}

/* ---- measurement ---- */

typedef struct bench_usage {
    pid_t pid[NSVC + 1]; /* the services, then nats-server */
    double cpu0[NSVC + 1], cpu1[NSVC + 1];
    long long ctx0[NSVC + 1], ctx1[NSVC + 1]; /* context switches */
    long long rss[NSVC + 1];
} bench_usage;

/* ---- options ---- */

static void bench_usage_text(FILE *f)
{
    fprintf(f,
            "usage: choreo-bench [-m open|closed] [-n N] [-c C] [-t SECONDS] [-q] [--keep] [--log-level L]\n"
            "                    [--orders-bin P] [--inventory-bin P] [--payment-bin P]\n"
            "                    [--notifications-bin P] [--nats-server P]\n"
            "  -m  open: callers place orders back to back (throughput); closed: each\n"
            "      caller waits for its order to end before the next (latency). Default open.\n"
            "  -n  orders to place, 1..%d (default 5000)\n"
            "  -c  caller threads, 1..%d (default 16)\n"
            "  -t  bound on the whole run in seconds (default 300)\n"
            "  -q  no progress lines on stderr\n"
            "  --keep  keep the logs directory even when every check held\n"
            "  --log-level  the services' CHOREO_LOG_LEVEL (default info, as deployed)\n"
            "Starts its own nats-server and services; the last stdout line is the summary.\n",
            BENCH_MAX_N, BENCH_MAX_C);
}

/* Parses argv into o; -1 to go on, else the exit code. May setenv before any
 * thread exists. */
static int bench_parse(int argc, char **argv, bench_opts *o)
{
    static const struct option longs[] = {
        {"orders-bin", required_argument, NULL, 'O'},
        {"inventory-bin", required_argument, NULL, 'I'},
        {"payment-bin", required_argument, NULL, 'P'},
        {"notifications-bin", required_argument, NULL, 'N'},
        {"nats-server", required_argument, NULL, 'S'},
        {"keep", no_argument, NULL, 'k'},
        {"log-level", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;

    *o = (bench_opts){.n = 5000, .c = 16, .timeout_s = 300, .log_level = "info"};
    o->bins[ORDERS] = ORDERS_BIN;
    o->bins[INVENTORY] = INVENTORY_BIN;
    o->bins[PAYMENT] = PAYMENT_BIN;
    o->bins[NOTIFICATIONS] = NOTIFICATIONS_BIN;
    while ((opt = getopt_long(argc, argv, "m:n:c:t:qh", longs, NULL)) != -1) {
        switch (opt) {
        case 'm':
            if (strcmp(optarg, "open") != 0 && strcmp(optarg, "closed") != 0) {
                fprintf(stderr, "choreo-bench: -m: must be open or closed\n");
                return 2;
            }
            o->closed = strcmp(optarg, "closed") == 0;
            break;
        case 'n':
            if (!bench_int_arg(optarg, 1, BENCH_MAX_N, &o->n)) {
                fprintf(stderr, "choreo-bench: -n: must be 1..%d\n", BENCH_MAX_N);
                return 2;
            }
            break;
        case 'c':
            if (!bench_int_arg(optarg, 1, BENCH_MAX_C, &o->c)) {
                fprintf(stderr, "choreo-bench: -c: must be 1..%d\n", BENCH_MAX_C);
                return 2;
            }
            break;
        case 't':
            if (!bench_int_arg(optarg, 1, BENCH_MAX_TIMEOUT, &o->timeout_s)) {
                fprintf(stderr, "choreo-bench: -t: must be 1..%d seconds\n", BENCH_MAX_TIMEOUT);
                return 2;
            }
            break;
        case 'q': o->quiet = true; break;
        case 'k': o->keep = true; break;
        case 'L':
            if (strcmp(optarg, "debug") != 0 && strcmp(optarg, "info") != 0 && strcmp(optarg, "warn") != 0 &&
                strcmp(optarg, "error") != 0) {
                fprintf(stderr, "choreo-bench: --log-level: must be debug, info, warn or error\n");
                return 2;
            }
            o->log_level = optarg;
            break;
        case 'O': o->bins[ORDERS] = optarg; break;
        case 'I': o->bins[INVENTORY] = optarg; break;
        case 'P': o->bins[PAYMENT] = optarg; break;
        case 'N': o->bins[NOTIFICATIONS] = optarg; break;
        case 'S':
            setenv("CHOREO_NATS_SERVER", optarg, 1); /* natsd reads it */
            break;
        case 'h': bench_usage_text(stdout); return 0;
        default: bench_usage_text(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "choreo-bench: unexpected argument %s\n", argv[optind]);
        return 2;
    }
    return -1;
}

/* ---- the run ---- */

/* Places the orders and waits for them to end (or the timeout). Main thread. */
static void bench_run(bench *b, bench_usage *u)
{
    int n = b->o.n, c = b->o.c, nstarted = 0;
    bool timed_out = false;
    long long start, next_progress;

    for (int k = 0; k < c; k++) {
        caller *cl = &b->callers[k];
        cl->b = b;
        cl->id = k;
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&cl->cv, &ca);
        pthread_condattr_destroy(&ca);
        if (rpc_client_create(&cl->client, b->svc[ORDERS].addr) != CH_OK ||
            pthread_create(&cl->thread, NULL, bench_caller_main, cl) != 0) {
            bench_fail(b, "startup", "caller %d could not start", k);
            break;
        }
        cl->started = true;
        nstarted++;
    }

    pthread_mutex_lock(&b->mu);
    if (nstarted < c) {
        b->stop = true;
        pthread_cond_broadcast(&b->start_cv);
        pthread_mutex_unlock(&b->mu);
        goto join;
    }
    while (b->ready < c)
        pthread_cond_wait(&b->start_cv, &b->mu);
    for (int k = 0; k <= NSVC; k++) {
        u->cpu0[k] = bench_cpu_seconds(u->pid[k]);
        u->ctx0[k] = bench_ctx_switches(u->pid[k]);
    }
    start = bench_now_ns();
    b->deadline = start + (long long)b->o.timeout_s * 1000000000LL;
    b->go = true;
    pthread_cond_broadcast(&b->start_cv);
    pthread_mutex_unlock(&b->mu);

    next_progress = start + 1000000000LL;
    for (;;) {
        long long now = bench_now_ns();
        pthread_mutex_lock(&b->mu);
        int placed = b->placed, done = b->done;
        bool stop = b->stop;
        if (done < n && !stop && now >= b->deadline) {
            timed_out = true;
            b->stop = true;
        }
        pthread_mutex_unlock(&b->mu);
        if (done >= n || stop || timed_out)
            break;
        if (!b->o.quiet && now >= next_progress) {
            double s = (double)(now - start) / 1e9;
            fprintf(stderr, "progress: %5.1fs placed=%d done=%d/%d rate=%.0f orders/s\n", s, placed, done, n,
                    (double)done / s);
            next_progress += 1000000000LL;
        }
        sleep_ms(10);
    }

join:
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    for (int k = 0; k < nstarted; k++)
        pthread_cond_signal(&b->callers[k].cv);
    pthread_mutex_unlock(&b->mu);
    for (int k = 0; k < c; k++)
        if (b->callers[k].started) {
            pthread_join(b->callers[k].thread, NULL);
            b->callers[k].started = false;
        }

    if (b->create_st != CH_OK)
        bench_fail(b, "create", "CreateOrder failed: %s", b->create_err);
    if (timed_out)
        bench_fail(b, "timeout", "%d of %d orders ended within %d s (%d placed)", b->done, n, b->o.timeout_s,
                   b->placed);
    if (b->table_full)
        bench_fail(b, "internal", "order table full (%d)", b->table_full);

    /* The saga's last effect per order is its notification; wait for all of
     * them (bounded), then for the processes to go quiet, then read CPU. */
    if (!b->failed[0]) {
        long long end = bench_now_ns() + BENCH_SETTLE_MS * 1000000LL;
        for (;;) {
            pthread_mutex_lock(&b->mu);
            int notified = b->notified;
            pthread_mutex_unlock(&b->mu);
            if (notified >= n || bench_now_ns() >= end)
                break;
            sleep_ms(10);
        }
    }
    bench_wait_quiet(u->pid, NSVC + 1);
    for (int k = 0; k <= NSVC; k++) {
        u->cpu1[k] = bench_cpu_seconds(u->pid[k]);
        u->ctx1[k] = bench_ctx_switches(u->pid[k]);
        u->rss[k] = bench_peak_rss_bytes(u->pid[k]);
    }
}

static void bench_report(bench *b, const bench_usage *u)
{
    int n = b->o.n, ended = 0;
    double *lat = calloc((size_t)n, sizeof *lat);
    double wall = b->t_last > b->t_first ? (double)(b->t_last - b->t_first) / 1e9 : 0;
    double rate = wall > 0 ? b->done / wall : 0, per1k[NSVC + 1], svc_total = 0;
    double p50 = 0, p95 = 0, p99 = 0, pmax = 0, rss_mb[NSVC + 1], ctxsw[NSVC + 1], svc_ctxsw = 0;
    int want[3] = {0};

    double *create = calloc((size_t)n, sizeof *create), c50 = 0, c99 = 0;
    int created = 0;

    for (int i = 0; lat && create && i < n; i++) {
        if (b->slot_of[i] < 0)
            continue;
        const order_rec *r = &b->table[b->slot_of[i]];
        create[created++] = (double)(r->t_created - r->t_start) / 1e6;
        if (r->terminal)
            lat[ended++] = (double)(r->t_end - r->t_start) / 1e6;
    }
    if (lat && ended) {
        bench_sort(lat, (size_t)ended);
        p50 = bench_quantile(lat, (size_t)ended, 0.50);
        p95 = bench_quantile(lat, (size_t)ended, 0.95);
        p99 = bench_quantile(lat, (size_t)ended, 0.99);
        pmax = lat[ended - 1];
    }
    if (create && created) {
        bench_sort(create, (size_t)created);
        c50 = bench_quantile(create, (size_t)created, 0.50);
        c99 = bench_quantile(create, (size_t)created, 0.99);
    }
    free(lat);
    free(create);
    for (int k = 0; k <= NSVC; k++) {
        per1k[k] = u->cpu0[k] >= 0 && u->cpu1[k] >= 0 ? (u->cpu1[k] - u->cpu0[k]) * 1000.0 / n : 0;
        ctxsw[k] = u->ctx0[k] >= 0 && u->ctx1[k] >= 0 ? (double)(u->ctx1[k] - u->ctx0[k]) / n : 0;
        rss_mb[k] = u->rss[k] > 0 ? (double)u->rss[k] / (1024.0 * 1024.0) : 0;
        if (k < NSVC) {
            svc_total += per1k[k];
            svc_ctxsw += ctxsw[k];
        }
    }
    for (int i = 0; i < n; i++)
        want[bench_plan_of(i).outcome]++;

    printf("choreo saga benchmark: mode=%s n=%d c=%d (nats-server JetStream file storage)\n",
           b->o.closed ? "closed" : "open", n, b->o.c);
    printf("  orders       %d placed, %d ended (plan: %d confirmed, %d out of stock, %d declined)\n",
           b->placed, b->done, want[OUT_CONFIRMED], want[OUT_NO_STOCK], want[OUT_DECLINED]);
    printf("  wall         %.3f s from first CreateOrder to last terminal event\n", wall);
    printf("  throughput   %.0f orders/s\n", rate);
    printf("  latency ms   p50 %.3f  p95 %.3f  p99 %.3f  max %.3f (CreateOrder start to terminal event)\n",
           p50, p95, p99, pmax);
    printf("  CreateOrder  p50 %.3f  p99 %.3f ms (the call alone: it answers once order.created is stored)\n",
           c50, c99);
    printf("  cpu s/1k     orders %.3f  inventory %.3f  payment %.3f  notifications %.3f  = services %.3f;"
           "  nats-server %.3f\n",
           per1k[ORDERS], per1k[INVENTORY], per1k[PAYMENT], per1k[NOTIFICATIONS], svc_total, per1k[NSVC]);
    printf("  ctx sw/order orders %.1f  inventory %.1f  payment %.1f  notifications %.1f  = services %.1f;"
           "  nats-server %.1f\n",
           ctxsw[ORDERS], ctxsw[INVENTORY], ctxsw[PAYMENT], ctxsw[NOTIFICATIONS], svc_ctxsw, ctxsw[NSVC]);
    printf("  peak rss MB  orders %.1f  inventory %.1f  payment %.1f  notifications %.1f  nats-server %.1f\n",
           rss_mb[ORDERS], rss_mb[INVENTORY], rss_mb[PAYMENT], rss_mb[NOTIFICATIONS], rss_mb[NSVC]);
    if (b->dup_events)
        printf("  note         %d duplicate terminal events seen on core NATS (dropped by JetStream dedup)\n",
               b->dup_events);
    printf("  checks       %s%s\n",
           b->failed[0] ? "FAILED: " : "ok (counts, stock, accounts, notifications, shutdown)", b->failed);
    printf(
        "bench: mode=%s n=%d c=%d orders_per_s=%.0f p50_ms=%.3f p95_ms=%.3f p99_ms=%.3f cpu_s_per_1k=%.3f "
        "cpu_s_per_1k_orders=%.3f cpu_s_per_1k_inventory=%.3f cpu_s_per_1k_payment=%.3f "
        "cpu_s_per_1k_notifications=%.3f cpu_s_per_1k_nats=%.3f rss_mb_orders=%.1f rss_mb_inventory=%.1f "
        "rss_mb_payment=%.1f rss_mb_notifications=%.1f rss_mb_nats=%.1f create_p50_ms=%.3f "
        "create_p99_ms=%.3f ctxsw_per_order=%.1f ctxsw_per_order_orders=%.1f ctxsw_per_order_inventory=%.1f "
        "ctxsw_per_order_payment=%.1f ctxsw_per_order_notifications=%.1f ctxsw_per_order_nats=%.1f "
        "checks=%s%s%s\n",
        b->o.closed ? "closed" : "open", n, b->o.c, rate, p50, p95, p99, svc_total, per1k[ORDERS],
        per1k[INVENTORY], per1k[PAYMENT], per1k[NOTIFICATIONS], per1k[NSVC], rss_mb[ORDERS],
        rss_mb[INVENTORY], rss_mb[PAYMENT], rss_mb[NOTIFICATIONS], rss_mb[NSVC], c50, c99, svc_ctxsw,
        ctxsw[ORDERS], ctxsw[INVENTORY], ctxsw[PAYMENT], ctxsw[NOTIFICATIONS], ctxsw[NSVC],
        b->failed[0] ? "failed" : "ok", b->failed[0] ? " failed=" : "", b->failed);
    fflush(stdout);
}

/* ---- main ---- */

static int bench_rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    return remove(path);
}

static ch_status bench_init(bench *b)
{
    size_t want = 4 * (size_t)b->o.n + 64;
    const char *tmp = getenv("TMPDIR");

    for (int s = 0; s < BENCH_SKUS; s++)
        snprintf(b->sku[s], sizeof b->sku[s], "bench-sku-%02d", s);
    snprintf(b->sku[BENCH_SKU_EMPTY], sizeof b->sku[BENCH_SKU_EMPTY], "bench-sku-empty");
    for (int k = 0; k < BENCH_GOOD + BENCH_POOR; k++)
        snprintf(b->customer[k], sizeof b->customer[k],
                 k < BENCH_GOOD ? "bench-cust-%03d" : "bench-poor-%03d", k < BENCH_GOOD ? k : k - BENCH_GOOD);
    for (b->cap = 64; b->cap < want; b->cap *= 2)
        ;
    b->table = calloc(b->cap, sizeof *b->table);
    b->slot_of = malloc((size_t)b->o.n * sizeof *b->slot_of);
    b->callers = calloc((size_t)b->o.c, sizeof *b->callers);
    if (!b->table || !b->slot_of || !b->callers)
        return CH_NO_MEMORY;
    for (int i = 0; i < b->o.n; i++)
        b->slot_of[i] = -1;
    atomic_init(&b->next, 0);
    snprintf(b->log_dir, sizeof b->log_dir, "%s/choreo-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(b->log_dir)) {
        fprintf(stderr, "bench: mkdtemp %s: %s\n", b->log_dir, strerror(errno));
        b->log_dir[0] = '\0';
        return CH_INTERNAL;
    }
    return CH_OK;
}

/* Spawns service k on port (free) against our nats-server, its output in
 * <log_dir>/<name>.log. Main thread only: children die with the thread
 * that forked them (PR_SET_PDEATHSIG). */
static ch_status bench_spawn(bench *b, int k, int port)
{
    svc_proc *s = &b->svc[k];
    char listen[96], nats[160], level[64];

    snprintf(s->name, sizeof s->name, "%s", svc_names[k]);
    snprintf(s->bin, sizeof s->bin, "%s", b->o.bins[k]);
    snprintf(s->nats_url, sizeof s->nats_url, "%s", natsd_url(b->nats));
    snprintf(s->addr, sizeof s->addr, "127.0.0.1:%d", port);
    snprintf(s->log_path, sizeof s->log_path, "%s/%s.log", b->log_dir, svc_names[k]);
    snprintf(listen, sizeof listen, "CHOREO_LISTEN_ADDR=%s", s->addr);
    snprintf(nats, sizeof nats, "CHOREO_NATS_URL=%s", s->nats_url);
    snprintf(level, sizeof level, "CHOREO_LOG_LEVEL=%s", b->o.log_level);
    const char *env[] = {listen, nats, level, NULL};
    const char *argv[] = {s->bin, NULL};
    return proc_spawn(&s->p, argv, env, s->log_path);
}

/* Starts nats-server, then the four services together, and waits until each
 * health check says SERVING; fills the pids to measure. The first health
 * call waits for the servers to listen: a refused connection would put the
 * client's channel into seconds of reconnect back-off. */
static ch_status bench_start(bench *b, bench_usage *u)
{
    ch_status st = natsd_start(&b->nats, NULL);
    if (st != CH_OK) {
        bench_fail(b, "startup", "nats-server did not start: %s", ch_status_str(st));
        return st;
    }
    int ports[NSVC];
    if (!test_free_ports(ports, NSVC)) { /* distinct: none listens before all are spawned */
        bench_fail(b, "startup", "no free ports for the services");
        return CH_INTERNAL;
    }
    for (int k = 0; k < NSVC; k++) {
        st = bench_spawn(b, k, ports[k]);
        if (st != CH_OK) {
            bench_fail(b, "startup", "cannot start %s (%s): %s", svc_names[k], b->o.bins[k],
                       ch_status_str(st));
            return st;
        }
        u->pid[k] = proc_pid(b->svc[k].p);
    }
    for (int k = 0; k < NSVC; k++) {
        svc_proc *s = &b->svc[k];
        int port = atoi(strrchr(s->addr, ':') + 1);
        for (int waited = 0; waited < 5000 && proc_running(s->p) && !bench_port_open(port); waited += 20)
            sleep_ms(20);
        st = proc_running(s->p) ? rpc_client_create(&s->client, s->addr) : CH_UNAVAILABLE;
        if (st == CH_OK && !svc_wait_health(s, 1, 30000))
            st = CH_TIMEOUT;
        if (st != CH_OK) {
            bench_fail(b, "startup", "%s (%s) not SERVING: %s", svc_names[k], b->o.bins[k],
                       st == CH_UNAVAILABLE ? "exited during start-up" : ch_status_str(st));
            svc_dump_log(s, 20);
            return st;
        }
    }
    u->pid[NSVC] = bench_find_child("nats-server");
    if (u->pid[NSVC] < 0)
        fprintf(stderr, "bench: nats-server process not found: its CPU is not measured\n");
    return CH_OK;
}

/* Stops the services with SIGTERM (exit code 0 expected), in reverse order. */
static void bench_stop_services(bench *b)
{
    /* Close our channels first: a gRPC server's graceful shutdown waits for
     * open connections until its grace period ends. */
    for (int k = 0; b->callers && k < b->o.c; k++) {
        rpc_client_destroy(b->callers[k].client);
        b->callers[k].client = NULL;
    }
    for (int k = 0; k < NSVC; k++) {
        rpc_client_destroy(b->svc[k].client);
        b->svc[k].client = NULL;
    }
    for (int k = NSVC - 1; k >= 0; k--) {
        int status = -1;
        if (!b->svc[k].p)
            continue;
        ch_status st = svc_stop(&b->svc[k], 30000, &status);
        if (st != CH_OK || status != 0) {
            bench_fail(b, "shutdown", "%s: %s, exit status %d (log %s)", svc_names[k], ch_status_str(st),
                       status, b->svc[k].log_path);
            svc_dump_log(&b->svc[k], 10);
        }
        svc_destroy(&b->svc[k]);
    }
}

int main(int argc, char **argv)
{
    bench b;
    bench_usage u;
    bool started = false;

    memset(&b, 0, sizeof b);
    memset(&u, 0, sizeof u);
    for (int k = 0; k <= NSVC; k++)
        u.pid[k] = -1;
    int code = bench_parse(argc, argv, &b.o);
    if (code >= 0)
        return code;
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.start_cv, NULL);
    if (bench_init(&b) != CH_OK) {
        bench_fail(&b, "startup", "out of memory or no temp dir");
        goto cleanup;
    }
    fprintf(stderr, "bench: %s mode, %d orders, %d callers; starting nats-server and services (logs in %s)\n",
            b.o.closed ? "closed" : "open", b.o.n, b.o.c, b.log_dir);
    if (bench_start(&b, &u) != CH_OK)
        goto cleanup;
    started = true;
    if (bench_subscribe(&b) != CH_OK) {
        bench_fail(&b, "startup", "cannot subscribe to the terminal events");
        goto cleanup;
    }
    if (bench_seed(&b) != CH_OK) {
        bench_fail(&b, "startup", "seeding stock and credit failed");
        goto cleanup;
    }
    bench_run(&b, &u);
    for (int k = 0; k < NSVC; k++)
        if (!proc_running(b.svc[k].p))
            bench_fail(&b, "crash", "%s exited during the run (log %s)", svc_names[k], b.svc[k].log_path);
    if (b.failed[0]) {
        /* say what the state is, without waiting for it to settle */
        bench_check_orders(&b, true);
        bench_check_stock(&b, true);
        bench_check_accounts(&b, true);
        bench_check_notifications(&b, true);
    } else {
        bench_checks(&b);
    }

cleanup:
    for (int k = 0; k < 3; k++)
        natsSubscription_Destroy(b.subs[k]);
    natsConnection_Destroy(b.nc);
    if (started)
        bench_stop_services(&b);
    for (int k = 0; k < NSVC; k++)
        svc_destroy(&b.svc[k]);
    for (int k = 0; b.callers && k < b.o.c; k++) {
        rpc_client_destroy(b.callers[k].client);
        if (b.callers[k].b)
            pthread_cond_destroy(&b.callers[k].cv);
    }
    if (b.table)
        bench_report(&b, &u);
    natsd_destroy(b.nats);
    nats_Close();
    if (b.log_dir[0]) {
        if (b.failed[0] || b.o.keep)
            fprintf(stderr, "bench: logs kept in %s\n", b.log_dir);
        else
            nftw(b.log_dir, bench_rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    }
    pthread_cond_destroy(&b.start_cv);
    pthread_mutex_destroy(&b.mu);
    free(b.table);
    free(b.slot_of);
    free(b.callers);
    return b.failed[0] ? 1 : 0;
}
