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
 * Six JetStream writes in series, four pushes and three acks. `full` adds
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
 * `own` and `own-acked` are the floor of "a service's own events are its
 * ledger": one stream per producer (floor.order.>, floor.inventory.>, ...),
 * no ledger streams, and one writer thread per role that alone writes its
 * stream, every write with Nats-Expected-Last-Sequence (stream-level
 * compare-and-set) and a batch's writes pipelined (own_* below). The
 * driver's CreateOrder is a request to the orders relay, whose writer stores
 * order.created like any other of its events. In `own` orders follows
 * inventory's and payment's streams with ordered consumers; in `own-acked`
 * it has durable consumers with acks instead.
 *
 * Each role runs as this binary again (`--relay PATTERN ROLE URL`), one
 * process each, so its CPU is measured apart from the driver's. Last stdout
 * line: `floor: key=value ...`; exit status 0 only when every order (and
 * its last step) arrived and, in the own patterns, every stream holds
 * exactly the events it should, each with its expected sequence.
 *
 * Ownership: main owns everything and frees it before exit. Threads: main,
 * one per caller, and the NATS subscription threads (record an arrival under
 * the mutex, never block); in a relay, main and one per consumer (path,
 * full), or one writer fed by the subscriptions' threads (own). */
#include <getopt.h>
#include <inttypes.h>
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

#define FLOOR_EVENT_BYTES 256  /* payload of one event: about a saga envelope */
#define FLOOR_ENTRY_BYTES 96   /* one ledger entry: about an inventory reservation */
#define FLOOR_BATCH       256  /* messages a relay takes per wake-up, as the workers do */
#define FLOOR_WAIT_MS     5000 /* PubAck wait */
#define FLOOR_MAX_N       1000000
#define FLOOR_MAX_C       256
#define FLOOR_QUEUE_MAX   (8 * FLOOR_MAX_N) /* an own writer's backlog: beyond it the relay fails */
#define FLOOR_TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define FLOOR_EXPECT_HDR  "Nats-Expected-Last-Sequence" /* not exported by nats.h */
#define FLOOR_SHOWN       5 /* problems of the stored-events check printed, at most */

/* ---- the message patterns ---- */

/* One consumer of a role. A durable push consumer takes one event type
 * (floor.<from>.*) and per batch writes one ledger message first (when
 * `ledger`), then one event per message (floor.<to>.<id>, when `to`), and
 * acks once all of it is stored; neither: it only acks (a side consumer
 * folding state in, idle when nothing of its type is written). A follower
 * is an ordered consumer on floor.<from> (a wildcard), without acks: it
 * reads and drops what it gets (a read model folding it in), except events
 * of type `on`, for which it writes `to` as a durable would. */
typedef struct floor_consumer {
    const char *from;
    const char *to;
    bool ledger;
    bool follower;
    const char *on;
} floor_consumer;

#define FLOOR_CONSUMERS_MAX 8

/* One relay process: a service's consumers. With `stream`, the role alone
 * writes that stream through one writer thread, compare-and-set on its last
 * sequence (the own patterns); without, each consumer has its own thread and
 * publishes into the shared stream. `creates`: it takes the driver's
 * CreateOrder requests (floorctl.create.<id>) and writes the pattern's
 * `created` event for each. */
typedef struct floor_role {
    const char *name;
    floor_consumer consumers[FLOOR_CONSUMERS_MAX]; /* up to the first with from == NULL */
    const char *stream;
    bool creates;
} floor_role;

typedef struct floor_stream {
    const char *name;
    const char *subjects; /* one wildcard, "floor.<x>.>" */
} floor_stream;

#define FLOOR_ROLES_MAX 4

/* A pattern: its streams (file storage), its roles, the event types the
 * driver writes (`created`, unless a role creates), waits for (`confirmed`:
 * an order's end) and counts before the CPU sample (`sent`: the last step,
 * NULL for none), and its JetStream writes in series per order (of which
 * `ledger_in_series` are ledger writes, left out by --no-ledger). */
typedef struct floor_pattern {
    const char *name;
    const char *created, *confirmed, *sent;
    int writes_in_series, ledger_in_series;
    const floor_stream *streams; /* up to the first with name == NULL */
    int n_roles;
    const floor_role *roles[FLOOR_ROLES_MAX];
} floor_pattern;

/* path and full: every event on one stream, the ledgers on another. */
static const floor_stream floor_bus_streams[] = {
    {"FLOOR", "floor.>"}, {"FLOORLEDGER", "floorledger.>"}, {NULL, NULL}};

/* The critical path of a confirmed order: six writes in series. */
static const floor_role floor_path_inventory = {
    .name = "inventory", .consumers = {{.from = "created", .to = "reserved", .ledger = true}}};
static const floor_role floor_path_payment = {
    .name = "payment", .consumers = {{.from = "reserved", .to = "processed", .ledger = true}}};
static const floor_role floor_path_orders = {.name = "orders",
                                             .consumers = {{.from = "processed", .to = "confirmed"}}};

static const floor_pattern floor_path = {
    .name = "path",
    .created = "created",
    .confirmed = "confirmed",
    .writes_in_series = 6,
    .ledger_in_series = 2,
    .streams = floor_bus_streams,
    .n_roles = 3,
    .roles = {&floor_path_inventory, &floor_path_payment, &floor_path_orders},
};

/* Every message of a confirmed order (README, Benchmark: 5 events, 12
 * pushes, 6 acks, ledger writes), and the consumers of the failure paths,
 * idle here as in the benchmark's confirmed orders but filtered by the
 * server all the same. */
static const floor_role floor_full_orders = {.name = "orders",
                                             .consumers = {{.from = "reserved"},
                                                           {.from = "processed", .to = "confirmed"},
                                                           {.from = "failed"},
                                                           {.from = "payfailed"},
                                                           {.from = "released"},
                                                           {.from = "refunded"},
                                                           {.from = ">", .follower = true}}};
static const floor_role floor_full_inventory = {
    .name = "inventory",
    .consumers = {{.from = "created", .to = "reserved", .ledger = true},
                  {.from = "processed", .ledger = true},
                  {.from = "payfailed"},
                  {.from = "cancelreq"}}};
static const floor_role floor_full_payment = {
    .name = "payment",
    .consumers = {{.from = "reserved", .to = "processed", .ledger = true}, {.from = "cancelreq"}}};
static const floor_role floor_full_notifications = {.name = "notifications",
                                                    .consumers = {{.from = "confirmed", .to = "sent"},
                                                                  {.from = "cancelled"},
                                                                  {.from = "sent.>", .follower = true}}};

static const floor_pattern floor_full = {
    .name = "full",
    .created = "created",
    .confirmed = "confirmed",
    .sent = "sent",
    .writes_in_series = 6,
    .ledger_in_series = 2,
    .streams = floor_bus_streams,
    .n_roles = 4,
    .roles = {&floor_full_orders, &floor_full_inventory, &floor_full_payment, &floor_full_notifications},
};

/* own, own-acked: one write per decision, six events, four writes in series.
 * Each producer's events are its ledger; inventory's commit (reserve ->
 * sold) is an event of its own, no longer a ledger entry. */
static const floor_stream floor_own_streams[] = {{"FLOOR_ORDER", "floor.order.>"},
                                                 {"FLOOR_INVENTORY", "floor.inventory.>"},
                                                 {"FLOOR_PAYMENT", "floor.payment.>"},
                                                 {"FLOOR_NOTIFICATION", "floor.notification.>"},
                                                 {NULL, NULL}};

static const floor_role floor_own_inventory = {
    .name = "inventory",
    .consumers = {{.from = "order.created", .to = "inventory.reserved"},
                  {.from = "payment.processed", .to = "inventory.committed"},
                  {.from = "payment.failed"},
                  {.from = "order.cancel_requested"}},
    .stream = "FLOOR_INVENTORY"};
static const floor_role floor_own_payment = {
    .name = "payment",
    .consumers = {{.from = "inventory.reserved", .to = "payment.processed"},
                  {.from = "order.cancel_requested"}},
    .stream = "FLOOR_PAYMENT"};
static const floor_role floor_own_notifications = {
    .name = "notifications",
    .consumers = {{.from = "order.confirmed", .to = "notification.sent"}, {.from = "order.cancelled"}},
    .stream = "FLOOR_NOTIFICATION"};

/* own: orders folds inventory's and payment's streams in through two
 * followers and decides on payment.processed. */
static const floor_role floor_own_orders = {.name = "orders",
                                            .consumers = {{.from = "inventory.>", .follower = true},
                                                          {.from = "payment.>",
                                                           .follower = true,
                                                           .on = "payment.processed",
                                                           .to = "order.confirmed"}},
                                            .stream = "FLOOR_ORDER",
                                            .creates = true};

/* own and own-acked differ in the orders role alone. */
#define FLOOR_OWN_PATTERN(pattern_name, orders_role)                                                         \
    {                                                                                                        \
        .name = pattern_name, .created = "order.created", .confirmed = "order.confirmed",                    \
        .sent = "notification.sent", .writes_in_series = 4, .streams = floor_own_streams, .n_roles = 4,      \
        .roles = {orders_role, &floor_own_inventory, &floor_own_payment, &floor_own_notifications},          \
    }

static const floor_pattern floor_own = FLOOR_OWN_PATTERN("own", &floor_own_orders);

/* own-acked: the same with durable consumers and acks in orders. */
static const floor_role floor_own_acked_orders = {
    .name = "orders",
    .consumers = {{.from = "inventory.reserved"},
                  {.from = "payment.processed", .to = "order.confirmed"},
                  {.from = "inventory.failed"},
                  {.from = "payment.failed"},
                  {.from = "inventory.released"},
                  {.from = "payment.refunded"}},
    .stream = "FLOOR_ORDER",
    .creates = true};

static const floor_pattern floor_own_acked = FLOOR_OWN_PATTERN("own-acked", &floor_own_acked_orders);

static const floor_pattern *const floor_patterns[] = {&floor_path, &floor_full, &floor_own, &floor_own_acked};

static const floor_pattern *floor_pattern_named(const char *name)
{
    for (size_t k = 0; k < sizeof floor_patterns / sizeof floor_patterns[0]; k++)
        if (strcmp(name, floor_patterns[k]->name) == 0)
            return floor_patterns[k];
    return NULL;
}

static int floor_n_consumers(const floor_role *role)
{
    int n = 0;
    while (n < FLOOR_CONSUMERS_MAX && role->consumers[n].from)
        n++;
    return n;
}

static int floor_n_streams(const floor_pattern *p)
{
    int n = 0;
    while (p->streams[n].name)
        n++;
    return n;
}

/* <role>_<from> with the dots of `from` as underscores (a durable's name). */
static void floor_durable(char *buf, size_t cap, const floor_role *role, const floor_consumer *c)
{
    snprintf(buf, cap, "%s_%s", role->name, c->from);
    for (char *d = strchr(buf, '.'); d; d = strchr(d, '.'))
        *d = '_';
}

/* The subject a consumer listens on: floor.<from>.* (durable) or
 * floor.<from> (a follower's wildcard). */
static void floor_filter(char *buf, size_t cap, const floor_consumer *c)
{
    snprintf(buf, cap, c->follower ? "floor.%s" : "floor.%s.*", c->from);
}

/* True when `subject` (or a filter on it) lies under `wildcard`, which ends
 * in ">" (floor.order.> holds floor.order.created.o1 and floor.order.*.*). */
static bool floor_under(const char *wildcard, const char *subject)
{
    size_t n = strlen(wildcard) - 1;
    return strncmp(wildcard, subject, n) == 0 && subject[n] != '\0';
}

/* True when `subject` is floor.<type>.<id>. */
static bool floor_is_type(const char *subject, const char *type)
{
    size_t n = strlen(type);
    return strncmp(subject, "floor.", 6) == 0 && strncmp(subject + 6, type, n) == 0 &&
           subject[6 + n] == '.' && strchr(subject + 7 + n, '.') == NULL;
}

/* The stream of the pattern that holds `subject`, or NULL. */
static const char *floor_stream_of(const floor_pattern *p, const char *subject)
{
    for (int k = 0; k < floor_n_streams(p); k++)
        if (floor_under(p->streams[k].subjects, subject))
            return p->streams[k].name;
    return NULL;
}

/* The role that takes the driver's CreateOrder requests, or NULL (the
 * driver writes `created` itself). */
static const floor_role *floor_creator(const floor_pattern *p)
{
    for (int k = 0; k < p->n_roles; k++)
        if (p->roles[k]->creates)
            return p->roles[k];
    return NULL;
}

/* The subjects of stream `name` of the pattern, or NULL. */
static const char *floor_stream_subjects(const floor_pattern *p, const char *name)
{
    for (int k = 0; k < floor_n_streams(p); k++)
        if (strcmp(p->streams[k].name, name) == 0)
            return p->streams[k].subjects;
    return NULL;
}

/* The event types a role writes: `created` when it creates, then each
 * consumer's `to`. Returns how many (at most FLOOR_CONSUMERS_MAX + 1). */
static int floor_role_writes(const floor_pattern *p, const floor_role *role, const char **types)
{
    int n = 0;
    if (role->creates)
        types[n++] = p->created;
    for (int j = 0; j < floor_n_consumers(role); j++)
        if (role->consumers[j].to)
            types[n++] = role->consumers[j].to;
    return n;
}

/* Per confirmed order, from the tables: the pushes to durable consumers and
 * followers (one per written event a consumer's filter takes, the idle ones
 * take none) and the acks (the durables' pushes). */
static void floor_pattern_counts(const floor_pattern *p, int *pushes, int *acks)
{
    const char *types[FLOOR_ROLES_MAX * (FLOOR_CONSUMERS_MAX + 1) + 1];
    int nt = 0;
    if (!floor_creator(p))
        types[nt++] = p->created; /* the driver writes it */
    for (int k = 0; k < p->n_roles; k++)
        nt += floor_role_writes(p, p->roles[k], types + nt);
    *pushes = *acks = 0;
    for (int k = 0; k < p->n_roles; k++) {
        for (int j = 0; j < floor_n_consumers(p->roles[k]); j++) {
            const floor_consumer *c = &p->roles[k]->consumers[j];
            char filter[64], subject[80];
            floor_filter(filter, sizeof filter, c);
            for (int t = 0; t < nt; t++) {
                snprintf(subject, sizeof subject, "floor.%s.o0", types[t]);
                bool takes = c->follower ? floor_under(filter, subject) : floor_is_type(subject, c->from);
                *pushes += takes;
                *acks += takes && !c->follower;
            }
        }
    }
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

/* Creates event `type` of order `id` in *out (the caller owns it): subject
 * floor.<type>.<id>, the saga's headers and a deterministic message id, and
 * when expect >= 0 the stream-level compare-and-set on that last sequence. */
static natsStatus floor_event(natsMsg **out, const char *type, const char *id, const char *data, int len,
                              long long expect)
{
    char subject[80], msg_id[80], seq[24];

    snprintf(subject, sizeof subject, "floor.%s.%s", type, id);
    snprintf(msg_id, sizeof msg_id, "%s.%s", type, id);
    natsStatus s = natsMsg_Create(out, subject, NULL, data, len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(*out, "Nats-Msg-Id", msg_id);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(*out, "Choreo-Event-Type", type);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(*out, "traceparent", FLOOR_TRACEPARENT);
    if (s == NATS_OK && expect >= 0) {
        snprintf(seq, sizeof seq, "%lld", expect);
        s = natsMsgHeader_Set(*out, FLOOR_EXPECT_HDR, seq);
    }
    if (s != NATS_OK) {
        natsMsg_Destroy(*out);
        *out = NULL;
    }
    return s;
}

/* Publishes event `type` of order `id` asynchronously (floor_event). */
static natsStatus floor_publish_async(jsCtx *js, const char *type, const char *id, const char *data, int len,
                                      long long expect)
{
    natsMsg *out = NULL;
    natsStatus s = floor_event(&out, type, id, data, len, expect);
    if (s == NATS_OK)
        s = js_PublishMsgAsync(js, &out, NULL);
    natsMsg_Destroy(out); /* NULL when the publish took it */
    return s;
}

/* Waits until every asynchronous publish of js has its PubAck. */
static natsStatus floor_publish_wait(jsCtx *js)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = FLOOR_WAIT_MS;
    return js_PublishAsyncComplete(js, &po);
}

/* The subscription options that bind consumer c of `role` to its durable
 * (or, for a follower, to a new ordered consumer); fills the caller's
 * 64-byte buffers with the durable's name and the filter. */
static void floor_sub_options(jsSubOptions *so, const floor_pattern *p, const floor_role *role,
                              const floor_consumer *c, char *durable, char *filter)
{
    jsSubOptions_Init(so);
    floor_filter(filter, 64, c);
    so->Stream = floor_stream_of(p, filter);
    if (c->follower) {
        so->Ordered = true;
    } else {
        floor_durable(durable, 64, role, c);
        so->Consumer = durable;
        so->Queue = durable;
        so->ManualAck = true;
    }
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

/* path, full: one consumer's thread and what it owns. */
typedef struct relay_worker {
    const floor_pattern *p;
    const floor_role *role;
    const floor_consumer *c;
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

/* Handles one batch of a consumer: ledger, events, wait until stored, acks. */
static natsStatus relay_batch(relay_worker *w, int n)
{
    natsStatus s = NATS_OK;

    if (w->ledger)
        s = relay_ledger(w, n);
    for (int i = 0; s == NATS_OK && w->c->to && i < n; i++) {
        const char *id = strrchr(natsMsg_GetSubject(w->batch[i]), '.');
        s = id ? floor_publish_async(w->js, w->c->to, id + 1, natsMsg_GetData(w->batch[i]),
                                     natsMsg_GetDataLength(w->batch[i]), -1)
               : NATS_INVALID_ARG;
    }
    if (s == NATS_OK && w->c->to)
        s = floor_publish_wait(w->js);
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
            if (!w->c->follower)
                s = relay_batch(w, n);
            for (int i = 0; i < n; i++)
                natsMsg_Destroy(w->batch[i]);
        }
        if (s != NATS_OK) {
            fprintf(stderr, "relay %s %s: %s\n", w->role->name, w->c->from, natsStatus_GetText(s));
            atomic_fetch_add(&relay_errors, 1);
            break;
        }
    }
    return NULL;
}

/* Binds worker w to its durable (or, for a follower, an ordered consumer). */
static natsStatus relay_subscribe(relay_worker *w, jsErrCode *ec)
{
    char durable[64], filter[64];
    jsOptions jo;
    jsSubOptions so;

    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 4 * FLOOR_BATCH;
    jo.PublishAsync.ErrHandler = relay_on_pub_error;
    natsStatus s = natsConnection_JetStream(&w->js, w->nc, &jo);
    floor_sub_options(&so, w->p, w->role, w->c, durable, filter);
    if (s == NATS_OK)
        s = js_SubscribeSync(&w->sub, w->js, filter, NULL, &so, ec);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(w->sub, -1, -1);
    return s;
}

/* path, full: one thread per consumer. */
typedef struct relay_workers {
    relay_worker *w;
    int n, started;
} relay_workers;

static natsStatus relay_workers_start(relay_workers *rw, const floor_pattern *p, const floor_role *role,
                                      natsConnection *nc, bool ledger, jsErrCode *ec)
{
    rw->n = floor_n_consumers(role);
    rw->w = calloc((size_t)rw->n, sizeof *rw->w);
    natsStatus s = rw->w ? NATS_OK : NATS_NO_MEMORY;
    for (int i = 0; s == NATS_OK && i < rw->n; i++) {
        rw->w[i] = (relay_worker){.p = p, .role = role, .c = &role->consumers[i], .nc = nc};
        rw->w[i].ledger = ledger && rw->w[i].c->ledger;
        s = relay_subscribe(&rw->w[i], ec);
    }
    for (int i = 0; s == NATS_OK && i < rw->n; i++) {
        if (pthread_create(&rw->w[i].thread, NULL, relay_worker_main, &rw->w[i]) != 0)
            s = NATS_SYS_ERROR;
        else
            rw->started++;
    }
    return s;
}

/* Joins the threads (relay_stop is set) and frees what they own. */
static void relay_workers_stop(relay_workers *rw)
{
    for (int i = 0; i < rw->started; i++)
        pthread_join(rw->w[i].thread, NULL);
    for (int i = 0; rw->w && i < rw->n; i++) {
        natsSubscription_Destroy(rw->w[i].sub);
        jsCtx_Destroy(rw->w[i].js);
    }
    free(rw->w);
}

/* ---- own, own-acked: one writer per role, compare-and-set on its stream ----
 *
 * The role's subscriptions (durables, followers, the driver's CreateOrder
 * requests) hand what they get to one queue; a follower's events other than
 * its `on` are dropped at once. The writer takes up to FLOOR_BATCH of it,
 * publishes the batch's events asynchronously with expected last sequences
 * last, last+1, ..., waits for their PubAcks, takes the new last sequence
 * from them, then acks the durables' messages and answers the requests. It
 * is the stream's only writer, so a wrong-last-sequence answer (a conflict)
 * is a bug of the floor: it is counted (floorctl.conflict.<role>, which the
 * driver adds up) and stops the relay like any failed publish. */

typedef struct own_item {
    natsMsg *msg;
    const floor_consumer *c; /* NULL: a CreateOrder request */
} own_item;

struct own_relay;

/* What one subscription's callback needs. */
typedef struct own_source {
    struct own_relay *r;
    const floor_consumer *c; /* NULL: the CreateOrder requests */
} own_source;

typedef struct own_relay {
    const floor_pattern *p;
    const floor_role *role;
    natsConnection *nc;
    jsCtx *js;
    own_source sources[FLOOR_CONSUMERS_MAX + 1];
    natsSubscription *subs[FLOOR_CONSUMERS_MAX + 1];
    int n_subs;
    pthread_t writer;
    bool writer_started;
    pthread_mutex_t mu; /* guards the queue and closing */
    pthread_cond_t cv;
    own_item *queue;
    size_t len, cap;
    bool closing;
    uint64_t last;               /* the writer's: the stream's last sequence */
    _Atomic uint64_t acked;      /* the highest sequence a PubAck reported */
    own_item batch[FLOOR_BATCH]; /* the writer's */
} own_relay;

/* A subscription's callback: queue the message for the writer, never block. */
static void own_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    own_source *src = closure;
    own_relay *r = src->r;
    const floor_consumer *c = src->c;

    if (c && c->follower && !(c->on && floor_is_type(natsMsg_GetSubject(msg), c->on))) {
        natsMsg_Destroy(msg); /* folded into a read model that the floor does not keep */
        return;
    }
    pthread_mutex_lock(&r->mu);
    if (r->len == r->cap && !r->closing && r->cap < FLOOR_QUEUE_MAX) {
        size_t cap = r->cap ? 2 * r->cap : 1024;
        own_item *q = realloc(r->queue, cap * sizeof *q);
        if (q) {
            r->queue = q;
            r->cap = cap;
        }
    }
    bool queued = !r->closing && r->len < r->cap;
    if (queued) {
        r->queue[r->len++] = (own_item){msg, c};
        pthread_cond_signal(&r->cv);
    }
    bool lost = !queued && !r->closing;
    pthread_mutex_unlock(&r->mu);
    if (!queued)
        natsMsg_Destroy(msg);
    if (lost) {
        fprintf(stderr, "relay %s: the writer's queue is full\n", r->role->name);
        atomic_fetch_add(&relay_errors, 1);
    }
}

/* Each PubAck of the writer's publishes (the library's PubAck thread). */
static void own_on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    own_relay *r = closure;

    if (pa && !pa->Duplicate) {
        if (pa->Sequence > atomic_load(&r->acked)) /* one PubAck thread: no other writer of acked */
            atomic_store(&r->acked, pa->Sequence);
    } else {
        bool conflict = pae && pae->ErrCode == JSStreamWrongLastSequenceErr;
        if (conflict) {
            char subject[64];
            snprintf(subject, sizeof subject, "floorctl.conflict.%s", r->role->name);
            natsConnection_PublishString(r->nc, subject, "1");
        }
        fprintf(stderr, "relay %s: %s %s: %s\n", r->role->name, conflict ? "conflict on" : "publish of",
                natsMsg_GetSubject(msg), pae ? pae->ErrText : "a duplicate, nothing stored");
        atomic_fetch_add(&relay_errors, 1);
    }
    natsMsg_Destroy(msg);
}

/* Writes the events of the writer's batch of k, pipelined, then acks and answers. */
static natsStatus own_batch(own_relay *r, int k)
{
    const uint64_t base = r->last;
    uint64_t m = 0;
    natsStatus s = NATS_OK;

    for (int i = 0; s == NATS_OK && i < k; i++) {
        natsMsg *in = r->batch[i].msg;
        const char *to = r->batch[i].c ? r->batch[i].c->to : r->p->created;
        const char *id = strrchr(natsMsg_GetSubject(in), '.');
        if (!to)
            continue;
        s = id ? floor_publish_async(r->js, to, id + 1, natsMsg_GetData(in), natsMsg_GetDataLength(in),
                                     (long long)(base + m))
               : NATS_INVALID_ARG;
        m++;
    }
    if (s == NATS_OK && m > 0)
        s = floor_publish_wait(r->js);
    if (s == NATS_OK && atomic_load(&relay_errors) > 0)
        s = NATS_ERR;
    if (s == NATS_OK && atomic_load(&r->acked) != base + m) {
        fprintf(stderr, "relay %s: the PubAcks end at sequence %" PRIu64 ", not %" PRIu64 "\n", r->role->name,
                (uint64_t)atomic_load(&r->acked), base + m);
        s = NATS_ERR;
    }
    if (s == NATS_OK)
        r->last = atomic_load(&r->acked);
    for (int i = 0; s == NATS_OK && i < k; i++) {
        const own_item *it = &r->batch[i];
        if (!it->c)
            s = natsConnection_PublishString(r->nc, natsMsg_GetReply(it->msg), "ok");
        else if (!it->c->follower)
            s = natsMsg_Ack(it->msg, NULL);
    }
    return s;
}

static void *own_writer_main(void *arg)
{
    own_relay *r = arg;

    while (!atomic_load(&relay_stop)) {
        pthread_mutex_lock(&r->mu);
        if (r->len == 0) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 200 * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&r->cv, &r->mu, &until);
        }
        int k = r->len < FLOOR_BATCH ? (int)r->len : FLOOR_BATCH;
        if (k > 0) { /* the queue is NULL until the first message */
            memcpy(r->batch, r->queue, (size_t)k * sizeof *r->batch);
            r->len -= (size_t)k;
            memmove(r->queue, r->queue + k, r->len * sizeof *r->queue);
        }
        pthread_mutex_unlock(&r->mu);
        natsStatus s = k > 0 ? own_batch(r, k) : NATS_OK;
        for (int i = 0; i < k; i++)
            natsMsg_Destroy(r->batch[i].msg);
        if (s != NATS_OK) {
            fprintf(stderr, "relay %s writer: %s\n", r->role->name, natsStatus_GetText(s));
            atomic_fetch_add(&relay_errors, 1);
            break;
        }
    }
    return NULL;
}

/* Subscribes source i (consumer c, or the CreateOrder requests when NULL). */
static natsStatus own_subscribe(own_relay *r, const floor_consumer *c, jsErrCode *ec)
{
    char durable[64], filter[64];
    jsSubOptions so;
    own_source *src = &r->sources[r->n_subs];
    natsSubscription **sub = &r->subs[r->n_subs];
    natsStatus s;

    *src = (own_source){r, c};
    if (c) {
        floor_sub_options(&so, r->p, r->role, c, durable, filter);
        s = js_Subscribe(sub, r->js, filter, own_on_msg, src, NULL, &so, ec);
    } else {
        s = natsConnection_Subscribe(sub, r->nc, "floorctl.create.*", own_on_msg, src);
    }
    if (s == NATS_OK)
        r->n_subs++;
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(*sub, -1, -1);
    return s;
}

/* Binds a zeroed r (calloc) to the role's stream and subscriptions and
 * starts its writer. */
static natsStatus own_start(own_relay *r, const floor_pattern *p, const floor_role *role, natsConnection *nc,
                            jsErrCode *ec)
{
    jsOptions jo;
    jsStreamInfo *si = NULL;

    r->p = p;
    r->role = role;
    r->nc = nc;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 4 * FLOOR_BATCH;
    jo.PublishAsync.AckHandler = own_on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = r;
    natsStatus s = natsConnection_JetStream(&r->js, nc, &jo);
    if (s == NATS_OK)
        s = js_GetStreamInfo(&si, r->js, role->stream, NULL, ec);
    if (s == NATS_OK) {
        r->last = si->State.LastSeq;
        atomic_store(&r->acked, r->last);
    }
    jsStreamInfo_Destroy(si);
    for (int j = 0; s == NATS_OK && j < floor_n_consumers(role); j++)
        s = own_subscribe(r, &role->consumers[j], ec);
    if (s == NATS_OK && role->creates)
        s = own_subscribe(r, NULL, ec);
    if (s == NATS_OK) {
        if (pthread_create(&r->writer, NULL, own_writer_main, r) != 0)
            s = NATS_SYS_ERROR;
        else
            r->writer_started = true;
    }
    return s;
}

/* Stops the writer (relay_stop is set) and the subscriptions, and frees
 * what is left; a callback still running after that only drops its message. */
static void own_stop(own_relay *r)
{
    if (r->writer_started)
        pthread_join(r->writer, NULL);
    for (int i = 0; i < r->n_subs; i++)
        natsSubscription_Destroy(r->subs[i]);
    pthread_mutex_lock(&r->mu);
    r->closing = true;
    for (size_t i = 0; i < r->len; i++)
        natsMsg_Destroy(r->queue[i].msg);
    r->len = 0;
    pthread_mutex_unlock(&r->mu);
    jsCtx_Destroy(r->js);
}

/* Frees the queue once no callback can run any more (after nats_CloseAndWait). */
static void own_free(own_relay *r)
{
    free(r->queue);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
}

static int relay_main(const floor_pattern *p, const floor_role *role, const char *url, bool ledger)
{
    relay_workers rw = {0};
    own_relay *own = role->stream ? calloc(1, sizeof *own) : NULL;
    natsConnection *nc = NULL;
    jsErrCode ec = 0;
    char ready[64];
    int code = 1;

    signal(SIGTERM, relay_on_term);
    natsStatus s = role->stream && !own ? NATS_NO_MEMORY : floor_connect(&nc, url);
    if (s == NATS_OK)
        s = own ? own_start(own, p, role, nc, &ec) : relay_workers_start(&rw, p, role, nc, ledger, &ec);
    snprintf(ready, sizeof ready, "floorctl.ready.%s", role->name);
    if (s == NATS_OK)
        s = natsConnection_PublishString(nc, ready, "ready");
    if (s != NATS_OK)
        fprintf(stderr, "relay %s: start: %s (JetStream error %d)\n", role->name, natsStatus_GetText(s),
                (int)ec);
    while (s == NATS_OK && !atomic_load(&relay_stop) && atomic_load(&relay_errors) == 0)
        test_sleep_ms(50);
    atomic_store(&relay_stop, true);
    if (s == NATS_OK && atomic_load(&relay_errors) == 0)
        code = 0;
    if (own)
        own_stop(own);
    else
        relay_workers_stop(&rw);
    natsConnection_Destroy(nc);
    if (nats_CloseAndWait(FLOOR_WAIT_MS) == NATS_OK && own)
        own_free(own); /* else a callback may still hold it: leave it to exit */
    free(own);
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
    bool by_request;                      /* CreateOrder is a request to the orders relay */
    char end_prefix[64], sent_prefix[64]; /* floor.<confirmed>.o, floor.<sent>.o */
    pthread_mutex_t mu;                   /* guards the arrays and counters below */
    long long *t_start, *t_acked, *t_end;
    long long deadline; /* callers place no order after it */
    int *waiter;
    int done, sent, ready, failed_publishes, conflicts;
    atomic_int next;
    natsConnection *pub_nc, *sub_nc;
    natsSubscription *ready_sub, *conflict_sub, *end_sub, *sent_sub;
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
    size_t end_len = strlen(r->end_prefix);

    pthread_mutex_lock(&r->mu);
    if (strncmp(subj, "floorctl.ready.", 15) == 0) {
        r->ready++;
    } else if (strncmp(subj, "floorctl.conflict.", 18) == 0) {
        r->conflicts++;
    } else if (r->sent_prefix[0] && strncmp(subj, r->sent_prefix, strlen(r->sent_prefix)) == 0) {
        r->sent++; /* JetStream drops duplicates before core subscribers see them */
    } else if (strncmp(subj, r->end_prefix, end_len) == 0) {
        long i = strtol(subj + end_len, NULL, 10);
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

/* CreateOrder: the order's created event, stored before it returns. In the
 * own patterns the orders relay, its stream's one writer, stores it. */
static natsStatus floor_create(floor_run *r, int i)
{
    static const char payload[FLOOR_EVENT_BYTES] = {0};
    char id[24], subject[48];
    natsMsg *m = NULL;

    snprintf(id, sizeof id, "o%d", i);
    if (r->by_request) {
        snprintf(subject, sizeof subject, "floorctl.create.%s", id);
        natsStatus s = natsConnection_Request(&m, r->pub_nc, subject, payload, sizeof payload, FLOOR_WAIT_MS);
        natsMsg_Destroy(m);
        return s;
    }
    jsPubOptions po;
    jsPubAck *pa = NULL;
    jsErrCode ec = 0;
    jsPubOptions_Init(&po);
    po.MaxWait = FLOOR_WAIT_MS;
    natsStatus s = floor_event(&m, r->o.pattern->created, id, payload, sizeof payload, -1);
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
        if (i >= r->o.n || bench_now_ns() > r->deadline)
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
            long long now = bench_now_ns();
            if (r->t_end[i] == 0 && (now - r->t_start[i] > 30LL * 1000000000LL || now > r->deadline))
                break; /* lost: the count check reports it */
        }
        pthread_mutex_unlock(&r->mu);
    }
    return NULL;
}

/* A plain subscription of the driver on `subject`, without pending limits. */
static natsStatus floor_watch(floor_run *r, natsSubscription **sub, const char *subject)
{
    natsStatus s = natsConnection_Subscribe(sub, r->sub_nc, subject, floor_on_msg, r);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(*sub, -1, -1);
    return s;
}

static ch_status floor_setup(floor_run *r, const char *url)
{
    const floor_pattern *p = r->o.pattern;
    jsStreamConfig sc;
    jsConsumerConfig cc;
    jsErrCode ec = 0;
    char subject[64];

    natsStatus s = floor_connect(&r->pub_nc, url);
    if (s == NATS_OK)
        s = floor_connect(&r->sub_nc, url);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&r->js, r->pub_nc, NULL);
    for (int k = 0; s == NATS_OK && k < p->n_roles; k++) {
        const char *types[FLOOR_CONSUMERS_MAX + 1];
        for (int t = 0; p->roles[k]->stream && t < floor_role_writes(p, p->roles[k], types); t++) {
            snprintf(subject, sizeof subject, "floor.%s.o0", types[t]);
            const char *in = floor_stream_of(p, subject);
            if (!in || strcmp(in, p->roles[k]->stream) != 0) {
                fprintf(stderr, "floor: pattern %s: %s writes %s outside its stream %s\n", p->name,
                        p->roles[k]->name, types[t], p->roles[k]->stream);
                s = NATS_INVALID_ARG;
            }
        }
    }
    for (int k = 0; s == NATS_OK && k < floor_n_streams(p); k++) {
        const char *subjects[1] = {p->streams[k].subjects};
        jsStreamConfig_Init(&sc);
        sc.Name = p->streams[k].name;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        s = js_AddStream(NULL, r->js, &sc, NULL, &ec);
    }
    for (int k = 0; s == NATS_OK && k < p->n_roles; k++) {
        const floor_role *role = p->roles[k];
        for (int j = 0; s == NATS_OK && j < floor_n_consumers(role); j++) {
            const floor_consumer *c = &role->consumers[j];
            char durable[64], deliver[96], filter[64];
            if (c->follower)
                continue;
            floor_durable(durable, sizeof durable, role, c);
            floor_filter(filter, sizeof filter, c);
            snprintf(deliver, sizeof deliver, "_floor.deliver.%s", durable);
            jsConsumerConfig_Init(&cc);
            cc.Durable = durable;
            cc.DeliverSubject = deliver;
            cc.DeliverGroup = durable;
            cc.AckPolicy = js_AckExplicit;
            cc.AckWait = 10000LL * 1000000LL;
            cc.MaxAckPending = 1000;
            cc.FilterSubject = filter;
            s = js_AddConsumer(NULL, r->js, floor_stream_of(p, filter), &cc, NULL, &ec);
        }
    }
    r->by_request = floor_creator(p) != NULL;
    /* the relays' "ready" and conflicts, and the orders' last events */
    snprintf(r->end_prefix, sizeof r->end_prefix, "floor.%s.o", p->confirmed);
    if (p->sent)
        snprintf(r->sent_prefix, sizeof r->sent_prefix, "floor.%s.o", p->sent);
    if (s == NATS_OK)
        s = floor_watch(r, &r->ready_sub, "floorctl.ready.*");
    if (s == NATS_OK)
        s = floor_watch(r, &r->conflict_sub, "floorctl.conflict.*");
    snprintf(subject, sizeof subject, "floor.%s.*", p->confirmed);
    if (s == NATS_OK)
        s = floor_watch(r, &r->end_sub, subject);
    snprintf(subject, sizeof subject, "floor.%s.*", p->sent ? p->sent : "");
    if (s == NATS_OK && p->sent)
        s = floor_watch(r, &r->sent_sub, subject);
    if (s == NATS_OK)
        s = natsConnection_FlushTimeout(r->sub_nc, 5000);
    if (s != NATS_OK) {
        fprintf(stderr, "floor: set-up: %s (JetStream error %d)\n", natsStatus_GetText(s), (int)ec);
        return CH_UNAVAILABLE;
    }
    return CH_OK;
}

/* Messages stored in stream `name` now, or -1. */
static long long floor_stream_msgs(floor_run *r, const char *name)
{
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    long long n = js_GetStreamInfo(&si, r->js, name, NULL, &ec) == NATS_OK ? (long long)si->State.Msgs : -1;
    jsStreamInfo_Destroy(si);
    return n;
}

/* One stored event of an own role against what it should be: a type the
 * role writes, its id, its Msg-Id and type headers, and the expected last
 * sequence one below its own. NULL when it is right, else what is wrong. */
static const char *floor_stored_problem(natsMsg *m, const char **types, int nt)
{
    const char *subj = natsMsg_GetSubject(m), *type = NULL, *v = NULL, *msg_id = NULL;
    jsMsgMetaData *meta = NULL;
    char want[80];
    int t = 0;

    while (t < nt && !floor_is_type(subj, types[t]))
        t++;
    if (t == nt)
        return "a subject that is none of the role's event types";
    type = types[t];
    snprintf(want, sizeof want, "%s.%s", type, strrchr(subj, '.') + 1);
    if (natsMsgHeader_Get(m, "Nats-Msg-Id", &msg_id) != NATS_OK || strcmp(msg_id, want) != 0)
        return "a wrong Nats-Msg-Id";
    if (natsMsgHeader_Get(m, "Choreo-Event-Type", &v) != NATS_OK || strcmp(v, type) != 0)
        return "a wrong type header";
    if (natsMsgHeader_Get(m, FLOOR_EXPECT_HDR, &v) != NATS_OK)
        return "no " FLOOR_EXPECT_HDR;
    if (natsMsg_GetMetaData(&meta, m) != NATS_OK)
        return "no metadata";
    bool one_below = strtoull(v, NULL, 10) + 1 == meta->Sequence.Stream;
    jsMsgMetaData_Destroy(meta);
    return one_below ? NULL : "an expected last sequence that is not one below its own";
}

/* The own patterns: reads back every stream and checks that it holds
 * exactly its role's events for the n orders, each right
 * (floor_stored_problem). Prints the first problems; returns how many. */
static int floor_check_stored(floor_run *r)
{
    const floor_pattern *p = r->o.pattern;
    int problems = 0;

    for (int k = 0; k < p->n_roles; k++) {
        const floor_role *role = p->roles[k];
        const char *types[FLOOR_CONSUMERS_MAX + 1];
        natsSubscription *sub = NULL;
        jsSubOptions so;
        jsErrCode ec = 0;
        if (!role->stream)
            continue;
        int nt = floor_role_writes(p, role, types);
        long long want = (long long)nt * r->o.n, have = floor_stream_msgs(r, role->stream), read = 0;
        if (have != want) {
            problems++;
            fprintf(stderr, "floor: stream %s holds %lld events, not %lld\n", role->stream, have, want);
        }
        jsSubOptions_Init(&so);
        so.Stream = role->stream;
        so.Ordered = true;
        natsStatus s = js_SubscribeSync(&sub, r->js, floor_stream_subjects(p, role->stream), NULL, &so, &ec);
        if (s == NATS_OK)
            s = natsSubscription_SetPendingLimits(sub, -1, -1);
        for (natsMsg *m = NULL; s == NATS_OK && read < have; read++) {
            s = natsSubscription_NextMsg(&m, sub, FLOOR_WAIT_MS);
            const char *why = s == NATS_OK ? floor_stored_problem(m, types, nt) : NULL;
            if (why && problems++ < FLOOR_SHOWN)
                fprintf(stderr, "floor: %s in %s has %s\n", natsMsg_GetSubject(m), role->stream, why);
            natsMsg_Destroy(m);
        }
        if (s != NATS_OK) {
            problems++;
            fprintf(stderr, "floor: reading back %s: %s (JetStream error %d)\n", role->stream,
                    natsStatus_GetText(s), (int)ec);
        }
        natsSubscription_Destroy(sub);
    }
    return problems;
}

static void floor_usage_text(FILE *f)
{
    fprintf(f,
            "usage: choreo-bus-floor [-m open|closed] [-n N] [-c C] [-t SECONDS] [-q]\n"
            "                        [--pattern path|full|own|own-acked] [--full] [--no-ledger]\n"
            "  The saga's messages through nats-server with no service logic: the floor under\n"
            "  choreo-bench. Same flags and modes; the last stdout line is the summary.\n"
            "  --pattern    path (default): a confirmed order's critical path; full: every message\n"
            "               of it; own: one stream per producer, its events its ledger, one writer\n"
            "               per role with compare-and-set, orders following two streams; own-acked:\n"
            "               the same with durable consumers in orders\n"
            "  --full       --pattern full\n"
            "  --no-ledger  path, full: leave out the ledger writes (4 JetStream writes in series, not 6)\n");
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
                                          {"pattern", required_argument, NULL, 'P'},
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
        case 'P':
            o->pattern = floor_pattern_named(optarg);
            if (!o->pattern) {
                fprintf(stderr, "choreo-bus-floor: --pattern: '%s' is not path, full, own or own-acked\n",
                        optarg);
                return 2;
            }
            break;
        case 'h': floor_usage_text(stdout); return 0;
        default: floor_usage_text(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "choreo-bus-floor: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (o->no_ledger && o->pattern->ledger_in_series == 0) {
        fprintf(stderr, "choreo-bus-floor: --no-ledger: pattern %s writes no ledger\n", o->pattern->name);
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
    const floor_pattern *p = o->pattern;
    const int nr = p->n_roles;
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
        const char *argv[] = {
            self, "--relay", p->name, p->roles[k]->name, natsd_url(nats), o->no_ledger ? "--no-ledger" : NULL,
            NULL};
        if (proc_spawn(&relays[k], argv, NULL, NULL) != CH_OK) {
            fprintf(stderr, "floor: cannot start relay %s\n", p->roles[k]->name);
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
        fprintf(stderr, "floor: %s pattern, %s mode, %d orders, %d callers\n", p->name,
                o->closed ? "closed" : "open", o->n, o->c);

    floor_usage u0, u1;
    floor_sample(pids, nr + 2, &u0);
    long long t0 = bench_now_ns(), deadline = t0 + (long long)o->timeout_s * 1000000000LL;
    r.deadline = deadline;
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
    /* the pattern's last step, so that its CPU is counted too */
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
    long long relays_sw = 0, rss = 0, writes = 0;
    char roles[FLOOR_ROLES_MAX * 48] = "";
    for (int k = 0, used = 0; k < nr; k++) {
        double cpu = u1.cpu[k] - u0.cpu[k];
        long long v = bench_peak_rss_bytes(pids[k]);
        used += snprintf(roles + used, sizeof roles - (size_t)used, " cpu_s_per_1k_%s=%.3f",
                         p->roles[k]->name, cpu / k1);
        relays_cpu += cpu;
        relays_sw += u1.sw[k] - u0.sw[k];
        rss = v > rss ? v : rss;
    }
    for (int k = 0; k < floor_n_streams(p); k++)
        writes += floor_stream_msgs(&r, p->streams[k].name);
    int pushes, acks;
    floor_pattern_counts(p, &pushes, &acks);
    floor_quantiles(&r, r.t_start, r.t_end, lat);
    floor_quantiles(&r, r.t_start, r.t_acked, create);
    double wall = t1 > t0 ? (double)(t1 - t0) / 1e9 : 0;
    int stored_problems = floor_check_stored(&r);
    pthread_mutex_lock(&r.mu);
    int conflicts = r.conflicts;
    pthread_mutex_unlock(&r.mu);
    bool ok = r.done == o->n && r.failed_publishes == 0 && (!r.sent_sub || r.sent == o->n) &&
              conflicts == 0 && stored_problems == 0;
    if (!ok)
        fprintf(stderr,
                "floor: %d of %d orders arrived (%d last steps), %d publishes failed, %d conflicts, "
                "%d problems in the stored events\n",
                r.done, o->n, r.sent, r.failed_publishes, conflicts, stored_problems);
    printf("floor: pattern=%s mode=%s n=%d c=%d orders_per_s=%.0f p50_ms=%.3f p95_ms=%.3f p99_ms=%.3f "
           "create_p50_ms=%.3f "
           "cpu_s_per_1k_relays=%.3f%s cpu_s_per_1k_nats=%.3f cpu_s_per_1k_driver=%.3f "
           "ctxsw_per_order_relays=%.1f "
           "ctxsw_per_order_nats=%.1f rss_mb_relay_max=%.1f writes_in_series=%d writes_per_order=%.2f "
           "pushes_per_order=%d acks_per_order=%d conflicts=%d checks=%s\n",
           p->name, o->closed ? "closed" : "open", o->n, o->c, wall > 0 ? r.done / wall : 0, lat[0], lat[1],
           lat[2], create[0], relays_cpu / k1, roles, (u1.cpu[nr] - u0.cpu[nr]) / k1,
           (u1.cpu[nr + 1] - u0.cpu[nr + 1]) / k1, (double)relays_sw / o->n,
           (double)(u1.sw[nr] - u0.sw[nr]) / o->n, (double)rss / (1024.0 * 1024.0),
           p->writes_in_series - (o->no_ledger ? p->ledger_in_series : 0), (double)writes / o->n, pushes,
           acks, conflicts, ok ? "ok" : "failed");
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
    natsSubscription_Destroy(r.conflict_sub);
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
            if (strcmp(argv[3], p->roles[k]->name) == 0)
                return relay_main(p, p->roles[k], argv[4], argc == 5);
        fprintf(stderr, "choreo-bus-floor: --relay: no role '%s' in pattern '%s'\n", argv[3], argv[2]);
        return 2;
    }
    floor_opts o;
    int code = floor_parse(argc, argv, &o);
    if (code >= 0)
        return code;
    return floor_drive(&o);
}
