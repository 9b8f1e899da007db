/* bus_floor.c: choreo-bus-floor, the floor under the saga benchmark.
 *
 * It sends a confirmed order's messages through nats-server with no service
 * behind them: no gRPC, no decoding, no state. The default pattern is the
 * critical path alone, per order in series:
 *
 *   driver     publishes floor.created.<id>, waits for its PubAck (CreateOrder)
 *   inventory  takes it from a durable push consumer, writes one ledger
 *              message per batch (compare-and-set on its subject), publishes
 *              floor.reserved.<id>, acks once both are stored
 *   payment    the same from floor.reserved to floor.processed
 *   orders     floor.processed to floor.confirmed, no ledger
 *   driver     sees floor.confirmed.<id> on a plain subscription (the bench)
 *
 * Six JetStream writes in series, four pushes and three acks. --full adds
 * every other message of a confirmed order (floor_full below): the orders
 * and notifications followers, the side consumers, notification.sent, and
 * the idle consumers of the failure paths that the server filters all the
 * same. Events have the saga's size and headers; the client settings are
 * the bus's (SendAsap, asynchronous publishes, manual acks once the batch's
 * publishes are stored); storage is file. The saga does all of it and more,
 * so each pattern bounds it from below on this client, server and machine:
 * the latency of one order, the CPU per order of the relays (the services'
 * share) and of nats-server. --no-ledger leaves out the ledger writes: the
 * floor of a design without them.
 *
 * Each role runs as this binary again (`--relay PATTERN ROLE URL`), one
 * process each with one thread per consumer, so its CPU is measured apart
 * from the driver's. Last stdout line: `floor: key=value ...`; exit status 0
 * only when every order (and, with --full, its last step) arrived.
 *
 * Ownership: main owns everything and frees it before exit. Threads: main,
 * one per caller, and the NATS subscription threads (record an arrival under
 * the mutex, never block); in a relay, main and one per consumer. */
#include <getopt.h>
#include <limits.h>
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_sys.h"
#include "harness.h"

#define FLOOR_STREAM      "FLOOR"
#define FLOOR_LEDGER      "FLOORLEDGER"
#define FLOOR_EVENT_BYTES 256  /* payload of one event: about a saga envelope */
#define FLOOR_ENTRY_BYTES 96   /* one ledger entry: about an inventory reservation */
#define FLOOR_BATCH       256  /* messages a relay takes per wake-up, as the workers do */
#define FLOOR_WAIT_MS     5000 /* PubAck wait */
#define FLOOR_MAX_N       1000000
#define FLOOR_MAX_C       256
#define FLOOR_TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

/* ---- the message patterns ---- */

/* A durable push consumer of one event type (floor.<from>.*) with what it
 * does per batch: one ledger message first (when `ledger`), then one event
 * per message (floor.<to>.<id>, when `to`), then the acks once all of it is
 * stored. Neither: it only acks (a side consumer folding state in). */
typedef struct floor_consumer {
    const char *from;
    const char *to;
    bool ledger;
} floor_consumer;

#define FLOOR_CONSUMERS_MAX 6

/* One relay process: a service's consumers, and its follower (an ordered
 * consumer on `follow` that reads and drops, as a read model's would). */
typedef struct floor_role {
    const char *name;
    floor_consumer consumers[FLOOR_CONSUMERS_MAX]; /* up to the first with from == NULL */
    const char *follow;
} floor_role;

#define FLOOR_ROLES_MAX 4

typedef struct floor_pattern {
    const char *name;
    int n_roles;
    floor_role roles[FLOOR_ROLES_MAX];
} floor_pattern;

/* The critical path of a confirmed order: six writes in series. */
static const floor_pattern floor_path = {
    "path",
    3,
    {{"inventory", {{"created", "reserved", true}}, NULL},
     {"payment", {{"reserved", "processed", true}}, NULL},
     {"orders", {{"processed", "confirmed", false}}, NULL}},
};

/* Every message of a confirmed order (README, Benchmark: 5 events, 12
 * pushes, 6 acks, ledger writes), and the consumers of the failure paths,
 * idle here as in the benchmark's confirmed orders but filtered by the
 * server all the same. */
static const floor_pattern floor_full = {
    "full",
    4,
    {{"orders",
      {{"reserved", NULL, false},
       {"processed", "confirmed", false},
       {"failed", NULL, false},
       {"payfailed", NULL, false},
       {"released", NULL, false},
       {"refunded", NULL, false}},
      "floor.>"},
     {"inventory",
      {{"created", "reserved", true},
       {"processed", NULL, true},
       {"payfailed", NULL, false},
       {"cancelreq", NULL, false}},
      NULL},
     {"payment", {{"reserved", "processed", true}, {"cancelreq", NULL, false}}, NULL},
     {"notifications", {{"confirmed", "sent", false}, {"cancelled", NULL, false}}, "floor.sent.>"}},
};

static const floor_pattern *floor_pattern_named(const char *name)
{
    if (strcmp(name, floor_path.name) == 0)
        return &floor_path;
    if (strcmp(name, floor_full.name) == 0)
        return &floor_full;
    return NULL;
}

static int floor_n_consumers(const floor_role *role)
{
    int n = 0;
    while (n < FLOOR_CONSUMERS_MAX && role->consumers[n].from)
        n++;
    return n;
}

static void floor_durable(char *buf, size_t cap, const floor_role *role, const floor_consumer *c)
{
    snprintf(buf, cap, "%s_%s", role->name, c->from);
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

/* ---- a relay process: one role of a pattern ---- */

static atomic_bool relay_stop;
static atomic_int relay_errors;

static void relay_on_term(int sig)
{
    (void)sig;
    atomic_store(&relay_stop, true);
}

static void relay_on_pub_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    (void)js;
    (void)closure;
    atomic_fetch_add(&relay_errors, 1);
    fprintf(stderr, "relay: publish failed: %s\n",
            pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
}

/* One consumer's thread and what it owns. */
typedef struct relay_worker {
    const floor_role *role;
    const floor_consumer *c; /* NULL: the role's follower */
    bool ledger;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *sub;
    pthread_t thread;
    uint64_t ledger_last;
    natsMsg *batch[FLOOR_BATCH];
    char entries[FLOOR_BATCH * FLOOR_ENTRY_BYTES];
} relay_worker;

/* Publishes one ledger message framing the batch's n entries, only if the
 * ledger subject is still where this worker left it (compare-and-set, as
 * the services' ledgers do). */
static natsStatus relay_ledger(relay_worker *w, int n)
{
    char subject[64];
    jsPubOptions po;
    jsPubAck *pa = NULL;
    jsErrCode ec = 0;

    snprintf(subject, sizeof subject, "floorledger.%s.%s", w->role->name, w->c->from);
    memset(w->entries, 'l', (size_t)n * FLOOR_ENTRY_BYTES);
    jsPubOptions_Init(&po);
    po.MaxWait = FLOOR_WAIT_MS;
    po.ExpectLastSubjectSeq = w->ledger_last;
    natsStatus s = js_Publish(&pa, w->js, subject, w->entries, n * FLOOR_ENTRY_BYTES, &po, &ec);
    if (s == NATS_OK) {
        w->ledger_last = pa->Sequence;
        jsPubAck_Destroy(pa);
    }
    return s;
}

/* Publishes event `type` of order `id` asynchronously, with the saga's
 * headers and a deterministic message id. */
static natsStatus floor_publish_async(jsCtx *js, const char *type, const char *id, const char *data, int len)
{
    char subject[64], msg_id[48];
    natsMsg *out = NULL;
    jsPubOptions po;

    snprintf(subject, sizeof subject, "floor.%s.%s", type, id);
    snprintf(msg_id, sizeof msg_id, "%s.%s", type, id);
    natsStatus s = natsMsg_Create(&out, subject, NULL, data, len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(out, "Choreo-Event-Type", type);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(out, "traceparent", FLOOR_TRACEPARENT);
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    if (s == NATS_OK)
        s = js_PublishMsgAsync(js, &out, &po);
    natsMsg_Destroy(out); /* NULL when the publish took it */
    return s;
}

/* Handles one batch of a consumer: ledger, events, wait until stored, acks. */
static natsStatus relay_batch(relay_worker *w, int n)
{
    natsStatus s = NATS_OK;

    if (w->ledger)
        s = relay_ledger(w, n);
    for (int i = 0; s == NATS_OK && w->c->to && i < n; i++) {
        const char *id = strrchr(natsMsg_GetSubject(w->batch[i]), '.');
        s = id ? floor_publish_async(w->js, w->c->to, id + 1, natsMsg_GetData(w->batch[i]),
                                     natsMsg_GetDataLength(w->batch[i]))
               : NATS_INVALID_ARG;
    }
    if (s == NATS_OK && w->c->to) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = FLOOR_WAIT_MS;
        s = js_PublishAsyncComplete(w->js, &po);
    }
    if (s == NATS_OK && atomic_load(&relay_errors) > 0)
        s = NATS_ERR;
    for (int i = 0; s == NATS_OK && i < n; i++)
        s = natsMsg_Ack(w->batch[i], NULL);
    return s;
}

static void *relay_worker_main(void *arg)
{
    relay_worker *w = arg;

    while (!atomic_load(&relay_stop)) {
        int n = 0;
        natsStatus s = natsSubscription_NextMsg(&w->batch[0], w->sub, 200);
        if (s == NATS_TIMEOUT)
            continue;
        if (s == NATS_OK) {
            for (n = 1; n < FLOOR_BATCH && natsSubscription_NextMsg(&w->batch[n], w->sub, 0) == NATS_OK;
                 n++) {
            }
            if (w->c)
                s = relay_batch(w, n);
            for (int i = 0; i < n; i++)
                natsMsg_Destroy(w->batch[i]);
        }
        if (s != NATS_OK) {
            fprintf(stderr, "relay %s %s: %s\n", w->role->name, w->c ? w->c->from : "follower",
                    natsStatus_GetText(s));
            atomic_fetch_add(&relay_errors, 1);
            break;
        }
    }
    return NULL;
}

/* Binds worker w to its durable (or, for the follower, an ordered consumer). */
static natsStatus relay_subscribe(relay_worker *w, jsErrCode *ec)
{
    char durable[64], filter[64];
    jsOptions jo;
    jsSubOptions so;

    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 4 * FLOOR_BATCH;
    jo.PublishAsync.ErrHandler = relay_on_pub_error;
    natsStatus s = natsConnection_JetStream(&w->js, w->nc, &jo);
    jsSubOptions_Init(&so);
    so.Stream = FLOOR_STREAM;
    if (w->c) {
        floor_durable(durable, sizeof durable, w->role, w->c);
        snprintf(filter, sizeof filter, "floor.%s.*", w->c->from);
        so.Consumer = durable;
        so.Queue = durable;
        so.ManualAck = true;
    } else {
        snprintf(filter, sizeof filter, "%s", w->role->follow);
        so.Ordered = true;
    }
    if (s == NATS_OK)
        s = js_SubscribeSync(&w->sub, w->js, filter, NULL, &so, ec);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(w->sub, -1, -1);
    return s;
}

static int relay_main(const floor_role *role, const char *url, bool ledger)
{
    relay_worker *w = calloc(FLOOR_CONSUMERS_MAX + 1, sizeof *w);
    natsConnection *nc = NULL;
    int n = floor_n_consumers(role) + (role->follow ? 1 : 0), started = 0, code = 1;
    jsErrCode ec = 0;
    char ready[64];

    signal(SIGTERM, relay_on_term);
    natsStatus s = w ? floor_connect(&nc, url) : NATS_NO_MEMORY;
    for (int i = 0; s == NATS_OK && i < n; i++) {
        w[i].role = role;
        w[i].c = i < floor_n_consumers(role) ? &role->consumers[i] : NULL;
        w[i].ledger = ledger && w[i].c && w[i].c->ledger;
        w[i].nc = nc;
        s = relay_subscribe(&w[i], &ec);
    }
    for (int i = 0; s == NATS_OK && i < n; i++) {
        if (pthread_create(&w[i].thread, NULL, relay_worker_main, &w[i]) != 0)
            s = NATS_SYS_ERROR;
        else
            started++;
    }
    snprintf(ready, sizeof ready, "floorctl.ready.%s", role->name);
    if (s == NATS_OK)
        s = natsConnection_PublishString(nc, ready, "ready");
    if (s != NATS_OK)
        fprintf(stderr, "relay %s: start: %s (JetStream error %d)\n", role->name, natsStatus_GetText(s),
                (int)ec);
    while (s == NATS_OK && !atomic_load(&relay_stop) && atomic_load(&relay_errors) == 0)
        test_sleep_ms(50);
    atomic_store(&relay_stop, true);
    for (int i = 0; i < started; i++)
        pthread_join(w[i].thread, NULL);
    if (s == NATS_OK && atomic_load(&relay_errors) == 0)
        code = 0;
    for (int i = 0; w && i < n; i++) {
        natsSubscription_Destroy(w[i].sub);
        jsCtx_Destroy(w[i].js);
    }
    natsConnection_Destroy(nc);
    nats_Close();
    free(w);
    return code;
}

/* ---- the driver ---- */

typedef struct floor_opts {
    int n, c, timeout_s;
    bool closed, quiet, no_ledger;
    const floor_pattern *pattern;
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
    int done, sent, ready, failed_publishes;
    atomic_int next;
    natsConnection *pub_nc, *sub_nc;
    natsSubscription *ready_sub, *end_sub, *sent_sub;
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
    } else if (strncmp(subj, "floor.sent.o", 12) == 0) {
        r->sent++; /* JetStream drops duplicates before core subscribers see them */
    } else if (strncmp(subj, "floor.confirmed.o", 17) == 0) {
        long i = strtol(subj + 17, NULL, 10);
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

/* floor.created.<id>, stored before it returns: what CreateOrder waits for. */
static natsStatus floor_create(floor_run *r, int i)
{
    static const char payload[FLOOR_EVENT_BYTES] = {0};
    char subject[48], msg_id[48];
    natsMsg *m = NULL;
    jsPubOptions po;
    jsPubAck *pa = NULL;
    jsErrCode ec = 0;

    snprintf(subject, sizeof subject, "floor.created.o%d", i);
    snprintf(msg_id, sizeof msg_id, "created.o%d", i);
    natsStatus s = natsMsg_Create(&m, subject, NULL, payload, sizeof payload);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Choreo-Event-Type", "created");
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
    for (int k = 0; s == NATS_OK && k < r->o.pattern->n_roles; k++) {
        const floor_role *role = &r->o.pattern->roles[k];
        for (int j = 0; s == NATS_OK && j < floor_n_consumers(role); j++) {
            char durable[64], deliver[96], filter[64];
            floor_durable(durable, sizeof durable, role, &role->consumers[j]);
            snprintf(deliver, sizeof deliver, "_floor.deliver.%s", durable);
            snprintf(filter, sizeof filter, "floor.%s.*", role->consumers[j].from);
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
    }
    /* one subscription for the relays' "ready" and the orders' last event */
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&r->ready_sub, r->sub_nc, "floorctl.ready.*", floor_on_msg, r);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&r->end_sub, r->sub_nc, "floor.confirmed.*", floor_on_msg, r);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(r->end_sub, -1, -1);
    if (s == NATS_OK && r->o.pattern == &floor_full)
        s = natsConnection_Subscribe(&r->sent_sub, r->sub_nc, "floor.sent.*", floor_on_msg, r);
    if (s == NATS_OK && r->sent_sub)
        s = natsSubscription_SetPendingLimits(r->sent_sub, -1, -1);
    if (s == NATS_OK)
        s = natsConnection_FlushTimeout(r->sub_nc, 5000);
    if (s != NATS_OK) {
        fprintf(stderr, "floor: set-up: %s (JetStream error %d)\n", natsStatus_GetText(s), (int)ec);
        return CH_UNAVAILABLE;
    }
    return CH_OK;
}

static void floor_usage_text(FILE *f)
{
    fprintf(
        f, "usage: choreo-bus-floor [-m open|closed] [-n N] [-c C] [-t SECONDS] [-q] [--full] [--no-ledger]\n"
           "  The saga's messages through nats-server with no service logic: the floor under\n"
           "  choreo-bench. Same flags and modes; the last stdout line is the summary.\n"
           "  --full       every message of a confirmed order, not only its critical path\n"
           "  --no-ledger  leave out the ledger writes (4 JetStream writes in series, not 6)\n");
}

/* Parses the value of a numeric flag (1..hi) into *out, or says what is wrong. */
static bool floor_int_opt(const char *flag, const char *s, int hi, int *out)
{
    if (bench_int_arg(s, 1, hi, out))
        return true;
    fprintf(stderr, "choreo-bus-floor: %s: must be a whole number in 1..%d, not '%s'\n", flag, hi, s);
    return false;
}

static int floor_parse(int argc, char **argv, floor_opts *o)
{
    static const struct option longs[] = {{"no-ledger", no_argument, NULL, 'L'},
                                          {"full", no_argument, NULL, 'F'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
    *o = (floor_opts){.n = 5000, .c = 16, .timeout_s = 300, .pattern = &floor_path};
    int ch;
    while ((ch = getopt_long(argc, argv, "m:n:c:t:qh", longs, NULL)) != -1) {
        switch (ch) {
        case 'm':
            if (strcmp(optarg, "open") != 0 && strcmp(optarg, "closed") != 0) {
                fprintf(stderr, "choreo-bus-floor: -m: '%s' is not open or closed\n", optarg);
                return 2;
            }
            o->closed = strcmp(optarg, "closed") == 0;
            break;
        case 'n':
            if (!floor_int_opt("-n", optarg, FLOOR_MAX_N, &o->n))
                return 2;
            break;
        case 'c':
            if (!floor_int_opt("-c", optarg, FLOOR_MAX_C, &o->c))
                return 2;
            break;
        case 't':
            if (!floor_int_opt("-t", optarg, 86400, &o->timeout_s))
                return 2;
            break;
        case 'q': o->quiet = true; break;
        case 'L': o->no_ledger = true; break;
        case 'F': o->pattern = &floor_full; break;
        case 'h': floor_usage_text(stdout); return 0;
        default: floor_usage_text(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "choreo-bus-floor: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return -1;
}

/* CPU seconds and context switches so far of each measured process: the
 * relays, then nats-server, then the driver. */
typedef struct floor_usage {
    double cpu[FLOOR_ROLES_MAX + 2];
    long long sw[FLOOR_ROLES_MAX + 2];
} floor_usage;

static void floor_sample(const pid_t *pids, int n, floor_usage *u)
{
    for (int k = 0; k < n; k++) {
        u->cpu[k] = bench_cpu_seconds(pids[k]);
        u->sw[k] = bench_ctx_switches(pids[k]);
    }
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
    const int nr = o->pattern->n_roles;
    proc *relays[FLOOR_ROLES_MAX] = {0};
    pid_t pids[FLOOR_ROLES_MAX + 2]; /* relays, nats-server, this process */
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
    for (int k = 0; k < nr; k++) {
        const char *argv[] = {self,
                              "--relay",
                              o->pattern->name,
                              o->pattern->roles[k].name,
                              natsd_url(nats),
                              o->no_ledger ? "--no-ledger" : NULL,
                              NULL};
        if (proc_spawn(&relays[k], argv, NULL, NULL) != CH_OK) {
            fprintf(stderr, "floor: cannot start relay %s\n", o->pattern->roles[k].name);
            goto cleanup;
        }
        pids[k] = proc_pid(relays[k]);
    }
    pids[nr] = bench_find_child("nats-server");
    pids[nr + 1] = getpid();
    for (int waited = 0;; waited += 10) {
        pthread_mutex_lock(&r.mu);
        int ready = r.ready;
        pthread_mutex_unlock(&r.mu);
        if (ready == nr)
            break;
        if (waited > 10000) {
            fprintf(stderr, "floor: the relays did not start (their errors are above)\n");
            goto cleanup;
        }
        test_sleep_ms(10);
    }
    if (!o->quiet)
        fprintf(stderr, "floor: %s pattern, %s mode, %d orders, %d callers\n", o->pattern->name,
                o->closed ? "closed" : "open", o->n, o->c);

    floor_usage u0, u1;
    floor_sample(pids, nr + 2, &u0);
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
    /* the full pattern's last step, so that its CPU is counted too */
    for (;;) {
        pthread_mutex_lock(&r.mu);
        bool all = !r.sent_sub || r.sent >= r.done;
        pthread_mutex_unlock(&r.mu);
        if (all || bench_now_ns() > deadline)
            break;
        test_sleep_ms(5);
    }
    for (int i = 0; i < o->n; i++)
        if (r.t_end[i] > t1)
            t1 = r.t_end[i];
    bench_wait_quiet(pids, nr + 1); /* trailing acks and followers count, as in choreo-bench */
    floor_sample(pids, nr + 2, &u1);
    double lat[3], create[3], k1 = (double)o->n / 1000.0, relays_cpu = 0;
    long long relays_sw = 0, rss = 0;
    char roles[FLOOR_ROLES_MAX * 48] = "";
    for (int k = 0, used = 0; k < nr; k++) {
        double cpu = u1.cpu[k] - u0.cpu[k];
        long long v = bench_peak_rss_bytes(pids[k]);
        used += snprintf(roles + used, sizeof roles - (size_t)used, " cpu_s_per_1k_%s=%.3f",
                         o->pattern->roles[k].name, cpu / k1);
        relays_cpu += cpu;
        relays_sw += u1.sw[k] - u0.sw[k];
        rss = v > rss ? v : rss;
    }
    floor_quantiles(&r, r.t_start, r.t_end, lat);
    floor_quantiles(&r, r.t_start, r.t_acked, create);
    double wall = t1 > t0 ? (double)(t1 - t0) / 1e9 : 0;
    bool ok = r.done == o->n && r.failed_publishes == 0 && (!r.sent_sub || r.sent == o->n);
    if (!ok)
        fprintf(stderr, "floor: %d of %d orders arrived (%d last steps), %d publishes failed\n", r.done, o->n,
                r.sent, r.failed_publishes);
    printf("floor: pattern=%s mode=%s n=%d c=%d orders_per_s=%.0f p50_ms=%.3f p95_ms=%.3f p99_ms=%.3f "
           "create_p50_ms=%.3f "
           "cpu_s_per_1k_relays=%.3f%s cpu_s_per_1k_nats=%.3f cpu_s_per_1k_driver=%.3f "
           "ctxsw_per_order_relays=%.1f "
           "ctxsw_per_order_nats=%.1f rss_mb_relay_max=%.1f writes_in_series=%d checks=%s\n",
           o->pattern->name, o->closed ? "closed" : "open", o->n, o->c, wall > 0 ? r.done / wall : 0, lat[0],
           lat[1], lat[2], create[0], relays_cpu / k1, roles, (u1.cpu[nr] - u0.cpu[nr]) / k1,
           (u1.cpu[nr + 1] - u0.cpu[nr + 1]) / k1, (double)relays_sw / o->n,
           (double)(u1.sw[nr] - u0.sw[nr]) / o->n, (double)rss / (1024.0 * 1024.0), o->no_ledger ? 4 : 6,
           ok ? "ok" : "failed");
    code = ok ? 0 : 1;

cleanup:
    for (int k = 0; k < nr; k++) {
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
    natsSubscription_Destroy(r.sent_sub);
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
    /* a relay: --relay PATTERN ROLE URL [--no-ledger], as floor_drive spawns it */
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "--relay") == 0) {
        const floor_pattern *p = floor_pattern_named(argv[2]);
        for (int k = 0; p && k < p->n_roles; k++)
            if (strcmp(argv[3], p->roles[k].name) == 0)
                return relay_main(&p->roles[k], argv[4], argc == 5);
        fprintf(stderr, "choreo-bus-floor: --relay: no role '%s' in pattern '%s'\n", argv[3], argv[2]);
        return 2;
    }
    floor_opts o;
    int code = floor_parse(argc, argv, &o);
    if (code >= 0)
        return code;
    return floor_drive(&o);
}
