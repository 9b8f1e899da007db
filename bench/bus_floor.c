/* bus_floor.c: choreo-bus-floor, the floor under the saga benchmark.
 *
 * It sends the critical path of a confirmed order through nats-server with
 * no service behind it: no gRPC, no decoding, no state, no followers and no
 * side consumers. Per order, in series:
 *
 *   driver   publishes floor.e1.<id> and waits for its PubAck (CreateOrder)
 *   relay 1  takes it from a durable push consumer, writes one ledger entry
 *            per batch (compare-and-set on the ledger subject), publishes
 *            floor.e2.<id>, acks once both are stored        (inventory)
 *   relay 2  the same from floor.e2 to floor.e3               (payment)
 *   relay 3  floor.e3 to floor.e4, no ledger                  (orders)
 *   driver   sees floor.e4.<id> on a plain subscription       (the bench)
 *
 * That is the six JetStream writes in series of a confirmed order, its four
 * pushes on the critical path and three acks, with events of the saga's size
 * and headers, the bus's client settings (SendAsap, asynchronous publishes,
 * manual acks once the batch's publishes are stored) and file storage. The
 * saga does all of it and more (followers, side consumers, gRPC, state), so
 * what this measures bounds it from below on this client, server and
 * machine: the latency of one order, and the CPU per order of the relays
 * (the services' share) and of nats-server. --no-ledger leaves out the two
 * ledger writes: the floor of a design without them.
 *
 * The relays are this binary again (`--relay K URL`), one process each, so
 * their CPU is measured apart from the driver's. Last stdout line:
 * `floor: key=value ...`; exit status 0 only when every order arrived.
 *
 * Ownership: main owns everything and frees it before exit. Threads: main,
 * one per caller, and the NATS subscription thread (records an arrival under
 * the mutex, never blocks). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_sys.h"
#include "harness.h"

#define FLOOR_STREAM      "FLOOR"
#define FLOOR_LEDGER      "FLOORLEDGER"
#define FLOOR_RELAYS      3
#define FLOOR_EVENT_BYTES 256  /* payload of one event: about a saga envelope */
#define FLOOR_ENTRY_BYTES 96   /* one ledger entry: about an inventory reservation */
#define FLOOR_BATCH       256  /* messages a relay takes per wake-up, as the workers do */
#define FLOOR_WAIT_MS     5000 /* PubAck wait */
#define FLOOR_MAX_N       1000000
#define FLOOR_MAX_C       256
#define FLOOR_ID_CAP      16
#define FLOOR_TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

/* ---- the relays (one process each) ---- */

static atomic_bool relay_stop;

static void relay_on_term(int sig)
{
    (void)sig;
    atomic_store(&relay_stop, true);
}

static atomic_int relay_pub_errors;

static void relay_on_pub_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    (void)js;
    (void)closure;
    atomic_fetch_add(&relay_pub_errors, 1);
    fprintf(stderr, "relay: publish failed: %s\n",
            pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
}

/* Connects with the bus's settings (SendAsap: every write goes out now). */
static natsStatus floor_connect(natsConnection **nc, const char *url)
{
    natsOptions *opts = NULL;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, url);
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(opts, true);
    if (s == NATS_OK)
        s = natsConnection_Connect(nc, opts);
    natsOptions_Destroy(opts);
    return s;
}

/* Publishes one ledger message framing the batch's n entries, only if the
 * ledger subject is still at *last (compare-and-set, as the services do). */
static natsStatus relay_ledger(jsCtx *js, int k, int n, uint64_t *last)
{
    static char entries[FLOOR_BATCH * FLOOR_ENTRY_BYTES];
    char subject[32];
    jsPubOptions po;
    jsPubAck *pa = NULL;
    jsErrCode ec = 0;

    snprintf(subject, sizeof subject, "floorledger.%d", k);
    memset(entries, 'l', (size_t)n * FLOOR_ENTRY_BYTES);
    jsPubOptions_Init(&po);
    po.MaxWait = FLOOR_WAIT_MS;
    po.ExpectLastSubjectSeq = *last;
    natsStatus s = js_Publish(&pa, js, subject, entries, n * FLOOR_ENTRY_BYTES, &po, &ec);
    if (s == NATS_OK) {
        *last = pa->Sequence;
        jsPubAck_Destroy(pa);
    }
    return s;
}

/* Publishes the next event of message m (floor.e<k>.<id> -> floor.e<k+1>.<id>)
 * asynchronously, with the saga's headers and a deterministic message id. */
static natsStatus relay_forward(jsCtx *js, int k, natsMsg *m)
{
    const char *id = strrchr(natsMsg_GetSubject(m), '.');
    char subject[64], msg_id[48];
    natsMsg *out = NULL;
    jsPubOptions po;

    if (!id)
        return NATS_INVALID_ARG;
    snprintf(subject, sizeof subject, "floor.e%d%s", k + 1, id);
    snprintf(msg_id, sizeof msg_id, "e%d%s", k + 1, id);
    natsStatus s = natsMsg_Create(&out, subject, NULL, natsMsg_GetData(m), natsMsg_GetDataLength(m));
    if (s == NATS_OK)
        s = natsMsgHeader_Set(out, "Choreo-Event-Type", "floor.event");
    if (s == NATS_OK)
        s = natsMsgHeader_Set(out, "traceparent", FLOOR_TRACEPARENT);
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    if (s == NATS_OK)
        s = js_PublishMsgAsync(js, &out, &po);
    natsMsg_Destroy(out); /* NULL when the publish took it */
    return s;
}

static int relay_main(int k, const char *url, bool ledger)
{
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    jsSubOptions so;
    jsErrCode ec = 0;
    char durable[8], filter[32], ready[32];
    uint64_t ledger_last = 0;
    natsMsg *batch[FLOOR_BATCH];
    int code = 1;

    signal(SIGTERM, relay_on_term);
    snprintf(durable, sizeof durable, "r%d", k);
    snprintf(filter, sizeof filter, "floor.e%d.*", k);
    snprintf(ready, sizeof ready, "floorctl.ready.%d", k);
    natsStatus s = floor_connect(&nc, url);
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 4 * FLOOR_BATCH;
    jo.PublishAsync.ErrHandler = relay_on_pub_error;
    if (s == NATS_OK)
        s = natsConnection_JetStream(&js, nc, &jo);
    jsSubOptions_Init(&so);
    so.Stream = FLOOR_STREAM;
    so.Consumer = durable;
    so.Queue = durable;
    so.ManualAck = true;
    if (s == NATS_OK)
        s = js_SubscribeSync(&sub, js, filter, NULL, &so, &ec);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (s == NATS_OK)
        s = natsConnection_PublishString(nc, ready, "ready");
    if (s != NATS_OK) {
        fprintf(stderr, "relay %d: start: %s (%d)\n", k, natsStatus_GetText(s), (int)ec);
        goto cleanup;
    }
    while (!atomic_load(&relay_stop)) {
        int n = 0;
        s = natsSubscription_NextMsg(&batch[0], sub, 200);
        if (s == NATS_TIMEOUT)
            continue;
        if (s != NATS_OK) {
            fprintf(stderr, "relay %d: receive: %s\n", k, natsStatus_GetText(s));
            goto cleanup;
        }
        for (n = 1; n < FLOOR_BATCH && natsSubscription_NextMsg(&batch[n], sub, 0) == NATS_OK; n++) {
        }
        if (ledger && k < FLOOR_RELAYS)
            s = relay_ledger(js, k, n, &ledger_last);
        for (int i = 0; s == NATS_OK && i < n; i++)
            s = relay_forward(js, k, batch[i]);
        if (s == NATS_OK) {
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MaxWait = FLOOR_WAIT_MS;
            s = js_PublishAsyncComplete(js, &po);
        }
        for (int i = 0; i < n; i++) {
            if (s == NATS_OK && atomic_load(&relay_pub_errors) == 0)
                natsMsg_Ack(batch[i], NULL);
            natsMsg_Destroy(batch[i]);
        }
        if (s != NATS_OK || atomic_load(&relay_pub_errors) > 0) {
            fprintf(stderr, "relay %d: publish: %s\n", k, natsStatus_GetText(s));
            goto cleanup;
        }
    }
    code = 0;

cleanup:
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return code;
}

/* ---- the driver ---- */

typedef struct floor_opts {
    int n, c, timeout_s;
    bool closed, quiet, no_ledger;
} floor_opts;

typedef struct floor_caller {
    struct floor_run *r;
    pthread_t thread;
    pthread_cond_t cv;
} floor_caller;

typedef struct floor_run {
    floor_opts o;
    pthread_mutex_t mu; /* guards the arrays and counters below */
    long long *t_start, *t_acked, *t_end;
    int *waiter;
    int done, ready, failed_publishes;
    atomic_int next;
    natsConnection *pub_nc, *sub_nc;
    natsSubscription *ready_sub, *end_sub;
    jsCtx *js;
    floor_caller *callers;
} floor_run;

static void floor_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    floor_run *r = closure;
    long long now = bench_now_ns();
    const char *subj = natsMsg_GetSubject(msg);

    pthread_mutex_lock(&r->mu);
    if (strncmp(subj, "floorctl.ready.", 15) == 0) {
        r->ready++;
    } else if (strncmp(subj, "floor.e4.o", 10) == 0) {
        long i = strtol(subj + 10, NULL, 10);
        if (i >= 0 && i < r->o.n && r->t_end[i] == 0) {
            r->t_end[i] = now;
            r->done++;
            if (r->waiter[i] >= 0)
                pthread_cond_signal(&r->callers[r->waiter[i]].cv);
        }
    }
    pthread_mutex_unlock(&r->mu);
    natsMsg_Destroy(msg);
}

/* floor.e1.<id>, stored before it returns: what CreateOrder waits for. */
static natsStatus floor_create(floor_run *r, int i)
{
    static const char payload[FLOOR_EVENT_BYTES] = {0};
    char subject[48], msg_id[FLOOR_ID_CAP + 8];
    natsMsg *m = NULL;
    jsPubOptions po;
    jsPubAck *pa = NULL;
    jsErrCode ec = 0;

    snprintf(subject, sizeof subject, "floor.e1.o%d", i);
    snprintf(msg_id, sizeof msg_id, "e1.o%d", i);
    natsStatus s = natsMsg_Create(&m, subject, NULL, payload, sizeof payload);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Choreo-Event-Type", "floor.event");
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "traceparent", FLOOR_TRACEPARENT);
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = FLOOR_WAIT_MS;
    if (s == NATS_OK)
        s = js_PublishMsg(&pa, r->js, m, &po, &ec);
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    return s;
}

static void *floor_caller_main(void *arg)
{
    floor_caller *c = arg;
    floor_run *r = c->r;
    int me = (int)(c - r->callers);

    for (;;) {
        int i = atomic_fetch_add(&r->next, 1);
        if (i >= r->o.n)
            break;
        pthread_mutex_lock(&r->mu);
        r->waiter[i] = r->o.closed ? me : -1;
        r->t_start[i] = bench_now_ns();
        pthread_mutex_unlock(&r->mu);
        natsStatus s = floor_create(r, i);
        pthread_mutex_lock(&r->mu);
        r->t_acked[i] = bench_now_ns();
        if (s != NATS_OK)
            r->failed_publishes++;
        while (s == NATS_OK && r->o.closed && r->t_end[i] == 0) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 1;
            pthread_cond_timedwait(&c->cv, &r->mu, &until);
            if (r->t_end[i] == 0 && bench_now_ns() - r->t_start[i] > 30LL * 1000000000LL)
                break; /* lost: the count check reports it */
        }
        pthread_mutex_unlock(&r->mu);
    }
    return NULL;
}

static ch_status floor_setup(floor_run *r, const char *url)
{
    static const char *stream_subjects[1] = {"floor.>"};
    static const char *ledger_subjects[1] = {"floorledger.>"};
    jsStreamConfig sc;
    jsConsumerConfig cc;
    jsErrCode ec = 0;

    natsStatus s = floor_connect(&r->pub_nc, url);
    if (s == NATS_OK)
        s = floor_connect(&r->sub_nc, url);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&r->js, r->pub_nc, NULL);
    jsStreamConfig_Init(&sc);
    sc.Name = FLOOR_STREAM;
    sc.Subjects = stream_subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    if (s == NATS_OK)
        s = js_AddStream(NULL, r->js, &sc, NULL, &ec);
    sc.Name = FLOOR_LEDGER;
    sc.Subjects = ledger_subjects;
    if (s == NATS_OK)
        s = js_AddStream(NULL, r->js, &sc, NULL, &ec);
    for (int k = 1; s == NATS_OK && k <= FLOOR_RELAYS; k++) {
        char durable[8], deliver[48], filter[32];
        snprintf(durable, sizeof durable, "r%d", k);
        snprintf(deliver, sizeof deliver, "_floor.deliver.%s", durable);
        snprintf(filter, sizeof filter, "floor.e%d.*", k);
        jsConsumerConfig_Init(&cc);
        cc.Durable = durable;
        cc.DeliverSubject = deliver;
        cc.DeliverGroup = durable;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = 10000LL * 1000000LL;
        cc.MaxAckPending = 1000;
        cc.FilterSubject = filter;
        s = js_AddConsumer(NULL, r->js, FLOOR_STREAM, &cc, NULL, &ec);
    }
    /* one subscription for the relays' "ready" and the orders' last event */
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&r->ready_sub, r->sub_nc, "floorctl.ready.*", floor_on_msg, r);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&r->end_sub, r->sub_nc, "floor.e4.*", floor_on_msg, r);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(r->end_sub, -1, -1);
    if (s == NATS_OK)
        s = natsConnection_FlushTimeout(r->sub_nc, 5000);
    if (s != NATS_OK) {
        fprintf(stderr, "floor: set-up: %s (JetStream error %d)\n", natsStatus_GetText(s), (int)ec);
        return CH_UNAVAILABLE;
    }
    return CH_OK;
}

static void floor_usage(FILE *f)
{
    fprintf(f, "usage: choreo-bus-floor [-m open|closed] [-n N] [-c C] [-t SECONDS] [-q] [--no-ledger]\n"
               "  The saga's critical path through nats-server with no service logic: the floor\n"
               "  under choreo-bench. Same flags and modes; the last stdout line is the summary.\n"
               "  --no-ledger  leave out the two ledger writes (4 JetStream writes in series, not 6)\n");
}

static int floor_parse(int argc, char **argv, floor_opts *o)
{
    static const struct option longs[] = {
        {"no-ledger", no_argument, NULL, 'L'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    *o = (floor_opts){.n = 5000, .c = 16, .timeout_s = 300};
    int ch;
    while ((ch = getopt_long(argc, argv, "m:n:c:t:qh", longs, NULL)) != -1) {
        char *end = NULL;
        long v = optarg ? strtol(optarg, &end, 10) : 0;
        bool num_ok = optarg && *optarg && end && *end == '\0';
        switch (ch) {
        case 'm':
            if (strcmp(optarg, "open") != 0 && strcmp(optarg, "closed") != 0) {
                fprintf(stderr, "choreo-bus-floor: -m: '%s' is not open or closed\n", optarg);
                return 2;
            }
            o->closed = strcmp(optarg, "closed") == 0;
            break;
        case 'n':
            if (!num_ok || v < 1 || v > FLOOR_MAX_N) {
                fprintf(stderr, "choreo-bus-floor: -n: '%s' is not a number in 1..%d\n", optarg, FLOOR_MAX_N);
                return 2;
            }
            o->n = (int)v;
            break;
        case 'c':
            if (!num_ok || v < 1 || v > FLOOR_MAX_C) {
                fprintf(stderr, "choreo-bus-floor: -c: '%s' is not a number in 1..%d\n", optarg, FLOOR_MAX_C);
                return 2;
            }
            o->c = (int)v;
            break;
        case 't':
            if (!num_ok || v < 1 || v > 86400) {
                fprintf(stderr, "choreo-bus-floor: -t: '%s' is not a number in 1..86400\n", optarg);
                return 2;
            }
            o->timeout_s = (int)v;
            break;
        case 'q': o->quiet = true; break;
        case 'L': o->no_ledger = true; break;
        case 'h': floor_usage(stdout); return 0;
        default: floor_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "choreo-bus-floor: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return -1;
}

static double floor_cpu(const pid_t *pids, int n)
{
    double t = 0;
    for (int k = 0; k < n; k++)
        t += bench_cpu_seconds(pids[k]);
    return t;
}

static long long floor_ctxsw(const pid_t *pids, int n)
{
    long long t = 0;
    for (int k = 0; k < n; k++)
        t += bench_ctx_switches(pids[k]);
    return t;
}

/* Percentiles of (to[i] - from[i]) in ms over the orders that have both. */
static void floor_quantiles(const floor_run *r, const long long *from, const long long *to, double q[3])
{
    double *v = malloc((size_t)r->o.n * sizeof *v);
    size_t m = 0;
    for (int i = 0; v && i < r->o.n; i++)
        if (from[i] && to[i])
            v[m++] = (double)(to[i] - from[i]) / 1e6;
    bench_sort(v, m);
    q[0] = bench_quantile(v, m, 0.50);
    q[1] = bench_quantile(v, m, 0.95);
    q[2] = bench_quantile(v, m, 0.99);
    free(v);
}

static int floor_drive(const floor_opts *o)
{
    floor_run r = {.o = *o};
    natsd *nats = NULL;
    proc *relays[FLOOR_RELAYS] = {0};
    pid_t pids[FLOOR_RELAYS + 2]; /* relays, nats-server, this process */
    char self[PATH_MAX];
    int code = 1, started = 0;

    pthread_mutex_init(&r.mu, NULL);
    r.t_start = calloc((size_t)o->n, sizeof *r.t_start);
    r.t_acked = calloc((size_t)o->n, sizeof *r.t_acked);
    r.t_end = calloc((size_t)o->n, sizeof *r.t_end);
    r.waiter = calloc((size_t)o->n, sizeof *r.waiter);
    r.callers = calloc((size_t)o->c, sizeof *r.callers);
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (!r.t_start || !r.t_acked || !r.t_end || !r.waiter || !r.callers || len <= 0) {
        fprintf(stderr, "floor: out of memory or no /proc/self/exe\n");
        goto cleanup;
    }
    self[len] = '\0';
    if (natsd_start(&nats, NULL) != CH_OK || floor_setup(&r, natsd_url(nats)) != CH_OK)
        goto cleanup;
    for (int k = 0; k < FLOOR_RELAYS; k++) {
        char num[4];
        snprintf(num, sizeof num, "%d", k + 1);
        const char *argv[] = {self, o->no_ledger ? "--relay-no-ledger" : "--relay", num, natsd_url(nats),
                              NULL};
        if (proc_spawn(&relays[k], argv, NULL, NULL) != CH_OK) {
            fprintf(stderr, "floor: cannot start relay %d\n", k + 1);
            goto cleanup;
        }
        pids[k] = proc_pid(relays[k]);
    }
    pids[FLOOR_RELAYS] = bench_find_child("nats-server");
    pids[FLOOR_RELAYS + 1] = getpid();
    for (int waited = 0;; waited += 10) {
        pthread_mutex_lock(&r.mu);
        int ready = r.ready;
        pthread_mutex_unlock(&r.mu);
        if (ready == FLOOR_RELAYS)
            break;
        if (waited > 10000) {
            fprintf(stderr, "floor: the relays did not start (their errors are above)\n");
            goto cleanup;
        }
        test_sleep_ms(10);
    }
    if (!o->quiet)
        fprintf(stderr, "floor: %s mode, %d orders, %d callers\n", o->closed ? "closed" : "open", o->n, o->c);

    double cpu0[3] = {floor_cpu(pids, FLOOR_RELAYS), floor_cpu(pids + FLOOR_RELAYS, 1),
                      floor_cpu(pids + FLOOR_RELAYS + 1, 1)};
    long long sw0[2] = {floor_ctxsw(pids, FLOOR_RELAYS), floor_ctxsw(pids + FLOOR_RELAYS, 1)};
    long long t0 = bench_now_ns(), deadline = t0 + (long long)o->timeout_s * 1000000000LL;
    for (int k = 0; k < o->c; k++) {
        r.callers[k].r = &r;
        pthread_cond_init(&r.callers[k].cv, NULL);
        if (pthread_create(&r.callers[k].thread, NULL, floor_caller_main, &r.callers[k]) != 0)
            break;
        started++;
    }
    for (int last = 0;;) {
        pthread_mutex_lock(&r.mu);
        int done = r.done, lost = r.failed_publishes;
        pthread_mutex_unlock(&r.mu);
        if (done + lost >= o->n || bench_now_ns() > deadline)
            break;
        if (!o->quiet && done - last >= 20000) {
            fprintf(stderr, "floor: %d of %d orders\n", done, o->n);
            last = done;
        }
        test_sleep_ms(5);
    }
    long long t1 = 0;
    for (int k = 0; k < started; k++)
        pthread_join(r.callers[k].thread, NULL);
    for (int i = 0; i < o->n; i++)
        if (r.t_end[i] > t1)
            t1 = r.t_end[i];
    double cpu1[3] = {floor_cpu(pids, FLOOR_RELAYS), floor_cpu(pids + FLOOR_RELAYS, 1),
                      floor_cpu(pids + FLOOR_RELAYS + 1, 1)};
    long long sw1[2] = {floor_ctxsw(pids, FLOOR_RELAYS), floor_ctxsw(pids + FLOOR_RELAYS, 1)};
    long long rss = 0;
    for (int k = 0; k < FLOOR_RELAYS; k++) {
        long long v = bench_peak_rss_bytes(pids[k]);
        rss = v > rss ? v : rss;
    }

    double lat[3], create[3], k1 = (double)o->n / 1000.0;
    floor_quantiles(&r, r.t_start, r.t_end, lat);
    floor_quantiles(&r, r.t_start, r.t_acked, create);
    double wall = t1 > t0 ? (double)(t1 - t0) / 1e9 : 0;
    bool ok = r.done == o->n && r.failed_publishes == 0;
    if (!ok)
        fprintf(stderr, "floor: %d of %d orders arrived, %d publishes failed\n", r.done, o->n,
                r.failed_publishes);
    printf(
        "floor: mode=%s n=%d c=%d orders_per_s=%.0f p50_ms=%.3f p95_ms=%.3f p99_ms=%.3f create_p50_ms=%.3f "
        "cpu_s_per_1k_relays=%.3f cpu_s_per_1k_nats=%.3f cpu_s_per_1k_driver=%.3f "
        "ctxsw_per_order_relays=%.1f "
        "ctxsw_per_order_nats=%.1f rss_mb_relay_max=%.1f writes_in_series=%d checks=%s\n",
        o->closed ? "closed" : "open", o->n, o->c, wall > 0 ? r.done / wall : 0, lat[0], lat[1], lat[2],
        create[0], (cpu1[0] - cpu0[0]) / k1, (cpu1[1] - cpu0[1]) / k1, (cpu1[2] - cpu0[2]) / k1,
        (double)(sw1[0] - sw0[0]) / o->n, (double)(sw1[1] - sw0[1]) / o->n, (double)rss / (1024.0 * 1024.0),
        o->no_ledger ? 4 : 6, ok ? "ok" : "failed");
    code = ok ? 0 : 1;

cleanup:
    for (int k = 0; k < FLOOR_RELAYS; k++) {
        if (relays[k]) {
            proc_signal(relays[k], SIGTERM);
            int status = 0;
            if (proc_wait(relays[k], 5000, &status) != CH_OK)
                proc_kill_and_wait(relays[k]);
            proc_destroy(relays[k]);
        }
    }
    for (int k = 0; k < started; k++)
        pthread_cond_destroy(&r.callers[k].cv);
    natsSubscription_Destroy(r.ready_sub);
    natsSubscription_Destroy(r.end_sub);
    jsCtx_Destroy(r.js);
    natsConnection_Destroy(r.pub_nc);
    natsConnection_Destroy(r.sub_nc);
    natsd_destroy(nats);
    nats_Close();
    pthread_mutex_destroy(&r.mu);
    free(r.t_start);
    free(r.t_acked);
    free(r.t_end);
    free(r.waiter);
    free(r.callers);
    return code;
}

int main(int argc, char **argv)
{
    if (argc == 4 && (strcmp(argv[1], "--relay") == 0 || strcmp(argv[1], "--relay-no-ledger") == 0)) {
        int k = atoi(argv[2]);
        if (k < 1 || k > FLOOR_RELAYS) {
            fprintf(stderr, "choreo-bus-floor: --relay: '%s' is not 1..%d\n", argv[2], FLOOR_RELAYS);
            return 2;
        }
        return relay_main(k, argv[3], strcmp(argv[1], "--relay") == 0);
    }
    floor_opts o;
    int code = floor_parse(argc, argv, &o);
    if (code >= 0)
        return code;
    return floor_drive(&o);
}
