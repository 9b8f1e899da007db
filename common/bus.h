/* bus.h: the NATS JetStream layer every service talks through.
 *
 * One bus is one NATS connection with its JetStream context. It provisions
 * streams and durable consumers at start-up (idempotently), publishes with
 * PubAck (synchronously, asynchronously in batches, or through pipes whose
 * PubAcks come back in order to a callback), hands over what durable push
 * consumers (one queue group per durable: the replicas of a service compete
 * for its messages) and followers of a stream receive, a batch at a time, to
 * be settled later (Ack, Nak with a delay, or a dead-letter copy followed by
 * Term), and reads a stream back in order (event sourcing, order history).
 *
 * Ownership: the caller owns every bus, bus_sub and bus_pipe it creates and
 * frees them with the matching destroy/stop (all accept NULL); everything
 * passed in is copied or only borrowed for the call; a bus_in_msg handed to
 * a replay callback is valid only during that callback, one handed over by
 * a bus_sub is the receiver's until bus_in_free. Subscriptions and pipes
 * must be stopped before their bus is destroyed.
 *
 * Threads: every function may be called from any thread except that
 * bus_publish_async/bus_publish_async_wait on one bus must come from one
 * thread at a time (they share the pending batch), and bus_pipe_publish on
 * one pipe likewise. A bus_sub's batches arrive on its own thread; on_state
 * and pipe callbacks run on cnats threads and must not block. */
#ifndef CHOREO_BUS_H
#define CHOREO_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define BUS_MAX_HEADERS       8    /* extra headers on one outgoing message */
#define BUS_MAX_SUBJECTS      8    /* subjects of one stream */
#define BUS_MAX_BATCH         1024 /* cap of a bus_sub batch */
#define BUS_REASON_MAX        256  /* bytes of a verdict's reason, NUL included */
#define BUS_DEADLETTER_STREAM "DEADLETTER"
#define BUS_DEADLETTER_PREFIX "deadletter"

/* Headers set on a dead-letter copy (bus_dead_letter). */
#define BUS_HDR_DEAD_REASON      "Choreo-Dead-Reason"
#define BUS_HDR_ORIGINAL_SUBJECT "Choreo-Original-Subject"
#define BUS_HDR_ORIGINAL_SEQ     "Choreo-Original-Sequence"
#define BUS_HDR_DELIVERIES       "Choreo-Deliveries"

/* JetStream's compare-and-set on a stream (bus_out_msg.expect_seq and
 * expect_last_msg_id). */
#define BUS_HDR_EXPECTED_LAST_SEQ    "Nats-Expected-Last-Sequence"
#define BUS_HDR_EXPECTED_LAST_MSG_ID "Nats-Expected-Last-Msg-Id"

typedef struct bus bus;

/* Called on every connection state change: up=true on (re)connect, false on
 * disconnect or close. Runs on a cnats thread: must not block. */
typedef void (*bus_state_fn)(bool up, void *arg);

typedef struct bus_options {
    const char *url;           /* "nats://h:p", comma-separated list allowed; NULL: nats://127.0.0.1:4222 */
    const char *name;          /* client name shown by the server; may be NULL */
    int connect_timeout_ms;    /* per connection attempt; 0: 2000 */
    int reconnect_wait_ms;     /* first reconnect delay, doubled per attempt; 0: 100 */
    int reconnect_wait_max_ms; /* cap of the backoff (jitter up to 25% added); 0: 2000 */
    bool no_retry_on_failed_connect; /* true: bus_create fails if NATS is down; default retries */
    int max_pending_msgs;            /* per-subscription pending cap; 0: 65536 */
    int max_pending_bytes;           /* per-subscription pending bytes cap; 0: 64 MiB */
    int async_max_pending;           /* cap of unacknowledged async publishes; 0: 4096 */
    int publish_timeout_ms;          /* a pipe's PubAck wait (bus_pipe_create with 0); 0: 10000 */
    bus_state_fn on_state;           /* may be NULL */
    void *on_state_arg;
} bus_options;

/* Connects (or, unless no_retry_on_failed_connect, starts connecting in the
 * background so a service can start before NATS) and makes the JetStream
 * context. Reconnects forever with capped exponential backoff. SendAsap is
 * always on. *out is owned by the caller (bus_destroy). CH_UNAVAILABLE if it
 * cannot connect and retry is off; CH_INVALID_ARGUMENT for bad options. */
ch_status bus_create(bus **out, const bus_options *o);

/* Flushes and closes the connection and frees the bus. Stop the bus's
 * subscriptions and destroy its pipes first. Accepts NULL. Any thread except
 * a bus callback. */
void bus_destroy(bus *b);

/* Releases cnats' process-wide resources (nats_CloseAndWait). Call once at the
 * very end of main, after every bus is destroyed; optional (leak checkers are
 * silent with it). */
void bus_library_shutdown(void);

/* True while the connection is up. Any thread; never blocks. */
bool bus_connected(const bus *b);

typedef enum bus_storage { BUS_STORAGE_FILE = 0, BUS_STORAGE_MEMORY } bus_storage;

typedef struct bus_stream_spec {
    const char *name;                       /* e.g. "ORDER_EVENTS" */
    const char *subjects[BUS_MAX_SUBJECTS]; /* NULL-terminated if fewer */
    bus_storage storage;                    /* FILE by default (0) */
    int replicas;                           /* 0: 1 */
    int64_t duplicate_window_ms;            /* 0: server default (2 min) */
    int32_t max_msg_size;                   /* 0: unlimited (server max_payload) */
    int64_t max_age_ms;                     /* 0: keep forever */
} bus_stream_spec;

/* Creates the stream, or updates it when it exists with a compatible config
 * (subjects, limits). Idempotent. CH_UNAVAILABLE if NATS is unreachable,
 * CH_FAILED_PRECONDITION if the existing stream cannot be changed (e.g.
 * storage type). Any thread. */
ch_status bus_ensure_stream(bus *b, const bus_stream_spec *s);

/* Ensures the "DEADLETTER" stream on "deadletter.>" (file storage, given
 * replicas, 0 means 1) that captures the dead-letter copies
 * (bus_dead_letter). */
ch_status bus_ensure_deadletter_stream(bus *b, int replicas);

typedef struct bus_consumer_spec {
    const char *stream;
    const char *durable;        /* durable name, also the consumer name */
    const char *filter_subject; /* e.g. "events.order.created.*"; NULL: all */
    int ack_wait_ms;            /* 0: 30000 */
    int max_deliver;            /* 0: unlimited at the server; if set, keep it above the receiver's own limit,
                                 * or the server stops redelivering before the receiver dead-letters */
    int max_ack_pending;        /* 0: 1000 */
} bus_consumer_spec;

/* Creates the durable push consumer (ack explicit, deliver all, delivered to
 * "_choreo.deliver.<stream>.<durable>" with the durable's name as queue
 * group) or updates it when it exists; a pull consumer of that name is
 * replaced. Idempotent. Any thread. */
ch_status bus_ensure_consumer(bus *b, const bus_consumer_spec *c);

/* Deletes a durable consumer (tests and operators replaying a service from
 * the start of the stream). CH_NOT_FOUND if it does not exist. */
ch_status bus_delete_consumer(bus *b, const char *stream, const char *durable);

typedef struct bus_header {
    const char *key;
    const char *value;
} bus_header;

typedef struct bus_out_msg {
    const char *subject;
    const void *data;
    size_t len;
    const char *msg_id;                  /* Nats-Msg-Id for dedup; NULL: none */
    bus_header headers[BUS_MAX_HEADERS]; /* unused entries have key NULL */
    int nheaders;                        /* entries used, 0..BUS_MAX_HEADERS */
    /* Optimistic concurrency on the whole stream (header
     * Nats-Expected-Last-Sequence): with expect_seq set, the stream stores
     * the message only if its last sequence is expect_last_seq (0: the
     * stream is empty); otherwise the publish fails with CH_CONFLICT (for an
     * asynchronous publish, through its pipe's callback or the batch's wait). It is
     * enforced on every replica of a replicated stream by every nats-server
     * version; the per-subject expectation is not before 2.9.21, so the bus
     * does not offer it. */
    bool expect_seq;
    uint64_t expect_last_seq;
    /* And (header Nats-Expected-Last-Msg-Id) that the stream's last message
     * is the one with this Nats-Msg-Id; NULL: no such expectation. A writer
     * that pipelines publishes chains them with it: a sequence alone would
     * let a later publish in when another writer stored exactly as many
     * messages as the earlier publishes that failed. */
    const char *expect_last_msg_id;
} bus_out_msg;

typedef struct bus_pub_ack {
    uint64_t seq;   /* stream sequence of the stored message */
    bool duplicate; /* true: JetStream had it already (same Nats-Msg-Id) */
    /* a lost compare-and-set (CH_CONFLICT) on the stream's last sequence:
     * the last sequence JetStream said the stream had (0: not said) */
    uint64_t conflict_last_seq;
} bus_pub_ack;

/* Publishes m and waits up to timeout_ms (0: 5000) for the PubAck; fills ack
 * when not NULL. CH_UNAVAILABLE when disconnected or no stream captures the
 * subject, CH_TIMEOUT when no ack came in time, CH_INVALID_ARGUMENT for a bad
 * message (too many headers, bad subject), CH_RESOURCE_EXHAUSTED when the
 * stream refuses the size. The cnats text goes to the log. Any thread. */
ch_status bus_publish(bus *b, const bus_out_msg *m, int timeout_ms, bus_pub_ack *ack);

/* Queues m for asynchronous publishing (copied). Blocks only when
 * async_max_pending publishes are in flight. Failures are collected and
 * reported by bus_publish_async_wait. One thread at a time per bus. */
ch_status bus_publish_async(bus *b, const bus_out_msg *m);

/* Waits up to timeout_ms (0: 5000) until every queued async publish is
 * acknowledged. Returns CH_OK when all succeeded; otherwise the status of the
 * first failure (or CH_TIMEOUT) and, if failed is not NULL, the number of
 * publishes that failed since the previous wait. Resets the failure count. */
ch_status bus_publish_async_wait(bus *b, int timeout_ms, uint64_t *failed);

/* A message handed over by a bus_sub (the receiver's until bus_in_free) or
 * to a replay callback (valid during the callback). */
typedef struct bus_in_msg bus_in_msg;

struct bus_in_msg {
    const char *subject;
    const uint8_t *data;
    size_t len;
    uint64_t stream_seq;
    uint64_t deliveries;  /* 1 on the first delivery (replay: 1) */
    int64_t timestamp_ns; /* when the stream stored it, ns since the epoch */
    uint64_t pending;     /* messages its consumer had left to deliver after it (0: the last, for now) */
    void *priv_;          /* internal: the natsMsg */
    void *sub_;           /* internal: the bus_sub that handed it over (NULL in a replay) */
};

/* The value of header key on m, or NULL. The string lives as long as m. */
const char *bus_in_msg_header(const bus_in_msg *m, const char *key);

/* What becomes of a message handed over by a durable bus_sub (the receiver
 * applies it with bus_in_ack, bus_in_nak, bus_dead_letter). */
typedef enum bus_verdict {
    BUS_ACK = 0, /* processed (or a duplicate): ack */
    BUS_RETRY,   /* transient failure: redeliver after the backoff; dead-letter at max_deliver */
    BUS_DEAD,    /* permanently bad (malformed, unknown): dead-letter now */
} bus_verdict;

/* ---- subscriptions that hand messages over (a service's one writer) ---- */

typedef struct bus_sub bus_sub;

/* Receives a batch of messages (in stream order within the subscription)
 * and takes each of them over: it must, sooner or later and from any
 * thread, settle each with bus_in_ack/bus_in_nak/bus_in_term (durable
 * consumers; followers need none) and free it with bus_in_free. Runs on the
 * subscription's thread: must not block for long. */
typedef void (*bus_batch_fn)(bus_in_msg *const *msgs, size_t n, void *ctx);

typedef struct bus_sub_spec {
    const char *stream;
    /* A durable push consumer (bus_ensure_consumer; created when missing),
     * shared by the replicas of a service through the queue group of its
     * name; or NULL: an ordered consumer of this subscription's own (a
     * follower: every message from start_seq on, no acks; recreated after
     * the last message handed over when it is lost). */
    const char *durable;
    const char *filter_subject;
    uint64_t start_seq; /* followers: first sequence; 0 or 1: the beginning */
    int batch;          /* messages per call at most; 0: 256, capped at BUS_MAX_BATCH */
    int ack_wait_ms;    /* durable: 0: 10000 */
    bus_batch_fn fn;
    void *ctx;
} bus_sub_spec;

/* Starts a thread that hands over what arrives, a batch at a time (what has
 * arrived when the first message comes). Survives disconnections. *out is
 * the caller's (bus_sub_stop). Any thread. */
ch_status bus_sub_start(bus *b, const bus_sub_spec *s, bus_sub **out);

/* Asks the thread to stop after its current batch, without waiting. */
void bus_sub_request_stop(bus_sub *s);

/* A follower: hands over again everything from stream sequence seq on (its
 * subscription is made again from there, on its thread, within one wait of
 * it; requests before that is done keep the lowest). What a follower hands
 * over has no ack to withhold: this is how its receiver gets a message back
 * when it could not take it in (NATS unavailable). No effect on a durable
 * consumer's subscription. Any thread. */
void bus_sub_rewind(bus_sub *s, uint64_t seq);

/* Stops the thread, unsubscribes and frees. Messages handed over and not
 * yet settled must be settled first (their acks go through this
 * subscription). Accepts NULL. */
void bus_sub_stop(bus_sub *s);

/* Settling a message handed over by a bus_sub (a durable consumer's). The
 * ack tells JetStream it is done; a nak asks for it again after delay_ms; a
 * term drops it for good (after a dead-letter copy). CH_OK when sent. */
ch_status bus_in_ack(bus_in_msg *m);
ch_status bus_in_nak(bus_in_msg *m, int delay_ms);
ch_status bus_in_term(bus_in_msg *m);

/* Copies m, a message a durable bus_sub handed over, to
 * BUS_DEADLETTER_PREFIX.<subject> (with its headers, the Choreo-Dead-* ones
 * and the deterministic message id "dlq:<stream>:<sequence>"; stream NULL:
 * the subscription's), waits for the PubAck, then terms m. Logs a line
 * naming the durable. On failure m is left as it was (nak it). Any
 * thread. */
ch_status bus_dead_letter(bus *b, bus_in_msg *m, const char *stream, const char *reason);

/* Frees a message handed over by a bus_sub. Accepts NULL. */
void bus_in_free(bus_in_msg *m);

/* ---- pipes: asynchronous publishes whose PubAcks come back in order ---- */

typedef struct bus_pipe bus_pipe;

/* One PubAck (st CH_OK, ack filled) or failure of a bus_pipe_publish, with
 * the token it was given: CH_CONFLICT when an expectation (expect_seq)
 * failed, CH_TIMEOUT when no answer came in the pipe's timeout,
 * CH_UNAVAILABLE when the bus went away first, or another error. Called in
 * publish order, on a cnats thread, the pipe's watchdog (CH_TIMEOUT) or the
 * destroying one: must not block for long. */
typedef void (*bus_pipe_fn)(void *token, ch_status st, const bus_pub_ack *ack, void *ctx);

/* A publisher of its own (its inbox, its PubAck subscription, a watchdog).
 * timeout_ms: 0 is the bus's publish timeout. *out is the caller's. */
ch_status bus_pipe_create(bus *b, bus_pipe_fn fn, void *ctx, int timeout_ms, bus_pipe **out);

/* Publishes m (copied) without waiting; fn(token) runs once with its outcome
 * (also when this returns an error: then at once, on this thread). One
 * thread at a time. */
ch_status bus_pipe_publish(bus_pipe *p, const bus_out_msg *m, void *token);

/* Publishes in flight (sent, outcome not called yet). */
size_t bus_pipe_in_flight(bus_pipe *p);

/* Calls fn with CH_UNAVAILABLE for every publish still in flight after up to
 * wait_ms, then frees the pipe. Accepts NULL. */
void bus_pipe_destroy(bus_pipe *p, int wait_ms);

/* Replay callback: return CH_OK to continue, anything else stops the replay
 * and is returned by bus_replay. Runs on the calling thread. */
typedef ch_status (*bus_replay_fn)(const bus_in_msg *m, void *ctx);

/* Delivers, in order, every message of stream matching filter_subject (NULL:
 * all) from start_seq (0 or 1: the beginning) up to the stream's last
 * sequence at the time of the call, then returns. *last_seq_out (may be
 * NULL) gets the stream sequence of the last message delivered, or
 * start_seq - 1 (0 from the beginning) when there was none. Uses an ephemeral
 * pull consumer and batched fetches. Any thread; blocks. */
ch_status bus_replay(bus *b, const char *stream, const char *filter_subject, uint64_t start_seq,
                     bus_replay_fn fn, void *ctx, uint64_t *last_seq_out);

/* Reads the one message at stream sequence seq and hands it to fn (on the
 * calling thread). CH_NOT_FOUND when there is none (yet). One round trip:
 * cheaper than bus_replay for a few messages whose sequences are known. */
ch_status bus_get_seq(bus *b, const char *stream, uint64_t seq, bus_replay_fn fn, void *ctx);

/* Removes every message of stream (tests; operators). CH_NOT_FOUND if the
 * stream does not exist. */
ch_status bus_purge_stream(bus *b, const char *stream);

/* Message count and last sequence of stream (either pointer may be NULL).
 * CH_NOT_FOUND if it does not exist. */
ch_status bus_stream_info(bus *b, const char *stream, uint64_t *msgs, uint64_t *last_seq);

/* The stream's first sequence (its last + 1 when it is empty): what is before
 * it was purged or aged out. CH_NOT_FOUND for no such stream. */
ch_status bus_stream_first_seq(bus *b, const char *stream, uint64_t *first_seq);

#endif
