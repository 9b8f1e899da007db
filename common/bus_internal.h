/* bus_internal.h: what the files of the bus share, like nats.c's natsp.h:
 * the struct bus and the bus__ helpers. bus.h is the bus's one public
 * header; this one is for bus.c (the connection), bus_stream.c (streams and
 * consumers), bus_pub.c (publishing) and bus_sub.c (subscriptions and
 * settling) only.
 *
 * Ownership and threads as in bus.h: every helper here may be called from
 * any thread unless its comment says otherwise. */
#ifndef CHOREO_BUS_INTERNAL_H
#define CHOREO_BUS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <nats/nats.h>

#include "bus.h"

/* Room for a subject the bus builds (deliver subjects, dead-letter copies). */
#define BUS_SUBJECT_MAX 512
/* PubAck wait of bus_publish_async; a pipe's unless the bus names one. */
#define BUS_ASYNC_MAX_WAIT_MS 10000

/* One NATS connection and its JetStream context (bus.c creates and frees
 * it); the async publish counters belong to bus_pub.c. */
struct bus {
    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
    bus_state_fn on_state;
    void *on_state_arg;
    atomic_bool up;
    atomic_bool closing;
    int reconnect_wait_ms;
    int reconnect_wait_max_ms;
    int max_pending_msgs;
    int max_pending_bytes;
    unsigned jitter_seed; /* used only by the reconnect thread */

    pthread_mutex_t mu; /* guards the fields below */
    pthread_cond_t cond;
    bool closed_seen;
    uint64_t async_sent;
    uint64_t async_done;
    uint64_t async_failed;
    ch_status async_first_err;

    int pipe_timeout_ms; /* a pipe's PubAck wait unless it names its own */
};

/* The status of a cnats call (and its JetStream error code, 0 if none) as a
 * ch_status: the one conversion of the bus. (bus.c) */
ch_status bus__status(natsStatus s, jsErrCode ec);

/* Logs the cnats text of a failure once (what, name, both codes, the last
 * cnats error) and returns its ch_status. (bus.c) */
ch_status bus__fail(const char *what, const char *name, natsStatus s, jsErrCode ec);

/* Sleeps ms milliseconds. (bus.c) */
void bus__sleep_ms(int ms);

/* Milliseconds on the monotonic clock, for deadlines and stalls. (bus.c) */
int64_t bus__now_ms(void);

/* The PubAck handler of b->js, which bus_create installs: counts the
 * results of bus_publish_async for bus_publish_async_wait and frees msg.
 * Runs on a cnats thread. (bus_pub.c) */
void bus__on_async_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *arg);

/* Publishes an already built message (it stays the caller's) on b->js with
 * Nats-Msg-Id msg_id (NULL: none) and waits up to timeout_ms (0: 5000) for
 * the PubAck, filling ack when not NULL. Errors as bus_publish. (bus_pub.c) */
ch_status bus__publish_msg(bus *b, natsMsg *msg, const char *msg_id, int timeout_ms, bus_pub_ack *ack);

/* Fills in as a view of msg (which keeps owning what in points to) with
 * its JetStream metadata: stream sequence, deliveries, time. (bus_sub.c) */
void bus__in_msg(bus_in_msg *in, natsMsg *msg);

#endif
