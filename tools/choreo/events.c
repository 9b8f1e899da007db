/* events.c: "choreo events": the saga's event flow, readable.
 *
 *   follow    subscribes to events.> and prints each event as one line,
 *             coloured per order when stdout is a terminal
 *   timeline  reads one order's events back from every producer's stream
 *             and prints them in the order they happened, with the time
 *             between steps */
#include <inttypes.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "cli.h"
#include "event_bus.h"
#include "event_codec.h"
#include "url_list.h"

static const char *nats_url(void)
{
    const char *u = getenv("CHOREO_NATS_URL");
    return u && u[0] ? u : "nats://127.0.0.1:4222";
}

/* One of six colours, the same for every event of an order. */
static const char *order_colour(const char *order_id, bool tty)
{
    static const char *const colours[] = {"\033[36m", "\033[33m", "\033[35m",
                                          "\033[32m", "\033[34m", "\033[31m"};
    unsigned h = 5381;
    if (!tty)
        return "";
    for (const char *p = order_id; *p; p++)
        h = h * 33 + (unsigned char)*p;
    return colours[h % 6];
}

static void print_clock(int64_t ns)
{
    time_t secs = (time_t)(ns / 1000000000);
    struct tm tm;
    char buf[16];
    localtime_r(&secs, &tm);
    strftime(buf, sizeof buf, "%H:%M:%S", &tm);
    printf("%s.%03d", buf, (int)((ns / 1000000) % 1000));
}

/* Prints one event line: time, order, type, producer, summary, ids. */
static void print_event(const choreo_events_v1_Envelope *e, const char *subject, bool tty, const char *prefix)
{
    char summary[256];
    event_summary(e, summary, sizeof summary);
    printf("%s", order_colour(e->order_id, tty));
    print_clock(e->occurred_at_unix_ns);
    printf(" %s%-20s %-24s %-14s %s  event=%.8s cause=%.12s trace=%.8s%s\n", prefix, e->order_id, e->type,
           e->producer, summary, e->event_id, e->causation_id, e->traceparent[0] ? e->traceparent + 3 : "-",
           tty ? "\033[0m" : "");
    (void)subject;
    fflush(stdout);
}

static int follow(void)
{
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    natsOptions *opts = NULL;
    choreo_events_v1_Envelope *e = malloc(sizeof *e);
    bool tty = isatty(STDOUT_FILENO);
    url_list servers;
    char why[160];
    natsStatus s;

    if (url_list_parse(nats_url(), &servers, why, sizeof why) != CH_OK) {
        fprintf(stderr, "error: CHOREO_NATS_URL: %s\n", why);
        free(e);
        return 2;
    }
    if (!e)
        return 1;
    s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetServers(opts, servers.ptrs, servers.n);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, opts);
    if (s == NATS_OK)
        s = natsConnection_SubscribeSync(&sub, nc, "events.>");
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(sub, 65536, 64 * 1024 * 1024);
    if (s != NATS_OK) {
        fprintf(stderr, "error: cannot follow events at %s: %s\n", nats_url(), natsStatus_GetText(s));
        goto cleanup;
    }
    fprintf(stderr, "following events.> at %s (Ctrl-C to stop)\n", nats_url());
    for (;;) {
        natsMsg *m = NULL;
        s = natsSubscription_NextMsg(&m, sub, 1000);
        if (s == NATS_TIMEOUT)
            continue;
        if (s != NATS_OK) {
            fprintf(stderr, "error: %s\n", natsStatus_GetText(s));
            break;
        }
        char reason[160];
        if (event_decode((const uint8_t *)natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), e, reason,
                         sizeof reason) == CH_OK)
            print_event(e, natsMsg_GetSubject(m), tty, "");
        else
            printf("%s: undecodable event: %s\n", natsMsg_GetSubject(m), reason);
        natsMsg_Destroy(m);
    }

cleanup:
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(opts);
    free(e);
    nats_Close();
    return 1;
}

typedef struct timeline {
    int64_t first_ns, prev_ns;
    int n;
    bool tty;
} timeline;

static ch_status timeline_one(const choreo_events_v1_Envelope *e, const char *stream, uint64_t seq, void *arg)
{
    timeline *t = arg;
    char prefix[48], subject[EVENT_SUBJECT_MAX] = "";
    event_type type;

    (void)stream;
    (void)seq;
    if (event_type_of(e, &type) == CH_OK)
        event_subject(subject, sizeof subject, type, event_key(e));
    int64_t ns = e->occurred_at_unix_ns;
    if (t->n++ == 0)
        t->first_ns = t->prev_ns = ns;
    snprintf(prefix, sizeof prefix, "+%8.2fms ", (double)(ns - t->prev_ns) / 1e6);
    t->prev_ns = ns;
    print_event(e, subject, t->tty, prefix);
    return CH_OK;
}

static int show_timeline(const char *order_id)
{
    bus_options o = {.url = nats_url(), .name = "choreo-cli", .no_retry_on_failed_connect = true};
    bus *b = NULL;
    int code = 1;
    timeline t = {.tty = isatty(STDOUT_FILENO)};

    if (strpbrk(order_id, ".*> ") || !order_id[0] || strlen(order_id) > EVENT_ORDER_ID_MAX) {
        fprintf(stderr, "error: \"%s\" is not an order id\n", order_id);
        return 1;
    }
    if (bus_create(&b, &o) != CH_OK) {
        fprintf(stderr, "error: cannot reach NATS at %s\n", nats_url());
        goto cleanup;
    }
    /* every producer's stream, in the order the events happened */
    ch_status st = event_read_order(b, order_id, 0, timeline_one, &t);
    if (st == CH_NOT_FOUND) {
        fprintf(stderr, "no events for order %s\n", order_id);
        goto cleanup;
    }
    if (st != CH_OK) {
        fprintf(stderr, "error: cannot read the event streams: %s\n", ch_status_str(st));
        goto cleanup;
    }
    printf("%d events, %.2f ms from first to last\n", t.n, (double)(t.prev_ns - t.first_ns) / 1e6);
    code = 0;

cleanup:
    bus_destroy(b);
    bus_library_shutdown();
    return code;
}

int cli_events(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "follow") == 0)
        return follow();
    if (argc == 3 && strcmp(argv[1], "timeline") == 0)
        return show_timeline(argv[2]);
    fputs("usage: choreo events follow | choreo events timeline ORDER_ID\n", stderr);
    return 2;
}
