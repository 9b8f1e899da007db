/* notifications_rpc.c: the choreo.notifications.v1.Notifications gRPC API, a
 * thin adapter: a request is checked on the gRPC thread, then read by the
 * writer on its thread once the state is current (writer.h), showing the
 * notifications whose events are stored (notifications.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "choreo/notifications/v1/notifications.pb-c.h"
#include "notifications.h"
#include "service.h"
#include "utf8.h"

/* An idle watcher reads again this often: what other replicas stored shows
 * up within it (the read catches up first), and a client gone is noticed. */
#define WATCH_WAIT_MS 250
#define WATCH_BATCH   16 /* notifications one watch read brings back */

typedef enum notifications_method {
    CALL_LIST = 0,
    CALL_WATCH,
} notifications_method;

/* A ListNotifications call on its way through the writer, which answers it
 * and frees it. */
typedef struct list_call {
    service_call base; /* first: the writer's call pointer points to both (method CALL_LIST) */
    size_t size;       /* the page size, checked */
} list_call;

/* One read of a watch: the stream thread asks (it owns the struct, on its
 * stack) and waits for `done`; the writer answers under svc->mu. */
typedef struct watch_read {
    service_call base;    /* first, method CALL_WATCH; no rpc_call: the stream answers */
    const char *customer; /* "": everyone's */
    bool started;         /* false: the first read, which only places the cursor */
    uint64_t after;       /* the cursor: the last seq looked at */
    /* the answer */
    notif_notification batch[WATCH_BATCH];
    size_t n;
    uint64_t next; /* the cursor after batch */
    ch_status st;
    bool done;
} watch_read;

/* Points pb at n's fields (borrowed: pack before n can change). */
static void pb_fill(Choreo__Notifications__V1__Notification *pb, const notif_notification *n)
{
    *pb = (Choreo__Notifications__V1__Notification)CHOREO__NOTIFICATIONS__V1__NOTIFICATION__INIT;
    pb->notification_id = (char *)n->id;
    pb->order_id = (char *)n->order_id;
    pb->customer_id = (char *)n->customer_id;
    pb->kind = (Choreo__Notifications__V1__NotificationKind)n->kind;
    pb->message = (char *)n->message;
    pb->sent_at_unix_ms = n->sent_at_ms;
}

/* ---- ListNotifications ---- */

/* Checks the request (gRPC thread) and hands it to the writer. */
static void list_notifications(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Notifications__V1__ListNotificationsRequest *r =
        (const Choreo__Notifications__V1__ListNotificationsRequest *)msg;
    notifications_service *svc = ctx;
    char err[256];
    size_t size = 0;

    if (notif_validate_list(r->customer_id, r->order_id, r->page_size, r->page_token, &size, err,
                            sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        return;
    }
    list_call *lc = service_call_new(sizeof *lc, call, CALL_LIST, msg);
    if (!lc)
        return;
    lc->size = size;
    service_call_submit(svc->writer, &lc->base);
}

/* ListNotifications' reply, a page of what is stored, cut to fit in one
 * message. Writer thread. */
static void reply_list(notifications_service *svc, const list_call *lc)
{
    const Choreo__Notifications__V1__ListNotificationsRequest *r =
        (const Choreo__Notifications__V1__ListNotificationsRequest *)lc->base.req;
    const notif_notification **page = calloc(lc->size, sizeof *page);
    Choreo__Notifications__V1__Notification *pb = calloc(lc->size, sizeof *pb);
    Choreo__Notifications__V1__Notification **ptrs = calloc(lc->size, sizeof *ptrs);
    char next[NOTIF_TOKEN_MAX];
    size_t n = 0;

    if (!page || !pb || !ptrs) {
        rpc_call_fail(lc->base.call, CH_NO_MEMORY, "out of memory");
        goto cleanup;
    }
    if (notif_store_list(svc->store, r->customer_id, r->order_id, r->page_token, svc->stored, page, lc->size,
                         &n, next) != CH_OK) {
        rpc_call_fail(lc->base.call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        pb_fill(&pb[i], page[i]);
        ptrs[i] = &pb[i];
    }
    Choreo__Notifications__V1__ListNotificationsResponse resp =
        CHOREO__NOTIFICATIONS__V1__LIST_NOTIFICATIONS_RESPONSE__INIT;
    size_t fit =
        rpc_call_fit_items(lc->base.call, &resp.base, NOTIF_TOKEN_MAX, (ProtobufCMessage *const *)ptrs, n);
    if (fit < n) /* the same first `fit`, and the token after them */
        notif_store_list(svc->store, r->customer_id, r->order_id, r->page_token, svc->stored, page, fit, &n,
                         next);
    resp.n_notifications = n;
    resp.notifications = ptrs;
    resp.next_page_token = next;
    rpc_call_reply(lc->base.call, &resp.base); /* serialized now, on the thread that owns the store */

cleanup:
    free(page);
    free(pb);
    free(ptrs);
}

/* ---- WatchNotifications ---- */

/* Fills in a watch read's answer and wakes its thread. Writer thread. */
static void answer_watch(notifications_service *svc, watch_read *wr, ch_status st)
{
    const notif_notification *found[WATCH_BATCH];
    uint64_t next = wr->after;
    size_t n = 0;

    if (st == CH_OK && !wr->started)
        next = svc->stored; /* a watch shows what is stored after it began */
    else if (st == CH_OK)
        next = notif_store_after(svc->store, wr->customer, wr->after, svc->stored, found, WATCH_BATCH, &n);
    for (size_t i = 0; i < n; i++)
        wr->batch[i] = *found[i]; /* its thread reads it once done is set */
    pthread_mutex_lock(&svc->mu);
    wr->n = n;
    wr->next = next;
    wr->st = st;
    wr->done = true;
    pthread_cond_broadcast(&svc->changed);
    pthread_mutex_unlock(&svc->mu);
}

/* Reads through the writer and waits for the answer (the writer answers
 * every call it took). CH_UNAVAILABLE when the writer is stopping. Stream
 * thread. */
static ch_status watch_ask(notifications_service *svc, watch_read *wr)
{
    wr->done = false;
    wr->n = 0;
    ch_status st = writer_submit(svc->writer, &wr->base);
    if (st != CH_OK)
        return st;
    pthread_mutex_lock(&svc->mu);
    while (!wr->done)
        pthread_cond_wait(&svc->changed, &svc->mu);
    pthread_mutex_unlock(&svc->mu);
    return CH_OK;
}

/* Waits up to WATCH_WAIT_MS for a notification stored after `after` (any,
 * when `after` is not given). Stream thread. */
static void watch_wait(notifications_service *svc, const uint64_t *after)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += (long)WATCH_WAIT_MS * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&svc->mu);
    while ((!after || svc->stored <= *after) &&
           pthread_cond_timedwait(&svc->changed, &svc->mu, &until) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&svc->mu);
}

/* Streams every notification stored after the call began (of one customer
 * when customer_id is set), on the stream's own thread, until the client
 * cancels or the server stops. Each batch is read through the writer, so
 * only what is stored is sent, and what other replicas stored too (a read
 * catches up first). The store's seq is the cursor: a watcher that falls
 * behind goes on from where it was, nothing is skipped. */
static ch_status watch_notifications(rpc_stream *st, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Notifications__V1__WatchNotificationsRequest *r =
        (const Choreo__Notifications__V1__WatchNotificationsRequest *)msg;
    notifications_service *svc = ctx;
    watch_read wr = {.base = {.method = CALL_WATCH, .req = msg}, .customer = r->customer_id};

    if (wr.customer[0] && !utf8_valid_token(wr.customer, NOTIF_CUSTOMER_MAX)) {
        rpc_stream_set_error(st, "customer_id: must be 1..%d bytes of UTF-8 with no spaces, '.', '*' or '>'",
                             NOTIF_CUSTOMER_MAX);
        return CH_INVALID_ARGUMENT;
    }
    for (;;) {
        if (watch_ask(svc, &wr) != CH_OK)
            break; /* the writer stops: so does the server */
        for (size_t i = 0; i < wr.n; i++) {
            Choreo__Notifications__V1__Notification pb;
            pb_fill(&pb, &wr.batch[i]);
            if (rpc_stream_send(st, &pb.base) != CH_OK)
                return CH_CANCELLED; /* the client is gone or the server stops */
        }
        if (wr.st == CH_OK) {
            wr.after = wr.next;
            wr.started = true;
        }
        if (rpc_server_stopping(svc->server))
            break;
        if (wr.n == WATCH_BATCH)
            continue; /* more may be waiting */
        if (wr.n == 0 && rpc_stream_wait_cancelled(st, 0))
            return CH_CANCELLED;
        /* until something is stored past the cursor, or WATCH_WAIT_MS (the
         * next read catches up with other replicas); after a read that
         * failed (NATS trouble), the same read again after the pause */
        watch_wait(svc, wr.st == CH_OK ? &wr.after : NULL);
    }
    /* a watch never finishes by itself: end it now rather than at the end of the grace period */
    rpc_stream_set_error(st, "server stopping: watch again on another replica or after the restart");
    return CH_UNAVAILABLE;
}

/* ---- in the writer ---- */

void notifications_call_finish(notifications_service *svc, writer_input *in, ch_status st)
{
    const service_call *sc = in->call;

    if (sc->method == CALL_WATCH) {
        answer_watch(svc, in->call, st);
        return;
    }
    list_call *lc = in->call;
    if (st == CH_OK)
        reply_list(svc, lc);
    else if (st == CH_TIMEOUT || st == CH_UNAVAILABLE)
        rpc_call_fail(lc->base.call, CH_UNAVAILABLE,
                      "notifications not confirmed current: NATS unavailable (%s); retry", ch_status_str(st));
    else
        rpc_call_fail(lc->base.call, CH_UNAVAILABLE, "notifications not read (%s): retry", ch_status_str(st));
    free(lc);
}

ch_status notifications_rpc_register(rpc_server *s, notifications_service *svc)
{
    svc->server = s;
    static const rpc_handler handlers[] = {
        {"ListNotifications", RPC_UNARY, list_notifications, NULL},
        {"WatchNotifications", RPC_SERVER_STREAM, NULL, watch_notifications},
    };
    return rpc_server_add_service(s, &choreo__notifications__v1__notifications__descriptor, handlers,
                                  sizeof handlers / sizeof handlers[0], svc);
}
