/* notifications.h: the notifications service's adapters around its pure core.
 *
 * Data flows one way: order.confirmed / order.cancelled (event workers) ->
 * notifications_events.c (build through the core, publish notification.sent,
 * which is the durable record, then store, "send" and wake the watchers) ->
 * notifications_rpc.c (ListNotifications reads the store; each
 * WatchNotifications stream waits on `recorded` for notifications past the
 * last one it sent). On start-up the store is rebuilt from the
 * notification.sent events of the EVENTS stream, so no ledger is needed.
 *
 * Ownership: main owns the notifications_service and everything it points
 * to. The store is guarded by `mu`, held only around store calls and reply
 * packing, never across a publish or a stream send. */
#ifndef CHOREO_NOTIFICATIONS_H
#define CHOREO_NOTIFICATIONS_H

#include <pthread.h>

#include "bus.h"
#include "config.h"
#include "event_worker.h"
#include "notifications_core.h"
#include "rpc_server.h"

#define NOTIFICATIONS_SERVICE_NAME "choreo.notifications.v1.Notifications"
#define NOTIFICATIONS_PRODUCER     "notifications"

typedef struct notifications_service {
    const service_config *cfg;
    bus *bus;
    notif_store *store;
    pthread_mutex_t mu;
    pthread_cond_t recorded;  /* broadcast (under mu) each time a notification is stored */
    const rpc_server *server; /* set by notifications_rpc_register: watchers end when it stops */
    event_worker *on_confirmed;
    event_worker *on_cancelled;
    bus_follower *follower; /* records what other replicas sent, too */
    void *follow_ctx;
    uint64_t rebuilt_to; /* last stream sequence read at start-up */
} notifications_service;

/* Initialises mu and recorded (monotonic clock) and creates the store. */
ch_status notifications_service_init(notifications_service *svc, const service_config *cfg);

/* Frees what init made (after the workers are stopped and the server is
 * down). Accepts a zeroed service. */
void notifications_service_cleanup(notifications_service *svc);

/* ---- notifications_events.c: events in and out ---- */

/* Rebuilds the store from every notification.sent in the EVENTS stream
 * (start-up, before the workers start). *events_read may be NULL. */
ch_status notifications_rebuild(notifications_service *svc, uint64_t *events_read);

/* Starts the two durable workers (order.confirmed, order.cancelled). */
ch_status notifications_workers_start(notifications_service *svc);

/* Stops both workers; safe when they were never started. */
void notifications_workers_stop(notifications_service *svc);

/* ---- notifications_rpc.c: the gRPC API ---- */

/* Registers every choreo.notifications.v1.Notifications method on s. */
ch_status notifications_rpc_register(rpc_server *s, notifications_service *svc);

#endif
