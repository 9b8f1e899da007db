/* writer.h: a service's one writer: what owns its state and its stream.
 *
 * Every service writes its decisions as events to a stream that only it
 * writes (ORDER_EVENTS on events.order.>, INVENTORY_EVENTS, ...); its state
 * is the fold of that stream. A decision is one write: the event. One writer
 * per replica owns the state and the position in the stream: everything that
 * reads or changes the state reaches it through one queue,
 *
 *   events of other services   from durable consumers (acked when done) or
 *                              from followers of their streams (no acks)
 *   gRPC calls                 writer_submit (the reply is deferred)
 *
 * and the writer takes what has queued up as a batch and hands each input to
 * the service's decide(), which reads the state and, for each event the
 * decision needs, applies it to the state at once (so the next input sees it)
 * and calls writer_emit(). Emitted events are published without waiting,
 * each expecting the stream's last sequence to be the one before it
 * (Nats-Expected-Last-Sequence: last, last+1, ... for those in flight): the
 * compare-and-set that every replica of an R3 stream enforces. The next batch
 * is decided while the PubAcks are on their way.
 *
 * An input is finished (ack, nak or dead-letter for an event, the reply for a
 * call) once every event it emitted is stored; one that emitted nothing, once
 * every event decided before it is stored and the writer knows it was
 * current after the input arrived: an event of its own emitted after it was
 * stored behind the expected sequence, or a read of the stream found nothing
 * new. So a read on one replica sees what another replica stored before the
 * read arrived ("catch-up before a read"). A call's answer is prepared in
 * decide() (rpc_call_prepare_reply: the state as it is at the call's place
 * among the decisions) and sent in finish(): decisions taken after it, not
 * stored yet, are never shown.
 *
 * When another replica wrote first, the first expectation fails and every one
 * after it. The writer waits for all PubAcks in flight, has the service undo
 * (newest first) every event applied but not stored, reads the stream from
 * its last stored sequence (folding in the other replica's events, and any
 * of its own that were stored after all, e.g. after a timeout), and decides
 * the inputs again, in their order. A decide() that returns CH_NOT_FOUND
 * (the order or reservation is not known here: perhaps another replica's
 * doing) is decided again once after the same catch-up. An input whose own
 * event lost WRITER_CONFLICTS_MAX races is finished with CH_CONFLICT; a
 * writer that keeps losing waits a little (jittered) before deciding again.
 *
 * The writer is a role, not a thread: the thread that brings work (a
 * subscription's thread with a batch, cnats' PubAck thread with an outcome,
 * a gRPC thread with a call) takes the role if it is free and does the
 * work itself, everything queued included; if another thread holds it, the
 * work stays queued and the holder does it before letting go. Decisions are
 * taken one at a time, in the queue's order, as by one thread, without a
 * hand-off to a writer thread (two wake-ups per event, measured in
 * bench/README.md). No thread ever waits for the role (writer_destroy
 * aside), so no lock is held across I/O that another thread waits on.
 *
 * Ownership: the caller owns the writer (writer_destroy) and the service
 * context; the writer owns the inputs and hands them to the ops only for the
 * duration of a call. Threads: ops run on whichever thread holds the role
 * (fold also on the thread calling writer_start, during the start-up
 * replay), one at a time, never nested; writer_submit may be called from
 * any thread that holds no lock the ops take (it may decide and finish
 * the call, or others, before it returns). */
#ifndef CHOREO_WRITER_H
#define CHOREO_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "event_codec.h"

#define WRITER_MAX_CONSUMERS    8
#define WRITER_MAX_FOLLOWS      4
#define WRITER_MAX_FOLLOW_TYPES 8
#define WRITER_CONFLICTS_MAX                                                                                 \
    16 /* lost races of its own an input survives before it fails with CH_CONFLICT                           \
        */
#define WRITER_MAX_IN_FLIGHT 1024 /* events published and not yet acknowledged */
#define WRITER_UNDO_MAX      512  /* bytes of undo data one emit may keep */

typedef struct writer writer;

typedef enum writer_input_kind {
    WRITER_EVENT = 0, /* from a durable consumer: acked, naked or dead-lettered when finished */
    WRITER_FACT,      /* from a follower of another service's stream: nothing to settle */
    WRITER_CALL,      /* from writer_submit: the service replies in finish() */
} writer_input_kind;

/* One input, as the service sees it in decide() and finish(). */
typedef struct writer_input {
    writer_input_kind kind;
    /* EVENT, FACT: the message and its decoded envelope (valid during the
     * call), and the index of its consumer or follower in the spec */
    const bus_in_msg *msg;
    const choreo_events_v1_Envelope *env;
    int source;
    /* CALL: what writer_submit was given */
    void *call;
    int attempt;    /* 0 the first time decide() sees it */
    bool caught_up; /* decided again after a catch-up, having said CH_NOT_FOUND */
    /* Set by decide() for an EVENT: its verdict when it emits nothing or
     * fails (BUS_ACK by default; BUS_RETRY naks it with the backoff;
     * BUS_DEAD dead-letters it), and why, for the log line. */
    bus_verdict verdict;
    char reason[BUS_REASON_MAX];
} writer_input;

typedef struct writer_ops {
    /* Folds one stored event of the service's own stream into the state
     * (start-up replay, catch-up). An error is logged and the event skipped,
     * except CH_NO_MEMORY, which stops the writer. */
    ch_status (*fold)(void *ctx, const choreo_events_v1_Envelope *env, uint64_t seq);
    /* Decides in (see above); writer_emit() for each event. CH_OK when
     * decided (finish() comes when its events are stored or it is known to
     * be current); CH_NOT_FOUND to be decided again after a catch-up (once;
     * after that it is finished with CH_NOT_FOUND); any other status
     * finishes it with that status at once. decide() must undo what it
     * applied if it fails after an emit: it may simply not fail after one. */
    ch_status (*decide)(void *ctx, writer *w, writer_input *in);
    /* Undoes one event decide() applied and emitted, given its undo data
     * (a copy, aligned for any type), newest first: the state is then as
     * before that decision. Must not fail. */
    void (*undo)(void *ctx, const void *undo, size_t len);
    /* The input is done: st CH_OK once its events are stored (or it needed
     * none), CH_CONFLICT after WRITER_CONFLICTS_MAX lost races, CH_UNAVAILABLE /
     * CH_TIMEOUT when NATS did not confirm, CH_CANCELLED when the writer
     * stopped before deciding it, or decide()'s error. For a CALL
     * the service replies here (reading the state as it is now). For an
     * EVENT the writer settles the message after this returns. May be NULL
     * when there are no calls. */
    void (*finish)(void *ctx, writer_input *in, ch_status st);
} writer_ops;

/* A durable consumer of one event type of another service's stream. */
typedef struct writer_consumer {
    event_type type; /* consumed as "<service>-<type>" on its producer's stream */
} writer_consumer;

/* A follower of another service's stream: every event of it, as facts. */
typedef struct writer_follow {
    const char *stream; /* e.g. "PAYMENT_EVENTS": every message of it is read */
    /* The types the service wants (n_types 0: all); the others are dropped
     * by their subject, before anything is decoded. */
    event_type types[WRITER_MAX_FOLLOW_TYPES];
    int n_types;
} writer_follow;

typedef struct writer_spec {
    const char *service;   /* "payment": names the consumers and the log lines */
    const char *stream;    /* the service's own stream */
    const writer_ops *ops; /* copied */
    void *ctx;             /* passed to every op */
    writer_consumer consumers[WRITER_MAX_CONSUMERS];
    int n_consumers;
    writer_follow follows[WRITER_MAX_FOLLOWS];
    int n_follows;
    int publish_timeout_ms; /* PubAck wait; 0: the bus's */
    int max_deliver;        /* an EVENT whose decision keeps failing is dead-lettered once delivered
                               this often (0: 8); one that fails because NATS is unavailable or
                               slow (CH_UNAVAILABLE, CH_TIMEOUT) is retried without end */
    int batch;              /* inputs decided together at most; 0: 256 */
} writer_spec;

/* Replays the service's stream into ops->fold (on this thread), then starts
 * the writer's consumers and followers. *out is the
 * caller's. Main thread, at start-up. */
ch_status writer_start(bus *b, const writer_spec *spec, writer **out);

/* Queues a gRPC call: decide() and finish() get it as a WRITER_CALL with
 * in->call = call. CH_UNAVAILABLE when the writer is stopping (then finish
 * is not called: reply yourself). Any thread. */
ch_status writer_submit(writer *w, void *call);

/* From decide(): publishes env as the next event of the service's stream
 * (expecting the stream's last sequence, pipelined), after the service has
 * applied it to the state; undo (len bytes, at most WRITER_UNDO_MAX, copied)
 * is what ops->undo needs to take it back. CH_INVALID_ARGUMENT for an
 * envelope that does not encode (the caller undoes its apply). From decide()
 * only. */
ch_status writer_emit(writer *w, const choreo_events_v1_Envelope *env, const void *undo, size_t len);

/* Sequence of the last event of the stream the state holds, stored (0:
 * none). From the ops (or after writer_start returned, for a log line). */
uint64_t writer_last_seq(const writer *w);

typedef struct writer_stats {
    uint64_t decided;   /* inputs finished */
    uint64_t emitted;   /* events stored */
    uint64_t conflicts; /* lost compare-and-sets (another replica wrote first) */
    uint64_t catch_ups; /* reads of the stream to catch up (conflicts, reads, not-found) */
    uint64_t folded;    /* events of other replicas folded in by catch-ups */
} writer_stats;

/* Counters since start. Any thread. */
void writer_get_stats(writer *w, writer_stats *out);

/* Stops the consumers and followers, finishes what is queued or in flight
 * (bounded by the publish timeout) and frees the writer.
 * Accepts NULL. Main thread, before the bus is destroyed. */
void writer_destroy(writer *w);

#endif
