/* notifications_rpc.c: the choreo.notifications.v1.Notifications gRPC API, a
 * thin adapter: requests are checked by the core, answers come from the
 * store under the service mutex. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "choreo/notifications/v1/notifications.pb-c.h"
#include "notifications.h"
#include "utf8.h"

#define WATCH_WAIT_MS 200 /* how often an idle watcher checks that its client is still there */
#define WATCH_BATCH   16  /* notifications copied out per lock */

/* Points pb at n's fields (borrowed: pack before n can change). */
static void pb_fill(Choreo__Notifications__V1__Notification *pb, const notification *n)
{
    *pb = (Choreo__Notifications__V1__Notification)CHOREO__NOTIFICATIONS__V1__NOTIFICATION__INIT;
    pb->notification_id = (char *)n->id;
    pb->order_id = (char *)n->order_id;
    pb->customer_id = (char *)n->customer_id;
    pb->kind = (Choreo__Notifications__V1__NotificationKind)n->kind;
    pb->message = (char *)n->message;
    pb->sent_at_unix_ms = n->sent_at_ms;
}

static void list_notifications(rpc_call *call, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Notifications__V1__ListNotificationsRequest *r =
        (const Choreo__Notifications__V1__ListNotificationsRequest *)msg;
    notifications_service *svc = ctx;
    Choreo__Notifications__V1__Notification *pb = NULL, **ptrs = NULL;
    const notification **page = NULL;
    char err[256], next[NOTIF_TOKEN_MAX];
    size_t size = 0, n = 0;

    if (notif_validate_list(r->customer_id, r->order_id, r->page_size, r->page_token, &size, err,
                            sizeof err) != CH_OK) {
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "%s", err);
        return;
    }
    page = calloc(size, sizeof *page);
    pb = calloc(size, sizeof *pb);
    ptrs = calloc(size, sizeof *ptrs);
    if (!page || !pb || !ptrs) {
        rpc_call_fail(call, CH_NO_MEMORY, "out of memory");
        goto cleanup;
    }

    pthread_mutex_lock(&svc->mu);
    ch_status st =
        notif_store_list(svc->store, r->customer_id, r->order_id, r->page_token, page, size, &n, next);
    if (st != CH_OK) {
        pthread_mutex_unlock(&svc->mu);
        rpc_call_fail(call, CH_INVALID_ARGUMENT, "page_token: not a token this service made");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        pb_fill(&pb[i], page[i]);
        ptrs[i] = &pb[i];
    }
    Choreo__Notifications__V1__ListNotificationsResponse resp =
        CHOREO__NOTIFICATIONS__V1__LIST_NOTIFICATIONS_RESPONSE__INIT;
    size_t fit = rpc_call_fit_items(call, &resp.base, NOTIF_TOKEN_MAX, (ProtobufCMessage *const *)ptrs, n);
    if (fit < n) /* the same first `fit`, and the token after them */
        notif_store_list(svc->store, r->customer_id, r->order_id, r->page_token, page, fit, &n, next);
    resp.n_notifications = n;
    resp.notifications = ptrs;
    resp.next_page_token = next;
    rpc_call_reply(call, &resp.base); /* serialized now, while the store cannot move */
    pthread_mutex_unlock(&svc->mu);

cleanup:
    free(page);
    free(pb);
    free(ptrs);
}

/* Waits on `recorded` (mu held) until WATCH_WAIT_MS from now. */
static void wait_recorded(notifications_service *svc)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += (long)WATCH_WAIT_MS * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&svc->recorded, &svc->mu, &until);
}

/* Streams every notification recorded after the call began (of one customer
 * when customer_id is set), on the stream's own thread, until the client
 * cancels or the server stops. The store's seq is the cursor: a watcher that
 * falls behind catches up from where it was, nothing is skipped. */
static ch_status watch_notifications(rpc_stream *st, const ProtobufCMessage *msg, void *ctx)
{
    const Choreo__Notifications__V1__WatchNotificationsRequest *r =
        (const Choreo__Notifications__V1__WatchNotificationsRequest *)msg;
    notifications_service *svc = ctx;
    notification batch[WATCH_BATCH];
    const char *customer = r->customer_id;
    uint64_t next;

    if (customer[0] && !utf8_valid_token(customer, NOTIF_CUSTOMER_MAX)) {
        rpc_stream_set_error(st, "customer_id: must be 1..%d bytes of UTF-8 with no spaces, '.', '*' or '>'",
                             NOTIF_CUSTOMER_MAX);
        return CH_INVALID_ARGUMENT;
    }
    pthread_mutex_lock(&svc->mu);
    next = notif_store_count(svc->store) + 1;
    pthread_mutex_unlock(&svc->mu);

    for (;;) {
        size_t k = 0;
        pthread_mutex_lock(&svc->mu);
        if (notif_store_count(svc->store) < next)
            wait_recorded(svc);
        for (; next <= notif_store_count(svc->store) && k < WATCH_BATCH; next++) {
            const notification *n = notif_store_at(svc->store, next);
            if (!customer[0] || strcmp(n->customer_id, customer) == 0)
                batch[k++] = *n;
        }
        pthread_mutex_unlock(&svc->mu);

        for (size_t i = 0; i < k; i++) {
            Choreo__Notifications__V1__Notification pb;
            pb_fill(&pb, &batch[i]);
            if (rpc_stream_send(st, &pb.base) != CH_OK)
                return CH_CANCELLED; /* the client is gone or the server stops */
        }
        if (rpc_server_stopping(svc->server)) {
            /* a watch never finishes by itself: end it now rather than at the end of the grace period */
            rpc_stream_set_error(st, "server stopping: watch again on another replica or after the restart");
            return CH_UNAVAILABLE;
        }
        if (k == 0 && rpc_stream_wait_cancelled(st, 0))
            return CH_CANCELLED;
    }
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
