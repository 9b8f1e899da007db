/* notifications.h: the notifications service's adapters around its pure core.
 *
 * State: the notifications, the fold of the service's own stream
 * NOTIFICATION_EVENTS (each notification.sent is one). One writer
 * (common/writer.h) owns the state: every event and every call goes through
 * its queue and is decided or read on its thread:
 *
 *   order.confirmed, order.cancelled -> build the notification through the
 *        core, add it to the store -> notification.sent (nothing when the
 *        store has that (order, kind) already: a redelivery, a duplicate)
 *   ListNotifications                -> read once the state is current
 *   WatchNotifications               -> its stream thread reads through the
 *        writer what came after its cursor, sends it, and waits on `changed`
 *        (or 250 ms, so that a read catches up with other replicas)
 *
 * A notification is "sent" once its notification.sent is stored. The store
 * holds, at its end, the ones decided but not stored yet (their inputs are
 * in `unstored`, oldest first; undo takes them back newest first), so every
 * reader is shown the store up to `stored` only: nothing that may never be.
 *
 * Ownership: main owns the notifications_service and everything it points
 * to; the writer's thread owns the store and `unstored` while the writer
 * runs. `mu` guards `stored` (written by the writer's thread only) and the
 * answers of watch reads. */
#ifndef CHOREO_NOTIFICATIONS_H
#define CHOREO_NOTIFICATIONS_H

#include <pthread.h>

#include "bus.h"
#include "config.h"
#include "event_codec.h"
#include "notifications_core.h"
#include "rpc_server.h"
#include "writer.h"

#define NOTIFICATIONS_SERVICE_NAME "choreo.notifications.v1.Notifications"
#define NOTIFICATIONS_PRODUCER     "notifications"

/* A notification added to the store and emitted, its event not stored yet. */
typedef struct notifications_unstored {
    const writer_input *in; /* the input that emitted it: alive until it is finished */
    uint64_t seq;           /* its place in the store */
    char event_id[EVENT_ID_LEN + 1];
} notifications_unstored;

typedef struct notifications_service {
    const service_config *cfg;
    bus *bus;
    writer *writer;
    notif_store *store;               /* the writer thread's */
    notifications_unstored *unstored; /* ring of WRITER_MAX_IN_FLIGHT: the store's last n_unstored */
    size_t unstored_head, n_unstored;
    uint64_t skipped; /* events of the stream not folded in (logged) */
    pthread_mutex_t mu;
    pthread_cond_t changed;   /* broadcast (under mu) when `stored` grows or a watch read is answered */
    uint64_t stored;          /* seq of the newest notification whose event is stored */
    const rpc_server *server; /* set by notifications_rpc_register: watchers end when it stops */
} notifications_service;

/* Initialises mu and changed (monotonic clock) and creates the store.
 * Main thread. */
ch_status notifications_service_init(notifications_service *svc, const service_config *cfg);

/* Frees what init made (after the writer is stopped and the server is
 * down). Accepts a zeroed service. */
void notifications_service_cleanup(notifications_service *svc);

/* ---- notifications_events.c: the writer, the reactions ---- */

/* Folds the stream into the store and starts the writer with its two
 * consumers (order.confirmed, order.cancelled). Main thread, at start-up. */
ch_status notifications_events_start(notifications_service *svc);

/* Stops the writer (finishing what it holds). Accepts a service that never
 * started. Main thread, after the gRPC server is down. */
void notifications_events_stop(notifications_service *svc);

/* ---- notifications_rpc.c: the gRPC API ---- */

/* Registers every choreo.notifications.v1.Notifications method on s. */
ch_status notifications_rpc_register(rpc_server *s, notifications_service *svc);

/* A call is done in the writer (both are reads): answered on its thread,
 * showing the store up to svc->stored. */
void notifications_call_finish(notifications_service *svc, writer_input *in, ch_status st);

#endif
